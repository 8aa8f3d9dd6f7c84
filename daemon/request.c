/* request.c — see request.h. One small checker per field type; each failure goes through
 * fail() so the message and the `param` name always travel together. */
#include "request.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbuf.h"

typedef struct pctx {
    char *err;
    size_t errlen;
    char *param;
    size_t paramlen;
} pctx;

__attribute__((format(printf, 3, 4))) static int fail(pctx *c, const char *param,
                                                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    snprintf(c->param, c->paramlen, "%s", param);
    return -EINVAL;
}

/* A JSON number that is an integer in [lo, hi]. */
static int get_int(pctx *c, const cJSON *j, const char *name, double lo, double hi, int64_t *out)
{
    if (!cJSON_IsNumber(j))
        return fail(c, name, "'%s' must be an integer", name);
    double x = j->valuedouble;
    if (!isfinite(x) || x != floor(x))
        return fail(c, name, "'%s' must be an integer", name);
    if (x < lo || x > hi)
        return fail(c, name, "'%s' must be between %.0f and %.0f", name, lo, hi);
    *out = (int64_t)x;
    return 0;
}

static int get_num(pctx *c, const cJSON *j, const char *name, double lo, double hi, double *out)
{
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return fail(c, name, "'%s' must be a finite number", name);
    if (j->valuedouble < lo || j->valuedouble > hi)
        return fail(c, name, "'%s' must be between %g and %g", name, lo, hi);
    *out = j->valuedouble;
    return 0;
}

static int get_bool(pctx *c, const cJSON *j, const char *name, int *out)
{
    if (!cJSON_IsBool(j))
        return fail(c, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(j);
    return 0;
}

/* Optional field: absent or JSON null leaves the default. */
static const cJSON *opt(const cJSON *o, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
    return (j && !cJSON_IsNull(j)) ? j : NULL;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

static int parse_token_array(pctx *c, const cJSON *arr, const char *name, dl_prompt *p)
{
    int n = cJSON_GetArraySize(arr);
    if (n <= 0)
        return fail(c, name, "'%s' must not be empty", name);
    p->tokens = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->tokens)
        return fail(c, name, "out of memory");
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        int64_t v;
        if (get_int(c, t, name, 0, INT32_MAX, &v))
            return fail(c, name, "'%s' token ids must be non-negative integers", name);
        p->tokens[i++] = (int32_t)v;
    }
    p->n_tokens = n;
    return 0;
}

static int parse_prompt(pctx *c, dl_request *r, const cJSON *j)
{
    if (!j)
        return fail(c, "prompt", "'prompt' is required");
    if (cJSON_IsString(j)) {
        if (!j->valuestring[0])
            return fail(c, "prompt", "'prompt' must not be empty");
        r->n_prompts = 1;
        r->prompts[0].text = dup_str(j->valuestring);
        return r->prompts[0].text ? 0 : fail(c, "prompt", "out of memory");
    }
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) == 0)
        return fail(c, "prompt", "'prompt' must be a non-empty string, array of strings, "
                    "array of token ids or array of token-id arrays");
    const cJSON *first = j->child;
    if (cJSON_IsNumber(first)) {
        r->n_prompts = 1;
        return parse_token_array(c, j, "prompt", &r->prompts[0]);
    }
    int n = cJSON_GetArraySize(j);
    if (n > DL_MAX_PROMPTS)
        return fail(c, "prompt", "'prompt' holds %d prompts; at most %d", n, DL_MAX_PROMPTS);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        dl_prompt *p = &r->prompts[r->n_prompts++];
        if (cJSON_IsString(e)) {
            if (!e->valuestring[0])
                return fail(c, "prompt", "'prompt' must not contain an empty string");
            if (!(p->text = dup_str(e->valuestring)))
                return fail(c, "prompt", "out of memory");
        } else if (cJSON_IsArray(e)) {
            if (parse_token_array(c, e, "prompt", p))
                return -EINVAL;
        } else {
            return fail(c, "prompt", "'prompt' array elements must all be strings or all "
                        "token-id arrays");
        }
    }
    return 0;
}

