/* test_sampler.c — the sampling chain, its RNG, log-probabilities and stop strings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

static dl_sampler_params greedy_params(void)
{
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.temperature = 0.0f;
    return p;
}

/* Deterministic pseudo-random logits (an LCG, independent of the sampler's RNG). */
static void fill_logits(float *l, int n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        l[i] = (float)((x >> 8) & 0xffff) / 4096.0f - 8.0f; /* [-8, 8) */
    }
}

static int32_t sample_copy(dl_sampler *s, const float *src, int n, dl_sample_logprobs *lp)
{
    float *l = malloc((size_t)n * sizeof *l);
    memcpy(l, src, (size_t)n * sizeof *l);
    int32_t t = dl_sampler_sample(s, l, lp);
    free(l);
    return t;
}

START_TEST(greedy_argmax)
{
    dl_sampler_params p = greedy_params();
    dl_sampler *s = dl_sampler_create(&p, 8);
    ck_assert_ptr_nonnull(s);
    float l[8] = {0.1f, 2.0f, -1.0f, 3.5f, 3.4f, 0.0f, -7.0f, 1.0f};
    ck_assert_int_eq(sample_copy(s, l, 8, NULL), 3);
    /* ties go to the lowest id */
    float t[8] = {1, 5, 2, 5, 5, 0, 0, 0};
    ck_assert_int_eq(sample_copy(s, t, 8, NULL), 1);
    dl_sampler_free(s);

    /* a large vocabulary with the max near the end */
    enum { N = 128256 };
    float *big = malloc(N * sizeof *big);
    fill_logits(big, N, 7);
    big[N - 5] = 100.0f;
    s = dl_sampler_create(&p, N);
    ck_assert_int_eq(sample_copy(s, big, N, NULL), N - 5);
    dl_sampler_free(s);
    free(big);
}
END_TEST

static void run_seq(uint64_t seed, int32_t *out, int n_steps)
{
    enum { N = 1000 };
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.seed = seed;
    p.temperature = 1.0f;
    dl_sampler *s = dl_sampler_create(&p, N);
    float l[N];
    for (int i = 0; i < n_steps; i++) {
        fill_logits(l, N, 100);
        for (int j = 0; j < N; j++)
            l[j] *= 0.2f; /* flat-ish: many plausible tokens */
        out[i] = dl_sampler_sample(s, l, NULL);
        dl_sampler_accept(s, out[i]);
    }
    dl_sampler_free(s);
}

START_TEST(seed_determinism)
{
    int32_t a[64], b[64], c[64];
    run_seq(42, a, 64);
    run_seq(42, b, 64);
    run_seq(43, c, 64);
    ck_assert_mem_eq(a, b, sizeof a);
    int differ = 0;
    for (int i = 0; i < 64; i++)
        differ += a[i] != c[i];
    ck_assert_int_gt(differ, 32);

    /* reset(seed) replays the same sequence as a fresh sampler */
    enum { N = 1000 };
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.seed = 5;
    dl_sampler *s = dl_sampler_create(&p, N);
    float l[N];
    int32_t first[16], again[16];
    for (int round = 0; round < 2; round++) {
        dl_sampler_reset(s, 42);
        int32_t *o = round ? again : first;
        for (int i = 0; i < 16; i++) {
            fill_logits(l, N, 100);
            for (int j = 0; j < N; j++)
                l[j] *= 0.2f;
            o[i] = dl_sampler_sample(s, l, NULL);
            dl_sampler_accept(s, o[i]);
        }
    }
    ck_assert_mem_eq(first, again, sizeof first);
    ck_assert_mem_eq(first, a, sizeof first);
    dl_sampler_free(s);
}
END_TEST

