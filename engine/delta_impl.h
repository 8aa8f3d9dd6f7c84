/* delta_impl.h — internal to DeltaLLM attention: the cache layout and the per-ISA kernels.
 *
 * Per layer and KV head (a "head store"):
 *   ref   [d] fp32          reference state r_t after the last appended position
 *   The delta stream, in blocks of 16 positions (DL__DBLK):
 *   emask [n_ctx / 16][d]   completed blocks, element-major: bit j of emask[b][e] set =
 *                           element e of Δk at position 16b + j is stored
 *   pexp  [n_ctx] int8      8-bit deltas: each position's scale exponent (see DL__XMIN)
 *   val   vb bytes each     the stored (nonzero) deltas of completed blocks, block after
 *                           block; inside a block element-major (element e's values for
 *                           positions j = 0..15 in order, then element e + 1's)
 *   blk   [n_ctx / 16 + 1]  blk[b] = index in val of block b's first value
 *   smask [16][mb] bits     the open (last, incomplete) block, row-major: bit e of row j
 *   sval  [16 d] fp16         = element e of position 16b + j is stored; its values
 *                             position after position (row-major packed). When the 16th
 *                             position arrives the block is transposed into emask / val.
 *   Quad layout (8-bit deltas, head dim a multiple of 16, AVX-512 with VBMI2; chosen per
 *   cache at creation, h->quad): emask's bytes hold d / 4 64-bit masks per completed block
 *   instead, qmask[b][Q]: bit 4j + i set = element 4Q + i of position 16b + j stored; the
 *   values follow quad after quad, each quad's in bit order (position-major). Why: one
 *   vpexpandb puts a quad's values of 16 positions into 16 lanes of 4 bytes, and one
 *   vpdpbusd per query head then adds four elements' products into each position's lane
 *   (delta_avx512.c, qblock4), a quarter of the element-major kernel's multiply-adds.
 *   Why element-major: a decode step scores all query heads of a group against 16 keys
 *   at once as q_h[e] x (element e of the 16 deltas, one vector) — no horizontal sums —
 *   and the running sum along the keys becomes a 16-lane prefix scan of scores (the
 *   score of k̂ is linear in the deltas). Same bytes as a per-position mask. Kernels that
 *   sweep positions one at a time read the stream through dl__drows, which converts one
 *   completed block at a time back to rows.
 *   ring  [ring_cap][d]     exact keys (fp16, as the dense cache stores them) of the last
 *                           ring_cap positions, slot t % ring_cap
 *   sinkk [sink][d]         exact fp16 keys of the first `sink` positions
 *                           (fp16: at head dim 8 an fp32 ring alone was ~15% of a dense K
 *                           cache; the keys of the current call are still read in fp32)
 *   v     [n_ctx][d] fp16   dense V
 * All arrays live in one mmap(MAP_NORESERVE) reservation made at create time for the
 * worst case (every element stored); only touched pages become memory, and the byte
 * counters report what is used, so appending never allocates.
 *
 * Attention works on "units": one KV head and a tile of queries. A unit's rows are
 * (query, head of the group) pairs, query-major, so that along the key sweep the rows
 * that still need something form a contiguous range (see delta.c).
 */
#ifndef DL_DELTA_IMPL_H
#define DL_DELTA_IMPL_H

#include <stdint.h>

#include "delta.h"
#include "quant.h"

typedef struct dl__dhead {
    float *ref;
    uint16_t *emask;
    uint32_t *blk;
    uint8_t *val;
    int vb; /* bytes per value in val: 2 = fp16, 1 = int8 n of n * 2^pexp[t] (below) */
    int8_t *pexp; /* [n_ctx] with vb 1: the exponent of each position's values */
    int quad;     /* completed blocks in the quad layout (above) */
    uint8_t *smask;
    dl_fp16 *sval;
    int scnt; /* values in sval */
    dl_fp16 *ring;
    dl_fp16 *sinkk;
    dl_fp16 *v;
} dl__dhead;

#define DL__DBLK 16   /* positions per block of the delta stream */
#define DL__DHMAX 512 /* largest head dim of a delta cache */

/* Completed block b's d / 4 quad masks (quad layout), stored where its element masks
 * would be. */
