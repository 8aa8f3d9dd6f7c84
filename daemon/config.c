/* config.c — see config.h. Table-driven: one row per key gives its type, bounds and the
 * field it lands in, so the file, environment and flag paths share one parser. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum kt { KT_INT, KT_DOUBLE, KT_FLOAT, KT_BOOL, KT_STR, KT_BYTES, KT_SPECIAL };

typedef struct key_def {
    const char *name;
    enum kt type;
    size_t off;       /* offsetof in dl_config */
    size_t size;      /* KT_STR: buffer size */
    double lo, hi;    /* numeric bounds, inclusive */
    const char *help;
} key_def;

#define F(field) offsetof(dl_config, field)
#define FS(field) offsetof(dl_config, field), sizeof(((dl_config *)0)->field)

static const key_def keys[] = {
    {"host", KT_STR, FS(host), 0, 0, "listen address (default 127.0.0.1)"},
    {"port", KT_INT, F(port), 0, 0, 65535, "TCP port (default 8080; 0 = any free port)"},
    {"model", KT_STR, FS(model), 0, 0, "GGUF model file (required)"},
    {"threads", KT_INT, F(threads), 0, 0, 1024, "forward-pass threads (0 = all cores)"},
    {"parallel", KT_INT, F(parallel), 0, 1, 256, "sequences generated at once (default 4)"},
    {"ctx", KT_INT, F(ctx), 0, 16, 1 << 20, "context tokens per sequence (default 2048)"},
    {"batch", KT_INT, F(batch), 0, 1, 1 << 16, "most tokens per forward pass (default 256)"},
    {"max-queue", KT_INT, F(max_queue), 0, 0, 1 << 20,
     "requests waiting for a slot before 429 (default 64)"},
    {"memory-budget", KT_BYTES, F(memory_budget), 0, 0, 0,
     "bytes for weights+caches+scratch, K/M/G suffixes (default 0 = 80% of RAM)"},
    {"session-ttl", KT_DOUBLE, F(session_ttl), 0, 0, 1e9, "seconds an idle session lives (600)"},
    {"api-key", KT_SPECIAL, 0, 0, 0, 0,
     "Bearer key; repeat or comma-separate for several (default none = open)"},
    {"log-level", KT_SPECIAL, 0, 0, 0, 0, "error|warn|info|debug (default info)"},
    {"log-format", KT_SPECIAL, 0, 0, 0, 0, "text|json (default text)"},
    {"log-file", KT_STR, FS(log_file), 0, 0, "log file, reopened on SIGHUP (default stderr)"},
    {"max-body", KT_BYTES, F(max_body), 0, 0, 0, "request body bytes before 413 (default 1M)"},
    {"request-timeout", KT_DOUBLE, F(request_timeout), 0, 0, 1e9,
     "seconds a request may run in all (default 600; 0 = none)"},
    {"max-connections", KT_INT, F(max_connections), 0, 1, 65536,
     "concurrent HTTP connections (default 256)"},
    {"drain-timeout", KT_DOUBLE, F(drain_timeout), 0, 0, 1e6,
     "seconds SIGTERM waits for in-flight requests (default 30)"},
    {"delta-enabled", KT_BOOL, F(delta.enabled), 0, 0, 1, "DeltaLLM attention by default"},
    {"delta-theta", KT_FLOAT, F(delta.theta), 0, 0, 1e6, "delta threshold in key units"},
    {"delta-sparsity-target", KT_FLOAT, F(delta.sparsity_target), 0, -1, 0.999999,
     "target element sparsity in [0,1); < 0 uses delta-theta"},
    {"delta-window", KT_INT, F(delta.window), 0, 1, 1 << 20, "exact local window (tokens)"},
    {"delta-prefill-window", KT_INT, F(delta.prefill_window), 0, 0, 1 << 20,
     "exact keys per query in a sliding prefill (0 = delta-window)"},
    {"delta-layer-offsets", KT_SPECIAL, 0, 0, 0, 0,
     "per-layer target offsets a,b,.. (deltallm eval --calibrate); one per model layer"},
    {"delta-sink", KT_INT, F(delta.sink), 0, 0, 1 << 20, "first tokens always exact"},
    {"delta-stages", KT_SPECIAL, 0, 0, 0, 0, "prefill|decode|both"},
    {"delta-prefill-mode", KT_SPECIAL, 0, 0, 0, 0, "sliding|block"},
    {"delta-block-frac", KT_FLOAT, F(delta.block_frac), 0, 1e-6, 1, "block mode fraction (0,1]"},
    {"delta-lag", KT_FLOAT, F(delta.lag), 0, 0, 1, "stored key element stops lag*theta short [0,1]"},
};

