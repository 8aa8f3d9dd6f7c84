/* test_daemon.c — integration tests: the real deltallmd binary ($DL_BUILD/deltallmd, default
 * build/) on 127.0.0.1 with stories260K, driven over HTTP with libcurl. Also the config
 * precedence chain as a unit. Waits are polls with deadlines, never sleeps as assertions. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"

#define KEY "test-key-123"

typedef struct daemon_proc {
    pid_t pid;
    int port;
    char log[256];
} daemon_proc;

static daemon_proc main_d;

static const char *daemon_path(void)
{
    static char p[4096];
    const char *b = getenv("DL_BUILD");
    snprintf(p, sizeof p, "%s/deltallmd", b && *b ? b : "build");
    return p;
}

/* ---- HTTP -------------------------------------------------------------------------------- */

typedef dl_test_resp resp;

static CURL *make_easy(int port, const char *method, const char *path, const char *body,
                       size_t blen, const char *key, resp *r, struct curl_slist **hl)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dl_test_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, dl_test_on_hdr);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    *hl = curl_slist_append(NULL, "Content-Type: application/json");
    *hl = curl_slist_append(*hl, "Expect:");
    if (key) {
        char a[300];
        snprintf(a, sizeof a, "Authorization: Bearer %s", key);
        *hl = curl_slist_append(*hl, a);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hl);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)blen);
    }
    return c;
}

static resp http_key(int port, const char *method, const char *path, const char *body,
                     const char *key)
{
    resp r = {0};
    struct curl_slist *hl;
    CURL *c = make_easy(port, method, path, body, body ? strlen(body) : 0, key, &r, &hl);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else
        r.status = -1;
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (!r.body)
        r.body = calloc(1, 1);
    return r;
}

static resp http(const char *method, const char *path, const char *body)
{
    return http_key(main_d.port, method, path, body, KEY);
}

static void resp_free(resp *r) { free(r->body); }

/* The error envelope: {"error":{"message","type","param","code"}}; returns param or "". */
static void check_error(const resp *r, long status, const char *param)
{
    ck_assert_msg(r->status == status, "status %ld, wanted %ld: %.300s", r->status, status, r->body);
    cJSON *j = cJSON_Parse(r->body);
    ck_assert_msg(j != NULL, "error body is not JSON: %s", r->body);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    ck_assert_msg(cJSON_IsObject(e), "no error object: %s", r->body);
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(e, "type")));
    ck_assert(cJSON_HasObjectItem(e, "param"));
    ck_assert(cJSON_HasObjectItem(e, "code"));
    if (param) {
        cJSON *p = cJSON_GetObjectItem(e, "param");
        ck_assert_msg(cJSON_IsString(p) && !strcmp(p->valuestring, param),
                      "param should be %s: %s", param, r->body);
    }
    cJSON_Delete(j);
}

/* Value of the line "name{labels} value" (exact name+labels) in a /metrics body, or -1. */
static double series_value(const char *body, const char *series)
{
    double v = -1;
    size_t n = strlen(series);
    for (const char *p = body; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!strncmp(p, series, n) && p[n] == ' ')
            v = atof(p + n + 1);
        p = eol ? eol + 1 : NULL;
    }
    return v;
}

/* The same from a fresh scrape. */
static double metric(int port, const char *series)
{
    resp r = http_key(port, "GET", "/metrics", NULL, KEY);
    double v = series_value(r.body, series);
    resp_free(&r);
    return v;
}

static int wait_metric(int port, const char *series, double want, double secs)
{
    double end = dl_test_now() + secs;
    while (dl_test_now() < end) {
        if (metric(port, series) == want)
            return 1;
        dl_test_nap();
    }
    return 0;
}

/* ---- daemon processes ------------------------------------------------------------------- */

static void start_daemon(daemon_proc *d, const char *const *extra)
{
    d->port = dl_test_free_port();
    snprintf(d->log, sizeof d->log, "/tmp/test_daemon.%d.%d.log", (int)getpid(), d->port);
    const char *argv[64];
    int n = 0;
    char port[16];
    snprintf(port, sizeof port, "%d", d->port);
    argv[n++] = daemon_path();
    argv[n++] = "--model";
    argv[n++] = dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf");
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--threads";
    argv[n++] = "1";
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    d->pid = pid;
    double end = dl_test_now() + 30;
    while (dl_test_now() < end) {
        resp r = http_key(d->port, "GET", "/ready", NULL, KEY);
        long st = r.status;
        resp_free(&r);
        if (st == 200)
            return;
        int wst;
        if (waitpid(pid, &wst, WNOHANG) == pid) {
            d->pid = 0;
            ck_abort_msg("daemon exited at start; see %s", d->log);
        }
        dl_test_nap();
    }
    ck_abort_msg("daemon did not become ready; see %s", d->log);
}

/* SIGTERM and wait; returns the exit status, or -1. */
static int stop_daemon(daemon_proc *d)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGTERM);
    int st = 0;
    double end = dl_test_now() + 60;
    while (dl_test_now() < end) {
        pid_t p = waitpid(d->pid, &st, WNOHANG);
        if (p == d->pid) {
            d->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        dl_test_nap();
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &st, 0);
    d->pid = 0;
    return -1;
}

static void main_setup(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    static const char *extra[] = {"--api-key", KEY, "--parallel", "4", "--ctx", "512",
                                  "--batch", "64", "--max-queue", "64", "--max-body", "64K",
                                  NULL};
    start_daemon(&main_d, extra);
}

static void main_teardown(void)
{
    int st = stop_daemon(&main_d);
    if (st != 0)
        fprintf(stderr, "main daemon exited with %d (log %s)\n", st, main_d.log);
    curl_global_cleanup();
}

/* ---- JSON helpers ----------------------------------------------------------------------- */

static cJSON *parse_ok(const resp *r)
{
    ck_assert_msg(r->status == 200, "status %ld: %s", r->status, r->body);
    cJSON *j = cJSON_Parse(r->body);
    ck_assert_msg(j != NULL, "not JSON: %s", r->body);
    return j;
}

static const char *choice_text(cJSON *j, int i, int chat)
{
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), i);
    ck_assert(c != NULL);
    cJSON *t = chat ? cJSON_GetObjectItem(cJSON_GetObjectItem(c, "message"), "content")
                    : cJSON_GetObjectItem(c, "text");
    ck_assert(cJSON_IsString(t));
    return t->valuestring;
}

static long usage(cJSON *j, const char *k)
{
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    if (!strcmp(k, "cached_tokens"))
        u = cJSON_GetObjectItem(u, "prompt_tokens_details");
    cJSON *v = cJSON_GetObjectItem(u, k);
    ck_assert_msg(cJSON_IsNumber(v), "usage.%s missing", k);
    return (long)v->valuedouble;
}