/* top_k = 1 and a tiny top_p both reduce to greedy, whatever the seed and temperature. */
START_TEST(topk1_and_tiny_topp_are_greedy)
{
    enum { N = 5000 };
    float *l = malloc(N * sizeof *l);
    dl_sampler_params g = greedy_params();
    dl_sampler *gs = dl_sampler_create(&g, N);
    for (int variant = 0; variant < 2; variant++) {
        dl_sampler_params p;
        dl_sampler_params_default(&p);
        p.temperature = 1.5f;
        if (variant == 0)
            p.top_k = 1;
        else
            p.top_p = 1e-6f;
        for (uint64_t seed = 0; seed < 20; seed++) {
            p.seed = seed;
            dl_sampler *s = dl_sampler_create(&p, N);
            fill_logits(l, N, (uint32_t)seed);
            if (seed % 3 == 0) /* a tie at the top: greedy takes the lower id */
                l[10] = l[4000] = 9.0f;
            ck_assert_int_eq(sample_copy(s, l, N, NULL), sample_copy(gs, l, N, NULL));
            dl_sampler_free(s);
        }
    }
    dl_sampler_free(gs);
    free(l);
}
END_TEST

/* Top-k keeps exactly the k best: over many draws every chosen token is one of them and
 * all of them show up. */
START_TEST(topk_restricts)
{
    enum { N = 3000, K = 5 };
    float *l = malloc(N * sizeof *l);
    fill_logits(l, N, 9);
    for (int i = 0; i < N; i++)
        l[i] *= 0.05f; /* nearly flat, so without top-k almost anything could come out */
    /* the 5 best, by brute force */
    int best[K];
    for (int k = 0; k < K; k++) {
        int b = -1;
        for (int i = 0; i < N; i++) {
            int used = 0;
            for (int j = 0; j < k; j++)
                used |= best[j] == i;
            if (!used && (b < 0 || l[i] > l[b]))
                b = i;
        }
        best[k] = b;
    }
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.top_k = K;
    p.seed = 3;
    dl_sampler *s = dl_sampler_create(&p, N);
    int seen[K] = {0};
    for (int it = 0; it < 500; it++) {
        int32_t t = sample_copy(s, l, N, NULL);
        int found = -1;
        for (int k = 0; k < K; k++)
            if (best[k] == t)
                found = k;
        ck_assert_int_ge(found, 0);
        seen[found]++;
    }
    for (int k = 0; k < K; k++)
        ck_assert_int_gt(seen[k], 50);
    dl_sampler_free(s);
    free(l);
}
END_TEST

/* top_p = 0.7 on probabilities {0.5, 0.3, 0.15, 0.05}: keeps the first two (0.8 >= 0.7). */
START_TEST(topp_cut)
{
    float probs[4] = {0.5f, 0.3f, 0.15f, 0.05f};
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.top_p = 0.7f;
    p.seed = 11;
    dl_sampler *s = dl_sampler_create(&p, 4);
    int seen[4] = {0};
    for (int it = 0; it < 2000; it++) {
        float l[4];
        for (int i = 0; i < 4; i++)
            l[i] = logf(probs[i]);
        seen[dl_sampler_sample(s, l, NULL)]++;
    }
    ck_assert_int_eq(seen[2], 0);
    ck_assert_int_eq(seen[3], 0);
    /* renormalised: 0.625 / 0.375 */
    ck_assert_int_gt(seen[0], 1100);
    ck_assert_int_lt(seen[0], 1400);
    dl_sampler_free(s);
}
END_TEST

START_TEST(minp_filters)
{
    /* probabilities proportional to 1, 0.5, 0.2, 0.05: min_p 0.3 keeps ids 0 and 1 */
    float rel[4] = {1.0f, 0.5f, 0.2f, 0.05f};
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.min_p = 0.3f;
    p.seed = 1;
    dl_sampler *s = dl_sampler_create(&p, 4);
    int seen[4] = {0};
    for (int it = 0; it < 1500; it++) {
        float l[4];
        for (int i = 0; i < 4; i++)
            l[i] = logf(rel[i]) + 3.0f;
        seen[dl_sampler_sample(s, l, NULL)]++;
    }
    ck_assert_int_eq(seen[2] + seen[3], 0);
    ck_assert_int_gt(seen[1], 300); /* expected 500 */
    ck_assert_int_gt(seen[0], 800); /* expected 1000 */
    dl_sampler_free(s);
}
END_TEST

