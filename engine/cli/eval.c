/* eval.c — `deltallm eval`: what DeltaLLM costs in accuracy, measured dense vs delta on
 * the same tokens in the same run.
 *
 *   perplexity (default): windows of --ctx tokens (BOS + text) every --stride tokens; the
 *     first (1 - --decode-frac) of each window is prefilled, the rest decoded one token at
 *     a time, so both stages are exercised. A dense and a delta sequence step together (one
 *     forward pass, two items); every scored position contributes its negative log-
 *     likelihood under both, KL(dense || delta) of the next-token distributions and whether
 *     their top-1 tokens agree.
 *   --task hellaswag|piqa|obqa|lambada: multiple choice scored by the sum of the endings'
 *     log-probabilities (LAMBADA: greedy last-word accuracy), dense and delta.
 *   --sweep: the perplexity run over a grid of theta (or sparsity targets) x windows x
 *     prefill windows x lags.
 *   --calibrate: per-layer target offsets (delta.layer_offsets) for a sparsity target — see
 *     calibrate() below.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "model.h"
#include "tokenizer.h"

#define MAX_GRID 16
#define CHUNK 32 /* prefill tokens per forward call (bounds the logits buffer) */

typedef struct eval_opts {
    dl_run_opts run;
    const char *file;
    const char *labels;
    const char *task;
    int ctx;
    int stride;
    double decode_frac;
    int max_windows;
    int skip_windows;       /* windows left out at the start of the file */
    int calibrate;
    float calib_step;       /* offsets tried per layer: +-step, +-2 step */
    int calib_ppl;          /* calibrate on perplexity instead of KL(dense || delta) */
    int limit;
    int json;
    int sweep;
    int n_grid;
    float grid[MAX_GRID];   /* thetas, or targets when grid_targets */
    int grid_targets;
    int n_windows;
    int windows[MAX_GRID];
    int n_lags;
    float lags[MAX_GRID];   /* delta.lag values (default: the run's) */
    int n_pws;
    int pws[MAX_GRID];      /* delta.prefill_window values (default: the run's) */
} eval_opts;

typedef struct eval_result {
    double nll_dense, nll_delta, kl, n_scored, top1;
    dl_delta_stage_stats st[2];
    dl_delta_stage_stats *lst; /* [n_layer][2] per layer, prefill / decode */
    double *kch;               /* [n_layer][2] score change sums (dl_delta_cache_score_change) */
    int n_layer;
    double k_bytes, k_dense_bytes, v_bytes;
    int n_windows;
} eval_result;

static void result_free(eval_result *r)
{
    free(r->lst);
    free(r->kch);
}

typedef struct evaluator {
    const eval_opts *o;
    dl_model *m;
    const dl_tokenizer *tok;
    dl_ctx *c;
    int V;
    float *lg_dense, *lg_delta; /* CHUNK x V each */
    char err[512];
} evaluator;

/* ---- numerics ----------------------------------------------------------------------- */

/* log-softmax in place; returns nothing, lp[i] = log p(i). */
static void log_softmax(float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++)
        s += exp((double)(x[i] - mx));
    float lse = mx + (float)log(s);
    for (int i = 0; i < n; i++)
        x[i] -= lse;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* Score one position: both rows are logits; target is the true next token. */
static void score(eval_result *r, float *d, float *q, int V, int32_t target)
{
    log_softmax(d, V);
    log_softmax(q, V);
    double kl = 0;
    for (int i = 0; i < V; i++)
        kl += exp((double)d[i]) * ((double)d[i] - (double)q[i]);
    r->kl += kl > 0 ? kl : 0;
    r->nll_dense -= d[target];
    r->nll_delta -= q[target];
    r->top1 += argmax(d, V) == argmax(q, V);
    r->n_scored += 1;
}

/* ---- perplexity --------------------------------------------------------------------- */

static int32_t *tokenize_all(evaluator *e, const char *text, size_t len, int bos, int *n)
{
    int need = dl_tokenize(e->tok, text, len, bos, 0, NULL, 0);
    int32_t *ids = need >= 0 ? malloc(((size_t)need + 1) * sizeof *ids) : NULL;
    if (!ids || dl_tokenize(e->tok, text, len, bos, 0, ids, need) != need) {
        free(ids);
        return NULL;
    }
    *n = need;
    return ids;
}

/* Run one window through a dense and a delta sequence side by side. */
static int eval_window(evaluator *e, const dl_delta_params *dp, const int32_t *w, int L,
                       int score_from, eval_result *r)
{
    int rc = -1;
    dl_seq *sd = dl_seq_create(e->m, L, NULL, e->err, sizeof e->err);
    dl_seq *sq = dl_seq_create(e->m, L, dp, e->err, sizeof e->err);
    if (!sd || !sq)
        goto done;
    int split = (int)lround(L * (1.0 - e->o->decode_frac));
    if (split < 1)
        split = 1;
    for (int p = 0; p < L - 1;) {
        int n = p < split ? (split - p < CHUNK ? split - p : CHUNK) : 1;
        if (p + n > L - 1)
            n = L - 1 - p;
        dl_batch_item it[2] = {{sd, w + p, n, e->lg_dense, 1}, {sq, w + p, n, e->lg_delta, 1}};
        if (dl_forward(e->c, it, 2, e->err, sizeof e->err))
            goto done;
        for (int j = 0; j < n; j++)
            if (p + j >= score_from)
                score(r, e->lg_dense + (size_t)j * e->V, e->lg_delta + (size_t)j * e->V, e->V,
                      w[p + j + 1]);
        p += n;
    }
    const dl_delta_stats *ds = dl_seq_delta_stats(sq);
    if (ds) {
        dl_delta_stats_add(&r->st[0], &ds->stage[0]);
        dl_delta_stats_add(&r->st[1], &ds->stage[1]);
        for (int l = 0; l < r->n_layer; l++)
            for (int st = 0; st < 2; st++)
                dl_delta_stats_add(&r->lst[2 * l + st], &dl_seq_delta_layer_stats(sq, l)[st]);
        for (int l = 0; l < r->n_layer; l++) {
            double step, energy;
            if (dl_delta_cache_score_change(dl_seq_delta_cache(sq), l, &step, &energy) == 0) {
                r->kch[2 * l] += step;
                r->kch[2 * l + 1] += energy;
            }
        }
        r->k_bytes += (double)ds->k_cache_bytes;
        r->k_dense_bytes += (double)ds->k_cache_dense_bytes;
        r->v_bytes += (double)ds->v_cache_bytes;
    }
    r->n_windows++;
    rc = 0;
done:
    dl_seq_free(sd);
    dl_seq_free(sq);
    return rc;
}