/* Concatenate the text of an SSE stream (choice 0); checks framing and [DONE]. */
static char *sse_text(const char *body, int chat, int *n_events, cJSON **usage_chunk)
{
    size_t cap = strlen(body) + 1, len = 0;
    char *out = calloc(1, cap);
    int done = 0;
    *n_events = 0;
    if (usage_chunk)
        *usage_chunk = NULL;
    for (const char *p = body; *p;) {
        const char *eol = strstr(p, "\n\n");
        ck_assert_msg(eol != NULL, "unterminated SSE event: %s", p);
        if (!strncmp(p, "data: [DONE]", 12)) {
            done = 1;
        } else if (!strncmp(p, "data: ", 6)) {
            ck_assert_msg(!done, "event after [DONE]");
            char *ev = strndup(p + 6, (size_t)(eol - p - 6));
            cJSON *j = cJSON_Parse(ev);
            ck_assert_msg(j != NULL, "event is not JSON: %s", ev);
            free(ev);
            ck_assert_msg(!cJSON_HasObjectItem(j, "error"), "error event in stream");
            cJSON *ch = cJSON_GetObjectItem(j, "choices");
            cJSON *c0 = cJSON_GetArrayItem(ch, 0);
            if (c0) {
                cJSON *t = chat ? cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "content")
                                : cJSON_GetObjectItem(c0, "text");
                if (cJSON_IsString(t)) {
                    size_t k = strlen(t->valuestring);
                    memcpy(out + len, t->valuestring, k);
                    len += k;
                }
                (*n_events)++;
                cJSON_Delete(j);
            } else if (usage_chunk) {
                *usage_chunk = j;
            } else {
                cJSON_Delete(j);
            }
        } else {
            ck_assert_msg(*p == ':', "unexpected SSE line: %.40s", p);
        }
        p = eol + 2;
    }
    ck_assert_msg(done, "no data: [DONE]");
    return out;
}

/* ---- tests: plumbing and errors --------------------------------------------------------- */

START_TEST(health_ready_models)
{
    resp r = http_key(main_d.port, "GET", "/health", NULL, NULL); /* no key: still open */
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"ok\""));
    resp_free(&r);
    r = http("GET", "/ready", NULL);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    r = http("GET", "/v1/models", NULL);
    cJSON *j = parse_ok(&r);
    cJSON *d = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(d, "object")->valuestring, "model");
    ck_assert(strstr(cJSON_GetObjectItem(d, "id")->valuestring, "stories"));
    cJSON_Delete(j);
    resp_free(&r);
}
END_TEST

START_TEST(auth_and_routing_errors)
{
    resp r = http_key(main_d.port, "GET", "/v1/models", NULL, NULL);
    check_error(&r, 401, NULL);
    resp_free(&r);
    r = http_key(main_d.port, "POST", "/v1/completions", "{\"prompt\":\"x\"}", "wrong-key");
    check_error(&r, 401, NULL);
    resp_free(&r);
    r = http_key(main_d.port, "GET", "/ready", NULL, NULL);
    check_error(&r, 401, NULL);
    resp_free(&r);
    r = http("GET", "/nope", NULL);
    check_error(&r, 404, NULL);
    resp_free(&r);
    r = http("GET", "/v1/completions", NULL);
    check_error(&r, 405, NULL);
    ck_assert_msg(strstr(r.hdr, "Allow: POST"), "no Allow header: %s", r.hdr);
    resp_free(&r);
    r = http("POST", "/health", "{}");
    check_error(&r, 405, NULL);
    resp_free(&r);
    /* oversize body: 64 KiB limit */
    size_t big = 100 * 1024;
    char *b = malloc(big + 64);
    strcpy(b, "{\"prompt\":\"");
    memset(b + 11, 'a', big);
    strcpy(b + 11 + big, "\"}");
    r = http("POST", "/v1/completions", b);
    check_error(&r, 413, NULL);
    resp_free(&r);
    free(b);
}
END_TEST

typedef struct bad_case {
    const char *path;
    const char *body;
    long status;
    const char *param; /* expected `param`, NULL = not checked, "" = null */
} bad_case;

