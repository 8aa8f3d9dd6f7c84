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
#include <string.h>
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
 * others 0. The and keeps the value exact because every value here is an fp16 or an
 * 8-bit delta's integer widened to fp32, whose low 13 mantissa bits are zero.
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

/* Completed block b's values as fp32 into vbuf (8-bit ones as their integers n, without
 * their positions' 2^x: delta_impl.h), with 8 zeros after them for the expansion's loads
 * past the end. */
static void widen_block(const dl__dhead *h, int b, float *vbuf)
{
    int n = (int)(h->blk[b + 1] - h->blk[b]), i = 0;
    const uint8_t *vp = h->val + (size_t)h->blk[b] * h->vb;
    if (h->vb == 2) {
        for (; i < n; i += 8)
            _mm256_store_ps(vbuf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vp + 2 * i))));
    } else {
        for (; i < n; i += 8)
            _mm256_store_ps(vbuf + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                          _mm_loadl_epi64((const __m128i *)(vp + i)))));
    }
    _mm256_store_ps(vbuf + i, _mm256_setzero_ps());
}

/* The scales 2^x of positions 16b + 8s .. + 7 (8-bit deltas), one per lane; 1 for fp16
 * deltas. */
AI __m256 lane_scales8(const dl__dhead *h, int b, int s)
{
    if (h->vb != 1)
        return _mm256_set1_ps(1.0f);
    __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(h->pexp + (size_t)b * DL__DBLK + 8 * s)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(127)), 23));
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
                DL_UNROLL_FULL
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
    __m256 a[4][3];
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++) {
        __m256 vc = _mm256_set1_ps(corr[i]);
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            a[i][c] = _mm256_mul_ps(_mm256_loadu_ps(acc[i] + e0 + 8 * c), vc);
    }
    const dl_fp16 *vt = v + e0;
    for (int t = 0; t < n; t++, vt += d) {
        __m256 x[3];
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            x[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vt + 8 * c)));
        DL_UNROLL_FULL
        for (int i = 0; i < 4; i++) {
            __m256 pr = _mm256_broadcast_ss(p[i] + t);
            DL_UNROLL_FULL
            for (int c = 0; c < NVD; c++)
                a[i][c] = _mm256_fmadd_ps(pr, x[c], a[i][c]);
        }
    }
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++)
        DL_UNROLL_FULL
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
        __m256 e = exp256(_mm256_sub_ps(_mm256_load_ps(x + t), vm));
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
            if (b + 2 < k->nfull) { /* the stream two blocks ahead: widen_block waited on it
                                     * (inline on purpose: see delta_avx512.c) */
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
            __m256 s0 = full ? lane_scales8(h, b, 0) : _mm256_setzero_ps();
            __m256 s1 = full ? lane_scales8(h, b, 1) : _mm256_setzero_ps();
            for (int g = 0; g < n4; g += 4) {
                __m256 A[4][2];
                if (full) {
                    eblock4(h->emask + (size_t)b * d, vbuf, q + g, d, A);
                    for (int i = 0; i < 4; i++) {
                        A[i][0] = _mm256_mul_ps(A[i][0], s0);
                        A[i][1] = _mm256_mul_ps(A[i][1], s1);
                    }
                } else {
                    oblock4(vbuf, q + g, d, A);
                }
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
            for (; e0 + 24 <= d; e0 += 24)
                spv4(acc + g, corr + g, p + g, vc, d, n, e0, 3);
            if (d - e0 == 16)
                spv4(acc + g, corr + g, p + g, vc, d, n, e0, 2);
            else if (d - e0 == 8)
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


/* ---------------------------------------------------------------- fused prefill */

/* Prefill units (>= 16 rows, rs <= DL__WROWS, d <= DL__GDMAX), the AVX2 twin of
 * attend_wide_avx512 (read its comment in delta_avx512.c): keys in blocks of DL__WBK, the
 * block's scores only as a DL__WBK x rs tile in L1 instead of the unit's whole score
 * matrix, an online softmax vectorised over rows, and P.V from the block's V widened
 * once. The delta sweep is R[rows] += v * Qt[e][rows] per stored (e, v) of Δk_t, from
 * (offset of Qt row e, fp32 value) pairs decoded once per unit and position. AVX2 has
 * no vcompressps, so a completed block is decoded straight from its element-major masks:
 * its values widened once (widen_block), then each element's 16-bit mask walked bit by
 * bit, appending (e rs, value) to the list of the position the bit names. That costs a
 * few scalar operations per stored value, against rows / 8 FMAs per value in the sweep.
 * The open block is read row by row through dl__krow. */

#define DL__WBK 32    /* keys per block: two blocks of the delta stream */
#define DL__WROWS 128 /* largest unit row stride this kernel takes */

/* Lanes of 8-row vector j that fall in rows [a, b), as a maskstore mask. */
AI __m256i wlanes(int j, int a, int b)
{
    __m256i x = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                 _mm256_set1_epi32(8 * j));
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(a), x),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(b), x));
}

