/* test_quant.c — type traits, half/bfloat16 conversions, block layouts and the scalar
 * reference kernels of quant.c. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "testutil.h"

/* Deterministic xorshift generator so every run sees the same blocks. */
static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s ? s : 1; }
static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
/* Uniform in [-1, 1). */
static float rng_unit(void) { return (float)((double)(rng_next() >> 11) * 0x1p-52 - 1.0); }

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- traits ---------------------------------------------------------------------------- */

START_TEST(test_traits)
{
    const struct { uint32_t id; const char *name; int64_t blck; size_t size; int mm; } want[] = {
        {DL_TYPE_F32, "F32", 1, 4, 1},      {DL_TYPE_F16, "F16", 1, 2, 1},
        {DL_TYPE_BF16, "BF16", 1, 2, 1},    {DL_TYPE_Q8_0, "Q8_0", 32, 34, 1},
        {DL_TYPE_Q4_0, "Q4_0", 32, 18, 1},  {DL_TYPE_Q4_K, "Q4_K", 256, 144, 1},
        {DL_TYPE_Q6_K, "Q6_K", 256, 210, 1}, {DL_TYPE_Q4_1, "Q4_1", 32, 20, 0},
        {DL_TYPE_Q5_0, "Q5_0", 32, 22, 0},  {DL_TYPE_Q5_1, "Q5_1", 32, 24, 0},
        {DL_TYPE_Q8_1, "Q8_1", 32, 36, 0},  {DL_TYPE_Q2_K, "Q2_K", 256, 84, 0},
        {DL_TYPE_Q3_K, "Q3_K", 256, 110, 0}, {DL_TYPE_Q5_K, "Q5_K", 256, 176, 0},
        {DL_TYPE_Q8_K, "Q8_K", 256, 292, 0}, {DL_TYPE_I8, "I8", 1, 1, 0},
        {DL_TYPE_I16, "I16", 1, 2, 0},      {DL_TYPE_I32, "I32", 1, 4, 0},
        {DL_TYPE_I64, "I64", 1, 8, 0},      {DL_TYPE_F64, "F64", 1, 8, 0},
        {DL_TYPE_TQ1_0, "TQ1_0", 256, 54, 1}, {DL_TYPE_TQ2_0, "TQ2_0", 256, 66, 1},
        {DL_TYPE_I2_S, "I2_S", 128, 32, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const dl_type_traits *t = dl_type_info(want[i].id);
        ck_assert_ptr_nonnull(t);
        ck_assert_str_eq(t->name, want[i].name);
        ck_assert_int_eq(t->blck, want[i].blck);
        ck_assert_uint_eq(t->type_size, want[i].size);
        ck_assert_int_eq(t->can_matmul, want[i].mm);
    }
    /* ids ggml retired or never assigned, and ids past the table */
    const uint32_t unknown[] = {4, 5, 16, 23, 29, 31, 33, 37, 39, 40, 41, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        ck_assert_ptr_null(dl_type_info(unknown[i]));
}
END_TEST

START_TEST(test_row_size)
{
    ck_assert_uint_eq(dl_row_size(DL_TYPE_F32, 7), 28);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_F16, 7), 14);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q8_0, 64), 68);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q4_0, 4096), 128 * 18);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q4_K, 2048), 8 * 144);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q6_K, 256), 210);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q8_0, 0), 0);
    /* not a multiple of the block */
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q8_0, 33), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q4_0, 31), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q4_K, 288), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q6_K, 257), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_Q4_K, 1), 0);
    /* negative, unknown type, overflow */
    ck_assert_uint_eq(dl_row_size(DL_TYPE_F32, -4), 0);
    ck_assert_uint_eq(dl_row_size(4, 32), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_F64, INT64_MAX - 7), 0);
    ck_assert_uint_eq(dl_row_size(DL_TYPE_I64, (INT64_MAX / 8) * 8), 0);
}
END_TEST

/* ---- half / bfloat16 ------------------------------------------------------------------- */

