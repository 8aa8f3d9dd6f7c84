/* delta_avx512.c — AVX-512 DeltaLLM attention kernels (head dim a multiple of 16).
 * Called only after dl__delta_ops() saw AVX-512 at run time. Same row ranges as the
 * scalar reference (delta_scalar.c); two shapes of score sweep:
 *
 *   >= 16 rows (prefill): vectorised over rows. For each stored delta (e, v) of key t,
 *     D[rows] += v * Qt[e][rows] — contiguous loads, no gathers; only stored elements
 *     cost work, so the score product shrinks with the element sparsity.
 *   < 16 rows (decode: one query x the heads of a group): vectorised over the head dim.
 *     Key t's packed deltas are expanded once (vcvtph2ps + vexpandps under the 16-bit
 *     mask chunks) and dotted with every row's query; the stream is read once per KV head.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>

#include "delta_impl.h"
#include "simd_avx512.h"


/* Lanes of vector j (rows 16j .. 16j+15) that fall in rows [a, b). */
static inline __mmask16 lanes(int j, int a, int b)
{
    int lo = a - 16 * j, hi = b - 16 * j;
    lo = lo < 0 ? 0 : lo;
    hi = hi > 16 ? 16 : hi;
    if (hi <= lo)
        return 0;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

static inline void advance(const dl__dunit *u, int t, int *rc, int *rf)
{
    while (*rf < u->rows && u->lo[*rf] <= t)
        (*rf)++;
    while (u->hi[*rc] < t)
        (*rc)++;
}

/* The exact key of position t into x[d / 16] vectors (fp16 ring / sink widened). */
static inline void load_exact(const dl__dkeys *k, int t, __m512 *x)
{
    const dl_fp16 *h16 = NULL;
    const float *key = dl__exact_src(k, t, &h16);
    for (int c = 0; c < k->d / 16; c++)
        x[c] = key ? _mm512_loadu_ps(key + 16 * c)
                   : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h16 + 16 * c)));
}

/* Key t as fp32 for exact scoring: this call's fp32 key as it is, or the fp16 one (the
 * dense baseline's cache, the ring, a sink) widened into kbuf. */
static inline const float *exact_key_f32(const dl__dkeys *k, int t, int dense, float *kbuf)
{
    const dl_fp16 *h16 = dense ? k->kdense + (size_t)t * k->d : NULL;
    const float *key = dense ? NULL : dl__exact_src(k, t, &h16);
    if (key)
        return key;
    for (int e = 0; e < k->d; e += 16)
        _mm512_storeu_ps(kbuf + e, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h16 + e))));
    return kbuf;
}

/* ---------------------------------------------------------------- many rows */

/* R[0 .. 16 NV) += Σ over key t's stored deltas (e, v) of v * Qt[e][.]. Two accumulator
 * sets alternate so that consecutive deltas do not wait on each other's FMA. */
AI void sweep_delta(const float *Qt, int rs, int d, const uint8_t *m, const dl_fp16 *val,
                        float *R, const int NV)
{
    __m512 A[4], B[4];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = B[x] = _mm512_setzero_ps();
    const dl_fp16 *v = val;
    int odd = 0;
    for (int c = 0; c < d; c += 16) {
        unsigned bits = (unsigned)m[c >> 3] | (unsigned)m[(c >> 3) + 1] << 8;
        if (!bits)
            continue;
        float buf[16];
        _mm512_storeu_ps(buf, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)v)));
        v += __builtin_popcount(bits);
        for (int j = 0; bits; j++, bits &= bits - 1) {
            const float *qe = Qt + (size_t)(c + __builtin_ctz(bits)) * rs;
            __m512 b = _mm512_set1_ps(buf[j]);
            if (odd)
                DL_UNROLL_FULL
                for (int x = 0; x < NV; x++)
                    B[x] = _mm512_fmadd_ps(b, _mm512_loadu_ps(qe + 16 * x), B[x]);
            else
                DL_UNROLL_FULL
                for (int x = 0; x < NV; x++)
                    A[x] = _mm512_fmadd_ps(b, _mm512_loadu_ps(qe + 16 * x), A[x]);
            odd ^= 1;
        }
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm512_storeu_ps(R + 16 * x,
                         _mm512_add_ps(_mm512_loadu_ps(R + 16 * x), _mm512_add_ps(A[x], B[x])));
}

/* s[rows in [a, b)] = key . Qt[.][row] for the vectors j0 .. j0+NV-1. */
AI void sweep_exact(const float *Qt, int rs, int d, const float *key, float *s, int j0,
                        int a, int b, const int NV)
{
    __m512 A[4], B[4];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = B[x] = _mm512_setzero_ps();
    const float *q = Qt + 16 * j0;
    for (int e = 0; e < d; e += 2) {
        __m512 k0 = _mm512_set1_ps(key[e]), k1 = _mm512_set1_ps(key[e + 1]);
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++) {
            A[x] = _mm512_fmadd_ps(k0, _mm512_loadu_ps(q + (size_t)e * rs + 16 * x), A[x]);
            B[x] = _mm512_fmadd_ps(k1, _mm512_loadu_ps(q + (size_t)(e + 1) * rs + 16 * x), B[x]);
        }
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm512_mask_storeu_ps(s + 16 * (j0 + x), lanes(j0 + x, a, b), _mm512_add_ps(A[x], B[x]));
}

static void exact_rows(const float *Qt, int rs, int d, const float *key, float *s, int a, int b)
{
    int j = a / 16, jend = (b + 15) / 16;
    for (; j + 4 <= jend; j += 4)
        sweep_exact(Qt, rs, d, key, s, j, a, b, 4);
    switch (jend - j) {
    case 3: sweep_exact(Qt, rs, d, key, s, j, a, b, 3); break;
    case 2: sweep_exact(Qt, rs, d, key, s, j, a, b, 2); break;
    case 1: sweep_exact(Qt, rs, d, key, s, j, a, b, 1); break;
    default: break;
    }
}

static void delta_rows(const dl__dunit *u, const uint8_t *m, int rf, const dl_fp16 *val)
{
    const dl__dkeys *k = u->k;
    int j = rf / 16, jend = (u->rows + 15) / 16;
    for (; j + 4 <= jend; j += 4)
        sweep_delta(u->Qt + 16 * j, u->rs, k->d, m, val, u->r + 16 * j, 4);
    switch (jend - j) {
    case 3: sweep_delta(u->Qt + 16 * j, u->rs, k->d, m, val, u->r + 16 * j, 3); break;
    case 2: sweep_delta(u->Qt + 16 * j, u->rs, k->d, m, val, u->r + 16 * j, 2); break;
    case 1: sweep_delta(u->Qt + 16 * j, u->rs, k->d, m, val, u->r + 16 * j, 1); break;
    default: break;
    }
}

/* Rows [a, b) of s get v[row] (masked stores). */
static void copy_rows(float *s, const float *v, int a, int b)
{
    for (int j = a / 16; j < (b + 15) / 16; j++)
        _mm512_mask_storeu_ps(s + 16 * j, lanes(j, a, b), _mm512_loadu_ps(v + 16 * j));
}

static void fill_rows(float *s, float x, int a, int b)
{
    for (int j = a / 16; j < (b + 15) / 16; j++)
        _mm512_mask_storeu_ps(s + 16 * j, lanes(j, a, b), _mm512_set1_ps(x));
}

static void scores_wide(const dl__dunit *u, int dense)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0, rf = dense ? rows : 0;
    float kbuf[512];
    dl__drows cur;
    dl__drows_init(&cur);
    for (int r = 0; r < rs; r++)
        u->r[r] = 0;
    for (int t = 0; t <= tend; t++) {
        if (!dense)
            advance(u, t, &rc, &rf);
        else
            while (u->hi[rc] < t)
                rc++;
        float *s = u->st + (size_t)t * rs;
        if (rf < rows) {
            const uint8_t *m;
            const dl_fp16 *v = dl__krow(&cur, k, t, &m);
            delta_rows(u, m, rf, v);
        }
        int ex_end = t < k->sink ? rows : rf;
        if (ex_end > rc) {
            const float *key = exact_key_f32(k, t, dense, kbuf);
            exact_rows(u->Qt, rs, d, key, s, rc, ex_end);
        }
        if (t >= k->sink && rf < rows)
            copy_rows(s, u->r, rf, rows);
        if (rc > 0)
            fill_rows(s, -INFINITY, 0, rc);
    }
}

/* ---------------------------------------------------------------- few rows */

static inline float dot_rows(const float *q, const __m512 *x, int nv)
{
    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q), x[0]);
    for (int c = 1; c < nv; c++)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), x[c], a);
    return _mm512_reduce_add_ps(a);
}

/* Sums of 16 vectors: lane j of the result = the horizontal sum of a[j]. A shuffle tree
 * (45 shuffles/adds for 16 sums, instead of 16 full horizontal reductions); the tree
 * leaves key 4i+j in lane 4j+i, which the final permute undoes. */