/* R[8 j0 .. 8 (j0 + NV)) += Σ_i val[i] * Qt[off[i] + .], i in [0, n); two accumulator
 * sets alternate so that consecutive values do not wait on each other's FMAs. */
AI void wsweep8(const float *Qt, const int32_t *off, const float *val, int n, float *R,
                int j0, const int NV)
{
    __m256 A[4], B[4];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = B[x] = _mm256_setzero_ps();
    const float *q = Qt + 8 * j0;
    int i = 0;
    for (; i + 2 <= n; i += 2) {
        __m256 b0 = _mm256_broadcast_ss(val + i), b1 = _mm256_broadcast_ss(val + i + 1);
        const float *q0 = q + off[i], *q1 = q + off[i + 1];
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++) {
            A[x] = _mm256_fmadd_ps(b0, _mm256_loadu_ps(q0 + 8 * x), A[x]);
            B[x] = _mm256_fmadd_ps(b1, _mm256_loadu_ps(q1 + 8 * x), B[x]);
        }
    }
    if (i < n) {
        __m256 b0 = _mm256_broadcast_ss(val + i);
        const float *q0 = q + off[i];
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++)
            A[x] = _mm256_fmadd_ps(b0, _mm256_loadu_ps(q0 + 8 * x), A[x]);
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm256_storeu_ps(R + 8 * (j0 + x), _mm256_add_ps(_mm256_loadu_ps(R + 8 * (j0 + x)),
                                                         _mm256_add_ps(A[x], B[x])));
}

/* Keys 0 .. j1-1 of a block whose scores are delta for every row: the running sums of the
 * row vectors g0 .. g0+NV-1 stay in registers across the keys (one broadcast and NV
 * multiply-adds per stored value) and are written out as each key's score row. */
AI void wrun8(const float *Qt, const int32_t *const *ko, const float *const *kv, const int *cnt,
              int j1, float *R, float *sb, int rs, int g0, const int NV)
{
    __m256 A[8];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = _mm256_loadu_ps(R + 8 * (g0 + x));
    const float *q = Qt + 8 * g0;
    for (int j = 0; j < j1; j++) {
        const int32_t *o = ko[j];
        const float *v = kv[j];
        for (int i = 0; i < cnt[j]; i++) {
            __m256 b = _mm256_broadcast_ss(v + i);
            const float *qq = q + o[i];
            DL_UNROLL_FULL
            for (int x = 0; x < NV; x++)
                A[x] = _mm256_fmadd_ps(b, _mm256_loadu_ps(qq + 8 * x), A[x]);
        }
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++)
            _mm256_store_ps(sb + (size_t)j * rs + 8 * (g0 + x), A[x]);
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm256_storeu_ps(R + 8 * (g0 + x), A[x]);
}

