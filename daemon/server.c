/* server.c — see server.h. Request handling runs on the loop thread; generation runs on
 * the scheduler's worker and comes back through uv_async. */
#include "server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "chat.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "sbuf.h"
#include "worker.h"

typedef struct conn conn;

struct dl_server {
    dl_config cfg;
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_timer_t tick;
    uv_async_t wakeup;
    uv_signal_t sigterm, sigint, sighup;
    struct MHD_Daemon *mhd;
    int port;
    dl_sched *sched;
    dl_metrics *metrics;
    conn *live;            /* connections with a job */
    int draining;
    double drain_deadline; /* monotonic; cancel in-flight work after it */
    int drain_cancelled;
    int exit_code;
    int loaded_logged;
    char model_id[256];
    uint64_t next_id;
};

struct conn {
    dl_server *srv;
    struct MHD_Connection *c;
    int ep;                /* enum dl_endpoint */
    int method_ok;
    dl_sbuf body;
    int too_large;
    dl_job *job;
    int suspended;
    int queued;            /* a response has been queued */
    conn *prev, *next;     /* srv->live */
    int in_live;
};

/* ---- responses ------------------------------------------------------------------------- */

static enum MHD_Result send_buf(conn *k, int status, const char *ctype, const char *p, size_t n,
                                const char *extra_hdr, const char *extra_val)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)p, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    if (extra_hdr)
        MHD_add_response_header(r, extra_hdr, extra_val);
    enum MHD_Result rc = MHD_queue_response(k->c, (unsigned)status, r);
    MHD_destroy_response(r);
    k->queued = 1;
    dl_metrics_request(k->srv->metrics, k->ep, status);
    return rc;
}

static enum MHD_Result send_json(conn *k, int status, dl_sbuf *b)
{
    if (b->oom)
        return MHD_NO;
    return send_buf(k, status, "application/json", b->p, b->len, NULL, NULL);
}

static void error_body(dl_sbuf *b, const char *msg, const char *type, const char *param,
                       const char *code)
{
    dl_sbuf_puts(b, "{\"error\":{\"message\":");
    dl_sbuf_json_str(b, msg, strlen(msg));
    dl_sbuf_puts(b, ",\"type\":");
    dl_sbuf_json_str(b, type, strlen(type));
    dl_sbuf_puts(b, ",\"param\":");
    if (param && *param)
        dl_sbuf_json_str(b, param, strlen(param));
    else
        dl_sbuf_puts(b, "null");
    dl_sbuf_puts(b, ",\"code\":");
    if (code && *code)
        dl_sbuf_json_str(b, code, strlen(code));
    else
        dl_sbuf_puts(b, "null");
    dl_sbuf_puts(b, "}}");
}

static enum MHD_Result send_error_hdr(conn *k, int status, const char *msg, const char *type,
                                      const char *param, const char *code, const char *hdr,
                                      const char *val)
{
    dl_sbuf b;
    if (dl_sbuf_init(&b, 256))
        return MHD_NO;
    /* the message may quote client bytes; keep the body valid UTF-8 */
    error_body(&b, dl_utf8_valid(msg, strlen(msg)) ? msg : "invalid request", type, param, code);
    enum MHD_Result rc = b.oom ? MHD_NO
                               : send_buf(k, status, "application/json", b.p, b.len, hdr, val);
    dl_sbuf_free(&b);
    dl_log(DL_LOG_DEBUG, NULL, NULL, "%d %s", status, msg);
    return rc;
}

static enum MHD_Result send_error(conn *k, int status, const char *msg, const char *type,
                                  const char *param, const char *code)
{
    return send_error_hdr(k, status, msg, type, param, code, NULL, NULL);
}

/* ---- formatting (also called on the worker thread, under the scheduler lock) ----------- */

static const char *finish_name(int f)
{
    switch (f) {
    case DL_FINISH_STOP: return "stop";
    case DL_FINISH_LENGTH: return "length";
    case DL_FINISH_CANCELLED: return "cancelled";
    case DL_FINISH_TIMEOUT: return "timeout";
    default: return "error";
    }
}

/* A token's text as a JSON string; partial UTF-8 pieces come out with U+FFFD. */
static void json_piece(dl_sbuf *b, const dl_tokenizer *t, int32_t id)
{
    char piece[256], clean[300];
    int n = dl_token_to_piece(t, id, 1, piece, sizeof piece);
    if (n < 0)
        n = 0;
    if (n > (int)sizeof piece)
        n = (int)sizeof piece;
    dl_utf8_stream u;
    dl_utf8_stream_init(&u);
    int m = dl_utf8_stream_feed(&u, piece, n, clean, sizeof clean);
    m += dl_utf8_stream_flush(&u, clean + m, (int)sizeof clean - m);
    dl_sbuf_json_str(b, clean, (size_t)m);
}

static void json_bytes(dl_sbuf *b, const dl_tokenizer *t, int32_t id)
{
    char piece[256];
    int n = dl_token_to_piece(t, id, 1, piece, sizeof piece);
    if (n > (int)sizeof piece)
        n = (int)sizeof piece;
    dl_sbuf_puts(b, "[");
    for (int i = 0; i < n; i++)
        dl_sbuf_printf(b, i ? ",%u" : "%u", (unsigned char)piece[i]);
    dl_sbuf_puts(b, "]");
}

static void json_float(dl_sbuf *b, double x)
{
    if (x != x || x > 1e300 || x < -1e300)
        dl_sbuf_puts(b, x < 0 ? "-9999.0" : "null");
    else
        dl_sbuf_printf(b, "%.6g", x);
}

/* Chat logprobs entries [from, to) (without the surrounding {"content":[...]}). */
static void chat_logprobs(dl_sbuf *b, const dl_tokenizer *t, const dl_choice *c, int from, int to)
{
    dl_sbuf_puts(b, "{\"content\":[");
    for (int i = from; i < to; i++) {
        const dl_lp_rec *r = &c->lp[i];
        dl_sbuf_puts(b, i > from ? ",{\"token\":" : "{\"token\":");
        json_piece(b, t, r->token);
        dl_sbuf_puts(b, ",\"logprob\":");
        json_float(b, r->logprob);
        dl_sbuf_puts(b, ",\"bytes\":");
        json_bytes(b, t, r->token);
        dl_sbuf_puts(b, ",\"top_logprobs\":[");
        for (int k = 0; k < r->top.n_top; k++) {
            dl_sbuf_puts(b, k ? ",{\"token\":" : "{\"token\":");
            json_piece(b, t, r->top.top[k].token);
            dl_sbuf_puts(b, ",\"logprob\":");
            json_float(b, r->top.top[k].logprob);
            dl_sbuf_puts(b, ",\"bytes\":");
            json_bytes(b, t, r->top.top[k].token);
            dl_sbuf_puts(b, "}");
        }
        dl_sbuf_puts(b, "]}");
    }
    dl_sbuf_puts(b, "]}");
}