START_TEST(test_fp16_known)
{
    const struct { float f; uint16_t h; } exact[] = {
        {0.0f, 0x0000},       {-0.0f, 0x8000},     {1.0f, 0x3c00},      {-2.0f, 0xc000},
        {0.5f, 0x3800},       {65504.0f, 0x7bff},  {0x1p-14f, 0x0400},  /* min normal */
        {0x1p-24f, 0x0001},   /* min subnormal */  {0x3p-24f, 0x0003},
        {0x3ffp-24f, 0x03ff}, /* max subnormal */  {-0x1p-24f, 0x8001},
        {INFINITY, 0x7c00},   {-INFINITY, 0xfc00}, {1.5f, 0x3e00},      {0.333251953125f, 0x3555},
    };
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        ck_assert_uint_eq(dl_f32_to_fp16(exact[i].f), exact[i].h);
        ck_assert_uint_eq(bits(dl_fp16_to_f32(exact[i].h)), bits(exact[i].f));
    }
    /* rounding: ties go to the even mantissa */
    ck_assert_uint_eq(dl_f32_to_fp16(1.0f + 0x1p-11f), 0x3c00);           /* tie, 0x3c00 even */
    ck_assert_uint_eq(dl_f32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);       /* tie, up to even */
    ck_assert_uint_eq(dl_f32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01); /* above tie */
    ck_assert_uint_eq(dl_f32_to_fp16(0x1p-25f), 0x0000);                  /* tie to 0 */
    ck_assert_uint_eq(dl_f32_to_fp16(0x3p-25f), 0x0002);                  /* 1.5 -> 2 */
    ck_assert_uint_eq(dl_f32_to_fp16(0x5p-25f), 0x0002);                  /* 2.5 -> 2 */
    ck_assert_uint_eq(dl_f32_to_fp16(0x1.000002p-25f), 0x0001);           /* just above */
    ck_assert_uint_eq(dl_f32_to_fp16(0x7ffp-25f), 0x0400); /* max subnormal + half -> normal */
    ck_assert_uint_eq(dl_f32_to_fp16(65519.0f), 0x7bff);
    ck_assert_uint_eq(dl_f32_to_fp16(65520.0f), 0x7c00); /* the tie with 65536 overflows */
    ck_assert_uint_eq(dl_f32_to_fp16(1e10f), 0x7c00);
    ck_assert_uint_eq(dl_f32_to_fp16(1e-10f), 0x0000);
    ck_assert_uint_eq(dl_f32_to_fp16(-1e-10f), 0x8000);
    /* nan stays nan both ways */
    uint16_t hn = dl_f32_to_fp16(NAN);
    ck_assert_uint_eq(hn & 0x7c00, 0x7c00);
    ck_assert_uint_ne(hn & 0x03ff, 0);
    ck_assert(isnan(dl_fp16_to_f32(0x7e00)));
    ck_assert(isnan(dl_fp16_to_f32(0xfc01)));
    ck_assert(isinf(dl_fp16_to_f32(0x7c00)));
    /* every finite half survives a round trip unchanged */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        ck_assert_uint_eq(dl_f32_to_fp16(dl_fp16_to_f32((uint16_t)h)), h);
    }
}
END_TEST