static inline __m512 reduce16(const __m512 *a)
{
    __m512 A[8], B[4], C[2];
    for (int i = 0; i < 8; i++)
        A[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
    for (int i = 0; i < 4; i++)
        B[i] = _mm512_add_ps(_mm512_shuffle_f32x4(A[2 * i], A[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(A[2 * i], A[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; i++)
        C[i] = _mm512_add_ps(_mm512_shuffle_ps(B[2 * i], B[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(B[2 * i], B[2 * i + 1], 0xee));
    __m512 D = _mm512_add_ps(_mm512_shuffle_ps(C[0], C[1], 0x88),
                             _mm512_shuffle_ps(C[0], C[1], 0xdd));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, D);
}

/* Decode fast path: every row has the same lo and hi (one query, the heads of a group).
 * Keys go in blocks of 16: each key is expanded once into kx (packed deltas through
 * vexpandps, or the exact / dense key), then each row dots its query with the 16 keys and
 * the 16 sums come out of one shuffle tree. Keys t < lo (from sink on) add to the running
 * sum R, which is their score. Keys below sink are done one by one (they need both the
 * exact score and their delta). */
static void scores_group(const dl__dunit *u, int dense)
{
    const dl__dkeys *k = u->k;
    int d = k->d, nv = d / 16, rs = u->rs, rows = u->rows, tend = u->hi[0];
    int lo = dense ? 0 : u->lo[0];
    float kx[16 * 512] __attribute__((aligned(64)));
    dl__drows cur;
    dl__drows_init(&cur);
    int t = 0;
    for (; t < k->sink && t <= tend; t++) { /* sink keys: exact score, delta into R */
        __m512 x[32];
        float *s = u->st + (size_t)t * rs;
        if (lo > 0) {
            const uint8_t *m;
            const dl_fp16 *vt = dl__krow(&cur, k, t, &m);
            for (int c = 0; c < nv; c++) {
                unsigned bits = (unsigned)m[2 * c] | (unsigned)m[2 * c + 1] << 8;
                x[c] = _mm512_maskz_expand_ps(
                    (__mmask16)bits, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vt)));
                vt += __builtin_popcount(bits);
            }
            for (int r = 0; r < rows; r++)
                u->r[r] += dot_rows(u->Q + (size_t)r * d, x, nv);
        }
        if (dense) {
            const dl_fp16 *kh = k->kdense + (size_t)t * d;
            for (int c = 0; c < nv; c++)
                x[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kh + 16 * c)));
        } else {
            load_exact(k, t, x);
        }
        for (int r = 0; r < rows; r++)
            s[r] = dot_rows(u->Q + (size_t)r * d, x, nv);
    }
    for (; t <= tend; t += 16) {
        int nb = tend + 1 - t < 16 ? tend + 1 - t : 16;
        for (int j = 0; j < 16; j++) {
            float *x = kx + (size_t)j * d;
            int tt = t + j;
            if (j >= nb) {
                for (int c = 0; c < nv; c++)
                    _mm512_store_ps(x + 16 * c, _mm512_setzero_ps());
            } else if (tt < lo) {
                const uint8_t *m;
                const dl_fp16 *vt = dl__krow(&cur, k, tt, &m);
                for (int c = 0; c < nv; c++) {
                    unsigned bits = (unsigned)m[2 * c] | (unsigned)m[2 * c + 1] << 8;
                    _mm512_store_ps(x + 16 * c, _mm512_maskz_expand_ps(
                        (__mmask16)bits,
                        _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vt))));
                    vt += __builtin_popcount(bits);
                }
            } else if (dense) {
                const dl_fp16 *kh = k->kdense + (size_t)tt * d;
                for (int c = 0; c < nv; c++)
                    _mm512_store_ps(x + 16 * c, _mm512_cvtph_ps(_mm256_loadu_si256(
                                                    (const __m256i *)(kh + 16 * c))));
            } else {
                __m512 y[32];
                load_exact(k, tt, y);
                for (int c = 0; c < nv; c++)
                    _mm512_store_ps(x + 16 * c, y[c]);
            }
        }
        for (int r = 0; r < rows; r++) {
            const float *q = u->Q + (size_t)r * d;
            __m512 a[16];
            for (int j = 0; j < 16; j++)
                a[j] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_load_ps(kx + (size_t)j * d));
            for (int c = 1; c < nv; c++) {
                __m512 qc = _mm512_loadu_ps(q + 16 * c);
                for (int j = 0; j < 16; j++)
                    a[j] = _mm512_fmadd_ps(qc, _mm512_load_ps(kx + (size_t)j * d + 16 * c), a[j]);
            }
            float sc[16];
            _mm512_storeu_ps(sc, reduce16(a));
            float R = u->r[r];
            for (int j = 0; j < nb; j++) {
                float *s = u->st + (size_t)(t + j) * rs;
                if (t + j < lo)
                    s[r] = R += sc[j];
                else
                    s[r] = sc[j];
            }
            u->r[r] = R;
        }
    }
}

/* Few rows: per key, the delta dot of each row is written into the score matrix (keys at
 * or after sink) and the running sums are formed afterwards in one pass vectorised over
 * rows, so that no key waits on the previous key's sum. */
static void scores_narrow(const dl__dunit *u, int dense)
{
    const dl__dkeys *k = u->k;
    int d = k->d, nv = d / 16, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0, rf = dense ? rows : 0;
    __m512 x[32];
    dl__drows cur;
    dl__drows_init(&cur);
    for (int r = 0; r < rs; r++)
        u->r[r] = 0;
    if (u->lo[0] == u->lo[rows - 1] && u->hi[0] == u->hi[rows - 1] && d <= 512) {
        scores_group(u, dense);
        return;
    }
    for (int t = 0; t <= tend; t++) {
        if (!dense)
            advance(u, t, &rc, &rf);
        else
            while (u->hi[rc] < t)
                rc++;
        float *s = u->st + (size_t)t * rs;
        if (rf < rows) {
            const uint8_t *m;
            const dl_fp16 *v = dl__krow(&cur, k, t, &m);
            for (int c = 0; c < nv; c++) {
                unsigned bits = (unsigned)m[2 * c] | (unsigned)m[2 * c + 1] << 8;
                x[c] = _mm512_maskz_expand_ps(
                    (__mmask16)bits, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)v)));
                v += __builtin_popcount(bits);
            }
            if (t < k->sink)
                for (int r = rf; r < rows; r++)
                    u->r[r] += dot_rows(u->Q + (size_t)r * d, x, nv);
            else
                for (int r = rf; r < rows; r++)
                    s[r] = dot_rows(u->Q + (size_t)r * d, x, nv);
        }
        int ex_end = t < k->sink ? rows : rf;
        if (ex_end > rc) {
            if (dense) {
                const dl_fp16 *kh = k->kdense + (size_t)t * d;
                for (int c = 0; c < nv; c++)
                    x[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kh + 16 * c)));
            } else {
                load_exact(k, t, x);
            }
            for (int r = rc; r < ex_end; r++)
                s[r] = dot_rows(u->Q + (size_t)r * d, x, nv);
        }
        for (int r = 0; r < rc; r++)
            s[r] = -INFINITY;
    }
    if (dense || u->lo[rows - 1] <= k->sink)
        return;
    /* running sums: rows [rf, rows) at key t hold q.Δk_t; replace them by R */
    __m512 R = _mm512_loadu_ps(u->r);
    rf = 0;
    for (int t = 0; t < u->lo[rows - 1]; t++) {
        while (rf < rows && u->lo[rf] <= t)
            rf++;
        if (t < k->sink)
            continue;
        __mmask16 dm = lanes(0, rf, rows);
        float *s = u->st + (size_t)t * rs;
        R = _mm512_add_ps(R, _mm512_maskz_loadu_ps(dm, s));
        _mm512_mask_storeu_ps(s, dm, R);
    }
}

static void scores_avx512(const dl__dunit *u)
{
    if (u->rows >= 16)
        scores_wide(u, 0);
    else
        scores_narrow(u, 0);
}

static void scores_dense_avx512(const dl__dunit *u)
{
    if (u->rows >= 16)
        scores_wide(u, 1);
    else
        scores_narrow(u, 1);
}

/* ---------------------------------------------------------------- softmax and P.V */

/* e^x for x <= 0 (softmax arguments): range reduction by ln 2 and a degree-6 Taylor
 * polynomial on [-ln2/2, ln2/2] (relative error ~1e-7); x < -87 (incl. -inf) gives 0. */
static inline __m512 exp_neg(__m512 x)
{
    __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, n);
}

