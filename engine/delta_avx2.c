/* delta_avx2.c — DeltaLLM attention kernels for AVX2 + FMA + F16C machines (head dim a
 * multiple of 8). Same sweep as delta_scalar.c (read its comment first); the loops over
 * rows — the running sums R += v * Q[:, e], the exact scores and the score copies — run 8
 * rows per instruction over the transposed queries, and P.V runs 8 channels at a time.
 * Row ranges start anywhere, so each loop does whole vectors and finishes the tail in
 * scalar code; nothing is written outside the range (the ranges of one key are disjoint
 * and written in order).
 * Decode units (one query x a group of heads) take the fused kernel at the end of the
 * file instead, which reads the element-major blocks of the stream directly.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>

#include "delta_impl.h"
#include "simd_avx2.h"

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

/* ---------------------------------------------------------------- fused decode */

/* Decode units (one query x the heads of a group), the AVX2 twin of attend_group_avx512
 * (read its comment in delta_avx512.c): keys in chunks of DL__GCH; per chunk the delta
 * scores of its completed blocks come from the element-major layout — for each element
 * e, the block's 16 deltas of e as two 8-lane vectors, and every row does q[e] x vector —
 * then a 16-lane prefix scan plus the carry of the blocks before gives the scores of k̂.
 * Exact keys (window, sink, or every key for the dense baseline) are dotted one by one,
 * then an online softmax step and P.V from the chunk's fp16 V rows, widened once for
 * four rows.
 *
 * AVX2 has no vexpandps: a half block (8 positions, 8 mask bits m) is expanded with one
 * vpermps whose lane i takes packed value popcount(m & ((1 << i) - 1)), then an and that
 * zeroes the lanes whose bit is clear. Both come from one table entry per byte m: lanes
 * with the bit set hold 0xFFFFFFF8 | index (vpermps reads only the low 3 bits), the
 * others 0. The and keeps the value exact because every value here is an fp16 (or an
 * E4M3 x 256) widened to fp32, whose low 13 mantissa bits are zero.
 * Cost: at head dim 64 and 4 rows the delta scores take 32 FMAs per key (whatever the
 * sparsity: columns are expanded to all 16 lanes) and P.V another 32, so the kernel is
 * close to FMA-bound; measured (2-core EPYC, Llama-3.2-1B shape, one decode step) 2.0x
 * the engine's dense attention at 2048 keys and 2.3x at 4096, where the split kernels
 * (row by row through dl__drows) ran at 0.15x. */

#define DL__GCH 512   /* keys per chunk */
#define DL__GDMAX 256 /* largest head dim of a decode unit (delta_impl.h) */

static int32_t g_xtab[256][8] __attribute__((aligned(32))); /* expansion: see above */
static uint8_t g_pc8[256];                                   /* popcount of a byte */
static pthread_once_t g_xtab_once = PTHREAD_ONCE_INIT;

static void xtab_init(void)
{
    for (int m = 0; m < 256; m++) {
        int n = 0;
        for (int i = 0; i < 8; i++)
            if (m >> i & 1)
                g_xtab[m][i] = (int32_t)(0xFFFFFFF8u | (unsigned)n++);
            else
                g_xtab[m][i] = 0;
        g_pc8[m] = (uint8_t)n;
    }
}

/* e^x for x <= 0 (softmax arguments): as exp_neg in delta_avx512.c, with 2^n built in
 * the integer unit; x < -87 (incl. -inf) gives 0. */
