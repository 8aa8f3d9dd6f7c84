/* attn_avx512.c — AVX-512 dense attention rows (attn_impl.h); called only after dispatch.
 *
 * fp16 K/V are widened with vcvtph2ps as they are used (a block stays in L1 for all the
 * rows, so converting per row is cheaper than a store/reload of an f32 copy). Scores are
 * accumulated in f32 in key order like the scalar path; P.V keeps up to four 16-lane
 * output chunks x two key parities in registers so the FMA chains overlap.
 */
#include <immintrin.h>
#include <math.h>

#include "attn_impl.h"
#include "simd_avx512.h"

_Static_assert(DL__ATTN_BK == 32, "the block softmax below handles 32 keys as two vectors");


AI __mmask16 lanes(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

AI __m512 ldh(const dl_fp16 *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* Scores of four rows against keys 0..nb-1 of a block, scaled: s[r][j]. Each K row is
 * widened once for the four rows; the next-but-one block is prefetched. */
AI void scores4(const float *const *q, const dl_fp16 *kb, int hd, int nb, float scale,
                float s[4][DL__ATTN_BK])
{
    float t[DL__ATTN_BK][4] __attribute__((aligned(16)));
    int nc = (hd + 15) / 16;
    __m128 vs = _mm_set1_ps(scale);
    for (int j = 0; j < nb; j++) {
        const dl_fp16 *kt = kb + (size_t)j * hd;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int c = 0; c < nc; c++) {
            __mmask16 m = lanes(hd - c * 16);
            if (!(c & 1))
                _mm_prefetch((const char *)(kt + c * 16 + 2 * DL__ATTN_BK * (size_t)hd), _MM_HINT_T0);
            __m512 k = ldh(kt + c * 16, m);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q[0] + c * 16), k, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q[1] + c * 16), k, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q[2] + c * 16), k, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q[3] + c * 16), k, a3);
        }
        _mm_store_ps(t[j], _mm_mul_ps(hsum4x(a0, a1, a2, a3), vs));
    }
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < nb; j++)
            s[r][j] = t[j][r];
}

/* acc[r] = acc[r] * corr[r] + sum_j p[r][j] * V[j] for four rows: 4 rows x 4 chunks of
 * 16 lanes in registers, each V chunk widened once for the four rows. */
AI void pv4(float *const *acc, const float *corr, float p[4][DL__ATTN_BK], const dl_fp16 *vb,
            int hd, int nb)
{
    for (int c0 = 0; c0 * 16 < hd; c0 += 4) {
        __mmask16 m[4];
        __m512 a[4][4];
        DL_UNROLL_FULL
        for (int c = 0; c < 4; c++)
            m[c] = lanes(hd - (c0 + c) * 16);
        DL_UNROLL_FULL
        for (int r = 0; r < 4; r++) {
            __m512 vc = _mm512_set1_ps(corr[r]);
            DL_UNROLL_FULL
            for (int c = 0; c < 4; c++)
                a[r][c] = _mm512_mul_ps(_mm512_load_ps(acc[r] + (c0 + c) * 16), vc);
        }
        const dl_fp16 *vt = vb + c0 * 16;
        for (int j = 0; j < nb; j++, vt += hd) {
            _mm_prefetch((const char *)(vt + 2 * DL__ATTN_BK * (size_t)hd), _MM_HINT_T0);
            _mm_prefetch((const char *)(vt + 32 + 2 * DL__ATTN_BK * (size_t)hd), _MM_HINT_T0);
            __m512 v[4];
            DL_UNROLL_FULL
            for (int c = 0; c < 4; c++)
                v[c] = ldh(vt + c * 16, m[c]);
            DL_UNROLL_FULL
            for (int r = 0; r < 4; r++) {
                __m512 pr = _mm512_set1_ps(p[r][j]);
                DL_UNROLL_FULL
                for (int c = 0; c < 4; c++)
                    a[r][c] = _mm512_fmadd_ps(pr, v[c], a[r][c]);
            }
        }
        /* acc rows are padded to a multiple of 64 floats, so unused chunks are harmless */
        DL_UNROLL_FULL
        for (int r = 0; r < 4; r++)
            DL_UNROLL_FULL
            for (int c = 0; c < 4; c++)
                _mm512_store_ps(acc[r] + (c0 + c) * 16, a[r][c]);
    }
}