/* Probabilities in place (vectorised over rows), aux = 1 / row sum. */
static void softmax_rows(const dl__dunit *u)
{
    int rs = u->rs, rows = u->rows;
    for (int j = 0; j * 16 < rows; j++) {
        __mmask16 lm = lanes(j, 0, rows);
        int last = 16 * j + 15 < rows - 1 ? 16 * j + 15 : rows - 1;
        int tend = u->hi[last];
        float *s = u->st + 16 * j;
        __m512 m = _mm512_set1_ps(-INFINITY);
        for (int t = 0; t <= tend; t++)
            m = _mm512_max_ps(m, _mm512_maskz_loadu_ps(lm, s + (size_t)t * rs));
        __m512 sum = _mm512_setzero_ps();
        for (int t = 0; t <= tend; t++) {
            __m512 p = exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(lm, s + (size_t)t * rs), m));
            _mm512_mask_storeu_ps(s + (size_t)t * rs, lm, p);
            sum = _mm512_add_ps(sum, p);
        }
        _mm512_mask_storeu_ps(u->aux + 16 * j, lm,
                              _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_mask_mov_ps(
                                  _mm512_set1_ps(1.0f), lm, sum)));
    }
}

/* acc[r0 .. r0+NR)[c0 .. c0+16 NVD) = Σ_t p[t][r] V[t] * aux[r]; register-blocked so each V
 * chunk is converted once per NR rows. Entries past a row's own position are 0. */
AI void pv_block(const dl__dunit *u, int r0, int c0, const int NR, const int NVD)
{
    int d = u->k->d, rs = u->rs, tend = u->hi[r0 + NR - 1];
    const dl_fp16 *v = u->k->h->v + c0;
    __m512 A[4][4];
    DL_UNROLL_FULL
    for (int i = 0; i < NR; i++)
        DL_UNROLL_FULL
        for (int x = 0; x < NVD; x++)
            A[i][x] = _mm512_setzero_ps();
    for (int t = 0; t <= tend; t++) {
        __m512 vv[4];
        DL_UNROLL_FULL
        for (int x = 0; x < NVD; x++)
            vv[x] = _mm512_cvtph_ps(
                _mm256_loadu_si256((const __m256i *)(v + (size_t)t * d + 16 * x)));
        const float *p = u->st + (size_t)t * rs + r0;
        DL_UNROLL_FULL
        for (int i = 0; i < NR; i++) {
            __m512 b = _mm512_set1_ps(p[i]);
            DL_UNROLL_FULL
            for (int x = 0; x < NVD; x++)
                A[i][x] = _mm512_fmadd_ps(b, vv[x], A[i][x]);
        }
    }
    DL_UNROLL_FULL
    for (int i = 0; i < NR; i++) {
        __m512 sc = _mm512_set1_ps(u->aux[r0 + i]);
        DL_UNROLL_FULL
        for (int x = 0; x < NVD; x++)
            _mm512_storeu_ps(u->acc + (size_t)(r0 + i) * d + c0 + 16 * x,
                             _mm512_mul_ps(A[i][x], sc));
    }
}

static void pv_rows(const dl__dunit *u, int r0, int nr, int c0, int nvd)
{
    if (nr == 4 && nvd == 4) {
        pv_block(u, r0, c0, 4, 4);
        return;
    }
    for (int i = 0; i < nr; i++)
        for (int x = 0; x < nvd; x++)
            pv_block(u, r0 + i, c0 + 16 * x, 1, 1);
}

static void softmax_pv_avx512(const dl__dunit *u)
{
    int d = u->k->d;
    softmax_rows(u);
    for (int r0 = 0; r0 < u->rows; r0 += 4) {
        int nr = u->rows - r0 < 4 ? u->rows - r0 : 4;
        for (int c0 = 0; c0 < d; c0 += 64)
            pv_rows(u, r0, nr, c0, (d - c0) / 16 < 4 ? (d - c0) / 16 : 4);
    }
}


/* ---------------------------------------------------------------- fused decode */

/* Decode units. The dense baseline (bench) runs fused like attention.c's dense kernel
 * (attn_avx512.c): keys in blocks of DL__GBK made fp32 once into kx, an online softmax
 * and P.V straight from the fp16 V rows.
 *
 * Delta units (attend_group_avx512) use the element-major blocks of the stream instead
 * (delta_impl.h): for each of a block's d elements, one vcvtph2ps + vexpandps under its
 * 16-bit position mask gives that element's deltas for the block's 16 positions as one
 * vector, and every row (query head) does one multiply-add with its q[e] broadcast — so
 * the block's 16 delta scores q.Δk per row come out as a vector, with no horizontal sum
 * and no k̂ rebuilt. The scores of k̂ (q.k̂_t = Σ_{τ<=t} q.Δk_τ) are then a 16-lane
 * prefix scan plus the carry of the blocks before. Exact keys (window, sink) are scored
 * one by one, then a two-pass softmax over the row and P.V streaming V once.
 * The earlier design rebuilt k̂ row by row into kx and scored it like dense keys (k̂ add,
 * stores and reloads, a 4-row horizontal sum per key): 0.78-0.83x the speed of the engine's
 * dense attention at 4096 on the 1B shape. */

#define DL__GBK 32    /* keys per block */
#define DL__GDMAX 256 /* largest head dim (kx is DL__GBK x DL__GDMAX floats on the stack) */

static inline __mmask16 first_n(int n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* s[i][j] = q[i] . kx[j] for four rows and keys 0..nb-1 of the block; NV (d / 16) is a
 * compile-time count up to 4, so the four queries stay in registers. */
AI void gscores4(const float *const *q, const float *kx, int d, int nb,
                     float s[4][DL__GBK], const int NV)
{
    float t4[DL__GBK][4] __attribute__((aligned(16)));
    __m512 qr[4][4];
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++)
        DL_UNROLL_FULL
        for (int c = 0; c < NV; c++)
            qr[i][c] = _mm512_loadu_ps(q[i] + 16 * c);
    for (int j = 0; j < nb; j++) {
        const float *x = kx + (size_t)j * d;
        __m512 a[4];
        __m512 k = _mm512_load_ps(x);
        DL_UNROLL_FULL
        for (int i = 0; i < 4; i++)
            a[i] = _mm512_mul_ps(qr[i][0], k);
        DL_UNROLL_FULL
        for (int c = 1; c < NV; c++) {
            k = _mm512_load_ps(x + 16 * c);
            DL_UNROLL_FULL
            for (int i = 0; i < 4; i++)
                a[i] = _mm512_fmadd_ps(qr[i][c], k, a[i]);
        }
        _mm_store_ps(t4[j], hsum4x(a[0], a[1], a[2], a[3]));
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < nb; j++)
            s[i][j] = t4[j][i];
}

/* The same for any d (multiple of 16). */
static void gscores4_any(const float *const *q, const float *kx, int d, int nb,
                         float s[4][DL__GBK])
{
    float t4[DL__GBK][4] __attribute__((aligned(16)));
    for (int j = 0; j < nb; j++) {
        const float *x = kx + (size_t)j * d;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int c = 0; c < d; c += 16) {
            __m512 k = _mm512_load_ps(x + c);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q[0] + c), k, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q[1] + c), k, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q[2] + c), k, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q[3] + c), k, a3);
        }
        _mm_store_ps(t4[j], hsum4x(a0, a1, a2, a3));
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < nb; j++)
            s[i][j] = t4[j][i];
}

/* acc[i] = acc[i] * corr[i] + Σ_j p[i][j] V[j] for four rows and keys j < nb of vb, NVD
 * 16-lane chunks from c0; each V chunk is widened once for the four rows. */
AI void gpv4(float *const *acc, const float *corr, const float *const *p,
                 const dl_fp16 *vb, int d, int nb, int c0, const char *pf, int pn, const int NVD)
{
    __m512 a[4][4];
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++) {
        __m512 vc = _mm512_set1_ps(corr[i]);
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            a[i][c] = _mm512_mul_ps(_mm512_loadu_ps(acc[i] + c0 + 16 * c), vc);
    }
    const dl_fp16 *vt = vb + c0;
    for (int j = 0; j < nb; j++, vt += d) {
        if (j < pn) /* row j of the next chunk's V (pn = 0 if none) */
            for (int l = 0; l < d * 2; l += 64)
                _mm_prefetch(pf + (size_t)j * d * 2 + l, _MM_HINT_T1);
        __m512 v[4];
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            v[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vt + 16 * c)));
        DL_UNROLL_FULL
        for (int i = 0; i < 4; i++) {
            __m512 pr = _mm512_set1_ps(p[i][j]);
            DL_UNROLL_FULL
            for (int c = 0; c < NVD; c++)
                a[i][c] = _mm512_fmadd_ps(pr, v[c], a[i][c]);
        }
    }
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++)
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            _mm512_storeu_ps(acc[i] + c0 + 16 * c, a[i][c]);
}

/* The same over all of d; with pn > 0 the first pass also prefetches rows 0 .. pn-1 of
 * pf (fp16 rows of d) towards L2. */
static void gpv(float *const *acc, const float *corr, const float *const *p,
                const dl_fp16 *vb, int d, int nb, const dl_fp16 *pf, int pn)
{
    int c0 = 0;
    const char *pc = (const char *)pf;
    for (; c0 + 64 <= d; c0 += 64, pn = 0)
        gpv4(acc, corr, p, vb, d, nb, c0, pc, pn, 4);
    switch ((d - c0) / 16) {
    case 3: gpv4(acc, corr, p, vb, d, nb, c0, pc, pn, 3); break;
    case 2: gpv4(acc, corr, p, vb, d, nb, c0, pc, pn, 2); break;
    case 1: gpv4(acc, corr, p, vb, d, nb, c0, pc, pn, 1); break;
    default: break;
    }
}