/* s[rows in [a, b)] = key . Qt[.][row] for the 8-row vectors j0 .. j0+NV-1. */
AI void wexact8(const float *Qt, int rs, int d, const float *key, float *s, int j0, int a,
                int b, const int NV)
{
    __m256 A[4], B[4];
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        A[x] = B[x] = _mm256_setzero_ps();
    const float *q = Qt + 8 * j0;
    for (int e = 0; e < d; e += 2) {
        __m256 k0 = _mm256_broadcast_ss(key + e), k1 = _mm256_broadcast_ss(key + e + 1);
        DL_UNROLL_FULL
        for (int x = 0; x < NV; x++) {
            A[x] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + (size_t)e * rs + 8 * x), A[x]);
            B[x] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + (size_t)(e + 1) * rs + 8 * x), B[x]);
        }
    }
    DL_UNROLL_FULL
    for (int x = 0; x < NV; x++)
        _mm256_maskstore_ps(s + 8 * (j0 + x), wlanes(j0 + x, a, b), _mm256_add_ps(A[x], B[x]));
}

static void wexact_rows(const float *Qt, int rs, int d, const float *key, float *s, int a,
                        int b)
{
    int j = a / 8, jend = (b + 7) / 8;
    for (; j + 4 <= jend; j += 4)
        wexact8(Qt, rs, d, key, s, j, a, b, 4);
    switch (jend - j) {
    case 3: wexact8(Qt, rs, d, key, s, j, a, b, 3); break;
    case 2: wexact8(Qt, rs, d, key, s, j, a, b, 2); break;
    case 1: wexact8(Qt, rs, d, key, s, j, a, b, 1); break;
    default: break;
    }
}

/* Rows [a, b) of s get src[row], or x where src is NULL. */
static void wfill_rows(float *s, const float *src, float x, int a, int b)
{
    __m256 vx = _mm256_set1_ps(x);
    for (int j = a / 8; j < (b + 7) / 8; j++)
        _mm256_maskstore_ps(s + 8 * j, wlanes(j, a, b), src ? _mm256_loadu_ps(src + 8 * j) : vx);
}

/* acc[i] = acc[i] * corr[i] + Σ_j p[j][i] V[j] for four rows (row stride d), NVD 8-lane
 * chunks from c0; V is the block widened to fp32 (row stride d), p has row stride rs. */
AI void wpv4_8(float *acc, const float *corr, const float *p, int rs, const float *vf, int d,
               int nb, int c0, const int NVD)
{
    __m256 a[4][3];
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++) {
        __m256 vc = _mm256_broadcast_ss(corr + i);
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            a[i][c] = _mm256_mul_ps(_mm256_loadu_ps(acc + (size_t)i * d + c0 + 8 * c), vc);
    }
    for (int j = 0; j < nb; j++) {
        const float *vt = vf + (size_t)j * d + c0, *pj = p + (size_t)j * rs;
        __m256 v[3];
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            v[c] = _mm256_load_ps(vt + 8 * c);
        DL_UNROLL_FULL
        for (int i = 0; i < 4; i++) {
            __m256 pr = _mm256_broadcast_ss(pj + i);
            DL_UNROLL_FULL
            for (int c = 0; c < NVD; c++)
                a[i][c] = _mm256_fmadd_ps(pr, v[c], a[i][c]);
        }
    }
    DL_UNROLL_FULL
    for (int i = 0; i < 4; i++)
        DL_UNROLL_FULL
        for (int c = 0; c < NVD; c++)
            _mm256_storeu_ps(acc + (size_t)i * d + c0 + 8 * c, a[i][c]);
}

/* Completed block b decoded into the lists of positions slot0 .. slot0+15: position
 * slot's pairs at off / val + slot * d, cnt[slot] of them, in element order. */
