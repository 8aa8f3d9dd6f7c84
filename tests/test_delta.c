/* test_delta.c — DeltaLLM delta cache and hybrid attention against an independent oracle.
 *
 * The oracle re-encodes the keys itself (closed loop, fp16-rounded stored deltas), builds
 * k̂ densely, picks per (query, key) the exact key or k̂ by the rules of delta.c and runs
 * ordinary softmax attention in double over fp16-rounded V. Every case runs on each
 * kernel path the machine has (scalar, AVX2, AVX-512).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "delta.h"
#include "delta_impl.h"
#include "kernels.h"
#include "pool.h"
#include "quant.h"
#include "testutil.h"

/* ---------------------------------------------------------------- data */

static uint64_t rng_state;
static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}
static float nrand(void)
{
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

/* A problem: n_layer x n_kv random-walk keys, random values and queries, T positions. */
typedef struct prob {
    int n_layer, n_kv, G, d, T;
    float *k, *v, *q; /* [layer][T][n_kv*d], [layer][T][n_kv*d], [layer][T][n_head*d] */
} prob;

static void prob_make(prob *p, int n_layer, int n_kv, int G, int d, int T, float step,
                      uint64_t seed)
{
    p->n_layer = n_layer, p->n_kv = n_kv, p->G = G, p->d = d, p->T = T;
    size_t kn = (size_t)n_layer * T * n_kv * d, qn = (size_t)n_layer * T * n_kv * G * d;
    p->k = malloc(kn * sizeof(float));
    p->v = malloc(kn * sizeof(float));
    p->q = malloc(qn * sizeof(float));
    rng_state = seed;
    for (int l = 0; l < n_layer; l++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n_kv * d; i++) {
                size_t at = ((size_t)l * T + t) * n_kv * d + i;
                p->k[at] = t == 0 ? nrand() : p->k[at - (size_t)n_kv * d] + step * nrand();
                p->v[at] = nrand();
            }
    for (size_t i = 0; i < qn; i++)
        p->q[i] = nrand();
}

static void prob_free(prob *p)
{
    free(p->k);
    free(p->v);
    free(p->q);
}

static const float *pk(const prob *p, int l, int t) { return p->k + ((size_t)l * p->T + t) * p->n_kv * p->d; }
static const float *pv(const prob *p, int l, int t) { return p->v + ((size_t)l * p->T + t) * p->n_kv * p->d; }
static const float *pq(const prob *p, int l, int t) { return p->q + ((size_t)l * p->T + t) * p->n_kv * p->G * p->d; }

/* ---------------------------------------------------------------- oracle */

static float r16(float x) { return dl_fp16_to_f32(dl_f32_to_fp16(x)); }

/* 8-bit values, written from the format's definition (delta_impl.h): a position's
 * exponent x is the smallest integer in [-24, 8] with 127 * 2^x >= its largest |value|,
 * and each value is rounded to the nearest multiple of 2^x (ties to even), at most
 * 127 * 2^x in magnitude. */
static int r8_exp(double mx)
{
    int x = -24;
    while (x < 8 && ldexp(127, x) < mx)
        x++;
    return x;
}
static float r8(float v, int x)
{
    double y = (double)v / ldexp(1, x);
    y = y > 127 ? 127 : y < -127 ? -127 : y;
    return (float)(nearbyint(y) * ldexp(1, x));
}

/* The stored values: vb 2 = fp16, 1 = 8-bit */
static int g_vb = 2;
static int g_quad_on = 1; /* the quad layout allowed (use_isa) */

/* Spec section 2 for one key of one head (d elements), with this file's own rounding:
 * element e is stored when first (the first key is kept whole) or |δ| w_e > theta, its
 * change stopping lag * theta / w_e short of the key; r advances by the stored value.
 * Returns the number stored; with m / v also their mask bits and fp16 values. */
static int oracle_key(const float *k, int d, float *r, const float *w, float theta, float lag,
                      int first, int vb, uint8_t *m, dl_fp16 *v)
{
    float dv[512];
    int st[512], n = 0;
    double mx = 0;
    for (int e = 0; e < d; e++) {
        float delta = k[e] - r[e];
        st[e] = first || fabsf(delta) * w[e] > theta;
        if (st[e]) {
            dv[e] = first ? delta : delta - copysignf(lag * (theta / w[e]), delta);
            mx = fmax(mx, fabs(dv[e]));
        }
    }
    int x = r8_exp(mx);
    for (int e = 0; e < d; e++)
        if (st[e]) {
            float s = vb == 1 ? r8(dv[e], x) : r16(dv[e]);
            r[e] += s;
            if (v) {
                v[n] = dl_f32_to_fp16(s);
                m[e / 8] |= (uint8_t)(1u << (e % 8));
            }
            n++;
        }
    return n;
}

/* k̂ for layer l, all positions, given the theta used by each call (theta_at[t]) and the
 * channel weights (w_at[t][n_kv * d]). */
static void oracle_khat(const prob *p, int l, const float *theta_at, const float *w_at,
                        float lag, float *khat)
{
    int w = p->n_kv * p->d, d = p->d;
    float *r = calloc((size_t)w, sizeof(float));
    for (int t = 0; t < p->T; t++) {
        for (int g = 0; g < p->n_kv; g++)
            oracle_key(pk(p, l, t) + g * d, d, r + g * d, w_at + (size_t)t * w + g * d,
                       theta_at[t], lag, t == 0, g_vb, NULL, NULL);
        memcpy(khat + (size_t)t * w, r, (size_t)w * sizeof(float));
    }
    free(r);
}

/* lo for query position i of a call starting at p0 with n tokens (delta.c's rules). */
static int oracle_lo(const dl_delta_params *dp, int on, int is_prefill, int p0, int n, int i)
{
    long lo;
    if (!on)
        lo = i - dp->window + 1 < p0 ? i - dp->window + 1 : p0;
    else if (is_prefill && dp->prefill_mode == DL_PREFILL_BLOCK) {
        int b = (int)lroundf((float)n * dp->block_frac);
        b = b < 1 ? 1 : b;
        lo = p0 + (long)((i - p0) / b) * b;
    } else if (is_prefill && dp->prefill_window > 0)
        lo = i - dp->prefill_window + 1;
    else
        lo = i - dp->window + 1;
    return lo <= dp->sink ? 0 : (int)lo;
}

/* Output of query i (layer l) with keys exact outside [sink, lo). */
static void oracle_out(const prob *p, int l, const float *khat, int i, int p0, int lo,
                       int sink, int exact_all, double *out)
{
    int d = p->d, w = p->n_kv * d, nh = p->n_kv * p->G;
    double *s = malloc((size_t)(i + 1) * sizeof(double));
    for (int h = 0; h < nh; h++) {
        int g = h / p->G;
        const float *q = pq(p, l, i) + (size_t)h * d;
        double m = -INFINITY, sum = 0;
        for (int t = 0; t <= i; t++) {
            int delta = !exact_all && lo > 0 && t >= sink && t < lo;
            const float *k = delta ? khat + (size_t)t * w + g * d : pk(p, l, t) + g * d;
            /* exact keys of the sink and of earlier calls come from the fp16 ring / sink
             * (as a dense fp16 K cache would give them); this call's keys are fp32 */
            int half = !delta && (t < sink || t < p0);
            double acc = 0;
            for (int e = 0; e < d; e++)
                acc += (double)q[e] * (half ? r16(k[e]) : k[e]);
            s[t] = acc / sqrt((double)d);
            m = fmax(m, s[t]);
        }
        for (int t = 0; t <= i; t++)
            sum += s[t] = exp(s[t] - m);
        for (int e = 0; e < d; e++) {
            double acc = 0;
            for (int t = 0; t <= i; t++)
                acc += s[t] * r16(pv(p, l, t)[g * d + e]);
            out[(size_t)h * d + e] = acc / sum;
        }
    }
    free(s);
}

/* ---------------------------------------------------------------- runner */

/* Run `prob` through a delta cache in calls of sizes chunks[] (the first n_prefill calls
 * are prefill, the rest decode) and compare every output with the oracle. Returns the
 * largest absolute error. exact_all: compare with plain dense attention instead. */
static double run_case(const prob *p, const dl_delta_params *dp, const int *chunks,
                       int n_calls, int n_prefill, int exact_all, dl_pool *pool)
{
    char err[128];
    int nh = p->n_kv * p->G, d = p->d;
    dl_delta_cache *c = dl_delta_cache_create(p->n_layer, p->n_kv, d, p->T, dp, err, sizeof err);
    ck_assert_msg(c != NULL, "%s", err);
    g_vb = dl__delta_head(c, 0, 0)->vb;
    /* the layout the kernels read: quad wherever it can be */
    ck_assert_int_eq(dl__delta_head(c, 0, 0)->quad,
                     g_vb == 1 && d % 16 == 0 && g_quad_on && dl_isa_active() == DL_ISA_AVX512 &&
                         dl__dops_avx512.has_quad());
    /* 8-bit deltas unless every element is kept (theta 0 / target 0) */
    ck_assert_int_eq(g_vb, (dp->sparsity_target < 0 && dp->theta == 0) ||
                               dp->sparsity_target == 0 ? 2 : 1);
    float *out = malloc((size_t)p->T * nh * d * sizeof(float));
    double *ref = malloc((size_t)nh * d * sizeof(double));
    float *theta_at = malloc((size_t)p->n_layer * p->T * sizeof(float));
    float *w_at = malloc((size_t)p->T * p->n_kv * d * sizeof(float));
    /* positions and calls */
    int *call_p0 = malloc((size_t)n_calls * sizeof(int));
    float *kh = malloc((size_t)p->T * p->n_kv * d * sizeof(float));
    double maxerr = 0;
    int pos = 0;
    for (int ci = 0; ci < n_calls; ci++) {
        int n = chunks[ci], is_prefill = ci < n_prefill;
        call_p0[ci] = pos;
        for (int l = 0; l < p->n_layer; l++) {
            int rc = dl_delta_attention(c, NULL, pool, l, nh, pq(p, l, pos), pk(p, l, pos),
                                        pv(p, l, pos), n, is_prefill,
                                        out + (size_t)pos * nh * d);
            ck_assert_int_eq(rc, 0);
            for (int a = 0; a < n; a++) {
                theta_at[(size_t)l * p->T + pos + a] = dl_delta_cache_theta(c, l);
                if (l == p->n_layer - 1)
                    for (int g = 0; g < p->n_kv; g++)
                        memcpy(w_at + ((size_t)(pos + a) * p->n_kv + g) * d,
                               dl__delta_key_weights(c, l, g), (size_t)d * sizeof(float));
            }
        }
        pos += n;
        ck_assert_int_eq(dl_delta_cache_len(c), pos);
    }
    /* Every layer writes the same output rows, so what is left is the last layer's
     * (its keys differ from the others', which checks the per-layer indexing). */
    int l = p->n_layer - 1;
    oracle_khat(p, l, theta_at + (size_t)l * p->T, w_at, dp->lag, kh);
    for (int ci = 0; ci < n_calls; ci++) {
        int n = chunks[ci], is_prefill = ci < n_prefill, p0 = call_p0[ci];
        int on = dp->enabled && (dp->stages & (is_prefill ? DL_STAGE_PREFILL : DL_STAGE_DECODE));
        for (int a = 0; a < n; a++) {
            int i = p0 + a;
            int lo = oracle_lo(dp, on, is_prefill, p0, n, i);
            oracle_out(p, l, kh, i, p0, lo, dp->sink, exact_all, ref);
            for (int x = 0; x < nh * d; x++) {
                double e = fabs(ref[x] - out[(size_t)i * nh * d + x]);
                maxerr = e > maxerr ? e : maxerr;
            }
        }
    }
    free(out);
    free(ref);
    free(theta_at);
    free(w_at);
    free(call_p0);
    free(kh);
    dl_delta_cache_free(c);
    return maxerr;
}

/* run_case for one prefill call of n0 tokens followed by n1 decode steps of one token. */
static double run_prefill_decode(const prob *p, const dl_delta_params *dp, int n0, int n1)
{
    int *chunks = malloc((size_t)(n1 + 1) * sizeof *chunks);
    chunks[0] = n0;
    for (int i = 1; i <= n1; i++)
        chunks[i] = 1;
    double e = run_case(p, dp, chunks, n1 + 1, 1, 0, NULL);
    free(chunks);
    return e;
}

/* AVX-512 twice: with the quad layout where the CPU has it (caches of 8-bit deltas and a
 * head dim that is a multiple of 16), then element-major */
static const enum dl_isa isas[] = { DL_ISA_SCALAR, DL_ISA_AVX2, DL_ISA_AVX512, DL_ISA_AVX512 };

static int isa_available(enum dl_isa isa) { return dl_isa_detect() >= isa; }

/* Make isas[ii] the active ISA; 0 (and nothing forced) where this CPU lacks it. */
static int use_isa(size_t ii)
{
    if (!isa_available(isas[ii]))
        return 0;
    dl_isa_force(isas[ii]);
    g_quad_on = ii != 3;
    dl__delta_quad_allow(g_quad_on);
    return 1;
}

static void reset_isa(void)
{
    dl_isa_force(dl_isa_detect());
    g_quad_on = 1;
    dl__delta_quad_allow(1);
}

/* ---------------------------------------------------------------- tests */

START_TEST(test_params)
{
    dl_delta_params p;
    char err[128];
    dl_delta_params_default(&p);
    ck_assert_int_eq(dl_delta_params_check(&p, err, sizeof err), 0);
    dl_delta_params q;
    q = p, q.window = 0;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.window must be >= 1"));
    q = p, q.theta = -1;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.theta"));
    q = p, q.theta = NAN;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.theta"));
    q = p, q.sparsity_target = 1.0f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.sparsity_target"));
    q = p, q.sink = -1;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.sink"));
    q = p, q.stages = 0;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.stages"));
    q = p, q.prefill_mode = 2;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.prefill_mode"));
    q = p, q.block_frac = 0;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.block_frac"));
    q = p, q.block_frac = 1.5f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    q = p, q.lag = 1.01f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.lag"));
    q = p, q.lag = -0.1f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    q = p, q.lag = NAN;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    q = p, q.value_bits = 4;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.value_bits"));
    q = p, q.value_bits = 16;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), 0);
    q = p, q.enabled = 2;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.enabled"));
    q = p, q.sparsity_target = 0.5f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), 0);
    q = p, q.prefill_window = -1;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.prefill_window"));
    q = p, q.prefill_window = 0;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), 0);
    /* layer offsets: parsed from "a,b,c", each in [-1, 1], one per layer at create */
    q = p;
    ck_assert_int_eq(dl_delta_parse_offsets("0.1, -0.2,0", &q, err, sizeof err), 0);
    ck_assert_int_eq(q.n_layer_offsets, 3);
    ck_assert(q.layer_offsets[1] == -0.2f);
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), 0);
    ck_assert_ptr_null(dl_delta_cache_create(2, 1, 16, 8, &q, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "delta.layer_offsets has 3 values but the model has 2"));
    dl_delta_cache *c3 = dl_delta_cache_create(3, 1, 16, 8, &q, err, sizeof err);
    ck_assert_ptr_nonnull(c3);
    dl_delta_cache_free(c3);
    static const char *const bad[] = { "0.1,", "x", "0.1;0.2", "1.5", "-2", "nan", "0.1,,0" };
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        dl_delta_params r = p;
        ck_assert_msg(dl_delta_parse_offsets(bad[b], &r, err, sizeof err) == -EINVAL, "%s",
                      bad[b]);
        ck_assert_ptr_nonnull(strstr(err, "delta.layer_offsets"));
        ck_assert_int_eq(r.n_layer_offsets, 0);
    }
    ck_assert_int_eq(dl_delta_parse_offsets("none", &q, err, sizeof err), 0);
    ck_assert_int_eq(q.n_layer_offsets, 0);
    q = p, q.n_layer_offsets = 2, q.layer_offsets[0] = 0, q.layer_offsets[1] = 1.01f;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "delta.layer_offsets"));
    q = p, q.n_layer_offsets = DL_DELTA_MAX_LAYER_OFFSETS + 1;
    ck_assert_int_eq(dl_delta_params_check(&q, err, sizeof err), -EINVAL);
    /* create refuses bad knobs with the same message */
    q = p, q.window = 0;
    ck_assert_ptr_null(dl_delta_cache_create(1, 1, 16, 8, &q, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "delta.window"));
}
END_TEST

