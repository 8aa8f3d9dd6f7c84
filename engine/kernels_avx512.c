/* kernels_avx512.c — AVX-512 (F/BW/VL/DQ + VNNI) kernels; called only after dispatch.
 *
 * Quantised matmuls multiply 8-bit activations (kern_impl.h) with integer dot products:
 *
 *  - Q8_0/Q4_0, few tokens: stream each weight row once; two 32-blocks per zmm; weights are
 *    made unsigned (Q8_0: w ^ 0x80 = w + 128; Q4_0: the raw nibble) for vpdpbusd and the
 *    offset is removed with the activation block sums (sum(w + o) * a = w.a + o * sum(a)).
 *  - Q8_0/Q4_0, many tokens: a stripe of 16 rows x 1024 columns is repacked (in L1-sized
 *    stack memory) so that one zmm holds 4 consecutive weights of each of the 16 rows;
 *    vpdpbusd against 4 broadcast activation bytes then yields 16 rows' partial dots in
 *    one instruction, and the stripe is reused by every token (compute-bound, no
 *    horizontal sums).
 *  - Q4_K/Q6_K: per 256-superblock, weights unpacked once and reused by up to 4 tokens;
 *    vpmaddubsw + vpmaddwd with the 6/8-bit sub-block scales.
 *  - F32/F16/BF16: 2 rows x 4 tokens of FMA accumulators; F16/BF16 repacked at load
 *    (kern_impl.h): 16 rows per converted vector, one FMA per broadcast activation.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kern_impl.h"
#include "quant.h"
#include "simd_avx512.h"


/* ---- helpers ---- */

AI float hsum(__m512 v)
{
    return _mm512_reduce_add_ps(v);
}

AI __mmask16 tail_mask(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* ---- vector kernels ---- */

static float dot512(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return hsum(_mm512_add_ps(s0, s1));
}

static void axpy512(float *y, float a, const float *x, int n)
{
    __m512 va = _mm512_set1_ps(a);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

/* vcvtps2ph rounds to nearest even, as dl_f32_to_fp16 does. */
static void to_fp16_512(dl_fp16 *dst, const float *src, int n)
{
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_mask_storeu_epi16(dst + i, m, h);
    }
}

static void sqacc512(float *acc, const float *x, int n)
{
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(acc + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, acc + i), _mm512_mul_ps(v, v)));
    }
}

static void rmsnorm512(float *out, const float *x, const float *w, int n, float eps)
{
    float ss = dot512(x, x, n) / n + eps;
    __m512 s = _mm512_set1_ps(1.0f / sqrtf(ss));
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i),
                                 _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, x + i)));
        _mm512_mask_storeu_ps(out + i, m, v);
    }
}

static void softmax512(float *x, int n)
{
    if (n <= 0)
        return;
    __m512 mx = _mm512_set1_ps(x[0]);
    for (int i = 0; i < n; i += 16)
        mx = _mm512_mask_max_ps(mx, tail_mask(n - i), mx, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / hsum(sum));
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

static void swiglu512(float *out, const float *gate, const float *up, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 sg = _mm512_div_ps(g, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(sg, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

/* ---- activation quantisation (bit-identical to dl__quant_act*_ref) ---- */

AI __m512 absps(__m512 v)
{
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

/* q = round-to-nearest-even(x * id), 16 lanes -> 16 int8 */
AI __m128i q16(const float *x, float id)
{
    __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(id)));
    return _mm512_cvtsepi32_epi8(q);
}

static void quant_act32_512(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 32;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int32_t *sum = (int32_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(absps(_mm512_loadu_ps(xb)), absps(_mm512_loadu_ps(xb + 16))));
        float db = amax / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        __m128i a = q16(xb, id), c = q16(xb + 16, id);
        _mm_storeu_si128((__m128i *)(qs + b * 32), a);
        _mm_storeu_si128((__m128i *)(qs + b * 32 + 16), c);
        __m256i w = _mm256_cvtepi8_epi16(_mm_add_epi8(_mm_setzero_si128(), a));
        w = _mm256_add_epi16(w, _mm256_cvtepi8_epi16(c));
        __m256i s32 = _mm256_madd_epi16(w, _mm256_set1_epi16(1));
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        s = _mm_hadd_epi32(s, s);
        s = _mm_hadd_epi32(s, s);
        d[b] = db;
        sum[b] = _mm_cvtsi128_si32(s);
    }
}

static void quant_actk_512(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 256;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int16_t *bsum = (int16_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 256;
        __m512 mx = _mm512_setzero_ps();
        for (int i = 0; i < 256; i += 16)
            mx = _mm512_max_ps(mx, absps(_mm512_loadu_ps(xb + i)));
        float db = _mm512_reduce_max_ps(mx) / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        for (int g = 0; g < 16; g++) {
            __m128i q = q16(xb + g * 16, id);
            _mm_storeu_si128((__m128i *)(qs + b * 256 + g * 16), q);
            __m128i s = _mm_sad_epu8(_mm_xor_si128(q, _mm_set1_epi8((char)0x80)), _mm_setzero_si128());
            int tot = _mm_cvtsi128_si32(s) + _mm_extract_epi16(s, 4) - 16 * 128;
            bsum[b * 16 + g] = (int16_t)tot;
        }
        d[b] = db;
    }
}

/* ---- Q8_0 / Q4_0: streaming path ---- */

/* 64 weights of blocks b, b+1 of a row as unsigned bytes. */
AI __m512i load2_q8_0(const dl_block_q8_0 *blk)
{
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)blk[0].qs)),
                                   _mm256_loadu_si256((const __m256i *)blk[1].qs), 1);
    return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
}

AI __m512i load2_q4_0(const dl_block_q4_0 *blk)
{
    /* [qs0, qs0, qs1, qs1] by broadcasts from memory (load ports, not the shuffle port),
     * the copies shifted to expose the high nibbles */
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)blk[0].qs));
    v = _mm512_mask_broadcast_i32x4(v, 0xFF00, _mm_loadu_si128((const __m128i *)blk[1].qs));
    v = _mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

AI __m512 dw2(dl_fp16 d0, dl_fp16 d1)
{
    __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d0 | ((uint32_t)d1 << 16))));
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                 _mm512_castps128_ps512(f));
}

/* Activation scale pair for blocks b, b+1, each spread over 8 lanes. */
AI __m512 da2(const float *d)
{
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                 _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)d))));
}
/* The correction goes into one lane per block (lanes 0 and 8): the 8 lanes are summed. */
AI __m512i corr2(const int32_t *s, int shift)
{
    __m512i v = _mm512_maskz_permutexvar_epi32(0x0101, _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                               _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)s)));
    return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(v, shift));
}