static void wdecode_block(const dl__dhead *h, int d, int rs, int b, int slot0, float *vbuf,
                          int32_t *off, float *val, int *cnt)
{
    widen_block(h, b, vbuf);
    const uint16_t *em = h->emask + (size_t)b * d;
    const float *vp = vbuf;
    int n[DL__DBLK] = { 0 };
    int32_t *o = off + (size_t)slot0 * d;
    float *v = val + (size_t)slot0 * d;
    float sc[DL__DBLK];
    for (int j = 0; j < DL__DBLK; j++)
        sc[j] = h->vb == 1 ? dl__i8_value(h, b * DL__DBLK + j, 1) : 1.0f;
    for (int e = 0; e < d; e++) {
        int32_t oe = e * rs;
        for (unsigned m = em[e]; m; m &= m - 1) {
            int j = __builtin_ctz(m);
            size_t at = (size_t)j * d + (size_t)n[j]++;
            o[at] = oe;
            v[at] = *vp++ * sc[j];
        }
    }
    for (int j = 0; j < DL__DBLK; j++)
        cnt[slot0 + j] = n[j];
}

/* Completed blocks 0 .. nblk-1 decoded key by key into contiguous (offset, value) lists
 * (dl__dops.predecode): each block as wdecode_block lays it out, then copied. */
static void predecode_avx2(const dl__dhead *h, int d, int rs, int nblk, int32_t base,
                           int32_t *kst, int32_t *off, float *val)
{
    pthread_once(&g_xtab_once, xtab_init);
    float vbuf[DL__DBLK * DL__GDMAX + 16] __attribute__((aligned(32)));
    float bval[DL__DBLK * DL__GDMAX] __attribute__((aligned(32)));
    int32_t boff[DL__DBLK * DL__GDMAX] __attribute__((aligned(32)));
    int cnt[DL__DBLK];
    int32_t pos = base;
    for (int b = 0; b < nblk; b++) {
        wdecode_block(h, d, rs, b, 0, vbuf, boff, bval, cnt);
        for (int j = 0; j < DL__DBLK; j++) {
            kst[b * DL__DBLK + j] = pos;
            memcpy(off + pos, boff + (size_t)j * d, (size_t)cnt[j] * sizeof *off);
            memcpy(val + pos, bval + (size_t)j * d, (size_t)cnt[j] * sizeof *val);
            pos += cnt[j];
        }
    }
    kst[nblk * DL__DBLK] = pos;
}