/* Keys t0 .. t0+nb-1 of the dense baseline's fp16 cache as fp32 rows of kx. */
AI void gkeys(const dl__dkeys *k, int t0, int nb, float *kx, const int NV)
{
    int d = k->d;
    for (int j = 0; j < nb; j++) {
        const dl_fp16 *kd = k->kdense + (size_t)(t0 + j) * d;
        float *x = kx + (size_t)j * d;
        DL_UNROLL_FULL
        for (int c = 0; c < NV; c++)
            _mm512_store_ps(x + 16 * c, _mm512_cvtph_ps(
                                            _mm256_loadu_si256((const __m256i *)(kd + 16 * c))));
    }
}

/* The dense baseline's decode units (bench): every key exact from the fp16 cache. */
static void attend_group_dense(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, nv = d / 16, rows = u->rows, tend = u->hi[0], n4 = (rows + 3) & ~3;
    float kx[DL__GBK * DL__GDMAX] __attribute__((aligned(64)));
    float s[4][DL__GBK] __attribute__((aligned(64)));
    float mx[DL__GROUP_ROWS], sum[DL__GROUP_ROWS];
    const float *q[DL__GROUP_ROWS];
    float *acc[DL__GROUP_ROWS];
    /* padding rows repeat row 0 into spare accumulators (acc has rs >= 16 rows) */
    for (int r = 0; r < n4; r++) {
        q[r] = u->Q + (size_t)(r < rows ? r : 0) * d;
        acc[r] = u->acc + (size_t)r * d;
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(acc[r] + e, _mm512_setzero_ps());
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    uint64_t score_ns = 0;
    for (int t0 = 0; t0 <= tend; t0 += DL__GBK) {
        int nb = tend + 1 - t0 < DL__GBK ? tend + 1 - t0 : DL__GBK;
        uint64_t ts = dl__delta_timing ? dl__delta_now_ns() : 0;
        switch (nv) {
        case 1: gkeys(k, t0, nb, kx, 1); break;
        case 2: gkeys(k, t0, nb, kx, 2); break;
        case 3: gkeys(k, t0, nb, kx, 3); break;
        case 4: gkeys(k, t0, nb, kx, 4); break;
        default: gkeys(k, t0, nb, kx, nv); break;
        }
        const dl_fp16 *vb = k->h->v + (size_t)t0 * d;
        __mmask16 k0 = first_n(nb), k1 = first_n(nb - 16);
        for (int g = 0; g < n4; g += 4) {
            if (g && dl__delta_timing)
                ts = dl__delta_now_ns();
            switch (nv) {
            case 1: gscores4(q + g, kx, d, nb, s, 1); break;
            case 2: gscores4(q + g, kx, d, nb, s, 2); break;
            case 3: gscores4(q + g, kx, d, nb, s, 3); break;
            case 4: gscores4(q + g, kx, d, nb, s, 4); break;
            default: gscores4_any(q + g, kx, d, nb, s); break;
            }
            if (dl__delta_timing) {
                uint64_t te = dl__delta_now_ns();
                score_ns += te - ts;
                ts = te;
            }
            float corr[4];
            for (int i = 0; i < 4; i++) {
                int r = g + i;
                __m512 m0 = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), k0, s[i]);
                __m512 m1 = _mm512_mask_load_ps(_mm512_set1_ps(-INFINITY), k1, s[i] + 16);
                float bm = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
                float nm = bm > mx[r] ? bm : mx[r];
                corr[i] = expf(mx[r] - nm); /* 0 on the first block (mx = -inf) */
                __m512 vm = _mm512_set1_ps(nm);
                __m512 p0 = exp_neg(_mm512_sub_ps(m0, vm)), p1 = exp_neg(_mm512_sub_ps(m1, vm));
                _mm512_store_ps(s[i], p0);
                _mm512_store_ps(s[i] + 16, p1);
                sum[r] = sum[r] * corr[i] + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
                mx[r] = nm;
            }
            const float *pr[4] = {s[0], s[1], s[2], s[3]};
            gpv(acc + g, corr, pr, vb, d, nb, NULL, 0);
        }
    }
    if (dl__delta_timing)
        dl__delta_add_score_ns(score_ns);
    for (int r = 0; r < rows; r++) {
        __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(acc[r] + e, _mm512_mul_ps(_mm512_loadu_ps(acc[r] + e), inv));
    }
}

/* 16-lane inclusive prefix sum: four steps of x += x shifted up by 1, 2, 4, 8 lanes, the
 * shift as a rotation with the wrapped lanes zeroed by the mask (clang 14 turned the
 * valignd-with-a-zero-vector form into expand / shuffle sequences: 1.15x slower decode). */
#define DL__ROT_UP(x, keep, n)                                                           \
    _mm512_castsi512_ps(_mm512_maskz_alignr_epi32((keep), _mm512_castps_si512(x),          \
                                                  _mm512_castps_si512(x), 16 - (n)))

AI __m512 scan16(__m512 x)
{
    x = _mm512_add_ps(x, DL__ROT_UP(x, 0xFFFE, 1));
    x = _mm512_add_ps(x, DL__ROT_UP(x, 0xFFFC, 2));
    x = _mm512_add_ps(x, DL__ROT_UP(x, 0xFFF0, 4));
    x = _mm512_add_ps(x, DL__ROT_UP(x, 0xFF00, 8));
    return x;
}

/* 16 stored deltas from vp as fp32; 8-bit ones come out as their integers n, without
 * their positions' scales 2^x (delta_impl.h). */
AI __m512 dvals16(const uint8_t *vp, const int VB)
{
    if (VB == 2)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vp));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)vp)));
}

/* The scales 2^x of block b's 16 positions (8-bit deltas), one per lane. */
AI __m512 lane_scales(const dl__dhead *h, int b)
{
    __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(h->pexp + (size_t)b * DL__DBLK)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(127)), 23));
}

/* A[i] lane j = q[i] . Δk of position 16b + j, four rows, from a completed block's element
 * masks em and its values widened to fp32 (vp). */
static void eblock4f(const uint16_t *em, const float *vp, const float *const *q, int d,
                     __m512 *A)
{
    /* named accumulators and row pointers: with stores through A in the loop, gcc has to
     * assume they change q and reloads the row pointers per element */
    const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int e = 0; e < d; e += 2) {
        unsigned m0 = em[e], m1 = em[e + 1];
        __m512 x0 = _mm512_maskz_expand_ps((__mmask16)m0, _mm512_loadu_ps(vp));
        vp += __builtin_popcount(m0);
        __m512 x1 = _mm512_maskz_expand_ps((__mmask16)m1, _mm512_loadu_ps(vp));
        vp += __builtin_popcount(m1);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[e]), x0, a0);
        b0 = _mm512_fmadd_ps(_mm512_set1_ps(q0[e + 1]), x1, b0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[e]), x0, a1);
        b1 = _mm512_fmadd_ps(_mm512_set1_ps(q1[e + 1]), x1, b1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[e]), x0, a2);
        b2 = _mm512_fmadd_ps(_mm512_set1_ps(q2[e + 1]), x1, b2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[e]), x0, a3);
        b3 = _mm512_fmadd_ps(_mm512_set1_ps(q3[e + 1]), x1, b3);
    }
    A[0] = _mm512_add_ps(a0, b0);
    A[1] = _mm512_add_ps(a1, b1);
    A[2] = _mm512_add_ps(a2, b2);
    A[3] = _mm512_add_ps(a3, b3);
}

/* A[i] lane j = q[i] . Δk of position 16b + j for four rows; vbuf: scratch for the
 * block's values widened to fp32 (16 d + 16 floats). */
static void eblock4(const dl__dhead *h, int b, const float *const *q, int d, __m512 *A,
                    float *vbuf)
{
    /* the block's values widened in one pass; 8-bit ones as integers, each lane's sum
     * scaled by its position's 2^x at the end */
    const uint8_t *vp = h->val + (size_t)h->blk[b] * h->vb;
    int n = (int)(h->blk[b + 1] - h->blk[b]);
    if (h->vb == 2) {
        for (int i = 0; i < n; i += 16)
            _mm512_storeu_ps(vbuf + i, dvals16(vp + 2 * i, 2));
        eblock4f(h->emask + (size_t)b * d, vbuf, q, d, A);
        return;
    }
    for (int i = 0; i < n; i += 16)
        _mm512_storeu_ps(vbuf + i, dvals16(vp + i, 1));
    eblock4f(h->emask + (size_t)b * d, vbuf, q, d, A);
    __m512 sc = lane_scales(h, b);
    for (int i = 0; i < 4; i++)
        A[i] = _mm512_mul_ps(A[i], sc);
}