const char *dl_version(void) { return "0.1.0"; }

void dl_config_defaults(dl_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->threads = 0;
    c->parallel = 4;
    c->ctx = 2048;
    c->batch = 256;
    c->max_queue = 64;
    c->session_ttl = 600;
    c->log_level = DL_LOG_INFO;
    c->max_body = 1 << 20;
    c->request_timeout = 600;
    c->max_connections = 256;
    c->drain_timeout = 30;
    dl_delta_params_default(&c->delta);
}

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
        !strcasecmp(v, "on")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
        !strcasecmp(v, "off")) {
        *out = 0;
        return 0;
    }
    return -EINVAL;
}

/* "64", "64K", "1.5G" (binary multiples) -> bytes. */
static int parse_bytes(const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || errno || !isfinite(x) || x < 0)
        return -EINVAL;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -EINVAL;
    x *= mul;
    if (x > 9.0e18)
        return -ERANGE;
    *out = (uint64_t)x;
    return 0;
}

static int add_api_keys(dl_config *c, const char *v, char *err, size_t errlen)
{
    const char *p = v;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && isspace((unsigned char)*p)) { p++; n--; }
        while (n && isspace((unsigned char)p[n - 1])) n--;
        if (n) {
            if (n >= DL_CFG_KEY_LEN || c->n_api_keys >= DL_CFG_MAX_KEYS) {
                snprintf(err, errlen, "api-key: too many keys or a key too long (max %d of %d bytes)",
                         DL_CFG_MAX_KEYS, DL_CFG_KEY_LEN - 1);
                return -EINVAL;
            }
            memcpy(c->api_keys[c->n_api_keys], p, n);
            c->api_keys[c->n_api_keys][n] = 0;
            c->n_api_keys++;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int set_special(dl_config *c, const char *key, const char *v, char *err, size_t errlen)
{
    if (!strcmp(key, "api-key"))
        return add_api_keys(c, v, err, errlen);
    if (!strcmp(key, "log-level")) {
        static const char *names[] = {"error", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++)
            if (!strcasecmp(v, names[i])) {
                c->log_level = i;
                return 0;
            }
        snprintf(err, errlen, "log-level: '%s' is not one of error, warn, info, debug", v);
        return -EINVAL;
    }
    if (!strcmp(key, "log-format")) {
        if (!strcasecmp(v, "text") || !strcasecmp(v, "json")) {
            c->log_json = !strcasecmp(v, "json");
            return 0;
        }
        snprintf(err, errlen, "log-format: '%s' is not text or json", v);
        return -EINVAL;
    }
    if (!strcmp(key, "delta-stages")) {
        if (!strcasecmp(v, "prefill")) c->delta.stages = DL_STAGE_PREFILL;
        else if (!strcasecmp(v, "decode")) c->delta.stages = DL_STAGE_DECODE;
        else if (!strcasecmp(v, "both")) c->delta.stages = DL_STAGE_BOTH;
        else {
            snprintf(err, errlen, "delta-stages: '%s' is not prefill, decode or both", v);
            return -EINVAL;
        }
        return 0;
    }
    if (!strcmp(key, "delta-layer-offsets")) {
        char e2[200];
        if (dl_delta_parse_offsets(v, &c->delta, e2, sizeof e2)) {
            snprintf(err, errlen, "delta-layer-offsets: %s", e2);
            return -EINVAL;
        }
        return 0;
    }
    if (!strcmp(key, "delta-prefill-mode")) {
        if (!strcasecmp(v, "sliding")) c->delta.prefill_mode = DL_PREFILL_SLIDING;
        else if (!strcasecmp(v, "block")) c->delta.prefill_mode = DL_PREFILL_BLOCK;
        else {
            snprintf(err, errlen, "delta-prefill-mode: '%s' is not sliding or block", v);
            return -EINVAL;
        }
        return 0;
    }
    return -ENOENT;
}

static int set_key(dl_config *c, const char *key, const char *value, char *err, size_t errlen);

/* Sources are applied lowest priority first (file, env, flags), so the last of delta-theta
 * and delta-sparsity-target to be set decides which one is used: a threshold given
 * explicitly replaces the default target. */
int dl_config_set(dl_config *c, const char *key, const char *value, char *err, size_t errlen)
{
    int rc = set_key(c, key, value, err, errlen);
    if (rc == 0 && !strcmp(key, "delta-theta"))
        c->delta.sparsity_target = -1;
    return rc;
}

static int set_key(dl_config *c, const char *key, const char *value, char *err, size_t errlen)
{
    const key_def *k = find_key(key);
    if (!k) {
        snprintf(err, errlen, "unknown key '%s' (see --help)", key);
        return -ENOENT;
    }
    char *base = (char *)c;
    char *end;
    switch (k->type) {
    case KT_STR:
        if (strlen(value) >= k->size) {
            snprintf(err, errlen, "%s: value too long (max %zu bytes)", key, k->size - 1);
            return -EINVAL;
        }
        memcpy(base + k->off, value, strlen(value) + 1);
        return 0;
    case KT_INT: {
        errno = 0;
        long x = strtol(value, &end, 10);
        if (end == value || *end || errno || x < k->lo || x > k->hi) {
            snprintf(err, errlen, "%s: '%s' is not an integer in [%.0f, %.0f]", key, value, k->lo,
                     k->hi);
            return -EINVAL;
        }
        *(int *)(base + k->off) = (int)x;
        return 0;
    }
    case KT_DOUBLE:
    case KT_FLOAT: {
        errno = 0;
        double x = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(x) || x < k->lo || x > k->hi) {
            snprintf(err, errlen, "%s: '%s' is not a number in [%g, %g]", key, value, k->lo, k->hi);
            return -EINVAL;
        }
        if (k->type == KT_FLOAT)
            *(float *)(base + k->off) = (float)x;
        else
            *(double *)(base + k->off) = x;
        return 0;
    }
    case KT_BOOL: {
        int b;
        if (parse_bool(value, &b)) {
            snprintf(err, errlen, "%s: '%s' is not true/false", key, value);
            return -EINVAL;
        }
        *(int *)(base + k->off) = b;
        return 0;
    }
    case KT_BYTES: {
        uint64_t b;
        if (parse_bytes(value, &b)) {
            snprintf(err, errlen, "%s: '%s' is not a byte size (e.g. 512M, 4G)", key, value);
            return -EINVAL;
        }
        if (!strcmp(key, "max-body")) {
            if (b < 64 || b > (1u << 30)) {
                snprintf(err, errlen, "max-body: %s is outside [64, 1G]", value);
                return -EINVAL;
            }
            c->max_body = (size_t)b;
        } else {
            c->memory_budget = b;
        }
        return 0;
    }
    case KT_SPECIAL:
        return set_special(c, key, value, err, errlen);
    }
    return -ENOENT;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

int dl_config_load_file(dl_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "config: cannot open %s: %s", path, strerror(e));
        return -e;
    }
    char line[8192];
    int lineno = 0, rc = 0, api_seen = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            rc = -EINVAL;
            break;
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        if (!strcmp(k, "api-key") && !api_seen++)
            c->n_api_keys = 0; /* this source replaces lower ones */
        char e2[512];
        rc = dl_config_set(c, k, v, e2, sizeof e2);
        if (rc) {
            snprintf(err, errlen, "%s:%d: %s", path, lineno, e2);
            break;
        }
    }
    fclose(f);
    return rc;
}