/* NT tokens (<= 4) against one row; cols a multiple of 32. */
AI void rowdot_q40_q80(const dl__mm *m, int64_t r, int t0, const int NT, const int is_q8)
{
    const int64_t nb = m->w->cols / 32;
    const uint8_t *row = (const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes;
    const int shift = is_q8 ? 7 : 3;
    __m512 acc[8];
    const int8_t *qa[8];
    const float *da[8];
    const int32_t *sa[8];
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        sa[t] = (const int32_t *)(da[t] + nb);
    }
    int64_t b = 0;
    if (!is_q8) {
        /* Q4_0, four blocks per step: the block scales are multiplied on 4 lanes once and
         * the -8 offset is removed in float per block (scale * 8 * sum(a)) on the side,
         * instead of per-2-block lane spreading of scales and integer corrections; this
         * keeps the shuffle port from limiting the weight stream. */
        __m128 cacc[8];
        const __m512i i01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        const __m512i i23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            cacc[t] = _mm_setzero_ps();
        for (; b + 4 <= nb; b += 4) {
            const dl_block_q4_0 *blk = (const dl_block_q4_0 *)row + b;
            __m512i w01 = load2_q4_0(blk), w23 = load2_q4_0(blk + 2);
            uint64_t d4 = (uint64_t)blk[0].d | (uint64_t)blk[1].d << 16 |
                          (uint64_t)blk[2].d << 32 | (uint64_t)blk[3].d << 48;
            __m128 dw4 = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)d4));
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++) {
                __m128 s4 = _mm_mul_ps(dw4, _mm_loadu_ps(da[t] + b));
                __m512 s4z = _mm512_castps128_ps512(s4);
                __m512i d01 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w01,
                                                  _mm512_loadu_si512((const void *)(qa[t] + b * 32)));
                __m512i d23 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w23,
                                                  _mm512_loadu_si512((const void *)(qa[t] + b * 32 + 64)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d01), _mm512_permutexvar_ps(i01, s4z), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d23), _mm512_permutexvar_ps(i23, s4z), acc[t]);
                cacc[t] = _mm_fmadd_ps(s4, _mm_cvtepi32_ps(_mm_loadu_si128((const __m128i *)(sa[t] + b))), cacc[t]);
            }
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_fnmadd_ps(_mm512_zextps128_ps512(cacc[t]), _mm512_set1_ps(8.0f), acc[t]);
    }
    for (; b + 2 <= nb; b += 2) {
        __m512i wv;
        __m512 dw;
        if (is_q8) {
            const dl_block_q8_0 *blk = (const dl_block_q8_0 *)row + b;
            wv = load2_q8_0(blk);
            dw = dw2(blk[0].d, blk[1].d);
        } else {
            const dl_block_q4_0 *blk = (const dl_block_q4_0 *)row + b;
            wv = load2_q4_0(blk);
            dw = dw2(blk[0].d, blk[1].d);
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m512i dp = _mm512_dpbusd_epi32(corr2(sa[t] + b, shift), wv,
                                             _mm512_loadu_si512((const void *)(qa[t] + b * 32)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(dw, da2(da[t] + b)), acc[t]);
        }
    }
    float tail[8] = {0};
    if (b < nb) { /* odd block count: one 32-block in ymm */
        __m256i wv;
        float dw;
        if (is_q8) {
            const dl_block_q8_0 *blk = (const dl_block_q8_0 *)row + b;
            wv = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)blk->qs), _mm256_set1_epi8((char)0x80));
            dw = _cvtsh_ss(blk->d);
        } else {
            const dl_block_q4_0 *blk = (const dl_block_q4_0 *)row + b;
            __m128i x = _mm_loadu_si128((const __m128i *)blk->qs);
            wv = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1),
                                  _mm256_set1_epi8(0x0F));
            dw = _cvtsh_ss(blk->d);
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m256i dp = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv,
                                             _mm256_loadu_si256((const __m256i *)(qa[t] + b * 32)));
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(dp), _mm256_extracti128_si256(dp, 1));
            s = _mm_hadd_epi32(s, s);
            s = _mm_hadd_epi32(s, s);
            int isum = _mm_cvtsi128_si32(s) - sa[t][b] * (1 << shift);
            tail[t] = dw * da[t][b] * (float)isum;
        }
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum(acc[t]) + tail[t];
}

/* Token tile: 8 would read the weights once for 8 sequences, but its 8 x 3 activation
 * pointers spill and it measured slower than two passes of 4. */
#define Q_TILE 4

static void matmul_q_stream(const dl__mm *m, int64_t r0, int64_t r1, int is_q8)
{
    /* Token tiles share each weight load; rows inner so a row is read once per tile. */
    for (int t = 0; t < m->n_tok; t += Q_TILE) {
        int nt = m->n_tok - t < Q_TILE ? m->n_tok - t : Q_TILE;
        for (int64_t r = r0; r < r1; r++) {
            switch (nt * 2 + is_q8) {
#define DL__QS(n) \
    case 2 * n: rowdot_q40_q80(m, r, t, n, 0); break; \
    case 2 * n + 1: rowdot_q40_q80(m, r, t, n, 1); break;
            DL__QS(1) DL__QS(2) DL__QS(3) DL__QS(4) DL__QS(5) DL__QS(6) DL__QS(7) DL__QS(8)
#undef DL__QS
            default: break;
            }
        }
    }
}

/* ---- Q8_0 / Q4_0: repacked-stripe path for many tokens ---- */

#define KC_BLOCKS 32 /* 1024 columns per stripe chunk: 16 KiB of packed weights */

typedef struct stripe {
    __m512i w[KC_BLOCKS][8]; /* [block][group of 4 columns]: 4 bytes of each of 16 rows */
    __m512 dw[KC_BLOCKS];    /* per block, the 16 rows' scales */
} stripe;

/* Four 16-byte pieces (rows g, g+4, g+8, g+12 at byte offset off of block b) in the four
 * 128-bit lanes of one zmm. */
AI __m512i lanes4(const uint8_t *const *rp, int g, size_t off)
{
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(rp[g] + off)));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[g + 4] + off)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[g + 8] + off)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(rp[g + 12] + off)), 3);
}

/* 4x4 dword transpose inside each 128-bit lane: in z[g] lane L holds row g+4L's dwords
 * 0..3; out[k] then holds dword k of rows 0..15 in dword order (row 4L+g at 4L+g). */
