#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sbuf.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_fp;
static int log_level = DL_LOG_INFO, log_json;
static char log_path[4096];

int dl_log_open(int level, int json, const char *path, char *err, size_t errlen)
{
    log_level = level;
    log_json = json;
    snprintf(log_path, sizeof log_path, "%s", path ? path : "");
    if (log_path[0]) {
        FILE *f = fopen(log_path, "a");
        if (!f) {
            int e = errno;
            snprintf(err, errlen, "log-file: cannot open %s: %s", log_path, strerror(e));
            return -e;
        }
        setvbuf(f, NULL, _IOLBF, 0);
        log_fp = f;
    }
    return 0;
}

int dl_log_reopen(void)
{
    if (!log_path[0])
        return 0;
    FILE *f = fopen(log_path, "a");
    if (!f)
        return -errno;
    setvbuf(f, NULL, _IOLBF, 0);
    pthread_mutex_lock(&log_lock);
    FILE *old = log_fp;
    log_fp = f;
    pthread_mutex_unlock(&log_lock);
    if (old)
        fclose(old);
    return 0;
}

void dl_log_close(void)
{
    pthread_mutex_lock(&log_lock);
    if (log_fp)
        fclose(log_fp);
    log_fp = NULL;
    pthread_mutex_unlock(&log_lock);
}

void dl_log(int level, const char *req_id, const char *session, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    dl_sbuf b;
    if (dl_sbuf_init(&b, 256))
        return;
    if (log_json) {
        dl_sbuf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\"", when, names[level]);
        if (req_id) {
            dl_sbuf_puts(&b, ",\"request_id\":");
            dl_sbuf_json_str(&b, req_id, strlen(req_id));
        }
        if (session && *session) {
            dl_sbuf_puts(&b, ",\"session_id\":");
            dl_sbuf_json_str(&b, session, strlen(session));
        }
        dl_sbuf_puts(&b, ",\"msg\":");
        /* messages may quote client text: keep the JSON line valid whatever it holds */
        size_t n = strlen(msg);
        if (dl_utf8_valid(msg, n))
            dl_sbuf_json_str(&b, msg, n);
        else
            dl_sbuf_puts(&b, "\"(message not valid UTF-8)\"");
        dl_sbuf_puts(&b, "}\n");
    } else {
        dl_sbuf_printf(&b, "%s %-5s", when, names[level]);
        if (req_id)
            dl_sbuf_printf(&b, " [%s]", req_id);
        if (session && *session)
            dl_sbuf_printf(&b, " session=%s", session);
        dl_sbuf_printf(&b, " %s\n", msg);
    }
    pthread_mutex_lock(&log_lock);
    FILE *f = log_fp ? log_fp : stderr;
    fwrite(b.p, 1, b.len, f);
    fflush(f);
    pthread_mutex_unlock(&log_lock);
    dl_sbuf_free(&b);
}