START_TEST(test_stats_arith)
{
    dl_delta_stage_stats s = { .delta_elems = 1000, .delta_zeros = 600, .score_entries = 200,
                               .exact_entries = 50, .qk_macs_dense = 12800,
                               .qk_macs_done = 5000 };
    ck_assert(fabs(dl_delta_element_sparsity(&s) - 0.6) < 1e-12);
    ck_assert(fabs(dl_delta_attention_sparsity(&s) - 0.6 * 0.75) < 1e-12);
    ck_assert(fabs(dl_delta_qk_skipped(&s) - (1 - 5000.0 / 12800)) < 1e-12);
    dl_delta_stage_stats acc = s;
    dl_delta_stats_add(&acc, &s);
    ck_assert_uint_eq(acc.delta_zeros, 1200);
    ck_assert_uint_eq(acc.qk_macs_done, 10000);
    dl_delta_stage_stats z = { 0 };
    ck_assert(dl_delta_element_sparsity(&z) == 0 && dl_delta_qk_skipped(&z) == 0);
}
END_TEST

/* Acceptance 1: oracle, sliding prefill + decode, windows from 1 to beyond the context,
 * prefill windows (0 = the window, smaller, larger), several sinks, GQA ratios and lags;
 * on every ISA. */
START_TEST(test_oracle_sliding)
{
    static const int windows[] = { 1, 3, 16, 200 };
    static const int pwins[] = { 0, 1, 4, 23 };
    static const int sinks[] = { 0, 1, 5 };
    static const int groups[] = { 1, 4 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (size_t gi = 0; gi < 2; gi++) {
            prob p;
            prob_make(&p, 2, 2, groups[gi], 32, 60, 0.15f, 11 + gi);
            for (size_t wi = 0; wi < 4; wi++)
                for (size_t si = 0; si < 3; si++) {
                    dl_delta_params dp;
                    dl_delta_params_default(&dp);
                    dp.sparsity_target = -1; /* these tests give theta */
                    dp.theta = 0.2f;
                    dp.window = windows[wi];
                    dp.prefill_window = pwins[(wi + si + gi) % 4];
                    dp.sink = sinks[si];
                    dp.lag = (float)((wi + si) % 3) * 0.5f; /* 0 (the spec's rule), 0.5, 1 */
                    double e = run_prefill_decode(&p, &dp, 40, 20);
                    ck_assert_msg(e < 2e-4, "isa %d G %d w %d pw %d sink %d lag %g: err %g",
                                  isas[ii], groups[gi], windows[wi], dp.prefill_window,
                                  sinks[si], dp.lag, e);
                }
            prob_free(&p);
        }
    }
    reset_isa();
}
END_TEST