static inline const uint64_t *dl__qmask(const dl__dhead *h, int d, int b)
{
    return (const uint64_t *)(const void *)(h->emask + (size_t)b * d);
}

/* Number of values stored before position t (= where t's values start, counting the
 * stream as if it were position-major); nfull = completed blocks. */
static inline uint32_t dl__delta_off(const dl__dhead *h, int d, int mb, int nfull, int t)
{
    int b = t / DL__DBLK, j = t % DL__DBLK;
    uint32_t o = h->blk[b];
    if (!j)
        return o;
    if (b < nfull && h->quad) {
        const uint64_t *qm = dl__qmask(h, d, b);
        uint64_t below = (1ull << 4 * j) - 1;
        for (int q = 0; q < d / 4; q++)
            o += (uint32_t)__builtin_popcountll(qm[q] & below);
    } else if (b < nfull) {
        const uint16_t *em = h->emask + (size_t)b * d;
        unsigned below = (1u << j) - 1;
        for (int e = 0; e < d; e++)
            o += (uint32_t)__builtin_popcount(em[e] & below);
    } else {
        for (int i = 0; i < j * mb; i++)
            o += (uint32_t)__builtin_popcount(h->smask[i]);
    }
    return o;
}

/* 8-bit deltas (vb 1): a stored value is n * 2^x, n an integer in [-127, 127] (int8 in
 * val) and x the exponent of its position (pexp[t], one per position and head): the
 * smallest x in [DL__XMIN, DL__XMAX] with 127 * 2^x >= the position's largest |value|.
 * n * 2^x is exact as an fp16 and as a float, so the open block's fp16 staging, the rows
 * of dl__dblock_rows and the references all hold the same numbers. Why one scale per
 * position: a decode kernel scores 16 positions per vector, and the integer products
 * n * q summed over the elements of a position need one factor per lane. */
#define DL__XMIN (-24) /* 2^-24: fp16's smallest step */
#define DL__XMAX 8     /* 127 * 2^8 < 65504 */

/* 2^x as a float (x in [-126, 127]). */
static inline float dl__pow2f(int x)
{
    uint32_t b = (uint32_t)(x + 127) << 23;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}

/* The exponent of a position whose largest |value| is mx (>= 0). mx in [2^e, 2^(e+1)):
 * 127 * 2^(e-6) = 1.984375 * 2^e is enough unless mx's significand is above 1.984375
 * (mantissa bits above 0x7E0000). */
static inline int dl__i8_exp(float mx)
{
    uint32_t b;
    __builtin_memcpy(&b, &mx, 4);
    int e = (int)(b >> 23) - 127, x = e - 6 + ((b & 0x7FFFFFu) > 0x7E0000u);
    return b < 0x00800000u || x < DL__XMIN ? DL__XMIN : x > DL__XMAX ? DL__XMAX : x;
}

/* v stored at exponent x: n = v / 2^x rounded to the nearest integer (ties to even),
 * clamped to [-127, 127]; returns n * 2^x. */
static inline float dl__i8_round(float v, int x)
{
    float y = v * dl__pow2f(-x);
    y = y > 127.0f ? 127.0f : y < -127.0f ? -127.0f : y;
    /* |y| <= 127: the add rounds |y| to an integer; the sign (of a zero too) is kept */
    y = __builtin_copysignf((__builtin_fabsf(y) + 0x1.8p23f) - 0x1.8p23f, y);
    return y * dl__pow2f(x);
}

/* The 8-bit value n stored for position t. */
static inline float dl__i8_value(const dl__dhead *h, int t, int8_t n)
{
    return (float)n * dl__pow2f(h->pexp[t]);
}

/* Completed block b back to rows: mrow [16][mb] masks, vrow the values row after row.
 * Returns the number of values. */
