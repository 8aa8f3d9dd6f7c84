/* notify.c — sd_notify by hand: datagrams to $NOTIFY_SOCKET from a small libuv thread. */
#include "notify.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

struct dl_notify {
    uv_loop_t loop;
    uv_async_t stop;
    uv_timer_t probe, watchdog;
    uv_signal_t sigterm, sigint;
    pthread_t thread;
    struct sockaddr_storage addr; /* the daemon's HTTP address, loopback for a wildcard */
    socklen_t addrlen;
    char auth[320];               /* "Authorization: Bearer ...\r\n" or "" */
    uint64_t watchdog_ms;         /* 0 = no watchdog */
    int ready_sent, stopping_sent;
};

int dl_notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 1;
    struct sockaddr_un a = {0};
    a.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof a.sun_path)
        return -ENAMETOOLONG;
    memcpy(a.sun_path, path, n);
    if (path[0] == '@') /* abstract namespace: a leading NUL, no terminator counted */
        a.sun_path[0] = 0;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                                (path[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t w = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&a, len);
    int rc = w < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* HTTP status of GET path on the daemon, or negative errno. Blocking with a 2 s limit: it
 * runs on the notifier's own thread, never on the server's loop. */
static int probe(dl_notify *n, const char *path)
{
    int fd = socket(n->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = -EIO;
    char req[512], buf[64];
    int len = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n%s\r\n", path,
                       n->auth);
    if (connect(fd, (struct sockaddr *)&n->addr, n->addrlen)) {
        rc = -errno;
    } else if (send(fd, req, (size_t)len, MSG_NOSIGNAL) == len) {
        size_t got = 0;
        ssize_t r;
        while (got < sizeof buf - 1 && (r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
            got += (size_t)r;
        buf[got] = 0;
        int status;
        if (sscanf(buf, "HTTP/%*d.%*d %d", &status) == 1)
            rc = status;
    }
    close(fd);
    return rc;
}

static void on_probe(uv_timer_t *t)
{
    dl_notify *n = t->data;
    if (n->ready_sent || n->stopping_sent) {
        uv_timer_stop(t);
        return;
    }
    if (probe(n, "/ready") == 200) {
        n->ready_sent = 1;
        dl_notify_send("READY=1\nSTATUS=serving");
        uv_timer_stop(t);
    }
}

static void on_watchdog(uv_timer_t *t)
{
    dl_notify *n = t->data;
    if (probe(n, "/health") == 200) /* no ping when the server no longer answers */
        dl_notify_send("WATCHDOG=1");
}

static void on_signal(uv_signal_t *h, int signum)
{
    dl_notify *n = h->data;
    if (!n->stopping_sent) {
        n->stopping_sent = 1;
        dl_notify_send("STOPPING=1\nSTATUS=draining");
    }
}

static void on_stop(uv_async_t *h)
{
    uv_stop(h->loop);
}

static void *run(void *arg)
{
    dl_notify *n = arg;
    uv_run(&n->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* $WATCHDOG_USEC in ms (0 = off); a $WATCHDOG_PID naming another process means not us. */
static uint64_t watchdog_ms(void)
{
    const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (!us || !*us)
        return 0;
    if (pid && *pid && strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    unsigned long long v = strtoull(us, NULL, 10);
    if (!v)
        return 0;
    uint64_t ms = v / 2000; /* half the period, as sd_watchdog_enabled(3) advises */
    return ms ? ms : 1;
}

int dl_notify_create(const char *host, int port, const char *api_key, dl_notify **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    const char *sock = getenv("NOTIFY_SOCKET");
    if (!sock || !*sock)
        return 0;
    dl_notify *n = calloc(1, sizeof *n);
    if (!n) {
        snprintf(err, errlen, "notify: out of memory");
        return -ENOMEM;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g || !res) {
        snprintf(err, errlen, "notify: cannot resolve '%s': %s", host, gai_strerror(g));
        free(n);
        return -EINVAL;
    }
    memcpy(&n->addr, res->ai_addr, res->ai_addrlen);
    n->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    if (n->addr.ss_family == AF_INET) { /* 0.0.0.0 is not an address to connect to */
        struct sockaddr_in *a = (struct sockaddr_in *)&n->addr;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY))
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (n->addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&n->addr;
        if (!memcmp(&a->sin6_addr, &in6addr_any, sizeof in6addr_any))
            a->sin6_addr = in6addr_loopback;
    }
    if (api_key && *api_key)
        snprintf(n->auth, sizeof n->auth, "Authorization: Bearer %.256s\r\n", api_key);
    n->watchdog_ms = watchdog_ms();
    if (uv_loop_init(&n->loop)) {
        snprintf(err, errlen, "notify: cannot start an event loop");
        free(n);
        return -ENOMEM;
    }
    uv_async_init(&n->loop, &n->stop, on_stop);
    uv_timer_init(&n->loop, &n->probe);
    uv_timer_init(&n->loop, &n->watchdog);
    uv_signal_init(&n->loop, &n->sigterm);
    uv_signal_init(&n->loop, &n->sigint);
    n->probe.data = n->watchdog.data = n->sigterm.data = n->sigint.data = n;
    uv_timer_start(&n->probe, on_probe, 0, 50);
    if (n->watchdog_ms)
        uv_timer_start(&n->watchdog, on_watchdog, n->watchdog_ms, n->watchdog_ms);
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    int rc = pthread_create(&n->thread, NULL, run, n);
    if (rc) {
        snprintf(err, errlen, "notify: cannot start a thread: %s", strerror(rc));
        uv_walk(&n->loop, close_walk, NULL);
        uv_run(&n->loop, UV_RUN_DEFAULT);
        uv_loop_close(&n->loop);
        free(n);
        return -rc;
    }
    *out = n;
    return 0;
}

void dl_notify_destroy(dl_notify *n)
{
    if (!n)
        return;
    uv_async_send(&n->stop);
    pthread_join(n->thread, NULL);
    uv_walk(&n->loop, close_walk, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
    free(n);
}
