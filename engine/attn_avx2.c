/* attn_avx2.c — AVX2 + F16C dense attention rows (attn_impl.h); called only after dispatch.
 *
 * Same structure as attn_avx512.c with 8-lane vectors: the query rows of a call (the query
 * heads of one KV head) are taken R at a time, so each K row and each V chunk is widened
 * from fp16 once for R rows instead of once per row. Both products keep eight independent
 * 8-lane accumulators (R rows x 8/R keys in the scores, R rows x 8/R output chunks in P.V)
 * so the FMA chains overlap and the 16 ymm registers are not exceeded. A head_dim that is
 * not a multiple of 8 is handled by copying the last partial chunk of each row through a
 * small buffer (AVX2 has no masked 16-bit load).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attn_impl.h"
#include "simd_avx2.h"

_Static_assert(DL__ATTN_BK % 8 == 0, "the block softmax below handles whole 8-key vectors");

enum {
    PAD = (DL__ATTN_HDMAX + 63) / 64 * 64, /* row stride: a multiple of every 8 * C below */
    NR = DL__ATTN_ROWS + 3                 /* a group of 3 rows is padded to 4 */
};

AI __m256i lanes8(int n)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

/* Up to 8 fp16 values as floats, zero past n. */
AI __m256 ldh(const dl_fp16 *p, int n)
{
    if (n >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    if (n <= 0) /* a chunk wholly past head_dim in a padded pass */
        return _mm256_setzero_ps();
    dl_fp16 t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof *p);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

/* The lane sums of eight vectors, in order, as one vector. */
AI __m256 hsum8x(const __m256 a[8])
{
    __m256 x01 = _mm256_hadd_ps(a[0], a[1]), x23 = _mm256_hadd_ps(a[2], a[3]);
    __m256 x45 = _mm256_hadd_ps(a[4], a[5]), x67 = _mm256_hadd_ps(a[6], a[7]);
    /* each 128-bit half of y0 holds that half's sums of a0..a3; y1 likewise for a4..a7 */
    __m256 y0 = _mm256_hadd_ps(x01, x23), y1 = _mm256_hadd_ps(x45, x67);
    return _mm256_add_ps(_mm256_permute2f128_ps(y0, y1, 0x20), _mm256_permute2f128_ps(y0, y1, 0x31));
}

/* Scaled scores of R rows (R = 1, 2 or 4) against keys 0..nb-1 of a block: s[r][j].
 * q rows are zero-padded to whole chunks. 8/R keys go through together; a short last
 * group repeats key nb-1 (never reads past the block) and drops the extra sums. */
AI void scores_r(int R, float (*const q)[PAD], const dl_fp16 *kb, int hd, int nb, float scale,
                 float (*s)[DL__ATTN_BK])
{
    const int KJ = 8 / R;
    float t[DL__ATTN_BK * 4] __attribute__((aligned(32))); /* t[j * R + r] */
    int nc = (hd + 7) / 8;
    __m256 vs = _mm256_set1_ps(scale);
    for (int j0 = 0; j0 < nb; j0 += KJ) {
        const dl_fp16 *kt[8];
        __m256 a[8];
        DL_UNROLL_FULL
        for (int i = 0; i < KJ; i++)
            kt[i] = kb + (size_t)(j0 + i < nb ? j0 + i : nb - 1) * hd;
        DL_UNROLL_FULL
        for (int i = 0; i < 8; i++)
            a[i] = _mm256_setzero_ps();
        for (int c = 0; c < nc; c++) {
            DL_UNROLL_FULL
            for (int i = 0; i < KJ; i++) {
                __m256 k = ldh(kt[i] + c * 8, hd - c * 8);
                DL_UNROLL_FULL
                for (int r = 0; r < R; r++)
                    a[i * R + r] = _mm256_fmadd_ps(_mm256_load_ps(q[r] + c * 8), k, a[i * R + r]);
            }
        }
        _mm256_store_ps(t + j0 * R, _mm256_mul_ps(hsum8x(a), vs));
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nb; j++)
            s[r][j] = t[j * R + r];
}

/* acc[r] = acc[r] * corr[r] + sum_j p[r][j] * V[j] for R rows (R = 1, 2 or 4): R rows x
 * 8/R chunks of 8 lanes in registers per pass over the V block, each V chunk widened once
 * for the R rows. acc rows are padded to a multiple of 64 floats, so chunks past head_dim
 * (zero V) are harmless. */
AI void pv_r(int R, float (*acc)[PAD], const float *corr, float (*p)[DL__ATTN_BK],
             const dl_fp16 *vb, int hd, int nb)
{
    const int C = 8 / R;
    for (int c0 = 0; c0 * 8 < hd; c0 += C) {
        int n[8];
        __m256 a[8];
        DL_UNROLL_FULL
        for (int c = 0; c < C; c++)
            n[c] = hd - (c0 + c) * 8;
        DL_UNROLL_FULL
        for (int r = 0; r < R; r++) {
            __m256 vc = _mm256_set1_ps(corr[r]);
            DL_UNROLL_FULL
            for (int c = 0; c < C; c++)
                a[r * C + c] = _mm256_mul_ps(_mm256_load_ps(acc[r] + (c0 + c) * 8), vc);
        }
        const dl_fp16 *vt = vb + c0 * 8;
        for (int j = 0; j < nb; j++, vt += hd) {
            __m256 v[8];
            DL_UNROLL_FULL
            for (int c = 0; c < C; c++)
                v[c] = ldh(vt + c * 8, n[c]);
            DL_UNROLL_FULL
            for (int r = 0; r < R; r++) {
                __m256 pr = _mm256_broadcast_ss(&p[r][j]);
                DL_UNROLL_FULL
                for (int c = 0; c < C; c++)
                    a[r * C + c] = _mm256_fmadd_ps(pr, v[c], a[r * C + c]);
            }
        }
        DL_UNROLL_FULL
        for (int r = 0; r < R; r++)
            DL_UNROLL_FULL
            for (int c = 0; c < C; c++)
                _mm256_store_ps(acc[r] + (c0 + c) * 8, a[r * C + c]);
    }
}

/* One key block for the R rows starting at g: scores, online softmax, P.V. */
AI void block_r(int R, float (*q)[PAD], float (*acc)[PAD], float *mx, float *sum, const int *nk,
                const dl_fp16 *kb, const dl_fp16 *vb, int t0, int hd, float scale)
{
    float s[4][DL__ATTN_BK] __attribute__((aligned(32)));
    float corr[4];
    int nbmax = 0;
    for (int r = 0; r < R; r++)
        if (nk[r] - t0 > nbmax)
            nbmax = nk[r] - t0;
    if (nbmax <= 0)
        return;
    if (nbmax > DL__ATTN_BK)
        nbmax = DL__ATTN_BK;
    scores_r(R, q, kb, hd, nbmax, scale, s);
    for (int r = 0; r < R; r++) {
        int nb = nk[r] - t0;
        if (nb <= 0) { /* this row has no keys here: leave its state alone */
            corr[r] = 1.0f;
            memset(s[r], 0, sizeof s[r]);
            continue;
        }
        if (nb > DL__ATTN_BK)
            nb = DL__ATTN_BK;
        __m256 ninf = _mm256_set1_ps(-INFINITY), mv = ninf;
        for (int j = 0; j < DL__ATTN_BK; j += 8) {
            /* keys past nb (up to nbmax, or stale) become -inf */
            __m256 x = _mm256_blendv_ps(ninf, _mm256_load_ps(s[r] + j),
                                        _mm256_castsi256_ps(lanes8(nb - j)));
            _mm256_store_ps(s[r] + j, x);
            mv = _mm256_max_ps(mv, x);
        }
        float bm = hmax8(mv);
        float nm = bm > mx[r] ? bm : mx[r];
        corr[r] = expf(mx[r] - nm); /* 0 on the first block (mx = -inf) */
        __m256 vm = _mm256_set1_ps(nm), ps = _mm256_setzero_ps();
        for (int j = 0; j < DL__ATTN_BK; j += 8) {
            __m256 p = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_load_ps(s[r] + j), vm)),
                                     _mm256_castsi256_ps(lanes8(nb - j)));
            _mm256_store_ps(s[r] + j, p);
            ps = _mm256_add_ps(ps, p);
        }
        sum[r] = sum[r] * corr[r] + hsum8(ps);
        mx[r] = nm;
    }
    pv_r(R, acc, corr, s, vb, hd, nbmax);
}