static int eval_ppl(evaluator *e, const int32_t *toks, int n_tok, const dl_delta_params *dp,
                    eval_result *r)
{
    const eval_opts *o = e->o;
    int body = o->ctx - 1; /* tokens of text per window after BOS */
    memset(r, 0, sizeof *r); /* first: callers free r's arrays whatever happens */
    int32_t *w = malloc((size_t)o->ctx * sizeof *w);
    if (!w)
        return -1;
    r->n_layer = dl_model_hparams(e->m)->n_layer;
    r->lst = calloc((size_t)r->n_layer * 2, sizeof *r->lst);
    r->kch = calloc((size_t)r->n_layer * 2, sizeof *r->kch);
    if (!r->lst || !r->kch) {
        free(w);
        return -1;
    }
    int rc = 0;
    for (int s = 0, k = 0; s + 1 < n_tok && k < o->skip_windows + o->max_windows;
         s += o->stride, k++) {
        int n = n_tok - s < body ? n_tok - s : body;
        if (k < o->skip_windows) {
            if (s + body >= n_tok)
                break;
            continue;
        }
        w[0] = dl_tokenizer_bos(e->tok);
        memcpy(w + 1, toks + s, (size_t)n * sizeof *w);
        /* score what earlier windows did not: everything in the first window, then only the
         * last `stride` predictions */
        int score_from = s == 0 ? 0 : n - o->stride;
        if (score_from < 0)
            score_from = 0;
        if ((rc = eval_window(e, dp, w, n + 1, score_from, r)))
            break;
        if (s + body >= n_tok)
            break;
    }
    free(w);
    return rc;
}

/* Lag-1 autocorrelation of the scores along the keys, 1 - Σ(s_t - s_(t-1))^2 / 2Σ(s_t -
 * mean)^2, of layer l or, for l < 0, of all layers (dl_delta_cache_score_change). */
static double key_similarity(const eval_result *r, int l)
{
    double step = 0, energy = 0;
    for (int i = 0; i < r->n_layer; i++)
        if (l < 0 || i == l) {
            step += r->kch[2 * i];
            energy += r->kch[2 * i + 1];
        }
    return energy > 0 ? 1 - step / energy : 0;
}

static dl_delta_stage_stats both_stages(const eval_result *r)
{
    dl_delta_stage_stats s = r->st[0];
    dl_delta_stats_add(&s, &r->st[1]);
    return s;
}

