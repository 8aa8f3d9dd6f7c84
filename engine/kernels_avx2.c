/* kernels_avx2.c — AVX2 + FMA + F16C kernels; called only after dispatch.
 *
 * Same structure as the AVX-512 file at half the width, with vpmaddubsw (u8 x s8 -> s16
 * pairs) in place of VNNI:
 *  - Q8_0: |w| x sign(a, w) (both within 127, so the s16 pair sums cannot saturate);
 *  - Q4_0: the raw nibble (0..15) x a, minus 8 * sum(a) per block;
 *  - Q4_K/Q6_K: unpacked 6/4-bit values x a, scaled per sub-block with vpmaddwd.
 * Every weight block is unpacked once and reused by a tile of up to 4 tokens.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kern_impl.h"
#include "quant.h"
#include "simd_avx2.h"


/* Lanes [0, n) of a partial vector of 8: a mask for maskload/maskstore. */
AI __m256i tmask8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- vector kernels ---- */

static float dot256(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s0);
    }
    return hsum8(_mm256_add_ps(s0, s1));
}

static void axpy256(float *y, float a, const float *x, int n)
{
    __m256 va = _mm256_set1_ps(a);
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        __m256 v = _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
        _mm256_maskstore_ps(y + i, m, v);
    }
}

/* vcvtps2ph rounds to nearest even, as dl_f32_to_fp16 does. */
static void to_fp16_256(dl_fp16 *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = dl_f32_to_fp16(src[i]);
}

static void sqacc256(float *acc, const float *x, int n)
{
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        __m256 v = _mm256_maskload_ps(x + i, m);
        _mm256_maskstore_ps(acc + i, m, _mm256_add_ps(_mm256_maskload_ps(acc + i, m), _mm256_mul_ps(v, v)));
    }
}

static void rmsnorm256(float *out, const float *x, const float *w, int n, float eps)
{
    float ss = dot256(x, x, n) / n + eps;
    __m256 s = _mm256_set1_ps(1.0f / sqrtf(ss));
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(w + i, m), _mm256_mul_ps(s, _mm256_maskload_ps(x + i, m)));
        _mm256_maskstore_ps(out + i, m, v);
    }
}

static void softmax256(float *x, int n)
{
    if (n <= 0)
        return;
    __m256 mx = _mm256_set1_ps(x[0]);
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        mx = _mm256_max_ps(mx, _mm256_blendv_ps(mx, _mm256_maskload_ps(x + i, m), _mm256_castsi256_ps(m)));
    }
    __m256 vmax = _mm256_set1_ps(hmax8(mx));
    __m256 sum = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vmax)), _mm256_castsi256_ps(m));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(x + i, m, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum8(sum));
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        _mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv));
    }
}

static void swiglu256(float *out, const float *gate, const float *up, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        __m256i m = tmask8(n - i);
        __m256 g = _mm256_maskload_ps(gate + i, m);
        __m256 sg = _mm256_div_ps(g, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_maskstore_ps(out + i, m, _mm256_mul_ps(sg, _mm256_maskload_ps(up + i, m)));
    }
}

/* ---- activation quantisation (bit-identical to dl__quant_act*_ref) ---- */

AI __m256 absps(__m256 v)
{
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
}

/* 32 floats -> 32 int8 (round to nearest even), in element order */
AI __m256i q32(const float *x, float id)
{
    __m256 s = _mm256_set1_ps(id);
    __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), s));
    __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), s));
    __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), s));
    __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), s));
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    __m256i v = _mm256_packs_epi16(ab, cd);
    /* the packs interleave 128-bit lanes: dwords come out as 0 4 1 5 2 6 3 7 */
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AI int hsum_i8x32(__m256i q)
{
    __m256i s = _mm256_sad_epu8(_mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
    __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (int)(_mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1)) - 32 * 128;
}

AI float amax_n(const float *x, int n)
{
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8)
        m = _mm256_max_ps(m, absps(_mm256_loadu_ps(x + i)));
    return hmax8(m);
}

static void quant_act32_256(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 32;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int32_t *sum = (int32_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        float db = amax_n(x + b * 32, 32) / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        __m256i q = q32(x + b * 32, id);
        _mm256_storeu_si256((__m256i *)(qs + b * 32), q);
        d[b] = db;
        sum[b] = hsum_i8x32(q);
    }
}