void dl__attn_rows_avx2(const dl__attn_rows *a)
{
    /* a group of 3 rows runs as 4; the padding row repeats row 0 into spare state */
    float acc[NR][PAD] __attribute__((aligned(32)));
    float q[NR][PAD] __attribute__((aligned(32)));
    float mx[NR], sum[NR];
    int nk[NR];
    int hd = a->hd, kmax = 0, padn = (hd + 63) / 64 * 64;
    int n = a->n, nr = (n & 3) == 3 ? n + 1 : n;
    for (int r = 0; r < nr; r++) {
        int src = r < n ? r : 0;
        memset(acc[r], 0, (size_t)padn * sizeof(float));
        memset(q[r], 0, (size_t)padn * sizeof(float));
        memcpy(q[r], a->q[src], (size_t)hd * sizeof(float));
        nk[r] = a->nk[src];
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
        if (nk[r] > kmax)
            kmax = nk[r];
    }
    for (int t0 = 0; t0 < kmax; t0 += DL__ATTN_BK) {
        const dl_fp16 *kb = a->k + (size_t)t0 * hd, *vb = a->v + (size_t)t0 * hd;
        int g = 0;
        for (; g + 4 <= nr; g += 4)
            block_r(4, q + g, acc + g, mx + g, sum + g, nk + g, kb, vb, t0, hd, a->scale);
        if (g + 2 <= nr) {
            block_r(2, q + g, acc + g, mx + g, sum + g, nk + g, kb, vb, t0, hd, a->scale);
            g += 2;
        }
        if (g < nr)
            block_r(1, q + g, acc + g, mx + g, sum + g, nk + g, kb, vb, t0, hd, a->scale);
    }
    for (int r = 0; r < n; r++) {
        __m256 inv = _mm256_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < hd; e += 8) {
            __m256 o = _mm256_mul_ps(_mm256_load_ps(acc[r] + e), inv);
            _mm256_maskstore_ps(a->out[r] + e, lanes8(hd - e), o);
        }
    }
}
