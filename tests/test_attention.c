/* test_attention.c — dense causal attention on every ISA against a double reference. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "kernels.h"
#include "testutil.h"

static unsigned rng_state = 12345;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (float)((rng_state >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

/* Reference for query i (position pos0+i), head h, in double from the fp16 cache. */
static void ref_one(const dl_attn_shape *s, const dl_fp16 *kc, const dl_fp16 *vc, int pos,
                    const float *q, double *o)
{
    int hd = s->head_dim;
    double *sc = malloc(sizeof(double) * (size_t)(pos + 1));
    double mx = -INFINITY, sum = 0.0;
    for (int t = 0; t <= pos; t++) {
        double d = 0.0;
        for (int e = 0; e < hd; e++)
            d += (double)q[e] * dl_fp16_to_f32(kc[(size_t)t * hd + e]);
        sc[t] = d / sqrt((double)hd);
        if (sc[t] > mx)
            mx = sc[t];
    }
    for (int t = 0; t <= pos; t++)
        sum += (sc[t] = exp(sc[t] - mx));
    for (int e = 0; e < hd; e++)
        o[e] = 0.0;
    for (int t = 0; t <= pos; t++)
        for (int e = 0; e < hd; e++)
            o[e] += sc[t] / sum * dl_fp16_to_f32(vc[(size_t)t * hd + e]);
    free(sc);
}

/* Fills a cache of n_ctx positions, then runs `steps` calls of n queries each starting at
 * pos0, pos0+n, ... and checks every output. Returns the worst absolute error. */
static double run_case(dl_pool *pool, int n_head, int n_kv, int hd, int n_ctx, int pos0, int n,
                       int steps)
{
    dl_attn_shape s = {n_head, n_kv, hd, n_ctx};
    size_t cache = (size_t)n_kv * n_ctx * hd;
    dl_fp16 *kc = calloc(cache, sizeof *kc), *vc = calloc(cache, sizeof *vc);
    int qw = n_head * hd, kvw = n_kv * hd;
    float *k = malloc(sizeof(float) * (size_t)n * kvw), *v = malloc(sizeof(float) * (size_t)n * kvw);
    float *q = malloc(sizeof(float) * (size_t)n * qw), *out = malloc(sizeof(float) * (size_t)n * qw);
    float *scratch = malloc(sizeof(float) * (size_t)dl_pool_size(pool) * n_ctx);
    double *ref = malloc(sizeof(double) * (size_t)hd), worst = 0.0;
    /* history before pos0 */
    for (int p = 0; p < pos0; p++) {
        for (int e = 0; e < kvw; e++) {
            k[e] = 2.0f * frand();
            v[e] = frand();
        }
        dl_kv_store(&s, kc, vc, p, 1, k, v);
    }
    for (int st = 0, p0 = pos0; st < steps; st++, p0 += n) {
        ck_assert_int_le(p0 + n, n_ctx);
        for (size_t e = 0; e < (size_t)n * kvw; e++) {
            k[e] = 2.0f * frand();
            v[e] = frand();
        }
        for (size_t e = 0; e < (size_t)n * qw; e++)
            q[e] = 2.0f * frand();
        dl_kv_store(&s, kc, vc, p0, n, k, v);
        for (size_t e = 0; e < (size_t)n * qw; e++)
            out[e] = NAN;
        dl_attn_dense(pool, &s, kc, vc, p0, n, q, out, scratch);
        for (int i = 0; i < n; i++)
            for (int h = 0; h < n_head; h++) {
                int kvh = h / (n_head / n_kv);
                size_t off = (size_t)i * qw + (size_t)h * hd;
                ref_one(&s, kc + (size_t)kvh * n_ctx * hd, vc + (size_t)kvh * n_ctx * hd,
                        p0 + i, q + off, ref);
                for (int e = 0; e < hd; e++) {
                    double d = fabs(out[off + e] - ref[e]);
                    ck_assert_msg(d <= 2e-5, "isa %s nh %d nkv %d hd %d pos %d head %d e %d: %g vs %g",
                                  dl_isa_name(dl_isa_active()), n_head, n_kv, hd, p0 + i, h, e,
                                  (double)out[off + e], ref[e]);
                    if (d > worst)
                        worst = d;
                }
            }
    }
    free(kc), free(vc), free(k), free(v), free(q), free(out), free(scratch), free(ref);
    return worst;
}

static const enum dl_isa isas[] = {DL_ISA_SCALAR, DL_ISA_AVX2, DL_ISA_AVX512};