/* Block prefill, chunked prefill, stage knobs, odd head dims, with a pool. */
START_TEST(test_oracle_modes)
{
    dl_pool *pool = dl_pool_create(2);
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        prob p;
        prob_make(&p, 1, 2, 2, 64, 150, 0.1f, 7);
        dl_delta_params dp;
        dl_delta_params_default(&dp);
        dp.sparsity_target = -1; /* these tests give theta */
        dp.theta = 0.15f;
        dp.window = 8;
        dp.sink = 2;
        int one[] = { 120, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
        /* block mode, one prefill call */
        dp.prefill_mode = DL_PREFILL_BLOCK;
        dp.block_frac = 0.1f;
        double e = run_case(&p, &dp, one, 11, 1, 0, pool);
        ck_assert_msg(e < 2e-4, "block: %g", e);
        /* block mode, chunked */
        int chunks[] = { 50, 37, 33, 1, 1, 1, 1, 1 };
        e = run_case(&p, &dp, chunks, 8, 3, 0, pool);
        ck_assert_msg(e < 2e-4, "block chunked: %g", e);
        /* sliding chunked, with decode of several tokens per call; prefill windows smaller
         * and larger than the decode window (the larger one reads earlier chunks' exact keys
         * from the ring, which must hold them) */
        dp.prefill_mode = DL_PREFILL_SLIDING;
        int chunks2[] = { 17, 64, 39, 3, 5, 1, 1 };
        static const int pws[] = { 0, 3, 30 };
        for (int pi = 0; pi < 3; pi++) {
            dp.prefill_window = pws[pi];
            e = run_case(&p, &dp, chunks2, 7, 3, 0, pool);
            ck_assert_msg(e < 2e-4, "sliding chunked, prefill window %d: %g", pws[pi], e);
        }
        /* stage knobs: delta only in decode (prefill exact), only in prefill */
        dp.stages = DL_STAGE_DECODE;
        e = run_case(&p, &dp, chunks2, 7, 3, 0, pool);
        ck_assert_msg(e < 2e-4, "stages=decode: %g", e);
        dp.stages = DL_STAGE_PREFILL;
        e = run_case(&p, &dp, chunks2, 7, 3, 0, pool);
        ck_assert_msg(e < 2e-4, "stages=prefill: %g", e);
        /* disabled: exact wherever the exact keys exist; one prefill call = dense */
        dp.stages = DL_STAGE_BOTH;
        dp.enabled = 0;
        dp.window = 150;
        e = run_case(&p, &dp, one, 11, 1, 1, pool);
        ck_assert_msg(e < 2e-4, "disabled vs dense: %g", e);
        prob_free(&p);
        /* head dim not a multiple of 16 (scalar kernels whatever the ISA), G = 3 */
        prob_make(&p, 1, 1, 3, 8, 40, 0.1f, 9);
        dl_delta_params_default(&dp);
        dp.sparsity_target = -1; /* these tests give theta */
        dp.theta = 0.1f;
        dp.window = 4;
        int c3[] = { 30, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
        e = run_case(&p, &dp, c3, 11, 1, 0, pool);
        ck_assert_msg(e < 2e-4, "d=8: %g", e);
        prob_free(&p);
    }
    reset_isa();
    dl_pool_free(pool);
}
END_TEST

/* theta = 0 equals plain dense attention (up to the fp16 rounding of stored deltas). */
/* Decode shapes for the fused AVX-512 decode kernel (and the other ISAs' paths): head
 * dims with 1..6 chunks of 16 (the unrolled 1..4 and the generic code), groups that are
 * not a multiple of 4 rows, 16 rows (the largest fused) and 17 (the split kernels), sink
 * and window sizes that put the delta/exact boundary anywhere in a 32-key block, and
 * decode depths that cross block boundaries (37 + 45 steps -> keys 37 .. 81). */
START_TEST(test_decode_shapes)
{
    static const int dims[] = { 16, 48, 64, 80, 96, 128 };
    static const int groups[] = { 1, 3, 4, 16, 17 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
                prob p;
                prob_make(&p, 1, 2, groups[gi], dims[di], 82, 0.15f, 100 + di * 7 + gi);
                for (int cfg = 0; cfg < 3; cfg++) {
                    dl_delta_params dp;
                    dl_delta_params_default(&dp);
                    dp.sparsity_target = -1; /* these tests give theta */
                    dp.theta = 0.2f;
                    dp.window = cfg == 0 ? 1 : cfg == 1 ? 7 : 40;
                    dp.sink = cfg == 1 ? 3 : cfg == 2 ? 33 : 0;
                    double e = run_prefill_decode(&p, &dp, 37, 45);
                    ck_assert_msg(e < 2e-4, "isa %d d %d G %d cfg %d: err %g", isas[ii],
                                  dims[di], groups[gi], cfg, e);
                }
                prob_free(&p);
            }
    }
    reset_isa();
}
END_TEST

START_TEST(test_theta_zero_dense)
{
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        prob p;
        prob_make(&p, 1, 2, 4, 16, 70, 0.2f, 3);
        dl_delta_params dp;
        dl_delta_params_default(&dp);
        dp.sparsity_target = -1; /* these tests give theta */
        dp.theta = 0;
        dp.window = 2;
        int chunks[] = { 60, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
        double e = run_case(&p, &dp, chunks, 11, 1, 1, NULL);
        ck_assert_msg(e < 3e-3, "theta 0 vs dense: %g", e);
        prob_free(&p);
    }
    reset_isa();
}
END_TEST

/* Sum of the stored deltas of head h of a cache of n positions, in the encoder's order
 * (each element over the positions in order), read straight from the layout of
 * delta_impl.h: completed blocks element-major, the open block row-major. */
static void sum_deltas(const dl__dhead *h, int d, int n, float *out)
{
    int mb = (d + 7) / 8, nfull = n / DL__DBLK;
    memset(out, 0, (size_t)d * sizeof(float));
    const uint8_t *v8 = h->val;
    for (int b = 0; b < nfull && h->quad; b++) { /* per quad of elements a 64-bit mask */
        const uint64_t *qm = dl__qmask(h, d, b);
        for (int q = 0; q < d / 4; q++)
            for (int bit = 0; bit < 64; bit++)
                if (qm[q] >> bit & 1)
                    out[4 * q + bit % 4] += (float)ldexp((int8_t)*v8++, h->pexp[b * DL__DBLK + bit / 4]);
    }
    for (int b = 0; b < nfull && !h->quad; b++)
        for (int e = 0; e < d; e++)
            for (int j = 0; j < DL__DBLK; j++)
                if (h->emask[(size_t)b * d + e] >> j & 1) {
                    dl_fp16 x;
                    if (h->vb == 1)
                        out[e] += (float)ldexp((int8_t)*v8, h->pexp[b * DL__DBLK + j]);
                    else
                        memcpy(&x, v8, 2), out[e] += dl_fp16_to_f32(x);
                    v8 += h->vb;
                }
    ck_assert_ptr_eq(v8, h->val + (size_t)h->blk[nfull] * h->vb);
    const dl_fp16 *v = h->sval;
    for (int j = 0; j < n % DL__DBLK; j++)
        for (int e = 0; e < d; e++)
            if (h->smask[(size_t)j * mb + e / 8] >> (e % 8) & 1)
                out[e] += dl_fp16_to_f32(*v++);
    ck_assert_int_eq((int)(v - h->sval), h->scnt);
}

