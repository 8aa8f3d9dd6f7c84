/* worker.c — see worker.h. */
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* A cached sequence: a named session, an idle prefix-cache entry, or one in use. */
typedef struct entry {
    dl_seq *seq;
    int32_t *toks;        /* the tokens in seq, [cap] */
    int n_toks;
    int cap;              /* seq's n_ctx */
    char session[DL_SESSION_ID_LEN + 1]; /* "" for an anonymous prefix-cache entry */
    int busy;             /* a run uses it */
    double last_used;     /* monotonic seconds */
    size_t reserved;      /* bytes counted against the budget (cap x dense K/V per token) */
    size_t bytes;         /* dl_seq_bytes after the last step */
    dl_delta_params dp;   /* knobs it was created with (enabled = 0: dense) */
    struct entry *next;
} entry;

/* One choice being generated. */
typedef struct run {
    dl_job *job;
    dl_choice *ch;
    entry *e;
    const int32_t *prompt;
    int n_prompt;
    int n_fed;            /* prompt tokens in the sequence */
    int max_new;          /* tokens to generate at most */
    dl_sampler *smp;
    dl_utf8_stream u8;
    int32_t next_tok;     /* sampled, to be fed next step */
    int has_next;
    size_t emitted;       /* bytes of ch->text already streamed */
    double t_prefill0, t_first, t_last;
    int lead_done;        /* chat: the reply's first text has been seen (leading space dropped) */
    dl_delta_stage_stats base[2];
    dl_delta_stage_stats *lbase; /* [n_layer x 2]: per-layer counters at the start; NULL
                                    for a dense sequence */
    float *logits;        /* [n_vocab] */
    float *echo_logits;   /* [echo_cap x n_vocab] for prompt log-probs, or NULL */
    int echo_cap;
    int dead;             /* finished; removed from the array by reap() */
} run;

struct dl_sched {
    dl_sched_opts o;
    pthread_t th;
    int th_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state;
    char err[512];
    int stop, draining;
    dl_model *model;
    dl_ctx *ctx;
    const dl_tokenizer *tok;
    int n_vocab;
    int n_layer;
    size_t kvpt;          /* dense K+V bytes per token */
    uint64_t fixed;       /* weights + ctx scratch */
    dl_job *wait_head, *wait_tail;
    int n_waiting;
    run *runs;            /* [parallel] */
    int n_runs;
    entry *entries;
    dl_batch_item *items; /* [parallel] */
    uint64_t seed_ctr;
    double avg_job_s;     /* running average of job duration, for Retry-After */
    char scratch[1024];   /* token pieces */
    char u8out[1100];
};

double dl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void dl_sched_lock(dl_sched *s) { pthread_mutex_lock(&s->lock); }
void dl_sched_unlock(dl_sched *s) { pthread_mutex_unlock(&s->lock); }

/* ---- jobs ------------------------------------------------------------------------------ */

dl_job *dl_job_create(int n_choices)
{
    dl_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->choices = calloc((size_t)n_choices, sizeof *j->choices);
    if (!j->choices || dl_sbuf_init(&j->out, 1024)) {
        free(j->choices);
        free(j);
        return NULL;
    }
    j->n_choices = n_choices;
    for (int i = 0; i < n_choices; i++)
        if (dl_sbuf_init(&j->choices[i].text, 256)) {
            for (int k = 0; k < i; k++)
                dl_sbuf_free(&j->choices[k].text);
            dl_sbuf_free(&j->out);
            free(j->choices);
            free(j);
            return NULL;
        }
    j->refs = 1;
    return j;
}

static void job_free(dl_job *j)
{
    for (int i = 0; i < j->n_choices; i++) {
        dl_sbuf_free(&j->choices[i].text);
        free(j->choices[i].lp);
        free(j->choices[i].echo_lp);
        free(j->choices[i].layers);
    }
    for (int p = 0; p < j->n_prompts; p++)
        free(j->prompt_tok[p]);
    free(j->choices);
    dl_sbuf_free(&j->out);
    dl_request_free(&j->req);
    free(j);
}

static void job_unref_locked(dl_job *j)
{
    if (--j->refs == 0)
        job_free(j);
}

void dl_job_release(dl_sched *s, dl_job *j)
{
    if (!j)
        return;
    if (!s) {
        job_unref_locked(j);
        return;
    }
    pthread_mutex_lock(&s->lock);
    job_unref_locked(j);
    pthread_mutex_unlock(&s->lock);
}

/* The whole job ends without generating (over budget, cancelled while queued, ...). */
static void job_fail_locked(dl_sched *s, dl_job *j, int status, const char *type,
                            const char *msg)
{
    j->http_status = status;
    snprintf(j->errtype, sizeof j->errtype, "%s", type);
    snprintf(j->errmsg, sizeof j->errmsg, "%s", msg);
    j->done = 1;
    j->wake = 1;
    job_unref_locked(j); /* the worker's reference */
}

/* ---- cache entries --------------------------------------------------------------------- */

static uint64_t used_bytes(dl_sched *s)
{
    uint64_t u = s->fixed;
    for (entry *e = s->entries; e; e = e->next)
        u += e->reserved;
    return u;
}