AI __m256 exp_neg8(__m256 x)
{
    __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* n in [-126, 0]: 2^n is a normal float */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* 8-lane inclusive prefix sum. */
AI __m256 scan8(__m256 x)
{
    x = _mm256_add_ps(x, _mm256_castsi256_ps(_mm256_slli_si256(_mm256_castps_si256(x), 4)));
    x = _mm256_add_ps(x, _mm256_castsi256_ps(_mm256_slli_si256(_mm256_castps_si256(x), 8)));
    /* lane 3 of the low 128 bits into every lane of the high 128 */
    __m256 lo3 = _mm256_permute_ps(_mm256_permute2f128_ps(x, x, 0x08), 0xFF);
    return _mm256_add_ps(x, lo3);
}

AI __m256 lane7(__m256 x) { return _mm256_permutevar8x32_ps(x, _mm256_set1_epi32(7)); }

/* Sums of four vectors as the four lanes of an xmm. */
AI __m128 hsum4x(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Completed block b's values as fp32 into vbuf (8-bit ones x 256, delta_impl.h), with
 * 8 zeros after them for the expansion's loads past the end. */
static void widen_block(const dl__dhead *h, int b, float *vbuf)
{
    int n = (int)(h->blk[b + 1] - h->blk[b]), i = 0;
    const uint8_t *vp = h->val + (size_t)h->blk[b] * h->vb;
    if (h->vb == 2) {
        for (; i < n; i += 8)
            _mm256_store_ps(vbuf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vp + 2 * i))));
    } else {
        const __m256 s256 = _mm256_set1_ps(256.0f);
        const __m128i keep = _mm_set1_epi16((short)0xBFFF);
        for (; i < n; i += 8) {
            __m128i x = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(vp + i)));
            x = _mm_and_si128(_mm_slli_epi16(x, 7), keep);
            _mm256_store_ps(vbuf + i, _mm256_mul_ps(_mm256_cvtph_ps(x), s256));
        }
    }
    _mm256_store_ps(vbuf + i, _mm256_setzero_ps());
}

/* A[i][0|1] lane j = q[i] . Δk of position 16b + j (lanes 0-7 | 8-15), four rows, from
 * a completed block's masks em[d] and its values widened by widen_block. */
static void eblock4(const uint16_t *em, const float *vp, const float *const *q, int d,
                    __m256 A[4][2])
{
    /* named accumulators: with an array GCC kept storing them to A every element */
    __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0,
           b3 = a0;
    const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
    for (int e = 0; e < d; e++) {
        unsigned ml = em[e] & 0xFF, mh = em[e] >> 8;
        __m256i i0 = _mm256_load_si256((const __m256i *)g_xtab[ml]);
        __m256i i1 = _mm256_load_si256((const __m256i *)g_xtab[mh]);
        __m256 x0 = _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(vp), i0),
                                  _mm256_castsi256_ps(i0));
        vp += g_pc8[ml];
        __m256 x1 = _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(vp), i1),
                                  _mm256_castsi256_ps(i1));
        vp += g_pc8[mh];
        __m256 qe = _mm256_broadcast_ss(q0 + e);
        a0 = _mm256_fmadd_ps(qe, x0, a0);
        b0 = _mm256_fmadd_ps(qe, x1, b0);
        qe = _mm256_broadcast_ss(q1 + e);
        a1 = _mm256_fmadd_ps(qe, x0, a1);
        b1 = _mm256_fmadd_ps(qe, x1, b1);
        qe = _mm256_broadcast_ss(q2 + e);
        a2 = _mm256_fmadd_ps(qe, x0, a2);
        b2 = _mm256_fmadd_ps(qe, x1, b2);
        qe = _mm256_broadcast_ss(q3 + e);
        a3 = _mm256_fmadd_ps(qe, x0, a3);
        b3 = _mm256_fmadd_ps(qe, x1, b3);
    }
    A[0][0] = a0, A[0][1] = b0, A[1][0] = a1, A[1][1] = b1;
    A[2][0] = a2, A[2][1] = b2, A[3][0] = a3, A[3][1] = b3;
}

/* The open block b (row-major staging, npos positions) as element columns colT[e][16],
 * zero where nothing is stored; it is read once per decode step, so through dl__krow. */