/* Acceptance 2: prefill, then 100 decode steps; reference == sum of stored deltas bit for
 * bit at every step; |k̂ - k| <= theta (plus the fp16 rounding of a stored delta). */
START_TEST(test_closed_loop)
{
    prob p;
    int d = 32, n_kv = 2, G = 2, nh = n_kv * G;
    prob_make(&p, 1, n_kv, G, d, 150, 0.2f, 5);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1; /* these tests give theta */
    dp.theta = 0.25f;
    dp.window = 4;
    char err[128];
    dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, p.T, &dp, err, sizeof err);
    ck_assert_ptr_nonnull(c);
    float *out = malloc((size_t)50 * nh * d * sizeof(float));
    float sum[64], kh[64];
    ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, 0), pk(&p, 0, 0),
                                        pv(&p, 0, 0), 50, 1, out), 0);
    uint64_t stored = 0;
    for (int t = 50; t <= 150; t++) {
        for (int g = 0; g < n_kv; g++) {
            const dl__dhead *h = dl__delta_head(c, 0, g);
            sum_deltas(h, d, t, sum);
            ck_assert_mem_eq(sum, h->ref, (size_t)d * sizeof(float));
            /* k̂ of the last position is the reference; check every element's error */
            memcpy(kh, h->ref, sizeof kh);
            const float *k = pk(&p, 0, t - 1) + g * d;
            /* element e is stored when |δ| w_e > theta, so the bound is theta / w_e */
            const float *w = dl__delta_key_weights(c, 0, g);
            for (int e = 0; e < d; e++)
                ck_assert_msg(fabsf(kh[e] - k[e]) * w[e] <= dp.theta + 1e-3f * (1 + fabsf(k[e])),
                              "t %d e %d: |%g - %g| > theta", t, e, kh[e], k[e]);
            stored = dl__delta_off(h, d, (d + 7) / 8, t / DL__DBLK, t);
        }
        if (t < 150)
            ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, t), pk(&p, 0, t),
                                                pv(&p, 0, t), 1, 0, out), 0);
    }
    ck_assert_uint_gt(stored, 0);
    /* and the stats count what the stream holds */
    const dl_delta_stats *st = dl_delta_cache_stats(c);
    uint64_t nz = 0;
    for (int g = 0; g < n_kv; g++)
        nz += dl__delta_off(dl__delta_head(c, 0, g), d, (d + 7) / 8, 150 / DL__DBLK, 150);
    ck_assert_uint_eq(st->stage[0].delta_elems + st->stage[1].delta_elems, 150ull * d * n_kv);
    ck_assert_uint_eq(st->stage[0].delta_zeros + st->stage[1].delta_zeros,
                      150ull * d * n_kv - nz);
    ck_assert_uint_eq(st->stage[1].delta_elems, 100ull * d * n_kv);
    /* score entries: every query head, every causal key */
    ck_assert_uint_eq(st->stage[0].score_entries, (uint64_t)nh * 50 * 51 / 2);
    /* decode, window 4, sink 0: a query at i has min(i + 1, 4) exact keys */
    ck_assert_uint_eq(st->stage[1].exact_entries, (uint64_t)nh * 100 * 4);
    ck_assert_uint_eq(st->stage[1].qk_macs_dense, (uint64_t)d * st->stage[1].score_entries);
    ck_assert(st->stage[1].qk_macs_done < st->stage[1].qk_macs_dense);
    free(out);
    dl_delta_cache_free(c);
    prob_free(&p);
}
END_TEST

/* Acceptance 3: truncate + re-append equals a fresh run, bit for bit. */
START_TEST(test_truncate)
{
    prob p;
    int d = 64, n_kv = 2, G = 4, nh = n_kv * G, L = 2;
    prob_make(&p, L, n_kv, G, d, 120, 0.1f, 21);
    prob alt; /* a divergent continuation */
    prob_make(&alt, L, n_kv, G, d, 120, 0.1f, 22);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1; /* these tests give theta */
    dp.theta = 0.12f;
    dp.window = 6;
    dp.sink = 1;
    dp.value_bits = _i ? 16 : 8; /* both value widths of the stream */
    char err[128];
    float *o1 = malloc((size_t)nh * d * sizeof(float)), *o2 = malloc((size_t)nh * d * sizeof(float));
    dl_delta_cache *a = dl_delta_cache_create(L, n_kv, d, 120, &dp, err, sizeof err);
    dl_delta_cache *b = dl_delta_cache_create(L, n_kv, d, 120, &dp, err, sizeof err);
    float *scratch = malloc((size_t)60 * nh * d * sizeof(float));
    /* a: 60 prefill + 18 decode of `alt`, truncate to 70 (8 tokens: within the ring's
     * slack, so exact keys survive); b: 60 prefill + 10 of `alt` */
    for (int l = 0; l < L; l++) {
        dl_delta_attention(a, NULL, NULL, l, nh, pq(&p, l, 0), pk(&p, l, 0), pv(&p, l, 0), 60, 1, scratch);
        dl_delta_attention(b, NULL, NULL, l, nh, pq(&p, l, 0), pk(&p, l, 0), pv(&p, l, 0), 60, 1, scratch);
    }
    for (int t = 60; t < 78; t++)
        for (int l = 0; l < L; l++) {
            dl_delta_attention(a, NULL, NULL, l, nh, pq(&alt, l, t), pk(&alt, l, t), pv(&alt, l, t), 1, 0, o1);
            if (t < 70)
                dl_delta_attention(b, NULL, NULL, l, nh, pq(&alt, l, t), pk(&alt, l, t), pv(&alt, l, t), 1, 0, o2);
        }
    ck_assert_int_eq(dl_delta_cache_truncate(a, 79), -EINVAL);
    ck_assert_int_eq(dl_delta_cache_truncate(a, 70), 0);
    ck_assert_int_eq(dl_delta_cache_len(a), 70);
    for (int l = 0; l < L; l++)
        for (int g = 0; g < n_kv; g++)
            ck_assert_mem_eq(dl__delta_head(a, l, g)->ref, dl__delta_head(b, l, g)->ref,
                             (size_t)d * sizeof(float));
    ck_assert_uint_eq(dl_delta_cache_stats(a)->k_cache_bytes, dl_delta_cache_stats(b)->k_cache_bytes);
    /* both continue with p's tokens 70..; outputs must be identical */
    for (int t = 70; t < 100; t++)
        for (int l = 0; l < L; l++) {
            ck_assert_int_eq(dl_delta_attention(a, NULL, NULL, l, nh, pq(&p, l, t), pk(&p, l, t), pv(&p, l, t), 1, 0, o1), 0);
            ck_assert_int_eq(dl_delta_attention(b, NULL, NULL, l, nh, pq(&p, l, t), pk(&p, l, t), pv(&p, l, t), 1, 0, o2), 0);
            ck_assert_mem_eq(o1, o2, (size_t)nh * d * sizeof(float));
        }
    /* a deep truncate (past the ring's slack) still rebuilds the reference exactly: to
     * 50 (two completed blocks summed element-major, the rest read as rows), then to 5 */
    float sum[64];
    ck_assert_int_eq(dl_delta_cache_truncate(a, 50), 0);
    for (int l = 0; l < L; l++)
        for (int g = 0; g < n_kv; g++) {
            sum_deltas(dl__delta_head(a, l, g), d, 50, sum);
            ck_assert_mem_eq(sum, dl__delta_head(a, l, g)->ref, sizeof sum);
        }
    ck_assert_int_eq(dl_delta_cache_truncate(a, 5), 0);
    for (int g = 0; g < n_kv; g++) {
        sum_deltas(dl__delta_head(a, 1, g), d, 5, sum);
        ck_assert_mem_eq(sum, dl__delta_head(a, 1, g)->ref, sizeof sum);
    }
    ck_assert_int_eq(dl_delta_cache_truncate(a, 0), 0);
    ck_assert_uint_eq(dl_delta_cache_stats(a)->k_cache_dense_bytes, 0);
    /* room and argument checks */
    ck_assert_int_eq(dl_delta_attention(b, NULL, NULL, 0, nh, pq(&p, 0, 0), pk(&p, 0, 0), pv(&p, 0, 0), 21, 0, scratch), -ENOSPC);
    ck_assert_int_eq(dl_delta_attention(b, NULL, NULL, 2, nh, pq(&p, 0, 0), pk(&p, 0, 0), pv(&p, 0, 0), 1, 0, scratch), -EINVAL);
    ck_assert_int_eq(dl_delta_attention(b, NULL, NULL, 0, nh + 1, pq(&p, 0, 0), pk(&p, 0, 0), pv(&p, 0, 0), 1, 0, scratch), -EINVAL);
    free(scratch);
    free(o1);
    free(o2);
    dl_delta_cache_free(a);
    dl_delta_cache_free(b);
    prob_free(&p);
    prob_free(&alt);
}
END_TEST