/* The same for the open block (row-major staging, npos positions): its deltas are laid
 * out as element columns colT[e][16] first. */
static void oblock4(const dl__dkeys *k, int b, int npos, const float *const *q, float *colT,
                    __m512 *A)
{
    int d = k->d;
    for (int e = 0; e < d; e++)
        _mm512_store_ps(colT + 16 * e, _mm512_setzero_ps());
    dl__drows cur;
    dl__drows_init(&cur);
    for (int j = 0; j < npos; j++) {
        const uint8_t *m;
        const dl_fp16 *v = dl__krow(&cur, k, b * DL__DBLK + j, &m);
        for (int e = 0; e < d; e++)
            if (m[e >> 3] >> (e & 7) & 1)
                colT[16 * e + j] = dl_fp16_to_f32(*v++);
    }
    for (int i = 0; i < 4; i++) {
        const float *qi = q[i];
        __m512 a = _mm512_setzero_ps();
        for (int e = 0; e < d; e++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(qi[e]), _mm512_load_ps(colT + 16 * e), a);
        A[i] = a;
    }
}

/* ---- the quad layout (delta_impl.h): integer dot products, 4 elements per lane */

/* q as 16-bit integers for the quad kernel: q ~ sq * n, n = round(q / sq) in
 * [-32767, 32767] with sq = max |q_e| / 32767 (an error of at most sq / 2 per element,
 * below fp16's rounding of a key), stored as u = n + 32768 = 256 H + L with H and L
 * unsigned bytes, four elements to a 32-bit word: qh / ql [d / 4]. */
static void quant_q(const float *q, int d, uint32_t *qh, uint32_t *ql, float *sq)
{
    __m512 mx = _mm512_setzero_ps();
    for (int e = 0; e < d; e += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(q + e)));
    float m = _mm512_reduce_max_ps(mx);
    *sq = m / 32767.0f;
    __m512 inv = _mm512_set1_ps(m > 0 ? 32767.0f / m : 0.0f);
    for (int e = 0; e < d; e += 16) {
        __m512i n = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(q + e), inv));
        n = _mm512_min_epi32(_mm512_max_epi32(n, _mm512_set1_epi32(-32767)), _mm512_set1_epi32(32767));
        __m512i u = _mm512_add_epi32(n, _mm512_set1_epi32(32768));
        _mm_storeu_si128((__m128i *)(qh + e / 4), _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 8)));
        _mm_storeu_si128((__m128i *)(ql + e / 4),
                         _mm512_cvtepi32_epi8(_mm512_and_si512(u, _mm512_set1_epi32(255))));
    }
}

/* One row's lanes of qblock4: (256 ΣnH + ΣnL - 32768 Σn) sq 2^x. */
AI __m512 qrow(__m512i H, __m512i L, __m512i s15, __m512 sc, float sq)
{
    __m512i t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(H, 8), L), s15);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sc, _mm512_set1_ps(sq)));
}

/* A[i] lane j = q[i] . Δk of position 16b + j for four rows, from a quad-layout block:
 * per quad one vpexpandb (16 positions x 4 elements) and per row two vpdpbusd (the high
 * and low bytes of u), plus one for Σ n, shared: Σ n q = 256 Σ n H + Σ n L - 32768 Σ n,
 * exact in int32 (|Σ| < 127 * 32767 * 256 < 2^31; the parts wrap consistently). The
 * lanes are then scaled by sq_i 2^x_j. */
__attribute__((target("avx512vbmi2"))) static void qblock4(const dl__dhead *h, int b, int d,
                                                           const uint32_t (*qh)[DL__GDMAX / 4],
                                                           const uint32_t (*ql)[DL__GDMAX / 4],
                                                           const float *sq, __m512 *A)
{
    const uint64_t *qm = dl__qmask(h, d, b);
    const uint8_t *vp = h->val + h->blk[b];
    const __m512i ones = _mm512_set1_epi8(1);
    /* named accumulators: with arrays gcc 12 stored every one to the stack per quad */
    __m512i S = _mm512_setzero_si512();
    __m512i H0 = S, H1 = S, H2 = S, H3 = S, L0 = S, L1 = S, L2 = S, L3 = S;
    for (int q = 0; q < d / 4; q++) {
        uint64_t m = qm[q];
        __m512i v = _mm512_maskz_expandloadu_epi8(m, vp);
        vp += __builtin_popcountll(m);
        S = _mm512_dpbusd_epi32(S, ones, v);
        H0 = _mm512_dpbusd_epi32(H0, _mm512_set1_epi32((int)qh[0][q]), v);
        L0 = _mm512_dpbusd_epi32(L0, _mm512_set1_epi32((int)ql[0][q]), v);
        H1 = _mm512_dpbusd_epi32(H1, _mm512_set1_epi32((int)qh[1][q]), v);
        L1 = _mm512_dpbusd_epi32(L1, _mm512_set1_epi32((int)ql[1][q]), v);
        H2 = _mm512_dpbusd_epi32(H2, _mm512_set1_epi32((int)qh[2][q]), v);
        L2 = _mm512_dpbusd_epi32(L2, _mm512_set1_epi32((int)ql[2][q]), v);
        H3 = _mm512_dpbusd_epi32(H3, _mm512_set1_epi32((int)qh[3][q]), v);
        L3 = _mm512_dpbusd_epi32(L3, _mm512_set1_epi32((int)ql[3][q]), v);
    }
    __m512 sc = lane_scales(h, b);
    __m512i s15 = _mm512_slli_epi32(S, 15);
    A[0] = qrow(H0, L0, s15, sc, sq[0]);
    A[1] = qrow(H1, L1, s15, sc, sq[1]);
    A[2] = qrow(H2, L2, s15, sc, sq[2]);
    A[3] = qrow(H3, L3, s15, sc, sq[3]);
}

/* AVX512_VBMI2 (vpexpandb): CPUID leaf 7, ECX bit 6. */
static int has_quad_avx512(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (c >> 6) & 1;
}

#define DL__GCH 512 /* keys per chunk of the delta decode kernel */

/* Delta decode units (see above), in chunks of DL__GCH keys so that the compute-heavy
 * score phase of one chunk and the memory-heavy P.V of the next overlap: per chunk, the
 * delta scores of its blocks (16 keys per vector, prefix scan plus the carry), the exact
 * scores of its window / sink keys, then an online softmax step and P.V from its V rows
 * (prefetched towards L2 while the scores are computed). */
