/* notify.h — the systemd notify protocol (sd_notify), written by hand: no libsystemd.
 *
 * When $NOTIFY_SOCKET names a unix datagram socket (a path, or "@name" for the abstract
 * namespace), the daemon sends it "READY=1" once the model is loaded, "STOPPING=1" when a
 * SIGTERM/SIGINT starts the drain, and "WATCHDOG=1" every $WATCHDOG_USEC/2 while the HTTP
 * server answers. Without $NOTIFY_SOCKET nothing runs.
 *
 * Why a thread with its own libuv loop that probes the daemon over HTTP (GET /ready, then
 * GET /health for the watchdog) instead of hooks inside the server: the probe sees exactly
 * what a client sees, so READY=1 is never sent before /ready says so, and a wedged event
 * loop stops the watchdog pings (systemd then restarts the unit). libuv delivers a signal to
 * every loop watching it, so this loop sees SIGTERM alongside the server's. */
#ifndef DL_NOTIFY_H
#define DL_NOTIFY_H

#include <stddef.h>

typedef struct dl_notify dl_notify;

/* Sends one message ("READY=1") to $NOTIFY_SOCKET. 0, 1 when the variable is unset (nothing
 * to do), or negative errno. */
int dl_notify_send(const char *msg);

/* Starts the notifier for a daemon listening on host:port (a wildcard host is probed on
 * loopback); api_key may be NULL or "" (used as a Bearer for /ready). *out is NULL and 0 is
 * returned when $NOTIFY_SOCKET is unset. 0 or negative errno with a message. */
int dl_notify_create(const char *host, int port, const char *api_key, dl_notify **out,
                     char *err, size_t errlen);
/* Stops the thread and frees; NULL is fine. */
void dl_notify_destroy(dl_notify *n);

#endif