static void print_ppl(const eval_opts *o, const dl_delta_params *dp, const eval_result *r)
{
    double pd = exp(r->nll_dense / r->n_scored), pq = exp(r->nll_delta / r->n_scored);
    dl_delta_stage_stats all = both_stages(r);
    if (o->json) {
        printf("{\"ctx\":%d,\"stride\":%d,\"windows\":%d,\"scored\":%.0f,\"theta\":%g,"
               "\"sparsity_target\":%g,\"window\":%d,\"prefill_window\":%d,\"sink\":%d,"
               "\"lag\":%g,"
               "\"ppl_dense\":%.6f,\"ppl_delta\":%.6f,\"ppl_rel_change\":%.6f,"
               "\"kl_mean\":%.6g,\"top1_agreement\":%.6f,"
               "\"attention_sparsity\":%.6f,\"element_sparsity\":%.6f,\"qk_work_skipped\":%.6f,"
               "\"prefill_attention_sparsity\":%.6f,\"decode_attention_sparsity\":%.6f,"
               "\"k_cache_bytes\":%.0f,\"k_cache_dense_bytes\":%.0f,\"v_cache_bytes\":%.0f,"
               "\"score_autocorrelation\":%.6f,\"layer_offsets\":[",
               o->ctx, o->stride, r->n_windows, r->n_scored, dp->theta, dp->sparsity_target,
               dp->window, dp->prefill_window, dp->sink, dp->lag, pd, pq, pq / pd - 1, r->kl / r->n_scored,
               r->top1 / r->n_scored, dl_delta_attention_sparsity(&all),
               dl_delta_element_sparsity(&all), dl_delta_qk_skipped(&all),
               dl_delta_attention_sparsity(&r->st[0]), dl_delta_attention_sparsity(&r->st[1]),
               r->k_bytes / r->n_windows, r->k_dense_bytes / r->n_windows,
               r->v_bytes / r->n_windows, key_similarity(r, -1));
        for (int l = 0; l < dp->n_layer_offsets; l++)
            printf("%s%g", l ? "," : "", dp->layer_offsets[l]);
        printf("],\"layers\":[");
        for (int l = 0; l < r->n_layer; l++) {
            const dl_delta_stage_stats *ls = &r->lst[2 * l];
            dl_delta_stage_stats lb = ls[0];
            dl_delta_stats_add(&lb, &ls[1]);
            printf("%s{\"layer\":%d,\"element_sparsity\":%.6f,\"attention_sparsity\":%.6f,"
                   "\"qk_work_skipped\":%.6f,\"prefill_element_sparsity\":%.6f,"
                   "\"prefill_attention_sparsity\":%.6f,\"decode_element_sparsity\":%.6f,"
                   "\"decode_attention_sparsity\":%.6f,\"score_autocorrelation\":%.6f}", l ? "," : "", l,
                   dl_delta_element_sparsity(&lb), dl_delta_attention_sparsity(&lb),
                   dl_delta_qk_skipped(&lb), dl_delta_element_sparsity(&ls[0]),
                   dl_delta_attention_sparsity(&ls[0]), dl_delta_element_sparsity(&ls[1]),
                   dl_delta_attention_sparsity(&ls[1]), key_similarity(r, l));
        }
        printf("]}\n");
        return;
    }
    printf("windows %d (ctx %d, stride %d, last %.0f%% decoded), %.0f positions scored\n",
           r->n_windows, o->ctx, o->stride, o->decode_frac * 100, r->n_scored);
    printf("perplexity  dense %.4f  delta %.4f  (%+.3f%%)\n", pd, pq, 100 * (pq / pd - 1));
    printf("KL(dense||delta) mean %.3g   top-1 agreement %.2f%%\n", r->kl / r->n_scored,
           100 * r->top1 / r->n_scored);
    for (int st = 0; st < 3; st++) {
        dl_delta_stage_stats s = st == 2 ? all : r->st[st];
        printf("%-8s element sparsity %.1f%%  attention sparsity %.1f%%  QK work skipped %.1f%%\n",
               st == 0 ? "prefill" : st == 1 ? "decode" : "both", 100 * dl_delta_element_sparsity(&s),
               100 * dl_delta_attention_sparsity(&s), 100 * dl_delta_qk_skipped(&s));
    }
    printf("K cache %.0f bytes vs dense fp16 %.0f (%.1f%%); K+V %.1f%% of dense\n",
           r->k_bytes / r->n_windows, r->k_dense_bytes / r->n_windows,
           100 * r->k_bytes / r->k_dense_bytes,
           100 * (r->k_bytes + r->v_bytes) / (2 * r->k_dense_bytes));
    printf("neighbouring keys' score correlation %.3f (lag-1 autocorrelation of q.k_t along "
           "the keys; the method assumes close to 1)\n", key_similarity(r, -1));
    printf("per layer   element sparsity prefill / decode   attention sparsity prefill / decode"
           "   QK work skipped (both)   score corr.\n");
    for (int l = 0; l < r->n_layer; l++) {
        const dl_delta_stage_stats *ls = &r->lst[2 * l];
        dl_delta_stage_stats lb = ls[0];
        dl_delta_stats_add(&lb, &ls[1]);
        printf("  layer %-3d %15.1f%% / %5.1f%% %23.1f%% / %5.1f%% %18.1f%% %16.3f\n", l,
               100 * dl_delta_element_sparsity(&ls[0]), 100 * dl_delta_element_sparsity(&ls[1]),
               100 * dl_delta_attention_sparsity(&ls[0]), 100 * dl_delta_attention_sparsity(&ls[1]),
               100 * dl_delta_qk_skipped(&lb), key_similarity(r, l));
    }
}

static void print_sweep_row(const eval_opts *o, const dl_delta_params *dp, const eval_result *r)
{
    if (o->json) {
        print_ppl(o, dp, r);
        return;
    }
    double pd = exp(r->nll_dense / r->n_scored), pq = exp(r->nll_delta / r->n_scored);
    dl_delta_stage_stats all = both_stages(r);
    char knob[32];
    if (dp->sparsity_target >= 0)
        snprintf(knob, sizeof knob, "target %.2f", dp->sparsity_target);
    else
        snprintf(knob, sizeof knob, "theta %.3f", dp->theta);
    printf("| %-12s | %6d | %3d | %4.2f | %6.1f%% | %6.1f%% | %6.1f%% | %6.1f%% | %6.1f%% | %+7.3f%% | "
           "%9.3g | %6.2f%% | %6.1f%% |\n", knob, dp->window, dp->prefill_window, dp->lag,
           100 * dl_delta_element_sparsity(&all),
           100 * dl_delta_attention_sparsity(&r->st[0]), 100 * dl_delta_attention_sparsity(&all),
           100 * dl_delta_qk_skipped(&all), 100 * r->k_bytes / r->k_dense_bytes,
           100 * (pq / pd - 1), r->kl / r->n_scored, 100 * r->top1 / r->n_scored,
           100 * (r->k_bytes + r->v_bytes) / (2 * r->k_dense_bytes));
}

/* --calibrate: per-layer offsets to the sparsity target (delta.layer_offsets) that move the
 * model least from dense (KL, or perplexity with --calib-metric ppl) at the same overall
 * element sparsity. Layers do not suffer alike from stale keys: on stories260K, raising one
 * layer's target of 0.64 by 0.2 adds 0.0023 to 0.024 to KL depending on the layer
 * (README). Procedure:
 *   1. the run's setting (its offsets, or none) over the chosen windows: the base;
 *   2. for each layer l and u in {-2, -1, 1, 2}: layer l's offset moved by u x step, the
 *      others as in the base; cost(l, u) = its mean KL(dense || delta) (--calib-metric ppl:
 *      mean NLL, i.e. log perplexity) minus the base's, cost(l, 0) = 0;
 *   3. one move per layer in half steps (odd ones interpolated between their neighbours),
 *      summing to zero — so the mean target, and with it the overall element sparsity,
 *      stays — that minimises the sum of the layers' costs (taken as additive), by dynamic
 *      programming over the layers;
 *   4. the chosen offsets, run over the same windows, to show what they do.
 * 2 + 4 x n_layer runs; --skip-windows keeps the calibration windows apart from those a
 * table reports. */