START_TEST(malformed_corpus)
{
    static const bad_case cases[] = {
        {"/v1/completions", "{\"prompt\": \"x\"", 400, NULL},
        {"/v1/completions", "not json", 400, NULL},
        {"/v1/completions", "[1,2,3]", 400, NULL},
        {"/v1/completions", "{\"prompt\":\"a\"} trailing", 400, NULL},
        {"/v1/completions", "", 400, NULL},
        {"/v1/completions", "{}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":\"\"}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":[]}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":42}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":[1,\"a\"]}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":[99999]}", 400, "prompt"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", 400, "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":-1}", 400, "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":1e300}", 400, "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2.5}", 400, "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":100000000000000000000000}", 400,
         "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"x\",\"temperature\":3}", 400, "temperature"},
        {"/v1/completions", "{\"prompt\":\"x\",\"temperature\":1e999}", 400, "temperature"},
        {"/v1/completions", "{\"prompt\":\"x\",\"temperature\":true}", 400, "temperature"},
        {"/v1/completions", "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p"},
        {"/v1/completions", "{\"prompt\":\"x\",\"n\":0}", 400, "n"},
        {"/v1/completions", "{\"prompt\":\"x\",\"n\":1000}", 400, "n"},
        {"/v1/completions", "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "stream"},
        {"/v1/completions", "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400,
         "stop"},
        {"/v1/completions", "{\"prompt\":\"x\",\"stop\":\"\"}", 400, "stop"},
        {"/v1/completions", "{\"prompt\":\"x\",\"seed\":\"1\"}", 400, "seed"},
        {"/v1/completions", "{\"prompt\":\"x\",\"presence_penalty\":5}", 400,
         "presence_penalty"},
        {"/v1/completions", "{\"prompt\":\"x\",\"frequency_penalty\":-3}", 400,
         "frequency_penalty"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", 400, "logit_bias"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logit_bias\":{\"5\":500}}", 400, "logit_bias"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logit_bias\":{\"99999\":1}}", 400, "logit_bias"},
        {"/v1/completions", "{\"prompt\":\"x\",\"logprobs\":50}", 400, "logprobs"},
        {"/v1/completions", "{\"prompt\":\"x\",\"top_k\":-2}", 400, "top_k"},
        {"/v1/completions", "{\"prompt\":\"x\",\"min_p\":1.5}", 400, "min_p"},
        {"/v1/completions", "{\"prompt\":\"x\",\"repeat_penalty\":0}", 400, "repeat_penalty"},
        {"/v1/completions", "{\"prompt\":\"x\",\"session_id\":\"bad id!\"}", 400, "session_id"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":5}", 400, "delta"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"window\":0}}", 400, "delta.window"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"theta\":-1}}", 400, "delta.theta"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"theta\":0.3,\"sparsity_target\":0.5}}",
         400, "delta.sparsity_target"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"stages\":\"all\"}}", 400,
         "delta.stages"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"block_frac\":2}}", 400,
         "delta.block_frac"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"lag\":1.5}}", 400, "delta.lag"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"prefill_window\":-1}}", 400,
         "delta.prefill_window"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"layer_offsets\":[0.1,0.2]}}", 400,
         "delta.layer_offsets"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"layer_offsets\":\"0,0\"}}", 400,
         "delta.layer_offsets"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"layer_offsets\":[0,0,2,0,0]}}", 400,
         "delta.layer_offsets"},
        {"/v1/completions", "{\"prompt\":\"x\",\"delta\":{\"layer_offsets\":[0,0,\"a\",0,0]}}",
         400, "delta.layer_offsets"},
        {"/v1/completions", "{\"prompt\":\"x\",\"stream_options\":3}", 400, "stream_options"},
        {"/v1/completions", "{\"prompt\":\"x\",\"timeout\":-1}", 400, "timeout"},
        {"/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":600}", 400, "prompt"},
        {"/v1/chat/completions", "{}", 400, "messages"},
        {"/v1/chat/completions", "{\"messages\":[]}", 400, "messages"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400,
         "messages"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400,
         "messages"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
         "messages"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", 400,
         "top_logprobs"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":1}", 400,
         "logprobs"},
        {"/tokenize", "{\"content\":5}", 400, "content"},
        {"/tokenize", "nope", 400, NULL},
        {"/detokenize", "{\"tokens\":[1,99999]}", 400, "tokens"},
        {"/detokenize", "{\"tokens\":\"x\"}", 400, "tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        resp r = http("POST", cases[i].path, cases[i].body);
        if (r.status != cases[i].status)
            ck_abort_msg("case %zu (%.100s): status %ld, wanted %ld: %.300s", i, cases[i].body, r.status,
                         cases[i].status, r.body);
        check_error(&r, cases[i].status, cases[i].param);
        resp_free(&r);
    }
    /* prompt over the context: a 2000-word prompt with ctx 512 */
    char *p = malloc(20000);
    strcpy(p, "{\"prompt\":\"");
    for (int i = 0; i < 2000; i++)
        strcat(p, "cat ");
    strcat(p, "\"}");
    resp r = http("POST", "/v1/completions", p);
    check_error(&r, 400, "prompt");
    ck_assert(strstr(r.body, "context_length_exceeded"));
    resp_free(&r);
    free(p);
    /* invalid UTF-8 (raw bytes, not escapes) */
    const char bad[] = "{\"prompt\":\"ab\xff\xfe\"}";
    r = http("POST", "/v1/completions", bad);
    check_error(&r, 400, NULL);
    resp_free(&r);
    const char overlong[] = "{\"prompt\":\"\xc0\xaf\"}";
    r = http("POST", "/v1/completions", overlong);
    check_error(&r, 400, NULL);
    resp_free(&r);
    /* unknown fields are ignored */
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"Once\",\"max_tokens\":2,\"frobnicate\":{\"x\":[1]},\"suffix\":null}");
    ck_assert_msg(r.status == 200, "unknown field refused: %s", r.body);
    resp_free(&r);
    /* the daemon still serves */
    r = http_key(main_d.port, "GET", "/health", NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

/* ---- tests: generation ------------------------------------------------------------------ */

START_TEST(completion_basic)
{
    const char *body = "{\"model\":\"x\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
                       "\"temperature\":0}";
    resp r = http("POST", "/v1/completions", body);
    cJSON *j = parse_ok(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    const char *t = choice_text(j, 0, 0);
    ck_assert_msg(strlen(t) > 10, "short completion: %s", t);
    ck_assert_int_eq(usage(j, "completion_tokens"), 24);
    ck_assert_int_gt(usage(j, "prompt_tokens"), 3);
    ck_assert_int_eq(usage(j, "total_tokens"), usage(j, "prompt_tokens") + 24);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length");
    cJSON *tm = cJSON_GetObjectItem(j, "timings");
    const char *tk[] = {"prompt_n", "prompt_ms", "prompt_per_second", "predicted_n",
                        "predicted_ms", "predicted_per_second", "cache_n"};
    for (int i = 0; i < 7; i++)
        ck_assert_msg(cJSON_IsNumber(cJSON_GetObjectItem(tm, tk[i])), "timings.%s", tk[i]);
    ck_assert_int_eq((int)cJSON_GetObjectItem(tm, "predicted_n")->valuedouble, 24);
    cJSON *sp = cJSON_GetObjectItem(j, "sparsity");
    for (int st = 0; st < 2; st++) {
        cJSON *s = cJSON_GetObjectItem(sp, st ? "decode" : "prefill");
        ck_assert(cJSON_IsObject(s));
        ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(s, "element")));
        ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(s, "attention")));
        ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(s, "qk_skipped")));
    }
    /* greedy is deterministic */
    char *first = strdup(t);
    cJSON_Delete(j);
    resp_free(&r);
    r = http("POST", "/v1/completions", body);
    j = parse_ok(&r);
    ck_assert_str_eq(choice_text(j, 0, 0), first);
    cJSON_Delete(j);
    resp_free(&r);
    /* a stop string taken from the greedy text ends it right before */
    char stop_body[512], stopw[8];
    snprintf(stopw, sizeof stopw, "%.4s", first + 8);
    snprintf(stop_body, sizeof stop_body, "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,"
             "\"temperature\":0,\"stop\":[\"%s\"]}", stopw);
    r = http("POST", "/v1/completions", stop_body);
    j = parse_ok(&r);
    const char *st = choice_text(j, 0, 0);
    ck_assert_msg(strstr(first, stopw) && strlen(st) == (size_t)(strstr(first, stopw) - first),
                  "stop '%s': '%s' vs '%s'", stopw, st, first);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON_Delete(j);
    resp_free(&r);
    free(first);
}
END_TEST