/* A dl_delta_scratch shared by two sequences gives the same outputs, bit for bit, as the
 * caches' own scratch; the caches then count only their data; a scratch too small for a
 * call is refused before anything is appended. */
START_TEST(test_shared_scratch)
{
    prob p, alt;
    int d = 64, n_kv = 2, G = 4, nh = n_kv * G, L = 2, T = 100;
    prob_make(&p, L, n_kv, G, d, T, 0.1f, 31);
    prob_make(&alt, L, n_kv, G, d, T, 0.1f, 32);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1;
    dp.theta = 0.12f;
    dp.window = 6;
    char err[128];
    dl_pool *pool = dl_pool_create(2);
    ck_assert_ptr_nonnull(pool);
    dl_delta_scratch *scr = dl_delta_scratch_create(T, d, G, 2, err, sizeof err);
    ck_assert_ptr_nonnull(scr);
    ck_assert_uint_gt(dl_delta_scratch_bytes(scr), (size_t)2 * T * 64 * sizeof(float));
    dl_delta_cache *own = dl_delta_cache_create(L, n_kv, d, T, &dp, err, sizeof err);
    dl_delta_cache *sh1 = dl_delta_cache_create(L, n_kv, d, T, &dp, err, sizeof err);
    dl_delta_cache *sh2 = dl_delta_cache_create(L, n_kv, d, T, &dp, err, sizeof err);
    size_t ob = (size_t)40 * nh * d * sizeof(float);
    float *o1 = malloc(ob), *o2 = malloc(ob), *o3 = malloc(ob);
    /* prefill 40 then decode to 80; sh2 runs `alt` interleaved with sh1 on the scratch */
    for (int t = 0; t < 80;) {
        int n = t == 0 ? 40 : 1;
        for (int l = 0; l < L; l++) {
            ck_assert_int_eq(dl_delta_attention(own, NULL, pool, l, nh, pq(&p, l, t), pk(&p, l, t),
                                                pv(&p, l, t), n, n > 1, o1), 0);
            ck_assert_int_eq(dl_delta_attention(sh1, scr, pool, l, nh, pq(&p, l, t), pk(&p, l, t),
                                                pv(&p, l, t), n, n > 1, o2), 0);
            ck_assert_int_eq(dl_delta_attention(sh2, scr, pool, l, nh, pq(&alt, l, t),
                                                pk(&alt, l, t), pv(&alt, l, t), n, n > 1, o3), 0);
            ck_assert_mem_eq(o1, o2, (size_t)n * nh * d * sizeof(float));
        }
        t += n;
    }
    const dl_delta_stats *st = dl_delta_cache_stats(sh1);
    ck_assert_uint_eq(dl_delta_cache_bytes(sh1), st->k_cache_bytes + st->v_cache_bytes);
    ck_assert_uint_gt(dl_delta_cache_bytes(own),
                      dl_delta_cache_bytes(sh1) + (size_t)2 * T * 64 * sizeof(float));
    /* too few positions, threads, or a narrower head: -EINVAL, nothing appended */
    dl_delta_scratch *small = dl_delta_scratch_create(80, d, G, 2, err, sizeof err);
    dl_delta_scratch *one = dl_delta_scratch_create(T, d, G, 1, err, sizeof err);
    dl_delta_scratch *narrow = dl_delta_scratch_create(T, 32, G, 2, err, sizeof err);
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(one);
    ck_assert_ptr_nonnull(narrow);
    dl_delta_scratch *bad[] = {small, one, narrow};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(dl_delta_attention(sh1, bad[i], pool, 0, nh, pq(&p, 0, 80), pk(&p, 0, 80),
                                            pv(&p, 0, 80), 1, 0, o2), -EINVAL);
    ck_assert_int_eq(dl_delta_cache_len(sh1), 80);
    ck_assert_uint_eq(dl_delta_cache_bytes(sh1), st->k_cache_bytes + st->v_cache_bytes);
    /* the same calls with a fitting scratch still match the cache's own */
    for (int l = 0; l < L; l++) {
        ck_assert_int_eq(dl_delta_attention(own, NULL, pool, l, nh, pq(&p, l, 80), pk(&p, l, 80),
                                            pv(&p, l, 80), 1, 0, o1), 0);
        ck_assert_int_eq(dl_delta_attention(sh1, one, NULL, l, nh, pq(&p, l, 80), pk(&p, l, 80),
                                            pv(&p, l, 80), 1, 0, o2), 0);
        ck_assert_mem_eq(o1, o2, (size_t)nh * d * sizeof(float));
    }
    ck_assert_ptr_null(dl_delta_scratch_create(0, d, G, 1, err, sizeof err));
    ck_assert_ptr_null(dl_delta_scratch_create(T, d, 0, 1, err, sizeof err));
    ck_assert_ptr_null(dl_delta_scratch_create(T, d, G, 0, err, sizeof err));
    ck_assert(strstr(err, "delta scratch") != NULL);
    dl_delta_scratch_free(NULL);
    dl_delta_scratch_free(small);
    dl_delta_scratch_free(one);
    dl_delta_scratch_free(narrow);
    dl_delta_scratch_free(scr);
    dl_delta_cache_free(own);
    dl_delta_cache_free(sh1);
    dl_delta_cache_free(sh2);
    dl_pool_free(pool);
    free(o1);
    free(o2);
    free(o3);
    prob_free(&p);
    prob_free(&alt);
}
END_TEST

/* Acceptance 4 and sparsity_target: at density ~0.4 the K bytes match the spec's
 * d/8 + 2 rho d + 4/16 per token and KV head (mask, values, one 4-byte offset per 16
 * positions; plus the fixed ref/ring). */
START_TEST(test_bytes_and_target)
{
    prob p;
    int d = 64, n_kv = 2, G = 2, nh = n_kv * G, T = 1024;
    prob_make(&p, 1, n_kv, G, d, T, 0.1f, 8);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1; /* these tests give theta */
    dp.sparsity_target = 0.6f;
    dp.window = 16;
    char err[128];
    dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, T, &dp, err, sizeof err);
    float *out = malloc((size_t)T * nh * d * sizeof(float));
    ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, 0), pk(&p, 0, 0), pv(&p, 0, 0), T, 1, out), 0);
    const dl_delta_stats *st = dl_delta_cache_stats(c);
    double sp = dl_delta_element_sparsity(&st->stage[0]);
    ck_assert_msg(fabs(sp - 0.6) < 0.02, "sparsity %g for target 0.6 (theta %g)", sp,
                  dl_delta_cache_theta(c, 0));
    double rho = 1 - sp;
    uint64_t fixed = (uint64_t)n_kv * ((uint64_t)d * 4 + 4 + (uint64_t)dl__delta_ring_cap(c) * d * 2);
    double per_tok = (double)(st->k_cache_bytes - fixed) / ((double)T * n_kv);
    int vb = dl__delta_head(c, 0, 0)->vb;
    ck_assert_int_eq(vb, 1);
    double spec = d / 8.0 + vb * rho * d + 4.0 / 16 + 1; /* + the exponent byte */
    ck_assert_msg(fabs(per_tok - spec) < 1e-6 * spec, "K bytes/token %g vs spec %g", per_tok, spec);
    ck_assert_uint_eq(st->k_cache_dense_bytes, (uint64_t)T * n_kv * d * 2);
    ck_assert_uint_eq(st->v_cache_bytes, (uint64_t)T * n_kv * d * 2);
    /* the per-token part is ~26 % of dense fp16 K at rho 0.4 with 8-bit deltas (spec,
     * fp16 deltas: ~48 %) */
    double ratio = (double)(st->k_cache_bytes - fixed) / (double)st->k_cache_dense_bytes;
    ck_assert_msg(ratio > 0.23 && ratio < 0.29, "K / dense K = %g", ratio);
    ck_assert(dl_delta_cache_bytes(c) >= st->k_cache_bytes + st->v_cache_bytes);
    free(out);
    dl_delta_cache_free(c);
    prob_free(&p);
}
END_TEST

