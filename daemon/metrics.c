#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 16

typedef struct hist {
    const char *name, *help;
    int n;                        /* finite bounds */
    double bounds[MAX_BUCKETS];
    uint64_t counts[MAX_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    double sum;
    uint64_t count;
} hist;

struct dl_metrics {
    pthread_mutex_t lock;
    char model[256];
    uint64_t requests[DL_EP_COUNT][600];
    uint64_t rejects[DL_REJ_COUNT];
    uint64_t cancels[DL_CANCEL_COUNT];
    hist h[DL_H_COUNT];
    uint64_t prompt_tokens, gen_tokens, cached_tokens;
    uint64_t passes, prefill_tokens;
    uint64_t prefix_hits, prefix_queries;
    dl_delta_stage_stats sp[2];
    int n_layer;                  /* layers of the loaded model; 0 until it is known */
    dl_delta_stage_stats *layer;  /* [n_layer x 2]: per layer, [prefill, decode] */
    int running, waiting, sessions, entries;
    uint64_t cache_bytes, mem_used, mem_budget;
};

static const char *ep_names[DL_EP_COUNT] = {
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics",
    "/tokenize", "/detokenize", "/v1/sessions", "other"};
static const char *rej_names[DL_REJ_COUNT] = {
    "queue_full", "memory_budget", "not_ready", "draining", "unauthorized",
    "body_too_large", "invalid_request", "not_found", "method_not_allowed"};
static const char *cancel_names[DL_CANCEL_COUNT] = {"disconnect", "timeout", "shutdown"};

static void hist_init(hist *h, const char *name, const char *help, const double *b, int n)
{
    h->name = name;
    h->help = help;
    h->n = n;
    memcpy(h->bounds, b, sizeof(double) * (size_t)n);
}

dl_metrics *dl_metrics_create(const char *model_name)
{
    static const double lat[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    static const double itl[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    static const double tok[] = {1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    static const double frac[] = {0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1};
    dl_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->model, sizeof m->model, "%s", model_name ? model_name : "");
    hist_init(&m->h[DL_H_TTFT], "deltallm_time_to_first_token_seconds",
              "Time from request arrival to its first generated token.", lat, 13);
    hist_init(&m->h[DL_H_ITL], "deltallm_inter_token_latency_seconds",
              "Time between consecutive generated tokens of one sequence.", itl, 11);
    hist_init(&m->h[DL_H_E2E], "deltallm_request_duration_seconds",
              "End-to-end generation request latency.", lat, 13);
    hist_init(&m->h[DL_H_QUEUE], "deltallm_queue_time_seconds",
              "Time a request waited for a slot.", lat, 13);
    hist_init(&m->h[DL_H_PROMPT_TOK], "deltallm_request_prompt_tokens",
              "Prompt tokens per request.", tok, 13);
    hist_init(&m->h[DL_H_GEN_TOK], "deltallm_request_generated_tokens",
              "Generated tokens per request.", tok, 13);
    hist_init(&m->h[DL_H_ATTN_SPARSITY], "deltallm_request_attention_sparsity_ratio",
              "Per-request DeltaLLM attention sparsity (prefill and decode together).", frac, 12);
    return m;
}

void dl_metrics_free(dl_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m->layer);
    free(m);
}

void dl_metrics_set_model(dl_metrics *m, const char *model_name)
{
    pthread_mutex_lock(&m->lock);
    snprintf(m->model, sizeof m->model, "%s", model_name);
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_request(dl_metrics *m, int ep, int status)
{
    if (ep < 0 || ep >= DL_EP_COUNT || status < 100 || status >= 600)
        return;
    pthread_mutex_lock(&m->lock);
    m->requests[ep][status]++;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_reject(dl_metrics *m, int r)
{
    if (r < 0 || r >= DL_REJ_COUNT)
        return;
    pthread_mutex_lock(&m->lock);
    m->rejects[r]++;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_cancel(dl_metrics *m, int r)
{
    if (r < 0 || r >= DL_CANCEL_COUNT)
        return;
    pthread_mutex_lock(&m->lock);
    m->cancels[r]++;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_observe(dl_metrics *m, int which, double v)
{
    pthread_mutex_lock(&m->lock);
    hist *h = &m->h[which];
    int b = 0;
    while (b < h->n && v > h->bounds[b])
        b++;
    h->counts[b]++;
    h->sum += v;
    h->count++;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_tokens(dl_metrics *m, uint64_t prompt, uint64_t generated, uint64_t cached)
{
    pthread_mutex_lock(&m->lock);
    m->prompt_tokens += prompt;
    m->gen_tokens += generated;
    m->cached_tokens += cached;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_pass(dl_metrics *m, uint64_t prefill_tokens)
{
    pthread_mutex_lock(&m->lock);
    m->passes++;
    m->prefill_tokens += prefill_tokens;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_prefix(dl_metrics *m, int hit)
{
    pthread_mutex_lock(&m->lock);
    m->prefix_queries++;
    m->prefix_hits += hit != 0;
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_sparsity(dl_metrics *m, const dl_delta_stage_stats st[2])
{
    pthread_mutex_lock(&m->lock);
    dl_delta_stats_add(&m->sp[0], &st[0]);
    dl_delta_stats_add(&m->sp[1], &st[1]);
    pthread_mutex_unlock(&m->lock);
}

int dl_metrics_set_layers(dl_metrics *m, int n_layer)
{
    if (n_layer < 1)
        return -EINVAL;
    dl_delta_stage_stats *l = calloc((size_t)n_layer * 2, sizeof *l);
    if (!l)
        return -ENOMEM;
    pthread_mutex_lock(&m->lock);
    free(m->layer);
    m->layer = l;
    m->n_layer = n_layer;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

void dl_metrics_layer_sparsity(dl_metrics *m, const dl_delta_stage_stats *st, int n_layer)
{
    pthread_mutex_lock(&m->lock);
    int n = n_layer < m->n_layer ? n_layer : m->n_layer;
    for (int i = 0; i < 2 * n; i++)
        dl_delta_stats_add(&m->layer[i], &st[i]);
    pthread_mutex_unlock(&m->lock);
}

void dl_metrics_gauges(dl_metrics *m, int running, int waiting, uint64_t cache_bytes,
                       int sessions, int entries, uint64_t used, uint64_t budget)
{
    pthread_mutex_lock(&m->lock);
    m->running = running;
    m->waiting = waiting;
    m->cache_bytes = cache_bytes;
    m->sessions = sessions;
    m->entries = entries;
    m->mem_used = used;
    m->mem_budget = budget;
    pthread_mutex_unlock(&m->lock);
}

static void head(dl_sbuf *o, const char *name, const char *type, const char *help)
{
    dl_sbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values we emit are fixed strings or the model name; escape the model name. */
static void label_escaped(dl_sbuf *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            dl_sbuf_printf(o, "\\%c", *s);
        else if (*s == '\n')
            dl_sbuf_puts(o, "\\n");
        else
            dl_sbuf_add(o, s, 1);
    }
}

static uint64_t qk_skipped(const dl_delta_stage_stats *s)
{
    return s->qk_macs_dense > s->qk_macs_done ? s->qk_macs_dense - s->qk_macs_done : 0;
}

/* The per-layer counter families, in the order layer_value numbers them. */
static const struct {
    const char *name, *help;
} layer_fams[] = {
    {"deltallm_layer_delta_elements_total", "Delta-key elements produced, by layer and stage."},
    {"deltallm_layer_delta_zero_elements_total",
     "Delta-key elements that were zero, by layer and stage."},
    {"deltallm_layer_attention_score_entries_total", "Score entries, by layer and stage."},
    {"deltallm_layer_attention_exact_entries_total",
     "Score entries computed exactly (window / sink), by layer and stage."},
    {"deltallm_layer_attention_qk_macs_total",
     "q.k multiply-adds dense attention would do, by layer and stage (DeltaLLM sequences)."},
    {"deltallm_layer_attention_qk_macs_skipped_total",
     "q.k multiply-adds skipped by DeltaLLM, by layer and stage."},
};

static uint64_t layer_value(const dl_delta_stage_stats *st, int fam)
{
    switch (fam) {
    case 0: return st->delta_elems;
    case 1: return st->delta_zeros;
    case 2: return st->score_entries;
    case 3: return st->exact_entries;
    case 4: return st->qk_macs_dense;
    default: return qk_skipped(st);
    }
}

/* Every (layer, stage) pair, zeros included, so that a scraper sees the same set of series
 * from the first scrape after the model loaded on. */
static void render_layers(dl_sbuf *o, const dl_metrics *m)
{
    static const char *stage[2] = {"prefill", "decode"};
    if (!m->n_layer)
        return; /* no model yet */
    for (int f = 0; f < (int)(sizeof layer_fams / sizeof layer_fams[0]); f++) {
        head(o, layer_fams[f].name, "counter", layer_fams[f].help);
        for (int l = 0; l < m->n_layer; l++)
            for (int s = 0; s < 2; s++) {
                uint64_t v = layer_value(&m->layer[2 * l + s], f);
                dl_sbuf_printf(o, "%s{layer=\"%d\",stage=\"%s\"} %llu\n", layer_fams[f].name,
                               l, stage[s], (unsigned long long)v);
            }
    }
}

static void render_hist(dl_sbuf *o, const hist *h)
{
    head(o, h->name, "histogram", h->help);
    uint64_t cum = 0;
    for (int b = 0; b < h->n; b++) {
        cum += h->counts[b];
        dl_sbuf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[b],
                       (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    dl_sbuf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, (unsigned long long)cum);
    dl_sbuf_printf(o, "%s_sum %.9g\n%s_count %llu\n", h->name, h->sum, h->name,
                   (unsigned long long)h->count);
}

void dl_metrics_render(dl_metrics *m, dl_sbuf *o)
{
    static const char *stage[2] = {"prefill", "decode"};
    pthread_mutex_lock(&m->lock);
    head(o, "deltallm_build_info", "gauge", "Build information; always 1.");
    dl_sbuf_printf(o, "deltallm_build_info{version=\"0.1.0\",model=\"");
    label_escaped(o, m->model);
    dl_sbuf_puts(o, "\"} 1\n");

    head(o, "deltallm_http_requests_total", "counter", "HTTP requests by endpoint and status.");
    for (int e = 0; e < DL_EP_COUNT; e++)
        for (int s = 100; s < 600; s++)
            if (m->requests[e][s])
                dl_sbuf_printf(o, "deltallm_http_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                               ep_names[e], s, (unsigned long long)m->requests[e][s]);
    head(o, "deltallm_rejections_total", "counter", "Requests refused, by reason.");
    for (int r = 0; r < DL_REJ_COUNT; r++)
        dl_sbuf_printf(o, "deltallm_rejections_total{reason=\"%s\"} %llu\n", rej_names[r],
                       (unsigned long long)m->rejects[r]);
    head(o, "deltallm_cancellations_total", "counter", "Generations cancelled, by reason.");
    for (int r = 0; r < DL_CANCEL_COUNT; r++)
        dl_sbuf_printf(o, "deltallm_cancellations_total{reason=\"%s\"} %llu\n", cancel_names[r],
                       (unsigned long long)m->cancels[r]);

    head(o, "deltallm_requests_running", "gauge", "Sequences being generated.");
    dl_sbuf_printf(o, "deltallm_requests_running %d\n", m->running);
    head(o, "deltallm_requests_waiting", "gauge", "Requests queued for a slot.");
    dl_sbuf_printf(o, "deltallm_requests_waiting %d\n", m->waiting);
    head(o, "deltallm_cache_bytes", "gauge", "Bytes held by KV / delta caches.");
    dl_sbuf_printf(o, "deltallm_cache_bytes %llu\n", (unsigned long long)m->cache_bytes);
    head(o, "deltallm_sessions", "gauge", "Named sessions kept.");
    dl_sbuf_printf(o, "deltallm_sessions %d\n", m->sessions);
    head(o, "deltallm_cache_entries", "gauge", "Cached sequences (sessions and prefix cache).");
    dl_sbuf_printf(o, "deltallm_cache_entries %d\n", m->entries);
    head(o, "deltallm_memory_used_bytes", "gauge", "Weights + scratch + reserved caches.");
    dl_sbuf_printf(o, "deltallm_memory_used_bytes %llu\n", (unsigned long long)m->mem_used);
    head(o, "deltallm_memory_budget_bytes", "gauge", "The --memory-budget.");
    dl_sbuf_printf(o, "deltallm_memory_budget_bytes %llu\n", (unsigned long long)m->mem_budget);

    head(o, "deltallm_prompt_tokens_total", "counter", "Prompt tokens received.");
    dl_sbuf_printf(o, "deltallm_prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    head(o, "deltallm_generated_tokens_total", "counter", "Tokens generated.");
    dl_sbuf_printf(o, "deltallm_generated_tokens_total %llu\n", (unsigned long long)m->gen_tokens);
    head(o, "deltallm_forward_passes_total", "counter", "Batched forward passes (scheduler steps).");
    dl_sbuf_printf(o, "deltallm_forward_passes_total %llu\n", (unsigned long long)m->passes);
    head(o, "deltallm_prefill_tokens_total", "counter", "Prompt tokens run through the model.");
    dl_sbuf_printf(o, "deltallm_prefill_tokens_total %llu\n",
                   (unsigned long long)m->prefill_tokens);
    head(o, "deltallm_cached_prompt_tokens_total", "counter", "Prompt tokens reused from cache.");
    dl_sbuf_printf(o, "deltallm_cached_prompt_tokens_total %llu\n",
                   (unsigned long long)m->cached_tokens);
    head(o, "deltallm_prefix_cache_queries_total", "counter", "Prefix-cache lookups.");
    dl_sbuf_printf(o, "deltallm_prefix_cache_queries_total %llu\n",
                   (unsigned long long)m->prefix_queries);
    head(o, "deltallm_prefix_cache_hits_total", "counter", "Lookups that reused >= 1 token.");
    dl_sbuf_printf(o, "deltallm_prefix_cache_hits_total %llu\n", (unsigned long long)m->prefix_hits);

    head(o, "deltallm_attention_qk_macs_total", "counter",
         "q.k multiply-adds dense attention would do, by stage (DeltaLLM sequences).");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_attention_qk_macs_total{stage=\"%s\"} %llu\n", stage[s],
                       (unsigned long long)m->sp[s].qk_macs_dense);
    head(o, "deltallm_attention_qk_macs_skipped_total", "counter",
         "q.k multiply-adds skipped by DeltaLLM, by stage.");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_attention_qk_macs_skipped_total{stage=\"%s\"} %llu\n",
                       stage[s], (unsigned long long)qk_skipped(&m->sp[s]));
    head(o, "deltallm_delta_elements_total", "counter", "Delta-key elements produced, by stage.");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_delta_elements_total{stage=\"%s\"} %llu\n", stage[s],
                       (unsigned long long)m->sp[s].delta_elems);
    head(o, "deltallm_delta_zero_elements_total", "counter", "Delta-key elements that were zero.");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_delta_zero_elements_total{stage=\"%s\"} %llu\n", stage[s],
                       (unsigned long long)m->sp[s].delta_zeros);
    head(o, "deltallm_attention_score_entries_total", "counter", "Score entries, by stage.");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_attention_score_entries_total{stage=\"%s\"} %llu\n", stage[s],
                       (unsigned long long)m->sp[s].score_entries);
    head(o, "deltallm_attention_exact_entries_total", "counter",
         "Score entries computed exactly (window / sink), by stage.");
    for (int s = 0; s < 2; s++)
        dl_sbuf_printf(o, "deltallm_attention_exact_entries_total{stage=\"%s\"} %llu\n", stage[s],
                       (unsigned long long)m->sp[s].exact_entries);
    render_layers(o, m);
    for (int i = 0; i < DL_H_COUNT; i++)
        render_hist(o, &m->h[i]);
    pthread_mutex_unlock(&m->lock);
}
