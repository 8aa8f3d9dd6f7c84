/* test_daemon_bitnet.c — the real deltallmd ($DL_BUILD/deltallmd, default build/) serving a
 * tiny BitNet b1.58 model (synth shape bitnet-tiny, I2_S) that the test writes into a temp
 * dir: /v1/chat/completions plain and streaming, usage counts, DeltaLLM knobs and the
 * sparsity report, and greedy text equal to `deltallm generate` on the same prompt.
 * Waits are polls with deadlines, never sleeps as assertions. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
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

#include "chat.h"
#include "quant.h"
#include "synth.h"
#include "testutil.h"

#define KEY "bitnet-key"

static char tmpdir[256];
static char model_path[512];
static char log_path[512];
static pid_t daemon_pid;
static int daemon_port;

static const char *build_path(const char *bin)
{
    static char p[2][4096];
    static int k;
    const char *b = getenv("DL_BUILD");
    k ^= 1;
    snprintf(p[k], sizeof p[k], "%s/%s", b && *b ? b : "build", bin);
    return p[k];
}

/* ---- HTTP -------------------------------------------------------------------------------- */

typedef dl_test_resp resp;

static resp http(const char *method, const char *path, const char *body)
{
    resp r = {0};
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", daemon_port, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dl_test_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, dl_test_on_hdr);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Expect:");
    hl = curl_slist_append(hl, "Authorization: Bearer " KEY);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else
        r.status = -1;
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    if (!r.body)
        r.body = calloc(1, 1);
    return r;
}

/* ---- the model and the daemon ------------------------------------------------------------ */

static void setup(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dl_test_daemon_bitnet_XXXXXX");
    if (!mkdtemp(tmpdir))
        ck_abort_msg("mkdtemp failed");
    snprintf(model_path, sizeof model_path, "%s/bitnet-tiny-i2_s.gguf", tmpdir);
    char err[256], shared[512];
    snprintf(shared, sizeof shared, "%s", dl_test_shared("."));
    int rc = dl_synth_write("bitnet-tiny", DL_TYPE_I2_S, model_path, 11, shared, err, sizeof err);
    if (rc)
        ck_abort_msg("synth: %s", err);

    daemon_port = dl_test_free_port();
    snprintf(log_path, sizeof log_path, "%s/deltallmd.log", tmpdir);
    char port[16];
    snprintf(port, sizeof port, "%d", daemon_port);
    const char *argv[] = {build_path("deltallmd"), "--model", model_path, "--host", "127.0.0.1",
                          "--port", port, "--threads", "1", "--api-key", KEY, "--parallel",
                          "2", "--ctx", "256", "--batch", "32", "--log-level", "debug", NULL};
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        dup2(fd, 1);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    daemon_pid = pid;
    double end = dl_test_now() + 30;
    while (dl_test_now() < end) {
        resp r = http("GET", "/ready", NULL);
        long st = r.status;
        free(r.body);
        if (st == 200)
            return;
        int wst;
        if (waitpid(pid, &wst, WNOHANG) == pid) {
            daemon_pid = 0;
            ck_abort_msg("daemon exited at start; see %s", log_path);
        }
        dl_test_nap();
    }
    ck_abort_msg("daemon did not become ready; see %s", log_path);
}

static void teardown(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        int st = 0;
        double end = dl_test_now() + 60;
        pid_t p = 0;
        while (dl_test_now() < end && (p = waitpid(daemon_pid, &st, WNOHANG)) != daemon_pid)
            dl_test_nap();
        if (p != daemon_pid) {
            kill(daemon_pid, SIGKILL);
            waitpid(daemon_pid, &st, 0);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bitnet daemon exited with status %d (log %s)\n", st, log_path);
        }
        daemon_pid = 0;
    }
    unlink(log_path);
    unlink(model_path);
    rmdir(tmpdir);
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

static long usage(cJSON *j, const char *k)
{
    cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), k);
    ck_assert_msg(cJSON_IsNumber(v), "usage.%s missing", k);
    return (long)v->valuedouble;
}