START_TEST(test_kv_store_layout)
{
    dl_attn_shape s = {4, 2, 5, 9};
    dl_fp16 kc[2 * 9 * 5] = {0}, vc[2 * 9 * 5] = {0};
    float k[2 * 10], v[2 * 10];
    for (int e = 0; e < 20; e++) {
        k[e] = (float)e;
        v[e] = -(float)e;
    }
    dl_kv_store(&s, kc, vc, 3, 2, k, v);
    for (int i = 0; i < 2; i++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 5; e++) {
                size_t at = ((size_t)h * 9 + 3 + i) * 5 + e;
                ck_assert_float_eq(dl_fp16_to_f32(kc[at]), (float)(i * 10 + h * 5 + e));
                ck_assert_float_eq(dl_fp16_to_f32(vc[at]), -(float)(i * 10 + h * 5 + e));
            }
    ck_assert_int_eq(kc[(size_t)2 * 5], 0); /* position 2 untouched */
}
END_TEST

/* Decode: one query per call at every position 0..n, across key-block boundaries. */
START_TEST(test_decode_positions)
{
    dl_isa_force(isas[_i]);
    dl_pool *pool = dl_pool_create(2);
    static const int cfg[][3] = {{3, 3, 7}, {4, 2, 64}, {8, 2, 20}, {6, 3, 33}, {4, 1, 130}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        run_case(pool, cfg[c][0], cfg[c][1], cfg[c][2], 80, 0, 1, 75);
    dl_pool_free(pool);
}
END_TEST

/* Prefill: n > 1 queries starting at pos0 > 0 (and at 0), several query tiles. */
START_TEST(test_prefill)
{
    dl_isa_force(isas[_i]);
    dl_pool *pool = dl_pool_create(2);
    static const int cfg[][5] = {/* nh, nkv, hd, pos0, n */
                                 {5, 5, 9, 0, 21},   {4, 2, 64, 45, 37}, {8, 2, 16, 31, 40},
                                 {12, 3, 48, 1, 7},  {2, 1, 256, 33, 5}, {3, 1, 300, 10, 6}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        run_case(pool, cfg[c][0], cfg[c][1], cfg[c][2], 100, cfg[c][3], cfg[c][4], 1);
    dl_pool_free(pool);
}
END_TEST

/* A softmax dominated by one late key: the running max must rescale earlier blocks. */
START_TEST(test_peaked_scores)
{
    dl_isa_force(isas[_i]);
    dl_pool *pool = dl_pool_create(1);
    dl_attn_shape s = {2, 1, 16, 70};
    static dl_fp16 kc[70 * 16], vc[70 * 16];
    float k[16], v[16], q[2 * 16], out[2 * 16], scratch[70];
    for (int p = 0; p < 70; p++) {
        for (int e = 0; e < 16; e++) {
            k[e] = p == 66 ? 8.0f : (p < 10 ? -1.0f : 0.25f);
            v[e] = p == 66 ? 1.0f : -1.0f;
        }
        dl_kv_store(&s, kc, vc, p, 1, k, v);
    }
    for (int e = 0; e < 32; e++)
        q[e] = e < 16 ? 4.0f : -4.0f;
    dl_attn_dense(pool, &s, kc, vc, 69, 1, q, out, scratch);
    double ref[16];
    for (int h = 0; h < 2; h++) {
        ref_one(&s, kc, vc, 69, q + h * 16, ref);
        for (int e = 0; e < 16; e++)
            ck_assert_double_eq_tol(out[h * 16 + e], ref[e], 1e-5);
    }
    ck_assert_float_gt(out[0], 0.99f); /* head 0 looks at key 66 only */
    ck_assert_float_lt(out[16], -0.99f);
    dl_pool_free(pool);
}
END_TEST

/* Row counts the SIMD kernels group unevenly: GQA groups of 3 (padded to 4), and query
 * tiles of 15, 5 or 3 rows, with rows of one group ending in different key blocks. */
START_TEST(test_uneven_groups)
{
    dl_isa_force(isas[_i]);
    dl_pool *pool = dl_pool_create(2);
    static const int cfg[][6] = {/* nh, nkv, hd, pos0, n, steps */
                                 {3, 1, 24, 0, 1, 70}, {6, 2, 40, 0, 1, 40},
                                 {1, 1, 40, 30, 15, 2}, {7, 1, 8, 3, 5, 3},
                                 {3, 1, 13, 28, 11, 2}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        run_case(pool, cfg[c][0], cfg[c][1], cfg[c][2], 90, cfg[c][3], cfg[c][4], cfg[c][5]);
    dl_pool_free(pool);
}
END_TEST

static Suite *attention_suite(void)
{
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_kv_store_layout);
    tcase_add_loop_test(tc, test_decode_positions, 0, 3);
    tcase_add_loop_test(tc, test_prefill, 0, 3);
    tcase_add_loop_test(tc, test_peaked_scores, 0, 3);
    tcase_add_loop_test(tc, test_uneven_groups, 0, 3);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(attention_suite());
}
