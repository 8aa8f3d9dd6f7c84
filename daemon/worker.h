/* worker.h — the worker: owns the model, the forward-pass context and every sequence, and
 * schedules generation with continuous batching.
 *
 * Threads: one worker thread runs dl_forward; the event loop (server) submits jobs, reads
 * their output and cancels them. Everything the two share — the waiting queue, each job's
 * output buffer and flags, the cache entries (sessions) — is guarded by one lock, taken by
 * the worker only between forward passes, so the loop never waits for a forward pass.
 *
 * Each step the worker (1) drops cancelled / timed-out work, (2) admits waiting jobs into
 * free slots (a slot is a sequence: a session's, the idle cache entry sharing the longest
 * prompt prefix, or a new one within the memory budget, evicting least-recently-used idle
 * entries), (3) runs one dl_forward with the next token of every decoding sequence plus
 * prefill chunks of prompts up to --batch tokens, (4) samples, detokenises, checks stop
 * strings and publishes output, then calls the notify hook (uv_async_send in the server).
 */
#ifndef DL_WORKER_H
#define DL_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "model.h"
#include "request.h"
#include "sbuf.h"

enum dl_finish {
    DL_FINISH_NONE = 0, DL_FINISH_STOP, DL_FINISH_LENGTH, DL_FINISH_CANCELLED,
    DL_FINISH_TIMEOUT, DL_FINISH_SHUTDOWN, DL_FINISH_ERROR
};
enum dl_sched_state { DL_SCHED_LOADING = 0, DL_SCHED_READY, DL_SCHED_FAILED, DL_SCHED_STOPPED };

/* One generated token's log-probabilities (completions and chat logprobs). */
typedef struct dl_lp_rec {
    int32_t token;
    float logprob;
    uint32_t text_offset;     /* bytes of choice text before this token */
    dl_sample_logprobs top;   /* n_top best (top.n_top may be 0) */
} dl_lp_rec;

/* One choice of a job. Fields below `results` are written by the worker and read by the
 * server once the job is done (or under the lock while streaming). */
typedef struct dl_choice {
    int index;                /* OpenAI choice index */
    int prompt;               /* which of the job's prompts */
    /* results */
    dl_sbuf text;             /* generated text (valid UTF-8) */
    int finish;               /* enum dl_finish */
    int n_prompt;             /* prompt tokens */
    int n_cached;             /* of which reused from a cached sequence */
    int n_gen;                /* generated tokens */
    double prompt_ms, gen_ms; /* prefill time, decode time */
    int delta_enabled;
    dl_delta_stage_stats sparsity[2]; /* this request's [prefill, decode] statistics */
    int n_layers;             /* layers in `layers`: the model's for DeltaLLM, else 0 */
    dl_delta_stage_stats *layers; /* [n_layers x 2]: `sparsity` per layer, [2 * layer + stage] */
    int n_lp;                 /* log-prob records filled */
    dl_lp_rec *lp;            /* [max tokens] when logprobs were asked, else NULL */
    float *echo_lp;           /* completions echo+logprobs: [n_prompt], [0] unused */
    int n_lp_sent;            /* records already streamed */
    int n_chunks;             /* stream chunks sent (the first carries the role) */
} dl_choice;

typedef struct dl_job dl_job;
typedef void (*dl_job_chunk_fn)(dl_job *j, dl_choice *c, const char *text, size_t n,
                                int finish, dl_sbuf *out);

struct dl_job {
    /* set by the server before dl_sched_submit, read-only afterwards */
    dl_request req;
    char id[48];              /* "cmpl-..." / "chatcmpl-..." */
    int64_t created;          /* unix seconds */
    char model_name[256];
    int n_prompts;
    int32_t *prompt_tok[DL_MAX_PROMPTS];
    int prompt_len[DL_MAX_PROMPTS];
    int n_choices;
    dl_choice *choices;
    double t_submit;          /* monotonic seconds */
    double deadline;          /* monotonic seconds, 0 = none */
    dl_job_chunk_fn on_chunk; /* streaming: formats a chunk into out (called under lock) */
    void *user;               /* the server's connection state */
    /* shared, under the scheduler lock */
    dl_sbuf out;              /* bytes ready for the client (streaming) */
    int started;              /* admitted to a slot */
    int done;                 /* every choice finished; results final */
    int cancel;               /* enum dl_finish reason to stop with, 0 = none */
    int wake;                 /* new output or done: the server should resume the connection */
    int http_status;          /* != 200 when the job failed as a whole */
    char errmsg[256];
    char errtype[48];
    double t_start;           /* admitted (monotonic) */
    double t_first;           /* first token (monotonic) */
    int refs;
    dl_job *next;             /* waiting queue */
};

typedef struct dl_sched_opts {
    const char *model_path;
    int threads, parallel, ctx, batch, max_queue;
    uint64_t memory_budget;   /* bytes, > 0 */
    double session_ttl;       /* seconds */
    int delta_layer_offsets;  /* values in the configured delta-layer-offsets: a model with
                                 another layer count fails to load (0: none configured) */
    dl_metrics *metrics;
    void (*notify)(void *arg);/* called from the worker after each step (thread-safe hook) */
    void *notify_arg;
} dl_sched_opts;

typedef struct dl_sched dl_sched;

/* Starts the worker thread, which loads the model (state LOADING -> READY or FAILED). */
int dl_sched_create(const dl_sched_opts *o, dl_sched **out, char *err, size_t errlen);
/* Cancels everything, joins the worker, frees sequences and the model. */
void dl_sched_destroy(dl_sched *s);

int dl_sched_state(dl_sched *s, char *err, size_t errlen);
const dl_model *dl_sched_model(dl_sched *s); /* NULL until READY; read-only afterwards */

void dl_sched_lock(dl_sched *s);
void dl_sched_unlock(dl_sched *s);

/* Job life: dl_job_create (refs 1, the caller's) -> fill in -> dl_sched_submit (the worker
 * takes a reference) -> ... -> dl_job_release by each holder. */
dl_job *dl_job_create(int n_choices);
void dl_job_release(dl_sched *s, dl_job *j);  /* takes the lock */
/* 0, -EAGAIN when the queue is full (429), -ESHUTDOWN when draining or not ready. */
int dl_sched_submit(dl_sched *s, dl_job *j);
/* Ask the worker to stop the job at its next step (locks). */
void dl_sched_cancel(dl_sched *s, dl_job *j, int reason);
/* Refuse new jobs and cancel waiting / running ones with `reason` (0: let running finish). */
void dl_sched_drain(dl_sched *s, int cancel_reason);
int dl_sched_busy(dl_sched *s);       /* jobs waiting or running */
int dl_sched_saturated(dl_sched *s);  /* queue full */
double dl_sched_retry_after(dl_sched *s); /* seconds a 429'd client should wait */

/* Sessions (JSON for GET /v1/sessions) and deletion: 0, -ENOENT, -EBUSY. */
void dl_sched_sessions_json(dl_sched *s, dl_sbuf *out);
int dl_sched_session_delete(dl_sched *s, const char *id);
/* Gauges for /metrics (locks). */
void dl_sched_gauges(dl_sched *s, dl_metrics *m);

double dl_now(void); /* monotonic seconds */

#endif
