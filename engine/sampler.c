/* sampler.c — logits -> next token, in llama.cpp's chain order (see sampler.h).
 *
 * The candidate set is an index array into the (penalised) logits. The only ordering any
 * step needs is "the m best candidates, best first", so the array keeps a sorted prefix that
 * grows on demand: quickselect brings the next best to the front, then only that part is
 * sorted. Top-k = 40 over a 128k vocabulary therefore costs one linear pass plus a sort of
 * 40 entries, not a full sort. Candidates are ordered by (logit descending, id ascending),
 * a total order, so every result — ties included — is deterministic.
 *
 * Penalty history: a ring of the last `penalty_last_n` accepted tokens plus, per token, its
 * count in the window and its slot in a list of the distinct tokens present. Applying the
 * penalties walks that list (at most last_n entries), never the whole vocabulary.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct dl_sampler {
    dl_sampler_params p;
    int32_t n_vocab;
    uint64_t rng[4]; /* xoshiro256** state */

    int32_t *idx;    /* [n_vocab] candidate ids; idx[0..n_sorted) best first */
    float *prob;     /* [n_vocab] scratch: unnormalised probabilities of the candidates */

    int32_t *count;    /* [n_vocab] occurrences in the penalty window */
    int32_t *slot;     /* [n_vocab] position in `distinct` when count > 0 */
    int32_t *distinct; /* [n_vocab] tokens with count > 0 */
    int32_t n_distinct;
    int32_t *ring;     /* [ring_cap] last accepted tokens (NULL when the window is "all") */
    int32_t ring_cap;
    int32_t ring_len;  /* valid entries */
    int32_t ring_head; /* next slot to write */
};

void dl_sampler_params_default(dl_sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->penalty_last_n = 64;
    p->seed = 0;
}

/* ---- RNG: splitmix64 seeds xoshiro256**; integer-only, so identical on every platform. */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&seed);
}

/* ---- construction ---- */

dl_sampler *dl_sampler_create(const dl_sampler_params *p, int32_t n_vocab)
{
    if (!p || n_vocab <= 0)
        return NULL;
    dl_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->p = *p;
    if (s->p.n_logit_bias < 0)
        s->p.n_logit_bias = 0;
    if (s->p.n_logit_bias > DL_MAX_LOGIT_BIAS)
        s->p.n_logit_bias = DL_MAX_LOGIT_BIAS;
    s->n_vocab = n_vocab;
    size_t nv = (size_t)n_vocab;
    s->idx = malloc(nv * sizeof *s->idx);
    s->prob = malloc(nv * sizeof *s->prob);
    s->count = calloc(nv, sizeof *s->count);
    s->slot = malloc(nv * sizeof *s->slot);
    s->distinct = malloc(nv * sizeof *s->distinct);
    if (!s->idx || !s->prob || !s->count || !s->slot || !s->distinct)
        goto fail;
    if (s->p.penalty_last_n > 0) {
        s->ring_cap = s->p.penalty_last_n;
        s->ring = malloc((size_t)s->ring_cap * sizeof *s->ring);
        if (!s->ring)
            goto fail;
    }
    rng_seed(s->rng, s->p.seed);
    return s;
fail:
    dl_sampler_free(s);
    return NULL;
}

void dl_sampler_free(dl_sampler *s)
{
    if (!s)
        return;
    free(s->idx);
    free(s->prob);
    free(s->count);
    free(s->slot);
    free(s->distinct);
    free(s->ring);
    free(s);
}

void dl_sampler_reset(dl_sampler *s, uint64_t seed)
{
    for (int32_t i = 0; i < s->n_distinct; i++)
        s->count[s->distinct[i]] = 0;
    s->n_distinct = 0;
    s->ring_len = 0;
    s->ring_head = 0;
    s->p.seed = seed;
    rng_seed(s->rng, seed);
}

/* ---- penalty history ---- */

static void hist_add(dl_sampler *s, int32_t t)
{
    if (s->count[t]++ == 0) {
        s->slot[t] = s->n_distinct;
        s->distinct[s->n_distinct++] = t;
    }
}

static void hist_remove(dl_sampler *s, int32_t t)
{
    if (--s->count[t] == 0) {
        /* swap-remove from the distinct list */
        int32_t last = s->distinct[--s->n_distinct];
        s->distinct[s->slot[t]] = last;
        s->slot[last] = s->slot[t];
    }
}

void dl_sampler_accept(dl_sampler *s, int32_t token)
{
    if (token < 0 || token >= s->n_vocab || s->p.penalty_last_n == 0)
        return;
    if (!s->ring) { /* window "all": counts only grow */
        hist_add(s, token);
        return;
    }
    if (s->ring_len == s->ring_cap)
        hist_remove(s, s->ring[s->ring_head]);
    else
        s->ring_len++;
    s->ring[s->ring_head] = token;
    s->ring_head = (s->ring_head + 1) % s->ring_cap;
    hist_add(s, token);
}