static void open_cols(const dl__dkeys *k, int b, int npos, float *colT)
{
    int d = k->d;
    for (int e = 0; e < 16 * d; e += 8)
        _mm256_store_ps(colT + e, _mm256_setzero_ps());
    dl__drows cur;
    dl__drows_init(&cur);
    for (int j = 0; j < npos; j++) {
        const uint8_t *m;
        const dl_fp16 *v = dl__krow(&cur, k, b * DL__DBLK + j, &m);
        for (int e = 0; e < d; e++)
            if (m[e >> 3] >> (e & 7) & 1)
                colT[16 * e + j] = dl_fp16_to_f32(*v++);
    }
}

/* The same as eblock4 from colT. */
static void oblock4(const float *colT, const float *const *q, int d, __m256 A[4][2])
{
    for (int i = 0; i < 4; i++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int e = 0; e < d; e++) {
            __m256 qe = _mm256_broadcast_ss(q[i] + e);
            a0 = _mm256_fmadd_ps(qe, _mm256_load_ps(colT + 16 * e), a0);
            a1 = _mm256_fmadd_ps(qe, _mm256_load_ps(colT + 16 * e + 8), a1);
        }
        A[i][0] = a0, A[i][1] = a1;
    }
}

/* Key t as fp32 for exact scoring: this call's fp32 key as it is, or the fp16 one (the
 * dense baseline's cache, the ring, a sink) widened into kbuf. */
static inline const float *exact_key(const dl__dkeys *k, int t, int dense, float *kbuf)
{
    const dl_fp16 *h16 = dense ? k->kdense + (size_t)t * k->d : NULL;
    const float *key = dense ? NULL : dl__exact_src(k, t, &h16);
    if (key)
        return key;
    for (int e = 0; e < k->d; e += 8)
        _mm256_store_ps(kbuf + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h16 + e))));
    return kbuf;
}

/* sc[r][t - c0] = q[r] . k_t for keys t in [a0, a1) and rows 0 .. n4-1, two keys at a
 * time so that each query load serves both. */
static void exact_scores(const dl__dkeys *k, int dense, const float *const *q, int n4,
                         int a0, int a1, int c0, float *sc)
{
    int d = k->d;
    float kb[2][DL__GDMAX] __attribute__((aligned(32)));
    float s4[2][4] __attribute__((aligned(16)));
    for (int t = a0; t < a1; t += 2) {
        int two = t + 1 < a1;
        const float *x0 = exact_key(k, t, dense, kb[0]);
        const float *x1 = two ? exact_key(k, t + 1, dense, kb[1]) : x0;
        for (int g = 0; g < n4; g += 4) {
            __m256 a[4], b[4];
            for (int i = 0; i < 4; i++)
                a[i] = b[i] = _mm256_setzero_ps();
            for (int c = 0; c < d; c += 8) {
                __m256 k0 = _mm256_loadu_ps(x0 + c), k1 = _mm256_loadu_ps(x1 + c);
                #pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    __m256 qv = _mm256_loadu_ps(q[g + i] + c);
                    a[i] = _mm256_fmadd_ps(qv, k0, a[i]);
                    b[i] = _mm256_fmadd_ps(qv, k1, b[i]);
                }
            }
            _mm_store_ps(s4[0], hsum4x(a[0], a[1], a[2], a[3]));
            _mm_store_ps(s4[1], hsum4x(b[0], b[1], b[2], b[3]));
            for (int i = 0; i < 4; i++) {
                float *s = sc + (size_t)(g + i) * DL__GCH + (t - c0);
                s[0] = s4[0][i];
                if (two)
                    s[1] = s4[1][i];
            }
        }
    }
}

/* acc[i][e0 ..] = acc[i][e0 ..] * corr[i] + Σ_t p[i][t] V[t][e0 ..] for four rows over
 * keys t = 0 .. n-1 of v, NVD (1 or 2) 8-lane chunks: 8 accumulators, each V chunk
 * widened once for the four rows. */
