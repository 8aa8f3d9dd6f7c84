/* test_ship.c — the shipping artefacts: the systemd notify messages the real daemon sends on
 * a socket this test owns, `systemd-analyze verify` on the unit, `make install` into a
 * DESTDIR, and openapi.yaml linted and checked against live responses (node, with npm
 * packages installed into $DL_BUILD/node_modules on first use). Waits are receives with
 * deadlines, never sleeps as assertions. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static const char *model_path(void)
{
    return dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf");
}

/* Starts deltallmd on port (0 = any) with extra environment "K=V" (or NULL). */
static pid_t start_daemon(int port, const char *env)
{
    char bin[1024], ps[16];
    snprintf(bin, sizeof bin, "%s/deltallmd", dl_test_build_dir());
    snprintf(ps, sizeof ps, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        if (env)
            putenv((char *)env);
        execl(bin, bin, "--model", model_path(), "--port", ps, "--host", "127.0.0.1",
              "--log-level", "warn", "--threads", "1", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int run_sh(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- systemd notify ---------------------------------------------------------------------- */

/* Receives one datagram within secs; its text in buf, or "" on timeout. */
static void recv_msg(int fd, char *buf, size_t n, int secs)
{
    struct timeval tv = {secs, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t r = recv(fd, buf, n - 1, 0);
    buf[r > 0 ? r : 0] = 0;
}

START_TEST(test_notify_ready_stopping)
{
    char dir[] = "/tmp/dl-notify-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "%s/notify", dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    static char env[200];
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", a.sun_path);
    pid_t pid = start_daemon(0, env);
    ck_assert_int_gt(pid, 0);

    char m[256];
    recv_msg(fd, m, sizeof m, 60); /* the model loads in the background: READY after it */
    ck_assert_msg(!strncmp(m, "READY=1", 7), "first message '%s'", m);
    kill(pid, SIGTERM);
    recv_msg(fd, m, sizeof m, 60);
    ck_assert_msg(!strncmp(m, "STOPPING=1", 10), "after SIGTERM '%s'", m);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fd);
    unlink(a.sun_path);
    rmdir(dir);
}
END_TEST

START_TEST(test_notify_watchdog)
{
    char dir[] = "/tmp/dl-notify-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "%s/notify", dir);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    static char env[200];
    /* putenv of two variables: the child sets WATCHDOG_USEC itself before exec */
    snprintf(env, sizeof env, "NOTIFY_SOCKET=%s", a.sun_path);
    setenv("WATCHDOG_USEC", "100000", 1);
    pid_t pid = start_daemon(0, env);
    unsetenv("WATCHDOG_USEC");
    char m[256];
    int ready = 0, pings = 0;
    for (int i = 0; i < 10 && pings < 2; i++) {
        recv_msg(fd, m, sizeof m, 60);
        ready |= !strncmp(m, "READY=1", 7);
        pings += !strcmp(m, "WATCHDOG=1");
        ck_assert_msg(m[0], "no message from the daemon");
    }
    ck_assert(ready);
    ck_assert_int_eq(pings, 2);
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    close(fd);
    unlink(a.sun_path);
    rmdir(dir);
}
END_TEST

/* ---- systemd unit ------------------------------------------------------------------------ */

START_TEST(test_unit_verify)
{
    if (run_sh("command -v systemd-analyze >/dev/null 2>&1") != 0) {
        printf("SKIP test_unit_verify: systemd-analyze not installed (Debian package systemd)\n");
        return;
    }
    /* verify insists that ExecStart exists: check a copy pointing at the built daemon */
    char cmd[4096], cwd[2048];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    char dir[] = "/tmp/dl-unit-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    const char *b = dl_test_build_dir();
    snprintf(cmd, sizeof cmd,
             "sed 's|/usr/local/bin/deltallmd|%s%s%s/deltallmd|' systemd/deltallmd.service "
             "> %s/deltallmd.service && systemd-analyze verify --man=no %s/deltallmd.service "
             "2>&1 | tee %s/out && test ! -s %s/out",
             b[0] == '/' ? "" : cwd, b[0] == '/' ? "" : "/", b, dir, dir, dir, dir);
    ck_assert_int_eq(run_sh(cmd), 0);
    /* the unit keeps its promises: notify, reload by SIGHUP, hardening */
    const char *need[] = {"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes",
                          "ProtectSystem=strict", "CapabilityBoundingSet=\n",
                          "SystemCallFilter=@system-service", "MemoryMax=",
                          "StateDirectory=deltallm deltallm/models",
                          "/etc/deltallm/deltallmd.conf"};
    size_t len;
    char *unit = dl_test_read_file("systemd/deltallmd.service", &len);
    ck_assert_ptr_nonnull(unit);
    for (size_t i = 0; i < sizeof need / sizeof *need; i++)
        ck_assert_msg(strstr(unit, need[i]), "unit lacks %s", need[i]);
    free(unit);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_sh(cmd);
}
END_TEST

/* ---- make install ------------------------------------------------------------------------ */

START_TEST(test_make_install)
{
    char dir[] = "/tmp/dl-install-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "make -s install BUILD=%s PREFIX=/opt/dl DESTDIR=%s >%s.log 2>&1",
             dl_test_build_dir(), dir, dir);
    int rc = run_sh(cmd);
    if (rc) {
        snprintf(cmd, sizeof cmd, "cat %s.log", dir);
        run_sh(cmd);
    }
    ck_assert_int_eq(rc, 0);
    const char *files[] = {"/opt/dl/bin/deltallm", "/opt/dl/bin/deltallmd",
                           "/opt/dl/share/man/man1/deltallm.1",
                           "/opt/dl/share/man/man8/deltallmd.8",
                           "/opt/dl/lib/systemd/system/deltallmd.service",
                           "/etc/deltallm/deltallmd.conf.example"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s%s", dir, files[i]);
        struct stat st;
        ck_assert_msg(stat(p, &st) == 0, "missing %s", files[i]);
        ck_assert_int_eq(st.st_mode & 0777, i < 2 ? 0755 : 0644);
    }
    /* the installed unit runs the installed daemon; the example config the state dir model */
    size_t len;
    char p[4096];
    snprintf(p, sizeof p, "%s/opt/dl/lib/systemd/system/deltallmd.service", dir);
    char *u = dl_test_read_file(p, &len);
    ck_assert_ptr_nonnull(u);
    ck_assert_ptr_nonnull(strstr(u, "ExecStart=/opt/dl/bin/deltallmd "));
    free(u);
    snprintf(p, sizeof p, "%s/etc/deltallm/deltallmd.conf.example", dir);
    char *c = dl_test_read_file(p, &len);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(strstr(c, "\nmodel = /var/lib/deltallm/models/"));
    /* stories260K's layer profile is not applied to the user's model */
    ck_assert_ptr_nonnull(strstr(c, "\n# delta-layer-offsets = "));
    ck_assert_ptr_null(strstr(c, "\ndelta-layer-offsets"));
    ck_assert_ptr_nonnull(strstr(c, "\ndelta-sparsity-target = 0.62 "));
    free(c);
    /* the installed binary runs, and the man pages are well-formed where man is present */
    snprintf(cmd, sizeof cmd, "%s/opt/dl/bin/deltallmd --help >/dev/null", dir);
    ck_assert_int_eq(run_sh(cmd), 0);
    snprintf(cmd, sizeof cmd,
             "! command -v groff >/dev/null || test -z \"$(groff -man -ww -z %s/opt/dl/share/"
             "man/man8/deltallmd.8 %s/opt/dl/share/man/man1/deltallm.1 2>&1)\"", dir, dir);
    ck_assert_int_eq(run_sh(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s %s.log", dir, dir);
    run_sh(cmd);
}
END_TEST

/* ---- openapi.yaml ------------------------------------------------------------------------ */

/* Installs the npm validators once into $DL_BUILD/node_modules (npm's cache makes it quick). */
static void need_node_modules(char *nm, size_t n)
{
    char cwd[2048], cmd[4096];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    const char *b = dl_test_build_dir();
    snprintf(nm, n, "%s%s%s/node_modules", b[0] == '/' ? "" : cwd, b[0] == '/' ? "" : "/", b);
    ck_assert_msg(run_sh("command -v node >/dev/null && command -v npm >/dev/null") == 0,
                  "node and npm are needed for the openapi checks (apt-get install nodejs npm)");
    snprintf(cmd, sizeof cmd,
             "test -d %s/ajv && test -d %s/yaml && test -d %s/@apidevtools/swagger-parser || "
             "npm install --prefix %s/.. --no-audit --no-fund --loglevel=error "
             "@apidevtools/swagger-parser@10 ajv@8 yaml@2 >/dev/null", nm, nm, nm, nm);
    ck_assert_msg(run_sh(cmd) == 0, "npm install of the validators failed");
}

START_TEST(test_openapi_lint)
{
    char nm[4096], cmd[8192];
    need_node_modules(nm, sizeof nm);
    snprintf(cmd, sizeof cmd, "DL_NODE_MODULES=%s node tests/openapi_check.mjs lint", nm);
    ck_assert_int_eq(run_sh(cmd), 0);
}
END_TEST

START_TEST(test_openapi_live)
{
    char nm[4096], cmd[8192];
    need_node_modules(nm, sizeof nm);
    /* a fixed free port is found by binding 0 in the daemon: read it from /proc instead is
     * fragile, so pick one here and let the daemon bind it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage ss = {0};
    struct sockaddr *sa = (struct sockaddr *)&ss;
    sa->sa_family = AF_INET;
    ((struct sockaddr_in *)sa)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, sa, sizeof(struct sockaddr_in)), 0);
    socklen_t l = sizeof ss;
    getsockname(fd, sa, &l);
    int port = ntohs(((struct sockaddr_in *)sa)->sin_port);
    close(fd);
    pid_t pid = start_daemon(port, NULL);
    /* wait for /ready (the model loads in the background) with curl's retry loop */
    snprintf(cmd, sizeof cmd,
             "for i in $(seq 600); do curl -sf http://127.0.0.1:%d/ready >/dev/null && exit 0; "
             "sleep 0.1; done; exit 1", port);
    int rc = run_sh(cmd);
    if (rc == 0) {
        snprintf(cmd, sizeof cmd, "DL_NODE_MODULES=%s node tests/openapi_check.mjs live %d", nm,
                 port);
        rc = run_sh(cmd);
    }
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    ck_assert_int_eq(rc, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

static Suite *ship_suite(void)
{
    Suite *s = suite_create("ship");
    TCase *t = tcase_create("ship");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_notify_ready_stopping);
    tcase_add_test(t, test_notify_watchdog);
    tcase_add_test(t, test_unit_verify);
    tcase_add_test(t, test_openapi_lint);
    tcase_add_test(t, test_openapi_live);
    tcase_add_test(t, test_make_install);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return dl_test_run(ship_suite());
}
