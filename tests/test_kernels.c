/* test_kernels.c — every kernel on every instruction set the CPU has, against the scalar
 * reference, on random inputs with odd sizes and tails.
 *
 * Tolerances:
 *  - float weights (F32/F16/BF16) and the vector kernels: only summation order differs,
 *    |y - ref| <= 1e-5 * sum|w*x| (+ a tiny absolute term);
 *  - quantised weights on SIMD paths quantise the activations to 8 bits first. Against a
 *    reference that quantises them the same way (dl__quant_act*_ref, then a double dot of
 *    the dequantised row with the dequantised activations) the bound is the tight 1e-5;
 *    against the float reference the difference is the activation rounding error, at most
 *    sum_i |w_i| * d_i / 2 with d_i the activation block's step (bounded here with 1.01x).
 *  - the scalar path is the reference itself: exact.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kern_impl.h"
#include "kernels.h"
#include "pool.h"
#include "quant.h"
#include "testutil.h"

static uint64_t rng_state;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static void fill(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = frand() * scale;
    /* an outlier now and then, as real activations have */
    if (n > 8)
        x[n / 3] *= 7.0f;
}

/* A random rows x cols weight of a type, with its dequantised floats. */
typedef struct tw {
    dl_weight w;
    void *data;
    float *deq; /* rows x cols */
} tw;

static void tw_make(tw *t, uint32_t type, int64_t rows, int64_t cols)
{
    size_t rb = dl_row_size(type, cols);
    ck_assert_uint_gt(rb, 0);
    float *src = malloc(sizeof(float) * (size_t)cols);
    t->data = malloc(rb * (size_t)rows);
    t->deq = malloc(sizeof(float) * (size_t)(rows * cols));
    ck_assert_ptr_nonnull(src);
    ck_assert_ptr_nonnull(t->data);
    ck_assert_ptr_nonnull(t->deq);
    for (int64_t r = 0; r < rows; r++) {
        fill(src, cols, 0.5f);
        ck_assert_uint_eq(dl_quantize_row(type, src, (uint8_t *)t->data + r * rb, cols), rb);
        dl_dequantize_row(type, (uint8_t *)t->data + r * rb, t->deq + r * cols, cols);
    }
    free(src);
    t->w = (dl_weight){.type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = t->data};
}

static void tw_free(tw *t)
{
    free(t->data);
    free(t->deq);
}

/* The activations as the SIMD paths see them: quantised, then dequantised to floats;
 * step[i] = the quantisation step of element i's block. */
static void act_dequant(uint32_t type, const float *x, int64_t cols, float *xd, float *step)
{
    int blk = dl__act_block(type);
    size_t stride = blk == 32 ? dl__act32_stride(cols) : dl__actk_stride(cols);
    int8_t *q = aligned_alloc(64, stride);
    ck_assert_ptr_nonnull(q);
    if (blk == 32)
        dl__quant_act32_ref(x, cols, q);
    else
        dl__quant_actk_ref(x, cols, q);
    const float *d = (const float *)(q + cols);
    for (int64_t i = 0; i < cols; i++) {
        xd[i] = q[i] * d[i / blk];
        step[i] = d[i / blk];
    }
    free(q);
}

/* prepare: run dl_weight_prepare (under AVX-512 when the CPU has it) first. Where that
 * repacks, the path that reads the copy gets a `data` of garbage: it must not look. */