AI void transpose4(const __m512i z[4], __m512i out[4])
{
    __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Repack by in-register transposes (lane inserts + unpacks): gathers cost several times
 * more and made the pack, not the dot products, the bottleneck of small batches. Rows
 * past nrows read row r0 again; their lanes are never stored. */
static void stripe_pack(stripe *s, const dl__mm *m, int64_t r0, int nrows, int64_t b0, int nbk,
                        int is_q8)
{
    const uint8_t *base = (const uint8_t *)m->w->data + (size_t)r0 * m->w->row_bytes;
    const size_t bsz = is_q8 ? sizeof(dl_block_q8_0) : sizeof(dl_block_q4_0);
    const uint8_t *rp[16];
    int ri[16];
    for (int i = 0; i < 16; i++) {
        ri[i] = i < nrows ? i : 0;
        rp[i] = base + (size_t)ri[i] * m->w->row_bytes + (size_t)b0 * bsz;
    }
    /* the scales: one gather per block (2 of every 16+2 or 32+2 bytes) */
    __m512i idx = _mm512_mullo_epi32(_mm512_loadu_si512((const void *)ri), _mm512_set1_epi32((int)m->w->row_bytes));
    const uint8_t *dbase = base + (size_t)b0 * bsz;
    const __m512i m4 = _mm512_set1_epi8(0x0F), x80 = _mm512_set1_epi8((char)0x80);
    for (int b = 0; b < nbk; b++) {
        __m512i dv = _mm512_i32gather_epi32(idx, dbase + (size_t)b * bsz, 1);
        s->dw[b] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dv));
        size_t off = (size_t)b * bsz + 2;
        __m512i z[4], t[4];
        if (is_q8) {
            for (int h = 0; h < 2; h++) {
                DL_UNROLL(4)
                for (int g = 0; g < 4; g++)
                    z[g] = lanes4(rp, g, off + 16 * (size_t)h);
                transpose4(z, t);
                DL_UNROLL(4)
                for (int k = 0; k < 4; k++)
                    s->w[b][4 * h + k] = _mm512_xor_si512(t[k], x80);
            }
        } else {
            DL_UNROLL(4)
            for (int g = 0; g < 4; g++)
                z[g] = lanes4(rp, g, off);
            transpose4(z, t);
            DL_UNROLL(4)
            for (int k = 0; k < 4; k++) {
                s->w[b][k] = _mm512_and_si512(t[k], m4);
                s->w[b][k + 4] = _mm512_and_si512(_mm512_srli_epi16(t[k], 4), m4);
            }
        }
    }
}

static void stripe_prefetch(const dl__mm *m, int64_t r0, int nrows, int64_t b0, int nbk, size_t bsz)
{
    for (int i = 0; i < nrows; i++) {
        const char *p = (const char *)m->w->data + (size_t)(r0 + i) * m->w->row_bytes + (size_t)b0 * bsz;
        for (size_t o = 0; o < (size_t)nbk * bsz; o += 64)
            _mm_prefetch(p + o, _MM_HINT_T0);
    }
}

/* y[t][r0 .. r0+nrows) (+)= the stripe chunk's dot with NT tokens' activations. */
AI void stripe_tokens(const stripe *s, const dl__mm *m, int t0, const int NT, int64_t b0, int nbk,
                      int shift, int64_t r0, int nrows, int first)
{
    const int64_t nb = m->w->cols / 32;
    const __mmask16 rm = tail_mask(nrows);
    __m512 acc[4];
    const int8_t *qa[4];
    const float *da[4];
    const int32_t *sa[4];
    float *y[4];
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        y[t] = m->y + (size_t)(t0 + t) * m->w->rows + r0;
        acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rm, y[t]);
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        sa[t] = (const int32_t *)(da[t] + nb);
    }
    for (int b = 0; b < nbk; b++) {
        const int64_t gb = b0 + b;
        __m512i dp[4];
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            dp[t] = _mm512_set1_epi32(-sa[t][gb] * (1 << shift));
        DL_UNROLL(8)
        for (int k = 0; k < 8; k++) {
            __m512i wv = _mm512_load_si512(&s->w[b][k]);
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++) {
                int32_t a4;
                memcpy(&a4, qa[t] + gb * 32 + 4 * k, 4);
                dp[t] = _mm512_dpbusd_epi32(dp[t], wv, _mm512_set1_epi32(a4));
            }
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp[t]),
                                     _mm512_mul_ps(s->dw[b], _mm512_set1_ps(da[t][gb])), acc[t]);
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        _mm512_mask_storeu_ps(y[t], rm, acc[t]);
}

/* Each 16-row x 1024-column chunk is packed once and used by every token; partial sums
 * over chunks accumulate in y. */
static void matmul_q_stripe(const dl__mm *m, int64_t r0, int64_t r1, int is_q8)
{
    const int64_t nb = m->w->cols / 32;
    const int shift = is_q8 ? 7 : 3;
    const size_t bsz = is_q8 ? sizeof(dl_block_q8_0) : sizeof(dl_block_q4_0);
    stripe s __attribute__((aligned(64)));
    for (int64_t r = r0; r < r1; r += 16) {
        int nrows = r1 - r < 16 ? (int)(r1 - r) : 16;
        for (int64_t b0 = 0; b0 < nb; b0 += KC_BLOCKS) {
            int nbk = nb - b0 < KC_BLOCKS ? (int)(nb - b0) : KC_BLOCKS;
            /* 16 rows advance together, more streams than the hardware prefetcher
             * follows well: ask for the next chunk while this one is packed and used */
            int64_t nr = r, nb0 = b0 + KC_BLOCKS;
            if (nb0 >= nb)
                nr = r + 16, nb0 = 0;
            if (nr < r1)
                stripe_prefetch(m, nr, r1 - nr < 16 ? (int)(r1 - nr) : 16, nb0,
                                nb - nb0 < KC_BLOCKS ? (int)(nb - nb0) : KC_BLOCKS, bsz);
            stripe_pack(&s, m, r, nrows, b0, nbk, is_q8);
            int t = 0;
            for (; t + 4 <= m->n_tok; t += 4)
                stripe_tokens(&s, m, t, 4, b0, nbk, shift, r, nrows, b0 == 0);
            for (; t < m->n_tok; t++)
                stripe_tokens(&s, m, t, 1, b0, nbk, shift, r, nrows, b0 == 0);
        }
    }
}

/* Re-packing pays off once it is shared by this many tokens. */
#define STRIPE_MIN_TOK 17

/* ---- Q8_0 / Q4_0: the load-time packed layout (kern_impl.h), every token count ---- */

/* Software prefetch distance on the packed stream, bytes ahead of the pair in use (it runs
 * on into the next group, which the same thread reads next). The hardware prefetcher alone
 * left decode stalled on fresh weight lines; measured with dl_bench_matmul, 8192 x 2048,
 * 2 threads: 8 tokens 390 -> 250 us (Q4_0), 550 -> 410 us (Q8_0); 1 token a few percent;
 * 512..2048 bytes gained less, 8192 no more; the NTA hint was no better than T0. */
#define PK_PF 4096

/* The lines of [p, p + bytes) PK_PF bytes ahead, for the first token tile of a pass over a
 * packed group (later tiles find the group in cache). */
AI void prefetch_ahead(const uint8_t *p, size_t bytes)
{
    #pragma GCC unroll 64
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)p + PK_PF + o, _MM_HINT_T0);
}

/* y[t0 + t][r0 .. r0 + nrows) = acc[t] for NT tokens: a 16-row group's results (rows past
 * the weight's last, in its last group, are not stored). */
AI void store_group(const dl__mm *m, int64_t r0, int nrows, int t0, const int NT,
                    const __m512 *acc)
{
    const __mmask16 rm = tail_mask(nrows);
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        _mm512_mask_storeu_ps(m->y + (size_t)(t0 + t) * m->w->rows + r0, rm, acc[t]);
}

/* y[t][r0 .. r0+nrows) = one 16-row group's dot with NT tokens' activations. Each 64-byte
 * piece of weights feeds NT vpdpbusd against 4 broadcast activation bytes, 16 rows per
 * instruction: no horizontal sums, and a piece loaded once serves the whole token tile. */
