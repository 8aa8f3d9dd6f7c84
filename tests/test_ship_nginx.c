/* test_ship_nginx.c — scale-out with session affinity: config/nginx/deltallm.conf (ports
 * rewritten) runs in an unprivileged-style nginx instance of its own (prefix, pid, logs and
 * temp folders in a temp dir, master_process off, daemon off) in front of two deltallmd on
 * loopback. Requests for several sessions go through nginx with X-Session-Id; then GET
 * /v1/sessions on each daemon must show every session on exactly one daemon, and both
 * daemons used. Also: the daemon's own X-Session-Id handling (header used when the body has
 * none, body wins, bad header refused). Everything started here is killed by pid; waits are
 * bounded polls. SKIPs with a message where nginx is not installed. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define N_SESS 16

static pid_t start_daemon(int port)
{
    char bin[1024], ps[16];
    snprintf(bin, sizeof bin, "%s/deltallmd", dl_test_build_dir());
    snprintf(ps, sizeof ps, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion ends the test: no orphans */
        execl(bin, bin, "--model", dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"),
              "--port", ps, "--host", "127.0.0.1", "--log-level", "warn", "--threads", "1",
              "--ctx", "256", (char *)NULL);
        _exit(127);
    }
    return pid;
}

typedef struct buf {
    char *p;
    size_t n;
} buf;

static size_t on_data(char *d, size_t sz, size_t nm, void *u)
{
    buf *b = u;
    char *q = realloc(b->p, b->n + sz * nm + 1);
    if (!q)
        return 0;
    memcpy(q + b->n, d, sz * nm);
    b->p = q;
    b->n += sz * nm;
    b->p[b->n] = 0;
    return sz * nm;
}

/* One request; returns the HTTP status (0 when nothing answered), body in out (freed by the
 * caller, may be NULL). session: X-Session-Id value or NULL. */