AI void spv4(float *const *acc, const float *corr, const float *const *p, const dl_fp16 *v,
             int d, int n, int e0, const int NVD)
{
    __m256 a[4][2];
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m256 vc = _mm256_set1_ps(corr[i]);
        #pragma GCC unroll 2
        for (int c = 0; c < NVD; c++)
            a[i][c] = _mm256_mul_ps(_mm256_loadu_ps(acc[i] + e0 + 8 * c), vc);
    }
    const dl_fp16 *vt = v + e0;
    for (int t = 0; t < n; t++, vt += d) {
        __m256 x[2];
        #pragma GCC unroll 2
        for (int c = 0; c < NVD; c++)
            x[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vt + 8 * c)));
        #pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m256 pr = _mm256_broadcast_ss(p[i] + t);
            #pragma GCC unroll 2
            for (int c = 0; c < NVD; c++)
                a[i][c] = _mm256_fmadd_ps(pr, x[c], a[i][c]);
        }
    }
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        #pragma GCC unroll 2
        for (int c = 0; c < NVD; c++)
            _mm256_storeu_ps(acc[i] + e0 + 8 * c, a[i][c]);
}

/* One online softmax step over a chunk row x[0 .. n) (padded to a multiple of 8 with
 * -inf): x becomes e^(x - new max); returns the correction of the old sum and acc. */
static float softmax_step(float *x, int n, float *mx, float *sum)
{
    int n8 = (n + 7) & ~7;
    for (int t = n; t < n8; t++)
        x[t] = -INFINITY;
    __m256 m = _mm256_set1_ps(-INFINITY);
    for (int t = 0; t < n8; t += 8)
        m = _mm256_max_ps(m, _mm256_load_ps(x + t));
    float bm = hmax8(m), nm = bm > *mx ? bm : *mx;
    float corr = expf(*mx - nm); /* 0 on the first chunk (mx = -inf) */
    __m256 vm = _mm256_set1_ps(nm), sm = _mm256_setzero_ps();
    for (int t = 0; t < n8; t += 8) {
        __m256 e = exp_neg8(_mm256_sub_ps(_mm256_load_ps(x + t), vm));
        _mm256_store_ps(x + t, e);
        sm = _mm256_add_ps(sm, e);
    }
    *sum = *sum * corr + hsum8(sm);
    *mx = nm;
    return corr;
}

/* Decode units, delta or (dense != 0) the bench's dense baseline: the same sweep with
 * every key exact from the fp16 cache. */