static void attend_group_avx512(const dl__dunit *u, int dense)
{
    if (dense) {
        attend_group_dense(u);
        return;
    }
    const dl__dkeys *k = u->k;
    const dl__dhead *h = k->h;
    int d = k->d, nv = d / 16, rows = u->rows, n4 = (rows + 3) & ~3;
    int T = u->hi[0] + 1;
    int lo = u->lo[0]; /* keys sink <= t < lo from k̂; lo == 0: all exact */
    int sink = k->sink < T ? k->sink : T;
    float colT[DL__GDMAX * 16] __attribute__((aligned(64)));
    float sc[DL__GROUP_ROWS * DL__GCH] __attribute__((aligned(64)));
    const float *q[DL__GROUP_ROWS], *p[DL__GROUP_ROWS];
    float *acc[DL__GROUP_ROWS];
    float mx[DL__GROUP_ROWS], sum[DL__GROUP_ROWS], corr[DL__GROUP_ROWS];
    __m512 carry[DL__GROUP_ROWS];
    uint32_t qh[DL__GROUP_ROWS][DL__GDMAX / 4], ql[DL__GROUP_ROWS][DL__GDMAX / 4];
    float sq[DL__GROUP_ROWS];
    /* padding rows repeat row 0 into spare rows (acc has rs >= 16 rows) */
    for (int r = 0; r < n4; r++) {
        q[r] = u->Q + (size_t)(r < rows ? r : 0) * d;
        if (h->quad)
            quant_q(q[r], d, qh[r], ql[r], &sq[r]);
        acc[r] = u->acc + (size_t)r * d;
        p[r] = sc + (size_t)r * DL__GCH;
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(acc[r] + e, _mm512_setzero_ps());
        mx[r] = -INFINITY;
        sum[r] = 0;
        carry[r] = _mm512_setzero_ps();
    }
    uint64_t score_ns = 0;
    for (int c0 = 0; c0 < T; c0 += DL__GCH) {
        int c1 = T - c0 < DL__GCH ? T : c0 + DL__GCH, n = c1 - c0;
        uint64_t ts = dl__delta_timing ? dl__delta_now_ns() : 0;
        /* delta scores of the chunk's blocks that hold keys < lo */
        int bend = lo > c0 ? ((lo < c1 ? lo : c1) + DL__DBLK - 1) / DL__DBLK : 0;
        for (int b = c0 / DL__DBLK; b < bend; b++) {
            if (c0 == 0) { /* V of these keys, for P.V (later chunks': during the P.V before) */
                const char *vb = (const char *)(h->v + (size_t)b * DL__DBLK * d);
                for (int l = 0; l < DL__DBLK * d * 2; l += 64)
                    _mm_prefetch(vb + l, _MM_HINT_T1);
            }
            if (b + 3 < k->nfull) { /* the stream three blocks ahead: at 4096 keys (K + V
                                     * past L2) the score phase waited on it, 1.6x longer.
                                     * Written out here, as in delta_avx2.c: moved into a
                                     * shared inline helper, gcc 12 dropped these loops */
                const char *ea = (const char *)(h->emask + (size_t)(b + 3) * d);
                const char *va = (const char *)(h->val + (size_t)h->blk[b + 3] * h->vb);
                const char *vz = (const char *)(h->val + (size_t)h->blk[b + 4] * h->vb);
                for (int l = 0; l < d * 2; l += 64)
                    _mm_prefetch(ea + l, _MM_HINT_T0);
                for (; va < vz; va += 64)
                    _mm_prefetch(va, _MM_HINT_T0);
            }
            for (int g = 0; g < n4; g += 4) {
                __m512 A[4];
                if (b < k->nfull && h->quad)
                    qblock4(h, b, d, qh + g, ql + g, sq + g, A);
                else if (b < k->nfull)
                    eblock4(h, b, q + g, d, A, colT);
                else
                    oblock4(k, b, T - b * DL__DBLK < DL__DBLK ? T - b * DL__DBLK : DL__DBLK,
                            q + g, colT, A);
                for (int i = 0; i < 4; i++) {
                    __m512 x = _mm512_add_ps(scan16(A[i]), carry[g + i]);
                    _mm512_store_ps(sc + (size_t)(g + i) * DL__GCH + (b * DL__DBLK - c0), x);
                    carry[g + i] = _mm512_permutexvar_ps(_mm512_set1_epi32(15), x);
                }
            }
        }
        /* exact scores: below sink, and from lo (everything when lo == 0) */
        int ranges[2][2] = { { 0, lo > 0 ? sink : T }, { lo > 0 ? lo : T, T } };
        for (int i = 0; i < 2; i++) {
            int a0 = ranges[i][0] > c0 ? ranges[i][0] : c0;
            int a1 = ranges[i][1] < c1 ? ranges[i][1] : c1;
            for (int t = a0; t < a1; t++) {
                __m512 x[DL__GDMAX / 16];
                load_exact(k, t, x);
                for (int r = 0; r < n4; r++)
                    sc[(size_t)r * DL__GCH + (t - c0)] = dot_rows(q[r], x, nv);
            }
        }
        if (dl__delta_timing)
            score_ns += dl__delta_now_ns() - ts;
        /* online softmax step per row */
        for (int r = 0; r < n4; r++) {
            float *x = sc + (size_t)r * DL__GCH;
            __m512 m = _mm512_set1_ps(-INFINITY);
            for (int t = 0; t < n; t += 16)
                m = _mm512_max_ps(m, _mm512_mask_load_ps(m, first_n(n - t), x + t));
            float bm = _mm512_reduce_max_ps(m), nm = bm > mx[r] ? bm : mx[r];
            corr[r] = expf(mx[r] - nm); /* 0 on the first chunk (mx = -inf) */
            __m512 vm = _mm512_set1_ps(nm), sm = _mm512_setzero_ps();
            for (int t = 0; t < n; t += 16) {
                __mmask16 lm = first_n(n - t);
                __m512 e = _mm512_maskz_mov_ps(
                    lm, exp_neg(_mm512_sub_ps(_mm512_maskz_load_ps(lm, x + t), vm)));
                _mm512_store_ps(x + t, e);
                sm = _mm512_add_ps(sm, e);
            }
            sum[r] = sum[r] * corr[r] + _mm512_reduce_add_ps(sm);
            mx[r] = nm;
        }
        /* P.V of the chunk, four rows at a time; the first group's pass prefetches the
         * next chunk's V, which then arrives during that chunk's scores */
        const dl_fp16 *vc = h->v + (size_t)c0 * d;
        int pn = T - c1 < DL__GCH ? T - c1 : DL__GCH;
        for (int g = 0; g < n4; g += 4)
            gpv(acc + g, corr + g, p + g, vc, d, n, vc + (size_t)n * d, g ? 0 : pn);
    }
    if (dl__delta_timing)
        dl__delta_add_score_ns(score_ns);
    for (int r = 0; r < rows; r++) {
        __m512 vi = _mm512_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(acc[r] + e, _mm512_mul_ps(_mm512_loadu_ps(acc[r] + e), vi));
    }
}

/* ---------------------------------------------------------------- fused prefill */

/* Prefill units (>= 16 rows, rs <= DL__WROWS, d <= DL__GDMAX), fused like the decode
 * kernel above: keys in blocks of DL__GBK; each block's scores exist only as a
 * DL__GBK x rs tile (8 KB, in L1) instead of the whole unit's score matrix (~1 MB at
 * 4096 keys, which spilled L2 and was re-read twice by softmax and P.V), followed by an
 * online softmax vectorised over rows and P.V from the block's V widened once to fp32.
 * The delta sweep is the one of scores_wide — for each stored (e, v) of Δk_t,
 * R[rows] += v * Qt[e][rows] — but the block's packed rows are decoded first into
 * (offset of Qt row e, fp32 value) pairs, with vcompressps / vpcompressd under the mask
 * chunks, so the inner loop is one broadcast and NV multiply-adds from L1 per value:
 * no bit scanning, and no scalar reload of a just-stored vector (store forwarding). */

#define DL__WROWS 128/* largest unit row stride the fused prefill kernel takes */

/* A[x] and B[x] (x < NV) += val[i] * q[off[i] + 16 x] for the stored values i in [i0, i1),
 * alternating between the two sets so that a value's FMAs do not wait on the previous
 * value's. */
AI void addvals(const float *q, const int32_t *off, const float *val, int i0, int i1,
                __m512 *A, __m512 *B, const int NV)
{
    int i = i0;
    for (; i + 2 <= i1; i += 2) {
        __m512 b0 = _mm512_set1_ps(val[i]), b1 = _mm512_set1_ps(val[i + 1]);
        const float *q0 = q + off[i], *q1 = q + off[i + 1];
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++) {
            A[x] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(q0 + 16 * x), A[x]);
            B[x] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(q1 + 16 * x), B[x]);
        }
    }
    if (i < i1) {
        __m512 b0 = _mm512_set1_ps(val[i]);
        const float *q0 = q + off[i];
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++)
            A[x] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(q0 + 16 * x), A[x]);
    }
}

/* R[16 j0 .. 16 (j0 + NV)) += Σ_i val[i] * Qt[off[i] + .], i in [i0, i1). */
AI void wsweep(const float *Qt, const int32_t *off, const float *val, int i0, int i1,
                   float *R, int j0, const int NV)
{
    __m512 A[4], B[4];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = B[x] = _mm512_setzero_ps();
    addvals(Qt + 16 * j0, off, val, i0, i1, A, B, NV);
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm512_storeu_ps(R + 16 * (j0 + x), _mm512_add_ps(_mm512_loadu_ps(R + 16 * (j0 + x)),
                                                          _mm512_add_ps(A[x], B[x])));
}

/* Keys j0 .. j1-1 of a block whose scores are delta for every row (all rows' windows
 * start after them): the running sums R of all NV row vectors stay in registers across
 * the keys, each key's stored values are added in (one broadcast and NV multiply-adds
 * per value) and R is written out as the key's score row. */
AI void wrun(const float *Qt, const int32_t *off, const float *val, const int *kst, int j0,
             int j1, float *R, float *sb, int rs, const int NV)
{
    __m512 A[8], B[8]; /* A + B is each key's score row and the running sum carried on */
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++) {
        A[x] = _mm512_loadu_ps(R + 16 * x);
        B[x] = _mm512_setzero_ps();
    }
    for (int j = j0; j < j1; j++) {
        addvals(Qt, off, val, kst[j], kst[j + 1], A, B, NV);
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++)
            _mm512_store_ps(sb + (size_t)j * rs + 16 * x, _mm512_add_ps(A[x], B[x]));
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm512_storeu_ps(R + 16 * x, _mm512_add_ps(A[x], B[x]));
}

/* acc[r0 + i] = acc[r0 + i] * corr[r0 + i] + Σ_j p[j][r0 + i] V[j] for four rows, NVD
 * 16-lane chunks from c0; V is the block widened to fp32 (row stride d). */
AI void wpv4(float *acc, const float *corr, const float *p, int rs, const float *vf,
                 int d, int nb, int c0, const int NVD)
{
    __m512 a[4][4];
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++) {
        __m512 vc = _mm512_set1_ps(corr[i]);
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            a[i][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)i * d + c0 + 16 * c), vc);
    }
    for (int j = 0; j < nb; j++) {
        const float *vt = vf + (size_t)j * d + c0, *pj = p + (size_t)j * rs;
        DL_UNROLL_FULL
        for (int i = 0; i < 4; i++) {
            __m512 pr = _mm512_set1_ps(pj[i]);
            /* V straight from L1 in each FMA: with the chunks loaded into an array first,
             * clang 14 stored them to the stack and reloaded them per row */
            DL_UNROLL_FULL
            for (int c = 0; c < NVD; c++)
                a[i][c] = _mm512_fmadd_ps(pr, _mm512_load_ps(vt + 16 * c), a[i][c]);
        }
    }
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++)
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            _mm512_storeu_ps(acc + (size_t)i * d + c0 + 16 * c, a[i][c]);
}