static void attend_wide_avx2(const dl__dunit *u, int dense)
{
    pthread_once(&g_xtab_once, xtab_init);
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int nvr = (rows + 7) / 8, n4 = (rows + 3) & ~3;
    float sb[DL__WBK * DL__WROWS] __attribute__((aligned(32)));  /* scores, then p */
    float vf[DL__WBK * DL__GDMAX] __attribute__((aligned(32)));  /* V block, fp32 */
    float val[DL__WBK * DL__GDMAX] __attribute__((aligned(32))); /* decoded deltas */
    int32_t off[DL__WBK * DL__GDMAX] __attribute__((aligned(32)));
    float vbuf[DL__DBLK * DL__GDMAX + 16] __attribute__((aligned(32)));
    int cnt[DL__WBK], rfa[DL__WBK], rca[DL__WBK];
    const int32_t *ko[DL__WBK]; /* key j's stored values: ko[j] / kv[j], cnt[j] of them */
    const float *kv[DL__WBK];
    float mx[DL__WROWS] __attribute__((aligned(32)));
    float sum[DL__WROWS] __attribute__((aligned(32)));
    float corr[DL__WROWS] __attribute__((aligned(32)));
    float kbuf[DL__GDMAX] __attribute__((aligned(32)));
    int dec_b = -1; /* completed block last decoded */
    dl__drows cur;
    dl__drows_init(&cur);
    int rc = 0, rf = dense ? rows : 0;
    for (int r = 0; r < rs; r++) {
        u->r[r] = 0;
        mx[r] = -INFINITY;
        sum[r] = 0;
    }
    for (int r = 0; r < n4; r++)
        for (int e = 0; e < d; e += 8)
            _mm256_storeu_ps(u->acc + (size_t)r * d + e, _mm256_setzero_ps());
    uint64_t score_ns = 0;
    for (int t0 = 0; t0 <= tend; t0 += DL__WBK) {
        int nb = tend + 1 - t0 < DL__WBK ? tend + 1 - t0 : DL__WBK;
        uint64_t ts = dl__delta_timing ? dl__delta_now_ns() : 0;
        /* row ranges per key, and the deltas of keys that some row scores from k̂: decoded
         * once for the call where the block lies in completed blocks, else here */
        int pre = !dense && u->pkst && t0 + nb <= k->nfull * DL__DBLK;
        for (int j = 0; j < nb; j++) {
            int t = t0 + j, b = t / DL__DBLK;
            if (!dense)
                ranges_at(u, t, &rc, &rf);
            else
                while (u->hi[rc] < t)
                    rc++;
            rfa[j] = rf;
            rca[j] = rc;
            if (pre) {
                ko[j] = u->poff + u->pkst[t];
                kv[j] = u->pval + u->pkst[t];
                cnt[j] = u->pkst[t + 1] - u->pkst[t];
                continue;
            }
            ko[j] = off + (size_t)j * d;
            kv[j] = val + (size_t)j * d;
            if (rf >= rows)
                continue;
            if (b < k->nfull) { /* element-major block: all 16 positions at once */
                if (dec_b != b) {
                    dec_b = b;
                    wdecode_block(k->h, d, rs, b, b * DL__DBLK - t0, vbuf, off, val, cnt);
                }
            } else { /* the open block, rows as stored */
                const uint8_t *m;
                const dl_fp16 *vt = dl__krow(&cur, k, t, &m);
                int n = 0;
                for (int i = 0; i < k->mb; i++)
                    for (unsigned bits = m[i]; bits; bits &= bits - 1) {
                        off[(size_t)j * d + n] = (8 * i + __builtin_ctz(bits)) * rs;
                        val[(size_t)j * d + n++] = dl_fp16_to_f32(*vt++);
                    }
                cnt[j] = n;
            }
        }
        /* scores of the block: first the keys that are delta for every row (the bulk of a
         * long prefill), with the running sums in registers, 8 row vectors at a time */
        int jd = 0;
        while (jd < nb && rfa[jd] == 0 && t0 + jd >= k->sink)
            jd++;
        for (int g0 = 0; jd && g0 < nvr; g0 += 8)
            switch (nvr - g0 < 8 ? nvr - g0 : 8) {
            case 8: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 8); break;
            case 7: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 7); break;
            case 6: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 6); break;
            case 5: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 5); break;
            case 4: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 4); break;
            case 3: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 3); break;
            case 2: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 2); break;
            default: wrun8(u->Qt, ko, kv, cnt, jd, u->r, sb, rs, g0, 1); break;
            }
        for (int j = 0; j < jd; j++)
            wfill_rows(sb + (size_t)j * rs, NULL, -INFINITY, rows, 8 * nvr); /* padding: p = 0 */
        for (int j = jd; j < nb; j++) {
            int t = t0 + j, jrf = rfa[j], jrc = rca[j];
            float *s = sb + (size_t)j * rs;
            if (jrf < rows) { /* the running sums take the deltas of sink keys too */
                const int32_t *o = ko[j];
                const float *v = kv[j];
                int j0 = jrf / 8;
                for (; j0 + 4 <= nvr; j0 += 4)
                    wsweep8(u->Qt, o, v, cnt[j], u->r, j0, 4);
                switch (nvr - j0) {
                case 3: wsweep8(u->Qt, o, v, cnt[j], u->r, j0, 3); break;
                case 2: wsweep8(u->Qt, o, v, cnt[j], u->r, j0, 2); break;
                case 1: wsweep8(u->Qt, o, v, cnt[j], u->r, j0, 1); break;
                default: break;
                }
                if (t >= k->sink)
                    wfill_rows(s, u->r, 0, jrf, rows);
            }
            int ex_end = t < k->sink ? rows : jrf;
            if (ex_end > jrc)
                wexact_rows(u->Qt, rs, d, exact_key(k, t, dense, kbuf), s, jrc, ex_end);
            wfill_rows(s, NULL, -INFINITY, 0, jrc);
            wfill_rows(s, NULL, -INFINITY, rows, 8 * nvr); /* padding lanes: p = 0 */
        }
        if (dl__delta_timing)
            score_ns += dl__delta_now_ns() - ts;
        /* online softmax, vectorised over rows; p replaces the scores */
        for (int jv = 0; jv < nvr; jv++) {
            __m256 m = _mm256_set1_ps(-INFINITY);
            for (int j = 0; j < nb; j++)
                m = _mm256_max_ps(m, _mm256_load_ps(sb + (size_t)j * rs + 8 * jv));
            __m256 om = _mm256_load_ps(mx + 8 * jv);
            __m256 nm = _mm256_max_ps(m, om);
            __m256 cr = exp256(_mm256_sub_ps(om, nm)); /* 0 while om = -inf (NaN: 0) */
            __m256 sm = _mm256_setzero_ps();
            for (int j = 0; j < nb; j++) {
                float *sj = sb + (size_t)j * rs + 8 * jv;
                __m256 p = exp256(_mm256_sub_ps(_mm256_load_ps(sj), nm));
                _mm256_store_ps(sj, p);
                sm = _mm256_add_ps(sm, p);
            }
            _mm256_store_ps(mx + 8 * jv, nm);
            _mm256_store_ps(corr + 8 * jv, cr);
            _mm256_store_ps(sum + 8 * jv, _mm256_fmadd_ps(_mm256_load_ps(sum + 8 * jv), cr, sm));
        }
        /* P.V: V block widened once, then four rows at a time */
        const dl_fp16 *vb = k->h->v + (size_t)t0 * d;
        for (int j = 0; j < nb; j++)
            for (int e = 0; e < d; e += 8)
                _mm256_store_ps(vf + (size_t)j * d + e, _mm256_cvtph_ps(_mm_loadu_si128(
                                                            (const __m128i *)(vb + (size_t)j * d + e))));
        for (int r0 = 0; r0 < n4; r0 += 4) {
            int last = r0 + 3 < rows ? r0 + 3 : rows - 1;
            int gnb = u->hi[last] - t0 + 1; /* keys past the group's last query add 0 */
            if (gnb <= 0)
                continue; /* corr is 1 and p 0 for these rows */
            gnb = gnb < nb ? gnb : nb;
            float *acc = u->acc + (size_t)r0 * d;
            int c0 = 0;
            for (; c0 + 24 <= d; c0 += 24)
                wpv4_8(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 3);
            switch ((d - c0) / 8) {
            case 2: wpv4_8(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 2); break;
            case 1: wpv4_8(acc, corr + r0, sb + r0, rs, vf, d, gnb, c0, 1); break;
            default: break;
            }
        }
    }
    if (dl__delta_timing)
        dl__delta_add_score_ns(score_ns);
    for (int r = 0; r < rows; r++) {
        __m256 inv = _mm256_set1_ps(1.0f / sum[r]);
        for (int e = 0; e < d; e += 8)
            _mm256_storeu_ps(u->acc + (size_t)r * d + e,
                             _mm256_mul_ps(_mm256_loadu_ps(u->acc + (size_t)r * d + e), inv));
    }
}