static inline int dl__dblock_rows(const dl__dhead *h, int d, int mb, int b, uint8_t *mrow,
                                  dl_fp16 *vrow)
{
    const uint16_t *em = h->emask + (size_t)b * d;
    const uint8_t *v = h->val + (size_t)h->blk[b] * h->vb;
    int at[DL__DBLK + 1] = { 0 };
    if (h->quad) { /* 8-bit; for each position the elements come in order */
        const uint64_t *qm = dl__qmask(h, d, b);
        for (int q = 0; q < d / 4; q++)
            for (uint64_t x = qm[q]; x; x &= x - 1)
                at[(__builtin_ctzll(x) >> 2) + 1]++;
        for (int j = 0; j < DL__DBLK; j++)
            at[j + 1] += at[j];
        int total = at[DL__DBLK];
        __builtin_memset(mrow, 0, (size_t)DL__DBLK * mb);
        for (int q = 0; q < d / 4; q++)
            for (uint64_t x = qm[q]; x; x &= x - 1) {
                int bit = __builtin_ctzll(x), j = bit >> 2, e = 4 * q + (bit & 3);
                vrow[at[j]++] = dl_f32_to_fp16(dl__i8_value(h, b * DL__DBLK + j, (int8_t)*v++));
                mrow[j * mb + (e >> 3)] |= (uint8_t)(1u << (e & 7));
            }
        return total;
    }
    for (int e = 0; e < d; e++)
        for (unsigned x = em[e]; x; x &= x - 1)
            at[__builtin_ctz(x) + 1]++;
    for (int j = 0; j < DL__DBLK; j++)
        at[j + 1] += at[j];
    int total = at[DL__DBLK];
    __builtin_memset(mrow, 0, (size_t)DL__DBLK * mb);
    for (int e = 0; e < d; e++)
        for (unsigned x = em[e]; x; x &= x - 1) {
            int j = __builtin_ctz(x);
            dl_fp16 hv;
            if (h->vb == 1)
                hv = dl_f32_to_fp16(dl__i8_value(h, b * DL__DBLK + j, (int8_t)*v++));
            else
                __builtin_memcpy(&hv, v, 2), v += 2;
            vrow[at[j]++] = hv;
            mrow[j * mb + (e >> 3)] |= (uint8_t)(1u << (e & 7));
        }
    return total;
}

/* Reads the delta stream position by position as rows (a mask of mb bytes, then the
 * position's stored values in element order), whatever the layout of its block. Any
 * order of positions works; forward within a block is cheapest. */
typedef struct dl__drows {
    int b;               /* block held, -1: none */
    int tn;              /* position whose values vp points at */
    const uint8_t *mrow; /* [16][mb] masks of block b */
    const dl_fp16 *vp;
    uint8_t mbuf[DL__DBLK * DL__DHMAX / 8];
    dl_fp16 vbuf[DL__DBLK * DL__DHMAX + 64]; /* +64: vector loads may read past the end */
} dl__drows;

static inline void dl__drows_init(dl__drows *c) { c->b = -1; }

/* Position t's first value; *m = its mask. */
static inline const dl_fp16 *dl__drow(dl__drows *c, const dl__dhead *h, int d, int mb,
                                      int nfull, int t, const uint8_t **m)
{
    int b = t / DL__DBLK;
    if (b != c->b || t < c->tn) {
        if (b != c->b && b < nfull) {
            dl__dblock_rows(h, d, mb, b, c->mbuf, c->vbuf);
            c->mrow = c->mbuf;
        } else if (b != c->b) {
            c->mrow = h->smask;
        }
        c->vp = b < nfull ? c->vbuf : h->sval;
        c->b = b;
        c->tn = b * DL__DBLK;
    }
    for (; c->tn < t; c->tn++)
        for (int i = 0; i < mb; i++)
            c->vp += __builtin_popcount(c->mrow[(c->tn % DL__DBLK) * mb + i]);
    *m = c->mrow + (t % DL__DBLK) * mb;
    return c->vp;
}

/* Where a unit's exact keys come from, and its delta stream. */
typedef struct dl__dkeys {
    int d;              /* head dim */
    int mb;             /* mask bytes per position */
    int sink;           /* positions < sink: exact from sinkk */
    int p0;             /* first position of this call; >= p0: from kin */
    int ring_cap;       /* older exact keys: ring slot t % ring_cap */
    int nfull;          /* completed (element-major) blocks of the delta stream */
    int kstride;        /* floats between consecutive positions in kin */
    const float *kin;   /* keys of this call for this KV head (row t - p0) */
    const dl__dhead *h; /* the head store (delta stream, ring, sink, V) */
    const dl_fp16 *kdense; /* dense-baseline only: fp16 keys [t][d], else NULL */
} dl__dkeys;