static void check_sparsity(cJSON *j)
{
    cJSON *sp = cJSON_GetObjectItem(j, "sparsity");
    ck_assert_msg(cJSON_IsObject(sp), "no sparsity object");
    for (int st = 0; st < 2; st++) {
        cJSON *s = cJSON_GetObjectItem(sp, st ? "decode" : "prefill");
        ck_assert(cJSON_IsObject(s));
        const char *keys[] = {"element", "attention", "qk_skipped"};
        for (int i = 0; i < 3; i++) {
            cJSON *v = cJSON_GetObjectItem(s, keys[i]);
            ck_assert_msg(cJSON_IsNumber(v), "sparsity.%s.%s", st ? "decode" : "prefill",
                          keys[i]);
            ck_assert(v->valuedouble >= 0.0 && v->valuedouble <= 1.0);
        }
    }
}

/* A well-formed chat.completion; returns choice 0's content (owned by j). */
static const char *chat_content(cJSON *j, const char **finish)
{
    ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "id")));
    ck_assert(cJSON_IsNumber(cJSON_GetObjectItem(j, "created")));
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(j, "model")));
    cJSON *ch = cJSON_GetObjectItem(j, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(ch), 1);
    cJSON *c0 = cJSON_GetArrayItem(ch, 0);
    ck_assert_int_eq((int)cJSON_GetObjectItem(c0, "index")->valuedouble, 0);
    cJSON *msg = cJSON_GetObjectItem(c0, "message");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant");
    cJSON *t = cJSON_GetObjectItem(msg, "content");
    ck_assert(cJSON_IsString(t));
    cJSON *f = cJSON_GetObjectItem(c0, "finish_reason");
    ck_assert(cJSON_IsString(f));
    *finish = f->valuestring;
    return t->valuestring;
}

/* Concatenated delta.content of an SSE chat stream; checks framing, the role chunk and
 * [DONE]; *usage_chunk gets the choice-less usage chunk (or NULL). */
static char *sse_text(const char *body, cJSON **usage_chunk)
{
    char *out = calloc(1, strlen(body) + 1);
    size_t len = 0;
    int done = 0, role = 0;
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
            ck_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring,
                             "chat.completion.chunk");
            cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
            if (c0) {
                cJSON *d = cJSON_GetObjectItem(c0, "delta");
                cJSON *r = cJSON_GetObjectItem(d, "role");
                if (cJSON_IsString(r) && !strcmp(r->valuestring, "assistant"))
                    role = 1;
                cJSON *t = cJSON_GetObjectItem(d, "content");
                if (cJSON_IsString(t)) {
                    ck_assert_msg(role, "content before the role chunk");
                    size_t k = strlen(t->valuestring);
                    memcpy(out + len, t->valuestring, k);
                    len += k;
                }
                cJSON_Delete(j);
            } else {
                ck_assert_msg(*usage_chunk == NULL, "two usage chunks");
                *usage_chunk = j;
            }
        } else {
            ck_assert_msg(*p == ':', "unexpected SSE line: %.40s", p);
        }
        p = eol + 2;
    }
    ck_assert_msg(done, "no data: [DONE]");
    return out;
}

#define MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"Once upon a time\"}]"

/* ---- tests ------------------------------------------------------------------------------ */

START_TEST(models_lists_the_bitnet_file)
{
    resp r = http("GET", "/v1/models", NULL);
    cJSON *j = parse_ok(&r);
    cJSON *d = cJSON_GetObjectItem(j, "data");
    ck_assert_int_ge(cJSON_GetArraySize(d), 1);
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(cJSON_GetArrayItem(d, 0), "id")));
    cJSON_Delete(j);
    free(r.body);
}
END_TEST