START_TEST(completion_variants)
{
    /* n = 2 and several prompts; token-id prompt; echo + logprobs */
    resp r = http("POST", "/v1/completions",
                  "{\"prompt\":[\"Once\",\"The dog\"],\"n\":2,\"max_tokens\":4,\"seed\":7}");
    cJSON *j = parse_ok(&r);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 4);
    ck_assert_int_eq(usage(j, "completion_tokens"), 16);
    cJSON_Delete(j);
    resp_free(&r);
    r = http("POST", "/tokenize", "{\"content\":\"Once upon a time\",\"add_special\":true}");
    j = parse_ok(&r);
    cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    ck_assert_int_gt(cJSON_GetArraySize(toks), 2);
    char *tj = cJSON_PrintUnformatted(toks);
    cJSON_Delete(j);
    resp_free(&r);
    char body[1024];
    snprintf(body, sizeof body, "{\"prompt\":%s,\"max_tokens\":5,\"temperature\":0,"
             "\"logprobs\":3,\"echo\":true}", tj);
    r = http("POST", "/v1/completions", body);
    j = parse_ok(&r);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_msg(!strncmp(cJSON_GetObjectItem(c0, "text")->valuestring, "Once upon a time", 16),
                  "echo text: %s", r.body);
    cJSON *lp = cJSON_GetObjectItem(c0, "logprobs");
    cJSON *tlp = cJSON_GetObjectItem(lp, "token_logprobs");
    cJSON *tja = cJSON_Parse(tj);
    int n_tj = cJSON_GetArraySize(tja);
    cJSON_Delete(tja);
    ck_assert_int_eq(cJSON_GetArraySize(tlp), n_tj + 5);
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(tlp, 0)));
    ck_assert(cJSON_GetArrayItem(tlp, 1)->valuedouble <= 0);
    cJSON *top = cJSON_GetObjectItem(lp, "top_logprobs");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(top, cJSON_GetArraySize(top) - 1)), 3);
    cJSON_Delete(j);
    resp_free(&r);
    /* the token-id prompt generates what the text prompt does */
    snprintf(body, sizeof body, "{\"prompt\":%s,\"max_tokens\":8,\"temperature\":0}", tj);
    r = http("POST", "/v1/completions", body);
    j = parse_ok(&r);
    char *a = strdup(choice_text(j, 0, 0));
    cJSON_Delete(j);
    resp_free(&r);
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
    j = parse_ok(&r);
    ck_assert_str_eq(choice_text(j, 0, 0), a);
    cJSON_Delete(j);
    resp_free(&r);
    free(a);
    free(tj);
    /* detokenize round trip */
    r = http("POST", "/tokenize", "{\"content\":\"a little dog\"}");
    j = parse_ok(&r);
    char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItem(j, "tokens"));
    cJSON_Delete(j);
    resp_free(&r);
    snprintf(body, sizeof body, "{\"tokens\":%s}", ids);
    free(ids);
    r = http("POST", "/detokenize", body);
    j = parse_ok(&r);
    ck_assert_msg(strstr(cJSON_GetObjectItem(j, "content")->valuestring, "a little dog"),
                  "detokenize: %s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
}
END_TEST

START_TEST(chat_and_streaming)
{
    const char *msgs = "\"messages\":[{\"role\":\"system\",\"content\":\"Tell stories.\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"A cat\"}]}]";
    char body[1024];
    snprintf(body, sizeof body, "{%s,\"max_completion_tokens\":12,\"temperature\":0,"
             "\"logprobs\":true,\"top_logprobs\":2}", msgs);
    resp r = http("POST", "/v1/chat/completions", body);
    cJSON *j = parse_ok(&r);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    char *plain = strdup(choice_text(j, 0, 1));
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "role")->valuestring,
                     "assistant");
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    ck_assert_int_eq(cJSON_GetArraySize(content), (int)usage(j, "completion_tokens"));
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(content, 0),
                                                            "top_logprobs")), 2);
    cJSON_Delete(j);
    resp_free(&r);
    /* streaming gives the same text, role first, usage chunk, [DONE] */
    snprintf(body, sizeof body, "{%s,\"max_tokens\":12,\"temperature\":0,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}", msgs);
    r = http("POST", "/v1/chat/completions", body);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.hdr, "text/event-stream"), "content type: %s", r.hdr);
    ck_assert(strstr(r.body, "\"role\":\"assistant\""));
    int n_ev;
    cJSON *u;
    char *st = sse_text(r.body, 1, &n_ev, &u);
    ck_assert_str_eq(st, plain);
    ck_assert_int_ge(n_ev, 2);
    ck_assert_msg(u != NULL, "no usage chunk");
    ck_assert_int_eq(usage(u, "completion_tokens"), 12);
    ck_assert(cJSON_IsObject(cJSON_GetObjectItem(u, "timings")));
    ck_assert(cJSON_IsObject(cJSON_GetObjectItem(u, "sparsity")));
    cJSON_Delete(u);
    free(st);
    resp_free(&r);
    free(plain);
    /* completions streaming equals non-streaming */
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"The little bird\",\"max_tokens\":16,\"temperature\":0}");
    j = parse_ok(&r);
    plain = strdup(choice_text(j, 0, 0));
    cJSON_Delete(j);
    resp_free(&r);
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"The little bird\",\"max_tokens\":16,\"temperature\":0,\"stream\":true}");
    ck_assert_int_eq(r.status, 200);
    st = sse_text(r.body, 0, &n_ev, NULL);
    ck_assert_str_eq(st, plain);
    free(st);
    free(plain);
    resp_free(&r);
}
END_TEST

START_TEST(sessions)
{
    const char *b1 = "{\"prompt\":\"Once upon a time there was a big red ball\",\"max_tokens\":4,"
                     "\"temperature\":0,\"session_id\":\"s-test.1\"}";
    resp r = http("POST", "/v1/completions", b1);
    cJSON *j = parse_ok(&r);
    ck_assert_int_eq(usage(j, "cached_tokens"), 0);
    long np = usage(j, "prompt_tokens");
    cJSON_Delete(j);
    resp_free(&r);
    const char *b2 = "{\"prompt\":\"Once upon a time there was a big red ball that\","
                     "\"max_tokens\":4,\"temperature\":0,\"session_id\":\"s-test.1\"}";
    r = http("POST", "/v1/completions", b2);
    j = parse_ok(&r);
    ck_assert_int_eq(usage(j, "cached_tokens"), np);
    cJSON *tm = cJSON_GetObjectItem(j, "timings");
    ck_assert_int_eq((int)cJSON_GetObjectItem(tm, "cache_n")->valuedouble, np);
    cJSON_Delete(j);
    resp_free(&r);
    r = http("GET", "/v1/sessions", NULL);
    j = parse_ok(&r);
    int found = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "data"))
        found |= !strcmp(cJSON_GetObjectItem(e, "id")->valuestring, "s-test.1");
    ck_assert_msg(found, "session not listed: %s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
    ck_assert_int_ge(metric(main_d.port, "deltallm_sessions"), 1);
    r = http("DELETE", "/v1/sessions/s-test.1", NULL);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    r = http("DELETE", "/v1/sessions/s-test.1", NULL);
    check_error(&r, 404, "session_id");
    resp_free(&r);
    /* without a session the prefix cache still reuses a shared prefix */
    double hits0 = metric(main_d.port, "deltallm_prefix_cache_hits_total");
    r = http("POST", "/v1/completions", b1 /* session gone: fresh */);
    resp_free(&r);
    const char *dense = "{\"prompt\":\"Once upon a time there was a big red ball\","
                        "\"max_tokens\":2,\"delta\":{\"enabled\":false}}";
    r = http("POST", "/v1/completions", dense);
    resp_free(&r);
    r = http("POST", "/v1/completions", dense);
    j = parse_ok(&r);
    ck_assert_int_gt(usage(j, "cached_tokens"), 0);
    cJSON_Delete(j);
    resp_free(&r);
    ck_assert(metric(main_d.port, "deltallm_prefix_cache_hits_total") > hits0);
    /* DeltaLLM requests without a session never reuse a cached prefix: a truncated delta
     * cache would not reproduce a fresh run, and the same request must give the same text */
    const char *delta = "{\"prompt\":\"Once upon a time there was a big red ball\","
                        "\"max_tokens\":8,\"temperature\":0,\"delta\":{\"enabled\":true}}";
    r = http("POST", "/v1/completions", delta);
    cJSON *j1 = parse_ok(&r);
    resp_free(&r);
    r = http("POST", "/v1/completions", delta);
    j = parse_ok(&r);
    ck_assert_int_eq(usage(j, "cached_tokens"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                         "text")->valuestring,
                     cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j1, "choices"), 0),
                                         "text")->valuestring);
    cJSON_Delete(j);
    cJSON_Delete(j1);
    resp_free(&r);
}
END_TEST

