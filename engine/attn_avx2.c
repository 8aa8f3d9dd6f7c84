/* attn_avx2.c — AVX2 + F16C dense attention rows (attn_impl.h); called only after dispatch.
 *
 * Same structure as attn_avx512.c with 8-lane vectors. A head_dim that is not a multiple
 * of 8 is handled by copying the last partial chunk of each row through a small buffer
 * (AVX2 has no masked 16-bit load).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attn_impl.h"
#include "simd_avx2.h"


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
    dl_fp16 t[8] = {0};
    if (n > 0)
        memcpy(t, p, (size_t)n * sizeof *p);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

/* exp(x): range reduction by ln2, degree-6 polynomial, exponent built in the integer unit. */
AI __m256 exp8(__m256 x)
{
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n for n in [-126, 127]: split in two factors so n = 128 cannot overflow. */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i h = _mm256_srai_epi32(ni, 1);
    __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
    __m256 f2 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

AI void scores(const float *q, const dl_fp16 *kb, int hd, int nb, float scale, float *s)
{
    int nc = (hd + 7) / 8;
    __m256 qv[DL__ATTN_HDMAX / 8];
    for (int c = 0; c < nc; c++)
        qv[c] = _mm256_maskload_ps(q + c * 8, lanes8(hd - c * 8));
    for (int j = 0; j < nb; j++) {
        const dl_fp16 *kt = kb + (size_t)j * hd;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int c = 0;
        for (; c + 2 <= nc; c += 2) {
            a0 = _mm256_fmadd_ps(qv[c], ldh(kt + c * 8, hd - c * 8), a0);
            a1 = _mm256_fmadd_ps(qv[c + 1], ldh(kt + c * 8 + 8, hd - c * 8 - 8), a1);
        }
        if (c < nc)
            a0 = _mm256_fmadd_ps(qv[c], ldh(kt + c * 8, hd - c * 8), a0);
        s[j] = hsum8(_mm256_add_ps(a0, a1)) * scale;
    }
}

/* acc[0..hd) = acc * corr + sum_j p[j] * V[j]; four 8-lane chunks x two key parities. */
AI void pv(float *acc, float corr, const float *p, const dl_fp16 *vb, int hd, int nb)
{
    __m256 vc = _mm256_set1_ps(corr);
    for (int c0 = 0; c0 < hd; c0 += 32) {
        int n0 = hd - c0, n1 = n0 - 8, n2 = n0 - 16, n3 = n0 - 24;
        float *ac = acc + c0;
        __m256 a0 = _mm256_mul_ps(_mm256_load_ps(ac), vc);
        __m256 a1 = _mm256_mul_ps(_mm256_load_ps(ac + 8), vc);
        __m256 a2 = _mm256_mul_ps(_mm256_load_ps(ac + 16), vc);
        __m256 a3 = _mm256_mul_ps(_mm256_load_ps(ac + 24), vc);
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
        __m256 b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
        const dl_fp16 *vt = vb + c0;
        int j = 0;
        for (; j + 2 <= nb; j += 2, vt += 2 * (size_t)hd) {
            __m256 p0 = _mm256_set1_ps(p[j]), p1 = _mm256_set1_ps(p[j + 1]);
            a0 = _mm256_fmadd_ps(p0, ldh(vt, n0), a0);
            a1 = _mm256_fmadd_ps(p0, ldh(vt + 8, n1), a1);
            a2 = _mm256_fmadd_ps(p0, ldh(vt + 16, n2), a2);
            a3 = _mm256_fmadd_ps(p0, ldh(vt + 24, n3), a3);
            b0 = _mm256_fmadd_ps(p1, ldh(vt + hd, n0), b0);
            b1 = _mm256_fmadd_ps(p1, ldh(vt + hd + 8, n1), b1);
            b2 = _mm256_fmadd_ps(p1, ldh(vt + hd + 16, n2), b2);
            b3 = _mm256_fmadd_ps(p1, ldh(vt + hd + 24, n3), b3);
        }
        if (j < nb) {
            __m256 p0 = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(p0, ldh(vt, n0), a0);
            a1 = _mm256_fmadd_ps(p0, ldh(vt + 8, n1), a1);
            a2 = _mm256_fmadd_ps(p0, ldh(vt + 16, n2), a2);
            a3 = _mm256_fmadd_ps(p0, ldh(vt + 24, n3), a3);
        }
        /* acc is padded to a multiple of 32 floats, so the unused chunks are harmless. */
        _mm256_store_ps(ac, _mm256_add_ps(a0, b0));
        _mm256_store_ps(ac + 8, _mm256_add_ps(a1, b1));
        _mm256_store_ps(ac + 16, _mm256_add_ps(a2, b2));
        _mm256_store_ps(ac + 24, _mm256_add_ps(a3, b3));
    }
}

void dl__attn_rows_avx2(const dl__attn_rows *a)
{
    enum { PAD = (DL__ATTN_HDMAX + 31) / 32 * 32 };
    float acc[DL__ATTN_ROWS][PAD] __attribute__((aligned(32)));
    float mx[DL__ATTN_ROWS], sum[DL__ATTN_ROWS];
    float s[DL__ATTN_BK] __attribute__((aligned(32)));
    int hd = a->hd, kmax = 0, padn = (hd + 31) / 32 * 32;
    for (int r = 0; r < a->n; r++) {
        memset(acc[r], 0, (size_t)padn * sizeof(float));
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
        if (a->nk[r] > kmax)
            kmax = a->nk[r];
    }
    for (int t0 = 0; t0 < kmax; t0 += DL__ATTN_BK) {
        const dl_fp16 *kb = a->k + (size_t)t0 * hd, *vb = a->v + (size_t)t0 * hd;
        for (int r = 0; r < a->n; r++) {
            int nb = a->nk[r] - t0;
            if (nb <= 0)
                continue;
            if (nb > DL__ATTN_BK)
                nb = DL__ATTN_BK;
            scores(a->q[r], kb, hd, nb, a->scale, s);
            for (int j = nb; j < DL__ATTN_BK; j++)
                s[j] = -INFINITY;
            __m256 mv = _mm256_load_ps(s);
            for (int j = 8; j < DL__ATTN_BK; j += 8)
                mv = _mm256_max_ps(mv, _mm256_load_ps(s + j));
            float bm = hmax8(mv);
            float nm = bm > mx[r] ? bm : mx[r];
            float corr = expf(mx[r] - nm); /* 0 on the first block (mx = -inf) */
            __m256 vm = _mm256_set1_ps(nm), ps = _mm256_setzero_ps();
            for (int j = 0; j < DL__ATTN_BK; j += 8) {
                __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_load_ps(s + j), vm)),
                                         _mm256_castsi256_ps(lanes8(nb - j)));
                _mm256_store_ps(s + j, p);
                ps = _mm256_add_ps(ps, p);
            }
            sum[r] = sum[r] * corr + hsum8(ps);
            mx[r] = nm;
            pv(acc[r], corr, s, vb, hd, nb);
        }
    }
    for (int r = 0; r < a->n; r++) {
        __m256 inv = _mm256_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < hd; e += 8) {
            __m256 o = _mm256_mul_ps(_mm256_load_ps(acc[r] + e), inv);
            _mm256_maskstore_ps(a->out[r] + e, lanes8(hd - e), o);
        }
    }
}