static long http(int port, const char *path, const char *session, const char *body, char **out)
{
    CURL *c = curl_easy_init();
    char url[256], hdr[256];
    buf b = {NULL, 0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (session) {
        snprintf(hdr, sizeof hdr, "X-Session-Id: %s", session);
        h = curl_slist_append(h, hdr);
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long code = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out)
        *out = b.p;
    else
        free(b.p);
    return code;
}

/* Polls path until it answers 200: at most tries x 50 ms. */
static int wait_200(int port, const char *path, int tries)
{
    struct timespec ts = {0, 50 * 1000 * 1000};
    for (int i = 0; i < tries; i++) {
        if (http(port, path, NULL, NULL, NULL) == 200)
            return 1;
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    int st;
    for (int i = 0; i < 200; i++) { /* up to 10 s, then SIGKILL */
        if (waitpid(pid, &st, WNOHANG) == pid)
            return;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

/* Session ids listed by GET /v1/sessions on port, "|a|b|" style for strstr. */
static void sessions_on(int port, char *out, size_t n)
{
    char *body = NULL;
    ck_assert_int_eq(http(port, "/v1/sessions", NULL, NULL, &body), 200);
    size_t k = 0;
    out[k++] = '|';
    for (const char *p = body; (p = strstr(p, "\"id\":\"")); ) {
        p += 6;
        const char *e = strchr(p, '"');
        ck_assert_ptr_nonnull(e);
        k += (size_t)snprintf(out + k, n - k, "%.*s|", (int)(e - p), p);
        ck_assert_uint_lt(k, n);
        p = e;
    }
    out[k] = 0;
    free(body);
}

static int has_session(const char *list, const char *id)
{
    char pat[600];
    snprintf(pat, sizeof pat, "|%s|", id);
    return strstr(list, pat) != NULL;
}

static const char *nginx_bin(void)
{
    static const char *cands[] = {"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++)
        if (access(cands[i], X_OK) == 0)
            return cands[i];
    return NULL;
}

START_TEST(test_nginx_affinity)
{
    const char *ngx = nginx_bin();
    if (!ngx) {
        printf("SKIP test_nginx_affinity: nginx is not installed (apt-get install nginx)\n");
        return;
    }
    char dir[] = "/tmp/dl-nginx-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int p1 = dl_test_free_port(), p2 = dl_test_free_port(), pn = dl_test_free_port();
    while (p2 == p1)
        p2 = dl_test_free_port();
    while (pn == p1 || pn == p2)
        pn = dl_test_free_port();

    /* The example config with its three ports rewritten, inside a minimal main config. */
    char cmd[4096], conf[512];
    snprintf(cmd, sizeof cmd,
             /* max_fails=0: a loaded CI machine must not get a backend marked down for 10 s
              * after one slow answer, which would send every session to the other one */
             "sed -e 's/127.0.0.1:8081;/127.0.0.1:%d max_fails=0;/' "
             "-e 's/127.0.0.1:8082;/127.0.0.1:%d max_fails=0;/' "
             "-e 's/listen 127.0.0.1:8080;/listen 127.0.0.1:%d;/' config/nginx/deltallm.conf "
             "> %s/deltallm.conf && grep -q ':%d max' %s/deltallm.conf && grep -q ':%d max' "
             "%s/deltallm.conf && grep -q 'listen 127.0.0.1:%d;' %s/deltallm.conf",
             p1, p2, pn, dir, p1, dir, p2, dir, pn, dir);
    ck_assert_msg(system(cmd) == 0, "rewriting config/nginx/deltallm.conf failed");
    snprintf(conf, sizeof conf, "%s/nginx.conf", dir);
    FILE *f = fopen(conf, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "daemon off;\nmaster_process off;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
            "events { worker_connections 64; }\n"
            "http {\n  access_log %s/access.log;\n  client_body_temp_path %s/body;\n"
            "  proxy_temp_path %s/proxy;\n  fastcgi_temp_path %s/fastcgi;\n"
            "  uwsgi_temp_path %s/uwsgi;\n  scgi_temp_path %s/scgi;\n  include %s/deltallm.conf;\n}\n",
            dir, dir, dir, dir, dir, dir, dir, dir, dir);
    fclose(f);
    char elog[512];
    snprintf(elog, sizeof elog, "%s/error.log", dir);

    pid_t d1 = start_daemon(p1), d2 = start_daemon(p2);
    pid_t ng = fork();
    if (ng == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* -e: the startup error log too, so nothing is written outside dir */
        execl(ngx, ngx, "-p", dir, "-c", conf, "-e", elog, (char *)NULL);
        _exit(127);
    }
    int ok1 = wait_200(p1, "/ready", 1200), ok2 = wait_200(p2, "/ready", 1200);
    int okn = wait_200(pn, "/health", 400);
    if (!(ok1 && ok2 && okn)) {
        snprintf(cmd, sizeof cmd, "cat %s", elog);
        (void)!system(cmd);
    }
    ck_assert_msg(ok1 && ok2, "the daemons did not become ready");
    ck_assert_msg(okn, "nginx did not proxy /health (its error log is above)");

    /* Two requests per session through nginx: the second must find the session's cache. */
    char id[N_SESS][32];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < N_SESS; i++) {
            snprintf(id[i], sizeof id[i], "sess-%d", i);
            long code = http(pn, "/v1/completions", id[i],
                             "{\"prompt\":\"Once upon a time\",\"max_tokens\":2,\"temperature\":0}",
                             NULL);
            ck_assert_msg(code == 200, "session %s via nginx: HTTP %ld", id[i], code);
        }
    char l1[2048], l2[2048];
    sessions_on(p1, l1, sizeof l1);
    sessions_on(p2, l2, sizeof l2);
    int n1 = 0, n2 = 0;
    for (int i = 0; i < N_SESS; i++) {
        int a = has_session(l1, id[i]), b = has_session(l2, id[i]);
        ck_assert_msg(a + b == 1, "%s on daemon 1: %d, daemon 2: %d (%s / %s)", id[i], a, b,
                      l1, l2);
        n1 += a;
        n2 += b;
    }
    printf("nginx affinity: %d sessions on daemon 1, %d on daemon 2\n", n1, n2);
    ck_assert_msg(n1 > 0 && n2 > 0, "all sessions on one daemon: %d / %d", n1, n2);

    stop(ng);
    stop(d1);
    stop(d2);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The daemon alone: header used without a body session_id, body wins, bad header 400. */
START_TEST(test_session_header)
{
    int p = dl_test_free_port();
    pid_t d = start_daemon(p);
    ck_assert_msg(wait_200(p, "/ready", 1200), "daemon not ready");
    const char *req = "{\"prompt\":\"Once\",\"max_tokens\":1}";
    ck_assert_int_eq(http(p, "/v1/completions", "from-header", req, NULL), 200);
    ck_assert_int_eq(http(p, "/v1/completions", "ignored-header",
                          "{\"prompt\":\"Once\",\"max_tokens\":1,\"session_id\":\"from-body\"}",
                          NULL),
                     200);
    char *body = NULL;
    ck_assert_int_eq(http(p, "/v1/completions", "bad id!", req, &body), 400);
    ck_assert_ptr_nonnull(strstr(body, "X-Session-Id"));
    free(body);
    char l[1024];
    sessions_on(p, l, sizeof l);
    ck_assert_msg(has_session(l, "from-header"), "%s", l);
    ck_assert_msg(has_session(l, "from-body"), "%s", l);
    ck_assert_msg(!has_session(l, "ignored-header"), "%s", l);
    stop(d);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Suite *s = suite_create("ship_nginx");
    TCase *t = tcase_create("nginx");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_session_header);
    tcase_add_test(t, test_nginx_affinity);
    suite_add_tcase(s, t);
    int rc = dl_test_run(s);
    curl_global_cleanup();
    return rc;
}