#define CAL_U 2           /* moves -CAL_U..CAL_U steps */
#define CAL_H (2 * CAL_U) /* in half steps */

/* What --calibrate minimises: mean KL(dense || delta), or the mean NLL (log perplexity).
 * KL by default: perplexity can also fall when the distributions move away from dense
 * (on stories260K one layer at 95% element sparsity took perplexity below dense while
 * doubling KL), and closeness to the dense model is what the offsets should buy. */
static double cal_metric(const eval_opts *o, const eval_result *r)
{
    return (o->calib_ppl ? r->nll_delta - r->nll_dense : r->kl) / r->n_scored;
}

/* A metric difference as printed: percent perplexity, or KL itself. */
static double cal_show(const eval_opts *o, double dm)
{
    return o->calib_ppl ? 100 * (exp(dm) - 1) : dm;
}

static float clamp_offset(float x) { return x < -1 ? -1 : x > 1 ? 1 : x; }

/* Step 3: the move per layer, in half steps h[l] in [-CAL_H, CAL_H] summing to zero, with
 * the least summed cost; cost[l][u + CAL_U] for whole steps u, half steps interpolated.
 * Returns that cost, or NAN when out of memory. */
static double least_cost_moves(const double *cost, int L, int *h)
{
    int nsum = 2 * CAL_H * L + 1; /* sums -CAL_H L .. CAL_H L */
    double *best = malloc((size_t)(L + 1) * nsum * sizeof *best);
    signed char *pick = malloc((size_t)(L + 1) * nsum);
    if (!best || !pick) {
        free(best), free(pick);
        return NAN;
    }
    /* best[l][s]: least cost of layers < l whose moves sum to s - CAL_H * L */
    for (int i = 0; i < (L + 1) * nsum; i++)
        best[i] = INFINITY;
    best[CAL_H * L] = 0;
    for (int l = 0; l < L; l++) {
        const double *c = cost + l * (2 * CAL_U + 1);
        for (int sm = 0; sm < nsum; sm++) {
            if (!isfinite(best[l * nsum + sm]))
                continue;
            for (int mv = -CAL_H; mv <= CAL_H; mv++) {
                int to = sm + mv;
                if (to < 0 || to >= nsum)
                    continue;
                double ch = mv % 2 == 0 ? c[mv / 2 + CAL_U]
                                        : 0.5 * (c[(mv - 1) / 2 + CAL_U] + c[(mv + 1) / 2 + CAL_U]);
                double v = best[l * nsum + sm] + ch;
                if (v < best[(l + 1) * nsum + to]) {
                    best[(l + 1) * nsum + to] = v;
                    pick[(l + 1) * nsum + to] = (signed char)mv;
                }
            }
        }
    }
    double total = best[L * nsum + CAL_H * L];
    for (int l = L, sm = CAL_H * L; l > 0; l--) {
        h[l - 1] = pick[l * nsum + sm];
        sm -= h[l - 1];
    }
    free(best), free(pick);
    return total;
}

static int calibrate(evaluator *e, const int32_t *toks, int n_tok)
{
    const eval_opts *o = e->o;
    int L = dl_model_hparams(e->m)->n_layer;
    if (L > DL_DELTA_MAX_LAYER_OFFSETS) {
        fprintf(stderr, "deltallm eval: --calibrate handles at most %d layers\n",
                DL_DELTA_MAX_LAYER_OFFSETS);
        return -1;
    }
    dl_delta_params base = o->run.delta;
    base.enabled = 1;
    if (base.n_layer_offsets != L) {
        memset(base.layer_offsets, 0, sizeof base.layer_offsets);
        base.n_layer_offsets = L;
    }
    double *cost = calloc((size_t)L * (2 * CAL_U + 1), sizeof *cost); /* [l][u + CAL_U] */
    int *h = malloc((size_t)L * sizeof *h);
    if (!cost || !h) {
        free(cost), free(h);
        return -1;
    }
    eval_result r;
    int rc = eval_ppl(e, toks, n_tok, &base, &r);
    double m0 = rc ? 0 : cal_metric(o, &r);
    if (!rc && !o->json)
        printf("base: target %.3f, %d windows from window %d, dPPL %+.3f%%, KL %.4g\n"
               "per layer: %s change when only that layer's offset moves by\n"
               "  layer  offset  %8.2f %8.2f %8.2f %8.2f\n", base.sparsity_target, r.n_windows,
               o->skip_windows, 100 * (exp((r.nll_delta - r.nll_dense) / r.n_scored) - 1),
               r.kl / r.n_scored, o->calib_ppl ? "perplexity" : "KL(dense||delta)",
               -2 * o->calib_step, -o->calib_step, o->calib_step, 2 * o->calib_step);
    result_free(&r);
    for (int l = 0; l < L && !rc; l++) {
        for (int u = -CAL_U; u <= CAL_U && !rc; u++) {
            if (!u)
                continue;
            dl_delta_params dp = base;
            dp.layer_offsets[l] = clamp_offset(base.layer_offsets[l] + (float)u * o->calib_step);
            if ((rc = eval_ppl(e, toks, n_tok, &dp, &r)) == 0)
                cost[l * (2 * CAL_U + 1) + u + CAL_U] = cal_metric(o, &r) - m0;
            result_free(&r);
        }
        if (!rc && !o->json) {
            const double *c = cost + l * (2 * CAL_U + 1);
            printf("  %5d  %+6.3f ", l, base.layer_offsets[l]);
            for (int u = 0; u <= 2 * CAL_U; u++)
                if (u != CAL_U)
                    printf(o->calib_ppl ? " %+7.3f%%" : " %+8.5f", cal_show(o, c[u]));
            printf("\n");
            fflush(stdout);
        }
    }
    double predicted = rc ? 0 : least_cost_moves(cost, L, h);
    if (isnan(predicted))
        rc = -1;
    if (!rc) {
        dl_delta_params dp = base;
        for (int l = 0; l < L; l++)
            dp.layer_offsets[l] =
                clamp_offset(base.layer_offsets[l] + 0.5f * (float)h[l] * o->calib_step);
        if (!o->json) {
            printf(o->calib_ppl ? "predicted change %+.3f%% at the same mean target\n"
                                : "predicted change %+.5f at the same mean target\n",
                   cal_show(o, predicted));
            printf("--delta-layer-offsets ");
            for (int l = 0; l < L; l++)
                printf("%s%g", l ? "," : "", dp.layer_offsets[l]);
            printf("\nwith them, over the same windows:\n");
        }
        if ((rc = eval_ppl(e, toks, n_tok, &dp, &r)) == 0)
            print_ppl(o, &dp, &r);
        result_free(&r);
    }
    free(cost), free(h);
    return rc;
}

