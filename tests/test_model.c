/* test_model.c — the forward pass: golden text, batching, threads, sequences, errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "testutil.h"

#define STORIES "models/tinyllamas-stories-260k-f32.v3.gguf"

static dl_model *load(const char *rel)
{
    char err[512] = "";
    dl_model *m = NULL;
    int rc = dl_model_load(dl_test_shared(rel), &m, err, sizeof err);
    ck_assert_msg(rc == 0, "load %s: %s", rel, err);
    return m;
}

/* Greedy generation from BOS as llama2.c's run.c prints it: the first piece after BOS
 * loses its leading space. Returns a malloc'd string. */
static char *greedy_text(dl_model *m, int n_threads, int steps)
{
    char err[256];
    const dl_hparams *hp = dl_model_hparams(m);
    const dl_tokenizer *tok = dl_model_tokenizer(m);
    dl_ctx *c = dl_ctx_create(m, 8, 512, n_threads, err, sizeof err);
    ck_assert_msg(c != NULL, "%s", err);
    dl_seq *s = dl_seq_create(m, 512, NULL, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    float *logits = malloc((size_t)hp->n_vocab * sizeof *logits);
    size_t cap = 8192, len = 0;
    char *out = calloc(1, cap);
    int32_t tok_id = dl_tokenizer_bos(tok), prev = tok_id;
    for (int step = 0; step < steps; step++) {
        dl_batch_item it = {s, &tok_id, 1, logits, 0};
        ck_assert_msg(dl_forward(c, &it, 1, err, sizeof err) == 0, "%s", err);
        int32_t best = 0;
        for (int32_t v = 1; v < hp->n_vocab; v++)
            if (logits[v] > logits[best])
                best = v;
        char piece[64];
        int n = dl_token_to_piece(tok, best, 0, piece, sizeof piece);
        const char *p = piece;
        if (prev == dl_tokenizer_bos(tok) && n > 0 && p[0] == ' ') {
            p++;
            n--;
        }
        ck_assert(len + (size_t)n < cap);
        memcpy(out + len, p, (size_t)n);
        len += (size_t)n;
        prev = tok_id = best;
    }
    free(logits);
    dl_seq_free(s);
    dl_ctx_free(c);
    return out;
}

START_TEST(golden_stories260k)
{
    size_t elen;
    char *expected = dl_test_read_file(dl_test_shared("models/stories260K.greedy200.expected.txt"),
                                       &elen);
    ck_assert(expected != NULL);
    dl_model *m = load(STORIES);
    for (int threads = 1; threads <= 3; threads++) {
        char *got = greedy_text(m, threads, 200);
        ck_assert_msg(strcmp(got, expected) == 0, "threads=%d:\n got: %s\nwant: %s", threads,
                      got, expected);
        free(got);
    }
    dl_model_free(m);
    free(expected);
}
END_TEST

START_TEST(v1_and_v3_agree)
{
    dl_model *a = load("models/tinyllamas-stories-260k-f32.gguf");
    dl_model *b = load(STORIES);
    char *ta = greedy_text(a, 1, 40), *tb = greedy_text(b, 1, 40);
    ck_assert_str_eq(ta, tb);
    free(ta);
    free(tb);
    dl_model_free(a);
    dl_model_free(b);
}
END_TEST

static float max_abs_diff(const float *a, const float *b, int n)
{
    float d = 0;
    for (int i = 0; i < n; i++)
        d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* A prompt prefilled at once gives the same logits as fed token by token, and several
 * sequences decoded in one batch give what each gives alone. */
START_TEST(batching_matches_sequential)
{
    char err[256];
    dl_model *m = load(STORIES);
    int V = dl_model_hparams(m)->n_vocab;
    dl_ctx *c = dl_ctx_create(m, 64, 128, 2, err, sizeof err);
    ck_assert_msg(c != NULL, "%s", err);
    int32_t prompt[12] = {1, 403, 407, 261, 378, 271, 291, 45, 357, 286, 300, 412};
    float *all = malloc(sizeof(float) * 12 * V), *one = malloc(sizeof(float) * V);
    dl_seq *s1 = dl_seq_create(m, 128, NULL, err, sizeof err);
    dl_batch_item it = {s1, prompt, 12, all, 1};
    ck_assert(dl_forward(c, &it, 1, err, sizeof err) == 0);
    ck_assert_int_eq(dl_seq_len(s1), 12);
    dl_seq *s2 = dl_seq_create(m, 128, NULL, err, sizeof err);
    for (int t = 0; t < 12; t++) {
        dl_batch_item one_it = {s2, prompt + t, 1, one, 0};
        ck_assert(dl_forward(c, &one_it, 1, err, sizeof err) == 0);
        ck_assert_msg(max_abs_diff(one, all + (size_t)t * V, V) < 1e-4f, "token %d", t);
    }
    /* batched decode of three sequences at different lengths */
    dl_seq *s3 = dl_seq_create(m, 128, NULL, err, sizeof err);
    dl_batch_item pre = {s3, prompt, 5, NULL, 0};
    ck_assert(dl_forward(c, &pre, 1, err, sizeof err) == 0);
    float *lb = malloc(sizeof(float) * 3 * V);
    int32_t nxt[3] = {300, 301, 302};
    dl_batch_item b[3] = {{s1, &nxt[0], 1, lb, 0}, {s2, &nxt[1], 1, lb + V, 0},
                          {s3, &nxt[2], 1, lb + 2 * V, 0}};
    ck_assert(dl_forward(c, b, 3, err, sizeof err) == 0);
    /* the same steps alone, on fresh copies of the state */
    dl_seq *r = dl_seq_create(m, 128, NULL, err, sizeof err);
    dl_batch_item rp = {r, prompt, 5, NULL, 0};
    ck_assert(dl_forward(c, &rp, 1, err, sizeof err) == 0);
    dl_batch_item rs = {r, &nxt[2], 1, one, 0};
    ck_assert(dl_forward(c, &rs, 1, err, sizeof err) == 0);
    ck_assert(max_abs_diff(one, lb + 2 * V, V) < 1e-4f);
    dl_seq_free(r);
    dl_seq_free(s1);
    dl_seq_free(s2);
    dl_seq_free(s3);
    free(all);
    free(one);
    free(lb);
    dl_ctx_free(c);
    dl_model_free(m);
}
END_TEST

START_TEST(truncate_and_refeed)
{
    char err[256];
    dl_model *m = load(STORIES);
    int V = dl_model_hparams(m)->n_vocab;
    dl_ctx *c = dl_ctx_create(m, 16, 64, 1, err, sizeof err);
    dl_seq *s = dl_seq_create(m, 64, NULL, err, sizeof err);
    int32_t p[10] = {1, 403, 407, 261, 378, 271, 291, 45, 357, 286};
    float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
    dl_batch_item it = {s, p, 10, a, 0};
    ck_assert(dl_forward(c, &it, 1, err, sizeof err) == 0);
    ck_assert_int_eq(dl_seq_truncate(s, 5), 0);
    ck_assert_int_eq(dl_seq_len(s), 5);
    ck_assert_int_ne(dl_seq_truncate(s, 6), 0); /* cannot grow */
    dl_batch_item it2 = {s, p + 5, 5, b, 0};
    ck_assert(dl_forward(c, &it2, 1, err, sizeof err) == 0);
    ck_assert(max_abs_diff(a, b, V) < 1e-5f);
    free(a);
    free(b);
    dl_seq_free(s);
    dl_ctx_free(c);
    dl_model_free(m);
}
END_TEST

START_TEST(forward_rejects_bad_batches)
{
    char err[256];
    dl_model *m = load(STORIES);
    dl_ctx *c = dl_ctx_create(m, 4, 8, 1, err, sizeof err);
    dl_seq *s = dl_seq_create(m, 8, NULL, err, sizeof err);
    int32_t bad = 512, ok[5] = {1, 2, 3, 4, 5};
    dl_batch_item it = {s, &bad, 1, NULL, 0};
    ck_assert_int_lt(dl_forward(c, &it, 1, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "out of range"));
    dl_batch_item big = {s, ok, 5, NULL, 0}; /* more than max_tokens */
    ck_assert_int_lt(dl_forward(c, &big, 1, err, sizeof err), 0);
    dl_batch_item four = {s, ok, 4, NULL, 0};
    ck_assert_int_eq(dl_forward(c, &four, 1, err, sizeof err), 0);
    ck_assert_int_eq(dl_forward(c, &four, 1, err, sizeof err), 0);
    ck_assert_int_lt(dl_forward(c, &four, 1, err, sizeof err), 0); /* context full */
    ck_assert_ptr_nonnull(strstr(err, "exceed the context"));
    dl_batch_item twice[2] = {{s, ok, 1, NULL, 0}, {s, ok, 1, NULL, 0}};
    ck_assert_int_lt(dl_forward(c, twice, 2, err, sizeof err), 0);
    dl_seq_free(s);
    dl_ctx_free(c);
    dl_model_free(m);
}
END_TEST

/* A sequence may be created larger than a ctx's max_ctx (a session that later moves to a
 * bigger worker); attention scratch must be sized by what the call needs, not by the
 * sequence. Scalar path forced: it is the one that uses the scratch. */
START_TEST(sequence_larger_than_ctx)
{
    char err[256];
    dl_isa_force(DL_ISA_SCALAR);
    dl_model *m = load(STORIES);
    int V = dl_model_hparams(m)->n_vocab;
    dl_ctx *small = dl_ctx_create(m, 8, 16, 2, err, sizeof err);
    dl_ctx *big = dl_ctx_create(m, 8, 512, 2, err, sizeof err);
    dl_seq *a = dl_seq_create(m, 512, NULL, err, sizeof err);
    dl_seq *b = dl_seq_create(m, 512, NULL, err, sizeof err);
    int32_t p[16] = {1, 403, 407, 261, 378, 271, 291, 45, 357, 286, 300, 412, 300, 45, 291, 271};
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    for (int off = 0; off < 16; off += 8) {
        dl_batch_item ia = {a, p + off, 8, la, 0}, ib = {b, p + off, 8, lb, 0};
        ck_assert_msg(dl_forward(small, &ia, 1, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(dl_forward(big, &ib, 1, err, sizeof err) == 0, "%s", err);
    }
    ck_assert(max_abs_diff(la, lb, V) == 0.0f);
    int32_t more = 5; /* past the small ctx's max_ctx: refused, not overrun */
    dl_batch_item over = {a, &more, 1, la, 0};
    ck_assert_int_lt(dl_forward(small, &over, 1, err, sizeof err), 0);
    free(la);
    free(lb);
    dl_seq_free(a);
    dl_seq_free(b);
    dl_ctx_free(small);
    dl_ctx_free(big);
    dl_model_free(m);
}
END_TEST

/* F16 weights, untied output head, the full 32k vocabulary. */
START_TEST(tiny_random_f16_generates)
{
    char err[256];
    dl_model *m = load("models/llama-2-tiny-random.gguf");
    const dl_hparams *hp = dl_model_hparams(m);
    ck_assert_int_eq(hp->n_vocab, 32000);
    ck_assert_int_eq(hp->tied_output, 0);
    ck_assert_int_eq(hp->weight_type, 1 /* F16 */);
    dl_ctx *c = dl_ctx_create(m, 8, 64, 2, err, sizeof err);
    float *logits = malloc(sizeof(float) * hp->n_vocab);
    int32_t run[2][20];
    for (int rep = 0; rep < 2; rep++) {
        dl_seq *s = dl_seq_create(m, 64, NULL, err, sizeof err);
        int32_t t = 1;
        for (int i = 0; i < 20; i++) {
            dl_batch_item it = {s, &t, 1, logits, 0};
            ck_assert_msg(dl_forward(c, &it, 1, err, sizeof err) == 0, "%s", err);
            int32_t best = 0;
            for (int v = 0; v < hp->n_vocab; v++) {
                ck_assert(isfinite(logits[v]));
                if (logits[v] > logits[best])
                    best = v;
            }
            run[rep][i] = t = best;
        }
        dl_seq_free(s);
    }
    ck_assert_mem_eq(run[0], run[1], sizeof run[0]);
    free(logits);
    dl_ctx_free(c);
    dl_model_free(m);
}
END_TEST

START_TEST(vocab_only_file_is_not_a_model)
{
    char err[512];
    dl_model *m = NULL;
    int rc = dl_model_load(dl_test_shared("models/ggml-vocab-llama-spm.gguf"), &m, err, sizeof err);
    ck_assert_int_lt(rc, 0);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, "token_embd.weight") != NULL, "%s", err);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, golden_stories260k);
    tcase_add_test(tc, v1_and_v3_agree);
    tcase_add_test(tc, batching_matches_sequential);
    tcase_add_test(tc, truncate_and_refeed);
    tcase_add_test(tc, forward_rejects_bad_batches);
    tcase_add_test(tc, tiny_random_f16_generates);
    tcase_add_test(tc, sequence_larger_than_ctx);
    tcase_add_test(tc, vocab_only_file_is_not_a_model);
    suite_add_tcase(s, tc);
    return dl_test_run(s);
}