void dl_config_usage(FILE *out)
{
    fprintf(out,
            "usage: deltallmd --model FILE [--key value ...]\n"
            "\n"
            "OpenAI-compatible inference daemon. Every setting below may be given as a flag\n"
            "(--key value or --key=value), as DELTALLM_KEY in the environment (upper case,\n"
            "'-' -> '_') or as 'key = value' in the file named by --config / DELTALLM_CONFIG.\n"
            "Precedence: flags > environment > config file > defaults.\n\n"
            "  --config FILE            read settings from FILE\n"
            "  --help, --version\n");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        fprintf(out, "  --%-22s %s\n", keys[i].name, keys[i].help);
}

/* DELTALLM_MAX_QUEUE -> max-queue; -1 when the name is not one of ours. The engine's own
 * variables (DELTALLM_ISA caps the instruction set, DELTALLM_MODELS is where `deltallm
 * pull` keeps models) share the prefix and are not daemon keys: skipped, not refused. */
static int env_to_key(const char *name, size_t n, char *out, size_t cap)
{
    static const char pfx[] = "DELTALLM_";
    static const char *const engine_vars[] = {"DELTALLM_ISA", "DELTALLM_MODELS"};
    if (n <= sizeof pfx - 1 || strncmp(name, pfx, sizeof pfx - 1) || n - 9 >= cap)
        return -1;
    for (size_t i = 0; i < sizeof engine_vars / sizeof engine_vars[0]; i++)
        if (strlen(engine_vars[i]) == n && !strncmp(name, engine_vars[i], n))
            return -1;
    size_t j = 0;
    for (size_t i = sizeof pfx - 1; i < n; i++)
        out[j++] = name[i] == '_' ? '-' : (char)tolower((unsigned char)name[i]);
    out[j] = 0;
    return 0;
}