/* content: string, null, or an array of {"type":"text","text":...} parts (joined). */
static int parse_content(pctx *c, const cJSON *j, char **out)
{
    if (!j || cJSON_IsNull(j)) {
        *out = dup_str("");
        return *out ? 0 : fail(c, "messages", "out of memory");
    }
    if (cJSON_IsString(j)) {
        *out = dup_str(j->valuestring);
        return *out ? 0 : fail(c, "messages", "out of memory");
    }
    if (!cJSON_IsArray(j))
        return fail(c, "messages", "message 'content' must be a string or an array of parts");
    dl_sbuf b;
    if (dl_sbuf_init(&b, 256))
        return fail(c, "messages", "out of memory");
    const cJSON *part;
    cJSON_ArrayForEach(part, j) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text")) {
            dl_sbuf_free(&b);
            return fail(c, "messages", "content parts must be objects with \"type\": \"text\" "
                        "(other part types are not supported)");
        }
        if (!cJSON_IsString(text)) {
            dl_sbuf_free(&b);
            return fail(c, "messages", "a text content part needs a string 'text'");
        }
        dl_sbuf_puts(&b, text->valuestring);
    }
    if (b.oom) {
        dl_sbuf_free(&b);
        return fail(c, "messages", "out of memory");
    }
    *out = b.p; /* ownership moves to the message */
    return 0;
}

static int parse_messages(pctx *c, dl_request *r, const cJSON *j)
{
    static const char *roles[] = {"system", "user", "assistant", "developer", "tool"};
    if (!j)
        return fail(c, "messages", "'messages' is required");
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) == 0)
        return fail(c, "messages", "'messages' must be a non-empty array");
    int n = cJSON_GetArraySize(j);
    if (n > 4096)
        return fail(c, "messages", "'messages' holds %d messages; at most 4096", n);
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages)
        return fail(c, "messages", "out of memory");
    const cJSON *m;
    cJSON_ArrayForEach(m, j) {
        if (!cJSON_IsObject(m))
            return fail(c, "messages", "each message must be an object");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role))
            return fail(c, "messages", "each message needs a string 'role'");
        int ok = 0;
        for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
            ok |= !strcmp(role->valuestring, roles[i]);
        if (!ok)
            return fail(c, "messages", "message role '%.32s' is not one of system, user, "
                        "assistant, developer, tool", role->valuestring);
        dl_chat_message *dm = &r->messages[r->n_messages];
        snprintf(dm->role, sizeof dm->role, "%s", role->valuestring);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!content && strcmp(dm->role, "assistant"))
            return fail(c, "messages", "a %s message needs 'content'", dm->role);
        if (parse_content(c, content, &dm->content))
            return -EINVAL;
        r->n_messages++;
    }
    return 0;
}

static int parse_stop(pctx *c, dl_request *r, const cJSON *j)
{
    if (cJSON_IsString(j)) {
        if (!j->valuestring[0] || strlen(j->valuestring) > DL_MAX_STOP_LEN)
            return fail(c, "stop", "'stop' strings must be 1 to %d bytes", DL_MAX_STOP_LEN);
        snprintf(r->stops[0], sizeof r->stops[0], "%s", j->valuestring);
        r->n_stops = 1;
        return 0;
    }
    if (!cJSON_IsArray(j))
        return fail(c, "stop", "'stop' must be a string or an array of strings");
    if (cJSON_GetArraySize(j) > DL_MAX_STOPS)
        return fail(c, "stop", "'stop' may hold at most %d strings", DL_MAX_STOPS);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        if (!cJSON_IsString(e) || !e->valuestring[0] ||
            strlen(e->valuestring) > DL_MAX_STOP_LEN)
            return fail(c, "stop", "'stop' strings must be 1 to %d bytes", DL_MAX_STOP_LEN);
        snprintf(r->stops[r->n_stops++], sizeof r->stops[0], "%s", e->valuestring);
    }
    return 0;
}

