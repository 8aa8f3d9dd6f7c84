/* config.h — deltallmd settings: defaults < config file < DELTALLM_* environment < flags.
 *
 * Every key has one name used everywhere: the config file line `key = value`, the
 * environment variable DELTALLM_KEY (upper case, '-' -> '_') and the long flag --key.
 * Values are checked when set; an invalid one is refused with a message naming the key.
 */
#ifndef DL_CONFIG_H
#define DL_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "delta.h"

#define DL_CFG_MAX_KEYS 16  /* API keys */
#define DL_CFG_KEY_LEN 256

enum dl_log_level { DL_LOG_ERROR = 0, DL_LOG_WARN = 1, DL_LOG_INFO = 2, DL_LOG_DEBUG = 3 };

typedef struct dl_config {
    char host[256];           /* listen address (numeric IPv4/IPv6 or "localhost") */
    int port;                 /* TCP port; 0 picks a free one */
    char model[4096];         /* GGUF file */
    int threads;              /* forward-pass threads; 0 = all cores */
    int parallel;             /* sequences generated at once */
    int ctx;                  /* tokens per sequence */
    int batch;                /* most tokens per forward pass (prefill chunk + decodes) */
    int max_queue;            /* waiting requests beyond `parallel` before 429 */
    uint64_t memory_budget;   /* bytes for weights + caches + scratch; 0 = 80% of RAM */
    double session_ttl;       /* seconds an idle session is kept */
    int n_api_keys;
    char api_keys[DL_CFG_MAX_KEYS][DL_CFG_KEY_LEN];
    int log_level;            /* enum dl_log_level */
    int log_json;             /* 1: JSON lines, 0: text */
    char log_file[4096];      /* "" = stderr; reopened on SIGHUP */
    size_t max_body;          /* request body bytes before 413 */
    double request_timeout;   /* seconds a request may take in all; 0 = none */
    int max_connections;      /* concurrent HTTP connections */
    double drain_timeout;     /* seconds SIGTERM waits for in-flight work */
    dl_delta_params delta;    /* default DeltaLLM knobs for requests */
} dl_config;

void dl_config_defaults(dl_config *c);

/* Set one key from text. 0, or -EINVAL / -ENOENT with a message naming the key. */
int dl_config_set(dl_config *c, const char *key, const char *value, char *err, size_t errlen);

/* Read `key = value` lines ('#' comments, blank lines). 0 or negative with "file:line: ...". */
int dl_config_load_file(dl_config *c, const char *path, char *err, size_t errlen);

/* The whole precedence chain: defaults, then the file named by --config / DELTALLM_CONFIG,
 * then DELTALLM_* variables from envp, then flags. Returns 0; 1 when --help or --version
 * was asked (text already printed to out); negative on an invalid setting. */
int dl_config_from_args(dl_config *c, int argc, char **argv, char **envp, FILE *out,
                        char *err, size_t errlen);

void dl_config_usage(FILE *out);
const char *dl_version(void);

#endif