static void apply_bias_and_penalties(const dl_sampler *s, float *logits)
{
    const dl_sampler_params *p = &s->p;
    for (int i = 0; i < p->n_logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        if (t >= 0 && t < s->n_vocab)
            logits[t] += p->logit_bias[i].bias;
    }
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f)
        return;
    for (int32_t i = 0; i < s->n_distinct; i++) {
        int32_t t = s->distinct[i];
        float l = logits[t];
        /* llama.cpp: shrink towards zero — a negative logit is multiplied, a positive one
         * divided — so the penalty always makes the token less likely. */
        if (p->repeat_penalty != 1.0f)
            l = l <= 0.0f ? l * p->repeat_penalty : l / p->repeat_penalty;
        /* OpenAI: frequency scales with the count, presence is a flat one-off. */
        l -= (float)s->count[t] * p->frequency_penalty + p->presence_penalty;
        logits[t] = l;
    }
}

/* ---- ordering helpers (no allocation: in-place quickselect / quicksort on idx) ---- */

/* a ranks before b: larger logit, then smaller id. */
static int before(const float *l, int32_t a, int32_t b)
{
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static void swap_i32(int32_t *a, int32_t *b)
{
    int32_t t = *a;
    *a = *b;
    *b = t;
}

/* Partition idx[lo..hi] (inclusive, hi - lo >= 2) around a median-of-three pivot; returns
 * the pivot's final position. Elements before it rank before it, elements after do not. */
static int32_t partition(const float *l, int32_t *idx, int32_t lo, int32_t hi)
{
    int32_t mid = lo + (hi - lo) / 2;
    if (before(l, idx[mid], idx[lo]))
        swap_i32(&idx[mid], &idx[lo]);
    if (before(l, idx[hi], idx[lo]))
        swap_i32(&idx[hi], &idx[lo]);
    if (before(l, idx[hi], idx[mid]))
        swap_i32(&idx[hi], &idx[mid]);
    /* now idx[lo] <= idx[mid] <= idx[hi] in rank order; use mid as pivot, parked at hi-1 */
    swap_i32(&idx[mid], &idx[hi - 1]);
    int32_t pv = idx[hi - 1];
    int32_t i = lo, j = hi - 1;
    for (;;) {
        while (before(l, idx[++i], pv)) {
        }
        while (before(l, pv, idx[--j])) {
        }
        if (i >= j)
            break;
        swap_i32(&idx[i], &idx[j]);
    }
    swap_i32(&idx[i], &idx[hi - 1]);
    return i;
}

static void insertion_sort(const float *l, int32_t *idx, int32_t lo, int32_t hi)
{
    for (int32_t i = lo + 1; i <= hi; i++) {
        int32_t v = idx[i], j = i - 1;
        while (j >= lo && before(l, v, idx[j])) {
            idx[j + 1] = idx[j];
            j--;
        }
        idx[j + 1] = v;
    }
}

static void sort_range(const float *l, int32_t *idx, int32_t lo, int32_t hi)
{
    while (hi - lo > 16) {
        int32_t p = partition(l, idx, lo, hi);
        /* recurse into the smaller side so the stack stays O(log n) */
        if (p - lo < hi - p) {
            sort_range(l, idx, lo, p - 1);
            lo = p + 1;
        } else {
            sort_range(l, idx, p + 1, hi);
            hi = p - 1;
        }
    }
    insertion_sort(l, idx, lo, hi);
}

/* Rearrange idx[lo..hi] so that idx[lo..k) are the (k - lo) best, in any order. */
static void select_best(const float *l, int32_t *idx, int32_t lo, int32_t hi, int32_t k)
{
    while (hi - lo > 16) {
        int32_t p = partition(l, idx, lo, hi);
        if (p == k)
            return;
        if (p < k)
            lo = p + 1;
        else
            hi = p - 1;
    }
    insertion_sort(l, idx, lo, hi);
}

/* Make idx[0..m) the m best of the n candidates, sorted best first. */
static void ensure_sorted(const float *l, int32_t *idx, int32_t n, int32_t *n_sorted, int32_t m)
{
    if (m > n)
        m = n;
    if (m <= *n_sorted)
        return;
    if (m == *n_sorted + 1) { /* one more (greedy, the common case): a linear scan */
        int32_t b = *n_sorted;
        for (int32_t i = b + 1; i < n; i++)
            if (before(l, idx[i], idx[b]))
                b = i;
        swap_i32(&idx[*n_sorted], &idx[b]);
        *n_sorted = m;
        return;
    }
    if (m < n)
        select_best(l, idx, *n_sorted, n - 1, m);
    sort_range(l, idx, *n_sorted, m - 1);
    *n_sorted = m;
}

/* ---- sampling ---- */

static int32_t argmax(const float *l, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best] || isnan(l[best]))
            best = i;
    return best;
}

float dl_logprob_of(const float *logits, int32_t n_vocab, int32_t token)
{
    if (token < 0 || token >= n_vocab || !(logits[token] > -INFINITY))
        return -INFINITY;
    float mx = logits[argmax(logits, n_vocab)];
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        if (logits[i] > -INFINITY)
            sum += exp((double)logits[i] - mx);
    return (float)((double)logits[token] - mx - log(sum));
}