static void check_matmul_p(enum dl_isa isa, dl_pool *pool, uint32_t type, int64_t rows,
                           int64_t cols, int n_tok, int prepare)
{
    tw t;
    tw_make(&t, type, rows, cols);
    void *owned = NULL, *garbage = NULL;
    if (prepare) {
        char err[128];
        dl_isa_force(DL_ISA_AVX512);
        ck_assert_int_eq(dl_weight_prepare(&t.w, &owned, err, sizeof err), 0);
        int expect = dl_isa_active() == DL_ISA_AVX512 &&
                     (type == DL_TYPE_Q4_0 || type == DL_TYPE_Q8_0 || type == DL_TYPE_F16 ||
                      type == DL_TYPE_BF16 || type == DL_TYPE_Q4_K || type == DL_TYPE_Q6_K);
        ck_assert_int_eq(owned != NULL, expect);
        ck_assert_ptr_eq(t.w.packed, owned);
        ck_assert_ptr_eq(t.w.data, t.data);
        if (owned && isa == DL_ISA_AVX512) {
            garbage = malloc(t.w.row_bytes * (size_t)rows);
            ck_assert_ptr_nonnull(garbage);
            memset(garbage, 0x7b, t.w.row_bytes * (size_t)rows);
            t.w.data = garbage;
        }
    }
    float *x = malloc(sizeof(float) * (size_t)(n_tok * cols));
    float *y = malloc(sizeof(float) * (size_t)(n_tok * rows));
    float *xd = malloc(sizeof(float) * (size_t)cols);
    float *step = malloc(sizeof(float) * (size_t)cols);
    void *scratch = malloc(dl_matmul_scratch_size(n_tok, cols));
    fill(x, n_tok * cols, 1.0f);
    for (int64_t i = 0; i < n_tok * rows; i++)
        y[i] = NAN;

    dl_isa_force(isa);
    dl_matmul(pool, &t.w, x, y, n_tok, scratch);
    int quant_act = isa != DL_ISA_SCALAR && dl__act_block(type) != 0;

    for (int tk = 0; tk < n_tok; tk++) {
        const float *xt = x + tk * cols;
        if (quant_act)
            act_dequant(type, xt, cols, xd, step);
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = (const uint8_t *)t.data + r * t.w.row_bytes;
            const float *wr = t.deq + r * cols;
            float got = y[tk * rows + r];
            float ref = dl_vec_dot_ref(type, row, xt, cols);
            double mag = 0, qref = 0, qbound = 0;
            for (int64_t i = 0; i < cols; i++) {
                mag += fabs((double)wr[i] * xt[i]);
                if (quant_act) {
                    qref += (double)wr[i] * xd[i];
                    qbound += fabs((double)wr[i]) * step[i] * 0.5;
                }
            }
            ck_assert_msg(isfinite(got), "%s %s r%ld t%d: not finite", dl_isa_name(isa),
                          dl_type_info(type)->name, (long)r, tk);
            if (isa == DL_ISA_SCALAR) {
                ck_assert_msg(got == ref, "scalar %s differs from reference: %g vs %g",
                              dl_type_info(type)->name, got, ref);
            } else if (quant_act) {
                ck_assert_msg(fabs(got - qref) <= 1e-5 * mag + 1e-6,
                              "%s %s %ldx%ld n_tok %d r%ld t%d: %.7g vs quantised ref %.7g",
                              dl_isa_name(isa), dl_type_info(type)->name, (long)rows, (long)cols,
                              n_tok, (long)r, tk, got, qref);
                ck_assert_msg(fabs(got - ref) <= qbound * 1.01 + 1e-5 * mag + 1e-6,
                              "%s %s: %.7g vs float ref %.7g beyond activation rounding %.3g",
                              dl_isa_name(isa), dl_type_info(type)->name, got, ref, qbound);
            } else {
                ck_assert_msg(fabs(got - ref) <= 1e-5 * mag + 1e-6,
                              "%s %s %ldx%ld n_tok %d r%ld t%d: %.7g vs %.7g", dl_isa_name(isa),
                              dl_type_info(type)->name, (long)rows, (long)cols, n_tok, (long)r,
                              tk, got, ref);
            }
        }
    }
    free(x);
    free(y);
    free(xd);
    free(step);
    free(scratch);
    free(owned);
    free(garbage);
    tw_free(&t);
}

static void check_matmul(enum dl_isa isa, dl_pool *pool, uint32_t type, int64_t rows,
                         int64_t cols, int n_tok)
{
    check_matmul_p(isa, pool, type, rows, cols, n_tok, 0);
}