static int parse_logit_bias(pctx *c, dl_request *r, const cJSON *j)
{
    if (!cJSON_IsObject(j))
        return fail(c, "logit_bias", "'logit_bias' must be an object of token id -> bias");
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        if (r->sampling.n_logit_bias >= DL_MAX_LOGIT_BIAS)
            return fail(c, "logit_bias", "'logit_bias' may hold at most %d entries",
                        DL_MAX_LOGIT_BIAS);
        char *end;
        errno = 0;
        long tok = strtol(e->string, &end, 10);
        if (end == e->string || *end || errno || tok < 0 || tok > INT32_MAX)
            return fail(c, "logit_bias", "'logit_bias' key '%.32s' is not a token id", e->string);
        double bias;
        if (get_num(c, e, "logit_bias", -100, 100, &bias))
            return -EINVAL;
        dl_logit_bias *lb = &r->sampling.logit_bias[r->sampling.n_logit_bias++];
        lb->token = (int32_t)tok;
        lb->bias = (float)bias;
    }
    return 0;
}

static int parse_delta(pctx *c, dl_request *r, const cJSON *j)
{
    if (!cJSON_IsObject(j))
        return fail(c, "delta", "'delta' must be an object");
    dl_delta_params *d = &r->delta;
    const cJSON *v;
    double x;
    int64_t i;
    if ((v = opt(j, "enabled")) && get_bool(c, v, "delta.enabled", &d->enabled))
        return -EINVAL;
    if ((v = opt(j, "theta"))) {
        if (get_num(c, v, "delta.theta", 0, 1e6, &x))
            return -EINVAL;
        d->theta = (float)x;
    }
    if ((v = opt(j, "sparsity_target"))) {
        if (opt(j, "theta"))
            return fail(c, "delta.sparsity_target",
                        "give delta.theta or delta.sparsity_target, not both");
        if (get_num(c, v, "delta.sparsity_target", -1, 0.999999, &x))
            return -EINVAL;
        d->sparsity_target = (float)x;
    } else if (opt(j, "theta")) {
        d->sparsity_target = -1; /* an explicit threshold replaces the default target */
    }
    if ((v = opt(j, "window"))) {
        if (get_int(c, v, "delta.window", 1, 1 << 20, &i))
            return -EINVAL;
        d->window = (int32_t)i;
    }
    if ((v = opt(j, "prefill_window"))) {
        if (get_int(c, v, "delta.prefill_window", 0, 1 << 20, &i))
            return -EINVAL;
        d->prefill_window = (int32_t)i;
    }
    if ((v = opt(j, "layer_offsets"))) {
        /* null or [] clears the daemon's default profile */
        if (!cJSON_IsNull(v) && !cJSON_IsArray(v))
            return fail(c, "delta.layer_offsets",
                        "'delta.layer_offsets' must be an array of numbers in [-1, 1]");
        int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0;
        if (n > DL_DELTA_MAX_LAYER_OFFSETS)
            return fail(c, "delta.layer_offsets", "'delta.layer_offsets' has more than %d values",
                        DL_DELTA_MAX_LAYER_OFFSETS);
        int k = 0;
        for (const cJSON *e = cJSON_IsArray(v) ? v->child : NULL; e; e = e->next, k++) {
            if (get_num(c, e, "delta.layer_offsets", -1, 1, &x))
                return -EINVAL;
            d->layer_offsets[k] = (float)x;
        }
        d->n_layer_offsets = n;
    }
    if ((v = opt(j, "sink"))) {
        if (get_int(c, v, "delta.sink", 0, 1 << 20, &i))
            return -EINVAL;
        d->sink = (int32_t)i;
    }
    if ((v = opt(j, "stages"))) {
        const char *s = cJSON_IsString(v) ? v->valuestring : "";
        if (!strcmp(s, "prefill")) d->stages = DL_STAGE_PREFILL;
        else if (!strcmp(s, "decode")) d->stages = DL_STAGE_DECODE;
        else if (!strcmp(s, "both")) d->stages = DL_STAGE_BOTH;
        else return fail(c, "delta.stages", "'delta.stages' must be prefill, decode or both");
    }
    if ((v = opt(j, "prefill_mode"))) {
        const char *s = cJSON_IsString(v) ? v->valuestring : "";
        if (!strcmp(s, "sliding")) d->prefill_mode = DL_PREFILL_SLIDING;
        else if (!strcmp(s, "block")) d->prefill_mode = DL_PREFILL_BLOCK;
        else return fail(c, "delta.prefill_mode", "'delta.prefill_mode' must be sliding or block");
    }
    if ((v = opt(j, "block_frac"))) {
        if (get_num(c, v, "delta.block_frac", 0, 1, &x))
            return -EINVAL;
        d->block_frac = (float)x;
    }
    if ((v = opt(j, "lag"))) {
        if (get_num(c, v, "delta.lag", 0, 1, &x))
            return -EINVAL;
        d->lag = (float)x;
    }
    char e2[256];
    if (dl_delta_params_check(d, e2, sizeof e2))
        return fail(c, "delta", "delta: %s", e2);
    return 0;
}