START_TEST(metrics_text)
{
    resp r = http("POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":3}");
    resp_free(&r);
    r = http("GET", "/metrics", NULL);
    ck_assert_int_eq(r.status, 200);
    const char *want[] = {
        "deltallm_build_info{", "deltallm_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "deltallm_requests_running ", "deltallm_requests_waiting ",
        "deltallm_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "deltallm_inter_token_latency_seconds_count", "deltallm_request_duration_seconds_sum",
        "deltallm_queue_time_seconds_count", "deltallm_request_prompt_tokens_bucket",
        "deltallm_request_generated_tokens_bucket", "deltallm_generated_tokens_total",
        "deltallm_prompt_tokens_total", "deltallm_cache_bytes", "deltallm_sessions",
        "deltallm_prefix_cache_hits_total", "deltallm_prefix_cache_queries_total",
        "deltallm_rejections_total{reason=\"queue_full\"}",
        "deltallm_cancellations_total{reason=\"disconnect\"}",
        "deltallm_attention_qk_macs_total{stage=\"decode\"}",
        "deltallm_attention_qk_macs_skipped_total{stage=\"prefill\"}",
        "deltallm_request_attention_sparsity_ratio_bucket", "# TYPE deltallm_http_requests_total counter",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(r.body, want[i]), "metrics lack %s", want[i]);
    ck_assert_msg(!strstr(r.body, "::"), "colon in a metric name");
    resp_free(&r);
}
END_TEST

#define N_LAYER 5 /* stories260K */

/* sparsity.layers of a response: n_layer objects of two stages with three figures in [0, 1];
 * returns the array. */
static cJSON *check_layers(cJSON *j, int n_layer)
{
    cJSON *layers = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "sparsity"), "layers");
    ck_assert_msg(cJSON_IsArray(layers), "no sparsity.layers array");
    ck_assert_int_eq(cJSON_GetArraySize(layers), n_layer);
    static const char *fig[] = {"element", "attention", "qk_skipped"};
    for (int l = 0; l < n_layer; l++) {
        cJSON *lo = cJSON_GetArrayItem(layers, l);
        ck_assert_msg(cJSON_IsObject(lo), "layers[%d] is not an object", l);
        ck_assert_int_eq(cJSON_GetArraySize(lo), 2);
        for (int st = 0; st < 2; st++) {
            cJSON *s = cJSON_GetObjectItem(lo, st ? "decode" : "prefill");
            ck_assert_msg(cJSON_IsObject(s), "layers[%d] has no stage %d", l, st);
            ck_assert_int_eq(cJSON_GetArraySize(s), 3);
            for (int f = 0; f < 3; f++) {
                cJSON *v = cJSON_GetObjectItem(s, fig[f]);
                ck_assert_msg(cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 1,
                              "layers[%d].%s.%s", l, st ? "decode" : "prefill", fig[f]);
            }
        }
    }
    return layers;
}

static double layer_figure(cJSON *layers, int l, const char *stage, const char *fig)
{
    return cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(layers, l), stage), fig)
        ->valuedouble;
}

/* sparsity.prefill.attention of a completion request */
static double prefill_attention(const char *body)
{
    resp r = http("POST", "/v1/completions", body);
    cJSON *j = parse_ok(&r);
    cJSON *s = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "sparsity"), "prefill");
    ck_assert_msg(cJSON_IsObject(s), "no sparsity.prefill: %s", r.body);
    double a = cJSON_GetObjectItem(s, "attention")->valuedouble;
    cJSON_Delete(j);
    resp_free(&r);
    return a;
}

/* Prompt log-probs (echo + logprobs) come from the prompt's own positions: such a request
 * gets the full window in prefill (fewer scores from k-hat) unless it sets
 * delta.prefill_window. Different prompts of one length, so that no prefix is reused. */
START_TEST(echo_logprobs_full_prefill_window)
{
#define P60(w) "\"prompt\":\"" w w w w w w w w w w "\",\"max_tokens\":1,\"temperature\":0"
    double plain = prefill_attention("{" P60("the cat sat on a mat and ") "}");
    double echo = prefill_attention("{" P60("a dog ran to the park and ")
                                    ",\"echo\":true,\"logprobs\":0}");
    double echo4 = prefill_attention("{" P60("the sun was warm on a hill ")
                                     ",\"echo\":true,\"logprobs\":0,"
                                     "\"delta\":{\"prefill_window\":4}}");
#undef P60
    ck_assert_msg(plain > echo + 0.15 && echo4 > echo + 0.15,
                  "prefill attention sparsity: plain %g, echo %g, echo with window 4 %g", plain,
                  echo, echo4);
}
END_TEST