/* Completions logprobs: echo prompt tokens (when asked) then generated [from, to). */
static void cmpl_logprobs(dl_sbuf *b, const dl_tokenizer *t, const dl_job *j,
                          const dl_choice *c, int from, int to, int with_echo)
{
    const int32_t *pt = j->prompt_tok[c->prompt];
    int np = with_echo && c->echo_lp ? j->prompt_len[c->prompt] : 0;
    dl_sbuf_puts(b, "{\"tokens\":[");
    int first = 1;
    for (int i = 0; i < np; i++, first = 0) {
        if (!first) dl_sbuf_puts(b, ",");
        json_piece(b, t, pt[i]);
    }
    for (int i = from; i < to; i++, first = 0) {
        if (!first) dl_sbuf_puts(b, ",");
        json_piece(b, t, c->lp[i].token);
    }
    dl_sbuf_puts(b, "],\"token_logprobs\":[");
    first = 1;
    for (int i = 0; i < np; i++, first = 0) {
        if (!first) dl_sbuf_puts(b, ",");
        if (i == 0) dl_sbuf_puts(b, "null");
        else json_float(b, c->echo_lp[i]);
    }
    for (int i = from; i < to; i++, first = 0) {
        if (!first) dl_sbuf_puts(b, ",");
        json_float(b, c->lp[i].logprob);
    }
    dl_sbuf_puts(b, "],\"top_logprobs\":[");
    first = 1;
    for (int i = 0; i < np; i++, first = 0)
        dl_sbuf_puts(b, first ? "null" : ",null");
    for (int i = from; i < to; i++, first = 0) {
        dl_sbuf_puts(b, first ? "{" : ",{");
        for (int k = 0; k < c->lp[i].top.n_top; k++) {
            if (k) dl_sbuf_puts(b, ",");
            json_piece(b, t, c->lp[i].top.top[k].token);
            dl_sbuf_puts(b, ":");
            json_float(b, c->lp[i].top.top[k].logprob);
        }
        dl_sbuf_puts(b, "}");
    }
    dl_sbuf_puts(b, "],\"text_offset\":[");
    first = 1;
    /* prompt offsets are not tracked per token; generated ones are from the choice text */
    for (int i = 0; i < np; i++, first = 0)
        dl_sbuf_puts(b, first ? "0" : ",0");
    for (int i = from; i < to; i++, first = 0)
        dl_sbuf_printf(b, first ? "%u" : ",%u", c->lp[i].text_offset);
    dl_sbuf_puts(b, "]}");
}

/* The three figures of a stage, without braces. */
static void stage_figures(dl_sbuf *b, const dl_delta_stage_stats *s)
{
    dl_sbuf_printf(b, "\"element\":%.6f,\"attention\":%.6f,\"qk_skipped\":%.6f",
                   dl_delta_element_sparsity(s), dl_delta_attention_sparsity(s),
                   dl_delta_qk_skipped(s));
}

static void stage_json(dl_sbuf *b, const dl_delta_stage_stats *s)
{
    dl_sbuf_puts(b, "{");
    stage_figures(b, s);
    dl_sbuf_printf(b, ",\"qk_macs_dense\":%llu,\"qk_macs_done\":%llu}",
                   (unsigned long long)s->qk_macs_dense, (unsigned long long)s->qk_macs_done);
}

/* sparsity.layers: per layer, summed over the choices like the totals; only the three
 * figures, to keep a deep model's response short. [] for a dense request. */
static void layers_json(dl_sbuf *b, const dl_job *j)
{
    int n = 0;
    for (int i = 0; i < j->n_choices; i++)
        n = j->choices[i].n_layers > n ? j->choices[i].n_layers : n;
    dl_sbuf_puts(b, "[");
    for (int l = 0; l < n; l++) {
        dl_delta_stage_stats sp[2] = {{0}, {0}};
        for (int i = 0; i < j->n_choices; i++) {
            const dl_choice *c = &j->choices[i];
            if (l < c->n_layers) {
                dl_delta_stats_add(&sp[0], &c->layers[2 * l]);
                dl_delta_stats_add(&sp[1], &c->layers[2 * l + 1]);
            }
        }
        dl_sbuf_puts(b, l ? ",{\"prefill\":{" : "{\"prefill\":{");
        stage_figures(b, &sp[0]);
        dl_sbuf_puts(b, "},\"decode\":{");
        stage_figures(b, &sp[1]);
        dl_sbuf_puts(b, "}}");
    }
    dl_sbuf_puts(b, "]");
}

/* "usage", "timings" and "sparsity" members (with a leading comma). */
static void usage_json(dl_sbuf *b, const dl_job *j)
{
    long np = 0, nc = 0, ng = 0;
    double pms = 0, gms = 0;
    int delta = 0;
    dl_delta_stage_stats sp[2] = {{0}, {0}};
    for (int i = 0; i < j->n_choices; i++) {
        const dl_choice *c = &j->choices[i];
        ng += c->n_gen;
        if (i % j->req.n == 0) {
            np += c->n_prompt;
            nc += c->n_cached;
        }
        pms = c->prompt_ms > pms ? c->prompt_ms : pms;
        gms = c->gen_ms > gms ? c->gen_ms : gms;
        delta |= c->delta_enabled;
        dl_delta_stats_add(&sp[0], &c->sparsity[0]);
        dl_delta_stats_add(&sp[1], &c->sparsity[1]);
    }
    dl_sbuf_printf(b, ",\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
                   "\"total_tokens\":%ld,\"prompt_tokens_details\":{\"cached_tokens\":%ld}}",
                   np, ng, np + ng, nc);
    long pn = np - nc;
    dl_sbuf_printf(b, ",\"timings\":{\"prompt_n\":%ld,\"prompt_ms\":%.3f,\"prompt_per_second\":%.3f,"
                   "\"predicted_n\":%ld,\"predicted_ms\":%.3f,\"predicted_per_second\":%.3f,"
                   "\"cache_n\":%ld}",
                   pn, pms, pms > 0 ? pn * 1e3 / pms : 0.0, ng, gms,
                   gms > 0 && ng > 1 ? (ng - 1) * 1e3 / gms : 0.0, nc);
    dl_sbuf_printf(b, ",\"sparsity\":{\"enabled\":%s,\"prefill\":", delta ? "true" : "false");
    stage_json(b, &sp[0]);
    dl_sbuf_puts(b, ",\"decode\":");
    stage_json(b, &sp[1]);
    dl_sbuf_puts(b, ",\"layers\":");
    layers_json(b, j);
    dl_sbuf_puts(b, "}");
}