/* every token count a batch of decoding sequences can bring, through each SIMD tile
 * size and remainder (4-token tiles, the 17-token stripe threshold) */
static const int n_toks[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};

static void matmul_all(uint32_t type, const int64_t *cols, int ncols)
{
    static const int64_t rows[] = {1, 17, 35};
    dl_pool *pool = dl_pool_create(3);
    ck_assert_ptr_nonnull(pool);
    rng_state = 1234 + type;
    for (int isa = 0; isa <= (int)dl_isa_detect(); isa++)
        for (int c = 0; c < ncols; c++)
            for (int r = 0; r < 3; r++)
                for (size_t k = 0; k < sizeof n_toks / sizeof n_toks[0]; k++)
                    check_matmul((enum dl_isa)isa, pool, type, rows[r], cols[c], n_toks[k]);
    dl_pool_free(pool);
    dl_isa_force(DL_ISA_AVX512);
}

START_TEST(test_matmul_float_types)
{
    static const int64_t cols[] = {1, 7, 16, 37, 83, 256};
    matmul_all(DL_TYPE_F32, cols, 6);
    matmul_all(DL_TYPE_F16, cols, 6);
    matmul_all(DL_TYPE_BF16, cols, 6);
}
END_TEST

START_TEST(test_matmul_q8_0_q4_0)
{
    /* 1056 columns = 33 blocks: an odd block count and more than one 1024-column chunk;
     * 160 / 192 / 224 = 5 / 6 / 7 blocks: the Q4_0 4-block step followed by each tail */
    static const int64_t cols[] = {32, 96, 160, 192, 224, 1056};
    matmul_all(DL_TYPE_Q8_0, cols, 6);
    matmul_all(DL_TYPE_Q4_0, cols, 6);
}
END_TEST

START_TEST(test_matmul_k_quants)
{
    static const int64_t cols[] = {256, 768};
    matmul_all(DL_TYPE_Q4_K, cols, 2);
    matmul_all(DL_TYPE_Q6_K, cols, 2);
}
END_TEST

/* Enough tokens to cross the stripe path's 64-token blocks, with odd row tails. */
START_TEST(test_matmul_many_tokens)
{
    dl_pool *pool = dl_pool_create(2);
    rng_state = 99;
    for (int isa = 1; isa <= (int)dl_isa_detect(); isa++) {
        check_matmul((enum dl_isa)isa, pool, DL_TYPE_Q8_0, 40, 2112, 70);
        check_matmul((enum dl_isa)isa, pool, DL_TYPE_Q4_0, 33, 64, 131);
        check_matmul((enum dl_isa)isa, pool, DL_TYPE_Q4_K, 5, 512, 37);
        check_matmul((enum dl_isa)isa, pool, DL_TYPE_F16, 9, 100, 21);
    }
    dl_pool_free(pool);
    dl_isa_force(DL_ISA_AVX512);
}
END_TEST

/* Weights repacked at load: every token count (one tile of 8 and each remainder, the old
 * 17-token stripe threshold, 64), odd row counts, every path (the non-AVX-512 ones read the
 * original, the AVX-512 one only the copy). Q4_K and Q6_K: one to eight super-blocks. */
