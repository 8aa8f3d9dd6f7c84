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