static void head_json(dl_sbuf *b, const dl_job *j, const char *object)
{
    dl_sbuf_puts(b, "{\"id\":");
    dl_sbuf_json_str(b, j->id, strlen(j->id));
    dl_sbuf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":", object,
                   (long long)j->created);
    dl_sbuf_json_str(b, j->model_name, strlen(j->model_name));
}

/* Completions `echo`: the prompt as text (token-id prompts detokenised, invalid UTF-8
 * replaced) appended to e. */
static void echo_prompt(dl_sbuf *e, const dl_job *j, const dl_choice *c, const dl_tokenizer *t)
{
    const dl_prompt *p = &j->req.prompts[c->prompt];
    if (p->text) {
        dl_sbuf_puts(e, p->text);
        return;
    }
    if (!t)
        return;
    int need = dl_detokenize(t, p->tokens, p->n_tokens, 1, 0, NULL, 0);
    if (need <= 0)
        return;
    char *raw = malloc((size_t)need + 1), *clean = malloc((size_t)need + 16);
    if (raw && clean) {
        dl_detokenize(t, p->tokens, p->n_tokens, 1, 0, raw, need + 1);
        dl_utf8_stream u;
        dl_utf8_stream_init(&u);
        int m = dl_utf8_stream_feed(&u, raw, need, clean, need + 16);
        m += dl_utf8_stream_flush(&u, clean + m, need + 16 - m);
        dl_sbuf_add(e, clean, (size_t)m);
    }
    free(raw);
    free(clean);
}

/* Streaming chunk writer (dl_job_chunk_fn). c == NULL: end of stream. */
static void on_chunk(dl_job *j, dl_choice *c, const char *text, size_t n, int finish,
                     dl_sbuf *out)
{
    int chat = j->req.kind == DL_REQ_CHAT;
    const dl_tokenizer *t = j->on_chunk ? (const dl_tokenizer *)j->user : NULL;
    if (!c) {
        if (j->req.include_usage) {
            dl_sbuf_puts(out, "data: ");
            head_json(out, j, chat ? "chat.completion.chunk" : "text_completion");
            dl_sbuf_puts(out, ",\"choices\":[]");
            usage_json(out, j);
            dl_sbuf_puts(out, "}\n\n");
        }
        dl_sbuf_puts(out, "data: [DONE]\n\n");
        return;
    }
    if (finish && finish != DL_FINISH_STOP && finish != DL_FINISH_LENGTH) {
        const char *msg = finish == DL_FINISH_TIMEOUT ? "the request timed out"
                          : finish == DL_FINISH_SHUTDOWN ? "the server is shutting down"
                          : finish == DL_FINISH_CANCELLED ? "the request was cancelled"
                          : "internal error during generation";
        dl_sbuf_puts(out, "data: ");
        error_body(out, msg, finish == DL_FINISH_TIMEOUT ? "timeout_error" : "server_error",
                   NULL, finish_name(finish));
        dl_sbuf_puts(out, "\n\n");
        return;
    }
    dl_sbuf_puts(out, "data: ");
    head_json(out, j, chat ? "chat.completion.chunk" : "text_completion");
    dl_sbuf_printf(out, ",\"choices\":[{\"index\":%d,", c->index);
    if (chat) {
        dl_sbuf_puts(out, "\"delta\":{");
        if (c->n_chunks == 0)
            dl_sbuf_puts(out, "\"role\":\"assistant\"");
        if (n || c->n_chunks == 0) {
            if (c->n_chunks == 0)
                dl_sbuf_puts(out, ",");
            dl_sbuf_puts(out, "\"content\":");
            dl_sbuf_json_str(out, text ? text : "", n);
        }
        dl_sbuf_puts(out, "}");
    } else if (j->req.echo && c->n_chunks == 0) {
        /* echo with stream: the first chunk carries the prompt before the first text */
        dl_sbuf e;
        dl_sbuf_init(&e, 256);
        echo_prompt(&e, j, c, t);
        dl_sbuf_add(&e, text ? text : "", n);
        dl_sbuf_puts(out, "\"text\":");
        dl_sbuf_json_str(out, e.p ? e.p : "", e.len);
        dl_sbuf_free(&e);
    } else {
        dl_sbuf_puts(out, "\"text\":");
        dl_sbuf_json_str(out, text ? text : "", n);
    }
    dl_sbuf_puts(out, ",\"logprobs\":");
    if (c->lp && t) {
        if (chat)
            chat_logprobs(out, t, c, c->n_lp_sent, c->n_lp);
        else
            cmpl_logprobs(out, t, j, c, c->n_lp_sent, c->n_lp, j->req.echo && c->n_chunks == 0);
        c->n_lp_sent = c->n_lp;
    } else {
        dl_sbuf_puts(out, "null");
    }
    dl_sbuf_puts(out, ",\"finish_reason\":");
    if (finish)
        dl_sbuf_printf(out, "\"%s\"", finish_name(finish));
    else
        dl_sbuf_puts(out, "null");
    dl_sbuf_puts(out, "}]}\n\n");
    c->n_chunks++;
}

static void final_json(dl_sbuf *b, const dl_job *j, const dl_tokenizer *t)
{
    int chat = j->req.kind == DL_REQ_CHAT;
    head_json(b, j, chat ? "chat.completion" : "text_completion");
    dl_sbuf_puts(b, ",\"choices\":[");
    for (int i = 0; i < j->n_choices; i++) {
        const dl_choice *c = &j->choices[i];
        dl_sbuf_printf(b, "%s{\"index\":%d,", i ? "," : "", c->index);
        if (chat) {
            dl_sbuf_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":");
            dl_sbuf_json_str(b, c->text.p, c->text.len);
            dl_sbuf_puts(b, "}");
        } else {
            dl_sbuf_puts(b, "\"text\":");
            if (j->req.echo) {
                /* echo: the prompt text, then the completion */
                dl_sbuf e;
                dl_sbuf_init(&e, 256);
                echo_prompt(&e, j, c, t);
                dl_sbuf_add(&e, c->text.p, c->text.len);
                dl_sbuf_json_str(b, e.p, e.len);
                dl_sbuf_free(&e);
            } else {
                dl_sbuf_json_str(b, c->text.p, c->text.len);
            }
        }
        dl_sbuf_puts(b, ",\"logprobs\":");
        if (c->lp && t) {
            if (chat)
                chat_logprobs(b, t, c, 0, c->n_lp);
            else
                cmpl_logprobs(b, t, j, c, 0, c->n_lp, j->req.echo);
        } else if (!chat && c->echo_lp && t) {
            cmpl_logprobs(b, t, j, c, 0, 0, 1);
        } else {
            dl_sbuf_puts(b, "null");
        }
        dl_sbuf_printf(b, ",\"finish_reason\":\"%s\"}", finish_name(c->finish));
    }
    dl_sbuf_puts(b, "]");
    usage_json(b, j);
    dl_sbuf_puts(b, "}");
}