AI void packed_tile(const dl__mm *m, const uint8_t *grp, int64_t r0, int nrows, int t0,
                    const int NT, const int is_q8)
{
    const int64_t nb = m->w->cols / 32;
    const int shift = is_q8 ? 7 : 3;
    const uint32_t ty = is_q8 ? DL_TYPE_Q8_0 : DL_TYPE_Q4_0;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int C = NT == 1 ? 4 : NT <= 3 ? 2 : 1;
    __m512 acc[8];
    const int8_t *qa[8];
    const float *da[8];
    const int32_t *sa[8];
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        sa[t] = (const int32_t *)(da[t] + nb);
    }
    const size_t qb = dl__pk_qbytes(ty), pair = 64 + 2 * qb;
    for (int64_t b2 = 0; b2 < nb; b2 += 2) {
      /* a pair's addresses are constant offsets from one pointer: few registers for them */
      const uint8_t *pp = grp + (size_t)(b2 / 2) * pair;
      if (t0 == 0)
          prefetch_ahead(pp, pair);
      DL_UNROLL(2)
      for (int j = 0; j < 2; j++) {
        if (b2 + j >= nb)
            break;
        const int64_t b = b2 + j;
        const uint8_t *q = pp + 64 + (size_t)j * qb;
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(pp + 32 * j)));
        /* dp[c][t]: C independent chains per token, so that a few tokens are not bound by
         * the latency of 8 dependent vpdpbusd per block */
        __m512i dp[4][8];
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            dp[0][t] = _mm512_set1_epi32(-sa[t][b] * (1 << shift));
            DL_UNROLL(4)
            for (int c = 1; c < C; c++)
                dp[c][t] = _mm512_setzero_si512();
        }
        DL_UNROLL(8)
        for (int k = 0; k < 8; k++) {
            if (!is_q8 && k >= 4)
                break;
            __m512i v = _mm512_load_si512((const void *)(q + 64 * k)), lo, hi = v;
            lo = is_q8 ? v : _mm512_and_si512(v, m4);
            if (!is_q8)
                hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            const int c0 = (is_q8 ? k : 2 * k) % C, c1 = (2 * k + 1) % C;
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++) {
                int32_t a4;
                memcpy(&a4, qa[t] + b * 32 + 4 * k, 4);
                dp[c0][t] = _mm512_dpbusd_epi32(dp[c0][t], lo, _mm512_set1_epi32(a4));
                if (!is_q8) {
                    memcpy(&a4, qa[t] + b * 32 + 16 + 4 * k, 4);
                    dp[c1][t] = _mm512_dpbusd_epi32(dp[c1][t], hi, _mm512_set1_epi32(a4));
                }
            }
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m512i sum = dp[0][t];
            if (C == 4)
                sum = _mm512_add_epi32(_mm512_add_epi32(dp[0][t], dp[1][t]), _mm512_add_epi32(dp[2][t], dp[3][t]));
            else if (C == 2)
                sum = _mm512_add_epi32(dp[0][t], dp[1][t]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(da[t][b])),
                                     acc[t]);
        }
      }
    }
    store_group(m, r0, nrows, t0, NT, acc);
}

#define PK_TILE 8 /* tokens per pass over a group: 8 dp + 8 acc registers (4 or 6: slower) */

static void matmul_q_packed(const dl__mm *m, int64_t r0, int64_t r1, int is_q8)
{
    const size_t gb = dl__pk_group_bytes(m->w->type, m->w->cols);
    /* r0 is a multiple of 16 (dl__matmul_job hands out 16-row tiles) */
    for (int64_t r = r0; r < r1; r += 16) {
        const uint8_t *grp = (const uint8_t *)m->w->packed + (size_t)(r / 16) * gb;
        int nrows = r1 - r < 16 ? (int)(r1 - r) : 16;
        for (int t = 0; t < m->n_tok; t += PK_TILE) {
            int nt = m->n_tok - t < PK_TILE ? m->n_tok - t : PK_TILE;
            switch (nt * 2 + is_q8) {
#define DL__PK(n) \
    case 2 * n: packed_tile(m, grp, r, nrows, t, n, 0); break; \
    case 2 * n + 1: packed_tile(m, grp, r, nrows, t, n, 1); break;
            DL__PK(1) DL__PK(2) DL__PK(3) DL__PK(4) DL__PK(5) DL__PK(6) DL__PK(7) DL__PK(8)
#undef DL__PK
            default: break;
            }
        }
    }
}

/* ---- Q4_K / Q6_K ---- */

static void q4k_scales(const uint8_t *q, uint8_t sc[8], uint8_t mn[8])
{
    DL_UNROLL(8)
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

AI __m512i pair16(int lo, int hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)lo)), _mm256_set1_epi16((short)hi), 1);
}

/* The start of a pass over NT tokens t0.. in the K-quant kernels: accumulators zeroed, and
 * each token's quantised activations in the actk format (kern_impl.h): quants, block
 * scales, 16-value sums. */
AI void actk_tile(const dl__mm *m, int t0, const int NT, __m512 *acc, const int8_t **qa,
                  const float **da, const int16_t **bs)
{
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_ps();
        qa[t] = (const int8_t *)(m->xq + (size_t)(t0 + t) * m->xq_stride);
        da[t] = (const float *)(qa[t] + m->w->cols);
        bs[t] = (const int16_t *)(da[t] + m->w->cols / 256);
    }
}

AI void rowdot_q4k(const dl__mm *m, int64_t r, int t0, const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const dl_block_q4_K *row = (const dl_block_q4_K *)((const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes);
    __m512 acc[4];
    float mins[4];
    const int8_t *qa[4];
    const float *da[4];
    const int16_t *bs[4];
    actk_tile(m, t0, NT, acc, qa, da, bs);
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        mins[t] = 0;
    for (int64_t b = 0; b < nb; b++) {
        const dl_block_q4_K *blk = row + b;
        uint8_t sc[8], mn[8];
        q4k_scales(blk->scales, sc, mn);
        float d = _cvtsh_ss(blk->d), dmin = _cvtsh_ss(blk->dmin);
        __m512i wv[4], sv[4];
        DL_UNROLL(8)
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
            wv[c] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            sv[c] = pair16(sc[2 * c], sc[2 * c + 1]);
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            const int8_t *a = qa[t] + b * 256;
            __m512i is = _mm512_setzero_si512();
            DL_UNROLL(8)
            for (int c = 0; c < 4; c++) {
                __m512i p = _mm512_maddubs_epi16(wv[c], _mm512_loadu_si512((const void *)(a + 64 * c)));
                is = _mm512_add_epi32(is, _mm512_madd_epi16(p, sv[c]));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d * da[t][b]), acc[t]);
            const int16_t *bb = bs[t] + b * 16;
            int ms = 0;
            DL_UNROLL(8)
            for (int j = 0; j < 8; j++)
                ms += mn[j] * (bb[2 * j] + bb[2 * j + 1]);
            mins[t] += dmin * da[t][b] * (float)ms;
        }
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum(acc[t]) - mins[t];
}