static void quant_actk_256(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 256;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int16_t *bsum = (int16_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        float db = amax_n(x + b * 256, 256) / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        for (int g = 0; g < 8; g++) {
            __m256i q = q32(x + b * 256 + g * 32, id);
            _mm256_storeu_si256((__m256i *)(qs + b * 256 + g * 32), q);
            __m256i s = _mm256_sad_epu8(_mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
            bsum[b * 16 + 2 * g] = (int16_t)(_mm_cvtsi128_si32(lo) + _mm_extract_epi16(lo, 4) - 16 * 128);
            bsum[b * 16 + 2 * g + 1] = (int16_t)(_mm_cvtsi128_si32(hi) + _mm_extract_epi16(hi, 4) - 16 * 128);
        }
        d[b] = db;
    }
}

/* ---- Q8_0 / Q4_0 ---- */

AI void rowdot_q(const dl__mm *m, int64_t r, int t0, const int NT, const int is_q8)
{
    const int64_t nb = m->w->cols / 32;
    const uint8_t *row = (const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    const int8_t *qa[4];
    const float *da[4];
    const int32_t *sa[4];
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        sa[t] = (const int32_t *)(da[t] + nb);
    }
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv, wabs = _mm256_setzero_si256();
        float dw;
        if (is_q8) {
            const dl_block_q8_0 *blk = (const dl_block_q8_0 *)row + b;
            wv = _mm256_loadu_si256((const __m256i *)blk->qs);
            wabs = _mm256_sign_epi8(wv, wv);
            dw = _cvtsh_ss(blk->d);
        } else {
            const dl_block_q4_0 *blk = (const dl_block_q4_0 *)row + b;
            __m128i x = _mm_loadu_si128((const __m128i *)blk->qs);
            wv = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1),
                                  _mm256_set1_epi8(0x0F));
            dw = _cvtsh_ss(blk->d);
        }
        DL_UNROLL_FULL
        for (int t = 0; t < NT; t++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(qa[t] + b * 32));
            __m256i p;
            if (is_q8)
                p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a, wv));
            else
                p = _mm256_maddubs_epi16(wv, a);
            __m256i s = _mm256_madd_epi16(p, ones);
            if (!is_q8) /* nibbles carry +8: remove 8 * sum(a) (in one lane; lanes are summed) */
                s = _mm256_add_epi32(s, _mm256_castsi128_si256(_mm_cvtsi32_si128(-8 * sa[t][b])));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dw * da[t][b]), acc[t]);
        }
    }
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum8(acc[t]);
}

/* ---- Q4_K / Q6_K ---- */

static void q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8])
{
    DL_UNROLL_FULL
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }
}

AI void rowdot_q4k(const dl__mm *m, int64_t r, int t0, const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const dl_block_q4_K *row = (const dl_block_q4_K *)((const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes);
    __m256 acc[4];
    float mins[4];
    const int8_t *qa[4];
    const float *da[4];
    const int16_t *bs[4];
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        mins[t] = 0;
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        bs[t] = (const int16_t *)(da[t] + nb);
    }
    for (int64_t b = 0; b < nb; b++) {
        const dl_block_q4_K *blk = row + b;
        uint8_t sc[8], mn[8];
        q4k_scales(blk->scales, sc, mn);
        float d = _cvtsh_ss(blk->d), dmin = _cvtsh_ss(blk->dmin);
        __m256i wv[8], sv[8];
        DL_UNROLL_FULL
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * c));
            wv[2 * c] = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            wv[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
            sv[2 * c] = _mm256_set1_epi16(sc[2 * c]);
            sv[2 * c + 1] = _mm256_set1_epi16(sc[2 * c + 1]);
        }
        DL_UNROLL_FULL
        for (int t = 0; t < NT; t++) {
            const int8_t *a = qa[t] + b * 256;
            __m256i is = _mm256_setzero_si256();
            DL_UNROLL_FULL
            for (int j = 0; j < 8; j++) {
                __m256i p = _mm256_maddubs_epi16(wv[j], _mm256_loadu_si256((const __m256i *)(a + 32 * j)));
                is = _mm256_add_epi32(is, _mm256_madd_epi16(p, sv[j]));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(d * da[t][b]), acc[t]);
            const int16_t *bb = bs[t] + b * 16;
            int ms = 0;
            DL_UNROLL_FULL
            for (int j = 0; j < 8; j++)
                ms += mn[j] * (bb[2 * j] + bb[2 * j + 1]);
            mins[t] += dmin * da[t][b] * (float)ms;
        }
    }
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum8(acc[t]) - mins[t];
}

AI void rowdot_q6k(const dl__mm *m, int64_t r, int t0, const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const dl_block_q6_K *row = (const dl_block_q6_K *)((const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256 acc[4];
    const int8_t *qa[4];
    const float *da[4];
    const int16_t *bs[4];
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        bs[t] = (const int16_t *)(da[t] + nb);
    }
    for (int64_t b = 0; b < nb; b++) {
        const dl_block_q6_K *blk = row + b;
        float d = _cvtsh_ss(blk->d);
        __m256i wv[8], sv[8];
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
        DL_UNROLL_FULL
        for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * h + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
            wv[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            wv[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            wv[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            wv[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
        }
        /* chunk j (32 values) uses scales 2j (lanes 0..7) and 2j+1 (lanes 8..15) */
        DL_UNROLL_FULL
        for (int j = 0; j < 8; j++)
            sv[j] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)blk->scales[2 * j])),
                                            _mm_set1_epi16((short)blk->scales[2 * j + 1]), 1);
        DL_UNROLL_FULL
        for (int t = 0; t < NT; t++) {
            const int8_t *a = qa[t] + b * 256;
            __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(bs[t] + b * 16)));
            __m256i is = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
            DL_UNROLL_FULL
            for (int j = 0; j < 8; j++) {
                __m256i p = _mm256_maddubs_epi16(wv[j], _mm256_loadu_si256((const __m256i *)(a + 32 * j)));
                is = _mm256_add_epi32(is, _mm256_madd_epi16(p, sv[j]));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(d * da[t][b]), acc[t]);
        }
    }
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum8(acc[t]);
}