START_TEST(test_matmul_prepared)
{
    static const struct {
        uint32_t type;
        int64_t cols[3];
    } cases[] = {
        {DL_TYPE_Q8_0, {32, 96, 1056}},
        {DL_TYPE_Q4_0, {32, 96, 1056}},
        {DL_TYPE_Q4_K, {256, 768, 2048}},
        {DL_TYPE_Q6_K, {256, 768, 2048}},
    };
    static const int64_t rows[] = {1, 17, 35};
    dl_pool *pool = dl_pool_create(3);
    ck_assert_ptr_nonnull(pool);
    for (size_t ty = 0; ty < sizeof cases / sizeof cases[0]; ty++) {
        uint32_t type = cases[ty].type;
        rng_state = 777 + type;
        for (int isa = 0; isa <= (int)dl_isa_detect(); isa++)
            for (int c = 0; c < 3; c++)
                for (int r = 0; r < 3; r++) {
                    for (size_t k = 0; k < sizeof n_toks / sizeof n_toks[0]; k++)
                        check_matmul_p((enum dl_isa)isa, pool, type, rows[r], cases[ty].cols[c], n_toks[k], 1);
                    check_matmul_p((enum dl_isa)isa, pool, type, rows[r], cases[ty].cols[c], 64, 1);
                }
        /* a thread count that splits the row tiles unevenly, with a larger shape */
        dl_pool *pool2 = dl_pool_create(2);
        ck_assert_ptr_nonnull(pool2);
        check_matmul_p(DL_ISA_AVX512, pool2, type, 83, 2048, 9, 1);
        dl_pool_free(pool2);
    }
    dl_pool_free(pool);
    dl_isa_force(DL_ISA_AVX512);
}
END_TEST

/* F16 / BF16 repacked at load (16 rows per column): column counts with every remainder of
 * the 8-column step and none, each token count, odd row counts, every path. */
START_TEST(test_matmul_prepared_half)
{
    static const int64_t cols[] = {1, 7, 16, 37, 83, 256};
    static const int64_t rows[] = {1, 17, 35};
    static const uint32_t types[] = {DL_TYPE_F16, DL_TYPE_BF16};
    dl_pool *pool = dl_pool_create(3);
    ck_assert_ptr_nonnull(pool);
    for (int ty = 0; ty < 2; ty++) {
        rng_state = 555 + types[ty];
        for (int isa = 0; isa <= (int)dl_isa_detect(); isa++)
            for (int c = 0; c < 6; c++)
                for (int r = 0; r < 3; r++) {
                    for (size_t k = 0; k < sizeof n_toks / sizeof n_toks[0]; k++)
                        check_matmul_p((enum dl_isa)isa, pool, types[ty], rows[r], cols[c], n_toks[k], 1);
                    check_matmul_p((enum dl_isa)isa, pool, types[ty], rows[r], cols[c], 40, 1);
                }
    }
    dl_pool *pool2 = dl_pool_create(2);
    ck_assert_ptr_nonnull(pool2);
    check_matmul_p(DL_ISA_AVX512, pool2, DL_TYPE_F16, 83, 2560, 1, 1);
    check_matmul_p(DL_ISA_AVX512, pool2, DL_TYPE_BF16, 83, 2560, 3, 1);
    dl_pool_free(pool2);
    dl_pool_free(pool);
    dl_isa_force(DL_ISA_AVX512);
}
END_TEST

/* A row read back from a weight, repacked or not, is the reference dequantisation. */
START_TEST(test_weight_get_row)
{
    static const uint32_t types[] = {DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q4_0, DL_TYPE_Q8_0,
                                     DL_TYPE_F32, DL_TYPE_Q6_K, DL_TYPE_Q4_K};
    for (int ty = 0; ty < 7; ty++) {
        rng_state = 31 + types[ty];
        const int64_t rows = 35, cols = dl_type_info(types[ty])->blck == 256 ? 512 : 96;
        tw t;
        tw_make(&t, types[ty], rows, cols);
        float *got = malloc(sizeof(float) * (size_t)cols);
        ck_assert_ptr_nonnull(got);
        for (int prep = 0; prep < 2; prep++) { /* as mapped, then repacked */
            void *owned = NULL;
            dl_isa_force(DL_ISA_AVX512);
            if (prep)
                ck_assert_int_eq(dl_weight_prepare(&t.w, &owned, NULL, 0), 0);
            if (owned) /* the row must come from the copy */
                memset(t.data, 0x7b, t.w.row_bytes * (size_t)rows);
            for (int64_t r = 0; r < rows; r++) {
                dl_weight_get_row(&t.w, r, got);
                ck_assert_msg(memcmp(got, t.deq + r * cols, sizeof(float) * (size_t)cols) == 0,
                              "%s prepared %d row %ld differs", dl_type_info(types[ty])->name,
                              owned != NULL, (long)r);
            }
            free(owned); /* the last round: the original is garbage now */
        }
        free(got);
        tw_free(&t);
    }
}
END_TEST