static void attend_group_avx2(const dl__dunit *u, int dense)
{
    pthread_once(&g_xtab_once, xtab_init);
    const dl__dkeys *k = u->k;
    const dl__dhead *h = k->h;
    int d = k->d, rows = u->rows, n4 = (rows + 3) & ~3;
    int T = u->hi[0] + 1;
    int lo = dense ? 0 : u->lo[0]; /* keys sink <= t < lo from k̂; lo == 0: all exact */
    int sink = k->sink < T ? k->sink : T;
    float vbuf[DL__DBLK * DL__GDMAX + 16] __attribute__((aligned(32)));
    float sc[DL__GROUP_ROWS * DL__GCH] __attribute__((aligned(32)));
    const float *q[DL__GROUP_ROWS], *p[DL__GROUP_ROWS];
    float *acc[DL__GROUP_ROWS];
    float mx[DL__GROUP_ROWS], sum[DL__GROUP_ROWS], corr[DL__GROUP_ROWS];
    __m256 carry[DL__GROUP_ROWS];
    /* padding rows repeat row 0 into spare rows (acc has rs >= 16 rows) */
    for (int r = 0; r < n4; r++) {
        q[r] = u->Q + (size_t)(r < rows ? r : 0) * d;
        acc[r] = u->acc + (size_t)r * d;
        p[r] = sc + (size_t)r * DL__GCH;
        for (int e = 0; e < d; e += 8)
            _mm256_storeu_ps(acc[r] + e, _mm256_setzero_ps());
        mx[r] = -INFINITY;
        sum[r] = 0;
        carry[r] = _mm256_setzero_ps();
    }
    uint64_t score_ns = 0;
    for (int c0 = 0; c0 < T; c0 += DL__GCH) {
        int c1 = T - c0 < DL__GCH ? T : c0 + DL__GCH, n = c1 - c0;
        uint64_t ts = dl__delta_timing ? dl__delta_now_ns() : 0;
        /* delta scores of the chunk's blocks that hold keys < lo */
        int bend = lo > c0 ? ((lo < c1 ? lo : c1) + DL__DBLK - 1) / DL__DBLK : 0;
        for (int b = c0 / DL__DBLK; b < bend; b++) {
            const char *vr = (const char *)(h->v + (size_t)b * DL__DBLK * d);
            for (int l = 0; l < DL__DBLK * d * 2; l += 64) /* V of these keys, for P.V */
                _mm_prefetch(vr + l, _MM_HINT_T1);
            int full = b < k->nfull;
            if (b + 2 < k->nfull) { /* the stream two blocks ahead: widen_block waited on it */
                const char *ea = (const char *)(h->emask + (size_t)(b + 2) * d);
                const char *va = (const char *)(h->val + (size_t)h->blk[b + 2] * h->vb);
                const char *vz = (const char *)(h->val + (size_t)h->blk[b + 3] * h->vb);
                for (int l = 0; l < d * 2; l += 64)
                    _mm_prefetch(ea + l, _MM_HINT_T0);
                for (; va < vz; va += 64)
                    _mm_prefetch(va, _MM_HINT_T0);
            }
            if (full)
                widen_block(h, b, vbuf);
            else
                open_cols(k, b, T - b * DL__DBLK < DL__DBLK ? T - b * DL__DBLK : DL__DBLK, vbuf);
            for (int g = 0; g < n4; g += 4) {
                __m256 A[4][2];
                if (full)
                    eblock4(h->emask + (size_t)b * d, vbuf, q + g, d, A);
                else
                    oblock4(vbuf, q + g, d, A);
                for (int i = 0; i < 4; i++) {
                    float *s = sc + (size_t)(g + i) * DL__GCH + (b * DL__DBLK - c0);
                    __m256 x0 = _mm256_add_ps(scan8(A[i][0]), carry[g + i]);
                    __m256 x1 = _mm256_add_ps(scan8(A[i][1]), lane7(x0));
                    _mm256_store_ps(s, x0);
                    _mm256_store_ps(s + 8, x1);
                    carry[g + i] = lane7(x1);
                }
            }
        }
        /* exact scores: below sink, and from lo (everything when lo == 0) */
        int ranges[2][2] = { { 0, lo > 0 ? sink : T }, { lo > 0 ? lo : T, T } };
        for (int i = 0; i < 2; i++) {
            int a0 = ranges[i][0] > c0 ? ranges[i][0] : c0;
            int a1 = ranges[i][1] < c1 ? ranges[i][1] : c1;
            if (a0 < a1)
                exact_scores(k, dense, q, n4, a0, a1, c0, sc);
        }
        if (dl__delta_timing)
            score_ns += dl__delta_now_ns() - ts;
        for (int r = 0; r < n4; r++)
            corr[r] = softmax_step(sc + (size_t)r * DL__GCH, n, &mx[r], &sum[r]);
        /* P.V of the chunk, four rows at a time */
        const dl_fp16 *vc = h->v + (size_t)c0 * d;
        for (int g = 0; g < n4; g += 4) {
            int e0 = 0;
            for (; e0 + 16 <= d; e0 += 16)
                spv4(acc + g, corr + g, p + g, vc, d, n, e0, 2);
            if (e0 < d)
                spv4(acc + g, corr + g, p + g, vc, d, n, e0, 1);
        }
    }
    if (dl__delta_timing)
        dl__delta_add_score_ns(score_ns);
    for (int r = 0; r < rows; r++) {
        __m256 vi = _mm256_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < d; e += 8)
            _mm256_storeu_ps(acc[r] + e, _mm256_mul_ps(_mm256_loadu_ps(acc[r] + e), vi));
    }
}

const dl__dops dl__dops_avx2 = {
    .scores = scores_avx2,
    .scores_dense = scores_dense_avx2,
    .softmax_pv = softmax_pv_avx2,
    .attend_group = attend_group_avx2,
};