START_TEST(chat_plain_and_stream)
{
    resp r = http("POST", "/v1/chat/completions",
                  "{" MSGS ",\"max_tokens\":10,\"temperature\":0,\"logit_bias\":{\"2\":-100}}");
    cJSON *j = parse_ok(&r);
    const char *finish;
    char *plain = strdup(chat_content(j, &finish));
    ck_assert_str_eq(finish, "length");
    ck_assert_int_eq(usage(j, "completion_tokens"), 10);
    ck_assert_int_gt(usage(j, "prompt_tokens"), 3);
    ck_assert_int_eq(usage(j, "total_tokens"),
                     usage(j, "prompt_tokens") + usage(j, "completion_tokens"));
    check_sparsity(j);
    long prompt_tokens = usage(j, "prompt_tokens");
    cJSON_Delete(j);
    free(r.body);

    /* greedy is deterministic across requests */
    r = http("POST", "/v1/chat/completions",
             "{" MSGS ",\"max_tokens\":10,\"temperature\":0,\"logit_bias\":{\"2\":-100}}");
    j = parse_ok(&r);
    ck_assert_str_eq(chat_content(j, &finish), plain);
    cJSON_Delete(j);
    free(r.body);

    /* streaming: same text, role first, usage chunk, [DONE] */
    r = http("POST", "/v1/chat/completions",
             "{" MSGS ",\"max_tokens\":10,\"temperature\":0,\"logit_bias\":{\"2\":-100},\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}");
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.hdr, "text/event-stream"), "content type: %s", r.hdr);
    cJSON *u;
    char *st = sse_text(r.body, &u);
    ck_assert_str_eq(st, plain);
    ck_assert_msg(u != NULL, "no usage chunk");
    ck_assert_int_eq(usage(u, "completion_tokens"), 10);
    ck_assert_int_eq(usage(u, "prompt_tokens"), prompt_tokens);
    check_sparsity(u);
    cJSON_Delete(u);
    free(st);
    free(r.body);
    free(plain);
}
END_TEST

START_TEST(chat_delta_knobs)
{
    resp r = http("POST", "/v1/chat/completions",
                  "{" MSGS ",\"max_tokens\":12,\"temperature\":0,\"logit_bias\":{\"2\":-100},"
                  "\"delta\":{\"enabled\":true,\"theta\":0.3}}");
    cJSON *j = parse_ok(&r);
    const char *finish;
    chat_content(j, &finish);
    ck_assert_int_eq(usage(j, "completion_tokens"), 12);
    check_sparsity(j);
    cJSON_Delete(j);
    free(r.body);
    /* a bad knob is refused with the error envelope naming it */
    r = http("POST", "/v1/chat/completions",
             "{" MSGS ",\"max_tokens\":4,\"delta\":{\"theta\":-1}}");
    ck_assert_msg(r.status == 400, "status %ld: %s", r.status, r.body);
    j = cJSON_Parse(r.body);
    ck_assert_msg(cJSON_IsObject(cJSON_GetObjectItem(j, "error")), "no error: %s", r.body);
    cJSON_Delete(j);
    free(r.body);
}
END_TEST

/* The daemon's greedy chat reply equals `deltallm generate` on the rendered chat prompt. */
START_TEST(chat_equals_cli_generate)
{
    dl_chat_msg m = {"user", "Once upon a time"};
    char prompt[256];
    int n = dl_chat_format(DL_CHAT_PLAIN, &m, 1, 1, prompt, sizeof prompt);
    ck_assert(n > 0 && (size_t)n < sizeof prompt);
    for (const char *p = prompt; *p; p++)
        ck_assert_msg(*p != '\'', "prompt needs no shell quoting");

    resp r = http("POST", "/v1/chat/completions",
                  "{" MSGS ",\"max_tokens\":16,\"temperature\":0,\"logit_bias\":{\"2\":-100},"
                  "\"delta\":{\"enabled\":false}}");
    cJSON *j = parse_ok(&r);
    const char *finish;
    char *served = strdup(chat_content(j, &finish));
    cJSON_Delete(j);
    free(r.body);

    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p '%s' -n 16 --temp 0 -t 1 -q "
             "2>/dev/null", build_path("deltallm"), model_path, prompt);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char out[8192];
    size_t len = fread(out, 1, sizeof out - 1, p);
    out[len] = 0;
    int st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "generate failed: %s", cmd);
    ck_assert_msg(len > 0, "generate printed nothing");
    /* a chat reply drops the one space the first token's text starts with (worker.c) */
    const char *cli_text = out[0] == ' ' ? out + 1 : out;
    ck_assert_msg(!strcmp(cli_text, served), "daemon '%s' vs generate '%s'", served, out);
    free(served);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("daemon_bitnet");
    TCase *t = tcase_create("http");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_add_test(t, models_lists_the_bitnet_file);
    tcase_add_test(t, chat_plain_and_stream);
    tcase_add_test(t, chat_delta_knobs);
    tcase_add_test(t, chat_equals_cli_generate);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return dl_test_run(suite());
}