/* ---- live connections ----------------------------------------------------------------- */

static void live_add(dl_server *s, conn *k)
{
    k->prev = NULL;
    k->next = s->live;
    if (s->live)
        s->live->prev = k;
    s->live = k;
    k->in_live = 1;
}

static void live_remove(dl_server *s, conn *k)
{
    if (!k->in_live)
        return;
    if (k->prev)
        k->prev->next = k->next;
    else
        s->live = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->in_live = 0;
}

static void suspend(conn *k)
{
    if (!k->suspended) {
        k->suspended = 1;
        MHD_suspend_connection(k->c);
    }
}

/* Streaming body: bytes the worker has published, suspending while there are none. */
static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    conn *k = cls;
    dl_sched *sc = k->srv->sched;
    dl_sched_lock(sc);
    dl_job *j = k->job;
    ssize_t n = 0;
    if (j->out.len) {
        n = (ssize_t)(j->out.len < max ? j->out.len : max);
        memcpy(buf, j->out.p, (size_t)n);
        dl_sbuf_consume(&j->out, (size_t)n);
    } else if (j->done) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        j->wake = 0;
        suspend(k);
    }
    dl_sched_unlock(sc);
    return n;
}

/* After a wake-up: answer with what the job has (error, stream start, or the result). */
static enum MHD_Result answer_job(conn *k)
{
    dl_server *s = k->srv;
    dl_job *j = k->job;
    dl_sched_lock(s->sched);
    int status = j->http_status, done = j->done, started = j->started;
    j->wake = 0;
    dl_sched_unlock(s->sched);
    const dl_model *m = dl_sched_model(s->sched);
    if (status && status != 200 && (done || !j->req.stream)) {
        if (!done) {
            suspend(k);
            return MHD_YES;
        }
        char msg[256], type[48];
        snprintf(msg, sizeof msg, "%s", j->errmsg[0] ? j->errmsg : "internal error");
        snprintf(type, sizeof type, "%s", j->errtype[0] ? j->errtype : "server_error");
        return send_error(k, status, msg, type, NULL, NULL);
    }
    if (j->req.stream && (started || done)) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_reader, k, NULL);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result rc = MHD_queue_response(k->c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        k->queued = 1;
        dl_metrics_request(s->metrics, k->ep, 200);
        return rc;
    }
    if (!j->req.stream && done) {
        int finish = j->choices[0].finish;
        if (finish == DL_FINISH_TIMEOUT)
            return send_error(k, 504, "the request timed out", "timeout_error", NULL, "timeout");
        if (finish == DL_FINISH_SHUTDOWN)
            return send_error(k, 503, "the server is shutting down", "server_error", NULL, NULL);
        if (finish == DL_FINISH_ERROR)
            return send_error(k, 500, "internal error during generation", "server_error", NULL,
                              NULL);
        dl_sbuf b;
        if (dl_sbuf_init(&b, 1024))
            return MHD_NO;
        final_json(&b, j, m ? dl_model_tokenizer(m) : NULL);
        enum MHD_Result rc = send_json(k, 200, &b);
        dl_sbuf_free(&b);
        return rc;
    }
    suspend(k);
    return MHD_YES;
}

/* ---- endpoints ------------------------------------------------------------------------- */

static const char *model_id(dl_server *s)
{
    if (!s->model_id[0]) {
        const dl_model *m = dl_sched_model(s->sched);
        const char *base = strrchr(s->cfg.model, '/');
        base = base ? base + 1 : s->cfg.model;
        if (!m)
            return base;
        snprintf(s->model_id, sizeof s->model_id, "%.*s", (int)sizeof s->model_id - 1, base);
    }
    return s->model_id;
}

static int tokenize_text(const dl_tokenizer *t, const char *text, int add_bos, int special,
                         int32_t **out)
{
    size_t len = strlen(text);
    int cap = (int)(len < 1000000 ? len + 16 : 1000016);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    if (!ids)
        return -ENOMEM;
    int n = dl_tokenize(t, text, len, add_bos, special, ids, cap);
    if (n > cap) {
        int32_t *p = realloc(ids, sizeof(int32_t) * (size_t)n);
        if (!p) {
            free(ids);
            return -ENOMEM;
        }
        ids = p;
        n = dl_tokenize(t, text, len, add_bos, special, ids, n);
    }
    if (n < 0) {
        free(ids);
        return n;
    }
    *out = ids;
    return n;
}

static enum MHD_Result not_ready(conn *k)
{
    dl_server *s = k->srv;
    int draining = s->draining;
    dl_metrics_reject(s->metrics, draining ? DL_REJ_DRAINING : DL_REJ_NOT_READY);
    return send_error_hdr(k, 503, draining ? "the server is shutting down" : "the model is loading",
                          "server_error", NULL, draining ? "draining" : "loading", "Retry-After",
                          "1");
}

static enum MHD_Result invalid(conn *k, const char *msg, const char *param, const char *code)
{
    dl_metrics_reject(k->srv->metrics, DL_REJ_INVALID);
    return send_error(k, 400, msg, "invalid_request_error", param, code);
}

/* The same alphabet and length that dl_request_parse accepts for the body's session_id. */
static int header_session_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DL_SESSION_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-_.:", s[i]))
            return 0;
    return 1;
}