static inline const dl_fp16 *dl__krow(dl__drows *c, const dl__dkeys *k, int t,
                                      const uint8_t **m)
{
    return dl__drow(c, k->h, k->d, k->mb, k->nfull, t, m);
}

/* One unit of attention work.
 *   Qt  [d][rs] queries (pre-scaled by 1/sqrt(d)) transposed: row r is column r
 *   Q   [rows][d] the same queries row-major (for the few-row decode kernels)
 *   lo  [rows]  keys sink <= t < lo[r] are scored from the delta stream, the others
 *               exactly; lo[r] == 0 means all exact. Nondecreasing in r.
 *   hi  [rows]  last key (the query's own position). Nondecreasing in r.
 *   st  [hi[rows-1] + 1][rs] scores, then probabilities
 *   r   [rs]    running sums R_r
 *   aux [rs]    kernel scratch
 *   acc [rows][d] output accumulators */
typedef struct dl__dunit {
    const dl__dkeys *k;
    int rows, rs;
    const float *Qt, *Q;
    const int32_t *lo, *hi;
    float *st, *r, *aux, *acc;
    /* The head's completed blocks decoded once for the whole call (dl__dops.predecode),
     * or NULL: key t's stored values are poff/pval[pkst[t] .. pkst[t + 1]). */
    const int32_t *pkst, *poff;
    const float *pval;
} dl__dunit;

/* The per-ISA kernels. scores fills u->st for all t <= hi[rows-1] (causally masked
 * entries -inf); softmax_pv turns them into acc rows normalised by the softmax sum. */
typedef struct dl__dops {
    void (*scores)(const dl__dunit *u);
    void (*scores_dense)(const dl__dunit *u); /* every key exact, from k->kdense */
    void (*softmax_pv)(const dl__dunit *u);
    /* Decode units (every row has the same lo and hi, rows <= DL__GROUP_ROWS, d <= 256),
     * fused: scores, online softmax and P.V in blocks of keys, acc normalised; st, r and
     * aux are not used. dense as for scores_dense. NULL: not available for this ISA. */
    void (*attend_group)(const dl__dunit *u, int dense);
    /* Prefill units (rows >= 16, rs <= wide_max_rs, d <= wide_max_d), fused the same way:
     * keys in blocks, online softmax, P.V per block; acc normalised, st not used (r and
     * aux may be). NULL: not available for this ISA (scores + softmax_pv instead). */
    void (*attend_wide)(const dl__dunit *u, int dense);
    int wide_max_rs, wide_max_d;
    /* The theta bisection's simulation of the 8-bit closed-loop encoder (delta.c,
     * simulate_zeros / encode_pos8), bit for bit: n keys of d elements (row stride ks)
     * against the references r (updated), element e stored when |k - r| * w[e] > theta, r
     * advanced by δ - copysign(pw[e], δ) (pw: delta.c's lag_pulls) rounded at the
     * position's exponent (dl__i8_exp, dl__i8_round). Returns the elements left zero.
     * NULL: the scalar loop. */
    uint64_t (*sim_zeros)(const float *k, size_t ks, int n, int d, float *r, const float *w,
                          float theta, const float *pw);
    /* The same encoder step for one key, storing: sets bit e of mask[d / 8] (zeroed by the
     * caller), appends the stored values as fp16 (exact) to val in element order and the
     * exponent to *xo; r is advanced. Returns the values stored. NULL: the scalar loop. */
    int (*encode8)(const float *k, int d, float *r, const float *w, float theta,
                   const float *pw, uint8_t *mask, dl_fp16 *val, int8_t *xo);
    /* For the fused prefill kernel: completed blocks 0 .. nblk-1 of a head decoded into
     * (offset e * rs + lane of Q^T, fp32 value) pairs, key by key: key t's are at
     * [kst[t], kst[t + 1]) (kst[0] = base). off / val need room for the head's stored
     * values + 16. NULL: each unit decodes the blocks itself. */
    void (*predecode)(const dl__dhead *h, int d, int rs, int nblk, int32_t base,
                      int32_t *kst, int32_t *off, float *val);
    /* Nonzero when this CPU runs the quad layout's kernels (see the top). NULL: never. */
    int (*has_quad)(void);
} dl__dops;