START_TEST(sparsity_layers)
{
    /* a delta request: every layer reported, and each layer hits about the target */
    resp r = http("POST", "/v1/completions",
                  "{\"prompt\":\"Once upon a time there was a little girl\",\"max_tokens\":6,"
                  "\"temperature\":0,\"delta\":{\"enabled\":true,\"sparsity_target\":0.5}}");
    cJSON *j = parse_ok(&r);
    cJSON *layers = check_layers(j, N_LAYER);
    for (int l = 0; l < N_LAYER; l++)
        ck_assert_msg(layer_figure(layers, l, "prefill", "element") > 0,
                      "layer %d: no prefill element sparsity", l);
    cJSON_Delete(j);
    resp_free(&r);
    /* layer_offsets (one per layer): layer 2 aims at 0.5 + 0.3, layer 0 at 0.5 - 0.3 */
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"Once upon a time there was a little girl\",\"max_tokens\":2,"
             "\"temperature\":0,\"delta\":{\"sparsity_target\":0.5,"
             "\"layer_offsets\":[-0.3,0,0.3,0,0],\"prefill_window\":2}}");
    j = parse_ok(&r);
    layers = check_layers(j, N_LAYER);
    double e0 = layer_figure(layers, 0, "prefill", "element");
    double e2 = layer_figure(layers, 2, "prefill", "element");
    ck_assert_msg(e2 > e0 + 0.3, "layer offsets: layer 0 %g, layer 2 %g", e0, e2);
    cJSON_Delete(j);
    resp_free(&r);
    /* the per-layer counters in /metrics add up to the stage totals */
    r = http("GET", "/metrics", NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "# TYPE deltallm_layer_delta_elements_total counter"),
                  "no per-layer family");
    ck_assert_msg(series_value(r.body, "deltallm_layer_delta_elements_total"
                                       "{layer=\"0\",stage=\"prefill\"}") > 0,
                  "no layer 0 prefill elements");
    const char *fams[] = {"delta_elements", "delta_zero_elements", "attention_score_entries",
                          "attention_exact_entries", "attention_qk_macs",
                          "attention_qk_macs_skipped"};
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++)
        for (int st = 0; st < 2; st++) {
            const char *stage = st ? "decode" : "prefill";
            char name[200];
            double sum = 0;
            for (int l = 0; l < N_LAYER; l++) {
                snprintf(name, sizeof name, "deltallm_layer_%s_total{layer=\"%d\",stage=\"%s\"}",
                         fams[f], l, stage);
                double v = series_value(r.body, name);
                ck_assert_msg(v >= 0, "no series %s", name);
                sum += v;
            }
            snprintf(name, sizeof name, "deltallm_layer_%s_total{layer=\"%d\",stage=\"%s\"}",
                     fams[f], N_LAYER, stage);
            ck_assert_msg(series_value(r.body, name) < 0, "a series past the last layer: %s", name);
            snprintf(name, sizeof name, "deltallm_%s_total{stage=\"%s\"}", fams[f], stage);
            ck_assert_msg(sum == series_value(r.body, name), "%s: layers sum to %.0f, total %.0f",
                          name, sum, series_value(r.body, name));
        }
    resp_free(&r);
    /* a dense request has none */
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"Once upon a time\",\"max_tokens\":3,\"delta\":{\"enabled\":false}}");
    j = parse_ok(&r);
    layers = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "sparsity"), "layers");
    ck_assert_msg(cJSON_IsArray(layers) && cJSON_GetArraySize(layers) == 0, "dense: %s", r.body);
    cJSON_Delete(j);
    resp_free(&r);
    /* streaming: the usage chunk carries them too, summed over n = 2 choices */
    r = http("POST", "/v1/completions",
             "{\"prompt\":\"The dog\",\"max_tokens\":4,\"n\":2,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true},\"delta\":{\"enabled\":true}}");
    ck_assert_int_eq(r.status, 200);
    int n_ev;
    cJSON *u;
    free(sse_text(r.body, 0, &n_ev, &u));
    ck_assert_msg(u != NULL, "no usage chunk");
    check_layers(u, N_LAYER);
    cJSON_Delete(u);
    resp_free(&r);
}
END_TEST

/* ---- concurrency, disconnects, back-pressure -------------------------------------------- */

#define NCLI 16

START_TEST(concurrent_streams_equal_alone)
{
    static const char *starts[] = {"Once upon a time", "The dog", "Lily and Tom", "One day",
                                   "The sun was", "A big fish", "Mom said", "The little girl"};
    char bodies[NCLI][512];
    char *alone[NCLI];
    for (int i = 0; i < NCLI; i++) {
        snprintf(bodies[i], sizeof bodies[i], "{\"prompt\":\"%s\",\"max_tokens\":%d,"
                 "\"temperature\":0,\"stream\":true}", starts[i % 8], 20 + i);
        resp r = http("POST", "/v1/completions", bodies[i]);
        ck_assert_int_eq(r.status, 200);
        int n;
        alone[i] = sse_text(r.body, 0, &n, NULL);
        resp_free(&r);
    }
    CURLM *m = curl_multi_init();
    resp rs[NCLI];
    CURL *es[NCLI];
    struct curl_slist *hl[NCLI];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < NCLI; i++) {
        es[i] = make_easy(main_d.port, "POST", "/v1/completions", bodies[i], strlen(bodies[i]),
                          KEY, &rs[i], &hl[i]);
        curl_multi_add_handle(m, es[i]);
    }
    int running = 1;
    double end = dl_test_now() + 120;
    while (running && dl_test_now() < end) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    ck_assert_msg(!running, "clients did not finish");
    for (int i = 0; i < NCLI; i++) {
        curl_easy_getinfo(es[i], CURLINFO_RESPONSE_CODE, &rs[i].status);
        ck_assert_int_eq(rs[i].status, 200);
        int n;
        char *t = sse_text(rs[i].body, 0, &n, NULL);
        ck_assert_msg(!strcmp(t, alone[i]), "client %d: '%s' vs alone '%s'", i, t, alone[i]);
        free(t);
        free(alone[i]);
        curl_multi_remove_handle(m, es[i]);
        curl_easy_cleanup(es[i]);
        curl_slist_free_all(hl[i]);
        resp_free(&rs[i]);
    }
    curl_multi_cleanup(m);
}
END_TEST

/* Start a request in the background and return once the daemon reports it running. */
static CURL *start_bg(CURLM *m, int port, const char *path, const char *body, resp *r,
                      struct curl_slist **hl)
{
    CURL *e = make_easy(port, "POST", path, body, strlen(body), KEY, r, hl);
    curl_multi_add_handle(m, e);
    return e;
}

static int pump_until(CURLM *m, int port, const char *series, double want, double secs)
{
    double end = dl_test_now() + secs;
    int running;
    while (dl_test_now() < end) {
        curl_multi_perform(m, &running);
        if (metric(port, series) == want)
            return 1;
        curl_multi_poll(m, NULL, 0, 20, NULL);
    }
    return 0;
}

