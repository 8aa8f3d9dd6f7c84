/* log.h — leveled logging as text or JSON lines, to stderr or a file reopened on SIGHUP.
 * Thread-safe (one lock around each line). */
#ifndef DL_LOG_H
#define DL_LOG_H

#include "config.h"

int dl_log_open(int level, int json, const char *path, char *err, size_t errlen);
int dl_log_reopen(void);  /* SIGHUP: reopen the file (log rotation) */
void dl_log_close(void);
/* req_id / session may be NULL. msg is printf-style. */
void dl_log(int level, const char *req_id, const char *session, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