AI void rowdot_q6k(const dl__mm *m, int64_t r, int t0, const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const dl_block_q6_K *row = (const dl_block_q6_K *)((const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes);
    const __m512i cnt_a = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i cnt_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[4];
    const int8_t *qa[4];
    const float *da[4];
    const int16_t *bs[4];
    actk_tile(m, t0, NT, acc, qa, da, bs);
    for (int64_t b = 0; b < nb; b++) {
        const dl_block_q6_K *blk = row + b;
        float d = _cvtsh_ss(blk->d);
        __m512i wv[4], sv[4];
        /* 16 scales as int16; each 64-value chunk c uses scales 4c..4c+3, 8 lanes each */
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
        __m512i sc512 = _mm512_castsi256_si512(sc16);
        DL_UNROLL(8)
        for (int h = 0; h < 2; h++) {
            __m512i l = _mm512_loadu_si512((const void *)(blk->ql + 64 * h));
            __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h)));
            wv[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(hb, cnt_a), m30));
            wv[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                            _mm512_and_si512(_mm512_srlv_epi16(hb, cnt_b), m30));
        }
        DL_UNROLL(8)
        for (int c = 0; c < 4; c++) {
            __m512i idx = _mm512_inserti64x4(
                _mm512_inserti64x4(_mm512_setzero_si512(),
                                   _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)(4 * c))),
                                                           _mm_set1_epi16((short)(4 * c + 1)), 1), 0),
                _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)(4 * c + 2))),
                                        _mm_set1_epi16((short)(4 * c + 3)), 1), 1);
            sv[c] = _mm512_permutexvar_epi16(idx, sc512);
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            const int8_t *a = qa[t] + b * 256;
            /* sum (q - 32) * a * sc = sum q*a*sc - 32 * sum sc * bsum */
            __m256i corr = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(bs[t] + b * 16)));
            __m512i is = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5)));
            is = _mm512_inserti64x4(is, _mm256_setzero_si256(), 1);
            DL_UNROLL(8)
            for (int c = 0; c < 4; c++) {
                __m512i p = _mm512_maddubs_epi16(wv[c], _mm512_loadu_si512((const void *)(a + 64 * c)));
                is = _mm512_add_epi32(is, _mm512_madd_epi16(p, sv[c]));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d * da[t][b]), acc[t]);
        }
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        m->y[(size_t)(t0 + t) * m->w->rows + r] = hsum(acc[t]);
}

#define KQ_TOK_BLOCK 16 /* tokens whose activations (16 x cols bytes) stay in L1/L2 per row sweep */

static void matmul_kq(const dl__mm *m, int64_t r0, int64_t r1, int is_q6)
{
    for (int tb = 0; tb < m->n_tok; tb += KQ_TOK_BLOCK) {
        int te = m->n_tok - tb < KQ_TOK_BLOCK ? m->n_tok : tb + KQ_TOK_BLOCK;
        for (int64_t r = r0; r < r1; r++) {
            int t = tb;
            for (; t + 4 <= te; t += 4) {
                if (is_q6)
                    rowdot_q6k(m, r, t, 4);
                else
                    rowdot_q4k(m, r, t, 4);
            }
            for (; t < te; t++) {
                if (is_q6)
                    rowdot_q6k(m, r, t, 1);
                else
                    rowdot_q4k(m, r, t, 1);
            }
        }
    }
}

/* ---- Q4_K: the load-time packed layout (kern_impl.h), every token count ---- */

/* 16 bytes (one per row of a group) as floats. */
AI __m512 u8x16_ps(const uint8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)p)));
}

#define KP_TILE 8 /* tokens per pass over a group */

/* y[t][r0 .. r0+nrows) for NT tokens from one 16-row group, as packed_tile does for Q4_0:
 * each 64-byte piece of chunk c is loaded once; its low nibbles (sub-block 2c) and high
 * nibbles (2c + 1) x 4 broadcast activation bytes by vpdpbusd give the 16 rows' integer
 * dots of both sub-blocks, which are scaled by d * sc_j (per row) and the token's
 * activation scale; the mins term dmin * m_j * (sum of the token's sub-block) comes from
 * vpdpwssd of (m_j, m_j) per row against the two 16-value sums of the activations.
 * Measured (8192 x 2048, 2 threads, dl_bench_matmul) against the row kernel it replaces:
 * 1 token 290 -> 120-175 us, 4 tokens 580 -> 185-215, 64 tokens 9600 -> 1500 (Q4_0: 100-150
 * / 155-175 / 1610). Passing over each chunk twice, once per nibble, was 10-15% slower
 * for 1, 8 and 64 tokens. */
AI void kpacked_tile(const dl__mm *m, const uint8_t *grp, int64_t r0, int nrows, int t0,
                     const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[KP_TILE];
    const int8_t *qa[KP_TILE];
    const float *da[KP_TILE];
    const int16_t *bs[KP_TILE];
    actk_tile(m, t0, NT, acc, qa, da, bs);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + (size_t)b * DL__KP_BLOCK;
        if (t0 == 0)
            prefetch_ahead(blk, DL__KP_BLOCK);
        const __m512 dv = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)blk));
        const __m512 mv = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(blk + 32)));
        DL_UNROLL(1)
        for (int c = 0; c < 4; c++) { /* chunk c: sub-blocks 2c (low nibbles), 2c + 1 (high) */
            const uint8_t *q = blk + 320 + c * 512;
            __m512i lo[KP_TILE], hi[KP_TILE];
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++)
                lo[t] = hi[t] = _mm512_setzero_si512();
            DL_UNROLL(8)
            for (int k = 0; k < 8; k++) {
                __m512i v = _mm512_load_si512((const void *)(q + 64 * k));
                __m512i vl = _mm512_and_si512(v, m4), vh = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                DL_UNROLL(8)
                for (int t = 0; t < NT; t++) {
                    int32_t a4;
                    memcpy(&a4, qa[t] + b * 256 + 64 * c + 4 * k, 4);
                    lo[t] = _mm512_dpbusd_epi32(lo[t], vl, _mm512_set1_epi32(a4));
                    memcpy(&a4, qa[t] + b * 256 + 64 * c + 32 + 4 * k, 4);
                    hi[t] = _mm512_dpbusd_epi32(hi[t], vh, _mm512_set1_epi32(a4));
                }
            }
            /* d * sc_j per row for sub-blocks 2c and 2c + 1 */
            const __m512 sl = _mm512_mul_ps(u8x16_ps(blk + 64 + 32 * c), dv);
            const __m512 sh = _mm512_mul_ps(u8x16_ps(blk + 80 + 32 * c), dv);
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++) {
                __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo[t]), sl,
                                           _mm512_mul_ps(_mm512_cvtepi32_ps(hi[t]), sh));
                acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(da[t][b]), acc[t]);
            }
        }
        __m512i ms[KP_TILE];
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            ms[t] = _mm512_setzero_si512();
        DL_UNROLL(8)
        for (int j = 0; j < 8; j++) {
            __m512i mj = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(blk + 192 + 16 * j)));
            mj = _mm512_or_si512(mj, _mm512_slli_epi32(mj, 16));
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++) {
                int32_t s2;
                memcpy(&s2, bs[t] + b * 16 + 2 * j, 4);
                ms[t] = _mm512_dpwssd_epi32(ms[t], mj, _mm512_set1_epi32(s2));
            }
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(ms[t]), _mm512_mul_ps(mv, _mm512_set1_ps(da[t][b])),
                                      acc[t]);
    }
    store_group(m, r0, nrows, t0, NT, acc);
}