START_TEST(repeat_penalty_rule)
{
    dl_sampler_params p = greedy_params();
    p.repeat_penalty = 2.0f;
    dl_sampler *s = dl_sampler_create(&p, 4);
    dl_sampler_accept(s, 0);
    dl_sampler_accept(s, 2);
    /* positive logits are divided, negative multiplied */
    float l[4] = {3.0f, 2.0f, -1.0f, -1.5f};
    ck_assert_int_eq(dl_sampler_sample(s, l, NULL), 1);
    ck_assert(l[0] == 1.5f);
    ck_assert(l[1] == 2.0f);
    ck_assert(l[2] == -2.0f);
    ck_assert(l[3] == -1.5f);
    dl_sampler_free(s);
}
END_TEST

START_TEST(presence_frequency_rule)
{
    dl_sampler_params p = greedy_params();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    dl_sampler *s = dl_sampler_create(&p, 4);
    dl_sampler_accept(s, 0);
    dl_sampler_accept(s, 0);
    dl_sampler_accept(s, 0); /* count 3: 3 * 0.25 + 0.5 = 1.25 */
    dl_sampler_accept(s, 1); /* count 1: 0.25 + 0.5 = 0.75 */
    float l[4] = {2.0f, 1.5f, 1.0f, 0.7f};
    ck_assert_int_eq(dl_sampler_sample(s, l, NULL), 2);
    ck_assert(l[0] == 0.75f);
    ck_assert(l[1] == 0.75f);
    ck_assert(l[2] == 1.0f);
    dl_sampler_free(s);
}
END_TEST

/* The window: only the last penalty_last_n accepted tokens count; 0 disables, -1 = all. */
START_TEST(penalty_window)
{
    dl_sampler_params p = greedy_params();
    p.frequency_penalty = 1.0f;
    p.penalty_last_n = 3;
    dl_sampler *s = dl_sampler_create(&p, 4);
    dl_sampler_accept(s, 0); /* falls out of the window below */
    dl_sampler_accept(s, 1);
    dl_sampler_accept(s, 1);
    dl_sampler_accept(s, 2);
    float l[4] = {5, 5, 5, 5};
    dl_sampler_sample(s, l, NULL);
    ck_assert(l[0] == 5.0f && l[1] == 3.0f && l[2] == 4.0f && l[3] == 5.0f);
    /* reset forgets the history */
    dl_sampler_reset(s, 0);
    float m[4] = {5, 5, 5, 5};
    ck_assert_int_eq(dl_sampler_sample(s, m, NULL), 0);
    ck_assert(m[0] == 5.0f && m[1] == 5.0f && m[2] == 5.0f);
    dl_sampler_free(s);

    p.penalty_last_n = -1;
    s = dl_sampler_create(&p, 4);
    for (int i = 0; i < 1000; i++)
        dl_sampler_accept(s, i % 2);
    float a[4] = {0, 0, 0, 0};
    ck_assert_int_eq(dl_sampler_sample(s, a, NULL), 2);
    ck_assert(a[0] == -500.0f && a[1] == -500.0f);
    dl_sampler_free(s);

    p.penalty_last_n = 0;
    s = dl_sampler_create(&p, 4);
    dl_sampler_accept(s, 0);
    float z[4] = {1, 0, 0, 0};
    ck_assert_int_eq(dl_sampler_sample(s, z, NULL), 0);
    ck_assert(z[0] == 1.0f);
    dl_sampler_free(s);
}
END_TEST

START_TEST(logit_bias_bans_and_boosts)
{
    dl_sampler_params p = greedy_params();
    p.n_logit_bias = 2;
    p.logit_bias[0] = (dl_logit_bias){.token = 3, .bias = -INFINITY};
    p.logit_bias[1] = (dl_logit_bias){.token = 0, .bias = 2.5f};
    dl_sampler *s = dl_sampler_create(&p, 4);
    float l[4] = {0.0f, 2.0f, 1.0f, 10.0f};
    ck_assert_int_eq(dl_sampler_sample(s, l, NULL), 0);
    dl_sampler_free(s);

    /* a banned token never comes out of a sampling sampler either */
    dl_sampler_params q;
    dl_sampler_params_default(&q);
    q.n_logit_bias = 1;
    q.logit_bias[0] = (dl_logit_bias){.token = 1, .bias = -INFINITY};
    q.seed = 99;
    s = dl_sampler_create(&q, 3);
    for (int i = 0; i < 500; i++) {
        float m[3] = {0.0f, 5.0f, 0.0f};
        ck_assert_int_ne(dl_sampler_sample(s, m, NULL), 1);
    }
    dl_sampler_free(s);
}
END_TEST

