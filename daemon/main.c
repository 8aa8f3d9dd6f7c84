/* main.c — deltallmd: read the configuration, start the server, run until drained. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "log.h"
#include "notify.h"
#include "server.h"

extern char **environ;

int main(int argc, char **argv)
{
    static dl_config cfg; /* large (paths, keys): keep it off the stack */
    char err[1024];
    int rc = dl_config_from_args(&cfg, argc, argv, environ, stdout, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "deltallmd: %s\n", err);
        return 2;
    }
    if (!cfg.model[0]) {
        fprintf(stderr, "deltallmd: model: no model given (--model FILE)\n");
        return 2;
    }
    if (dl_log_open(cfg.log_level, cfg.log_json, cfg.log_file, err, sizeof err)) {
        fprintf(stderr, "deltallmd: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a client closing mid-write is an error return, not a kill */
    dl_server *s;
    if (dl_server_create(&cfg, &s, err, sizeof err)) {
        dl_log(DL_LOG_ERROR, NULL, NULL, "%s", err);
        dl_log_close();
        return 1;
    }
    dl_notify *nt; /* systemd Type=notify: READY=1 / STOPPING=1 / WATCHDOG=1 */
    if (dl_notify_create(cfg.host, dl_server_port(s), cfg.n_api_keys ? cfg.api_keys[0] : NULL,
                         &nt, err, sizeof err))
        dl_log(DL_LOG_WARN, NULL, NULL, "%s", err);
    rc = dl_server_run(s);
    dl_notify_destroy(nt);
    dl_server_destroy(s);
    dl_log_close();
    return rc;
}