/* Types and ISAs without a packed layout are left as they are; F32 (the golden test's
 * weights) in particular is never repacked. The packed sizes are as kern_impl.h lays out. */
START_TEST(test_prepare_leaves_others)
{
    static const uint32_t types[] = {DL_TYPE_F32, DL_TYPE_TQ2_0};
    for (int i = 0; i < 2; i++) {
        tw t;
        tw_make(&t, types[i], 5, 256);
        dl_weight before = t.w;
        void *owned = (void *)&t;
        dl_isa_force(DL_ISA_AVX512);
        ck_assert_int_eq(dl_weight_prepare(&t.w, &owned, NULL, 0), 0);
        ck_assert_ptr_null(owned);
        ck_assert_ptr_null(t.w.packed);
        ck_assert(memcmp(&before, &t.w, sizeof before) == 0);
        ck_assert_uint_eq(dl_weight_prepared_bytes(&t.w), 0);
        tw_free(&t);
    }
    tw t;
    tw_make(&t, DL_TYPE_Q4_0, 17, 64);
    void *owned = NULL;
    dl_isa_force(DL_ISA_AVX2);
    ck_assert_uint_eq(dl_weight_prepared_bytes(&t.w), 0);
    ck_assert_int_eq(dl_weight_prepare(&t.w, &owned, NULL, 0), 0);
    ck_assert_ptr_null(owned);
    dl_isa_force(DL_ISA_AVX512);
    if (dl_isa_active() == DL_ISA_AVX512) {
        /* two 16-row groups of 2 blocks: 64 bytes of scales + 2 x 256 of quants each */
        ck_assert_uint_eq(dl_weight_prepared_bytes(&t.w), 2 * (64 + 512));
        ck_assert_int_eq(dl_weight_prepare(&t.w, &owned, NULL, 0), 0);
        ck_assert_ptr_nonnull(owned);
    }
    free(owned);
    tw_free(&t);
    /* Packed only for AVX-512, 17 rows = two 16-row groups: Q4_K / Q6_K of 2 super-blocks,
     * DL__KP_BLOCK / DL__K6_BLOCK bytes each; F16 of 37 columns x 16 rows x 2 bytes */
    static const struct { uint32_t type; int cols; size_t bytes; } packed[] = {
        { DL_TYPE_Q4_K, 512, 2 * 2 * 2368 },
        { DL_TYPE_Q6_K, 512, 2 * 2 * 3392 },
        { DL_TYPE_F16, 37, 2 * 37 * 32 },
    };
    for (size_t i = 0; i < sizeof packed / sizeof packed[0]; i++) {
        tw_make(&t, packed[i].type, 17, packed[i].cols);
        dl_isa_force(DL_ISA_AVX2);
        ck_assert_uint_eq(dl_weight_prepared_bytes(&t.w), 0);
        dl_isa_force(DL_ISA_AVX512);
        if (dl_isa_active() == DL_ISA_AVX512)
            ck_assert_uint_eq(dl_weight_prepared_bytes(&t.w), packed[i].bytes);
        tw_free(&t);
    }
}
END_TEST

/* Without scratch the quantised types fall back to the reference, which must still work. */
START_TEST(test_matmul_no_scratch)
{
    tw t;
    rng_state = 5;
    tw_make(&t, DL_TYPE_Q4_0, 20, 64);
    float x[2 * 64], y[2 * 20];
    fill(x, 2 * 64, 1.0f);
    dl_isa_force(DL_ISA_AVX512);
    dl_matmul(NULL, &t.w, x, y, 2, NULL);
    for (int tk = 0; tk < 2; tk++)
        for (int r = 0; r < 20; r++)
            ck_assert(y[tk * 20 + r] ==
                      dl_vec_dot_ref(DL_TYPE_Q4_0, (uint8_t *)t.data + r * t.w.row_bytes, x + tk * 64, 64));
    tw_free(&t);
}
END_TEST

