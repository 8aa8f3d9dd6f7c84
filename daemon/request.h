/* request.h — an OpenAI completions / chat-completions request body, parsed and checked.
 *
 * dl_request_parse() turns the JSON body into a dl_request: every field is type- and
 * range-checked, and a failure names the field (OpenAI's `param`) in the error. Unknown
 * fields are ignored as OpenAI does. Checks that need the model (token ids inside the
 * vocabulary, prompt length against the context) are done by the caller afterwards.
 */
#ifndef DL_REQUEST_H
#define DL_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "delta.h"
#include "sampler.h"

#define DL_MAX_STOPS 4
#define DL_MAX_STOP_LEN 256
#define DL_MAX_N 16          /* choices per request */
#define DL_MAX_PROMPTS 16    /* prompts in one completions request */
#define DL_SESSION_ID_LEN 128

enum dl_req_kind { DL_REQ_COMPLETION = 0, DL_REQ_CHAT = 1 };

typedef struct dl_chat_message {
    char role[16];   /* system | user | assistant | developer | tool */
    char *content;   /* text parts joined; "" when null */
} dl_chat_message;

typedef struct dl_prompt {
    char *text;       /* UTF-8, or NULL when given as token ids */
    int32_t *tokens;  /* token ids when given so (not range-checked here) */
    int n_tokens;
} dl_prompt;

typedef struct dl_request {
    int kind;                         /* enum dl_req_kind */
    char model[256];                  /* as sent, "" when absent */
    int n_prompts;                    /* completions: prompts given */
    dl_prompt prompts[DL_MAX_PROMPTS];
    int n_messages;                   /* chat */
    dl_chat_message *messages;
    int max_tokens;                   /* -1: until the context is full */
    int n;                            /* choices per prompt */
    int stream;
    int include_usage;                /* stream_options.include_usage */
    int n_stops;
    char stops[DL_MAX_STOPS][DL_MAX_STOP_LEN + 1];
    int logprobs;                     /* chat: bool; completions: number of top entries + 1 */
    int top_logprobs;                 /* chat: top entries per token; completions: logprobs */
    int echo;                         /* completions: prompt in text and log-probs */
    int has_seed;
    dl_sampler_params sampling;       /* temperature, top_p/k, min_p, penalties, bias, seed */
    char user[256];
    char session_id[DL_SESSION_ID_LEN + 1]; /* "" when none */
    dl_delta_params delta;            /* defaults overridden by the `delta` object */
    double timeout;                   /* seconds, 0 = the daemon's default */
} dl_request;

/* Parse body[0..len); body[len] must be 0 (a NUL inside the body is refused). defaults: the daemon's delta knobs.
 * Returns 0, or -EINVAL with a message in err and the offending field in param ("" when
 * the body as a whole is wrong). The request must be freed with dl_request_free either way. */
int dl_request_parse(dl_request *r, int kind, const char *body, size_t len,
                     const dl_delta_params *defaults, char *err, size_t errlen, char *param,
                     size_t paramlen);
void dl_request_free(dl_request *r);

#endif