START_TEST(test_bf16_known)
{
    ck_assert_uint_eq(dl_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(dl_f32_to_bf16(-2.0f), 0xc000);
    ck_assert_uint_eq(dl_f32_to_bf16(0.0f), 0x0000);
    ck_assert_uint_eq(dl_f32_to_bf16(-0.0f), 0x8000);
    ck_assert_uint_eq(dl_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(dl_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(dl_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);           /* tie to even (down) */
    ck_assert_uint_eq(dl_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);       /* tie to even (up) */
    ck_assert_uint_eq(dl_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81); /* above tie */
    ck_assert_uint_eq(dl_f32_to_bf16(0x1p-130f), 0x0008);                /* subnormal, exact */
    ck_assert_uint_eq(dl_f32_to_bf16(0x1.fffffep127f), 0x7f80);          /* overflows */
    uint16_t n = dl_f32_to_bf16(NAN);
    ck_assert_uint_eq(n & 0x7f80, 0x7f80);
    ck_assert_uint_ne(n & 0x7f, 0);
    /* a signalling nan whose payload sits only in the low 16 bits stays a nan */
    uint32_t snan = 0x7f800001u;
    float fs;
    memcpy(&fs, &snan, sizeof fs);
    ck_assert_uint_ne(dl_f32_to_bf16(fs) & 0x7f, 0);
    ck_assert_uint_eq(bits(dl_bf16_to_f32(0x3f81)), 0x3f810000u);
    ck_assert(isnan(dl_bf16_to_f32(0x7fc0)));
    ck_assert_uint_eq(bits(dl_bf16_to_f32(0x0001)), 0x00010000u); /* subnormal */
}
END_TEST

/* ---- hand-built blocks ----------------------------------------------------------------- */

START_TEST(test_q8_0_block)
{
    dl_block_q8_0 b[2];
    b[0].d = 0x3800; /* 0.5 */
    b[1].d = 0xc000; /* -2 */
    for (int j = 0; j < 32; j++) {
        b[0].qs[j] = (int8_t)(j - 16);
        b[1].qs[j] = (int8_t)(j == 31 ? -128 : j);
    }
    float y[64];
    dl_dequantize_row(DL_TYPE_Q8_0, b, y, 64);
    for (int j = 0; j < 32; j++) {
        ck_assert_float_eq(y[j], 0.5f * (float)(j - 16));
        ck_assert_float_eq(y[32 + j], j == 31 ? 256.0f : -2.0f * (float)j);
    }
}
END_TEST

START_TEST(test_q4_0_block)
{
    dl_block_q4_0 b;
    b.d = 0x3c00; /* 1.0 */
    for (int j = 0; j < 16; j++)
        b.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    dl_dequantize_row(DL_TYPE_Q4_0, &b, y, 32);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], (float)(j - 8));          /* low nibbles: elements 0..15 */
        ck_assert_float_eq(y[16 + j], (float)(15 - j - 8)); /* high nibbles: 16..31 */
    }
}
END_TEST

/* A Q4_K block with scales sc_j = j+1 (and 60+j for the packed-high ones), mins m_j = 2j,
 * d = 0.5, dmin = 0.25, quant q_e = e % 16, written byte by byte as ggml lays it out. */