static int run_ppl(evaluator *e)
{
    const eval_opts *o = e->o;
    size_t len;
    char *text = NULL;
    FILE *f = fopen(o->file, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        rewind(f);
        text = n >= 0 ? malloc((size_t)n + 1) : NULL;
        len = text ? fread(text, 1, (size_t)n, f) : 0;
        fclose(f);
    }
    if (!text) {
        fprintf(stderr, "deltallm eval: cannot read %s\n", o->file);
        return 1;
    }
    text[len] = 0;
    /* TinyStories separates stories with <|endoftext|>; a model without that token reads
     * it as text, so the separator lines are blanked. */
    for (char *p = strstr(text, "<|endoftext|>"); p; p = strstr(p, "<|endoftext|>"))
        memset(p, ' ', 13);
    int n_tok;
    int32_t *toks = tokenize_all(e, text, len, 0, &n_tok);
    free(text);
    if (!toks) {
        fprintf(stderr, "deltallm eval: tokenization failed\n");
        return 1;
    }
    int rc = 0;
    eval_result r;
    if (o->calibrate)
        rc = calibrate(e, toks, n_tok);
    else if (!o->sweep) {
        if ((rc = eval_ppl(e, toks, n_tok, &o->run.delta, &r)) == 0)
            print_ppl(o, &o->run.delta, &r);
        result_free(&r);
    } else {
        if (!o->json)
            printf("| %-12s | window | prefill window | lag | elem sp | attn sp prefill | "
                   "attn sp both | QK skipped | K bytes | dPPL | KL | top-1 | K+V bytes |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n", "setting");
        for (int g = 0; g < o->n_grid && !rc; g++)
            for (int wi = 0; wi < o->n_windows * o->n_pws * o->n_lags && !rc; wi++) {
                dl_delta_params dp = o->run.delta;
                dp.enabled = 1;
                dp.window = o->windows[wi / (o->n_lags * o->n_pws)];
                dp.prefill_window = o->pws[wi / o->n_lags % o->n_pws];
                dp.lag = o->lags[wi % o->n_lags];
                if (o->grid_targets)
                    dp.sparsity_target = o->grid[g];
                else {
                    dp.theta = o->grid[g];
                    dp.sparsity_target = -1;
                }
                if ((rc = eval_ppl(e, toks, n_tok, &dp, &r)) == 0)
                    print_sweep_row(o, &dp, &r);
                result_free(&r);
                fflush(stdout);
            }
    }
    if (rc)
        fprintf(stderr, "deltallm eval: %s\n", e->err);
    free(toks);
    return rc ? 1 : 0;
}

/* ---- multiple choice ---------------------------------------------------------------- */

typedef struct mc_item {
    char *ctx;
    char *endings[4];
    int n_endings;
    int label;
} mc_item;

/* Decode one JSON string value of "key" in a single-line object into a malloc'd string. */
static char *json_str(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NULL;
    p = strchr(p + strlen(pat), '"');
    if (!p)
        return NULL;
    p++;
    char *out = malloc(strlen(p) + 1), *o = out;
    if (!out)
        return NULL;
    for (; *p && *p != '"'; p++) {
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = 0;
            if (sscanf(p + 1, "%4x", &cp) != 1)
                break;
            p += 4;
            if (cp < 0x80)
                *o++ = (char)cp;
            else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        case 0: p--; break;
        default: *o++ = *p; break;
        }
    }
    *o = 0;
    return out;
}

static char *dup_range(const char *a, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, a, n);
        s[n] = 0;
    }
    return s;
}