/* ---- Q6_K: the load-time packed layout (kern_impl.h), every token count ----
 * Measured (dl_bench_matmul 8192 x 2048) against the row kernel it replaces, 2 threads:
 * 8 tokens 760 -> 510 us, 64 tokens 5300 -> 2300 us; 1 thread, 1 / 2 / 4 tokens 390-415 ->
 * 383-386, 515-530 -> 470-475, 565-569 -> 586-589 us. One sum per token over the 16
 * sub-blocks made single tokens latency-bound (525-550 us): few tokens keep four. */

#define K6_TILE 4 /* tokens per pass over a group: 16 dot + 8 sum registers, and the quants */

/* y[t][r0 .. r0+nrows) for NT tokens from one 16-row group. Each triple (two ql pieces and
 * one qh piece) gives the 6-bit quants of four 4-value runs in four sub-blocks, 16 rows
 * per vector; vpdpbusd against 4 broadcast activation bytes sums them per sub-block, and
 * four triples finish those sub-blocks, whose dots are scaled by sc_j per row in float.
 * The quants are unsigned (q + 32), so 32 * sum_j sc_j * (sum of the token's sub-block)
 * comes off at the end, by vpdpwssd of (sc_2p, sc_2p+1) per row against the activation
 * sums of 16 values; then d (per row) times the token's activation scale. */
AI void k6packed_tile(const dl__mm *m, const uint8_t *grp, int64_t r0, int nrows, int t0,
                      const int NT)
{
    const int64_t nb = m->w->cols / 256;
    const __m512i m0f = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    __m512 acc[K6_TILE];
    const int8_t *qa[K6_TILE];
    const float *da[K6_TILE];
    const int16_t *bs[K6_TILE];
    actk_tile(m, t0, NT, acc, qa, da, bs);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + (size_t)b * DL__K6_BLOCK;
        if (t0 == 0)
            prefetch_ahead(blk, DL__K6_BLOCK);
        /* FX sums per token (one per run x when few tokens: short FMA chains) */
        const int FX = NT <= 2 ? 4 : 1;
        __m512 f[4][K6_TILE];
        DL_UNROLL(4)
        for (int t = 0; t < NT; t++)
            f[0][t] = f[1][t] = f[2][t] = f[3][t] = _mm512_setzero_ps();
        DL_UNROLL(4)
        for (int hm = 0; hm < 4; hm++) { /* h = hm / 2; triples m = 4 (hm % 2) .. + 3 */
            const int h = hm / 2, mh = hm % 2;
            __m512i dp[4][K6_TILE];
            DL_UNROLL(4)
            for (int t = 0; t < NT; t++)
                dp[0][t] = dp[1][t] = dp[2][t] = dp[3][t] = _mm512_setzero_si512();
            DL_UNROLL(4)
            for (int mm = 0; mm < 4; mm++) {
                const int mi = 4 * mh + mm;
                const uint8_t *tr = blk + 320 + (size_t)(8 * h + mi) * 192;
                __m512i A = _mm512_load_si512((const void *)tr);
                __m512i B = _mm512_load_si512((const void *)(tr + 64));
                __m512i H = _mm512_load_si512((const void *)(tr + 128));
                __m512i q[4];
                q[0] = _mm512_or_si512(_mm512_and_si512(A, m0f), _mm512_and_si512(_mm512_slli_epi16(H, 4), m30));
                q[1] = _mm512_or_si512(_mm512_and_si512(B, m0f), _mm512_and_si512(_mm512_slli_epi16(H, 2), m30));
                q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(A, 4), m0f), _mm512_and_si512(H, m30));
                q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(B, 4), m0f),
                                       _mm512_and_si512(_mm512_srli_epi16(H, 2), m30));
                DL_UNROLL(4)
                for (int t = 0; t < NT; t++) {
                    const int8_t *a = qa[t] + b * 256 + 128 * h + 4 * mi;
                    DL_UNROLL(4)
                    for (int x = 0; x < 4; x++) {
                        int32_t a4;
                        memcpy(&a4, a + 32 * x, 4);
                        dp[x][t] = _mm512_dpbusd_epi32(dp[x][t], q[x], _mm512_set1_epi32(a4));
                    }
                }
            }
            /* run x of triple m lies in sub-block 8h + 2x + mh */
            DL_UNROLL(4)
            for (int x = 0; x < 4; x++) {
                const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                    _mm_load_si128((const __m128i *)(blk + 64 + 16 * (8 * h + 2 * x + mh)))));
                DL_UNROLL(4)
                for (int t = 0; t < NT; t++)
                    f[x % FX][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp[x][t]), sc, f[x % FX][t]);
            }
        }
        __m512i cs[K6_TILE];
        DL_UNROLL(4)
        for (int t = 0; t < NT; t++)
            cs[t] = _mm512_setzero_si512();
        DL_UNROLL(8)
        for (int p = 0; p < 8; p++) {
            __m512i s0 = _mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(blk + 64 + 32 * p)));
            __m512i s1 = _mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(blk + 80 + 32 * p)));
            __m512i pr = _mm512_or_si512(_mm512_and_si512(s0, _mm512_set1_epi32(0xFFFF)),
                                         _mm512_slli_epi32(s1, 16));
            DL_UNROLL(4)
            for (int t = 0; t < NT; t++) {
                int32_t s2;
                memcpy(&s2, bs[t] + b * 16 + 2 * p, 4);
                cs[t] = _mm512_dpwssd_epi32(cs[t], pr, _mm512_set1_epi32(s2));
            }
        }
        const __m512 dv = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)blk));
        DL_UNROLL(4)
        for (int t = 0; t < NT; t++) {
            __m512 x = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(cs[t]), _mm512_set1_ps(32.0f),
                                        _mm512_add_ps(_mm512_add_ps(f[0][t], f[1][t]), _mm512_add_ps(f[2][t], f[3][t])));
            acc[t] = _mm512_fmadd_ps(x, _mm512_mul_ps(dv, _mm512_set1_ps(da[t][b])), acc[t]);
        }
    }
    store_group(m, r0, nrows, t0, NT, acc);
}