static void entry_unlink_free(dl_sched *s, entry *e)
{
    for (entry **pp = &s->entries; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    dl_seq_free(e->seq);
    free(e->toks);
    free(e);
}

/* Evict the least recently used idle entry; 0 when there was none. */
static int evict_lru(dl_sched *s, int anonymous_only)
{
    entry *best = NULL;
    for (entry *e = s->entries; e; e = e->next)
        if (!e->busy && (!anonymous_only || !e->session[0]) &&
            (!best || e->last_used < best->last_used))
            best = e;
    if (!best)
        return 0;
    dl_log(DL_LOG_DEBUG, NULL, best->session, "evicting cached sequence (%d tokens)",
           best->n_toks);
    entry_unlink_free(s, best);
    return 1;
}

static entry *entry_new(dl_sched *s, int cap, const dl_delta_params *dp, const char *session,
                        char *err, size_t errlen)
{
    entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->toks = malloc(sizeof(int32_t) * (size_t)cap);
    e->seq = e->toks ? dl_seq_create(s->model, cap, dp->enabled ? dp : NULL, err, errlen) : NULL;
    if (!e->seq) {
        free(e->toks);
        free(e);
        return NULL;
    }
    e->cap = cap;
    e->dp = *dp;
    if (!dp->enabled)
        memset(&e->dp, 0, sizeof e->dp);
    e->reserved = (size_t)cap * s->kvpt;
    snprintf(e->session, sizeof e->session, "%s", session ? session : "");
    e->next = s->entries;
    s->entries = e;
    return e;
}

static int same_delta(const dl_delta_params *a, const dl_delta_params *b)
{
    if (!a->enabled && !b->enabled)
        return 1;
    return a->enabled == b->enabled && a->theta == b->theta &&
           a->sparsity_target == b->sparsity_target && a->window == b->window &&
           a->sink == b->sink && a->stages == b->stages && a->prefill_mode == b->prefill_mode &&
           a->block_frac == b->block_frac && a->lag == b->lag &&
           a->prefill_window == b->prefill_window && a->n_layer_offsets == b->n_layer_offsets &&
           !memcmp(a->layer_offsets, b->layer_offsets,
                   (size_t)a->n_layer_offsets * sizeof a->layer_offsets[0]);
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

static void expire_ttl(dl_sched *s, double now)
{
    for (entry *e = s->entries, *nx; e; e = nx) {
        nx = e->next;
        if (!e->busy && now - e->last_used > s->o.session_ttl) {
            dl_log(DL_LOG_INFO, NULL, e->session, "cached sequence expired after %.0f s idle",
                   now - e->last_used);
            entry_unlink_free(s, e);
        }
    }
}

/* ---- output ---------------------------------------------------------------------------- */

static void wake(dl_job *j) { j->wake = 1; }

/* Stream out what is final: text up to the hold-back for a possible stop string. */
static void emit(dl_sched *s, run *r, size_t upto, int finish)
{
    dl_job *j = r->job;
    if (upto < r->emitted)
        upto = r->emitted;
    if (!j->req.stream || !j->on_chunk) {
        r->emitted = upto; /* bounds the stop-string search */
        return;
    }
    if (upto > r->emitted || finish || (r->ch->lp && r->ch->n_lp > r->ch->n_lp_sent)) {
        j->on_chunk(j, r->ch, r->ch->text.p + r->emitted, upto - r->emitted, finish, &j->out);
        r->emitted = upto;
        wake(j);
    }
}

static int cancel_metric(int reason)
{
    return reason == DL_FINISH_TIMEOUT ? DL_CANCEL_TIMEOUT
           : reason == DL_FINISH_SHUTDOWN ? DL_CANCEL_SHUTDOWN : DL_CANCEL_DISCONNECT;
}

static void job_finished_locked(dl_sched *s, dl_job *j)
{
    double now = dl_now();
    dl_metrics *m = s->o.metrics;
    uint64_t np = 0, ng = 0, nc = 0;
    for (int i = 0; i < j->n_choices; i++) {
        dl_choice *c = &j->choices[i];
        ng += (uint64_t)c->n_gen;
        if (i % j->req.n == 0) {
            np += (uint64_t)c->n_prompt;
            nc += (uint64_t)c->n_cached;
        }
        if (m) {
            dl_metrics_observe(m, DL_H_GEN_TOK, c->n_gen);
            if (c->delta_enabled) {
                dl_delta_stage_stats all = {0};
                dl_delta_stats_add(&all, &c->sparsity[0]);
                dl_delta_stats_add(&all, &c->sparsity[1]);
                dl_metrics_sparsity(m, c->sparsity);
                if (c->layers)
                    dl_metrics_layer_sparsity(m, c->layers, c->n_layers);
                dl_metrics_observe(m, DL_H_ATTN_SPARSITY, dl_delta_attention_sparsity(&all));
            }
        }
    }
    if (m) {
        dl_metrics_tokens(m, np, ng, nc);
        dl_metrics_observe(m, DL_H_PROMPT_TOK, (double)np);
        dl_metrics_observe(m, DL_H_E2E, now - j->t_submit);
        if (j->cancel)
            dl_metrics_cancel(m, cancel_metric(j->cancel));
    }
    s->avg_job_s = s->avg_job_s > 0 ? 0.8 * s->avg_job_s + 0.2 * (now - j->t_start)
                                    : now - j->t_start;
    if (j->req.stream && j->on_chunk)
        j->on_chunk(j, NULL, NULL, 0, 0, &j->out); /* usage chunk and [DONE] */
    j->done = 1;
    wake(j);
    dl_log(DL_LOG_INFO, j->id, j->req.session_id,
           "done: %llu prompt (%llu cached) + %llu generated tokens in %.3f s",
           (unsigned long long)np, (unsigned long long)nc, (unsigned long long)ng,
           now - j->t_submit);
    job_unref_locked(j);
}

static void stage_diff(dl_delta_stage_stats *out, const dl_delta_stage_stats *a,
                       const dl_delta_stage_stats *b)
{
    /* a - b; the engine may restart its counters (truncation), then a alone is this run's */
#define D(f) out->f = a->f >= b->f ? a->f - b->f : a->f
    D(delta_elems); D(delta_zeros); D(score_entries); D(exact_entries);
    D(qk_macs_dense); D(qk_macs_done);
#undef D
}

/* This run's per-layer counters: the sequence's now less the snapshot start_run took. */
static void layers_diff(dl_sched *s, const run *r, dl_choice *c)
{
    if (!r->lbase)
        return;
    for (int l = 0; l < s->n_layer; l++) {
        const dl_delta_stage_stats *now = dl_seq_delta_layer_stats(r->e->seq, l);
        stage_diff(&c->layers[2 * l], &now[0], &r->lbase[2 * l]);
        stage_diff(&c->layers[2 * l + 1], &now[1], &r->lbase[2 * l + 1]);
    }
    c->n_layers = s->n_layer;
}

/* End one run: publish the tail, return its sequence to the cache, maybe end the job. */
static void finish_run(dl_sched *s, int idx, int reason)
{
    run *r = &s->runs[idx];
    dl_choice *c = r->ch;
    dl_job *j = r->job;
    double now = dl_now();
    c->finish = reason;
    if (reason == DL_FINISH_LENGTH || reason == DL_FINISH_STOP) {
        if (reason == DL_FINISH_LENGTH) {
            int n = dl_utf8_stream_flush(&r->u8, s->u8out, sizeof s->u8out);
            dl_sbuf_add(&c->text, s->u8out, (size_t)n);
        }
        emit(s, r, c->text.len, reason);
    } else if (j->req.stream && j->on_chunk) {
        j->on_chunk(j, c, NULL, 0, reason, &j->out); /* error event */
        wake(j);
    }
    if (r->t_prefill0 > 0) {
        double tf = r->t_first > 0 ? r->t_first : now;
        c->prompt_ms = (tf - r->t_prefill0) * 1e3;
        c->gen_ms = r->t_first > 0 ? (r->t_last - r->t_first) * 1e3 : 0;
    }
    entry *e = r->e;
    if (e) {
        const dl_delta_stats *st = dl_seq_delta_stats(e->seq);
        if (st) {
            c->delta_enabled = 1;
            stage_diff(&c->sparsity[0], &st->stage[0], &r->base[0]);
            stage_diff(&c->sparsity[1], &st->stage[1], &r->base[1]);
            layers_diff(s, r, c);
        }
        e->bytes = dl_seq_bytes(e->seq);
        e->busy = 0;
        e->last_used = now;
        if (reason == DL_FINISH_ERROR) {
            entry_unlink_free(s, e);
        } else if (!e->session[0]) {
            /* keep at most `parallel` anonymous prefix-cache entries */
            int n = 0;
            for (entry *x = s->entries; x; x = x->next)
                n += !x->session[0] && !x->busy;
            while (n-- > s->o.parallel && evict_lru(s, 1))
                ;
        }
    }
    dl_sampler_free(r->smp);
    free(r->logits);
    free(r->echo_logits);
    free(r->lbase);
    r->dead = 1;
    for (int i = 0; i < j->n_choices; i++)
        if (j->choices[i].finish == DL_FINISH_NONE)
            return;
    job_finished_locked(s, j);
}

/* Remove finished runs from the array (kept in place while a step is post-processed, so
 * that batch items keep pointing at the right runs). */
static void reap(dl_sched *s)
{
    int k = 0;
    for (int i = 0; i < s->n_runs; i++)
        if (!s->runs[i].dead)
            s->runs[k++] = s->runs[i];
    s->n_runs = k;
}

/* ---- admission ------------------------------------------------------------------------- */

static int need_ctx(dl_sched *s, const dl_job *j, int n_prompt)
{
    int max_new = j->req.max_tokens < 0 ? s->o.ctx - n_prompt : j->req.max_tokens;
    long need = (long)n_prompt + max_new;
    return need > s->o.ctx ? s->o.ctx : (int)need;
}

static int echo_lp(const dl_job *j) { return j->req.echo && j->req.logprobs; }

/* Choose the entry for a choice: its session's, the idle anonymous one sharing the longest
 * prefix, or NULL (a new one is needed). Marks a chosen entry busy. */
static entry *pick_entry(dl_sched *s, const dl_job *j, int ci, int need, int *wait)
{
    const dl_choice *c = &j->choices[ci];
    const int32_t *p = j->prompt_tok[c->prompt];
    int n = j->prompt_len[c->prompt];
    *wait = 0;
    if (j->req.session_id[0] && ci == 0) {
        for (entry *e = s->entries; e; e = e->next)
            if (!strcmp(e->session, j->req.session_id)) {
                if (e->busy) {
                    *wait = 1;
                    return NULL;
                }
                if (e->cap < need || !same_delta(&e->dp, &j->req.delta)) {
                    entry_unlink_free(s, e); /* cannot hold this request: start over */
                    return NULL;
                }
                e->busy = 1;
                return e;
            }
        return NULL;
    }
    if (echo_lp(j))
        return NULL;
    /* A DeltaLLM sequence's state depends on its history (deltas against a running
     * reference, per-channel query statistics), so a truncated cached sequence does not
     * reproduce a fresh run of the same prefix. Anonymous requests must give the same
     * output whether or not a cache entry exists: they reuse prefixes only when dense.
     * Named sessions continue their own state by design. */
    if (j->req.delta.enabled)
        return NULL;
    entry *best = NULL;
    int best_n = 0;
    for (entry *e = s->entries; e; e = e->next) {
        if (e->busy || e->session[0] || e->cap < need || !same_delta(&e->dp, &j->req.delta))
            continue;
        int k = common_prefix(e->toks, e->n_toks, p, n);
        if (k > best_n || (k == best_n && best && k > 0 && e->last_used > best->last_used)) {
            best = e;
            best_n = k;
        }
    }
    if (best && best_n > 0) {
        best->busy = 1;
        return best;
    }
    return NULL;
}

static int start_run(dl_sched *s, dl_job *j, int ci, entry *e, char *err, size_t errlen)
{
    dl_choice *c = &j->choices[ci];
    run *r = &s->runs[s->n_runs];
    memset(r, 0, sizeof *r);
    r->job = j;
    r->ch = c;
    r->e = e;
    r->prompt = j->prompt_tok[c->prompt];
    r->n_prompt = j->prompt_len[c->prompt];
    int max_new = j->req.max_tokens < 0 ? s->o.ctx - r->n_prompt : j->req.max_tokens;
    r->max_new = max_new;
    int keep = common_prefix(e->toks, e->n_toks, r->prompt, r->n_prompt);
    if (keep >= r->n_prompt)
        keep = r->n_prompt - 1; /* the last prompt token is fed again for its logits */
    if (echo_lp(j))
        keep = 0;
    if (dl_seq_truncate(e->seq, keep)) {
        snprintf(err, errlen, "cannot truncate cached sequence");
        return -EIO;
    }
    e->n_toks = keep;
    c->n_prompt = r->n_prompt;
    c->n_cached = keep;
    r->n_fed = keep;
    dl_metrics_prefix(s->o.metrics, keep > 0);
    dl_sampler_params sp = j->req.sampling;
    sp.seed += (uint64_t)ci;
    r->smp = dl_sampler_create(&sp, s->n_vocab);
    r->logits = malloc(sizeof(float) * (size_t)s->n_vocab);
    if (j->req.logprobs && max_new > 0)
        c->lp = calloc((size_t)max_new, sizeof *c->lp);
    if (echo_lp(j)) {
        long cap = (64l << 20) / ((long)s->n_vocab * 4);
        r->echo_cap = cap < 1 ? 1 : cap > s->o.batch ? s->o.batch : (int)cap;
        r->echo_logits = malloc(sizeof(float) * (size_t)r->echo_cap * (size_t)s->n_vocab);
        c->echo_lp = calloc((size_t)r->n_prompt, sizeof(float));
    }
    const dl_delta_stats *st = dl_seq_delta_stats(e->seq);
    if (st) {
        /* per layer: the counters now, and this choice's share once it ends */
        r->lbase = malloc(sizeof *r->lbase * 2 * (size_t)s->n_layer);
        c->layers = calloc(2 * (size_t)s->n_layer, sizeof *c->layers);
    }
    if (!r->smp || !r->logits || (j->req.logprobs && max_new > 0 && !c->lp) ||
        (echo_lp(j) && (!r->echo_logits || !c->echo_lp)) || (st && (!r->lbase || !c->layers))) {
        dl_sampler_free(r->smp);
        free(r->logits);
        free(r->echo_logits);
        free(r->lbase);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (int i = 0; i < r->n_prompt; i++)
        dl_sampler_accept(r->smp, r->prompt[i]);
    dl_utf8_stream_init(&r->u8);
    if (st) {
        r->base[0] = st->stage[0];
        r->base[1] = st->stage[1];
        for (int l = 0; l < s->n_layer; l++)
            memcpy(&r->lbase[2 * l], dl_seq_delta_layer_stats(e->seq, l), 2 * sizeof *r->lbase);
    }
    r->t_prefill0 = dl_now();
    s->n_runs++;
    return 0;
}

/* 1 admitted, 0 must wait, -1 failed (job ended). */
static int admit_job(dl_sched *s, dl_job *j)
{
    if (s->n_runs + j->n_choices > s->o.parallel)
        return 0;
    entry *picked[DL_MAX_N * DL_MAX_PROMPTS];
    int needs[DL_MAX_N * DL_MAX_PROMPTS];
    uint64_t want = 0;
    for (int i = 0; i < j->n_choices; i++) {
        int w;
        needs[i] = need_ctx(s, j, j->prompt_len[j->choices[i].prompt]);
        picked[i] = pick_entry(s, j, i, needs[i], &w);
        if (w) {
            for (int k = 0; k < i; k++)
                if (picked[k])
                    picked[k]->busy = 0;
            return 0;
        }
        if (!picked[i])
            want += (uint64_t)(j->req.session_id[0] && i == 0 ? s->o.ctx : needs[i]) * s->kvpt;
    }
    uint64_t budget = s->o.memory_budget;
    if (s->fixed + want > budget) {
        for (int k = 0; k < j->n_choices; k++)
            if (picked[k])
                picked[k]->busy = 0;
        char msg[256];
        snprintf(msg, sizeof msg, "the request needs %llu bytes of cache, more than the memory "
                 "budget leaves (%llu bytes)", (unsigned long long)want,
                 (unsigned long long)(budget - s->fixed));
        dl_metrics_reject(s->o.metrics, DL_REJ_MEMORY);
        job_fail_locked(s, j, 503, "server_error", msg);
        return -1;
    }
    while (used_bytes(s) + want > budget && evict_lru(s, 0))
        ;
    if (used_bytes(s) + want > budget) {
        for (int k = 0; k < j->n_choices; k++)
            if (picked[k])
                picked[k]->busy = 0;
        return 0; /* running sequences hold the memory: wait for them */
    }
    for (int i = 0; i < j->n_choices; i++) {
        char err[256];
        entry *e = picked[i];
        if (!e) {
            const char *sess = (j->req.session_id[0] && i == 0) ? j->req.session_id : NULL;
            /* a session grows over its requests: give it the whole context */
            e = entry_new(s, sess ? s->o.ctx : needs[i], &j->req.delta, sess, err, sizeof err);
            if (e)
                e->busy = 1;
        }
        if (!e || start_run(s, j, i, e, err, sizeof err)) {
            if (e)
                e->busy = 0;
            dl_log(DL_LOG_ERROR, j->id, j->req.session_id, "cannot start: %s", err);
            /* runs already started for this job end with an error */
            j->cancel = DL_FINISH_ERROR;
            for (int k = i; k < j->n_choices; k++)
                j->choices[k].finish = DL_FINISH_ERROR;
            if (i == 0) {
                job_fail_locked(s, j, 500, "server_error", "cannot allocate the sequence");
                return -1;
            }
            return 1;
        }
    }
    j->started = 1;
    j->t_start = dl_now();
    dl_metrics_observe(s->o.metrics, DL_H_QUEUE, j->t_start - j->t_submit);
    dl_log(DL_LOG_DEBUG, j->id, j->req.session_id, "admitted after %.3f s in queue",
           j->t_start - j->t_submit);
    wake(j);
    return 1;
}

static void admit(dl_sched *s, double now)
{
    dl_job **pp = &s->wait_head;
    dl_job *prev = NULL;
    while (*pp) {
        dl_job *j = *pp;
        int rc;
        if (j->cancel) {
            if (s->o.metrics)
                dl_metrics_cancel(s->o.metrics, cancel_metric(j->cancel));
            job_fail_locked(s, j, j->cancel == DL_FINISH_TIMEOUT ? 504 : 503, "server_error",
                            j->cancel == DL_FINISH_TIMEOUT ? "the request timed out in the queue"
                                                           : "the request was cancelled");
            rc = -1;
        } else if (j->deadline > 0 && now > j->deadline) {
            if (s->o.metrics)
                dl_metrics_cancel(s->o.metrics, DL_CANCEL_TIMEOUT);
            job_fail_locked(s, j, 504, "timeout_error", "the request timed out in the queue");
            rc = -1;
        } else {
            rc = admit_job(s, j);
        }
        if (rc != 0) {
            *pp = j->next;
            if (s->wait_tail == j)
                s->wait_tail = prev;
            j->next = NULL;
            s->n_waiting--;
        } else {
            prev = j;
            pp = &j->next;
        }
    }
}

/* ---- one step -------------------------------------------------------------------------- */

static void record_token(dl_sched *s, run *r, int32_t tok, const dl_sample_logprobs *lp)
{
    dl_choice *c = r->ch;
    if (c->lp && c->n_lp < r->max_new) {
        dl_lp_rec *rec = &c->lp[c->n_lp++];
        rec->token = tok;
        rec->logprob = lp->chosen.logprob;
        rec->text_offset = (uint32_t)c->text.len;
        rec->top = *lp;
    }
}

/* Sample the next token from r->logits and publish its text. 1 when the run finished. */
static int sample_next(dl_sched *s, int idx)
{
    run *r = &s->runs[idx];
    dl_choice *c = r->ch;
    dl_job *j = r->job;
    dl_sample_logprobs lp;
    memset(&lp, 0, sizeof lp);
    lp.n_top = j->req.top_logprobs;
    int32_t tok = dl_sampler_sample(r->smp, r->logits, c->lp ? &lp : NULL);
    dl_sampler_accept(r->smp, tok);
    double now = dl_now();
    if (c->n_gen == 0) {
        r->t_first = now;
        if (j->t_first == 0) {
            j->t_first = now;
            dl_metrics_observe(s->o.metrics, DL_H_TTFT, now - j->t_submit);
        }
    } else {
        dl_metrics_observe(s->o.metrics, DL_H_ITL, now - r->t_last);
    }
    r->t_last = now;
    c->n_gen++;
    record_token(s, r, tok, &lp);
    if (dl_tokenizer_is_eog(s->tok, tok)) {
        finish_run(s, idx, DL_FINISH_STOP);
        return 1;
    }
    int n = dl_token_to_piece(s->tok, tok, 0, s->scratch, sizeof s->scratch);
    if (n < 0)
        n = 0;
    if (n > (int)sizeof s->scratch)
        n = (int)sizeof s->scratch;
    int m = dl_utf8_stream_feed(&r->u8, s->scratch, n, s->u8out, sizeof s->u8out);
    size_t before = c->text.len;
    const char *piece = s->u8out;
    if (j->req.kind == DL_REQ_CHAT && !r->lead_done && m > 0) {
        /* SentencePiece-style vocabularies start a word with a space; a chat reply's
         * content should not (the CLI, which continues a prompt, keeps it) */
        r->lead_done = 1;
        if (piece[0] == ' ') {
            piece++;
            m--;
        }
    }
    dl_sbuf_add(&c->text, piece, (size_t)m);
    size_t hold = 0;
    if (j->req.n_stops) {
        const char *stops[DL_MAX_STOPS];
        for (int i = 0; i < j->req.n_stops; i++)
            stops[i] = j->req.stops[i];
        /* a new match must end in the new text: search from where it could start */
        size_t from = before > DL_MAX_STOP_LEN ? before - DL_MAX_STOP_LEN : 0;
        if (from > r->emitted)
            from = r->emitted;
        int at = dl_find_stop(c->text.p + from, c->text.len - from, stops, j->req.n_stops, &hold);
        if (at >= 0) {
            c->text.len = from + (size_t)at;
            c->text.p[c->text.len] = 0;
            finish_run(s, idx, DL_FINISH_STOP);
            return 1;
        }
    }
    if (c->n_gen >= r->max_new || r->e->n_toks + 1 > r->e->cap) {
        finish_run(s, idx, DL_FINISH_LENGTH);
        return 1;
    }
    emit(s, r, c->text.len - hold, 0);
    r->next_tok = tok;
    r->has_next = 1;
    return 0;
}

static void keepalive(run *r)
{
    dl_job *j = r->job;
    if (j->req.stream) {
        dl_sbuf_printf(&j->out, ": prefill %d/%d\n\n", r->n_fed, r->n_prompt);
        wake(j);
    }
}

/* Build and run one forward pass over the running sequences; 0 or negative. */
static int step(dl_sched *s)
{
    int n_items = 0, left = s->o.batch;
    int item_run[512];
    int nmax = s->o.parallel < 512 ? s->o.parallel : 512;
    for (int i = 0; i < s->n_runs && n_items < nmax; i++) {
        run *r = &s->runs[i];
        if (!r->has_next)
            continue;
        s->items[n_items] = (dl_batch_item){r->e->seq, &r->next_tok, 1, r->logits, 0};
        item_run[n_items++] = i;
        left--;
    }
    for (int i = 0; i < s->n_runs && left > 0 && n_items < nmax; i++) {
        run *r = &s->runs[i];
        if (r->has_next || r->n_fed >= r->n_prompt)
            continue;
        int chunk = r->n_prompt - r->n_fed;
        if (chunk > left)
            chunk = left;
        if (r->echo_logits && chunk > r->echo_cap)
            chunk = r->echo_cap;
        int last = r->n_fed + chunk == r->n_prompt;
        float *lg = r->echo_logits ? r->echo_logits : (last && r->max_new > 0 ? r->logits : NULL);
        s->items[n_items] = (dl_batch_item){r->e->seq, r->prompt + r->n_fed, chunk, lg,
                                            r->echo_logits != NULL};
        item_run[n_items++] = i;
        left -= chunk;
    }
    if (n_items == 0)
        return 0;
    char err[256];
    pthread_mutex_unlock(&s->lock);
    int rc = dl_forward(s->ctx, s->items, n_items, err, sizeof err);
    pthread_mutex_lock(&s->lock);
    if (rc) {
        dl_log(DL_LOG_ERROR, NULL, NULL, "forward pass failed: %s", err);
        for (int k = s->n_runs - 1; k >= 0; k--)
            for (int i = 0; i < n_items; i++)
                if (item_run[i] == k) {
                    s->runs[k].job->http_status = 500;
                    finish_run(s, k, DL_FINISH_ERROR);
                    break;
                }
        reap(s);
        return rc;
    }
    if (s->o.metrics) {
        uint64_t fed = 0;
        for (int i = 0; i < n_items; i++)
            if (!s->runs[item_run[i]].has_next)
                fed += (uint64_t)s->items[i].n_tokens;
        dl_metrics_pass(s->o.metrics, fed);
    }
    for (int i = 0; i < n_items; i++) {
        int k = item_run[i];
        run *r = &s->runs[k];
        dl_batch_item *it = &s->items[i];
        memcpy(r->e->toks + r->e->n_toks, it->tokens, sizeof(int32_t) * (size_t)it->n_tokens);
        r->e->n_toks += it->n_tokens;
        r->e->bytes = dl_seq_bytes(r->e->seq);
        if (r->has_next) {
            r->has_next = 0;
            sample_next(s, k);
            continue;
        }
        if (r->echo_logits) {
            for (int t = 0; t < it->n_tokens; t++) {
                int pos = r->n_fed + t;
                if (pos + 1 < r->n_prompt)
                    r->ch->echo_lp[pos + 1] = dl_logprob_of(
                        r->echo_logits + (size_t)t * s->n_vocab, s->n_vocab, r->prompt[pos + 1]);
            }
            if (r->n_fed + it->n_tokens == r->n_prompt)
                memcpy(r->logits, r->echo_logits + (size_t)(it->n_tokens - 1) * s->n_vocab,
                       sizeof(float) * (size_t)s->n_vocab);
        }
        r->n_fed += it->n_tokens;
        if (r->n_fed < r->n_prompt) {
            keepalive(r);
        } else if (r->max_new <= 0) {
            finish_run(s, k, DL_FINISH_LENGTH);
        } else {
            sample_next(s, k);
        }
    }
    reap(s);
    return 0;
}

static void drop_cancelled(dl_sched *s, double now)
{
    for (int k = s->n_runs - 1; k >= 0; k--) {
        dl_job *j = s->runs[k].job;
        if (!j->cancel && j->deadline > 0 && now > j->deadline)
            j->cancel = DL_FINISH_TIMEOUT;
        if (j->cancel)
            finish_run(s, k, j->cancel);
    }
    reap(s);
}

static void notify(dl_sched *s)
{
    if (s->o.notify)
        s->o.notify(s->o.notify_arg);
}

static int load(dl_sched *s)
{
    char err[512];
    dl_model *m = NULL;
    double t0 = dl_now();
    int rc = dl_model_load(s->o.model_path, &m, err, sizeof err);
    /* before READY, so that the per-layer series are there (at zero) before any request */
    if (!rc && s->o.metrics &&
        (rc = dl_metrics_set_layers(s->o.metrics, dl_model_hparams(m)->n_layer)))
        snprintf(err, sizeof err, "cannot set up the per-layer metrics: %s", strerror(-rc));
    if (!rc && s->o.delta_layer_offsets &&
        s->o.delta_layer_offsets != dl_model_hparams(m)->n_layer) {
        snprintf(err, sizeof err, "delta-layer-offsets has %d values but the model has %d "
                 "layers (run deltallm eval --calibrate for this model, or remove the key)",
                 s->o.delta_layer_offsets, dl_model_hparams(m)->n_layer);
        rc = -EINVAL;
    }
    dl_ctx *ctx = NULL;
    if (!rc) {
        ctx = dl_ctx_create(m, s->o.batch, s->o.ctx, s->o.threads, err, sizeof err);
        if (!ctx)
            rc = -ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    if (rc) {
        snprintf(s->err, sizeof s->err, "%s", err);
        dl_model_free(m);
        s->state = DL_SCHED_FAILED;
    } else {
        s->model = m;
        s->ctx = ctx;
        s->tok = dl_model_tokenizer(m);
        s->n_vocab = dl_model_hparams(m)->n_vocab;
        s->n_layer = dl_model_hparams(m)->n_layer;
        s->kvpt = dl_model_kv_bytes_per_token(m);
        s->fixed = dl_model_weight_bytes(m) + dl_ctx_bytes(ctx);
        if (s->fixed + (uint64_t)s->kvpt * 16 > s->o.memory_budget) {
            snprintf(s->err, sizeof s->err, "memory-budget: %llu bytes do not hold the weights "
                     "and scratch (%llu bytes) and a 16-token sequence",
                     (unsigned long long)s->o.memory_budget, (unsigned long long)s->fixed);
            s->state = DL_SCHED_FAILED;
            rc = -ENOMEM;
        } else {
            s->state = DL_SCHED_READY;
            dl_log(DL_LOG_INFO, NULL, NULL, "model loaded in %.2f s: %llu weight bytes, %llu "
                   "scratch bytes, %zu KV bytes per token", dl_now() - t0,
                   (unsigned long long)dl_model_weight_bytes(m),
                   (unsigned long long)dl_ctx_bytes(ctx), s->kvpt);
        }
    }
    pthread_mutex_unlock(&s->lock);
    notify(s);
    return rc;
}

static void *worker_main(void *arg)
{
    dl_sched *s = arg;
    if (load(s))
        return NULL;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        double now = dl_now();
        expire_ttl(s, now);
        drop_cancelled(s, now);
        admit(s, now);
        if (s->n_runs == 0) {
            notify(s);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
            continue;
        }
        step(s);
        pthread_mutex_unlock(&s->lock);
        notify(s);
        pthread_mutex_lock(&s->lock);
    }
    /* shutdown: end whatever is left */
    for (int k = s->n_runs - 1; k >= 0; k--) {
        if (!s->runs[k].job->cancel)
            s->runs[k].job->cancel = DL_FINISH_SHUTDOWN;
        finish_run(s, k, s->runs[k].job->cancel);
    }
    reap(s);
    while (s->wait_head) {
        dl_job *j = s->wait_head;
        s->wait_head = j->next;
        s->n_waiting--;
        job_fail_locked(s, j, 503, "server_error", "the server is shutting down");
    }
    s->wait_tail = NULL;
    s->state = DL_SCHED_STOPPED;
    pthread_mutex_unlock(&s->lock);
    notify(s);
    return NULL;
}

/* ---- public ---------------------------------------------------------------------------- */

int dl_sched_create(const dl_sched_opts *o, dl_sched **out, char *err, size_t errlen)
{
    dl_sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->o = *o;
    s->runs = calloc((size_t)o->parallel, sizeof *s->runs);
    s->items = calloc((size_t)o->parallel, sizeof *s->items);
    if (!s->runs || !s->items) {
        free(s->runs);
        free(s->items);
        free(s);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->seed_ctr = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->th, NULL, worker_main, s)) {
        snprintf(err, errlen, "cannot start the worker thread");
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        free(s->runs);
        free(s->items);
        free(s);
        return -EAGAIN;
    }
    s->th_started = 1;
    *out = s;
    return 0;
}

void dl_sched_destroy(dl_sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (s->th_started)
        pthread_join(s->th, NULL);
    while (s->entries)
        entry_unlink_free(s, s->entries);
    dl_ctx_free(s->ctx);
    dl_model_free(s->model);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s->runs);
    free(s->items);
    free(s);
}

int dl_sched_state(dl_sched *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->lock);
    int st = s->state;
    if (err && errlen)
        snprintf(err, errlen, "%s", s->err);
    pthread_mutex_unlock(&s->lock);
    return st;
}