/* layer_offsets: each layer's element sparsity lands on target + its offset (clamped to
 * [0, 0.99]), and the layers without a profile all land on the target. */
START_TEST(test_layer_targets)
{
    prob p;
    int d = 32, n_kv = 2, G = 2, nh = n_kv * G, T = 512, L = 3;
    prob_make(&p, L, n_kv, G, d, T, 0.1f, 21);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = 0.5f;
    char err[128];
    ck_assert_int_eq(dl_delta_parse_offsets("-0.3,0.25,0.7", &dp, err, sizeof err), 0);
    static const double want[] = { 0.2, 0.75, 0.99 };
    dl_delta_cache *c = dl_delta_cache_create(L, n_kv, d, T, &dp, err, sizeof err);
    ck_assert_msg(c != NULL, "%s", err);
    float *out = malloc((size_t)T * nh * d * sizeof(float));
    for (int l = 0; l < L; l++)
        ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, l, nh, pq(&p, l, 0), pk(&p, l, 0),
                                            pv(&p, l, 0), T, 1, out), 0);
    for (int l = 0; l < L; l++) {
        double sp = dl_delta_element_sparsity(&dl_delta_cache_layer_stats(c, l)[0]);
        ck_assert_msg(fabs(sp - want[l]) < 0.02, "layer %d: sparsity %g, want %g", l, sp,
                      want[l]);
    }
    ck_assert(dl_delta_cache_theta(c, 0) < dl_delta_cache_theta(c, 1));
    dl_delta_cache_free(c);
    free(out);
    prob_free(&p);
}
END_TEST

/* A prefill whose last query tile has fewer than 16 rows runs the split kernels inside a
 * call whose other tiles take the fused prefill kernel (128-row units). Their score
 * matrix must use the tile's own row stride: with the call's, a prompt longer than half
 * the context wrote past the scratch (found by ASan). Oracle check on every ISA, a
 * context just above the prompt, 390 = 6 x 64 + 6 queries (G 2: a 12-row last tile) and
 * 33 = 32 + 1 queries (G 4: 4 rows). */
START_TEST(test_short_last_tile)
{
    static const int shapes[][3] = { { 2, 390, 400 }, { 4, 33, 40 } }; /* G, prompt, ctx */
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (int si = 0; si < 2; si++) {
            prob p;
            prob_make(&p, 1, 2, shapes[si][0], 32, shapes[si][2], 0.15f, 41 + si);
            dl_delta_params dp;
            dl_delta_params_default(&dp);
            dp.sparsity_target = -1;
            dp.theta = 0.1f;
            dp.window = 8;
            double e = run_prefill_decode(&p, &dp, shapes[si][1], 2);
            ck_assert_msg(e < 2e-4, "%s shape %d: err %g", dl_isa_name(isas[ii]), si, e);
            prob_free(&p);
        }
    }
    reset_isa();
}
END_TEST

/* Statistics per layer: their sums are the stage totals, field by field, through prefill
 * and decode; layers keep their own figures (a fixed theta per call differs by layer
 * here through the keys' scale); out-of-range layers give NULL. */
START_TEST(test_layer_stats)
{
    int d = 32, n_kv = 2, G = 2, nh = n_kv * G, T = 120, L = 3;
    prob p;
    prob_make(&p, L, n_kv, G, d, T, 0.2f, 21);
    for (int l = 0; l < L; l++) /* layer l's keys move 1, 2, 4 times as fast */
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n_kv * d; i++)
                p.k[((size_t)l * T + t) * n_kv * d + i] *= (float)(1 << l);
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1;
    dp.theta = 0.5f;
    dp.window = 4;
    char err[128];
    dl_delta_cache *c = dl_delta_cache_create(L, n_kv, d, T, &dp, err, sizeof err);
    float *out = malloc((size_t)T * nh * d * sizeof(float));
    for (int l = 0; l < L; l++)
        ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, l, nh, pq(&p, l, 0), pk(&p, l, 0), pv(&p, l, 0), 100, 1, out), 0);
    for (int t = 100; t < T; t++)
        for (int l = 0; l < L; l++)
            ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, l, nh, pq(&p, l, t), pk(&p, l, t), pv(&p, l, t), 1, 0, out), 0);
    ck_assert_int_eq(dl_delta_cache_layers(c), L);
    ck_assert_ptr_null(dl_delta_cache_layer_stats(c, -1));
    ck_assert_ptr_null(dl_delta_cache_layer_stats(c, L));
    const dl_delta_stats *tot = dl_delta_cache_stats(c);
    for (int st = 0; st < 2; st++) {
        dl_delta_stage_stats sum = { 0 };
        for (int l = 0; l < L; l++)
            dl_delta_stats_add(&sum, &dl_delta_cache_layer_stats(c, l)[st]);
        ck_assert(!memcmp(&sum, &tot->stage[st], sizeof sum));
        ck_assert_uint_eq(dl_delta_cache_layer_stats(c, 1)[st].delta_elems,
                          (uint64_t)(st ? T - 100 : 100) * n_kv * d);
    }
    double s0 = dl_delta_element_sparsity(&dl_delta_cache_layer_stats(c, 0)[0]);
    double s2 = dl_delta_element_sparsity(&dl_delta_cache_layer_stats(c, 2)[0]);
    ck_assert_msg(s0 > s2 + 0.1, "layer sparsity %g vs %g", s0, s2);
    free(out);
    dl_delta_cache_free(c);
    prob_free(&p);
}
END_TEST

/* The score-change diagnostic: smooth keys (a slow random walk) give a lag-1 score
 * autocorrelation near 1, independent keys near 0; one-token calls add nothing. */
START_TEST(test_score_change)
{
    int d = 32, n_kv = 2, G = 2, nh = n_kv * G, T = 400;
    for (int smooth = 0; smooth < 2; smooth++) {
        prob p;
        prob_make(&p, 1, n_kv, G, d, T, 0.02f, 31 + smooth);
        if (!smooth)
            for (size_t i = 0; i < (size_t)T * n_kv * d; i++)
                p.k[i] = nrand();
        dl_delta_params dp;
        dl_delta_params_default(&dp);
        char err[128];
        dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, T, &dp, err, sizeof err);
        float *out = malloc((size_t)T * nh * d * sizeof(float));
        double step, spread, s2, sp2;
        ck_assert_int_eq(dl_delta_cache_score_change(c, 1, &step, &spread), -EINVAL);
        ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, 0), pk(&p, 0, 0), pv(&p, 0, 0), 390, 1, out), 0);
        ck_assert_int_eq(dl_delta_cache_score_change(c, 0, &step, &spread), 0);
        double corr = 1 - step / spread;
        if (smooth)
            ck_assert_msg(corr > 0.95, "smooth keys: %g", corr);
        else
            ck_assert_msg(fabs(corr) < 0.15, "independent keys: %g", corr);
        for (int t = 390; t < T; t++)
            ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, t), pk(&p, 0, t), pv(&p, 0, t), 1, 0, out), 0);
        dl_delta_cache_score_change(c, 0, &s2, &sp2);
        ck_assert(s2 == step && sp2 == spread);
        free(out);
        dl_delta_cache_free(c);
        prob_free(&p);
    }
}
END_TEST

/* The engine's exponent and rounding helpers against the definitions above, and n 2^x
 * exact in fp16 over the whole range. */
START_TEST(test_i8_format)
{
    for (int x = -30; x <= 12; x++)
        for (int i = 0; i < 400; i++) {
            float mx = (float)ldexp(0.5 + i / 400.0, x + 7), v = mx * (float)(urand() * 2 - 1);
            if (i == 0)
                mx = (float)ldexp(127, x); /* exactly 127 * 2^x: x itself */
            int want = r8_exp(mx);
            ck_assert_msg(dl__i8_exp(mx) == want, "mx %.9g: %d vs %d", mx, dl__i8_exp(mx), want);
            float a = dl__i8_round(v, want), b = r8(v, want);
            ck_assert_mem_eq(&a, &b, sizeof a);
            ck_assert(dl_fp16_to_f32(dl_f32_to_fp16(a)) == a);
        }
    ck_assert_int_eq(dl__i8_exp(0), -24);
    ck_assert_int_eq(dl__i8_exp(1e30f), 8);
    ck_assert(dl__i8_round(1e30f, 8) == 127 * 256.0f);
    ck_assert(dl__i8_round(2.5f, 0) == 2.0f && dl__i8_round(3.5f, 0) == 4.0f); /* ties */
}
END_TEST

/* The 8-bit encoder and the theta bisection's simulation of it run with SIMD where the
 * ISA has it; they must give the scalar loop's bits (mask, values, references, zeros),
 * so that the stream, the chosen theta and the statistics do not depend on the machine.
 * The kernels against the spec's loop, then whole caches on every ISA: two prefill calls
 * and a decode step, head dims with 1 vector, 3 and 5 (a partial pass of 4). */