/* Read the task file into items; returns the count. */
static int load_task(const eval_opts *o, mc_item **out)
{
    FILE *f = fopen(o->file, "r"), *lf = o->labels ? fopen(o->labels, "r") : NULL;
    if (!f || (o->labels && !lf)) {
        if (f)
            fclose(f);
        fprintf(stderr, "deltallm eval: cannot read %s\n", f ? o->labels : o->file);
        return -1;
    }
    int cap = 64, n = 0;
    mc_item *items = calloc((size_t)cap, sizeof *items);
    char *line = NULL, *lines[6];
    size_t lcap = 0;
    while (items && n < o->limit) {
        mc_item it = {0};
        ssize_t got = getline(&line, &lcap, f);
        if (got <= 0)
            break;
        line[strcspn(line, "\r\n")] = 0;
        if (!strcmp(o->task, "hellaswag")) {
            lines[0] = strdup(line);
            int ok = 1;
            for (int k = 1; k < 6 && ok; k++) {
                ok = getline(&line, &lcap, f) > 0;
                line[strcspn(line, "\r\n")] = 0;
                lines[k] = strdup(line);
            }
            if (!ok)
                break;
            it.ctx = lines[0];
            it.label = atoi(lines[1]);
            free(lines[1]);
            for (int k = 0; k < 4; k++)
                it.endings[k] = lines[2 + k];
            it.n_endings = 4;
        } else if (!strcmp(o->task, "piqa")) {
            char *goal = json_str(line, "goal"), lab[16];
            it.endings[0] = json_str(line, "sol1");
            it.endings[1] = json_str(line, "sol2");
            it.n_endings = 2;
            it.label = lf && fgets(lab, sizeof lab, lf) ? atoi(lab) : -1;
            size_t cl = goal ? strlen(goal) + 32 : 0;
            it.ctx = goal ? malloc(cl) : NULL;
            if (it.ctx)
                snprintf(it.ctx, cl, "Question: %s\nAnswer:", goal);
            free(goal);
        } else if (!strcmp(o->task, "obqa")) {
            if (!strncmp(line, "ID\t", 3))
                continue; /* header */
            char *cols[5] = {0}, *p = line;
            for (int k = 0; k < 5 && p; k++) {
                cols[k] = p;
                p = strchr(p, '\t');
                if (p)
                    *p++ = 0;
            }
            if (!cols[4])
                continue;
            it.ctx = strdup(cols[1]);
            for (int k = 0; k < 4; k++) {
                char tag[5] = {'(', (char)('A' + k), ')', ' ', 0};
                char *a = strstr(cols[2], tag), *b;
                if (!a)
                    break;
                a += 4;
                char next[4] = {'(', (char)('B' + k), ')', 0};
                b = k < 3 ? strstr(a, next) : NULL;
                size_t l = b ? (size_t)(b - a) : strlen(a);
                while (l && isspace((unsigned char)a[l - 1]))
                    l--;
                it.endings[it.n_endings++] = dup_range(a, l);
            }
            it.label = cols[4][0] - 'A';
        } else if (!strcmp(o->task, "lambada")) {
            char *t = json_str(line, "text");
            if (!t)
                continue;
            size_t l = strlen(t);
            while (l && isspace((unsigned char)t[l - 1]))
                t[--l] = 0;
            char *sp = strrchr(t, ' ');
            if (!sp) {
                free(t);
                continue;
            }
            it.endings[0] = strdup(sp + 1);
            *sp = 0;
            it.ctx = t;
            it.n_endings = 1;
            it.label = 0;
        }
        if (!it.ctx || it.n_endings < 1 || it.label < 0 || it.label >= it.n_endings) {
            free(it.ctx);
            for (int k = 0; k < 4; k++)
                free(it.endings[k]);
            continue;
        }
        if (n == cap) {
            mc_item *g = realloc(items, (size_t)(cap *= 2) * sizeof *items);
            if (!g)
                break;
            items = g;
        }
        items[n++] = it;
    }
    free(line);
    fclose(f);
    if (lf)
        fclose(lf);
    *out = items;
    return items ? n : -1;
}

/* Log-probability of cont (appended after the context already in s), and whether every
 * token of it is the greedy choice. s is truncated back to its length on return. */
static int score_cont(evaluator *e, dl_seq *s, float *last_logits, const int32_t *cont, int n,
                      float *lg, double *lp, int *greedy)
{
    int base = dl_seq_len(s), V = e->V;
    *lp = 0;
    *greedy = 1;
    float *row = malloc((size_t)V * sizeof *row);
    if (!row)
        return -1;
    memcpy(row, last_logits, (size_t)V * sizeof *row);
    for (int p = 0; p < n;) {
        int k = n - p < CHUNK ? n - p : CHUNK;
        /* row holds the logits predicting cont[p]; feed cont[p..p+k) for the next ones */
        for (int j = 0; j < k; j++) {
            float *src = j == 0 ? row : lg + (size_t)(j - 1) * V;
            *greedy &= argmax(src, V) == cont[p + j];
            log_softmax(src, V);
            *lp += src[cont[p + j]];
        }
        if (p + k == n)
            break;
        dl_batch_item it = {s, cont + p, k, lg, 1};
        if (dl_forward(e->c, &it, 1, e->err, sizeof e->err)) {
            free(row);
            return -1;
        }
        memcpy(row, lg + (size_t)(k - 1) * V, (size_t)V * sizeof *row);
        p += k;
    }
    free(row);
    return dl_seq_truncate(s, base);
}