/* ---------------------------------------------------------------- theta bisection */

/* The 8-bit encoder (delta.c's encode_pos8), 8 lanes at a time; see delta_avx512.c's
 * enc_pos16 for the two passes. */
AI __m256 enc_keep8(__m256 k, __m256 r, __m256 w, __m256 th, __m256 pw, __m256 *dv)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 delta = _mm256_sub_ps(k, r);
    __m256 ad = _mm256_and_ps(delta, absm);
    *dv = _mm256_sub_ps(delta, _mm256_or_ps(pw, _mm256_andnot_ps(absm, delta)));
    return _mm256_cmp_ps(_mm256_mul_ps(ad, w), th, _CMP_GT_OQ);
}

AI __m256 i8_round8(__m256 v, __m256 is, __m256 s)
{
    __m256 y = _mm256_mul_ps(v, is);
    y = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), y));
    return _mm256_mul_ps(_mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), s);
}

AI int enc_pos8(const float *k, int d, float *r, const float *w, __m256 th, const float *pw,
                uint8_t *mask, dl_fp16 *val, int8_t *xo)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 dv[DL__DHMAX / 8], keep[DL__DHMAX / 8], mx = _mm256_setzero_ps();
    for (int c = 0; c < d / 8; c++) {
        keep[c] = enc_keep8(_mm256_loadu_ps(k + 8 * c), _mm256_loadu_ps(r + 8 * c),
                            _mm256_loadu_ps(w + 8 * c), th, _mm256_loadu_ps(pw + 8 * c), &dv[c]);
        mx = _mm256_max_ps(_mm256_and_ps(keep[c], _mm256_and_ps(dv[c], absm)), mx);
    }
    float m8[8], m = 0.0f;
    _mm256_storeu_ps(m8, mx);
    for (int i = 0; i < 8; i++)
        m = m8[i] > m ? m8[i] : m;
    int x = dl__i8_exp(m), n = 0;
    __m256 s = _mm256_set1_ps(dl__pow2f(x)), is = _mm256_set1_ps(dl__pow2f(-x));
    for (int c = 0; c < d / 8; c++) {
        __m256 q = i8_round8(dv[c], is, s), rr = _mm256_loadu_ps(r + 8 * c);
        _mm256_storeu_ps(r + 8 * c, _mm256_add_ps(rr, _mm256_and_ps(keep[c], q)));
        unsigned bits = (unsigned)_mm256_movemask_ps(keep[c]);
        if (!val) {
            n += __builtin_popcount(bits);
            continue;
        }
        uint16_t h[8];
        _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(q, _MM_FROUND_TO_NEAREST_INT));
        mask[c] = (uint8_t)bits;
        for (; bits; bits &= bits - 1)
            val[n++] = h[__builtin_ctz(bits)];
    }
    *xo = (int8_t)x;
    return n;
}

