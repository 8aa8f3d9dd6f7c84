/* delta_impl.h — internal to DeltaLLM attention: the cache layout and the per-ISA kernels.
 *
 * Per layer and KV head (a "head store"):
 *   ref   [d] fp32          reference state r_t after the last appended position
 *   mask  [n_ctx][mb] bits  bit e of position t set = element e of Δk_t is stored
 *   blk   [n_ctx / 16 + 1]  blk[b] = index in val of position 16b's first stored value
 *                           (the count stored before it); inside a block of 16 positions
 *                           the offset is blk plus the popcounts of the earlier masks —
 *                           0.25 bytes per position instead of a 4-byte offset each, and
 *                           the kernels, which sweep positions in order, just advance a
 *                           pointer by each mask's popcount
 *   val   fp16              the stored (nonzero) deltas, position after position
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
    uint8_t *mask;
    uint32_t *blk;
    dl_fp16 *val;
    dl_fp16 *ring;
    dl_fp16 *sinkk;
    dl_fp16 *v;
} dl__dhead;

/* Where a unit's exact keys come from, and its delta stream. */
typedef struct dl__dkeys {
    int d;              /* head dim */
    int mb;             /* mask bytes per position */
    int sink;           /* positions < sink: exact from sinkk */
    int p0;             /* first position of this call; >= p0: from kin */
    int ring_cap;       /* older exact keys: ring slot t % ring_cap */
    int kstride;        /* floats between consecutive positions in kin */
    const float *kin;   /* keys of this call for this KV head (row t - p0) */
    const dl__dhead *h; /* the head store (delta stream, ring, sink, V) */
    const dl_fp16 *kdense; /* dense-baseline only: fp16 keys [t][d], else NULL */
} dl__dkeys;

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
} dl__dops;

#define DL__GROUP_ROWS 16

extern const dl__dops dl__dops_scalar;
extern const dl__dops dl__dops_avx2;
extern const dl__dops dl__dops_avx512;

#define DL__DBLK 16 /* positions per stored offset */

/* Number of values stored before position t (= index of t's first value in val). */
static inline uint32_t dl__delta_off(const dl__dhead *h, int mb, int t)
{
    uint32_t o = h->blk[t / DL__DBLK];
    for (int u = t - t % DL__DBLK; u < t; u++)
        for (int i = 0; i < mb; i++)
            o += (uint32_t)__builtin_popcount(h->mask[(size_t)u * mb + i]);
    return o;
}

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

/* The kernels in use for head dim d (AVX-512 needs d % 16 == 0, AVX2 d % 8 == 0). */
const dl__dops *dl__delta_ops(int d);

#endif