static int run_task(evaluator *e)
{
    const eval_opts *o = e->o;
    mc_item *items = NULL;
    int n = load_task(o, &items);
    if (n <= 0) {
        fprintf(stderr, "deltallm eval: no items read from %s\n", o->file);
        free(items);
        return 1;
    }
    int correct[2] = {0, 0}, rc = 0, done = 0;
    dl_delta_stage_stats pre = {0};
    float *last = malloc((size_t)e->V * sizeof *last);
    for (int i = 0; i < n && !rc && last; i++) {
        mc_item *it = &items[i];
        int nc = 0;
        int32_t *ctx = tokenize_all(e, it->ctx, strlen(it->ctx), 1, &nc);
        double best[2] = {-INFINITY, -INFINITY};
        int pick[2] = {-1, -1}, greedy_ok[2] = {0, 0};
        for (int mode = 0; mode < 2 && ctx && !rc; mode++) {
            const dl_delta_params *dp = mode ? &o->run.delta : NULL;
            dl_seq *s = dl_seq_create(e->m, o->ctx, dp, e->err, sizeof e->err);
            if (!s || nc >= o->ctx) {
                dl_seq_free(s);
                break;
            }
            /* prefill the context; keep the logits of its last token */
            for (int p = 0; p < nc && !rc; p += CHUNK) {
                int k = nc - p < CHUNK ? nc - p : CHUNK;
                dl_batch_item b = {s, ctx + p, k, e->lg_dense, 1};
                rc = dl_forward(e->c, &b, 1, e->err, sizeof e->err);
                if (!rc && p + k == nc)
                    memcpy(last, e->lg_dense + (size_t)(k - 1) * e->V, (size_t)e->V * sizeof *last);
            }
            for (int k = 0; k < it->n_endings && !rc; k++) {
                /* the ending's tokens: tokenize context + " " + ending, drop the context */
                size_t l = strlen(it->ctx) + strlen(it->endings[k]) + 2;
                char *full = malloc(l);
                snprintf(full, l, "%s %s", it->ctx, it->endings[k]);
                int nf = 0;
                int32_t *ft = tokenize_all(e, full, strlen(full), 1, &nf);
                free(full);
                int common = 0;
                while (ft && common < nc && common < nf && ft[common] == ctx[common])
                    common++;
                int nend = ft ? nf - common : 0;
                if (nend > 0 && common == nc && nc + nend <= o->ctx) {
                    double lp;
                    int greedy;
                    rc = score_cont(e, s, last, ft + common, nend, e->lg_delta, &lp, &greedy);
                    if (lp > best[mode]) {
                        best[mode] = lp;
                        pick[mode] = k;
                    }
                    greedy_ok[mode] = greedy;
                }
                free(ft);
            }
            const dl_delta_stats *ds = dl_seq_delta_stats(s);
            if (ds)
                dl_delta_stats_add(&pre, &ds->stage[0]);
            dl_seq_free(s);
        }
        free(ctx);
        if (pick[0] < 0)
            continue;
        done++;
        for (int mode = 0; mode < 2; mode++)
            correct[mode] += !strcmp(o->task, "lambada") ? greedy_ok[mode]
                                                          : pick[mode] == it->label;
    }
    if (rc)
        fprintf(stderr, "deltallm eval: %s\n", e->err);
    else if (o->json)
        printf("{\"task\":\"%s\",\"items\":%d,\"accuracy_dense\":%.6f,\"accuracy_delta\":%.6f,"
               "\"attention_sparsity\":%.6f,\"element_sparsity\":%.6f,\"qk_work_skipped\":%.6f}\n",
               o->task, done, (double)correct[0] / done, (double)correct[1] / done,
               dl_delta_attention_sparsity(&pre), dl_delta_element_sparsity(&pre),
               dl_delta_qk_skipped(&pre));
    else
        printf("%s: %d items  accuracy dense %.2f%%  delta %.2f%%  (prefill attention sparsity "
               "%.1f%%, QK work skipped %.1f%%)\n", o->task, done, 100.0 * correct[0] / done,
               100.0 * correct[1] / done, 100 * dl_delta_attention_sparsity(&pre),
               100 * dl_delta_qk_skipped(&pre));
    for (int i = 0; i < n; i++) {
        free(items[i].ctx);
        for (int k = 0; k < 4; k++)
            free(items[i].endings[k]);
    }
    free(items);
    free(last);
    return rc ? 1 : 0;
}

/* ---- options ------------------------------------------------------------------------ */

static int parse_list(const char *val, float *out, int *n, double lo, double hi)
{
    *n = 0;
    for (const char *p = val; p && *p && *n < MAX_GRID;) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || v < lo || v > hi)
            return -1;
        out[(*n)++] = (float)v;
        p = *end == ',' ? end + 1 : (*end ? NULL : end);
        if (!p)
            return -1;
    }
    return *n ? 0 : -1;
}

