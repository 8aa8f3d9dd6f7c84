/* delta.h — DeltaLLM temporal-sparsity attention (../shared/DELTALLM.md).
 *
 * A dl_delta_cache replaces a sequence's dense K/V cache when delta attention is enabled:
 * per layer and KV head it keeps the fp32 reference state, the packed delta stream, the ring
 * of the last `window` exact keys and dense V. dl_delta_attention() appends n new tokens'
 * keys/values and computes the hybrid attention output for their queries.
 */
#ifndef DL_DELTA_H
#define DL_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "pool.h"

enum dl_delta_stage { DL_STAGE_PREFILL = 1, DL_STAGE_DECODE = 2, DL_STAGE_BOTH = 3 };
enum dl_prefill_mode { DL_PREFILL_SLIDING = 0, DL_PREFILL_BLOCK = 1 };

#define DL_DELTA_MAX_LAYER_OFFSETS 256 /* most layers a layer_offsets profile can name */

/* The per-sequence knobs. */
typedef struct dl_delta_params {
    int enabled;           /* 0: dense attention */
    float theta;           /* absolute threshold in key units; used when sparsity_target < 0 */
    float sparsity_target; /* in [0, 1): choose theta per layer to hit this element
                              sparsity; < 0 means "use theta" */
    int32_t window;        /* w: exact keys of the last w positions (>= 1) */
    int32_t prefill_window; /* sliding prefill: exact keys of the last positions for the
                               queries of a multi-token call (>= 0; 0 means `window`) */
    int32_t sink;          /* first `sink` positions always exact (>= 0) */
    int stages;            /* enum dl_delta_stage */
    int prefill_mode;      /* enum dl_prefill_mode */
    float block_frac;      /* block mode: block = round(n * block_frac) tokens, (0, 1] */
    float lag;             /* where a stored element leaves the reference: lag * theta / w_e
                              short of the key, towards the old reference, [0, 1]; 0 is the
                              spec's r = k (see delta.c) */
    int n_layer_offsets;   /* 0, or the model's layer count: sparsity_target + offset l is
                              layer l's target (clamped to [0, 0.99]); see delta.c */
    float layer_offsets[DL_DELTA_MAX_LAYER_OFFSETS]; /* each in [-1, 1] */
    int value_bits;        /* stored deltas: 8 (int8 with one power-of-two scale per
                              position; 0 means 8) or 16 (fp16). Either way
                              fp16 when every element is kept (theta 0 / target 0) */
} dl_delta_params;

/* Parse "a,b,c" (per-layer target offsets, each in [-1, 1]; "" or "none" clears them)
 * into p->layer_offsets / n_layer_offsets. 0, or -EINVAL with a message in err. */
int dl_delta_parse_offsets(const char *s, dl_delta_params *p, char *err, size_t errlen);

/* Defaults used by the CLI and daemon; see README for how they were chosen. */
void dl_delta_params_default(dl_delta_params *p);
/* 0 when valid; otherwise -EINVAL and a message naming the knob in err. */
int dl_delta_params_check(const dl_delta_params *p, char *err, size_t errlen);

/* Counters for one stage. All "macs" are q·k multiply-adds in the score product. */
typedef struct dl_delta_stage_stats {
    uint64_t delta_elems;   /* ΔK elements produced (positions x head_dim x kv heads x layers) */
    uint64_t delta_zeros;   /* of which zero */
    uint64_t score_entries; /* (query, key) score entries computed, per query head */
    uint64_t exact_entries; /* of which computed exactly (window / sink) */
    uint64_t qk_macs_dense; /* multiply-adds dense attention would do */
    uint64_t qk_macs_done;  /* multiply-adds actually done */
} dl_delta_stage_stats;

typedef struct dl_delta_stats {
    dl_delta_stage_stats stage[2]; /* [0] prefill, [1] decode */
    uint64_t k_cache_bytes;        /* bytes the K side holds now (ref + stream + ring) */
    uint64_t k_cache_dense_bytes;  /* what a dense fp16 K cache would hold */
    uint64_t v_cache_bytes;        /* dense V bytes */
} dl_delta_stats;

/* Derived figures (spec section 5), in [0, 1]. */
double dl_delta_element_sparsity(const dl_delta_stage_stats *s);
double dl_delta_attention_sparsity(const dl_delta_stage_stats *s);
double dl_delta_qk_skipped(const dl_delta_stage_stats *s);
void dl_delta_stats_add(dl_delta_stage_stats *acc, const dl_delta_stage_stats *s);