int32_t dl_sampler_sample(dl_sampler *s, float *logits, dl_sample_logprobs *lp)
{
    const dl_sampler_params *p = &s->p;
    int32_t *idx = s->idx;
    apply_bias_and_penalties(s, logits);

    /* Candidates: every token with a finite logit (a -inf bias bans; NaN never wins). */
    int32_t n = 0;
    float mx = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        if (logits[i] > -INFINITY && logits[i] < INFINITY) {
            idx[n++] = i;
            if (logits[i] > mx)
                mx = logits[i];
        }
    }
    if (n == 0) { /* nothing is possible: report token 0 rather than fail mid-stream */
        if (lp) {
            lp->n_top = 0;
            lp->chosen.token = 0;
            lp->chosen.logprob = -INFINITY;
        }
        return 0;
    }
    int32_t n_sorted = 0;

    /* log-softmax normaliser of the penalised distribution, for the reported logprobs */
    float lse = 0.0f;
    if (lp) {
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += exp((double)logits[idx[i]] - mx);
        lse = (float)(mx + log(sum));
        int nt = lp->n_top;
        if (nt < 0)
            nt = 0;
        if (nt > DL_MAX_TOP_LOGPROBS)
            nt = DL_MAX_TOP_LOGPROBS;
        if (nt > n)
            nt = n;
        ensure_sorted(logits, idx, n, &n_sorted, nt);
        for (int i = 0; i < nt; i++) {
            lp->top[i].token = idx[i];
            lp->top[i].logprob = logits[idx[i]] - lse;
        }
        lp->n_top = nt;
    }

    int32_t chosen;
    if (p->temperature <= 0.0f) {
        ensure_sorted(logits, idx, n, &n_sorted, 1);
        chosen = idx[0];
        goto done;
    }

    /* top-k */
    if (p->top_k > 0 && p->top_k < n) {
        ensure_sorted(logits, idx, n, &n_sorted, p->top_k);
        n = p->top_k;
    }

    /* top-p: the shortest best-first prefix whose probability (at temperature 1) reaches
     * top_p. The sorted prefix is grown geometrically, so a peaked distribution only ever
     * sorts a few dozen entries. */
    if (p->top_p < 1.0f && n > 1) {
        double total = 0.0;
        for (int32_t i = 0; i < n; i++)
            total += exp((double)logits[idx[i]] - mx);
        double target = (double)p->top_p * total, cum = 0.0;
        int32_t keep = n, i = 0, want = 64;
        while (keep == n && i < n) {
            ensure_sorted(logits, idx, n, &n_sorted, want);
            for (; i < n_sorted; i++) {
                cum += exp((double)logits[idx[i]] - mx);
                if (cum >= target) {
                    keep = i + 1;
                    break;
                }
            }
            want = want > n / 4 ? n : want * 4;
        }
        n = keep;
    }

    /* min-p: drop tokens less likely than min_p times the most likely one; in logit space
     * that is a fixed threshold, so no ordering is needed (order is preserved). */
    if (p->min_p > 0.0f && n > 1) {
        float best = -INFINITY;
        for (int32_t i = 0; i < n; i++)
            if (logits[idx[i]] > best)
                best = logits[idx[i]];
        float thr = best + logf(p->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (logits[idx[i]] >= thr)
                idx[m++] = idx[i];
        n = m; /* the best token always passes, so n >= 1 */
    }

    /* temperature + softmax + draw */
    {
        float best = -INFINITY;
        for (int32_t i = 0; i < n; i++)
            if (logits[idx[i]] > best)
                best = logits[idx[i]];
        double total = 0.0;
        for (int32_t i = 0; i < n; i++) {
            s->prob[i] = (float)exp(((double)logits[idx[i]] - best) / p->temperature);
            total += s->prob[i];
        }
        double u = rng_uniform(s->rng) * total, cum = 0.0;
        chosen = idx[n - 1]; /* rounding can leave u just past the last cumulative sum */
        for (int32_t i = 0; i < n; i++) {
            cum += s->prob[i];
            if (u < cum) {
                chosen = idx[i];
                break;
            }
        }
    }

done:
    if (lp) {
        lp->chosen.token = chosen;
        lp->chosen.logprob = logits[chosen] - lse;
    }
    return chosen;
}

/* ---- stop strings ---- */

int dl_find_stop(const char *text, size_t len, const char *const *stops, int n_stops,
                 size_t *partial)
{
    size_t best = (size_t)-1, part = 0;
    for (int i = 0; i < n_stops; i++) {
        const char *st = stops[i];
        size_t sl = st ? strlen(st) : 0;
        if (sl == 0)
            continue;
        const char *hit = memmem(text, len, st, sl);
        if (hit && (size_t)(hit - text) < best)
            best = (size_t)(hit - text);
        /* the longest tail of text that could still grow into this stop string */
        for (size_t k = sl < len ? sl : len; k > part; k--) {
            if (memcmp(text + len - k, st, k) == 0) {
                part = k;
                break;
            }
        }
    }
    if (partial)
        *partial = part;
    return best == (size_t)-1 ? -1 : (int)best;
}