/* ---- F32 / F16 / BF16 ---- */

AI __m256 loadw8(const void *row, int64_t i, int n, uint32_t type)
{
    if (n >= 8) {
        if (type == DL_TYPE_F32)
            return _mm256_loadu_ps((const float *)row + i);
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
        if (type == DL_TYPE_F16)
            return _mm256_cvtph_ps(h);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (type == DL_TYPE_F32)
        return _mm256_maskload_ps((const float *)row + i, tmask8(n));
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)row + i, (size_t)n * 2);
    __m128i h = _mm_loadu_si128((const __m128i *)tmp);
    if (type == DL_TYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI void rowdot_f(const dl__mm *m, int64_t r, int nr, int t0, const int NT, uint32_t type)
{
    const int64_t n = m->w->cols;
    const void *w0 = (const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes;
    const void *w1 = (const uint8_t *)w0 + (nr > 1 ? m->w->row_bytes : 0);
    __m256 acc[4][2];
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++)
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        int k = n - i < 8 ? (int)(n - i) : 8;
        __m256 a = loadw8(w0, i, k, type), c = loadw8(w1, i, k, type);
        __m256i mk = tmask8(k);
        DL_UNROLL_FULL
        for (int t = 0; t < NT; t++) {
            __m256 x = _mm256_maskload_ps(m->x + (size_t)(t0 + t) * n + i, mk);
            acc[t][0] = _mm256_fmadd_ps(a, x, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(c, x, acc[t][1]);
        }
    }
    DL_UNROLL_FULL
    for (int t = 0; t < NT; t++) {
        float *y = m->y + (size_t)(t0 + t) * m->w->rows + r;
        y[0] = hsum8(acc[t][0]);
        if (nr > 1)
            y[1] = hsum8(acc[t][1]);
    }
}

#define TOK_BLOCK 16 /* tokens whose activations stay in L1/L2 during one sweep over the rows */

/* One row (or row pair) against tokens [tb, te): tiles of 4, then single tokens. */
#define DL__ROWDOT(NT)                                                     \
    switch (type) {                                                        \
    case DL_TYPE_Q8_0: rowdot_q(m, r, t, NT, 1); break;                    \
    case DL_TYPE_Q4_0: rowdot_q(m, r, t, NT, 0); break;                    \
    case DL_TYPE_Q4_K: rowdot_q4k(m, r, t, NT); break;                     \
    case DL_TYPE_Q6_K: rowdot_q6k(m, r, t, NT); break;                     \
    case DL_TYPE_F32: rowdot_f(m, r, nr, t, NT, DL_TYPE_F32); break;       \
    case DL_TYPE_F16: rowdot_f(m, r, nr, t, NT, DL_TYPE_F16); break;       \
    default: rowdot_f(m, r, nr, t, NT, DL_TYPE_BF16); break;               \
    }

static void rows_tile(const dl__mm *m, int64_t r, int nr, int tb, int te)
{
    uint32_t type = m->w->type;
    int t = tb;
    for (; t + 4 <= te; t += 4)
        DL__ROWDOT(4)
    for (; t < te; t++)
        DL__ROWDOT(1)
}

static int matmul256(const dl__mm *m, int64_t r0, int64_t r1)
{
    uint32_t type = m->w->type;
    int step = 1;
    switch (type) {
    case DL_TYPE_F32:
    case DL_TYPE_F16:
    case DL_TYPE_BF16:
        step = 2; /* the float kernels do two rows at once */
        break;
    case DL_TYPE_Q8_0:
    case DL_TYPE_Q4_0:
    case DL_TYPE_Q4_K:
    case DL_TYPE_Q6_K:
        if (!m->xq)
            return -1;
        break;
    default:
        return -1;
    }
    for (int tb = 0; tb < m->n_tok; tb += TOK_BLOCK) {
        int te = m->n_tok - tb < TOK_BLOCK ? m->n_tok : tb + TOK_BLOCK;
        for (int64_t r = r0; r < r1; r += step)
            rows_tile(m, r, r1 - r < step ? 1 : step, tb, te);
    }
    return 0;
}

const dl__kops dl__kops_avx2 = {
    .quant_act32 = quant_act32_256,
    .quant_actk = quant_actk_256,
    .matmul = matmul256,
    .rmsnorm = rmsnorm256,
    .softmax = softmax256,
    .swiglu = swiglu256,
    .dot = dot256,
    .axpy = axpy256,
    .to_fp16 = to_fp16_256,
    .sqacc = sqacc256,
};