/* The SIMD activation quantisers produce the reference's bytes exactly. */
START_TEST(test_act_quant_identical)
{
    const int64_t cols = 1024;
    size_t s = dl__actk_stride(cols) > dl__act32_stride(cols) ? dl__actk_stride(cols) : dl__act32_stride(cols);
    uint8_t *a = aligned_alloc(64, s), *b = aligned_alloc(64, s);
    float x[1024];
    rng_state = 77;
    fill(x, cols, 3.0f);
    for (int i = 0; i < 32; i++) /* an all-zero block, and exact .5 ties */
        x[64 + i] = 0.0f;
    x[200] = 127.0f;
    x[201] = 0.5f;
    x[202] = -1.5f;
    const dl__kops *ops[2] = {&dl__kops_avx2, &dl__kops_avx512};
    for (int i = 0; i < 2 && i < (int)dl_isa_detect(); i++) {
        memset(a, 0, s);
        memset(b, 0, s);
        dl__quant_act32_ref(x, cols, a);
        ops[i]->quant_act32(x, cols, b);
        ck_assert_mem_eq(a, b, (size_t)(cols + cols / 32 * 8));
        memset(a, 0, s);
        memset(b, 0, s);
        dl__quant_actk_ref(x, cols, a);
        ops[i]->quant_actk(x, cols, b);
        ck_assert_mem_eq(a, b, (size_t)(cols + cols / 256 * 4 + cols / 16 * 2));
    }
    free(a);
    free(b);
}
END_TEST

/* ---- vector kernels ---- */

static const int vec_sizes[] = {1, 7, 16, 33, 100, 1000};

static void close_arr(const float *a, const float *b, int n, float rel, const char *what)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabsf(a[i] - b[i]) <= rel * fabsf(b[i]) + 1e-7f, "%s[%d] of %d: %g vs %g", what, i,
                      n, a[i], b[i]);
}

/* The vectorised float -> fp16 row conversion gives dl_f32_to_fp16's bits on every ISA:
 * normal values, exact ties (round to even), the subnormal range, overflow to inf, +-0,
 * +-inf, and tails of every length. */
START_TEST(test_fp16_row)
{
    enum { N = 4099 };
    float *x = malloc(sizeof(float) * N);
    dl_fp16 *ref = malloc(sizeof(dl_fp16) * N), *got = malloc(sizeof(dl_fp16) * N);
    rng_state = 7;
    fill(x, N, 8.0f);
    for (int i = 0; i < 512; i++) {
        x[i] = ldexpf(x[i], -14 - i % 12);     /* down through the subnormals */
        x[512 + i] = ldexpf(x[512 + i], i % 16); /* up past 65504 */
    }
    for (int i = 0; i < 256; i++) /* halfway between two halves: ties go to even */
        x[1024 + i] = (float)(1024 + i) + 0.5f;
    x[2000] = 0.0f;
    x[2001] = -0.0f;
    x[2002] = INFINITY;
    x[2003] = -INFINITY;
    x[2004] = 65504.0f;
    x[2005] = 65520.0f;
    x[2006] = 65519.99f;
    for (int i = 0; i < N; i++)
        ref[i] = dl_f32_to_fp16(x[i]);
    for (int isa = 0; isa <= (int)dl_isa_detect(); isa++) {
        dl_isa_force((enum dl_isa)isa);
        for (int n = 0; n <= 40; n++) { /* every tail length */
            memset(got, 0xAB, sizeof(dl_fp16) * N);
            dl_f32_to_fp16_row(got, x + 2000, n);
            for (int i = 0; i < n; i++)
                ck_assert_uint_eq(got[i], ref[2000 + i]);
            ck_assert_uint_eq(got[n], 0xABAB); /* nothing past the end */
        }
        dl_f32_to_fp16_row(got, x, N);
        for (int i = 0; i < N; i++)
            ck_assert_msg(got[i] == ref[i], "%s [%d] %g: %04x vs %04x", dl_isa_name((enum dl_isa)isa),
                          i, x[i], got[i], ref[i]);
    }
    dl_isa_force(dl_isa_detect());
    free(x);
    free(ref);
    free(got);
}
END_TEST