START_TEST(test_theta_same_on_every_isa)
{
    /* the SIMD simulation itself against a loop written from the spec with this file's
     * own 8-bit rounding: deltas from 2^-12 to 2^9 */
    static const dl__dops *const simd[] = { &dl__dops_avx2, &dl__dops_avx512 };
    static const int sdims[] = { 8, 16, 48, 64, 80 };
    for (int si = 0; si < 2; si++) {
        if (!isa_available(si ? DL_ISA_AVX512 : DL_ISA_AVX2))
            continue;
        for (size_t di = 0; di < 5; di++) {
            int d = sdims[di], n = 200;
            if (d % (si ? 16 : 8))
                continue;
            float *k = malloc((size_t)n * d * sizeof(float)), r0[80], r1[80], w[80], pw[80];
            rng_state = 77 + di;
            for (int i = 0; i < n * d; i++)
                k[i] = ldexpf(nrand(), (int)(urand() * 22) - 12);
            /* channel 3 unused by the queries (w = 0): never stored, whatever the lag */
            for (int e = 0; e < d; e++) {
                r0[e] = r1[e] = nrand();
                w[e] = e == 3 ? 0 : 0.25f + (float)urand() * 2;
            }
            /* a stored element's delta stops lag * theta / w short of the key */
            static const float lags[] = { 0, 0.5f, 1 };
            for (int li = 0; li < 3; li++) {
                float lag = lags[li];
                for (float theta = 0; theta < 2; theta += 0.37f) {
                    uint64_t zeros = 0;
                    for (int e = 0; e < d; e++) /* the kernels take the pulls precomputed */
                        pw[e] = w[e] > 0 ? lag * (theta / w[e]) : 0;
                    for (int a = 0; a < n; a++)
                        zeros += (uint64_t)(d - oracle_key(k + (size_t)a * d, d, r0, w, theta,
                                                           lag, 0, 1, NULL, NULL));
                    ck_assert_uint_eq(simd[si]->sim_zeros(k, (size_t)d, n, d, r1, w, theta, pw),
                                      zeros);
                    for (int e = 0; e < d; e++)
                        ck_assert_msg(r1[e] == r0[e], "sim %d d %d lag %g e %d: %.9g vs %.9g", si,
                                      d, lag, e, r1[e], r0[e]);
                }
                /* one key at a time, storing: mask, values and references as the spec's loop */
                for (int e = 0; e < d; e++) {
                    r0[e] = r1[e] = nrand();
                    pw[e] = w[e] > 0 ? lag * (0.3f / w[e]) : 0;
                }
                for (int a = 0; a < n; a++) {
                    const float *kt = k + (size_t)a * d;
                    uint8_t m0[10] = { 0 }, m1[10] = { 0 };
                    dl_fp16 v0[80], v1[80];
                    int8_t x1;
                    int n0 = oracle_key(kt, d, r0, w, 0.3f, lag, 0, 1, m0, v0);
                    ck_assert_int_eq(simd[si]->encode8(kt, d, r1, w, 0.3f, pw, m1, v1, &x1), n0);
                    ck_assert(!memcmp(m0, m1, sizeof m0) && !memcmp(v0, v1, (size_t)n0 * sizeof *v0));
                    /* the exponent: the rounded largest value (> 63.5 2^x) still names it */
                    double mx = 0;
                    for (int i = 0; i < n0; i++)
                        mx = fmax(mx, fabs(dl_fp16_to_f32(v0[i])));
                    ck_assert_int_eq(x1, r8_exp(mx));
                    for (int e = 0; e < d; e++)
                        ck_assert(r1[e] == r0[e]);
                }
            }
            /* exact ties between two multiples of 2^x go to the even one: the largest value
             * 127 * 2^-3 makes x = -3, the others are (m + 1/2) 2^-3 */
            for (int i = 0; i < d; i++) {
                pw[i] = 0;
                k[i] = i == 0 ? 127 * 0.125f : (float)((i % 40 - 20) + 0.5) * 0.125f;
                r1[i] = 0;
                w[i] = 1;
            }
            ck_assert_uint_eq(simd[si]->sim_zeros(k, (size_t)d, 1, d, r1, w, -1.0f, pw), 0);
            for (int e = 0; e < d; e++)
                ck_assert_msg(r1[e] == r8(k[e], -3), "tie d %d e %d: %.9g vs %.9g", d, e, r1[e],
                              r8(k[e], -3));
            free(k);
        }
    }
    static const int dims[] = { 8, 48, 80 };
    for (size_t di = 0; di < 3; di++) {
        int d = dims[di], n_kv = 2, G = 2, nh = n_kv * G, T = 300;
        prob p;
        prob_make(&p, 2, n_kv, G, d, T, 0.2f, 5 + di);
        dl_delta_params dp;
        dl_delta_params_default(&dp);
        dp.sparsity_target = 0.6f;
        dp.window = 8;
        float ref[2][3];
        uint64_t ref_zeros = 0;
        float *out = malloc((size_t)T * nh * d * sizeof(float));
        for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
            if (!use_isa(ii))
                continue;
            char err[128];
            dl_delta_cache *c = dl_delta_cache_create(2, n_kv, d, T, &dp, err, sizeof err);
            int calls[3][2] = { { 0, 150 }, { 150, 140 }, { 290, 1 } };
            for (int ci = 0; ci < 3; ci++)
                for (int l = 0; l < 2; l++) {
                    int at = calls[ci][0], n = calls[ci][1];
                    ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, l, nh, pq(&p, l, at), pk(&p, l, at),
                                                        pv(&p, l, at), n, ci < 2, out), 0);
                    float th = dl_delta_cache_theta(c, l);
                    if (ii == 0)
                        ref[l][ci] = th;
                    else
                        ck_assert_msg(th == ref[l][ci], "d %d %s layer %d call %d: theta %.9g vs %.9g", d,
                                      dl_isa_name(isas[ii]), l, ci, th, ref[l][ci]);
                }
            uint64_t z = dl_delta_cache_stats(c)->stage[0].delta_zeros;
            if (ii == 0)
                ref_zeros = z;
            else
                ck_assert_uint_eq(z, ref_zeros);
            dl_delta_cache_free(c);
        }
        reset_isa();
        free(out);
        prob_free(&p);
    }
}
END_TEST

/* The fused prefill kernel (keys in blocks, online softmax, P.V per block) against the
 * split kernels (whole score matrix, then softmax, then P.V), which the score timing
 * hook forces: same cache contents, outputs equal up to float rounding. Shapes cover
 * several key blocks and query tiles, a partial last row group (G 3: 63 rows), head dims
 * that end in 1-3 vectors past a multiple of 64, sinks, windows inside / past a block,
 * a second prefill chunk (ring keys, earlier deltas), block mode and the dense baseline. */
