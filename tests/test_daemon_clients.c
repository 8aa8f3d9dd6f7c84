/* test_daemon_clients.c — third-party clients against the real deltallmd on 127.0.0.1 with
 * stories260K: the official `openai` npm package (tests/openai_client.mjs, installed from npm
 * into $DL_BUILD/npm on first use), promtool's metrics checker and a real Prometheus server
 * scraping the daemon. A missing tool or an npm install that fails is a test failure with a
 * message saying what to install, never a silent skip. Waits poll with deadlines. */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "testutil.h"

#define PROMPT "Once upon a time"
#define NTOK 48

static const char *model_path(void)
{
    return dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf");
}

/* ---- processes ------------------------------------------------------------------------- */

/* Run argv (PATH searched), stdout into a malloc'd string, stderr to errlog (or inherited);
 * returns the exit status (-1 when it could not run, 127 when not found). */
static int run_capture(const char *const *argv, const char *errlog, char **out)
{
    int pfd[2];
    *out = NULL;
    if (pipe(pfd))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        if (errlog) {
            int fd = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0)
                dup2(fd, 2);
        }
        execvp(argv[0], (char **)argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    ssize_t n;
    while (b && (n = read(pfd[0], b + len, cap - len - 1)) > 0) {
        len += (size_t)n;
        if (cap - len < 1024) {
            char *q = realloc(b, cap * 2);
            if (!q)
                break;
            b = q;
            cap *= 2;
        }
    }
    close(pfd[0]);
    if (b)
        b[len] = 0;
    *out = b;
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int have_cmd(const char *name)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

/* Start a background process with stdout+stderr into log; returns its pid. */
static pid_t spawn(const char *const *argv, const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], (char **)argv);
        _exit(127);
    }
    return pid;
}