void dl__attn_rows_avx512(const dl__attn_rows *a)
{
    enum { PAD = (DL__ATTN_HDMAX + 63) / 64 * 64, NR = DL__ATTN_ROWS + 3 };
    /* rows are handled four at a time; the padding rows repeat row 0 into spare state */
    float acc[NR][PAD] __attribute__((aligned(64)));
    float mx[NR], sum[NR];
    const float *q[NR];
    int nk[NR];
    float s[4][DL__ATTN_BK] __attribute__((aligned(64)));
    int hd = a->hd, kmax = 0, padn = (hd + 63) / 64 * 64, n4 = (a->n + 3) & ~3;
    for (int r = 0; r < n4; r++) {
        q[r] = a->q[r < a->n ? r : 0];
        nk[r] = a->nk[r < a->n ? r : 0];
        for (int e = 0; e < padn; e += 16)
            _mm512_store_ps(acc[r] + e, _mm512_setzero_ps());
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
        if (nk[r] > kmax)
            kmax = nk[r];
    }
    for (int t0 = 0; t0 < kmax; t0 += DL__ATTN_BK) {
        const dl_fp16 *kb = a->k + (size_t)t0 * hd, *vb = a->v + (size_t)t0 * hd;
        for (int g = 0; g < n4; g += 4) {
            int nbmax = 0;
            for (int r = g; r < g + 4; r++)
                if (nk[r] - t0 > nbmax)
                    nbmax = nk[r] - t0;
            if (nbmax <= 0)
                continue;
            if (nbmax > DL__ATTN_BK)
                nbmax = DL__ATTN_BK;
            scores4(q + g, kb, hd, nbmax, a->scale, s);
            float corr[4];
            for (int i = 0; i < 4; i++) {
                int r = g + i, nb = nk[r] - t0;
                if (nb > DL__ATTN_BK)
                    nb = DL__ATTN_BK;
                __mmask16 k0 = lanes(nb), k1 = lanes(nb - 16);
                __m512 m0 = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), k0, s[i]);
                __m512 m1 = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), k1, s[i] + 16);
                if (nb <= 0) { /* this row has no keys here: leave its state alone */
                    corr[i] = 1.0f;
                    _mm512_store_ps(s[i], _mm512_setzero_ps());
                    _mm512_store_ps(s[i] + 16, _mm512_setzero_ps());
                    continue;
                }
                float bm = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
                float nm = bm > mx[r] ? bm : mx[r];
                corr[i] = expf(mx[r] - nm); /* 0 on the first block (mx = -inf) */
                __m512 vm = _mm512_set1_ps(nm);
                __m512 p0 = _mm512_maskz_mov_ps(k0, exp512(_mm512_sub_ps(m0, vm)));
                __m512 p1 = _mm512_maskz_mov_ps(k1, exp512(_mm512_sub_ps(m1, vm)));
                _mm512_store_ps(s[i], p0);
                _mm512_store_ps(s[i] + 16, p1);
                sum[r] = sum[r] * corr[i] + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
                mx[r] = nm;
            }
            float *ar[4] = {acc[g], acc[g + 1], acc[g + 2], acc[g + 3]};
            pv4(ar, corr, s, vb, hd, nbmax);
        }
    }
    for (int r = 0; r < a->n; r++) {
        __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < hd; e += 16)
            _mm512_mask_storeu_ps(a->out[r] + e, lanes(hd - e),
                                  _mm512_mul_ps(_mm512_load_ps(acc[r] + e), inv));
    }
}
