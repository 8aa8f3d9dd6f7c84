/* delta_bench.h — attention timing, dense fp16 KV vs DeltaLLM delta K, for `deltallm bench`.
 *
 * Synthetic, deterministic inputs: random-walk post-RoPE keys (each element takes a
 * N(0, 0.1) step per token from a N(0, 1) start), N(0, 1) queries and values. theta is the
 * one the engine picks for `sparsity_target` (element sparsity of the delta stream).
 * Prefill: one call over the whole context, one layer. Decode: one token at depth
 * ctx - 1, averaged over `layers` layers with separate caches so that the K/V working set
 * is that of a real multi-layer model (it leaves the CPU caches at long contexts).
 * Timings are wall-clock minima over the repetitions, in the current ISA.
 */
#ifndef DL_DELTA_BENCH_H
#define DL_DELTA_BENCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct dl_delta_bench_config {
    int ctx;               /* context length (keys) */
    int n_head, n_kv;      /* query / KV heads */
    int head_dim;
    float sparsity_target; /* in [0, 1) */
    int window, sink;
    int layers;            /* decode: layers to cycle through (>= 1) */
    int n_threads;         /* pool size (>= 1) */
    int reps;              /* repetitions per timing (>= 1) */
} dl_delta_bench_config;

typedef struct dl_delta_bench_result {
    float theta;                 /* chosen for the target */
    double element_sparsity;     /* measured, prefill */
    double attention_sparsity;   /* prefill, spec section 5 */
    double qk_skipped_prefill, qk_skipped_decode;
    double prefill_dense_ms, prefill_delta_ms;   /* incl. storing K/V (delta: encoding) */
    double decode_dense_us, decode_delta_us;     /* per layer and token, mean of the last 16 */
    double decode_engine_dense_us;               /* attention.c's dl_attn_dense, per layer */
    double prefill_engine_dense_ms;              /* dl_kv_store + dl_attn_dense, T queries */
    /* the score product alone (q.k for every key vs the delta accumulation): the score
     * phase of the fused kernels, timed inside them (dl__delta_time_scores) in runs of
     * their own */
    double prefill_dense_scores_ms, prefill_delta_scores_ms;
    double decode_dense_scores_us, decode_delta_scores_us;
    uint64_t k_bytes, k_dense_bytes, v_bytes;    /* one layer at ctx tokens */
} dl_delta_bench_result;

void dl_delta_bench_default(dl_delta_bench_config *cfg); /* 2048, 32/8 heads, 64, 0.6 */
/* 0, or a negative errno with a message. */
int dl_delta_bench(const dl_delta_bench_config *cfg, dl_delta_bench_result *out, char *err,
                   size_t errlen);

#endif