static enum MHD_Result handle_generate(conn *k, int kind)
{
    dl_server *s = k->srv;
    const dl_model *m = dl_sched_model(s->sched);
    if (!m || s->draining)
        return not_ready(k);
    const dl_tokenizer *t = dl_model_tokenizer(m);
    int n_vocab = dl_tokenizer_n_vocab(t);
    char err[512], param[64];
    dl_job *j = NULL;
    dl_request req;
    if (dl_request_parse(&req, kind, k->body.p, k->body.len, &s->cfg.delta, err, sizeof err,
                         param, sizeof param)) {
        dl_request_free(&req);
        return invalid(k, err, param, NULL);
    }
    /* A load balancer can only hash on what it sees without parsing JSON, so the session may
     * also come as the X-Session-Id header (nginx: hash $http_x_session_id consistent). The
     * body wins when both are given: it is what the client meant for this request. */
    const char *hs = MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "X-Session-Id");
    if (!req.session_id[0] && hs) {
        if (!header_session_ok(hs)) {
            dl_request_free(&req);
            return invalid(k, "the X-Session-Id header must be 1 to 128 characters of "
                              "[A-Za-z0-9._:-]", "session_id", NULL);
        }
        snprintf(req.session_id, sizeof req.session_id, "%s", hs);
    }
    int n_layer = dl_model_hparams(m)->n_layer;
    if (req.delta.enabled && req.delta.n_layer_offsets && req.delta.n_layer_offsets != n_layer) {
        snprintf(err, sizeof err, "'delta.layer_offsets' has %d values; the model has %d layers",
                 req.delta.n_layer_offsets, n_layer);
        dl_request_free(&req);
        return invalid(k, err, "delta.layer_offsets", NULL);
    }
    for (int i = 0; i < req.sampling.n_logit_bias; i++)
        if (req.sampling.logit_bias[i].token >= n_vocab) {
            dl_request_free(&req);
            return invalid(k, "'logit_bias' names a token id outside the vocabulary",
                           "logit_bias", NULL);
        }
    int n_prompts = kind == DL_REQ_CHAT ? 1 : req.n_prompts;
    j = dl_job_create(n_prompts * req.n);
    if (!j) {
        dl_request_free(&req);
        return send_error(k, 500, "out of memory", "server_error", NULL, NULL);
    }
    j->req = req; /* the job owns the request from here */
    j->n_prompts = n_prompts;
    const char *pname = kind == DL_REQ_CHAT ? "messages" : "prompt";
    if (kind == DL_REQ_CHAT) {
        dl_chat_msg *msgs = calloc((size_t)req.n_messages, sizeof *msgs);
        if (!msgs)
            goto oom;
        for (int i = 0; i < req.n_messages; i++) {
            msgs[i].role = req.messages[i].role;
            msgs[i].content = req.messages[i].content;
        }
        enum dl_chat_style st = dl_chat_detect(dl_model_chat_template(m), t);
        int need = dl_chat_format(st, msgs, req.n_messages, 1, NULL, 0);
        char *text = need >= 0 ? malloc((size_t)need + 1) : NULL;
        if (need < 0 || !text) {
            free(msgs);
            free(text);
            dl_job_release(NULL, j);
            return invalid(k, "the messages cannot be expressed in this model's chat template",
                           "messages", NULL);
        }
        dl_chat_format(st, msgs, req.n_messages, 1, text, (size_t)need + 1);
        free(msgs);
        int n = tokenize_text(t, text, dl_tokenizer_add_bos(t), 1, &j->prompt_tok[0]);
        free(text);
        if (n < 0)
            goto oom;
        j->prompt_len[0] = n;
    } else {
        for (int p = 0; p < n_prompts; p++) {
            const dl_prompt *pr = &j->req.prompts[p];
            if (pr->text) {
                int n = tokenize_text(t, pr->text, dl_tokenizer_add_bos(t), 0, &j->prompt_tok[p]);
                if (n < 0)
                    goto oom;
                j->prompt_len[p] = n;
            } else {
                for (int i = 0; i < pr->n_tokens; i++)
                    if (pr->tokens[i] >= n_vocab) {
                        snprintf(err, sizeof err, "'prompt' token id %d is outside the "
                                 "vocabulary (%d tokens)", (int)pr->tokens[i], n_vocab);
                        dl_job_release(NULL, j);
                        return invalid(k, err, "prompt", NULL);
                    }
                j->prompt_tok[p] = malloc(sizeof(int32_t) * (size_t)pr->n_tokens);
                if (!j->prompt_tok[p])
                    goto oom;
                memcpy(j->prompt_tok[p], pr->tokens, sizeof(int32_t) * (size_t)pr->n_tokens);
                j->prompt_len[p] = pr->n_tokens;
            }
        }
    }
    for (int p = 0; p < n_prompts; p++) {
        long need = (long)j->prompt_len[p] + (j->req.max_tokens > 0 ? j->req.max_tokens : 1);
        if (j->prompt_len[p] == 0) {
            dl_job_release(NULL, j);
            return invalid(k, "the prompt is empty", pname, NULL);
        }
        if (need > s->cfg.ctx) {
            snprintf(err, sizeof err, "this server's context is %d tokens; the request needs %ld "
                     "(%d in the %s, %d to generate)", s->cfg.ctx, need, j->prompt_len[p], pname,
                     j->req.max_tokens > 0 ? j->req.max_tokens : 1);
            dl_job_release(NULL, j);
            return invalid(k, err, pname, "context_length_exceeded");
        }
    }
    for (int i = 0; i < j->n_choices; i++) {
        j->choices[i].index = i;
        j->choices[i].prompt = i / j->req.n;
    }
    snprintf(j->id, sizeof j->id, "%s-%llx%04llx", kind == DL_REQ_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)time(NULL), (unsigned long long)(++s->next_id & 0xffff));
    j->created = (int64_t)time(NULL);
    snprintf(j->model_name, sizeof j->model_name, "%s", model_id(s));
    double tmo = j->req.timeout > 0 ? j->req.timeout : s->cfg.request_timeout;
    j->deadline = tmo > 0 ? dl_now() + tmo : 0;
    j->on_chunk = on_chunk;
    j->user = (void *)t; /* on_chunk formats log-prob tokens with it */
    int rc = dl_sched_submit(s->sched, j);
    if (rc == -EAGAIN) {
        char ra[32];
        snprintf(ra, sizeof ra, "%.0f", dl_sched_retry_after(s->sched));
        dl_job_release(NULL, j);
        dl_metrics_reject(s->metrics, DL_REJ_QUEUE_FULL);
        return send_error_hdr(k, 429, "the request queue is full; retry later",
                              "rate_limit_error", NULL, "queue_full", "Retry-After", ra);
    }
    if (rc) {
        dl_job_release(NULL, j);
        return not_ready(k);
    }
    dl_log(DL_LOG_DEBUG, j->id, j->req.session_id, "queued: %d choice(s), %d prompt tokens",
           j->n_choices, j->prompt_len[0]);
    k->job = j;
    live_add(s, k);
    suspend(k);
    return MHD_YES;
oom:
    dl_job_release(NULL, j);
    return send_error(k, 500, "out of memory", "server_error", NULL, NULL);
}