/* 16 x 16 transpose in registers: r[i] row i in, r[j] column j out. */
AI void transpose16(__m512 *r)
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* then r[4a + i], 128-bit lane k = rows 4a .. 4a+3 of column 4k + i */
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        __m512 s0 = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
        __m512 s1 = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
        __m512 s2 = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
        __m512 s3 = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
        t[i] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        t[4 + i] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        t[8 + i] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
        t[12 + i] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* Completed block b as 16 fp32 rows tile[j][d] (zeros where nothing is stored). */
AI void block_tile_v(const dl__dhead *h, int d, int b, float *tile, const int VB)
{
    const uint16_t *em = h->emask + (size_t)b * d;
    const uint8_t *vp = h->val + (size_t)h->blk[b] * VB;
    for (int c = 0; c < d; c += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
            unsigned m = em[c + i];
            r[i] = _mm512_maskz_expand_ps((__mmask16)m, dvals16(vp, VB));
            vp += VB * __builtin_popcount(m);
        }
        transpose16(r);
        for (int j = 0; j < 16; j++) /* row j is position 16b + j */
            _mm512_store_ps(tile + (size_t)j * d + c,
                            VB == 1 ? _mm512_mul_ps(r[j], _mm512_set1_ps(dl__pow2f(
                                                              h->pexp[b * DL__DBLK + j])))
                                    : r[j]);
    }
}

static void block_tile(const dl__dhead *h, int d, int b, float *tile)
{
    if (h->quad) { /* the prefill decodes each block once per call: a scalar walk */
        const uint64_t *qm = dl__qmask(h, d, b);
        const int8_t *vp = (const int8_t *)h->val + h->blk[b];
        for (int i = 0; i < DL__DBLK * d; i += 16)
            _mm512_store_ps(tile + i, _mm512_setzero_ps());
        for (int q = 0; q < d / 4; q++)
            for (uint64_t m = qm[q]; m; m &= m - 1) {
                int bit = __builtin_ctzll(m), j = bit >> 2;
                tile[(size_t)j * d + 4 * q + (bit & 3)] = dl__i8_value(h, b * DL__DBLK + j, *vp++);
            }
    } else if (h->vb == 1)
        block_tile_v(h, d, b, tile, 1);
    else
        block_tile_v(h, d, b, tile, 2);
}

/* One key's row of a decoded block (tile row, fp32, zeros where nothing is stored) as
 * (offset, value) pairs at off / val; returns how many. Writes up to 16 past them. */
AI int row_pairs(const float *row, int d, int rs, __m512i iota, int32_t *off, float *val)
{
    int pos = 0;
    for (int c = 0; c < d; c += 16) {
        __m512 x = _mm512_load_ps(row + c);
        __mmask16 bits = _mm512_cmpneq_ps_mask(x, _mm512_setzero_ps());
        if (!bits)
            continue;
        _mm512_storeu_ps(val + pos, _mm512_maskz_compress_ps(bits, x));
        _mm512_storeu_si512(off + pos, _mm512_maskz_compress_epi32(
            bits, _mm512_add_epi32(iota, _mm512_set1_epi32(c * rs))));
        pos += __builtin_popcount(bits);
    }
    return pos;
}

static __m512i row_iota(int rs)
{
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(rs));
}

static void predecode_avx512(const dl__dhead *h, int d, int rs, int nblk, int32_t base,
                             int32_t *kst, int32_t *off, float *val)
{
    float tile[DL__DBLK * DL__GDMAX] __attribute__((aligned(64)));
    __m512i iota = row_iota(rs);
    int32_t pos = base;
    for (int b = 0; b < nblk; b++) {
        block_tile(h, d, b, tile);
        for (int j = 0; j < DL__DBLK; j++) {
            kst[b * DL__DBLK + j] = pos;
            pos += row_pairs(tile + (size_t)j * d, d, rs, iota, off + pos, val + pos);
        }
    }
    kst[nblk * DL__DBLK] = pos;
}

static void attend_wide_avx512(const dl__dunit *u, int dense)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int nvr = (rows + 15) / 16, n4 = (rows + 3) & ~3;
    float sb[DL__GBK * DL__WROWS] __attribute__((aligned(64)));   /* scores, then p */
    float vf[DL__GBK * DL__GDMAX] __attribute__((aligned(64)));   /* V block, fp32 */
    float val[DL__GBK * DL__GDMAX + 16] __attribute__((aligned(64)));
    int32_t off[DL__GBK * DL__GDMAX + 16] __attribute__((aligned(64)));
    int kst[DL__GBK + 1], rfa[DL__GBK], rca[DL__GBK];
    float mx[DL__WROWS] __attribute__((aligned(64)));
    float sum[DL__WROWS] __attribute__((aligned(64)));
    float corr[DL__WROWS] __attribute__((aligned(64)));
    float kbuf[DL__GDMAX] __attribute__((aligned(64)));
    float tile[DL__DBLK * DL__GDMAX] __attribute__((aligned(64)));
    int tile_b = -1;
    dl__drows cur;
    dl__drows_init(&cur);
    int rc = 0, rf = dense ? rows : 0;
    for (int r = 0; r < rs; r++) {
        u->r[r] = 0;
        mx[r] = -INFINITY;
        sum[r] = 0;
    }
    for (int r = 0; r < n4; r++)
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(u->acc + (size_t)r * d + e, _mm512_setzero_ps());
    const __m512i iota = row_iota(rs);
    uint64_t score_ns = 0;
    for (int t0 = 0; t0 <= tend; t0 += DL__GBK) {
        int nb = tend + 1 - t0 < DL__GBK ? tend + 1 - t0 : DL__GBK;
        uint64_t ts = dl__delta_timing ? dl__delta_now_ns() : 0;
        /* row ranges per key, and the block's packed deltas: decoded once for the call
         * where the block lies in completed blocks, else here */
        const int32_t *offp = off;
        const float *valp = val;
        int pre = !dense && u->pkst && t0 + nb <= k->nfull * DL__DBLK;
        if (pre) {
            offp = u->poff + u->pkst[t0];
            valp = u->pval + u->pkst[t0];
        }
        int pos = 0;
        for (int j = 0; j < nb; j++) {
            int t = t0 + j;
            if (!dense)
                advance(u, t, &rc, &rf);
            else
                while (u->hi[rc] < t)
                    rc++;
            rfa[j] = rf;
            rca[j] = rc;
            if (pre) {
                kst[j] = u->pkst[t] - u->pkst[t0];
                continue;
            }
            kst[j] = pos;
            if (rf < rows && t / DL__DBLK < k->nfull) { /* element-major block */
                if (tile_b != t / DL__DBLK) {
                    tile_b = t / DL__DBLK;
                    block_tile(k->h, d, tile_b, tile);
                }
                pos += row_pairs(tile + (size_t)(t % DL__DBLK) * d, d, rs, iota, off + pos, val + pos);
            } else if (rf < rows) { /* the open block, rows as stored */
                const uint8_t *m;
                const dl_fp16 *vt = dl__krow(&cur, k, t, &m);
                for (int c = 0; c < d; c += 16) {
                    unsigned bits = (unsigned)m[c >> 3] | (unsigned)m[(c >> 3) + 1] << 8;
                    if (!bits)
                        continue;
                    __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)vt));
                    _mm512_storeu_ps(val + pos, x);
                    _mm512_storeu_si512(off + pos, _mm512_maskz_compress_epi32(
                        (__mmask16)bits, _mm512_add_epi32(iota, _mm512_set1_epi32(c * rs))));
                    int cnt = __builtin_popcount(bits);
                    vt += cnt;
                    pos += cnt;
                }
            }
        }
        kst[nb] = pre ? u->pkst[t0 + nb] - u->pkst[t0] : pos;
        /* scores of the block: first the keys that are delta for every row (the bulk of a
         * long prefill), with the running sums in registers */
        int jd = 0;
        while (jd < nb && rfa[jd] == 0 && t0 + jd >= k->sink)
            jd++;
        switch (jd ? nvr : 0) {
        case 8: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 8); break;
        case 7: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 7); break;
        case 6: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 6); break;
        case 5: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 5); break;
        case 4: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 4); break;
        case 3: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 3); break;
        case 2: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 2); break;
        case 1: wrun(u->Qt, offp, valp, kst, 0, jd, u->r, sb, rs, 1); break;
        default: break;
        }
        for (int j = jd; j < nb; j++) {
            int t = t0 + j, jrf = rfa[j], jrc = rca[j];
            float *s = sb + (size_t)j * rs;
            if (jrf < rows) {
                int j0 = jrf / 16;
                for (; j0 + 4 <= nvr; j0 += 4)
                    wsweep(u->Qt, offp, valp, kst[j], kst[j + 1], u->r, j0, 4);
                switch (nvr - j0) {
                case 3: wsweep(u->Qt, offp, valp, kst[j], kst[j + 1], u->r, j0, 3); break;
                case 2: wsweep(u->Qt, offp, valp, kst[j], kst[j + 1], u->r, j0, 2); break;
                case 1: wsweep(u->Qt, offp, valp, kst[j], kst[j + 1], u->r, j0, 1); break;
                default: break;
                }
            }
            int ex_end = t < k->sink ? rows : jrf;
            if (ex_end > jrc) {
                const float *key = exact_key_f32(k, t, dense, kbuf);
                exact_rows(u->Qt, rs, d, key, s, jrc, ex_end);
            }
            if (t >= k->sink && jrf < rows)
                copy_rows(s, u->r, jrf, rows);
            if (jrc > 0)
                fill_rows(s, -INFINITY, 0, jrc);
        }
        if (dl__delta_timing)
            score_ns += dl__delta_now_ns() - ts;
        /* online softmax, vectorised over rows; p replaces the scores (0 outside rows) */
        for (int jv = 0; jv < nvr; jv++) {
            __mmask16 lm = lanes(jv, 0, rows);
            __m512 m = _mm512_set1_ps(-INFINITY);
            for (int j = 0; j < nb; j++)
                m = _mm512_mask_max_ps(m, lm, m, _mm512_load_ps(sb + (size_t)j * rs + 16 * jv));
            __m512 om = _mm512_load_ps(mx + 16 * jv);
            __m512 nm = _mm512_max_ps(m, om);
            __m512 cr = exp_neg(_mm512_sub_ps(om, nm)); /* 0 while om = -inf */
            __m512 sm = _mm512_setzero_ps();
            for (int j = 0; j < nb; j++) {
                float *sj = sb + (size_t)j * rs + 16 * jv;
                __m512 p = _mm512_maskz_mov_ps(lm, exp_neg(_mm512_sub_ps(_mm512_load_ps(sj), nm)));
                _mm512_store_ps(sj, p);
                sm = _mm512_add_ps(sm, p);
            }
            _mm512_store_ps(mx + 16 * jv, nm);
            _mm512_store_ps(corr + 16 * jv, cr);
            _mm512_store_ps(sum + 16 * jv, _mm512_fmadd_ps(_mm512_load_ps(sum + 16 * jv), cr, sm));
        }
        /* P.V: V block widened once, then four rows at a time */
        const dl_fp16 *vb = k->h->v + (size_t)t0 * d;
        for (int j = 0; j < nb; j++)
            for (int e = 0; e < d; e += 16)
                _mm512_store_ps(vf + (size_t)j * d + e, _mm512_cvtph_ps(_mm256_loadu_si256(
                                                            (const __m256i *)(vb + (size_t)j * d + e))));
        for (int r0 = 0; r0 < n4; r0 += 4) {
            int last = r0 + 3 < rows ? r0 + 3 : rows - 1;
            int gnb = u->hi[last] - t0 + 1; /* keys past the group's last query add 0 */
            if (gnb <= 0)
                continue; /* corr is 1 and p 0 for these rows */
            gnb = gnb < nb ? gnb : nb;
            float *acc = u->acc + (size_t)r0 * d;
            int c0 = 0;
            for (; c0 + 64 <= d; c0 += 64)
                wpv4(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 4);
            switch ((d - c0) / 16) {
            case 3: wpv4(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 3); break;
            case 2: wpv4(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 2); break;
            case 1: wpv4(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 1); break;
            default: break;
            }
        }
    }
    if (dl__delta_timing)
        dl__delta_add_score_ns(score_ns);
    for (int r = 0; r < rows; r++) {
        __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < d; e += 16)
            _mm512_storeu_ps(u->acc + (size_t)r * d + e,
                             _mm512_mul_ps(_mm512_loadu_ps(u->acc + (size_t)r * d + e), inv));
    }
}


