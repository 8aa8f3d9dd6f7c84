/* metrics.h — counters, gauges and histograms, rendered as Prometheus text (version 0.0.4).
 * Names use base units (seconds, bytes) and no colons. All updates take one lock, so any
 * thread may record. */
#ifndef DL_METRICS_H
#define DL_METRICS_H

#include <stdint.h>

#include "delta.h"
#include "sbuf.h"

enum dl_endpoint {
    DL_EP_COMPLETIONS, DL_EP_CHAT, DL_EP_MODELS, DL_EP_HEALTH, DL_EP_READY, DL_EP_METRICS,
    DL_EP_TOKENIZE, DL_EP_DETOKENIZE, DL_EP_SESSIONS, DL_EP_OTHER, DL_EP_COUNT
};
enum dl_reject {
    DL_REJ_QUEUE_FULL, DL_REJ_MEMORY, DL_REJ_NOT_READY, DL_REJ_DRAINING, DL_REJ_UNAUTHORIZED,
    DL_REJ_BODY_TOO_LARGE, DL_REJ_INVALID, DL_REJ_NOT_FOUND, DL_REJ_METHOD, DL_REJ_COUNT
};
enum dl_cancel { DL_CANCEL_DISCONNECT, DL_CANCEL_TIMEOUT, DL_CANCEL_SHUTDOWN, DL_CANCEL_COUNT };
enum dl_hist {
    DL_H_TTFT, DL_H_ITL, DL_H_E2E, DL_H_QUEUE, DL_H_PROMPT_TOK, DL_H_GEN_TOK, DL_H_ATTN_SPARSITY,
    DL_H_COUNT
};

typedef struct dl_metrics dl_metrics;

dl_metrics *dl_metrics_create(const char *model_name);
void dl_metrics_free(dl_metrics *m);

void dl_metrics_request(dl_metrics *m, int endpoint, int status);
void dl_metrics_reject(dl_metrics *m, int reason);
void dl_metrics_cancel(dl_metrics *m, int reason);
void dl_metrics_observe(dl_metrics *m, int hist, double v);
void dl_metrics_tokens(dl_metrics *m, uint64_t prompt, uint64_t generated, uint64_t cached);
void dl_metrics_prefix(dl_metrics *m, int hit);
/* One scheduler step: a forward pass that ran prefill_tokens prompt tokens. */
void dl_metrics_pass(dl_metrics *m, uint64_t prefill_tokens);
void dl_metrics_sparsity(dl_metrics *m, const dl_delta_stage_stats st[2]);
/* The per-layer series need the model's layer count, which is known only once the model is
 * loaded (the metrics exist, and are served, before that): the worker calls this once,
 * before it reports ready, so that every layer's series is there, at zero, from then on.
 * 0, -EINVAL for n_layer < 1, -ENOMEM. Calling it again starts the per-layer counters
 * over. */
int dl_metrics_set_layers(dl_metrics *m, int n_layer);
/* One request's per-layer counters: st[2 * layer + stage], stage 0 prefill, 1 decode, for
 * n_layer layers (layers the metrics were not set up for are ignored). */
void dl_metrics_layer_sparsity(dl_metrics *m, const dl_delta_stage_stats *st, int n_layer);
void dl_metrics_set_model(dl_metrics *m, const char *model_name);
/* Gauges, set by the scheduler when asked. */
void dl_metrics_gauges(dl_metrics *m, int running, int waiting, uint64_t cache_bytes,
                       int sessions, int cache_entries, uint64_t memory_used,
                       uint64_t memory_budget);

void dl_metrics_render(dl_metrics *m, dl_sbuf *out);

#endif