START_TEST(test_vector_kernels)
{
    rng_state = 42;
    for (size_t k = 0; k < sizeof vec_sizes / sizeof vec_sizes[0]; k++) {
        int n = vec_sizes[k];
        float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n);
        float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
        fill(x, n, 4.0f);
        fill(w, n, 1.0f);
        /* references on the scalar path */
        dl_isa_force(DL_ISA_SCALAR);
        float rdot = dl_dot_f32(x, w, n);
        double ddot = 0, dmag = 0;
        for (int i = 0; i < n; i++) {
            ddot += (double)x[i] * w[i];
            dmag += fabs((double)x[i] * w[i]);
        }
        ck_assert(fabs(rdot - ddot) <= 1e-5 * dmag);
        for (int isa = 1; isa <= (int)dl_isa_detect(); isa++) {
            dl_isa_force((enum dl_isa)isa);
            const char *nm = dl_isa_name((enum dl_isa)isa);
            ck_assert_msg(fabs(dl_dot_f32(x, w, n) - ddot) <= 1e-5 * dmag + 1e-7, "dot %s n=%d", nm, n);

            dl_isa_force(DL_ISA_SCALAR);
            dl_rmsnorm(ref, x, w, n, 1e-5f);
            dl_isa_force((enum dl_isa)isa);
            dl_rmsnorm(got, x, w, n, 1e-5f);
            close_arr(got, ref, n, 1e-5f, "rmsnorm");

            dl_isa_force(DL_ISA_SCALAR);
            dl_swiglu(ref, x, w, n);
            dl_isa_force((enum dl_isa)isa);
            dl_swiglu(got, x, w, n);
            close_arr(got, ref, n, 1e-5f, "swiglu");

            memcpy(ref, x, sizeof(float) * n);
            memcpy(got, x, sizeof(float) * n);
            for (int i = 0; i < n; i++) /* a wide range, including exp underflow */
                ref[i] = got[i] = x[i] * 30.0f;
            dl_isa_force(DL_ISA_SCALAR);
            dl_softmax(ref, n);
            dl_isa_force((enum dl_isa)isa);
            dl_softmax(got, n);
            for (int i = 0; i < n; i++)
                ck_assert_msg(fabsf(got[i] - ref[i]) <= 1e-5f * ref[i] + 1e-30f, "softmax %s [%d] %g vs %g",
                              nm, i, got[i], ref[i]);

            memcpy(ref, w, sizeof(float) * n);
            memcpy(got, w, sizeof(float) * n);
            dl_isa_force(DL_ISA_SCALAR);
            dl_axpy_f32(ref, 0.37f, x, n);
            dl_isa_force((enum dl_isa)isa);
            dl_axpy_f32(got, 0.37f, x, n);
            close_arr(got, ref, n, 1e-6f, "axpy");

            memcpy(ref, w, sizeof(float) * n); /* bit-exact on every ISA (no FMA) */
            memcpy(got, w, sizeof(float) * n);
            dl_isa_force(DL_ISA_SCALAR);
            dl_sqacc_f32(ref, x, n);
            dl_isa_force((enum dl_isa)isa);
            dl_sqacc_f32(got, x, n);
            for (int i = 0; i < n; i++)
                ck_assert_msg(got[i] == ref[i] && ref[i] == w[i] + x[i] * x[i], "sqacc %s [%d]", nm, i);
        }
        free(x);
        free(w);
        free(ref);
        free(got);
    }
    dl_isa_force(DL_ISA_AVX512);
}
END_TEST