/* ---------------------------------------------------------------- theta bisection */

/* One 16-element step of the 8-bit encoder's first pass (delta.c's encode_pos8): the
 * elements with |k - r| * w > theta are stored; returns them, and in *dv their lagged
 * deltas δ - copysign(pw, δ), not yet rounded. */
AI __mmask16 enc_keep16(__m512 k, __m512 r, __m512 w, __m512 th, __m512 pw, __m512 *dv)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    __m512 delta = _mm512_sub_ps(k, r);
    __m512i db = _mm512_castps_si512(delta);
    __m512 ad = _mm512_castsi512_ps(_mm512_and_si512(db, absm));
    __m512 sp = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(pw),
                                                    _mm512_andnot_si512(absm, db)));
    *dv = _mm512_sub_ps(delta, sp);
    return _mm512_cmp_ps_mask(_mm512_mul_ps(ad, w), th, _CMP_GT_OQ);
}

/* dl__i8_round, 16 lanes (is = 2^-x, s = 2^x); the clamps keep a NaN as the scalar
 * ternaries do. */
AI __m512 i8_round16(__m512 v, __m512 is, __m512 s)
{
    __m512 y = _mm512_mul_ps(v, is);
    y = _mm512_min_ps(_mm512_set1_ps(127.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), y));
    return _mm512_mul_ps(_mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), s);
}

/* One position through the 8-bit encoder: pass 1 keeps each chunk's stored lanes and
 * lagged deltas and finds the largest |value|, pass 2 rounds at the position's exponent
 * and advances r. With val (not NULL) the stored values (fp16) go to val and their bits
 * to mask. Returns the number stored; *xo = the exponent. */
AI int enc_pos16(const float *k, int d, float *r, const float *w, __m512 th, const float *pw,
                 uint8_t *mask, dl_fp16 *val, int8_t *xo)
{
    __m512 dv[DL__DHMAX / 16], mx = _mm512_setzero_ps();
    __mmask16 keep[DL__DHMAX / 16];
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    for (int c = 0; c < d / 16; c++) {
        keep[c] = enc_keep16(_mm512_loadu_ps(k + 16 * c), _mm512_loadu_ps(r + 16 * c),
                             _mm512_loadu_ps(w + 16 * c), th, _mm512_loadu_ps(pw + 16 * c),
                             &dv[c]);
        __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(dv[c]), absm));
        mx = _mm512_max_ps(_mm512_maskz_mov_ps(keep[c], a), mx); /* a NaN is not taken */
    }
    int x = dl__i8_exp(_mm512_reduce_max_ps(mx)), n = 0;
    __m512 s = _mm512_set1_ps(dl__pow2f(x)), is = _mm512_set1_ps(dl__pow2f(-x));
    for (int c = 0; c < d / 16; c++) {
        __m512 q = i8_round16(dv[c], is, s), rr = _mm512_loadu_ps(r + 16 * c);
        _mm512_storeu_ps(r + 16 * c, _mm512_mask_add_ps(rr, keep[c], rr, q));
        int cnt = __builtin_popcount(keep[c]);
        if (val) { /* n * 2^x is exact in fp16; packed to the front under the mask */
            __m512i h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(q, _MM_FROUND_TO_NEAREST_INT));
            _mm256_mask_storeu_epi16(val + n, (__mmask16)((1u << cnt) - 1),
                                     _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(keep[c], h)));
            mask[2 * c] = (uint8_t)keep[c];
            mask[2 * c + 1] = (uint8_t)(keep[c] >> 8);
        }
        n += cnt;
    }
    *xo = (int8_t)x;
    return n;
}

static uint64_t sim_zeros_avx512(const float *k, size_t ks, int n, int d, float *r,
                                 const float *w, float theta, const float *pv)
{
    __m512 th = _mm512_set1_ps(theta);
    uint64_t kept = 0;
    int8_t x;
    for (int a = 0; a < n; a++)
        kept += (uint64_t)enc_pos16(k + (size_t)a * ks, d, r, w, th, pv, NULL, NULL, &x);
    return (uint64_t)n * (uint64_t)d - kept;
}

static int encode8_avx512(const float *k, int d, float *r, const float *w, float theta,
                          const float *pw, uint8_t *mask, dl_fp16 *val, int8_t *xo)
{
    return enc_pos16(k, d, r, w, _mm512_set1_ps(theta), pw, mask, val, xo);
}

const dl__dops dl__dops_avx512 = {
    .scores = scores_avx512,
    .scores_dense = scores_dense_avx512,
    .softmax_pv = softmax_pv_avx512,
    .attend_group = attend_group_avx512,
    .attend_wide = attend_wide_avx512,
    .wide_max_rs = DL__WROWS,
    .wide_max_d = DL__GDMAX,
    .sim_zeros = sim_zeros_avx512,
    .encode8 = encode8_avx512,
    .predecode = predecode_avx512,
    .has_quad = has_quad_avx512,
};