/* With temperature T the frequencies follow softmax(l / T). A fixed seed makes this
 * deterministic; the tolerance (about 4.5 sigma) checks the distribution, not luck. */
START_TEST(temperature_follows_softmax)
{
    enum { V = 6, DRAWS = 40000 };
    const float l0[V] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -3.0f};
    const float temps[3] = {0.5f, 1.0f, 2.0f};
    for (int ti = 0; ti < 3; ti++) {
        dl_sampler_params p;
        dl_sampler_params_default(&p);
        p.temperature = temps[ti];
        p.seed = 2024 + (uint64_t)ti;
        dl_sampler *s = dl_sampler_create(&p, V);
        int count[V] = {0};
        for (int it = 0; it < DRAWS; it++)
            count[sample_copy(s, l0, V, NULL)]++;
        double z = 0, e[V];
        for (int i = 0; i < V; i++)
            z += e[i] = exp(l0[i] / temps[ti]);
        for (int i = 0; i < V; i++) {
            double pi = e[i] / z, f = (double)count[i] / DRAWS;
            double sigma = sqrt(pi * (1 - pi) / DRAWS);
            ck_assert_msg(fabs(f - pi) < 4.5 * sigma + 1e-4, "T=%g token %d: freq %g vs %g",
                          temps[ti], i, f, pi);
        }
        dl_sampler_free(s);
    }
}
END_TEST

START_TEST(logprobs_consistent)
{
    enum { N = 2000 };
    float *l = malloc(N * sizeof *l);
    fill_logits(l, N, 77);
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.seed = 8;
    p.temperature = 0.7f;
    p.top_k = 50;
    dl_sampler *s = dl_sampler_create(&p, N);
    for (int it = 0; it < 20; it++) {
        dl_sample_logprobs lp;
        memset(&lp, 0, sizeof lp);
        lp.n_top = DL_MAX_TOP_LOGPROBS;
        fill_logits(l, N, 77 + (uint32_t)it);
        float *ref = malloc(N * sizeof *ref);
        memcpy(ref, l, N * sizeof *ref);
        int32_t t = dl_sampler_sample(s, l, &lp);
        ck_assert_int_eq(lp.chosen.token, t);
        /* chosen matches log-softmax of the (unpenalised here) logits */
        ck_assert_float_eq_tol(lp.chosen.logprob, dl_logprob_of(ref, N, t), 1e-4f);
        ck_assert_int_eq(lp.n_top, DL_MAX_TOP_LOGPROBS);
        double mass = 0;
        for (int i = 0; i < lp.n_top; i++) {
            mass += exp(lp.top[i].logprob);
            ck_assert_float_eq_tol(lp.top[i].logprob, dl_logprob_of(ref, N, lp.top[i].token),
                                   1e-4f);
            if (i > 0)
                ck_assert(lp.top[i].logprob <= lp.top[i - 1].logprob);
        }
        ck_assert(mass <= 1.0 + 1e-6);
        /* top[0] is the argmax; nothing outside the list beats the last entry */
        int32_t am = 0;
        for (int i = 1; i < N; i++)
            if (ref[i] > ref[am])
                am = i;
        ck_assert_int_eq(lp.top[0].token, am);
        for (int i = 0; i < N; i++) {
            int in = 0;
            for (int j = 0; j < lp.n_top; j++)
                in |= lp.top[j].token == i;
            if (!in)
                ck_assert(ref[i] <= ref[lp.top[lp.n_top - 1].token]);
        }
        /* the chosen token (top-k 50) is within the 50 best */
        int better = 0;
        for (int i = 0; i < N; i++)
            better += ref[i] > ref[t];
        ck_assert_int_lt(better, 50);
        free(ref);
    }
    dl_sampler_free(s);

    /* a full distribution sums to 1 */
    float small[3] = {0.2f, -1.0f, 3.0f};
    double sum = 0;
    for (int i = 0; i < 3; i++)
        sum += exp(dl_logprob_of(small, 3, i));
    ck_assert_double_eq_tol(sum, 1.0, 1e-6);
    dl_sample_logprobs lp = {.n_top = 5};
    dl_sampler_params g = greedy_params();
    s = dl_sampler_create(&g, 3);
    ck_assert_int_eq(dl_sampler_sample(s, small, &lp), 2);
    ck_assert_int_eq(lp.n_top, 3); /* clamped to the vocabulary */
    sum = 0;
    for (int i = 0; i < 3; i++)
        sum += exp(lp.top[i].logprob);
    ck_assert_double_eq_tol(sum, 1.0, 1e-5);
    dl_sampler_free(s);
    free(l);
}
END_TEST

