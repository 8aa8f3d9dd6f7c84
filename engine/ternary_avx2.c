/* ternary_avx2.c — AVX2 ternary x int8 dots and the activation quantisation; called only
 * after dispatch (ternary.c). The AVX-512 path uses the quantisation and TQ1_0 dot from here.
 *
 * 32 bytes of codes hold 128 values in four 2-bit planes; each plane, shifted down and
 * masked, is 32 unsigned codes for 32 consecutive activations, so vpmaddubsw (u8 x s8)
 * multiplies it straight against the int8 activations. */
#include <immintrin.h>
#include <string.h>

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

/* The four planes of one 32-byte group, shifts s0..s3. */
static inline void planes(__m256i v, int s0, int s1, int s2, int s3, __m256i c[4])
{
    const __m256i m3 = _mm256_set1_epi8(3);
    c[0] = _mm256_and_si256(_mm256_srli_epi16(v, s0), m3);
    c[1] = _mm256_and_si256(_mm256_srli_epi16(v, s1), m3);
    c[2] = _mm256_and_si256(_mm256_srli_epi16(v, s2), m3);
    c[3] = _mm256_and_si256(_mm256_srli_epi16(v, s3), m3);
}

/* acc += sum over the 128 values of decoded planes c times q (i32 lanes). */
static inline __m256i planes_dot(__m256i acc, const __m256i c[4], const int8_t *q)
{
    __m256i p = _mm256_add_epi16(
        _mm256_add_epi16(_mm256_maddubs_epi16(c[0], _mm256_loadu_si256((const void *)q)),
                         _mm256_maddubs_epi16(c[1], _mm256_loadu_si256((const void *)(q + 32)))),
        _mm256_add_epi16(_mm256_maddubs_epi16(c[2], _mm256_loadu_si256((const void *)(q + 64))),
                         _mm256_maddubs_epi16(c[3], _mm256_loadu_si256((const void *)(q + 96)))));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

void dl__i2s_dot4t_avx2(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                        int32_t out[4])
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < n / 128; i++) {
        __m256i c[4];
        planes(_mm256_loadu_si256((const void *)(w + 32 * i)), 6, 4, 2, 0, c);
        const int8_t *p = q + 128 * i;
        a0 = planes_dot(a0, c, p);
        a1 = planes_dot(a1, c, p + qstride);
        a2 = planes_dot(a2, c, p + 2 * qstride);
        a3 = planes_dot(a3, c, p + 3 * qstride);
    }
    out[0] = hsum8(a0), out[1] = hsum8(a1), out[2] = hsum8(a2), out[3] = hsum8(a3);
}

/* ---- TQ1_0 ------------------------------------------------------------------------------ */

/* The trit of each byte of v at the base-3 position whose power of 3 is in k (per 16-bit
 * lane, same for both bytes): ((byte * 3^n mod 256) * 3) >> 8, as llama.cpp defines it. */
static inline __m256i trits(__m256i v, __m256i k)
{
    const __m256i lo8 = _mm256_set1_epi16(0xFF), three = _mm256_set1_epi16(3);
    __m256i lo = _mm256_and_si256(_mm256_mullo_epi16(_mm256_and_si256(v, lo8), k), lo8);
    __m256i hi = _mm256_and_si256(_mm256_mullo_epi16(_mm256_srli_epi16(v, 8), k), lo8);
    lo = _mm256_srli_epi16(_mm256_mullo_epi16(lo, three), 8);
    hi = _mm256_srli_epi16(_mm256_mullo_epi16(hi, three), 8);
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 8));
}

/* Each step yields the codes of 32 consecutive values: qs[0..31] at powers 1..81 (values
 * 0..159); qs[32..47] in both halves at two powers (160..223); qs[32..47] at 81 beside
 * qh[0..3] four times at 1,1,3,3,9,9,27,27 per 16-bit lane (224..255). Each i16 lane sums
 * at most 8 * 2 * 2 * 128: no saturation. */
int32_t dl__tq1_dot_avx2(const dl_block_tq1_0 *b, const int8_t *q)
{
    static const short pow3[5] = {1, 3, 9, 27, 81};
    __m256i v = _mm256_loadu_si256((const void *)b->qs);
    __m256i p = _mm256_setzero_si256();
    for (int n = 0; n < 5; n++)
        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(trits(v, _mm256_set1_epi16(pow3[n])),
                                                     _mm256_loadu_si256((const void *)(q + 32 * n))));
    __m128i mid = _mm_loadu_si128((const void *)(b->qs + 32));
    __m256i m2 = _mm256_set_m128i(mid, mid);
    __m256i k01 = _mm256_set_m128i(_mm_set1_epi16(3), _mm_set1_epi16(1));
    __m256i k23 = _mm256_set_m128i(_mm_set1_epi16(27), _mm_set1_epi16(9));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(trits(m2, k01),
                                                 _mm256_loadu_si256((const void *)(q + 160))));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(trits(m2, k23),
                                                 _mm256_loadu_si256((const void *)(q + 192))));
    int32_t qh;
    memcpy(&qh, b->qh, 4);
    __m256i last = _mm256_set_m128i(_mm_set1_epi32(qh), mid);
    __m256i k4 = _mm256_set_m128i(_mm_setr_epi16(1, 1, 3, 3, 9, 9, 27, 27), _mm_set1_epi16(81));
    p = _mm256_add_epi16(p, _mm256_maddubs_epi16(trits(last, k4),
                                                 _mm256_loadu_si256((const void *)(q + 224))));
    return hsum8(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

/* ---- activation quantisation ------------------------------------------------------------ */

void dl__quantize_avx2(const float *x, int64_t cols, float *s_out, int32_t *sums, int8_t *q)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps();
    for (int64_t i = 0; i < cols; i += 8) /* |x| first: a NaN keeps mx, as fmaxf does */
        mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absmask), mx);
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    float amax = _mm_cvtss_f32(m);
    float s = amax > 0.0f ? 127.0f / amax : 1.0f;
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    int32_t total = 0;
    int64_t nb = cols / 128;
    for (int64_t g = 0; g < nb; g++) {
        __m256i gs = _mm256_setzero_si256();
        for (int h = 0; h < 4; h++) {
            const float *p = x + 128 * g + 32 * h;
            /* vcvtps2dq rounds to nearest even like lrintf; the packs saturate like the clamp */
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), vs));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 8), vs));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 16), vs));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p + 24), vs));
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            b = _mm256_permutevar8x32_epi32(b, order);
            _mm256_storeu_si256((void *)(q + 128 * g + 32 * h), b);
            gs = _mm256_add_epi32(gs, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, b), ones16));
        }
        sums[g] = hsum8(gs);
        total += sums[g];
    }
    sums[nb] = total;
    *s_out = s;
}
