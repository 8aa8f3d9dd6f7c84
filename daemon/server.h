/* server.h — the HTTP front end: libmicrohttpd driven by a libuv loop.
 *
 * Why MHD runs on the loop (MHD_USE_EPOLL, its epoll fd watched by a uv_poll) rather than
 * in a thread of its own: every MHD callback then runs on the loop thread, so connection
 * state (suspended or not, the response queued) is touched by one thread only, and
 * resuming a connection is a plain call made from the uv_async callback the worker fires
 * after each step. The only cross-thread state is the scheduler's, under its lock. Signals
 * (SIGTERM/SIGINT drain, SIGHUP log reopen) and timers are loop handles too.
 */
#ifndef DL_SERVER_H
#define DL_SERVER_H

#include "config.h"

typedef struct dl_server dl_server;

/* Binds the socket and starts the worker (which loads the model in the background).
 * 0 or negative with a message. */
int dl_server_create(const dl_config *cfg, dl_server **out, char *err, size_t errlen);
/* Runs the loop until a signal drains the server or the model fails to load. Returns the
 * process exit status (0 after a graceful drain). */
int dl_server_run(dl_server *s);
void dl_server_destroy(dl_server *s);
int dl_server_port(const dl_server *s);

#endif