const dl_model *dl_sched_model(dl_sched *s)
{
    pthread_mutex_lock(&s->lock);
    const dl_model *m = s->state == DL_SCHED_READY || s->state == DL_SCHED_STOPPED ? s->model
                                                                                   : NULL;
    pthread_mutex_unlock(&s->lock);
    return m;
}

int dl_sched_submit(dl_sched *s, dl_job *j)
{
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->state != DL_SCHED_READY || s->draining || s->stop) {
        rc = -ESHUTDOWN;
    } else if (s->n_waiting >= s->o.max_queue &&
               s->n_runs + j->n_choices > s->o.parallel) {
        rc = -EAGAIN;
    } else {
        j->t_submit = dl_now();
        if (!j->req.has_seed)
            j->req.sampling.seed = (s->seed_ctr += 0x9E3779B97F4A7C15ull);
        j->refs++;
        j->next = NULL;
        if (s->wait_tail)
            s->wait_tail->next = j;
        else
            s->wait_head = j;
        s->wait_tail = j;
        s->n_waiting++;
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void dl_sched_cancel(dl_sched *s, dl_job *j, int reason)
{
    pthread_mutex_lock(&s->lock);
    if (!j->done && !j->cancel)
        j->cancel = reason;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void dl_sched_drain(dl_sched *s, int reason)
{
    pthread_mutex_lock(&s->lock);
    s->draining = 1;
    if (reason) {
        for (dl_job *j = s->wait_head; j; j = j->next)
            if (!j->cancel)
                j->cancel = reason;
        for (int k = 0; k < s->n_runs; k++)
            if (!s->runs[k].job->cancel)
                s->runs[k].job->cancel = reason;
    }
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int dl_sched_busy(dl_sched *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->n_runs + s->n_waiting;
    pthread_mutex_unlock(&s->lock);
    return n;
}

int dl_sched_saturated(dl_sched *s)
{
    pthread_mutex_lock(&s->lock);
    int sat = s->n_waiting >= s->o.max_queue && s->n_runs >= s->o.parallel;
    pthread_mutex_unlock(&s->lock);
    return sat;
}

double dl_sched_retry_after(dl_sched *s)
{
    pthread_mutex_lock(&s->lock);
    double per = s->avg_job_s > 0 ? s->avg_job_s : 1;
    double t = ceil(per * (1 + s->n_waiting) / s->o.parallel);
    pthread_mutex_unlock(&s->lock);
    return t < 1 ? 1 : t > 3600 ? 3600 : t;
}

void dl_sched_sessions_json(dl_sched *s, dl_sbuf *o)
{
    double now = dl_now();
    pthread_mutex_lock(&s->lock);
    dl_sbuf_puts(o, "{\"object\":\"list\",\"data\":[");
    int first = 1;
    for (entry *e = s->entries; e; e = e->next) {
        if (!e->session[0])
            continue;
        dl_sbuf_puts(o, first ? "{\"id\":" : ",{\"id\":");
        first = 0;
        dl_sbuf_json_str(o, e->session, strlen(e->session));
        dl_sbuf_printf(o, ",\"object\":\"session\",\"tokens\":%d,\"n_ctx\":%d,\"bytes\":%zu,"
                       "\"idle_seconds\":%.3f,\"busy\":%s,\"delta\":%s}", e->n_toks, e->cap,
                       e->bytes, e->busy ? 0.0 : now - e->last_used, e->busy ? "true" : "false",
                       e->dp.enabled ? "true" : "false");
    }
    dl_sbuf_puts(o, "]}");
    pthread_mutex_unlock(&s->lock);
}

int dl_sched_session_delete(dl_sched *s, const char *id)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    for (entry *e = s->entries; e; e = e->next)
        if (e->session[0] && !strcmp(e->session, id)) {
            if (e->busy) {
                rc = -EBUSY;
            } else {
                entry_unlink_free(s, e);
                rc = 0;
            }
            break;
        }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void dl_sched_gauges(dl_sched *s, dl_metrics *m)
{
    pthread_mutex_lock(&s->lock);
    uint64_t bytes = 0;
    int sessions = 0, entries = 0;
    for (entry *e = s->entries; e; e = e->next) {
        bytes += e->bytes;
        sessions += e->session[0] != 0;
        entries++;
    }
    dl_metrics_gauges(m, s->n_runs, s->n_waiting, bytes, sessions, entries, used_bytes(s),
                      s->o.memory_budget);
    pthread_mutex_unlock(&s->lock);
}