typedef struct dl_delta_cache dl_delta_cache;

/* Per-thread attention scratch (score matrix and query tiles), shared by every sequence a
 * worker runs so that it is not held once per session. Sized for contexts up to max_ctx,
 * head_dim, max_group query heads per KV head (n_head / n_head_kv) and pools of up to
 * n_threads threads: about n_threads x max_ctx x 16 floats. Use it from one forward pass
 * at a time. */
typedef struct dl_delta_scratch dl_delta_scratch;

dl_delta_scratch *dl_delta_scratch_create(int max_ctx, int head_dim, int max_group,
                                          int n_threads, char *err, size_t errlen);
void dl_delta_scratch_free(dl_delta_scratch *s);
size_t dl_delta_scratch_bytes(const dl_delta_scratch *s);

dl_delta_cache *dl_delta_cache_create(int n_layer, int n_head_kv, int head_dim, int n_ctx,
                                      const dl_delta_params *p, char *err, size_t errlen);
void dl_delta_cache_free(dl_delta_cache *c);
int dl_delta_cache_len(const dl_delta_cache *c);
/* Drop positions >= n (the reference state is rebuilt from the stored deltas). */
int dl_delta_cache_truncate(dl_delta_cache *c, int n);
const dl_delta_stats *dl_delta_cache_stats(const dl_delta_cache *c);
/* One layer's counters, [0] prefill and [1] decode (the stage totals above are their sums
 * over the layers); NULL for a layer out of range. Cumulative like the totals. */
const dl_delta_stage_stats *dl_delta_cache_layer_stats(const dl_delta_cache *c, int layer);
int dl_delta_cache_layers(const dl_delta_cache *c);
/* How alike the attention scores of neighbouring keys are, the premise of the method (a
 * stale key costs little only if k_t is close to k_(t-1) as the queries see it). Over the
 * keys of every multi-token call, with each head's last query q of the call and
 * s_t = q.k_t: *step_sq = Σ (s_t - s_(t-1))^2, *spread_sq = 2 Σ (s_t - mean)^2
 * (cumulative). 1 - step_sq / spread_sq is the scores' lag-1 autocorrelation along the
 * keys: near 1 for smooth keys, near 0 when neighbours are unrelated. -EINVAL for a bad
 * layer. */
int dl_delta_cache_score_change(const dl_delta_cache *c, int layer, double *step_sq,
                                double *spread_sq);
/* Cache data (reference, stream, ring, sink, V) plus the fallback scratch, which exists only
 * once dl_delta_attention ran with scr NULL. */
size_t dl_delta_cache_bytes(const dl_delta_cache *c);

/* Append n tokens at positions len..len+n-1 for one layer and compute attention.
 *   scr: shared scratch (see above); NULL makes the cache allocate its own on first use
 *        (n_ctx x 64 floats per pool thread, counted in dl_delta_cache_bytes)
 *   q:   n x (n_head * head_dim) post-RoPE queries
 *   k,v: n x (n_head_kv * head_dim) post-RoPE keys, values
 *   out: n x (n_head * head_dim)
 * is_prefill selects the stage for the knobs and statistics. The cache length advances
 * once the last layer (n_layer - 1) has been appended. Every layer of a token must be
 * appended with the same n. Returns 0; -EINVAL for a bad layer / n / n_head (n_head must
 * be a multiple of n_head_kv) or a scr too small for this call (head_dim, group, pool
 * size, or len + n > its max_ctx), -ENOSPC when len + n > n_ctx, -ENOMEM if the fallback
 * scratch cannot be allocated. Nothing is appended when it fails.
 * Storage: V dense fp16; exact keys (ring of window + 8 positions, sink) fp16; the delta
 * stream's values fp16 and its reference state fp32. */
int dl_delta_attention(dl_delta_cache *c, dl_delta_scratch *scr, dl_pool *pool, int layer,
                       int n_head, const float *q, const float *k, const float *v, int n,
                       int is_prefill, float *out);

/* The threshold the layer uses now (the fixed theta, or the one chosen for
 * sparsity_target; < 0 before the layer's first call). */
float dl_delta_cache_theta(const dl_delta_cache *c, int layer);

#endif
