/* sampler.h — turning logits into the next token.
 *
 * The chain, in llama.cpp's order: logit bias -> repetition / presence / frequency
 * penalties over the recent window -> (greedy if temperature <= 0) -> top-k -> top-p ->
 * min-p -> temperature -> softmax -> draw with the sequence's own RNG. Log-probabilities
 * are reported from the distribution after penalties and bias but before truncation and
 * temperature (what OpenAI's API reports). All buffers are allocated at create time; a
 * sampling step does not allocate.
 */
#ifndef DL_SAMPLER_H
#define DL_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#define DL_MAX_LOGIT_BIAS 300
#define DL_MAX_TOP_LOGPROBS 20

typedef struct dl_logit_bias { int32_t token; float bias; } dl_logit_bias;

typedef struct dl_sampler_params {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repeat_penalty;     /* 1: off (llama.cpp's divide/multiply rule) */
    float presence_penalty;   /* 0: off (OpenAI) */
    float frequency_penalty;  /* 0: off (OpenAI) */
    int32_t penalty_last_n;   /* window of recent tokens the penalties look at; -1 = all */
    uint64_t seed;            /* same seed + same logits => same tokens */
    int n_logit_bias;
    dl_logit_bias logit_bias[DL_MAX_LOGIT_BIAS];
} dl_sampler_params;

/* Defaults: temperature 1, top_k 0, top_p 1, min_p 0, penalties off, last_n 64, seed 0. */
void dl_sampler_params_default(dl_sampler_params *p);

typedef struct dl_sampler dl_sampler;

dl_sampler *dl_sampler_create(const dl_sampler_params *p, int32_t n_vocab);
void dl_sampler_free(dl_sampler *s);
/* Forget the token history and reseed. */
void dl_sampler_reset(dl_sampler *s, uint64_t seed);
/* Record a token in the penalty history (prompt tokens too, as llama.cpp does). */
void dl_sampler_accept(dl_sampler *s, int32_t token);

typedef struct dl_token_logprob { int32_t token; float logprob; } dl_token_logprob;

/* Choose the next token from logits[n_vocab] (the array may be modified). When lp is not
 * NULL, lp->chosen gets the chosen token's log-probability and lp->top the n_top most
 * likely (n_top <= DL_MAX_TOP_LOGPROBS). Does not call accept. */
typedef struct dl_sample_logprobs {
    int n_top;
    dl_token_logprob chosen;
    dl_token_logprob top[DL_MAX_TOP_LOGPROBS];
} dl_sample_logprobs;

int32_t dl_sampler_sample(dl_sampler *s, float *logits, dl_sample_logprobs *lp);

/* log-softmax helper: the log-probability of `token` under logits (used for echo / eval). */
float dl_logprob_of(const float *logits, int32_t n_vocab, int32_t token);

/* Stop strings: finds the earliest occurrence of any stop string in text[0..len).
 * Returns its offset, or -1. *partial is set to the length of the longest suffix of text
 * that is a prefix of some stop string (text that must be held back while streaming). */
int dl_find_stop(const char *text, size_t len, const char *const *stops, int n_stops,
                 size_t *partial);

#endif