/* Q4_K or Q6_K from their packed layouts: each 16-row group, tokens a tile at a time. */
static void matmul_k_packed(const dl__mm *m, int64_t r0, int64_t r1, int is_q6)
{
    const size_t gb = is_q6 ? dl__k6_group_bytes(m->w->cols) : dl__kp_group_bytes(m->w->cols);
    const int tile = is_q6 ? K6_TILE : KP_TILE;
    for (int64_t r = r0; r < r1; r += 16) { /* r0 is a multiple of 16 (dl__matmul_job) */
        const uint8_t *grp = (const uint8_t *)m->w->packed + (size_t)(r / 16) * gb;
        int nrows = r1 - r < 16 ? (int)(r1 - r) : 16;
        for (int t = 0; t < m->n_tok; t += tile) {
            int nt = m->n_tok - t < tile ? m->n_tok - t : tile;
            switch (nt * 2 + is_q6) {
#define DL__KT(n) case 2 * n: kpacked_tile(m, grp, r, nrows, t, n); break;
#define DL__K6(n) case 2 * n + 1: k6packed_tile(m, grp, r, nrows, t, n); break;
            DL__KT(1) DL__KT(2) DL__KT(3) DL__KT(4) DL__KT(5) DL__KT(6) DL__KT(7) DL__KT(8)
            DL__K6(1) DL__K6(2) DL__K6(3) DL__K6(4)
#undef DL__KT
#undef DL__K6
            default: break;
            }
        }
    }
}

/* ---- F32 / F16 / BF16 ---- */

AI __m512 loadw(const void *row, int64_t i, __mmask16 m, uint32_t type)
{
    if (type == DL_TYPE_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (type == DL_TYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI void rowdot_f(const dl__mm *m, int64_t r, int nr, int t0, const int NT, uint32_t type)
{
    const int64_t n = m->w->cols;
    const void *w0 = (const uint8_t *)m->w->data + (size_t)r * m->w->row_bytes;
    const void *w1 = (const uint8_t *)w0 + (nr > 1 ? m->w->row_bytes : 0);
    __m512 acc[4][2];
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++)
        acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 mk = tail_mask((int)(n - i < 16 ? n - i : 16));
        __m512 a = loadw(w0, i, mk, type), c = loadw(w1, i, mk, type);
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m512 x = _mm512_maskz_loadu_ps(mk, m->x + (size_t)(t0 + t) * n + i);
            acc[t][0] = _mm512_fmadd_ps(a, x, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(c, x, acc[t][1]);
        }
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        float *y = m->y + (size_t)(t0 + t) * m->w->rows + r;
        y[0] = hsum(acc[t][0]);
        if (nr > 1)
            y[1] = hsum(acc[t][1]);
    }
}

static void matmul_f(const dl__mm *m, int64_t r0, int64_t r1, uint32_t type)
{
    for (int tb = 0; tb < m->n_tok; tb += KQ_TOK_BLOCK) {
        int te = m->n_tok - tb < KQ_TOK_BLOCK ? m->n_tok : tb + KQ_TOK_BLOCK;
        for (int64_t r = r0; r < r1; r += 2) {
            int nr = r1 - r < 2 ? 1 : 2;
            int t = tb;
            for (; t + 4 <= te; t += 4) {
                if (type == DL_TYPE_F32)
                    rowdot_f(m, r, nr, t, 4, DL_TYPE_F32);
                else if (type == DL_TYPE_F16)
                    rowdot_f(m, r, nr, t, 4, DL_TYPE_F16);
                else
                    rowdot_f(m, r, nr, t, 4, DL_TYPE_BF16);
            }
            for (; t < te; t++) {
                if (type == DL_TYPE_F32)
                    rowdot_f(m, r, nr, t, 1, DL_TYPE_F32);
                else if (type == DL_TYPE_F16)
                    rowdot_f(m, r, nr, t, 1, DL_TYPE_F16);
                else
                    rowdot_f(m, r, nr, t, 1, DL_TYPE_BF16);
            }
        }
    }
}

/* F16 / BF16: NR rows x NT tokens of accumulators. Decode (NT = 1) streams 8 rows at once
 * so 8 independent FMA chains hide the FMA latency and the conversion (F16C / shift) is the
 * only per-weight work; with more tokens each converted weight vector feeds NT FMAs. */
AI __m512 cvth(__m256i h, uint32_t type)
{
    if (type == DL_TYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI void rowdot_h(const dl__mm *m, int64_t r, const int NR, int t0, const int NT, uint32_t type)
{
    const int64_t n = m->w->cols;
    const uint16_t *w[8];
    const float *x[4];
    __m512 acc[4][8];
    DL_UNROLL(8)
    for (int i = 0; i < NR; i++)
        w[i] = (const uint16_t *)((const uint8_t *)m->w->data + (size_t)(r + i) * m->w->row_bytes);
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        x[t] = m->x + (size_t)(t0 + t) * n;
        DL_UNROLL(8)
        for (int i = 0; i < NR; i++)
            acc[t][i] = _mm512_setzero_ps();
    }
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
        __m512 wv[8];
        DL_UNROLL(8)
        for (int i = 0; i < NR; i++) {
            _mm_prefetch((const char *)(w[i] + c) + 512, _MM_HINT_T0);
            wv[i] = cvth(_mm256_loadu_si256((const __m256i *)(w[i] + c)), type);
        }
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m512 xv = _mm512_loadu_ps(x[t] + c);
            DL_UNROLL(8)
            for (int i = 0; i < NR; i++)
                acc[t][i] = _mm512_fmadd_ps(wv[i], xv, acc[t][i]);
        }
    }
    if (c < n) {
        __mmask16 mk = tail_mask((int)(n - c));
        __m512 wv[8];
        DL_UNROLL(8)
        for (int i = 0; i < NR; i++)
            wv[i] = cvth(_mm256_maskz_loadu_epi16(mk, w[i] + c), type);
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(mk, x[t] + c);
            DL_UNROLL(8)
            for (int i = 0; i < NR; i++)
                acc[t][i] = _mm512_fmadd_ps(wv[i], xv, acc[t][i]);
        }
    }
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        float *y = m->y + (size_t)(t0 + t) * m->w->rows + r;
        DL_UNROLL(8)
        for (int i = 0; i < NR; i++)
            y[i] = hsum(acc[t][i]);
    }
}

#define H_RBLOCK 16 /* rows whose weights (16 x cols x 2 bytes) stay in L2 across all tokens */

static void matmul_h_type(const dl__mm *m, int64_t r0, int64_t r1, uint32_t type)
{
    if (m->n_tok == 1) {
        int64_t r = r0;
        for (; r + 8 <= r1; r += 8)
            rowdot_h(m, r, 8, 0, 1, type);
        for (; r < r1; r++)
            rowdot_h(m, r, 1, 0, 1, type);
        return;
    }
    /* several tokens: a block of rows is read from memory once and reused by every token */
    for (int64_t rb = r0; rb < r1; rb += H_RBLOCK) {
        int64_t re = r1 - rb < H_RBLOCK ? r1 : rb + H_RBLOCK;
        int t = 0;
        for (; t + 4 <= m->n_tok; t += 4) {
            int64_t r = rb;
            for (; r + 4 <= re; r += 4)
                rowdot_h(m, r, 4, t, 4, type);
            for (; r < re; r++)
                rowdot_h(m, r, 1, t, 4, type);
        }
        for (; t < m->n_tok; t++) {
            int64_t r = rb;
            for (; r + 8 <= re; r += 8)
                rowdot_h(m, r, 8, t, 1, type);
            for (; r < re; r++)
                rowdot_h(m, r, 1, t, 1, type);
        }
    }
}