static int valid_session_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DL_SESSION_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.' || ch == ':'))
            return 0;
    }
    return 1;
}

static int parse_fields(pctx *c, dl_request *r, const cJSON *root)
{
    const cJSON *v;
    int64_t i;
    double x;
    if (!cJSON_IsObject(root))
        return fail(c, "", "the request body must be a JSON object");
    if ((v = opt(root, "model"))) {
        if (!cJSON_IsString(v))
            return fail(c, "model", "'model' must be a string");
        snprintf(r->model, sizeof r->model, "%s", v->valuestring);
    }
    if (r->kind == DL_REQ_COMPLETION) {
        if (parse_prompt(c, r, cJSON_GetObjectItemCaseSensitive(root, "prompt")))
            return -EINVAL;
    } else if (parse_messages(c, r, cJSON_GetObjectItemCaseSensitive(root, "messages"))) {
        return -EINVAL;
    }
    const char *mt = r->kind == DL_REQ_CHAT && opt(root, "max_completion_tokens")
                         ? "max_completion_tokens" : "max_tokens";
    if ((v = opt(root, mt))) {
        if (get_int(c, v, mt, 0, 1 << 24, &i))
            return -EINVAL;
        r->max_tokens = (int)i;
    }
    if ((v = opt(root, "temperature"))) {
        if (get_num(c, v, "temperature", 0, 2, &x))
            return -EINVAL;
        r->sampling.temperature = (float)x;
    }
    if ((v = opt(root, "top_p"))) {
        if (get_num(c, v, "top_p", 0, 1, &x))
            return -EINVAL;
        if (x <= 0)
            return fail(c, "top_p", "'top_p' must be greater than 0");
        r->sampling.top_p = (float)x;
    }
    if ((v = opt(root, "n"))) {
        if (get_int(c, v, "n", 1, DL_MAX_N, &i))
            return -EINVAL;
        r->n = (int)i;
    }
    if ((v = opt(root, "stream")) && get_bool(c, v, "stream", &r->stream))
        return -EINVAL;
    if ((v = opt(root, "stream_options"))) {
        if (!cJSON_IsObject(v))
            return fail(c, "stream_options", "'stream_options' must be an object");
        const cJSON *iu = opt(v, "include_usage");
        if (iu && get_bool(c, iu, "stream_options.include_usage", &r->include_usage))
            return -EINVAL;
    }
    if ((v = opt(root, "stop")) && parse_stop(c, r, v))
        return -EINVAL;
    if ((v = opt(root, "seed"))) {
        if (get_int(c, v, "seed", -9007199254740991.0, 9007199254740991.0, &i))
            return -EINVAL;
        r->sampling.seed = (uint64_t)i;
        r->has_seed = 1;
    }
    if ((v = opt(root, "presence_penalty"))) {
        if (get_num(c, v, "presence_penalty", -2, 2, &x))
            return -EINVAL;
        r->sampling.presence_penalty = (float)x;
    }
    if ((v = opt(root, "frequency_penalty"))) {
        if (get_num(c, v, "frequency_penalty", -2, 2, &x))
            return -EINVAL;
        r->sampling.frequency_penalty = (float)x;
    }
    if ((v = opt(root, "logit_bias")) && parse_logit_bias(c, r, v))
        return -EINVAL;
    if (r->kind == DL_REQ_CHAT) {
        if ((v = opt(root, "logprobs")) && get_bool(c, v, "logprobs", &r->logprobs))
            return -EINVAL;
        if ((v = opt(root, "top_logprobs"))) {
            if (get_int(c, v, "top_logprobs", 0, DL_MAX_TOP_LOGPROBS, &i))
                return -EINVAL;
            if (!r->logprobs)
                return fail(c, "top_logprobs", "'top_logprobs' requires 'logprobs': true");
            r->top_logprobs = (int)i;
        }
    } else {
        if ((v = opt(root, "logprobs"))) {
            if (get_int(c, v, "logprobs", 0, DL_MAX_TOP_LOGPROBS, &i))
                return -EINVAL;
            r->logprobs = 1;
            r->top_logprobs = (int)i;
        }
        if ((v = opt(root, "echo")) && get_bool(c, v, "echo", &r->echo))
            return -EINVAL;
    }
    if ((v = opt(root, "user"))) {
        if (!cJSON_IsString(v))
            return fail(c, "user", "'user' must be a string");
        snprintf(r->user, sizeof r->user, "%s", v->valuestring);
    }
    if ((v = opt(root, "top_k"))) {
        if (get_int(c, v, "top_k", 0, 1 << 24, &i))
            return -EINVAL;
        r->sampling.top_k = (int32_t)i;
    }
    if ((v = opt(root, "min_p"))) {
        if (get_num(c, v, "min_p", 0, 1, &x))
            return -EINVAL;
        r->sampling.min_p = (float)x;
    }
    if ((v = opt(root, "repeat_penalty"))) {
        if (get_num(c, v, "repeat_penalty", 0, 10, &x))
            return -EINVAL;
        if (x <= 0)
            return fail(c, "repeat_penalty", "'repeat_penalty' must be greater than 0");
        r->sampling.repeat_penalty = (float)x;
    }
    if ((v = opt(root, "session_id"))) {
        if (!cJSON_IsString(v) || !valid_session_id(v->valuestring))
            return fail(c, "session_id", "'session_id' must be 1 to %d characters of "
                        "[A-Za-z0-9._:-]", DL_SESSION_ID_LEN);
        snprintf(r->session_id, sizeof r->session_id, "%s", v->valuestring);
    }
    if ((v = opt(root, "delta")) && parse_delta(c, r, v))
        return -EINVAL;
    /* Prompt log-probs (echo + logprobs) are read from the prompt's own positions, which the
     * short default prefill window serves worse than generation (README: +2.6% perplexity
     * when every position is scored, against +0.4% with the full window); such a request
     * gets the full window unless it sets delta.prefill_window itself. */
    if (r->echo && r->logprobs && !(v && cJSON_IsObject(v) && opt(v, "prefill_window")))
        r->delta.prefill_window = 0;
    if ((v = opt(root, "timeout"))) {
        if (get_num(c, v, "timeout", 0.001, 86400, &x))
            return -EINVAL;
        r->timeout = x;
    }
    return 0;
}

int dl_request_parse(dl_request *r, int kind, const char *body, size_t len,
                     const dl_delta_params *defaults, char *err, size_t errlen, char *param,
                     size_t paramlen)
{
    pctx c = {err, errlen, param, paramlen};
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = kind == DL_REQ_COMPLETION ? 16 : -1; /* OpenAI's defaults */
    r->n = 1;
    dl_sampler_params_default(&r->sampling);
    r->delta = *defaults;
    if (param && paramlen)
        param[0] = 0;
    if (!dl_utf8_valid(body, len))
        return fail(&c, "", "the request body is not valid UTF-8");
    if (memchr(body, 0, len) || body[len] != 0)
        return fail(&c, "", "the request body is not valid JSON (NUL byte)");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(body, &end, 1);
    if (!root) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return fail(&c, "", "the request body is not valid JSON (near byte %zu)", at);
    }
    int rc = parse_fields(&c, r, root);
    cJSON_Delete(root);
    return rc;
}

void dl_request_free(dl_request *r)
{
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].tokens);
    }
    if (r->messages)
        for (int i = 0; i < r->n_messages; i++)
            free(r->messages[i].content);
    free(r->messages);
    memset(r, 0, sizeof *r);
}