static enum MHD_Result handle_tokenize(conn *k, int detok)
{
    dl_server *s = k->srv;
    const dl_model *m = dl_sched_model(s->sched);
    if (!m)
        return not_ready(k);
    const dl_tokenizer *t = dl_model_tokenizer(m);
    if (!dl_utf8_valid(k->body.p, k->body.len))
        return invalid(k, "the request body is not valid UTF-8", NULL, NULL);
    cJSON *root = cJSON_ParseWithOpts(k->body.p, NULL, 1);
    if (!root || !cJSON_IsObject(root) || memchr(k->body.p, 0, k->body.len)) {
        cJSON_Delete(root);
        return invalid(k, "the request body is not a JSON object", NULL, NULL);
    }
    dl_sbuf b;
    dl_sbuf_init(&b, 256);
    enum MHD_Result rc;
    if (!detok) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
        const cJSON *as = cJSON_GetObjectItemCaseSensitive(root, "add_special");
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(root, "parse_special");
        if (!cJSON_IsString(c)) {
            rc = invalid(k, "'content' must be a string", "content", NULL);
        } else if ((as && !cJSON_IsBool(as)) || (ps && !cJSON_IsBool(ps))) {
            rc = invalid(k, "'add_special' and 'parse_special' must be booleans",
                         as && !cJSON_IsBool(as) ? "add_special" : "parse_special", NULL);
        } else {
            int32_t *ids = NULL;
            int add = as ? cJSON_IsTrue(as) : 0;
            int n = tokenize_text(t, c->valuestring, add && dl_tokenizer_bos(t) >= 0,
                                  ps ? cJSON_IsTrue(ps) : 0, &ids);
            if (n < 0) {
                rc = send_error(k, 500, "tokenizer failed", "server_error", NULL, NULL);
            } else {
                dl_sbuf_puts(&b, "{\"tokens\":[");
                for (int i = 0; i < n; i++)
                    dl_sbuf_printf(&b, i ? ",%d" : "%d", (int)ids[i]);
                dl_sbuf_puts(&b, "]}");
                rc = send_json(k, 200, &b);
            }
            free(ids);
        }
    } else {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
        int32_t *ids = n > 0 ? malloc(sizeof(int32_t) * (size_t)n) : NULL;
        int bad = n < 0 || (n > 0 && !ids), i = 0;
        const cJSON *e;
        if (!bad)
            cJSON_ArrayForEach(e, a) {
                if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int32_t)e->valuedouble ||
                    e->valuedouble < 0 || e->valuedouble >= dl_tokenizer_n_vocab(t)) {
                    bad = 1;
                    break;
                }
                ids[i++] = (int32_t)e->valuedouble;
            }
        if (bad) {
            rc = invalid(k, "'tokens' must be an array of token ids inside the vocabulary",
                         "tokens", NULL);
        } else {
            int need = n ? dl_detokenize(t, ids, n, 0, 0, NULL, 0) : 0;
            char *txt = malloc((size_t)(need > 0 ? need : 0) + 1);
            char *clean = malloc((size_t)(need > 0 ? need : 0) * 3 + 16);
            if (!txt || !clean) {
                rc = send_error(k, 500, "out of memory", "server_error", NULL, NULL);
            } else {
                int got = n ? dl_detokenize(t, ids, n, 0, 0, txt, need + 1) : 0;
                if (got > need)
                    got = need;
                dl_utf8_stream u;
                dl_utf8_stream_init(&u);
                int cl = dl_utf8_stream_feed(&u, txt, got < 0 ? 0 : got, clean, need * 3 + 16);
                cl += dl_utf8_stream_flush(&u, clean + cl, need * 3 + 16 - cl);
                dl_sbuf_puts(&b, "{\"content\":");
                dl_sbuf_json_str(&b, clean, (size_t)cl);
                dl_sbuf_puts(&b, "}");
                rc = send_json(k, 200, &b);
            }
            free(txt);
            free(clean);
        }
        free(ids);
    }
    dl_sbuf_free(&b);
    cJSON_Delete(root);
    return rc;
}

static enum MHD_Result handle_models(conn *k)
{
    dl_server *s = k->srv;
    const dl_model *m = dl_sched_model(s->sched);
    if (!m)
        return not_ready(k);
    const dl_hparams *hp = dl_model_hparams(m);
    dl_sbuf b;
    dl_sbuf_init(&b, 512);
    dl_sbuf_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    const char *id = model_id(s);
    dl_sbuf_json_str(&b, id, strlen(id));
    dl_sbuf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"deltallm\","
                   "\"meta\":{\"n_vocab\":%d,\"n_ctx_train\":%d,\"n_ctx\":%d,\"n_params\":%lld,"
                   "\"arch\":", (long long)time(NULL), hp->n_vocab, hp->n_ctx_train, s->cfg.ctx,
                   (long long)hp->n_params);
    dl_sbuf_json_str(&b, hp->arch, strnlen(hp->arch, sizeof hp->arch));
    dl_sbuf_puts(&b, "}}]}");
    enum MHD_Result rc = send_json(k, 200, &b);
    dl_sbuf_free(&b);
    return rc;
}

static enum MHD_Result handle_simple(conn *k, const char *method, const char *url)
{
    dl_server *s = k->srv;
    dl_sbuf b;
    enum MHD_Result rc;
    switch (k->ep) {
    case DL_EP_HEALTH:
        dl_sbuf_init(&b, 64);
        dl_sbuf_puts(&b, "{\"status\":\"ok\"}");
        rc = send_json(k, 200, &b);
        dl_sbuf_free(&b);
        return rc;
    case DL_EP_READY: {
        int st = dl_sched_state(s->sched, NULL, 0);
        if (s->draining)
            return send_error(k, 503, "draining", "server_error", NULL, "draining");
        if (st != DL_SCHED_READY)
            return send_error(k, 503, "loading", "server_error", NULL, "loading");
        if (dl_sched_saturated(s->sched))
            return send_error(k, 503, "saturated: the request queue is full", "server_error",
                              NULL, "saturated");
        dl_sbuf_init(&b, 64);
        dl_sbuf_puts(&b, "{\"status\":\"ready\"}");
        rc = send_json(k, 200, &b);
        dl_sbuf_free(&b);
        return rc;
    }
    case DL_EP_METRICS:
        dl_sched_gauges(s->sched, s->metrics);
        dl_sbuf_init(&b, 16384);
        dl_metrics_render(s->metrics, &b);
        rc = b.oom ? MHD_NO
                   : send_buf(k, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len,
                              NULL, NULL);
        dl_sbuf_free(&b);
        return rc;
    case DL_EP_MODELS:
        return handle_models(k);
    case DL_EP_TOKENIZE:
        return handle_tokenize(k, 0);
    case DL_EP_DETOKENIZE:
        return handle_tokenize(k, 1);
    case DL_EP_SESSIONS:
        if (!strcmp(method, "GET") && !strcmp(url, "/v1/sessions")) {
            dl_sbuf_init(&b, 256);
            dl_sched_sessions_json(s->sched, &b);
            rc = send_json(k, 200, &b);
            dl_sbuf_free(&b);
            return rc;
        } else {
            const char *id = url + strlen("/v1/sessions/");
            int r = dl_sched_session_delete(s->sched, id);
            if (r == -ENOENT) {
                dl_metrics_reject(s->metrics, DL_REJ_NOT_FOUND);
                return send_error(k, 404, "no such session", "invalid_request_error",
                                  "session_id", "session_not_found");
            }
            if (r == -EBUSY)
                return send_error(k, 409, "the session is generating; retry when it is done",
                                  "invalid_request_error", "session_id", "session_busy");
            dl_sbuf_init(&b, 128);
            dl_sbuf_puts(&b, "{\"id\":");
            dl_sbuf_json_str(&b, id, strlen(id));
            dl_sbuf_puts(&b, ",\"object\":\"session\",\"deleted\":true}");
            rc = send_json(k, 200, &b);
            dl_sbuf_free(&b);
            return rc;
        }
    default:
        return MHD_NO;
    }
}

