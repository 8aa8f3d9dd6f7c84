/* model.h — a llama-family model loaded from GGUF, its sequences and the forward pass.
 *
 * Objects:
 *   dl_model  weights (memory-mapped), hyper-parameters, tokenizer. Read-only once loaded,
 *             shared by every context and sequence.
 *   dl_ctx    scratch activations and the thread pool for running forward passes; one per
 *             worker thread. Sized at create time; a forward pass does not allocate.
 *   dl_seq    one sequence's state: its K/V cache (dense, or DeltaLLM's delta cache) and
 *             length. Sessions keep these between requests.
 *
 * dl_forward() runs a batch of sequences through the network at once: each item gives a
 * sequence and the new tokens to append (a prompt chunk when prefilling, one token when
 * decoding); all items' tokens share the weight reads of every matmul (continuous
 * batching), and attention runs per sequence over its own cache.
 */
#ifndef DL_MODEL_H
#define DL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "gguf.h"
#include "pool.h"
#include "tokenizer.h"

typedef struct dl_hparams {
    char arch[32];        /* general.architecture */
    char name[64];        /* general.name, or "" */
    int32_t n_layer;
    int32_t n_embd;       /* model width */
    int32_t n_head;       /* query heads */
    int32_t n_head_kv;    /* key/value heads (grouped-query attention) */
    int32_t head_dim;     /* n_embd / n_head unless the file says otherwise */
    int32_t n_ff;         /* feed-forward width */
    int32_t n_vocab;
    int32_t n_ctx_train;  /* context length the model was trained for */
    float rms_eps;
    float rope_base;
    int tied_output;      /* output head shares the token embedding */
    uint32_t weight_type; /* type of most matmul weights (for display) */
    int64_t n_params;
} dl_hparams;

typedef struct dl_model dl_model;
typedef struct dl_ctx dl_ctx;
typedef struct dl_seq dl_seq;

int dl_model_load(const char *path, dl_model **out, char *err, size_t errlen);
void dl_model_free(dl_model *m);
const dl_hparams *dl_model_hparams(const dl_model *m);
const dl_tokenizer *dl_model_tokenizer(const dl_model *m);
const dl_gguf *dl_model_gguf(const dl_model *m);
size_t dl_model_weight_bytes(const dl_model *m);   /* bytes of tensor data mapped */
/* Bytes of weights the kernels repacked at load for their fast path (kernels.h
 * dl_weight_prepare); the mapped originals of those are then not read by matmuls. */
size_t dl_model_packed_bytes(const dl_model *m);
const char *dl_model_chat_template(const dl_model *m); /* NUL-terminated copy, or NULL */
/* Bytes one token of context costs in a dense fp16 K+V cache. */
size_t dl_model_kv_bytes_per_token(const dl_model *m);

/* max_tokens: most tokens one dl_forward call may carry (all items together);
 * max_ctx: longest sequence it will see; n_threads: pool size (>= 1). */
dl_ctx *dl_ctx_create(const dl_model *m, int max_tokens, int max_ctx, int n_threads,
                      char *err, size_t errlen);
void dl_ctx_free(dl_ctx *c);
size_t dl_ctx_bytes(const dl_ctx *c);
int dl_ctx_max_tokens(const dl_ctx *c);
dl_pool *dl_ctx_pool(dl_ctx *c);           /* its thread pool (benchmarks share it) */

/* delta may be NULL (dense attention). n_ctx: the most tokens this sequence may hold. */
dl_seq *dl_seq_create(const dl_model *m, int n_ctx, const dl_delta_params *delta, char *err,
                      size_t errlen);
void dl_seq_free(dl_seq *s);
int dl_seq_len(const dl_seq *s);            /* tokens in the cache */
int dl_seq_n_ctx(const dl_seq *s);
/* Drop cached tokens from position n on (prefix reuse). */
int dl_seq_truncate(dl_seq *s, int n);
size_t dl_seq_bytes(const dl_seq *s);       /* memory its caches hold now */
/* DeltaLLM statistics, or NULL for a dense sequence. */
const dl_delta_stats *dl_seq_delta_stats(const dl_seq *s);
/* Per layer ([0] prefill, [1] decode); NULL without delta attention or for a bad layer. */
const dl_delta_stage_stats *dl_seq_delta_layer_stats(const dl_seq *s, int layer);
/* The delta cache (NULL for a dense sequence), for the finer figures of delta.h. */
const dl_delta_cache *dl_seq_delta_cache(const dl_seq *s);
const dl_delta_params *dl_seq_delta_params(const dl_seq *s);

typedef struct dl_batch_item {
    dl_seq *seq;
    const int32_t *tokens;
    int n_tokens;
    float *logits;  /* out: n_vocab floats for the last token, or n_tokens x n_vocab when
                       all_logits; NULL when no logits are wanted (a prefill chunk) */
    int all_logits;
} dl_batch_item;

/* Append every item's tokens to its sequence and compute logits. The items must be
 * distinct sequences, each with room (len + n_tokens <= n_ctx), and the total token count
 * at most the ctx's max_tokens. Returns 0, or a negative code with a message. */
int dl_forward(dl_ctx *c, dl_batch_item *items, int n_items, char *err, size_t errlen);

#endif