START_TEST(test_q4_K_block)
{
    const uint8_t sc[8] = {1, 2, 3, 4, 61, 62, 33, 18};
    const uint8_t mn[8] = {0, 2, 63, 6, 8, 40, 12, 17};
    dl_block_q4_K b;
    memset(&b, 0, sizeof b);
    b.d = 0x3800;    /* 0.5 */
    b.dmin = 0x3400; /* 0.25 */
    for (int j = 0; j < 4; j++) {
        b.scales[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
        b.scales[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
        b.scales[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4));
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int e0 = 64 * c + l, e1 = 64 * c + 32 + l;
            b.qs[32 * c + l] = (uint8_t)((e0 % 16) | ((e1 % 16) << 4));
        }
    float y[256];
    dl_dequantize_row(DL_TYPE_Q4_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 32;
        float want = 0.5f * (float)sc[j] * (float)(e % 16) - 0.25f * (float)mn[j];
        ck_assert_msg(y[e] == want, "element %d: %g != %g", e, y[e], want);
    }
}
END_TEST

/* A Q6_K block with quant q_e = (e*7) % 64 - 32 and scale_j = j - 8 (signed), d = 0.125. */
START_TEST(test_q6_K_block)
{
    dl_block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = 0x3000; /* 0.125 */
    for (int j = 0; j < 16; j++)
        b.scales[j] = (int8_t)(j - 8);
    for (int e = 0; e < 256; e++) {
        int u = (e * 7) % 64; /* stored value, quant + 32 */
        int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
        int qli = 64 * h + l + ((quarter & 1) ? 32 : 0);
        b.ql[qli] |= (uint8_t)((u & 0xf) << ((quarter & 2) ? 4 : 0));
        b.qh[32 * h + l] |= (uint8_t)((u >> 4) << (2 * quarter));
    }
    float y[256];
    dl_dequantize_row(DL_TYPE_Q6_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        float want = 0.125f * (float)(e / 16 - 8) * (float)((e * 7) % 64 - 32);
        ck_assert_msg(y[e] == want, "element %d: %g != %g", e, y[e], want);
    }
}
END_TEST

/* ---- random round trips ---------------------------------------------------------------- */

/* Per type: the largest |x - dequant(quant(x))| allowed, as a fraction of the absmax of the
 * quantisation block (the whole 256 for K-quants) the element sits in. Derived from the
 * step sizes:
 *   F32  exact;  F16/BF16 relative to the element itself (2^-11, 2^-8) — checked separately.
 *   Q8_0 half a step, step = absmax/127, plus the half rounding of d: 0.5/127 + 2^-11 -> 0.005
 *   Q4_0 the side opposite the extreme clamps at +7*d, d = absmax/8: up to one step -> 0.126
 *   Q4_K half a step (range <= 2*absmax over 15 levels: 1/15) plus the 6-bit rounding of
 *        scale and min against the block maxima (1/63 + 1/126): -> 0.1
 *   Q6_K half a step (absmax/31/2) plus 32 * the 8-bit scale rounding (1/254/31): -> 0.025
 */
static const struct { uint32_t type; float tol; } round_trip[] = {
    {DL_TYPE_Q8_0, 0.005f}, {DL_TYPE_Q4_0, 0.126f}, {DL_TYPE_Q4_K, 0.1f}, {DL_TYPE_Q6_K, 0.025f},
};

/* Fill with one of several distributions so scales span orders of magnitude and blocks
 * include all-positive, all-negative, constant and zero runs. */
static void fill_random(float *x, int64_t n, int kind)
{
    for (int64_t i = 0; i < n; i++) {
        float u = rng_unit();
        switch (kind % 5) {
        case 0: x[i] = u; break;
        case 1: x[i] = u * ldexpf(1.0f, (int)(rng_next() % 20) - 10); break;
        case 2: x[i] = fabsf(u) * 0.02f + 0.001f; break;
        case 3: x[i] = -fabsf(u) * 3.0f; break;
        default: x[i] = (i / 32) % 3 == 0 ? 0.0f : (i / 32) % 3 == 1 ? 0.7f : u * 0.05f; break;
        }
    }
}

START_TEST(test_round_trip_blocks)
{
    enum { N = 1024 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    void *q = malloc(dl_row_size(DL_TYPE_Q8_0, N)); /* the largest of the four */
    rng_seed(12345);
    for (size_t t = 0; t < sizeof round_trip / sizeof round_trip[0]; t++) {
        uint32_t type = round_trip[t].type;
        int64_t blk = type == DL_TYPE_Q4_K || type == DL_TYPE_Q6_K ? 256 : 32;
        for (int kind = 0; kind < 25; kind++) {
            fill_random(x, N, kind);
            size_t bytes = dl_quantize_row(type, x, q, N);
            ck_assert_uint_eq(bytes, dl_row_size(type, N));
            dl_dequantize_row(type, q, y, N);
            for (int64_t b = 0; b < N / blk; b++) {
                float amax = 0.0f;
                for (int64_t i = 0; i < blk; i++)
                    amax = fmaxf(amax, fabsf(x[b * blk + i]));
                for (int64_t i = 0; i < blk; i++) {
                    float err = fabsf(x[b * blk + i] - y[b * blk + i]);
                    ck_assert_msg(err <= round_trip[t].tol * amax,
                                  "%s kind %d elem %lld: %g vs %g (absmax %g)",
                                  dl_type_info(type)->name, kind, (long long)(b * blk + i),
                                  x[b * blk + i], y[b * blk + i], amax);
                }
            }
        }
    }
    free(x);
    free(y);
    free(q);
}
END_TEST

/* Tighter than the table: a block of equal values is reproduced almost exactly by Q8_0,
 * and all-zero blocks stay zero in every type. */
START_TEST(test_round_trip_special)
{
    float x[256], y[256];
    uint8_t q[256 * 4];
    const uint32_t types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q8_0,
                              DL_TYPE_Q4_0, DL_TYPE_Q4_K, DL_TYPE_Q6_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        memset(x, 0, sizeof x);
        ck_assert_uint_eq(dl_quantize_row(types[t], x, q, 256), dl_row_size(types[t], 256));
        dl_dequantize_row(types[t], q, y, 256);
        for (int i = 0; i < 256; i++)
            ck_assert_float_eq(y[i], 0.0f);
    }
    for (int i = 0; i < 32; i++)
        x[i] = 0.25f;
    dl_quantize_row(DL_TYPE_Q8_0, x, q, 32);
    dl_dequantize_row(DL_TYPE_Q8_0, q, y, 32);
    for (int i = 0; i < 32; i++)
        ck_assert_float_eq_tol(y[i], 0.25f, 0.25f * 0x1p-10f);
    /* odd sizes are refused without writing */
    ck_assert_uint_eq(dl_quantize_row(DL_TYPE_Q4_K, x, q, 32), 0);
    ck_assert_uint_eq(dl_quantize_row(DL_TYPE_Q5_K, x, q, 256), 0);
}
END_TEST

START_TEST(test_round_trip_plain)
{
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    uint8_t *q = malloc(N * 4);
    rng_seed(777);
    fill_random(x, N, 1);
    /* F32 exact; F16 within half an ulp (2^-11 relative, x well inside the normal range
     * or absolute 2^-25 below it); BF16 within 2^-8 relative (half of 8 bits) */
    dl_quantize_row(DL_TYPE_F32, x, q, N);
    dl_dequantize_row(DL_TYPE_F32, q, y, N);
    ck_assert_int_eq(memcmp(x, y, N * sizeof *x), 0);
    dl_quantize_row(DL_TYPE_F16, x, q, N);
    dl_dequantize_row(DL_TYPE_F16, q, y, N);
    for (int i = 0; i < N; i++)
        ck_assert(fabsf(x[i] - y[i]) <= fmaxf(fabsf(x[i]) * 0x1p-11f, 0x1p-25f));
    dl_quantize_row(DL_TYPE_BF16, x, q, N);
    dl_dequantize_row(DL_TYPE_BF16, q, y, N);
    for (int i = 0; i < N; i++)
        ck_assert(fabsf(x[i] - y[i]) <= fabsf(x[i]) * 0x1p-8f);
    free(x);
    free(y);
    free(q);
}
END_TEST

/* dl_vec_dot_ref must equal dot(dequantize(row), x) up to float summation order: within
 * 1e-4 of sum |w_i x_i| (relative to the magnitude of the terms, since the dot itself can
 * cancel to near zero). */
START_TEST(test_vec_dot)
{
    enum { N = 2048 };
    float *w = malloc(N * sizeof *w), *x = malloc(N * sizeof *x), *d = malloc(N * sizeof *d);
    uint8_t *q = malloc(N * 4);
    const uint32_t types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q8_0,
                              DL_TYPE_Q4_0, DL_TYPE_Q4_K, DL_TYPE_Q6_K};
    rng_seed(99);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        for (int kind = 0; kind < 5; kind++) {
            int64_t n = (kind % 2) ? N : 256; /* also a single K block */
            fill_random(w, n, kind);
            fill_random(x, n, kind + 1);
            dl_quantize_row(types[t], w, q, n);
            dl_dequantize_row(types[t], q, d, n);
            double ref = 0.0, mag = 0.0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double)d[i] * x[i];
                mag += fabs((double)d[i] * x[i]);
            }
            float got = dl_vec_dot_ref(types[t], q, x, n);
            ck_assert_msg(fabs(got - ref) <= 1e-4 * mag, "%s kind %d: %g vs %g",
                          dl_type_info(types[t])->name, kind, got, ref);
        }
    }
    free(w);
    free(x);
    free(d);
    free(q);
}
END_TEST