static uint64_t sim_zeros_avx2(const float *k, size_t ks, int n, int d, float *r,
                               const float *w, float theta, const float *pv)
{
    __m256 th = _mm256_set1_ps(theta);
    uint64_t kept = 0;
    int8_t x;
    for (int a = 0; a < n; a++)
        kept += (uint64_t)enc_pos8(k + (size_t)a * ks, d, r, w, th, pv, NULL, NULL, &x);
    return (uint64_t)n * (uint64_t)d - kept;
}

static int encode8_avx2(const float *k, int d, float *r, const float *w, float theta,
                        const float *pw, uint8_t *mask, dl_fp16 *val, int8_t *xo)
{
    return enc_pos8(k, d, r, w, _mm256_set1_ps(theta), pw, mask, val, xo);
}

const dl__dops dl__dops_avx2 = {
    .scores = scores_avx2,
    .scores_dense = scores_dense_avx2,
    .softmax_pv = softmax_pv_avx2,
    .attend_group = attend_group_avx2,
    .attend_wide = attend_wide_avx2,
    .wide_max_rs = DL__WROWS,
    .wide_max_d = DL__GDMAX,
    .sim_zeros = sim_zeros_avx2,
    .encode8 = encode8_avx2,
    .predecode = predecode_avx2,
};
