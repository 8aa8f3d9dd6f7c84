/* attention.h — dense causal attention over a sequence's fp16 K/V cache.
 *
 * The cache of one layer is laid out [kv_head][position][head_dim] so that a head's keys
 * stream contiguously. Query head h reads KV head h / (n_head / n_kv) (grouped-query).
 * DeltaLLM's hybrid attention (delta.h) replaces this per sequence when enabled.
 */
#ifndef DL_ATTENTION_H
#define DL_ATTENTION_H

#include "pool.h"
#include "quant.h"

typedef struct dl_attn_shape {
    int n_head;    /* query heads */
    int n_kv;      /* key/value heads */
    int head_dim;
    int n_ctx;     /* positions per head in the cache (its stride) */
} dl_attn_shape;

/* Store n new keys/values (n x n_kv*head_dim floats) at positions pos0.. of one layer. */
void dl_kv_store(const dl_attn_shape *s, dl_fp16 *kc, dl_fp16 *vc, int pos0, int n,
                 const float *k, const float *v);

/* Outputs for n queries at positions pos0..pos0+n-1, each attending to keys 0..its own
 * position. q, out: n x n_head*head_dim. scratch: n_threads x (pos0 + n) floats at least. */
void dl_attn_dense(dl_pool *pool, const dl_attn_shape *s, const dl_fp16 *kc,
                   const dl_fp16 *vc, int pos0, int n, const float *q, float *out,
                   float *scratch);

#endif