/* SIGTERM, wait with a deadline, then SIGKILL; returns the exit status or -1. */
static int stop_pid(pid_t pid)
{
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    int st = 0;
    double end = dl_test_now() + 30;
    while (dl_test_now() < end) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        dl_test_nap();
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* ---- HTTP ------------------------------------------------------------------------------ */

typedef dl_test_resp resp;

static resp http(const char *url, const char *post)
{
    resp r = {0};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, dl_test_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (post)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
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

/* ---- the daemon ------------------------------------------------------------------------ */

static pid_t d_pid;
static int d_port;
static char d_log[256];

static void daemon_setup(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    d_port = dl_test_free_port();
    snprintf(d_log, sizeof d_log, "/tmp/test_daemon_clients.%d.log", (int)getpid());
    char path[4096], port[16];
    snprintf(path, sizeof path, "%s/deltallmd", dl_test_build_dir());
    snprintf(port, sizeof port, "%d", d_port);
    const char *argv[] = {path, "--model", model_path(), "--host", "127.0.0.1", "--port", port,
                          "--threads", "1", "--parallel", "4", "--ctx", "512", NULL};
    d_pid = spawn(argv, d_log);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/ready", d_port);
    double end = dl_test_now() + 30;
    while (dl_test_now() < end) {
        resp r = http(url, NULL);
        free(r.body);
        if (r.status == 200)
            return;
        int st;
        if (waitpid(d_pid, &st, WNOHANG) == d_pid) {
            d_pid = 0;
            break;
        }
        dl_test_nap();
    }
    fprintf(stderr, "deltallmd did not become ready; see %s\n", d_log);
}

static void daemon_teardown(void)
{
    int st = stop_pid(d_pid);
    if (st != 0)
        fprintf(stderr, "deltallmd exited with %d (log %s)\n", st, d_log);
    d_pid = 0;
    curl_global_cleanup();
}

static void assert_daemon(void)
{
    ck_assert_msg(d_pid > 0, "deltallmd is not running; see %s", d_log);
}

/* The CLI's greedy continuation of prompt. */
static char *cli_generate(const char *prompt)
{
    char cli[4096], n[16];
    snprintf(cli, sizeof cli, "%s/deltallm", dl_test_build_dir());
    snprintf(n, sizeof n, "%d", NTOK);
    /* the daemon runs DeltaLLM with the library's default knobs unless told otherwise; the
     * CLI is dense unless given --delta, which selects the same defaults */
    const char *argv[] = {cli, "generate", "-m", model_path(), "-p", prompt, "-n", n,
                          "--temp", "0", "-q", "--delta", NULL};
    char *out;
    int st = run_capture(argv, NULL, &out);
    ck_assert_msg(st == 0 && out, "%s generate failed (%d)", cli, st);
    return out;
}

static const char *jstr(cJSON *j, const char *k)
{
    cJSON *v = cJSON_GetObjectItem(j, k);
    ck_assert_msg(cJSON_IsString(v), "openai client result lacks %s", k);
    return v->valuestring;
}

/* ---- the openai npm client ------------------------------------------------------------- */

START_TEST(openai_npm_client_matches_cli)
{
    assert_daemon();
    ck_assert_msg(have_cmd("node") && have_cmd("npm"),
                  "node and npm are needed for the openai client test (apt-get install nodejs npm)");
    char prefix[4096], pkg[4200], errlog[256];
    snprintf(prefix, sizeof prefix, "%s/npm", dl_test_build_dir());
    snprintf(pkg, sizeof pkg, "%s/node_modules/openai/package.json", prefix);
    snprintf(errlog, sizeof errlog, "/tmp/test_daemon_clients.%d.npm.log", (int)getpid());
    struct stat sb;
    if (stat(pkg, &sb) != 0) {
        mkdir(prefix, 0755);
        const char *argv[] = {"npm", "install", "--prefix", prefix, "--no-audit", "--no-fund",
                              "--loglevel=error", "openai@6", NULL};
        char *out;
        int st = run_capture(argv, errlog, &out);
        free(out);
        ck_assert_msg(st == 0 && stat(pkg, &sb) == 0,
                      "npm could not install the `openai` package into %s (exit %d; offline? "
                      "see %s) — this test needs the npm registry once", prefix, st, errlog);
    }
    char *want = cli_generate(PROMPT);
    /* stories260K carries no chat template: the daemon renders the plain style */
    dl_chat_msg msg = {"user", PROMPT};
    char chat_prompt[512];
    ck_assert_int_lt(dl_chat_format(DL_CHAT_PLAIN, &msg, 1, 1, chat_prompt, sizeof chat_prompt),
                     (int)sizeof chat_prompt);
    char *want_chat = cli_generate(chat_prompt);
    ck_assert_msg(strlen(want) > 10 && strlen(want_chat) > 10, "CLI output too short");

    char base[128], n[16], nodepath[4200];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/v1", d_port);
    snprintf(n, sizeof n, "%d", NTOK);
    snprintf(nodepath, sizeof nodepath, "%s/node_modules", prefix);
    setenv("NODE_PATH", nodepath, 1);
    /* NODE_PATH does not apply to ES-module imports: run the script from a copy placed
     * beside the installed node_modules, where `import 'openai'` resolves */
    char script[4300];
    snprintf(script, sizeof script, "%s/openai_client.mjs", prefix);
    size_t slen;
    char *src = dl_test_read_file("tests/openai_client.mjs", &slen);
    ck_assert_msg(src != NULL, "cannot read tests/openai_client.mjs");
    FILE *f = fopen(script, "w");
    ck_assert(f != NULL);
    fwrite(src, 1, slen, f);
    fclose(f);
    free(src);
    snprintf(errlog, sizeof errlog, "/tmp/test_daemon_clients.%d.node.log", (int)getpid());
    const char *argv[] = {"node", script, base, "unused-key", PROMPT, PROMPT, n, NULL};
    char *out;
    int st = run_capture(argv, errlog, &out);
    ck_assert_msg(st == 0, "the openai client failed (exit %d); see %s", st, errlog);
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j != NULL, "openai client output is not JSON: %s", out);

    ck_assert_str_eq(jstr(j, "completion"), want);
    ck_assert_str_eq(jstr(j, "completion_stream"), want);
    ck_assert_int_gt(cJSON_GetObjectItem(j, "completion_stream_chunks")->valueint, 2);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "completion_stream_usage")->valueint,
                     cJSON_GetObjectItem(j, "completion_tokens")->valueint);
    const char *finish = jstr(j, "completion_finish");
    ck_assert(!strcmp(finish, "length") || !strcmp(finish, "stop"));
    /* chat content is the continuation of the rendered prompt, without the word-leading
     * space the model emits first */
    const char *wc = want_chat[0] == ' ' ? want_chat + 1 : want_chat;
    ck_assert_str_eq(jstr(j, "chat"), wc);
    ck_assert_str_eq(jstr(j, "chat_stream"), wc);
    ck_assert_str_eq(jstr(j, "chat_role"), "assistant");
    ck_assert_str_eq(jstr(j, "chat_stream_role"), "assistant");
    cJSON_Delete(j);
    free(out);
    free(want);
    free(want_chat);
}
END_TEST

/* ---- Prometheus ------------------------------------------------------------------------ */

static void some_traffic(void)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", d_port);
    for (int i = 0; i < 3; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"Once upon a time %d\",\"max_tokens\":16,\"temperature\":0,"
                 "\"delta\":{\"enabled\":true}}", i);
        resp r = http(url, body);
        ck_assert_msg(r.status == 200, "completion failed: %ld %s", r.status, r.body);
        free(r.body);
    }
}