/* The quantisers must produce exactly ggml's bit layout: quantise a row whose values are
 * exactly representable (a known Q4_0 block), and check the bytes. */
START_TEST(test_q4_0_bytes)
{
    float x[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)((j % 16) - 8); /* max |x| = -8 -> d = 1, quant = x + 8 */
    dl_block_q4_0 b;
    dl_quantize_row(DL_TYPE_Q4_0, x, &b, 32);
    ck_assert_uint_eq(b.d, 0x3c00);
    for (int j = 0; j < 16; j++)
        ck_assert_uint_eq(b.qs[j], (uint8_t)(j | (j << 4)));
}
END_TEST

static Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_traits);
    tcase_add_test(tc, test_row_size);
    tcase_add_test(tc, test_fp16_known);
    tcase_add_test(tc, test_bf16_known);
    tcase_add_test(tc, test_q8_0_block);
    tcase_add_test(tc, test_q4_0_block);
    tcase_add_test(tc, test_q4_K_block);
    tcase_add_test(tc, test_q6_K_block);
    tcase_add_test(tc, test_round_trip_blocks);
    tcase_add_test(tc, test_round_trip_special);
    tcase_add_test(tc, test_round_trip_plain);
    tcase_add_test(tc, test_vec_dot);
    tcase_add_test(tc, test_q4_0_bytes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(quant_suite());
}