/* Logprobs are reported after penalties and bias (what OpenAI reports). */
START_TEST(logprobs_after_bias)
{
    dl_sampler_params p = greedy_params();
    p.n_logit_bias = 1;
    p.logit_bias[0] = (dl_logit_bias){.token = 1, .bias = -INFINITY};
    dl_sampler *s = dl_sampler_create(&p, 3);
    float l[3] = {0.0f, 5.0f, 0.0f};
    dl_sample_logprobs lp = {.n_top = 3};
    ck_assert_int_eq(dl_sampler_sample(s, l, &lp), 0);
    ck_assert_int_eq(lp.n_top, 2); /* the banned token is not a candidate */
    ck_assert_float_eq_tol(lp.chosen.logprob, logf(0.5f), 1e-6f);
    ck_assert_int_eq(lp.top[0].token, 0);
    ck_assert_int_eq(lp.top[1].token, 2);
    dl_sampler_free(s);
}
END_TEST

START_TEST(find_stop)
{
    const char *stops[] = {"</s>", "\n\nUser:", "END"};
    size_t part = 99;
    const char *t1 = "hello world";
    ck_assert_int_eq(dl_find_stop(t1, strlen(t1), stops, 3, &part), -1);
    ck_assert_uint_eq(part, 0);

    const char *t2 = "abc</s>def END";
    ck_assert_int_eq(dl_find_stop(t2, strlen(t2), stops, 3, &part), 3);

    /* earliest among several */
    const char *t3 = "xEND yy</s>";
    ck_assert_int_eq(dl_find_stop(t3, strlen(t3), stops, 3, &part), 1);

    /* partial suffixes: text that could become a stop string must be held back */
    const char *t4 = "answer is 4\n\nUs";
    ck_assert_int_eq(dl_find_stop(t4, strlen(t4), stops, 3, &part), -1);
    ck_assert_uint_eq(part, 4);
    const char *t5 = "done</";
    ck_assert_int_eq(dl_find_stop(t5, strlen(t5), stops, 3, &part), -1);
    ck_assert_uint_eq(part, 2);
    const char *t6 = "EN";
    ck_assert_int_eq(dl_find_stop(t6, strlen(t6), stops, 3, &part), -1);
    ck_assert_uint_eq(part, 2);
    /* "<" alone is a one-byte partial; "x" is none */
    ck_assert_int_eq(dl_find_stop("a<", 2, stops, 3, &part), -1);
    ck_assert_uint_eq(part, 1);
    ck_assert_int_eq(dl_find_stop("a<x", 3, stops, 3, &part), -1);
    ck_assert_uint_eq(part, 0);

    /* the longest partial among overlapping candidates */
    const char *ov[] = {"aab", "ab"};
    ck_assert_int_eq(dl_find_stop("xxaa", 4, ov, 2, &part), -1);
    ck_assert_uint_eq(part, 2);

    /* length-bounded: bytes past len are not looked at */
    ck_assert_int_eq(dl_find_stop("abEND", 3, stops, 3, &part), -1);
    ck_assert_uint_eq(part, 1);

    /* empty / NULL stop strings are ignored; NULL partial is allowed */
    const char *odd[] = {"", NULL, "b"};
    ck_assert_int_eq(dl_find_stop("aab", 3, odd, 3, NULL), 2);
    ck_assert_int_eq(dl_find_stop("", 0, stops, 3, &part), -1);
    ck_assert_uint_eq(part, 0);
}
END_TEST