/* The scalar kernels are llama2.c's, operation for operation. */
START_TEST(test_scalar_matches_llama2c)
{
    enum { N = 37 };
    float x[N], w[N], o[N];
    rng_state = 3;
    fill(x, N, 2.0f);
    fill(w, N, 1.0f);
    dl_isa_force(DL_ISA_SCALAR);
    dl_rmsnorm(o, x, w, N, 1e-5f);
    float ss = 0.0f;
    for (int j = 0; j < N; j++)
        ss += x[j] * x[j];
    ss /= N;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < N; j++)
        ck_assert(o[j] == w[j] * (ss * x[j]));

    float s[N];
    memcpy(s, x, sizeof s);
    dl_softmax(s, N);
    float mx = x[0], sum = 0.0f, e[N];
    for (int i = 1; i < N; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < N; i++) {
        e[i] = expf(x[i] - mx);
        sum += e[i];
    }
    for (int i = 0; i < N; i++)
        ck_assert(s[i] == e[i] / sum);
    dl_isa_force(DL_ISA_AVX512);
}
END_TEST

START_TEST(test_rope)
{
    enum { H = 3, D = 16 };
    float x[H * D], y[H * D], f[D / 2];
    rng_state = 11;
    fill(x, H * D, 1.0f);
    for (int i = 0; i < D / 2; i++)
        f[i] = 1.0f + i;
    for (int use_f = 0; use_f < 2; use_f++) {
        int pos = 17;
        memcpy(y, x, sizeof x);
        dl_rope(y, H, D, pos, 10000.0f, use_f ? f : NULL);
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D / 2; i++) {
                double fr = pow(10000.0, -2.0 * i / D) / (use_f ? f[i] : 1.0);
                double c = cos(pos * fr), sn = sin(pos * fr);
                double a = x[h * D + 2 * i], b = x[h * D + 2 * i + 1];
                ck_assert(fabs(y[h * D + 2 * i] - (a * c - b * sn)) < 1e-4);
                ck_assert(fabs(y[h * D + 2 * i + 1] - (a * sn + b * c)) < 1e-4);
            }
    }
    /* position 0 is the identity */
    memcpy(y, x, sizeof x);
    dl_rope(y, H, D, 0, 500000.0f, NULL);
    ck_assert_mem_eq(x, y, sizeof x);
}
END_TEST

START_TEST(test_isa_selection)
{
    enum dl_isa best = dl_isa_detect();
    dl_isa_force(DL_ISA_AVX512);
    ck_assert_int_eq(dl_isa_active(), best);
    dl_isa_force(DL_ISA_SCALAR);
    ck_assert_int_eq(dl_isa_active(), DL_ISA_SCALAR);
    ck_assert_str_eq(dl_isa_name(DL_ISA_SCALAR), "scalar");
    ck_assert_str_eq(dl_isa_name(DL_ISA_AVX2), "avx2");
    ck_assert_str_eq(dl_isa_name(DL_ISA_AVX512), "avx512");
    dl_isa_force(DL_ISA_AVX512);
    ck_assert_uint_ge(dl_matmul_scratch_size(3, 4096), 3 * (4096 + 4096 / 32 * 8));
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_isa_selection);
    tcase_add_test(tc, test_act_quant_identical);
    tcase_add_test(tc, test_matmul_float_types);
    tcase_add_test(tc, test_matmul_q8_0_q4_0);
    tcase_add_test(tc, test_matmul_k_quants);
    tcase_add_test(tc, test_matmul_many_tokens);
    tcase_add_test(tc, test_matmul_no_scratch);
    tcase_add_test(tc, test_matmul_prepared);
    tcase_add_test(tc, test_matmul_prepared_half);
    tcase_add_test(tc, test_weight_get_row);
    tcase_add_test(tc, test_prepare_leaves_others);
    tcase_add_test(tc, test_vector_kernels);
    tcase_add_test(tc, test_fp16_row);
    tcase_add_test(tc, test_scalar_matches_llama2c);
    tcase_add_test(tc, test_rope);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(kernels_suite());
}