#define DL__GROUP_ROWS 16

extern const dl__dops dl__dops_scalar;
extern const dl__dops dl__dops_avx2;
extern const dl__dops dl__dops_avx512;

/* Where the exact key of position t lives: this call's fp32 key (returned), or the fp16
 * sink / ring key (NULL returned, *h16 set). */
static inline const float *dl__exact_src(const dl__dkeys *k, int t, const dl_fp16 **h16)
{
    if (t < k->sink) {
        *h16 = k->h->sinkk + (size_t)t * k->d;
        return NULL;
    }
    if (t >= k->p0)
        return k->kin + (size_t)(t - k->p0) * k->kstride;
    *h16 = k->h->ring + (size_t)(t % k->ring_cap) * k->d;
    return NULL;
}

/* The exact key of position t as fp32: a pointer into this call's keys, or the fp16 key
 * widened into buf (d floats). The vector kernels widen with F16C instead. */
static inline const float *dl__exact_key(const dl__dkeys *k, int t, float *buf)
{
    const dl_fp16 *h16 = NULL;
    const float *f = dl__exact_src(k, t, &h16);
    if (f)
        return f;
    for (int e = 0; e < k->d; e++)
        buf[e] = dl_fp16_to_f32(h16[e]);
    return buf;
}

/* Dense baseline over fp16 K/V laid out [kv][n_ctx][d] (the bench's comparison), run
 * through the same units, softmax and P.V as delta attention; c gives the shape and the
 * scratch. Queries at positions p0..p0+n-1. */
int dl__delta_dense_attention(dl_delta_cache *c, dl_pool *pool, int n_head, const dl_fp16 *kc,
                              const dl_fp16 *vc, int p0, int n, const float *q, float *out);

/* A head store (for tests and the bench): layer l, KV head g. */
const dl__dhead *dl__delta_head(const dl_delta_cache *c, int layer, int g);
int dl__delta_ring_cap(const dl_delta_cache *c);
/* Channel weights w[d] of layer l, KV head g used by the last call: element e of Δk is
 * stored when |δ_e| * w[e] > theta (see delta.c). */
const float *dl__delta_key_weights(const dl_delta_cache *c, int layer, int g);

/* Test-only oracle (spec section 3). A cache created while the mode is nonzero also keeps
 * every exact key (fp32), every V (fp16-rounded, as stored) and k̂ from its own closed-loop
 * encoder, and computes attention from them densely in double: key t is exact inside the
 * window / sink and k̂_t outside, by the same boundaries lo as the kernels. Mode 1: the
 * oracle's output replaces the kernels' (a model run "with the oracle"); mode 2: the
 * kernels' output is kept and the largest |kernel - oracle| element seen is recorded.
 * Costs O(n^2) per call and 12 bytes per key element; tests only, not thread-safe. */
void dl__delta_oracle_mode(int mode);
/* Largest |kernel - oracle| output element since the last dl__delta_oracle_mode(). */
double dl__delta_oracle_err(void);

/* Bench hook: while on, the time each attention unit spends in the score product (the
 * scores / scores_dense kernel alone, summed over threads) is added up; turning it on
 * resets the sum. Not for concurrent caches. */
void dl__delta_time_scores(int on);
uint64_t dl__delta_score_ns(void);

/* Kernels that time their own score phase (the fused decode kernel) add to the bench's
 * sum while dl__delta_timing is set (dl__delta_time_scores). */
extern int dl__delta_timing;
uint64_t dl__delta_now_ns(void);
void dl__delta_add_score_ns(uint64_t ns);

/* Test hook: 0 keeps caches created from now on element-major (default 1: the quad layout
 * where the kernels have it). */
void dl__delta_quad_allow(int on);

/* The kernels in use for head dim d (AVX-512 needs d % 16 == 0, AVX2 d % 8 == 0). */
const dl__dops *dl__delta_ops(int d);

#endif