START_TEST(disconnect_frees_sequence)
{
    static const char *extra[] = {"--api-key", KEY, "--parallel", "2", "--ctx", "8192",
                                  "--batch", "64", NULL};
    daemon_proc d;
    start_daemon(&d, extra);
    for (int stream = 0; stream < 2; stream++) {
        double c0 = metric(d.port, "deltallm_cancellations_total{reason=\"disconnect\"}");
        CURLM *m = curl_multi_init();
        resp r = {0};
        struct curl_slist *hl;
        char body[256];
        snprintf(body, sizeof body, "{\"prompt\":\"Once upon a time\",\"max_tokens\":8000,"
                 "\"logit_bias\":{\"2\":-100},\"stream\":%s}", stream ? "true" : "false");
        CURL *e = start_bg(m, d.port, "/v1/completions", body, &r, &hl);
        ck_assert_msg(pump_until(m, d.port, "deltallm_requests_running", 1, 30),
                      "request never ran");
        if (stream) { /* wait for tokens to flow */
            double end = dl_test_now() + 30;
            int running;
            while (r.len < 200 && dl_test_now() < end) {
                curl_multi_perform(m, &running);
                curl_multi_poll(m, NULL, 0, 20, NULL);
            }
            ck_assert_int_ge(r.len, 200);
        }
        curl_multi_remove_handle(m, e); /* the client goes away */
        curl_easy_cleanup(e);
        curl_slist_free_all(hl);
        curl_multi_cleanup(m);
        resp_free(&r);
        ck_assert_msg(wait_metric(d.port, "deltallm_requests_running", 0, 30),
                      "sequence not freed after disconnect");
        ck_assert(metric(d.port, "deltallm_cancellations_total{reason=\"disconnect\"}") == c0 + 1);
    }
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* A long prompt (token ids) fed 2 tokens per step takes thousands of steps to prefill; the
 * client leaves once prefill has started. The sequence must be freed before the prompt is
 * done (prefilled tokens < prompt length, nothing generated), counted as a disconnect. */
START_TEST(disconnect_mid_prefill_frees_sequence)
{
    static const char *extra[] = {"--api-key", KEY, "--parallel", "2", "--ctx", "8192",
                                  "--batch", "2", NULL};
    enum { NP = 7000 };
    daemon_proc d;
    start_daemon(&d, extra);
    size_t cap = NP * 8 + 256, len = 0;
    char *body0 = malloc(cap);
    ck_assert(body0 != NULL);
    len += (size_t)snprintf(body0 + len, cap - len, "{\"prompt\":[");
    for (int i = 0; i < NP; i++)
        len += (size_t)snprintf(body0 + len, cap - len, "%s%d", i ? "," : "", 100 + (i * 7) % 300);
    for (int stream = 0; stream < 2; stream++) {
        char *body = malloc(cap + 64);
        ck_assert(body != NULL);
        snprintf(body, cap + 64, "%s],\"max_tokens\":4,\"stream\":%s}", body0,
                 stream ? "true" : "false");
        double c0 = metric(d.port, "deltallm_cancellations_total{reason=\"disconnect\"}");
        double f0 = metric(d.port, "deltallm_prefill_tokens_total");
        double g0 = metric(d.port, "deltallm_generated_tokens_total");
        ck_assert(c0 >= 0 && f0 >= 0 && g0 >= 0);
        CURLM *m = curl_multi_init();
        resp r = {0};
        struct curl_slist *hl;
        CURL *e = start_bg(m, d.port, "/v1/completions", body, &r, &hl);
        double end = dl_test_now() + 30, f = f0;
        int running;
        while (dl_test_now() < end && f <= f0) { /* prefill has begun */
            curl_multi_perform(m, &running);
            f = metric(d.port, "deltallm_prefill_tokens_total");
            curl_multi_poll(m, NULL, 0, 5, NULL);
        }
        ck_assert_msg(f > f0, "prefill never started");
        ck_assert_msg(f - f0 < NP, "prefill finished before the client left");
        curl_multi_remove_handle(m, e); /* the client goes away */
        curl_easy_cleanup(e);
        curl_slist_free_all(hl);
        curl_multi_cleanup(m);
        resp_free(&r);
        free(body);
        ck_assert_msg(wait_metric(d.port, "deltallm_requests_running", 0, 30),
                      "sequence not freed after disconnect in prefill");
        double f1 = metric(d.port, "deltallm_prefill_tokens_total");
        ck_assert_msg(f1 - f0 < NP, "the whole prompt was prefilled (%g of %d tokens)",
                      f1 - f0, NP);
        ck_assert(metric(d.port, "deltallm_generated_tokens_total") == g0);
        ck_assert(metric(d.port, "deltallm_cancellations_total{reason=\"disconnect\"}") == c0 + 1);
        /* no further passes once freed: the worker is idle */
        double p1 = metric(d.port, "deltallm_forward_passes_total");
        ck_assert(metric(d.port, "deltallm_prefill_tokens_total") == f1);
        ck_assert(metric(d.port, "deltallm_forward_passes_total") == p1);
    }
    free(body0);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(queue_full_429_and_budget_503)
{
    /* fixed memory: 1.2 MB of weights + 4.5 MB of ctx scratch (2 threads, 8192 positions);
     * a 2000-token request needs 1.3 MB of K/V and fits in 8 MiB, an 8000-token one (5.1 MB)
     * does not */
    static const char *extra[] = {"--api-key", KEY, "--parallel", "1", "--max-queue", "1",
                                  "--ctx", "8192", "--batch", "64", "--memory-budget", "8M",
                                  "--threads", "2", NULL};
    daemon_proc d;
    start_daemon(&d, extra);
    CURLM *m = curl_multi_init();
    resp ra = {0}, rb = {0};
    struct curl_slist *ha, *hb;
    const char *longb = "{\"prompt\":\"Once upon a time\",\"max_tokens\":2000,\"logit_bias\":{\"2\":-100}}";
    CURL *a = start_bg(m, d.port, "/v1/completions", longb, &ra, &ha);
    ck_assert(pump_until(m, d.port, "deltallm_requests_running", 1, 30));
    CURL *b = start_bg(m, d.port, "/v1/completions", longb, &rb, &hb);
    ck_assert(pump_until(m, d.port, "deltallm_requests_waiting", 1, 30));
    resp r = http_key(d.port, "POST", "/v1/completions", longb, KEY);
    check_error(&r, 429, NULL);
    ck_assert_msg(strstr(r.hdr, "Retry-After:"), "no Retry-After: %s", r.hdr);
    resp_free(&r);
    r = http_key(d.port, "GET", "/ready", NULL, KEY);
    check_error(&r, 503, NULL); /* saturated */
    resp_free(&r);
    ck_assert(metric(d.port, "deltallm_rejections_total{reason=\"queue_full\"}") == 1);
    curl_multi_remove_handle(m, a);
    curl_multi_remove_handle(m, b);
    curl_easy_cleanup(a);
    curl_easy_cleanup(b);
    curl_slist_free_all(ha);
    curl_slist_free_all(hb);
    curl_multi_cleanup(m);
    resp_free(&ra);
    resp_free(&rb);
    ck_assert(wait_metric(d.port, "deltallm_requests_running", 0, 30));
    ck_assert(wait_metric(d.port, "deltallm_requests_waiting", 0, 30));
    /* over the memory budget: a sequence of 8000 tokens (5 MB of K/V) does not fit */
    r = http_key(d.port, "POST", "/v1/completions",
                 "{\"prompt\":\"Once\",\"max_tokens\":8000}", KEY);
    check_error(&r, 503, NULL);
    resp_free(&r);
    ck_assert(metric(d.port, "deltallm_rejections_total{reason=\"memory_budget\"}") == 1);
    r = http_key(d.port, "POST", "/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":8}", KEY);
    ck_assert_msg(r.status == 200, "after 503: %s", r.body);
    resp_free(&r);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(sigterm_with_inflight_exits_zero)
{
    static const char *extra[] = {"--parallel", "2", "--ctx", "8192", "--batch", "64",
                                  "--drain-timeout", "1", NULL};
    daemon_proc d;
    start_daemon(&d, extra);
    CURLM *m = curl_multi_init();
    resp rs[3];
    memset(rs, 0, sizeof rs);
    struct curl_slist *hl[3];
    CURL *es[3];
    es[0] = start_bg(m, d.port, "/v1/completions",
                     "{\"prompt\":\"Once\",\"max_tokens\":8000,\"logit_bias\":{\"2\":-100},"
                     "\"stream\":true}", &rs[0], &hl[0]);
    es[1] = start_bg(m, d.port, "/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":8000,\"logit_bias\":{\"2\":-100}}",
                     &rs[1], &hl[1]);
    es[2] = start_bg(m, d.port, "/v1/completions", "{\"prompt\":\"Once\",\"max_tokens\":8}",
                     &rs[2], &hl[2]);
    ck_assert(pump_until(m, d.port, "deltallm_requests_running", 2, 30));
    kill(d.pid, SIGTERM);
    int running = 1;
    double end = dl_test_now() + 60;
    while (running && dl_test_now() < end) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    int st = 0;
    end = dl_test_now() + 30;
    pid_t p = 0;
    while (dl_test_now() < end && (p = waitpid(d.pid, &st, WNOHANG)) != d.pid)
        dl_test_nap();
    ck_assert_msg(p == d.pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "daemon did not exit 0 after SIGTERM (see %s)", d.log);
    d.pid = 0;
    /* the streaming one ended with an error event and [DONE]; the long non-streaming one
     * with a 503 envelope; the short one completed (or was refused while draining) */
    ck_assert_msg(strstr(rs[0].body, "\"error\"") && strstr(rs[0].body, "[DONE]"),
                  "stream end: %s", rs[0].body + (rs[0].len > 300 ? rs[0].len - 300 : 0));
    for (int i = 0; i < 3; i++) {
        long code = 0;
        curl_easy_getinfo(es[i], CURLINFO_RESPONSE_CODE, &code);
        ck_assert_msg(code == 200 || code == 503, "request %d: %ld", i, code);
        curl_multi_remove_handle(m, es[i]);
        curl_easy_cleanup(es[i]);
        curl_slist_free_all(hl[i]);
        resp_free(&rs[i]);
    }
    curl_multi_cleanup(m);
}
END_TEST

/* ---- configuration ---------------------------------------------------------------------- */

START_TEST(config_precedence)
{
    char path[] = "/tmp/test_daemon_cfgXXXXXX";
    int fd = mkstemp(path);
    const char *txt = "# comment\nport = 1111\nthreads = 3\nparallel = 2\nlog-format = json\n"
                      "api-key = a, b\n";
    ck_assert(write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt));
    close(fd);
    char cfgarg[64];
    snprintf(cfgarg, sizeof cfgarg, "--config=%s", path);
    char *argv[] = {"deltallmd", cfgarg, "--threads", "5", "--model", "m.gguf", NULL};
    /* DELTALLM_ISA / DELTALLM_MODELS are the engine's, not daemon keys: ignored */
    char *envp[] = {"DELTALLM_PORT=2222", "DELTALLM_THREADS=4", "DELTALLM_DELTA_WINDOW=8",
                    "DELTALLM_ISA=avx2", "DELTALLM_MODELS=/nowhere", NULL};
    dl_config c;
    char err[512];
    ck_assert_int_eq(dl_config_from_args(&c, 6, argv, envp, stdout, err, sizeof err), 0);
    ck_assert_int_eq(c.port, 2222);      /* env over file */
    ck_assert_int_eq(c.threads, 5);      /* flag over env */
    ck_assert_int_eq(c.parallel, 2);     /* file over default */
    ck_assert_int_eq(c.log_json, 1);
    ck_assert_int_eq(c.n_api_keys, 2);
    ck_assert_int_eq(c.delta.window, 8);
    ck_assert_str_eq(c.host, "127.0.0.1");
    char *bad[] = {"deltallmd", "--parallel", "zero", NULL};
    ck_assert_int_lt(dl_config_from_args(&c, 3, bad, NULL, stdout, err, sizeof err), 0);
    ck_assert_msg(strstr(err, "parallel"), "error does not name the key: %s", err);
    char *envbad[] = {"DELTALLM_DELTA_STAGES=sometimes", NULL};
    ck_assert_int_lt(dl_config_from_args(&c, 1, argv, envbad, stdout, err, sizeof err), 0);
    ck_assert_msg(strstr(err, "delta-stages"), "%s", err);
    char *envoff[] = {"DELTALLM_DELTA_LAYER_OFFSETS=0.1,-0.1", "DELTALLM_DELTA_PREFILL_WINDOW=3",
                      NULL};
    ck_assert_int_eq(dl_config_from_args(&c, 1, argv, envoff, stdout, err, sizeof err), 0);
    ck_assert_int_eq(c.delta.n_layer_offsets, 2);
    ck_assert(c.delta.layer_offsets[1] == -0.1f);
    ck_assert_int_eq(c.delta.prefill_window, 3);
    char *envoffbad[] = {"DELTALLM_DELTA_LAYER_OFFSETS=0.1,x", NULL};
    ck_assert_int_lt(dl_config_from_args(&c, 1, argv, envoffbad, stdout, err, sizeof err), 0);
    ck_assert_msg(strstr(err, "delta-layer-offsets"), "%s", err);
    char *unk[] = {"deltallmd", "--no-such-key", "1", NULL};
    ck_assert_int_lt(dl_config_from_args(&c, 3, unk, NULL, stdout, err, sizeof err), 0);
    unlink(path);
    /* the real binary: --help exits 0, an invalid value exits non-zero naming the key */
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "%s --help | grep -q -- --memory-budget", daemon_path());
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --model x --port 99999 2>&1 | grep -q 'port'", daemon_path());
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --model x --port 99999 >/dev/null 2>&1", daemon_path());
    ck_assert_int_ne(system(cmd), 0);
    /* a layer-offset profile for another layer count stops the daemon at load */
    snprintf(cmd, sizeof cmd, "%s --model %s --port 0 --delta-layer-offsets 0,0 2>&1 | "
             "grep -q 'delta-layer-offsets has 2 values but the model has 5 layers'",
             daemon_path(), dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"));
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("daemon");
    TCase *cfg = tcase_create("config");
    tcase_add_test(cfg, config_precedence);
    suite_add_tcase(s, cfg);
    TCase *t = tcase_create("http");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, main_setup, main_teardown);
    tcase_add_test(t, health_ready_models);
    tcase_add_test(t, auth_and_routing_errors);
    tcase_add_test(t, malformed_corpus);
    tcase_add_test(t, completion_basic);
    tcase_add_test(t, completion_variants);
    tcase_add_test(t, chat_and_streaming);
    tcase_add_test(t, sessions);
    tcase_add_test(t, metrics_text);
    tcase_add_test(t, sparsity_layers);
    tcase_add_test(t, echo_logprobs_full_prefill_window);
    tcase_add_test(t, concurrent_streams_equal_alone);
    suite_add_tcase(s, t);
    TCase *o = tcase_create("own-daemon");
    tcase_set_timeout(o, 300);
    tcase_add_test(o, disconnect_frees_sequence);
    tcase_add_test(o, disconnect_mid_prefill_frees_sequence);
    tcase_add_test(o, queue_full_429_and_budget_503);
    tcase_add_test(o, sigterm_with_inflight_exits_zero);
    suite_add_tcase(s, o);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return dl_test_run(suite());
}