int dl_config_from_args(dl_config *c, int argc, char **argv, char **envp, FILE *out,
                        char *err, size_t errlen)
{
    dl_config_defaults(c);
    const char *cfg_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            dl_config_usage(out);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            fprintf(out, "deltallmd %s\n", dl_version());
            return 1;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            cfg_path = argv[i + 1];
        else if (!strncmp(argv[i], "--config=", 9))
            cfg_path = argv[i] + 9;
    }
    for (char **e = envp; e && *e && !cfg_path; e++)
        if (!strncmp(*e, "DELTALLM_CONFIG=", 16))
            cfg_path = *e + 16;
    int rc;
    if (cfg_path && (rc = dl_config_load_file(c, cfg_path, err, errlen)))
        return rc;

    int api_seen = 0;
    for (char **e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        char key[64], e2[512];
        if (!eq || env_to_key(*e, (size_t)(eq - *e), key, sizeof key) || !strcmp(key, "config"))
            continue;
        if (!strcmp(key, "api-key") && !api_seen++)
            c->n_api_keys = 0;
        if ((rc = dl_config_set(c, key, eq + 1, e2, sizeof e2))) {
            snprintf(err, errlen, "environment %.*s: %s", (int)(eq - *e), *e, e2);
            return rc;
        }
    }

    api_seen = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2)) {
            snprintf(err, errlen, "unexpected argument '%s' (flags are --key value)", a);
            return -EINVAL;
        }
        char key[64];
        const char *val;
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(key, sizeof key, "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else {
            snprintf(key, sizeof key, "%s", a + 2);
            if (i + 1 >= argc) {
                snprintf(err, errlen, "%s: missing value", key);
                return -EINVAL;
            }
            val = argv[++i];
        }
        if (!strcmp(key, "config"))
            continue;
        if (!strcmp(key, "api-key") && !api_seen++)
            c->n_api_keys = 0;
        if ((rc = dl_config_set(c, key, val, err, errlen)))
            return rc;
    }
    if ((rc = dl_delta_params_check(&c->delta, err, errlen)))
        return rc;
    if (c->batch < c->parallel) {
        snprintf(err, errlen, "batch: %d is less than parallel (%d); every running sequence "
                 "needs a token in each step", c->batch, c->parallel);
        return -EINVAL;
    }
    return 0;
}
