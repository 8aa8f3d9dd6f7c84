/* ternary_avx512.c — AVX-512 VNNI ternary x int8 dots; called only after dispatch.
 *
 * The 32 code bytes of 128 values are broadcast to both halves of a zmm and shifted by a
 * different amount per half (vpsrlvw), so one masked register holds the codes of 64
 * consecutive values — planes g and g+1 — matching 64 contiguous activation bytes;
 * vpdpbusd (u8 x s8 -> i32) then accumulates them in one instruction. */
#include <immintrin.h>
#include <string.h>

#include "ternary_impl.h"

static inline __m512i half_dot(__m512i acc, __m256i v, const int8_t *q, __m512i sh01,
                               __m512i sh23)
{
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i b = _mm512_broadcast_i64x4(v);
    __m512i c01 = _mm512_and_si512(_mm512_srlv_epi16(b, sh01), m3);
    __m512i c23 = _mm512_and_si512(_mm512_srlv_epi16(b, sh23), m3);
    acc = _mm512_dpbusd_epi32(acc, c01, _mm512_loadu_si512((const void *)q));
    return _mm512_dpbusd_epi32(acc, c23, _mm512_loadu_si512((const void *)(q + 64)));
}

/* Shift counts per 16-bit lane: the low 256 bits get a, the high 256 bits b. */
static inline __m512i shifts(short a, short b)
{
    return _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1);
}

int32_t dl__i2s_dot_avx512(const uint8_t *w, const int8_t *q, int64_t n)
{
    const __m512i sh01 = shifts(6, 4), sh23 = shifts(2, 0);
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    int64_t nb = n / 128, i = 0;
    for (; i + 1 < nb; i += 2) {
        acc0 = half_dot(acc0, _mm256_loadu_si256((const void *)(w + 32 * i)), q + 128 * i,
                        sh01, sh23);
        acc1 = half_dot(acc1, _mm256_loadu_si256((const void *)(w + 32 * i + 32)),
                        q + 128 * i + 128, sh01, sh23);
    }
    if (i < nb)
        acc0 = half_dot(acc0, _mm256_loadu_si256((const void *)(w + 32 * i)), q + 128 * i,
                        sh01, sh23);
    return _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
}

int32_t dl__tq2_dot_avx512(const uint8_t *qs, const int8_t *q)
{
    const __m512i sh01 = shifts(0, 2), sh23 = shifts(4, 6);
    __m512i acc = half_dot(_mm512_setzero_si512(), _mm256_loadu_si256((const void *)qs), q,
                           sh01, sh23);
    acc = half_dot(acc, _mm256_loadu_si256((const void *)(qs + 32)), q + 128, sh01, sh23);
    return _mm512_reduce_add_epi32(acc);
}

/* One group's codes as two zmm: planes 0|1 and 2|3 for 64 + 64 consecutive activations. */
static inline void codes(const uint8_t *w, __m512i sh01, __m512i sh23, __m512i *c01,
                         __m512i *c23)
{
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const void *)w));
    *c01 = _mm512_and_si512(_mm512_srlv_epi16(b, sh01), m3);
    *c23 = _mm512_and_si512(_mm512_srlv_epi16(b, sh23), m3);
}

#define DPB(acc, c, p) ((acc) = _mm512_dpbusd_epi32((acc), (c), _mm512_loadu_si512((const void *)(p))))

/* The accumulators are named variables, not arrays: GCC at -O2 keeps an indexed __m512i
 * array on the stack. */
void dl__i2s_dot4t_avx512(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                          int32_t out[4])
{
    const __m512i sh01 = shifts(6, 4), sh23 = shifts(2, 0);
    /* separate accumulators for the two halves: eight independent vpdpbusd chains */
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
            b3 = a0;
    const int8_t *q1 = q + qstride, *q2 = q + 2 * qstride, *q3 = q + 3 * qstride;
    for (int64_t i = 0; i < n / 128; i++) {
        __m512i c01, c23;
        codes(w + 32 * i, sh01, sh23, &c01, &c23);
        int64_t o = 128 * i;
        DPB(a0, c01, q + o), DPB(b0, c23, q + o + 64);
        DPB(a1, c01, q1 + o), DPB(b1, c23, q1 + o + 64);
        DPB(a2, c01, q2 + o), DPB(b2, c23, q2 + o + 64);
        DPB(a3, c01, q3 + o), DPB(b3, c23, q3 + o + 64);
    }
    out[0] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, b0));
    out[1] = _mm512_reduce_add_epi32(_mm512_add_epi32(a1, b1));
    out[2] = _mm512_reduce_add_epi32(_mm512_add_epi32(a2, b2));
    out[3] = _mm512_reduce_add_epi32(_mm512_add_epi32(a3, b3));
}


/* ---- packed I2_S (layout: ternary_impl.h) ---- */

/* Prefetch distance on the packed stream, bytes ahead (runs on into the next group). */
#define I2S_PF 4096

/* C independent accumulators per token (the 32 vpdpbusd of a 128-group in turn) hide the
 * instruction's latency when there are few tokens. */
static inline __attribute__((always_inline)) void
i2s_packed(const uint8_t *grp, int64_t cols, const int8_t *q, int64_t qstride, const int NT,
           int first, int32_t out[][16])
{
    const int C = NT == 1 ? 8 : NT == 2 ? 4 : NT <= 4 ? 2 : 1;
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i acc[8]; /* token t, chain c at t * C + c (NT * C <= 8) */
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++)
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            acc[t * C + c] = _mm512_setzero_si512();
    for (int64_t gi = 0; gi < cols / 128; gi++) {
        const uint8_t *p = grp + (size_t)gi * 512;
        if (first) {
            #pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                _mm_prefetch((const char *)p + I2S_PF + 64 * k, _MM_HINT_T0);
        }
        #pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m512i v = _mm512_load_si512((const void *)(p + 64 * k)), cd[4];
            cd[0] = _mm512_and_si512(_mm512_srli_epi16(v, 6), m3);
            cd[1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m3);
            cd[2] = _mm512_and_si512(_mm512_srli_epi16(v, 2), m3);
            cd[3] = _mm512_and_si512(v, m3);
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                const int8_t *a = q + t * qstride + gi * 128 + 4 * k;
                #pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    int32_t a4;
                    memcpy(&a4, a + 32 * j, 4);
                    acc[t * C + (4 * k + j) % C] = _mm512_dpbusd_epi32(acc[t * C + (4 * k + j) % C], cd[j],
                                                                  _mm512_set1_epi32(a4));
                }
            }
        }
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
        #pragma GCC unroll 8
        for (int c = 1; c < C; c++)
            acc[t * C] = _mm512_add_epi32(acc[t * C], acc[t * C + c]);
        _mm512_storeu_si512((void *)out[t], acc[t * C]);
    }
}

void dl__i2s_packed_avx512(const uint8_t *grp, int64_t cols, const int8_t *q, int64_t qstride,
                           int nt, int first, int32_t out[][16])
{
    switch (nt) {
#define DL__I2(n) \
    case n: i2s_packed(grp, cols, q, qstride, n, first, out); break;
    DL__I2(1) DL__I2(2) DL__I2(3) DL__I2(4) DL__I2(5) DL__I2(6) DL__I2(7) DL__I2(8)
#undef DL__I2
    default: break;
    }
}