START_TEST(promtool_check_metrics)
{
    assert_daemon();
    ck_assert_msg(have_cmd("promtool"),
                  "promtool not found: apt-get install prometheus (see Makefile DEPS_PKGS)");
    some_traffic();
    char url[128], file[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", d_port);
    resp r = http(url, NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "deltallm_time_to_first_token_seconds_bucket"));
    snprintf(file, sizeof file, "/tmp/test_daemon_clients.%d.metrics", (int)getpid());
    FILE *f = fopen(file, "w");
    ck_assert(f != NULL);
    fwrite(r.body, 1, r.len, f);
    fclose(f);
    free(r.body);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", file);
    FILE *p = popen(cmd, "r");
    ck_assert(p != NULL);
    char msg[4096] = "";
    size_t n = fread(msg, 1, sizeof msg - 1, p);
    msg[n] = 0;
    int st = pclose(p);
    ck_assert_msg(st == 0 && n == 0, "promtool check metrics (exit %d) on %s:\n%s", st, file, msg);
    unlink(file);
}
END_TEST

/* The query API's result array for q has at least one series (value > min when min >= 0). */
static int prom_has(int pport, const char *q, double min)
{
    CURL *c = curl_easy_init();
    char *esc = curl_easy_escape(c, q, 0);
    curl_easy_cleanup(c);
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/query?query=%s", pport, esc);
    curl_free(esc);
    resp r = http(url, NULL);
    int ok = 0;
    cJSON *j = r.status == 200 ? cJSON_Parse(r.body) : NULL;
    cJSON *res = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "data"), "result");
    cJSON *s;
    cJSON_ArrayForEach(s, res) {
        cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItem(s, "value"), 1);
        if (cJSON_IsString(v) && (min < 0 || atof(v->valuestring) > min))
            ok = 1;
    }
    cJSON_Delete(j);
    free(r.body);
    return ok;
}

START_TEST(prometheus_scrapes_daemon)
{
    assert_daemon();
    ck_assert_msg(have_cmd("prometheus"),
                  "prometheus not found: apt-get install prometheus (see Makefile DEPS_PKGS)");
    some_traffic();
    char dir[] = "/tmp/test_daemon_prom.XXXXXX";
    ck_assert(mkdtemp(dir) != NULL);
    char cfg[300], data[300], log[300], listen[64];
    snprintf(cfg, sizeof cfg, "%s/prometheus.yml", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/prometheus.log", dir);
    FILE *f = fopen(cfg, "w");
    ck_assert(f != NULL);
    fprintf(f, "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
               "scrape_configs:\n  - job_name: deltallmd\n    scrape_interval: 1s\n"
               "    static_configs:\n      - targets: ['127.0.0.1:%d']\n", d_port);
    fclose(f);
    int pport = dl_test_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", pport);
    char a_cfg[340], a_data[340], a_listen[100];
    snprintf(a_cfg, sizeof a_cfg, "--config.file=%s", cfg);
    snprintf(a_data, sizeof a_data, "--storage.tsdb.path=%s", data);
    snprintf(a_listen, sizeof a_listen, "--web.listen-address=%s", listen);
    const char *argv[] = {"prometheus", a_cfg, a_data, a_listen, NULL};
    pid_t pid = spawn(argv, log);
    ck_assert(pid > 0);
    int up = 0, sparsity = 0, ttft = 0;
    double end = dl_test_now() + 90;
    while (dl_test_now() < end && !(up && sparsity && ttft)) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            pid = 0;
            break;
        }
        up = up || prom_has(pport, "up{job=\"deltallmd\"} == 1", -1);
        sparsity = sparsity || prom_has(pport, "deltallm_attention_qk_macs_total", 0);
        ttft = ttft || prom_has(pport, "deltallm_time_to_first_token_seconds_count", 0);
        dl_test_nap();
    }
    /* the histogram's buckets are there too, as Prometheus stored them */
    int buckets = up && prom_has(pport,
        "histogram_quantile(0.5, deltallm_time_to_first_token_seconds_bucket)", -1);
    int rc = stop_pid(pid);
    ck_assert_msg(up, "Prometheus never scraped the daemon successfully; see %s", log);
    ck_assert_msg(sparsity, "no deltallm_attention_qk_macs_total series in Prometheus");
    ck_assert_msg(ttft, "no TTFT histogram count in Prometheus");
    ck_assert_msg(buckets, "no TTFT histogram buckets in Prometheus");
    ck_assert_msg(rc == 0, "prometheus exited with %d; see %s", rc, log);
    char rm[400];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(rm), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("daemon_clients");
    TCase *t = tcase_create("clients");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, daemon_setup, daemon_teardown);
    tcase_add_test(t, openai_npm_client_matches_cli);
    tcase_add_test(t, promtool_check_metrics);
    tcase_add_test(t, prometheus_scrapes_daemon);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return dl_test_run(suite());
}
