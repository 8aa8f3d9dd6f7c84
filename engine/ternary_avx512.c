/* ternary_avx512.c — AVX-512 VNNI ternary x int8 dots; called only after dispatch.
 *
 * The 32 code bytes of 128 values are broadcast to both halves of a zmm and shifted by a
 * different amount per half (vpsrlvw), so one masked register holds the codes of 64
 * consecutive values — planes g and g+1 — matching 64 contiguous activation bytes;
 * vpdpbusd (u8 x s8 -> i32) then accumulates them in one instruction. */
#include <immintrin.h>

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