START_TEST(test_fused_prefill)
{
    static const int dims[] = { 16, 48, 64, 80 };
    static const int groups[] = { 1, 3, 4 };
    static const int windows[] = { 1, 8, 40 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (size_t di = 0; di < 4; di++)
            for (size_t gi = 0; gi < 3; gi++) {
                int d = dims[di], G = groups[gi], n_kv = 2, nh = n_kv * G, T = 150;
                prob p;
                prob_make(&p, 1, n_kv, G, d, T, 0.2f, 40 + di * 3 + gi);
                float *o[2];
                for (int f = 0; f < 2; f++)
                    o[f] = malloc((size_t)T * nh * d * sizeof(float));
                for (int mode = 0; mode < 4; mode++) {
                    dl_delta_params dp;
                    dl_delta_params_default(&dp);
                    dp.sparsity_target = -1;
                    dp.theta = 0.15f;
                    dp.window = windows[mode % 3];
                    dp.sink = mode == 1 ? 3 : 0;
                    if (mode == 3)
                        dp.prefill_mode = DL_PREFILL_BLOCK;
                    for (int f = 0; f < 2; f++) {
                        char err[128];
                        dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, T, &dp, err, sizeof err);
                        ck_assert_msg(c != NULL, "%s", err);
                        dl__delta_time_scores(f); /* f = 1: split kernels */
                        ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, 0), pk(&p, 0, 0),
                                                            pv(&p, 0, 0), 100, 1, o[f]), 0);
                        ck_assert_int_eq(dl_delta_attention(c, NULL, NULL, 0, nh, pq(&p, 0, 100),
                                                            pk(&p, 0, 100), pv(&p, 0, 100), 50, 1,
                                                            o[f] + (size_t)100 * nh * d), 0);
                        dl__delta_time_scores(0);
                        dl_delta_cache_free(c);
                    }
                    double e = 0;
                    for (size_t x = 0; x < (size_t)T * nh * d; x++)
                        e = fmax(e, fabs((double)o[0][x] - o[1][x]));
                    ck_assert_msg(e < 1e-4, "isa %d d %d G %d mode %d: fused vs split %g",
                                  isas[ii], d, G, mode, e);
                }
                /* the dense baseline over fp16 K/V through both paths */
                dl_fp16 *kc = malloc((size_t)n_kv * T * d * sizeof(dl_fp16));
                dl_fp16 *vc = malloc((size_t)n_kv * T * d * sizeof(dl_fp16));
                for (int g = 0; g < n_kv; g++)
                    for (int t = 0; t < T; t++)
                        for (int e = 0; e < d; e++) {
                            kc[((size_t)g * T + t) * d + e] = dl_f32_to_fp16(pk(&p, 0, t)[g * d + e]);
                            vc[((size_t)g * T + t) * d + e] = dl_f32_to_fp16(pv(&p, 0, t)[g * d + e]);
                        }
                dl_delta_params dp;
                dl_delta_params_default(&dp);
                char err[128];
                dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, T, &dp, err, sizeof err);
                ck_assert_msg(c != NULL, "%s", err);
                for (int f = 0; f < 2; f++) {
                    dl__delta_time_scores(f);
                    ck_assert_int_eq(dl__delta_dense_attention(c, NULL, nh, kc, vc, 0, T, pq(&p, 0, 0),
                                                               o[f]), 0);
                    dl__delta_time_scores(0);
                }
                double e = 0;
                for (size_t x = 0; x < (size_t)T * nh * d; x++)
                    e = fmax(e, fabs((double)o[0][x] - o[1][x]));
                ck_assert_msg(e < 1e-4, "isa %d d %d G %d: dense fused vs split %g", isas[ii],
                              d, G, e);
                dl_delta_cache_free(c);
                free(kc);
                free(vc);
                free(o[0]);
                free(o[1]);
                prob_free(&p);
            }
    }
    reset_isa();
}
END_TEST

/* Decode at depths that cross the fused decode kernels' key chunks (512 keys): a prefill
 * of 1020 keys, then decode steps to 1040, with the window / sink boundary before, inside
 * and across a chunk; head dims a multiple of 16 and AVX2-only ones (40: AVX2 kernels
 * whatever the machine). */
START_TEST(test_decode_long)
{
    static const int dims[] = { 64, 40 };
    static const int groups[] = { 4, 3 };
    static const int windows[] = { 8, 600 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (int si = 0; si < 2; si++) {
            prob p;
            prob_make(&p, 1, 1, groups[si], dims[si], 1040, 0.1f, 500 + si);
            for (int wi = 0; wi < 2; wi++) {
                dl_delta_params dp;
                dl_delta_params_default(&dp);
                dp.sparsity_target = -1; /* these tests give theta */
                dp.theta = 0.15f;
                dp.window = windows[wi];
                dp.sink = wi ? 0 : 5;
                double e = run_prefill_decode(&p, &dp, 1020, 20);
                ck_assert_msg(e < 2e-4, "isa %d d %d window %d: err %g", isas[ii], dims[si],
                              windows[wi], e);
            }
            prob_free(&p);
        }
    }
    reset_isa();
}
END_TEST

/* Head dims that are a multiple of 8 but not of 16 (the AVX2 kernels even on an AVX-512
 * machine), up to the largest of the fused decode kernels (256), fp16 (theta 0) and
 * 8-bit deltas, groups not a multiple of 4 and of 16 rows. */
START_TEST(test_decode_dims8)
{
    static const int dims[] = { 8, 24, 200, 256 };
    static const int groups[] = { 3, 16 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
                prob p;
                prob_make(&p, 1, 1, groups[gi], dims[di], 60, 0.15f, 700 + di * 5 + gi);
                for (int cfg = 0; cfg < 2; cfg++) {
                    dl_delta_params dp;
                    dl_delta_params_default(&dp);
                    dp.sparsity_target = -1; /* these tests give theta */
                    dp.theta = cfg ? 0.2f : 0;
                    dp.window = cfg ? 5 : 3;
                    dp.sink = cfg ? 2 : 0;
                    double e = run_prefill_decode(&p, &dp, 37, 23);
                    ck_assert_msg(e < 2e-4, "isa %d d %d G %d cfg %d: err %g", isas[ii],
                                  dims[di], groups[gi], cfg, e);
                }
                prob_free(&p);
            }
    }
    reset_isa();
}
END_TEST

/* The dense baseline's decode step (the fused decode kernels with dense != 0) against
 * softmax attention in double over the same fp16 K/V, across key chunks. */
START_TEST(test_dense_decode)
{
    static const int dims[] = { 64, 40 };
    for (size_t ii = 0; ii < sizeof isas / sizeof isas[0]; ii++) {
        if (!use_isa(ii))
            continue;
        for (int di = 0; di < 2; di++) {
            int d = dims[di], n_kv = 2, G = 3, nh = n_kv * G, T = 1030;
            prob p;
            prob_make(&p, 1, n_kv, G, d, T, 0.2f, 900 + di);
            dl_fp16 *kc = malloc((size_t)n_kv * T * d * sizeof(dl_fp16));
            dl_fp16 *vc = malloc((size_t)n_kv * T * d * sizeof(dl_fp16));
            for (int g = 0; g < n_kv; g++)
                for (int t = 0; t < T; t++)
                    for (int e = 0; e < d; e++) {
                        kc[((size_t)g * T + t) * d + e] = dl_f32_to_fp16(pk(&p, 0, t)[g * d + e]);
                        vc[((size_t)g * T + t) * d + e] = dl_f32_to_fp16(pv(&p, 0, t)[g * d + e]);
                    }
            dl_delta_params dp;
            dl_delta_params_default(&dp);
            char err[128];
            dl_delta_cache *c = dl_delta_cache_create(1, n_kv, d, T, &dp, err, sizeof err);
            ck_assert_msg(c != NULL, "%s", err);
            float *out = malloc((size_t)nh * d * sizeof(float));
            double *s = malloc((size_t)T * sizeof(double));
            double maxerr = 0;
            for (int p0 = T - 3; p0 < T; p0++) {
                const float *q = pq(&p, 0, p0);
                ck_assert_int_eq(dl__delta_dense_attention(c, NULL, nh, kc, vc, p0, 1, q, out), 0);
                for (int h = 0; h < nh; h++) {
                    int g = h / G;
                    double m = -INFINITY, sum = 0;
                    for (int t = 0; t <= p0; t++) {
                        double a = 0;
                        for (int e = 0; e < d; e++)
                            a += (double)q[h * d + e] *
                                 dl_fp16_to_f32(kc[((size_t)g * T + t) * d + e]);
                        s[t] = a / sqrt((double)d);
                        m = fmax(m, s[t]);
                    }
                    for (int t = 0; t <= p0; t++)
                        sum += s[t] = exp(s[t] - m);
                    for (int e = 0; e < d; e++) {
                        double a = 0;
                        for (int t = 0; t <= p0; t++)
                            a += s[t] * dl_fp16_to_f32(vc[((size_t)g * T + t) * d + e]);
                        maxerr = fmax(maxerr, fabs(a / sum - out[h * d + e]));
                    }
                }
            }
            ck_assert_msg(maxerr < 1e-4, "isa %d d %d: dense decode err %g", isas[ii], d, maxerr);
            free(s);
            free(out);
            dl_delta_cache_free(c);
            free(kc);
            free(vc);
            prob_free(&p);
        }
    }
    reset_isa();
}
END_TEST

static Suite *delta_suite(void)
{
    Suite *s = suite_create("delta");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_stats_arith);
    tcase_add_test(tc, test_oracle_sliding);
    tcase_add_test(tc, test_oracle_modes);
    tcase_add_test(tc, test_decode_shapes);
    tcase_add_test(tc, test_theta_zero_dense);
    tcase_add_test(tc, test_closed_loop);
    tcase_add_loop_test(tc, test_truncate, 0, 2);
    tcase_add_test(tc, test_i8_format);
    tcase_add_test(tc, test_shared_scratch);
    tcase_add_test(tc, test_bytes_and_target);
    tcase_add_test(tc, test_layer_targets);
    tcase_add_test(tc, test_theta_same_on_every_isa);
    tcase_add_test(tc, test_layer_stats);
    tcase_add_test(tc, test_short_last_tile);
    tcase_add_test(tc, test_score_change);
    tcase_add_test(tc, test_fused_prefill);
    tcase_add_test(tc, test_decode_long);
    tcase_add_test(tc, test_decode_dims8);
    tcase_add_test(tc, test_dense_decode);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return dl_test_run(delta_suite()); }