/* ---- routing --------------------------------------------------------------------------- */

/* Endpoint for a path and whether the method fits; Allow value in *allow. */
static int route(const char *method, const char *url, int *ok, const char **allow)
{
    static const struct { const char *path; int ep; const char *method; } routes[] = {
        {"/v1/completions", DL_EP_COMPLETIONS, "POST"},
        {"/v1/chat/completions", DL_EP_CHAT, "POST"},
        {"/v1/models", DL_EP_MODELS, "GET"},
        {"/health", DL_EP_HEALTH, "GET"},
        {"/ready", DL_EP_READY, "GET"},
        {"/metrics", DL_EP_METRICS, "GET"},
        {"/tokenize", DL_EP_TOKENIZE, "POST"},
        {"/detokenize", DL_EP_DETOKENIZE, "POST"},
        {"/v1/sessions", DL_EP_SESSIONS, "GET"},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) {
            *allow = routes[i].method;
            *ok = !strcmp(method, routes[i].method) ||
                  (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"));
            return routes[i].ep;
        }
    if (!strncmp(url, "/v1/sessions/", 13) && url[13] && !strchr(url + 13, '/')) {
        *allow = "DELETE";
        *ok = !strcmp(method, "DELETE");
        return DL_EP_SESSIONS;
    }
    *ok = 0;
    *allow = NULL;
    return DL_EP_OTHER;
}

static int authorized(dl_server *s, struct MHD_Connection *c)
{
    if (s->cfg.n_api_keys == 0)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return 0;
    h += 7;
    size_t hl = strlen(h);
    int ok = 0;
    for (int i = 0; i < s->cfg.n_api_keys; i++) {
        const char *key = s->cfg.api_keys[i];
        size_t kl = strlen(key);
        unsigned diff = (unsigned)(kl ^ hl);
        for (size_t b = 0; b < kl; b++) /* constant time in the key's length */
            diff |= (unsigned)(key[b] ^ (b < hl ? h[b] : 0));
        ok |= diff == 0;
    }
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    dl_server *s = cls;
    conn *k = *con_cls;
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k || dl_sbuf_init(&k->body, 1024)) {
            free(k);
            return MHD_NO;
        }
        k->srv = s;
        k->c = c;
        *con_cls = k;
        const char *allow;
        k->ep = route(method, url, &k->method_ok, &allow);
        if (k->ep == DL_EP_OTHER) {
            dl_metrics_reject(s->metrics, DL_REJ_NOT_FOUND);
            return send_error(k, 404, "no such endpoint", "invalid_request_error", NULL,
                              "not_found");
        }
        if (!k->method_ok) {
            dl_metrics_reject(s->metrics, DL_REJ_METHOD);
            char msg[128];
            snprintf(msg, sizeof msg, "method %.16s is not allowed here; use %s", method, allow);
            return send_error_hdr(k, 405, msg, "invalid_request_error", NULL,
                                  "method_not_allowed", "Allow", allow);
        }
        if (k->ep != DL_EP_HEALTH && !authorized(s, c)) {
            dl_metrics_reject(s->metrics, DL_REJ_UNAUTHORIZED);
            return send_error_hdr(k, 401, "missing or invalid API key (Authorization: Bearer)",
                                  "invalid_request_error", NULL, "invalid_api_key",
                                  "WWW-Authenticate", "Bearer");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body) {
            dl_metrics_reject(s->metrics, DL_REJ_BODY_TOO_LARGE);
            return send_error(k, 413, "the request body is too large", "invalid_request_error",
                              NULL, "body_too_large");
        }
        return MHD_YES;
    }
    if (k->queued) {
        *upload_size = 0; /* an error was queued early: drop the rest of the body */
        return MHD_YES;
    }
    if (*upload_size) {
        if (k->body.len + *upload_size > s->cfg.max_body)
            k->too_large = 1;
        else
            dl_sbuf_add(&k->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->job) {
        k->suspended = 0;
        return answer_job(k);
    }
    if (k->too_large) {
        dl_metrics_reject(s->metrics, DL_REJ_BODY_TOO_LARGE);
        return send_error(k, 413, "the request body is too large", "invalid_request_error", NULL,
                          "body_too_large");
    }
    if (k->body.oom)
        return send_error(k, 500, "out of memory", "server_error", NULL, NULL);
    if (k->ep == DL_EP_COMPLETIONS)
        return handle_generate(k, DL_REQ_COMPLETION);
    if (k->ep == DL_EP_CHAT)
        return handle_generate(k, DL_REQ_CHAT);
    return handle_simple(k, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    dl_server *s = cls;
    conn *k = *con_cls;
    if (!k)
        return;
    if (k->job) {
        dl_sched_lock(s->sched);
        int done = k->job->done;
        dl_sched_unlock(s->sched);
        if (!done)
            dl_sched_cancel(s->sched, k->job, DL_FINISH_CANCELLED);
        live_remove(s, k);
        dl_job_release(s->sched, k->job);
    }
    dl_sbuf_free(&k->body);
    free(k);
    *con_cls = NULL;
}

/* ---- loop plumbing --------------------------------------------------------------------- */

static void mhd_run(dl_server *s)
{
    if (s->mhd)
        MHD_run(s->mhd);
}

/* A suspended connection is not polled by MHD: find clients that went away ourselves. */
static void check_disconnects(dl_server *s)
{
    for (conn *k = s->live; k; k = k->next) {
        if (!k->suspended)
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(k->c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
            continue;
        char b;
        ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            dl_sched_cancel(s->sched, k->job, DL_FINISH_CANCELLED);
    }
}

static void resume_woken(dl_server *s)
{
    dl_sched_lock(s->sched);
    for (conn *k = s->live; k; k = k->next)
        if (k->suspended && k->job->wake) {
            k->suspended = 0;
            MHD_resume_connection(k->c);
        }
    dl_sched_unlock(s->sched);
}

static void stop_loop(dl_server *s)
{
    uv_stop(&s->loop);
}

static void check_drain(dl_server *s)
{
    if (!s->draining)
        return;
    double now = dl_now();
    if (!s->drain_cancelled && now > s->drain_deadline) {
        dl_log(DL_LOG_WARN, NULL, NULL, "drain deadline passed: cancelling in-flight requests");
        dl_sched_drain(s->sched, DL_FINISH_SHUTDOWN);
        s->drain_cancelled = 1;
        s->drain_deadline = now + 5; /* time to flush the error events */
    }
    if ((dl_sched_busy(s->sched) == 0 && !s->live) ||
        (s->drain_cancelled && now > s->drain_deadline))
        stop_loop(s);
}

static void check_loaded(dl_server *s)
{
    char err[512];
    int st = dl_sched_state(s->sched, err, sizeof err);
    if (st == DL_SCHED_FAILED) {
        dl_log(DL_LOG_ERROR, NULL, NULL, "cannot load the model: %s", err);
        s->exit_code = 1;
        stop_loop(s);
    } else if (st == DL_SCHED_READY && !s->loaded_logged) {
        s->loaded_logged = 1;
        dl_metrics_set_model(s->metrics, model_id(s));
        dl_log(DL_LOG_INFO, NULL, NULL, "ready: serving %s on %s:%d", model_id(s), s->cfg.host,
               s->port);
    }
}

static void on_wakeup(uv_async_t *h)
{
    dl_server *s = h->data;
    check_loaded(s);
    check_disconnects(s);
    resume_woken(s);
    mhd_run(s);
    check_drain(s);
}

static void on_tick(uv_timer_t *h)
{
    on_wakeup(&((dl_server *)h->data)->wakeup);
}

static void on_mhd_poll(uv_poll_t *h, int status, int events)
{
    mhd_run(h->data);
}

static void notify_loop(void *arg)
{
    uv_async_send(arg);
}

static void on_signal(uv_signal_t *h, int signum)
{
    dl_server *s = h->data;
    if (signum == SIGHUP) {
        int rc = dl_log_reopen();
        dl_log(rc ? DL_LOG_ERROR : DL_LOG_INFO, NULL, NULL, "SIGHUP: log reopened%s",
               rc ? " (failed)" : "");
        return;
    }
    if (s->draining) {
        dl_log(DL_LOG_WARN, NULL, NULL, "second signal: cancelling in-flight requests now");
        s->drain_deadline = 0;
        check_drain(s);
        return;
    }
    dl_log(DL_LOG_INFO, NULL, NULL, "signal %d: draining (deadline %.0f s)", signum,
           s->cfg.drain_timeout);
    s->draining = 1;
    s->drain_deadline = dl_now() + s->cfg.drain_timeout;
    dl_sched_drain(s->sched, 0);
    check_drain(s);
}

/* ---- life cycle ------------------------------------------------------------------------ */

static int resolve(const char *host, int port, struct sockaddr_storage *ss, int *v6, char *err,
                   size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc || !res) {
        snprintf(err, errlen, "host: cannot resolve '%s': %s", host, gai_strerror(rc));
        return -EINVAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

int dl_server_create(const dl_config *cfg, dl_server **out, char *err, size_t errlen)
{
    dl_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->cfg = *cfg;
    if (!s->cfg.memory_budget) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        s->cfg.memory_budget = (uint64_t)((double)pages * (double)psz * 0.8);
    }
    int rc = -EINVAL;
    s->metrics = dl_metrics_create("");
    if (!s->metrics || uv_loop_init(&s->loop)) {
        snprintf(err, errlen, "out of memory");
        dl_metrics_free(s->metrics);
        free(s);
        return -ENOMEM;
    }
    uv_async_init(&s->loop, &s->wakeup, on_wakeup);
    s->wakeup.data = s;
    struct sockaddr_storage ss;
    int v6 = 0;
    if ((rc = resolve(cfg->host, cfg->port, &ss, &v6, err, errlen)))
        goto fail;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    s->mhd = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, s,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                              MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "port: cannot listen on %s:%d (in use, or not permitted)",
                 cfg->host, cfg->port);
        rc = -EADDRINUSE;
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di || uv_poll_init(&s->loop, &s->mhd_poll, di->epoll_fd)) {
        snprintf(err, errlen, "cannot watch the HTTP server's epoll descriptor");
        rc = -EIO;
        goto fail;
    }
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, 100, 100);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sighup);
    s->sigterm.data = s->sigint.data = s->sighup.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sighup, on_signal, SIGHUP);

    dl_sched_opts o = {0};
    o.model_path = cfg->model;
    o.threads = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads < 1)
        o.threads = 1;
    o.parallel = cfg->parallel;
    o.ctx = cfg->ctx;
    o.batch = cfg->batch;
    o.max_queue = cfg->max_queue;
    o.memory_budget = s->cfg.memory_budget;
    o.session_ttl = cfg->session_ttl;
    o.delta_layer_offsets = cfg->delta.n_layer_offsets;
    o.metrics = s->metrics;
    o.notify = notify_loop;
    o.notify_arg = &s->wakeup;
    if ((rc = dl_sched_create(&o, &s->sched, err, errlen)))
        goto fail;
    dl_log(DL_LOG_INFO, NULL, NULL, "listening on %s:%d, loading %s", cfg->host, s->port,
           cfg->model);
    *out = s;
    return 0;
fail:
    dl_server_destroy(s);
    return rc;
}

int dl_server_port(const dl_server *s) { return s->port; }

int dl_server_run(dl_server *s)
{
    uv_run(&s->loop, UV_RUN_DEFAULT);
    if (s->exit_code == 0)
        dl_log(DL_LOG_INFO, NULL, NULL, "drained; exiting");
    return s->exit_code;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void dl_server_destroy(dl_server *s)
{
    if (!s)
        return;
    if (s->sched)
        dl_sched_drain(s->sched, DL_FINISH_SHUTDOWN);
    if (s->mhd) {
        /* resume everything so MHD can close it; the completion callbacks release jobs */
        if (s->sched)
            dl_sched_lock(s->sched);
        for (conn *k = s->live; k; k = k->next)
            if (k->suspended) {
                k->suspended = 0;
                MHD_resume_connection(k->c);
            }
        if (s->sched)
            dl_sched_unlock(s->sched);
        MHD_stop_daemon(s->mhd);
        s->mhd = NULL;
    }
    dl_sched_destroy(s->sched);
    s->sched = NULL;
    uv_walk(&s->loop, close_walk, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    dl_metrics_free(s->metrics);
    free(s);
}