/* Streaming use: feeding text one byte at a time and emitting everything except the held
 * partial gives the same output as a single search over the whole text. */
START_TEST(find_stop_streaming)
{
    const char *stops[] = {"<|eot|>", "###"};
    const char *text = "Some <| tricky ## text <|eo then <|eot|> tail";
    size_t n = strlen(text), emitted = 0, part;
    char out[128];
    size_t out_len = 0;
    int stopped = 0;
    for (size_t len = 1; len <= n && !stopped; len++) {
        int at = dl_find_stop(text, len, stops, 2, &part);
        size_t safe = at >= 0 ? (size_t)at : len - part;
        if (safe > emitted) {
            memcpy(out + out_len, text + emitted, safe - emitted);
            out_len += safe - emitted;
            emitted = safe;
        }
        ck_assert_uint_le(emitted, len);
        stopped = at >= 0;
    }
    out[out_len] = 0;
    ck_assert(stopped);
    ck_assert_str_eq(out, "Some <| tricky ## text <|eo then ");
}
END_TEST

START_TEST(degenerate_inputs)
{
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    ck_assert_ptr_null(dl_sampler_create(&p, 0));
    ck_assert_ptr_null(dl_sampler_create(NULL, 10));
    /* a NaN logit never wins; out-of-range bias tokens and accepts are ignored */
    p.n_logit_bias = 1;
    p.logit_bias[0] = (dl_logit_bias){.token = 1000, .bias = 5.0f};
    dl_sampler *s = dl_sampler_create(&p, 3);
    dl_sampler_accept(s, -1);
    dl_sampler_accept(s, 3);
    for (int i = 0; i < 200; i++) {
        float l[3] = {NAN, 1.0f, -INFINITY};
        ck_assert_int_eq(dl_sampler_sample(s, l, NULL), 1);
    }
    dl_sampler_free(s);
    dl_sampler_free(NULL);
}
END_TEST

/* Large vocabulary with every stage on, against a brute-force reference of which tokens
 * may come out. */
START_TEST(full_chain_large_vocab)
{
    enum { N = 32000 };
    float *l = malloc(N * sizeof *l);
    dl_sampler_params p;
    dl_sampler_params_default(&p);
    p.top_k = 40;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.seed = 1234;
    dl_sampler *s = dl_sampler_create(&p, N);
    for (int it = 0; it < 50; it++) {
        fill_logits(l, N, 500 + (uint32_t)it);
        int32_t t = dl_sampler_sample(s, l, NULL);
        ck_assert_int_ge(t, 0);
        ck_assert_int_lt(t, N);
        /* after penalties (l now holds them), the token is within the top 40 */
        int better = 0;
        for (int i = 0; i < N; i++)
            better += l[i] > l[t];
        ck_assert_int_lt(better, 40);
        dl_sampler_accept(s, t);
    }
    dl_sampler_free(s);
    free(l);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, greedy_argmax);
    tcase_add_test(tc, seed_determinism);
    tcase_add_test(tc, topk1_and_tiny_topp_are_greedy);
    tcase_add_test(tc, topk_restricts);
    tcase_add_test(tc, topp_cut);
    tcase_add_test(tc, minp_filters);
    tcase_add_test(tc, repeat_penalty_rule);
    tcase_add_test(tc, presence_frequency_rule);
    tcase_add_test(tc, penalty_window);
    tcase_add_test(tc, logit_bias_bans_and_boosts);
    tcase_add_test(tc, temperature_follows_softmax);
    tcase_add_test(tc, logprobs_consistent);
    tcase_add_test(tc, logprobs_after_bias);
    tcase_add_test(tc, find_stop);
    tcase_add_test(tc, find_stop_streaming);
    tcase_add_test(tc, degenerate_inputs);
    tcase_add_test(tc, full_chain_large_vocab);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return dl_test_run(sampler_suite()); }