static int parse(eval_opts *o, int argc, char **argv)
{
    dl_run_opts_default(&o->run);
    o->run.delta.enabled = 1;
    o->ctx = 256;
    o->decode_frac = 0.5;
    o->max_windows = 40;
    o->limit = 200;
    for (int i = 1; i < argc; i++) {
        int r = dl_run_opts_parse(&o->run, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: deltallm eval -m MODEL -f FILE [options]\n\n"
                   "  -f, --file FILE         text (perplexity) or task file\n"
                   "  --ctx N                 window / context length (default 256)\n"
                   "  --stride N              window step (default ctx/2)\n"
                   "  --decode-frac F         share of each window decoded token by token "
                   "(default 0.5)\n"
                   "  --max-windows N         (default 40)\n"
                   "  --skip-windows N        leave out the first N windows (default 0)\n"
                   "  --task T                hellaswag | piqa | obqa | lambada\n"
                   "  --labels FILE           PIQA labels file\n"
                   "  --limit N               task items (default 200)\n"
                   "  --sweep                 grid of --thetas (or --targets) x --windows x --lags\n"
                   "  --thetas a,b,..         --targets a,b,..   --windows a,b,..   --lags a,b,..\n"
                   "  --prefill-windows a,b,..\n"
                   "  --calibrate             per-layer offsets for --delta-target (prints\n"
                   "                          --delta-layer-offsets)\n"
                   "  --calib-step F          offsets tried per layer: +-F, +-2F (default 0.1)\n"
                   "  --calib-metric M        kl (default) or ppl: what --calibrate minimises\n"
                   "  --json                  one JSON object per result\n%s",
                   dl_run_opts_help);
            return 0;
        }
        if (!strcmp(a, "--json") || !strcmp(a, "--sweep") || !strcmp(a, "--calibrate")) {
            *(a[2] == 'j' ? &o->json : a[2] == 's' ? &o->sweep : &o->calibrate) = 1;
            continue;
        }
        if (!strcmp(a, "-f") || !strcmp(a, "--file"))
            o->file = val;
        else if (!strcmp(a, "--labels"))
            o->labels = val;
        else if (!strcmp(a, "--task")) {
            if (!val || (strcmp(val, "hellaswag") && strcmp(val, "piqa") && strcmp(val, "obqa") &&
                         strcmp(val, "lambada"))) {
                fprintf(stderr, "deltallm eval: --task must be hellaswag, piqa, obqa or lambada\n");
                return 2;
            }
            o->task = val;
        } else if (!strcmp(a, "--stride")) {
            if (dl_cli_int(a, val, 1, 1 << 16, &l))
                return 2;
            o->stride = (int)l;
        } else if (!strcmp(a, "--decode-frac")) {
            if (dl_cli_float(a, val, 0, 1, &d))
                return 2;
            o->decode_frac = d;
        } else if (!strcmp(a, "--max-windows") || !strcmp(a, "--limit")) {
            if (dl_cli_int(a, val, 1, 1 << 24, &l))
                return 2;
            *(a[2] == 'm' ? &o->max_windows : &o->limit) = (int)l;
        } else if (!strcmp(a, "--skip-windows")) {
            if (dl_cli_int(a, val, 0, 1 << 24, &l))
                return 2;
            o->skip_windows = (int)l;
        } else if (!strcmp(a, "--calib-metric")) {
            if (!val || (strcmp(val, "kl") && strcmp(val, "ppl"))) {
                fprintf(stderr, "deltallm eval: --calib-metric must be kl or ppl\n");
                return 2;
            }
            o->calib_ppl = !strcmp(val, "ppl");
        } else if (!strcmp(a, "--calib-step")) {
            if (dl_cli_float(a, val, 0.01, 0.5, &d))
                return 2;
            o->calib_step = (float)d;
        } else if (!strcmp(a, "--thetas") || !strcmp(a, "--targets")) {
            o->grid_targets = a[3] == 'a';
            if (!val || parse_list(val, o->grid, &o->n_grid, 0, o->grid_targets ? 0.999 : 1e6)) {
                fprintf(stderr, "deltallm eval: %s needs a list of numbers\n", a);
                return 2;
            }
        } else if (!strcmp(a, "--windows") || !strcmp(a, "--prefill-windows")) {
            int pre = a[2] == 'p'; /* prefill windows may be 0 (= the window) */
            float wins[MAX_GRID];
            int *n = pre ? &o->n_pws : &o->n_windows, *to = pre ? o->pws : o->windows;
            if (!val || parse_list(val, wins, n, pre ? 0 : 1, 1 << 20)) {
                fprintf(stderr, "deltallm eval: %s needs a list of integers\n", a);
                return 2;
            }
            for (int k = 0; k < *n; k++)
                to[k] = (int)wins[k];
        } else if (!strcmp(a, "--lags")) {
            if (!val || parse_list(val, o->lags, &o->n_lags, 0, 1)) {
                fprintf(stderr, "deltallm eval: --lags needs a list of numbers in [0, 1]\n");
                return 2;
            }
        } else {
            fprintf(stderr, "deltallm eval: unknown option '%s'\n", a);
            return 2;
        }
        i++;
    }
    if (!o->run.model || !o->file) {
        fprintf(stderr, "deltallm eval: -m MODEL and -f FILE are required\n");
        return 2;
    }
    if (o->run.ctx) /* -c/--ctx is parsed with the shared run options */
        o->ctx = o->run.ctx;
    if (o->ctx < 8) {
        fprintf(stderr, "deltallm eval: --ctx must be at least 8\n");
        return 2;
    }
    if (!o->stride)
        o->stride = o->ctx / 2;
    if (o->stride > o->ctx - 1)
        o->stride = o->ctx - 1;
    if (o->sweep && !o->n_grid) {
        static const float th[] = {0.05f, 0.1f, 0.2f, 0.3f, 0.5f};
        memcpy(o->grid, th, sizeof th);
        o->n_grid = 5;
    }
    if (!o->n_lags) {
        o->lags[0] = o->run.delta.lag;
        o->n_lags = 1;
    }
    if (!o->n_pws) {
        o->pws[0] = o->run.delta.prefill_window;
        o->n_pws = 1;
    }
    if (!o->calib_step)
        o->calib_step = 0.1f;
    /* multiple choice scores the endings from the prompt's own positions, which the short
     * default prefill window serves worse than generation: the full window there */
    if (o->task && !o->run.prefill_window_set)
        o->run.delta.prefill_window = 0;
    if (o->calibrate && (o->sweep || o->task || o->run.delta.sparsity_target < 0)) {
        fprintf(stderr, "deltallm eval: --calibrate needs a sparsity target (not --delta-theta) "
                "and neither --sweep nor --task\n");
        return 2;
    }
    if (o->sweep && !o->n_windows) {
        o->windows[0] = 8, o->windows[1] = 16, o->windows[2] = 32;
        o->n_windows = 3;
    }
    char err[256];
    if (!o->sweep && dl_delta_params_check(&o->run.delta, err, sizeof err)) {
        fprintf(stderr, "deltallm eval: %s\n", err);
        return 2;
    }
    return -1;
}

int dl_cmd_eval(int argc, char **argv)
{
    eval_opts o;
    memset(&o, 0, sizeof o);
    int r = parse(&o, argc, argv);
    if (r >= 0)
        return r;
    evaluator e = {.o = &o};
    int rc = 1;
    if (dl_model_load(o.run.model, &e.m, e.err, sizeof e.err)) {
        fprintf(stderr, "deltallm eval: %s\n", e.err);
        return 1;
    }
    e.tok = dl_model_tokenizer(e.m);
    e.V = dl_model_hparams(e.m)->n_vocab;
    e.c = dl_ctx_create(e.m, 2 * CHUNK, o.ctx, o.run.threads, e.err, sizeof e.err);
    e.lg_dense = malloc((size_t)CHUNK * e.V * sizeof(float));
    e.lg_delta = malloc((size_t)CHUNK * e.V * sizeof(float));
    if (!e.c || !e.lg_dense || !e.lg_delta)
        fprintf(stderr, "deltallm eval: %s\n", e.c ? "out of memory" : e.err);
    else
        rc = o.task ? run_task(&e) : run_ppl(&e);
    free(e.lg_dense);
    free(e.lg_delta);
    dl_ctx_free(e.c);
    dl_model_free(e.m);
    return rc;
}
