/* delta_avx2.c — DeltaLLM attention kernels for AVX2 + FMA + F16C machines (head dim a
 * multiple of 8). Same sweep as delta_scalar.c (read its comment first); the loops over
 * rows — the running sums R += v * Q[:, e], the exact scores and the score copies — run 8
 * rows per instruction over the transposed queries, and P.V runs 8 channels at a time.
 * Row ranges start anywhere, so each loop does whole vectors and finishes the tail in
 * scalar code; nothing is written outside the range (the ranges of one key are disjoint
 * and written in order).
 */
#include <immintrin.h>
#include <math.h>

#include "delta_impl.h"

static inline void ranges_at(const dl__dunit *u, int t, int *rc, int *rf)
{
    while (*rf < u->rows && u->lo[*rf] <= t)
        (*rf)++;
    while (u->hi[*rc] < t)
        (*rc)++;
}

/* y[r] += a * x[r] for r in [r0, r1) */
static inline void axpy(float *y, const float *x, float a, int r0, int r1)
{
    __m256 va = _mm256_set1_ps(a);
    int r = r0;
    for (; r + 8 <= r1; r += 8)
        _mm256_storeu_ps(y + r, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + r),
                                                _mm256_loadu_ps(y + r)));
    for (; r < r1; r++)
        y[r] += a * x[r];
}

/* s[r] = sum_e key[e] * Qt[e][r] for r in [r0, r1) */
static inline void dot_rows(float *s, const float *key, const float *Qt, int rs, int d,
                            int r0, int r1)
{
    int r = r0;
    for (; r + 8 <= r1; r += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int e = 0; e < d; e++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(key[e]),
                                  _mm256_loadu_ps(Qt + (size_t)e * rs + r), acc);
        _mm256_storeu_ps(s + r, acc);
    }
    for (; r < r1; r++) {
        float acc = 0;
        for (int e = 0; e < d; e++)
            acc += key[e] * Qt[(size_t)e * rs + r];
        s[r] = acc;
    }
}

static inline void fill(float *s, const float *src, float val, int r0, int r1)
{
    int r = r0;
    if (src) {
        for (; r + 8 <= r1; r += 8)
            _mm256_storeu_ps(s + r, _mm256_loadu_ps(src + r));
        for (; r < r1; r++)
            s[r] = src[r];
    } else {
        __m256 v = _mm256_set1_ps(val);
        for (; r + 8 <= r1; r += 8)
            _mm256_storeu_ps(s + r, v);
        for (; r < r1; r++)
            s[r] = val;
    }
}

static void scores_avx2(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0, rf = 0;
    dl__drows cur;
    dl__drows_init(&cur);
    for (int r = 0; r < rs; r++)
        u->r[r] = 0;
    for (int t = 0; t <= tend; t++) {
        ranges_at(u, t, &rc, &rf);
        float *s = u->st + (size_t)t * rs;
        if (rf < rows) {
            const uint8_t *m;
            const dl_fp16 *v = dl__krow(&cur, k, t, &m);
            for (int i = 0; i < k->mb; i++) {
                unsigned bits = m[i];
                while (bits) {
                    int e = i * 8 + __builtin_ctz(bits);
                    bits &= bits - 1;
                    axpy(u->r, u->Qt + (size_t)e * rs, dl_fp16_to_f32(*v++), rf, rows);
                }
            }
        }
        int ex_end = t < k->sink ? rows : rf;
        if (ex_end > rc) {
            float kb[512];
            const dl_fp16 *h16 = NULL;
            const float *key = dl__exact_src(k, t, &h16);
            if (!key) {
                for (int e = 0; e < d; e += 8)
                    _mm256_storeu_ps(kb + e,
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h16 + e))));
                key = kb;
            }
            dot_rows(s, key, u->Qt, rs, d, rc, ex_end);
        }
        if (t >= k->sink && rf < rows)
            fill(s, u->r, 0, rf, rows);
        fill(s, NULL, -INFINITY, 0, rc);
    }
}

static void scores_dense_avx2(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0;
    float key[512];
    for (int t = 0; t <= tend; t++) {
        while (u->hi[rc] < t)
            rc++;
        float *s = u->st + (size_t)t * rs;
        const dl_fp16 *kh = k->kdense + (size_t)t * d;
        for (int e = 0; e < d; e += 8)
            _mm256_storeu_ps(key + e,
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + e))));
        dot_rows(s, key, u->Qt, rs, d, rc, rows);
        fill(s, NULL, -INFINITY, 0, rc);
    }
}

static void softmax_pv_avx2(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows;
    for (int r = 0; r < rows; r++) {
        float m = -INFINITY, sum = 0;
        for (int t = 0; t <= u->hi[r]; t++)
            m = fmaxf(m, u->st[(size_t)t * rs + r]);
        for (int t = 0; t <= u->hi[r]; t++) {
            float *p = &u->st[(size_t)t * rs + r];
            *p = expf(*p - m);
            sum += *p;
        }
        u->aux[r] = 1.0f / sum;
        for (int e = 0; e < d; e++)
            u->acc[(size_t)r * d + e] = 0;
    }
    int rc = 0, tend = u->hi[rows - 1];
    for (int t = 0; t <= tend; t++) {
        while (u->hi[rc] < t)
            rc++;
        const dl_fp16 *vt = k->h->v + (size_t)t * d;
        for (int e = 0; e < d; e += 8) {
            __m256 ve = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vt + e)));
            for (int r = rc; r < rows; r++) {
                float *o = u->acc + (size_t)r * d + e;
                __m256 p = _mm256_set1_ps(u->st[(size_t)t * rs + r]);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(p, ve, _mm256_loadu_ps(o)));
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        __m256 sc = _mm256_set1_ps(u->aux[r]);
        for (int e = 0; e < d; e += 8) {
            float *o = u->acc + (size_t)r * d + e;
            _mm256_storeu_ps(o, _mm256_mul_ps(sc, _mm256_loadu_ps(o)));
        }
    }
}

const dl__dops dl__dops_avx2 = {
    .scores = scores_avx2,
    .scores_dense = scores_dense_avx2,
    .softmax_pv = softmax_pv_avx2,
};
