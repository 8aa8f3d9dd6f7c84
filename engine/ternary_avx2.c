/* ternary_avx2.c — AVX2 ternary x int8 dots; called only after dispatch (ternary.c).
 *
 * 32 bytes of codes hold 128 values in four 2-bit planes; each plane, shifted down and
 * masked, is 32 unsigned codes for 32 consecutive activations, so vpmaddubsw (u8 x s8)
 * multiplies it straight against the int8 activations. */
#include <immintrin.h>

#include "ternary_impl.h"

/* Codes 0..2 times activations: per 32-byte group, plane g at bit shift sh[g]. */
static inline __m256i group_dot(__m256i v, const int8_t *q, int s0, int s1, int s2, int s3)
{
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(v, s0), m3);
    __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(v, s1), m3);
    __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, s2), m3);
    __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(v, s3), m3);
    /* each i16 lane is at most 4 * 2 * 2 * 128 = 2048: no saturation */
    __m256i p = _mm256_add_epi16(
        _mm256_add_epi16(_mm256_maddubs_epi16(c0, _mm256_loadu_si256((const void *)q)),
                         _mm256_maddubs_epi16(c1, _mm256_loadu_si256((const void *)(q + 32)))),
        _mm256_add_epi16(_mm256_maddubs_epi16(c2, _mm256_loadu_si256((const void *)(q + 64))),
                         _mm256_maddubs_epi16(c3, _mm256_loadu_si256((const void *)(q + 96)))));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static inline int32_t hsum8(__m256i a)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

int32_t dl__i2s_dot_avx2(const uint8_t *w, const int8_t *q, int64_t n)
{
    __m256i acc = _mm256_setzero_si256();
    for (int64_t i = 0; i < n / 128; i++)
        acc = _mm256_add_epi32(acc, group_dot(_mm256_loadu_si256((const void *)(w + 32 * i)),
                                              q + 128 * i, 6, 4, 2, 0));
    return hsum8(acc);
}

int32_t dl__tq2_dot_avx2(const uint8_t *qs, const int8_t *q)
{
    __m256i a = group_dot(_mm256_loadu_si256((const void *)qs), q, 0, 2, 4, 6);
    __m256i b = group_dot(_mm256_loadu_si256((const void *)(qs + 32)), q + 128, 0, 2, 4, 6);
    return hsum8(_mm256_add_epi32(a, b));
}