static void matmul_h(const dl__mm *m, int64_t r0, int64_t r1)
{
    if (m->w->type == DL_TYPE_F16)
        matmul_h_type(m, r0, r1, DL_TYPE_F16);
    else
        matmul_h_type(m, r0, r1, DL_TYPE_BF16);
}

/* ---- F16 / BF16: the load-time packed layout (kern_impl.h), every token count ---- */

/* Prefetch distance on the packed stream, bytes ahead (it runs on into the next group,
 * which the same thread reads next). Measured with dl_bench_matmul, 128256 x 2560 F16 (the
 * BitNet head), 2 threads: 1 token 10.2 ms with 2048 -> 9.3 with 4096 (8192: 9.6); 2 and 4
 * tokens 12.4 / 12.1 ms with 2048 -> 4096 10.5 / 12.0 -> 8192 9.1-9.5 / 9.6-9.7. */
#define PH_PF(nt) ((nt) == 1 ? 4096 : 8192)

AI __m512 cvtcol(const uint16_t *p, uint32_t type)
{
    return cvth(_mm256_load_si256((const __m256i *)p), type);
}

/* y[t][r0 .. r0+nrows) for NT tokens from one 16-row group g: per column, one conversion
 * feeds NT FMAs with the broadcast activations. CH independent accumulators per token
 * (columns c, c+1, ... in turn) hide the FMA latency when there are few tokens. */
AI void ph_tile(const dl__mm *m, const uint16_t *g, int64_t r0, int nrows, int t0, const int NT,
                uint32_t type)
{
    const int CH = NT == 1 ? 8 : NT == 2 ? 4 : NT <= 4 ? 2 : 1;
    const int64_t n = m->w->cols;
    const float *x[8];
    __m512 acc[8]; /* token t, chain j at t * CH + j (NT * CH <= 8) */
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        x[t] = m->x + (size_t)(t0 + t) * n;
        DL_UNROLL(8)
        for (int j = 0; j < CH; j++)
            acc[t * CH + j] = _mm512_setzero_ps();
    }
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const uint16_t *p = g + (size_t)c * 16; /* 8 columns: 256 bytes, 4 lines */
        if (t0 == 0) { /* later token tiles find the group in cache */
            DL_UNROLL(4)
            for (int k = 0; k < 4; k++)
                _mm_prefetch((const char *)p + PH_PF(NT) + 64 * k, _MM_HINT_T0);
        }
        DL_UNROLL(8)
        for (int k = 0; k < 8; k++) {
            __m512 wv = cvtcol(p + 16 * k, type);
            DL_UNROLL(8)
            for (int t = 0; t < NT; t++)
                acc[t * CH + k % CH] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[t][c + k]), acc[t * CH + k % CH]);
        }
    }
    for (; c < n; c++) {
        __m512 wv = cvtcol(g + (size_t)c * 16, type);
        DL_UNROLL(8)
        for (int t = 0; t < NT; t++)
            acc[t * CH] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[t][c]), acc[t * CH]);
    }
    const __mmask16 rm = tail_mask(nrows);
    DL_UNROLL(8)
    for (int t = 0; t < NT; t++) {
        DL_UNROLL(8)
        for (int j = 1; j < CH; j *= 2) /* pairwise: (0+1)+(2+3) ... */
            DL_UNROLL(8)
            for (int i = 0; i + j < CH; i += 2 * j)
                acc[t * CH + i] = _mm512_add_ps(acc[t * CH + i], acc[t * CH + i + j]);
        _mm512_mask_storeu_ps(m->y + (size_t)(t0 + t) * m->w->rows + r0, rm, acc[t * CH]);
    }
}

#define PH_TILE 8 /* tokens per pass over a group (80 KiB at 2560 columns: from L2) */

static void matmul_h_packed_type(const dl__mm *m, int64_t r0, int64_t r1, uint32_t type)
{
    const size_t gb = dl__ph_group_bytes(m->w->cols);
    /* r0 is a multiple of 16 (dl__matmul_job hands out 16-row tiles) */
    for (int64_t r = r0; r < r1; r += 16) {
        const uint16_t *g = (const uint16_t *)((const uint8_t *)m->w->packed + (size_t)(r / 16) * gb);
        int nrows = r1 - r < 16 ? (int)(r1 - r) : 16;
        for (int t = 0; t < m->n_tok; t += PH_TILE) {
            int nt = m->n_tok - t < PH_TILE ? m->n_tok - t : PH_TILE;
            switch (nt) {
#define DL__PH(k) \
    case k: ph_tile(m, g, r, nrows, t, k, type); break;
            DL__PH(1) DL__PH(2) DL__PH(3) DL__PH(4) DL__PH(5) DL__PH(6) DL__PH(7) DL__PH(8)
#undef DL__PH
            default: break;
            }
        }
    }
}

static void matmul_h_packed(const dl__mm *m, int64_t r0, int64_t r1)
{
    if (m->w->type == DL_TYPE_F16)
        matmul_h_packed_type(m, r0, r1, DL_TYPE_F16);
    else
        matmul_h_packed_type(m, r0, r1, DL_TYPE_BF16);
}

static int matmul512(const dl__mm *m, int64_t r0, int64_t r1)
{
    switch (m->w->type) {
    case DL_TYPE_F32:
        matmul_f(m, r0, r1, m->w->type);
        return 0;
    case DL_TYPE_F16:
    case DL_TYPE_BF16:
        if (m->w->packed)
            matmul_h_packed(m, r0, r1);
        else
            matmul_h(m, r0, r1);
        return 0;
    case DL_TYPE_Q8_0:
    case DL_TYPE_Q4_0:
        if (!m->xq)
            return -1;
        if (m->w->packed)
            matmul_q_packed(m, r0, r1, m->w->type == DL_TYPE_Q8_0);
        else if (m->n_tok >= STRIPE_MIN_TOK)
            matmul_q_stripe(m, r0, r1, m->w->type == DL_TYPE_Q8_0);
        else
            matmul_q_stream(m, r0, r1, m->w->type == DL_TYPE_Q8_0);
        return 0;
    case DL_TYPE_Q4_K:
    case DL_TYPE_Q6_K:
        if (!m->xq)
            return -1;
        if (m->w->packed)
            matmul_k_packed(m, r0, r1, m->w->type == DL_TYPE_Q6_K);
        else
            matmul_kq(m, r0, r1, m->w->type == DL_TYPE_Q6_K);
        return 0;
    default:
        return -1;
    }
}

const dl__kops dl__kops_avx512 = {
    .quant_act32 = quant_act32_512,
    .quant_actk = quant_actk_512,
    .matmul = matmul512,
    .rmsnorm = rmsnorm512,
    .softmax = softmax512,
    .swiglu = swiglu512,
    .dot = dot512,
    .axpy = axpy512,
    .to_fp16 = to_fp16_512,
    .sqacc = sqacc512,
};
