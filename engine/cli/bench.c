/* bench.c — `deltallm bench`: prefill and decode speed of a model on this machine, and how
 * close decode comes to the machine's memory bandwidth.
 *
 * Every figure is the median of --reps runs, with the spread (max - min) / median beside it.
 * Tokens are random ids from a fixed seed, so runs are comparable. Decode reads every
 * matmul weight once per token plus the K/V cache up to the current depth; dividing those
 * bytes per second by the bandwidth our own streaming probe measures (same threads) gives
 * the roofline ratio.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_kern.h"
#include "cli.h"
#include "kernels.h"
#include "model.h"
#include "quant.h"

#define MAX_DEPTHS 8
#define MAX_REPS 32

typedef struct bench_opts {
    dl_run_opts run;
    int n_prompt;
    int n_decode;
    int reps;
    int json;
    int n_depth;
    int depths[MAX_DEPTHS];
    int batch_seqs;  /* > 1: also measure aggregate decode of this many sequences */
} bench_opts;

typedef struct stat3 { double median, spread; } stat3;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static stat3 summarise(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    stat3 s = {v[n / 2], 0};
    if (n % 2 == 0)
        s.median = 0.5 * (v[n / 2 - 1] + v[n / 2]);
    if (s.median > 0)
        s.spread = (v[n - 1] - v[0]) / s.median;
    return s;
}

static int parse_depths(bench_opts *o, const char *val)
{
    o->n_depth = 0;
    for (const char *p = val; p && *p;) {
        char *end;
        long d = strtol(p, &end, 10);
        if (end == p || d < 1 || d > (1 << 20) || o->n_depth == MAX_DEPTHS)
            return -1;
        o->depths[o->n_depth++] = (int)d;
        p = *end == ',' ? end + 1 : (*end ? NULL : end);
        if (!p)
            return -1;
    }
    return 0;
}

static int parse(bench_opts *o, int argc, char **argv)
{
    dl_run_opts_default(&o->run);
    o->n_prompt = 512;
    o->n_decode = 128;
    o->reps = 3;
    for (int i = 1; i < argc; i++) {
        int r = dl_run_opts_parse(&o->run, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: deltallm bench -m MODEL [options]\n\n"
                   "  -p, --prompt N          prompt tokens for prefill (default 512)\n"
                   "  -n, --decode N          tokens to decode (default 128)\n"
                   "  --depth D1,D2,...       also decode at these context depths\n"
                   "  --reps R                repetitions (default 3; median reported)\n"
                   "  --batch-seqs B          also decode B sequences together\n"
                   "  --json                  machine-readable output\n%s",
                   dl_run_opts_help);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (dl_cli_int(a, val, 1, 1 << 16, &l))
                return 2;
            o->n_prompt = (int)l;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--decode")) {
            if (dl_cli_int(a, val, 1, 1 << 16, &l))
                return 2;
            o->n_decode = (int)l;
        } else if (!strcmp(a, "--reps")) {
            if (dl_cli_int(a, val, 1, MAX_REPS, &l))
                return 2;
            o->reps = (int)l;
        } else if (!strcmp(a, "--batch-seqs")) {
            if (dl_cli_int(a, val, 1, 64, &l))
                return 2;
            o->batch_seqs = (int)l;
        } else if (!strcmp(a, "--depth")) {
            if (parse_depths(o, val)) {
                fprintf(stderr, "deltallm bench: --depth needs a list like 2048,4096\n");
                return 2;
            }
        } else {
            fprintf(stderr, "deltallm bench: unknown option '%s'\n", a);
            return 2;
        }
        i++;
    }
    if (!o->run.model) {
        fprintf(stderr, "deltallm bench: -m MODEL is required\n");
        return 2;
    }
    return -1;
}

/* Bytes one decode step reads: every matmul weight (the embedding only when it doubles as
 * the output head) plus the sequence's cache. */
static double decode_bytes(const dl_model *m, const dl_seq *s)
{
    double w = (double)dl_model_weight_bytes(m);
    const dl_gguf_tensor *emb = dl_gguf_find_tensor(dl_model_gguf(m), "token_embd.weight");
    if (emb && !dl_model_hparams(m)->tied_output)
        w -= (double)emb->nbytes;
    return w + (double)dl_seq_bytes(s);
}

typedef struct bench_run {
    const bench_opts *o;
    dl_model *m;
    dl_ctx *c;
    int32_t *tokens;  /* random ids, enough for the deepest run */
    int n_tokens;
    float *logits;
    char err[512];
} bench_run;

/* Append tokens [from, to) of the random stream to s, in batch-sized chunks. */
static int fill(bench_run *b, dl_seq *s, int from, int to, int want_logits)
{
    int chunk = dl_ctx_max_tokens(b->c);
    for (int p = from; p < to; p += chunk) {
        int n = to - p < chunk ? to - p : chunk;
        dl_batch_item it = {s, b->tokens + p, n, want_logits && p + n == to ? b->logits : NULL, 0};
        if (dl_forward(b->c, &it, 1, b->err, sizeof b->err))
            return -1;
    }
    return 0;
}

/* Decode n tokens one at a time on s; returns seconds. */
static double decode(bench_run *b, dl_seq *s, int n)
{
    int32_t t = b->tokens[dl_seq_len(s) % b->n_tokens];
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        dl_batch_item it = {s, &t, 1, b->logits, 0};
        if (dl_forward(b->c, &it, 1, b->err, sizeof b->err))
            return -1;
        t = b->tokens[(dl_seq_len(s) * 7919) % b->n_tokens];
    }
    return now_s() - t0;
}

static dl_seq *new_seq(bench_run *b, int n_ctx)
{
    return dl_seq_create(b->m, n_ctx, &b->o->run.delta, b->err, sizeof b->err);
}

/* Aggregate decode tokens/s of B sequences stepping together after a short prompt. */
static double batched_decode(bench_run *b, int B, int n)
{
    dl_seq *seqs[64] = {0};
    dl_batch_item items[64];
    int32_t toks[64];
    float *lg = malloc((size_t)B * dl_model_hparams(b->m)->n_vocab * sizeof *lg);
    double rate = -1;
    int V = dl_model_hparams(b->m)->n_vocab, prompt = 32;
    for (int i = 0; i < B; i++)
        if (!(seqs[i] = new_seq(b, prompt + n + 1)) || fill(b, seqs[i], i, i + prompt, 0))
            goto done;
    double t0 = now_s();
    for (int step = 0; step < n; step++) {
        for (int i = 0; i < B; i++) {
            toks[i] = b->tokens[(step * 31 + i) % b->n_tokens];
            items[i] = (dl_batch_item){seqs[i], &toks[i], 1, lg + (size_t)i * V, 0};
        }
        if (dl_forward(b->c, items, B, b->err, sizeof b->err))
            goto done;
    }
    rate = (double)B * n / (now_s() - t0);
done:
    for (int i = 0; i < B; i++)
        dl_seq_free(seqs[i]);
    free(lg);
    return rate;
}

static void print_human(const bench_opts *o, const dl_model *m, double bw, double bw_lo,
                        stat3 pf, stat3 dc,
                        double dec_bytes, const int *depths, const stat3 *dd,
                        const double *dd_bytes, double gops, double peak, double batched)
{
    const dl_hparams *hp = dl_model_hparams(m);
    const dl_type_traits *tt = dl_type_info(hp->weight_type);
    printf("model       %s (%s, %s, %.0f M params, %.1f MiB of weights)\n", o->run.model,
           hp->name[0] ? hp->name : hp->arch, tt ? tt->name : "?", hp->n_params / 1e6,
           dl_model_weight_bytes(m) / 1048576.0);
    printf("threads     %d, ISA %s, attention %s\n", o->run.threads, dl_isa_name(dl_isa_active()),
           o->run.delta.enabled ? "DeltaLLM" : "dense");
    printf("bandwidth   %.2f GB/s (best of the streaming read probes taken during the run, "
           "same threads; lowest %.2f)\n", bw / 1e9, bw_lo / 1e9);
    printf("prefill     %5d tokens  %8.2f tokens/s  (spread %4.1f%%)  %.1f GOP/s\n", o->n_prompt,
           pf.median, pf.spread * 100, gops / 1e9);
    printf("decode      %5d tokens  %8.2f tokens/s  (spread %4.1f%%)  %.2f GB/s = %.1f%% of "
           "roofline\n", o->n_decode, dc.median, dc.spread * 100, dc.median * dec_bytes / 1e9,
           100 * dc.median * dec_bytes / bw);
    for (int i = 0; i < o->n_depth; i++)
        printf("decode @%-5d          %8.2f tokens/s  (spread %4.1f%%)  %.1f%% of roofline, "
               "%+.1f%% vs depth 0\n", depths[i], dd[i].median, dd[i].spread * 100,
               100 * dd[i].median * dd_bytes[i] / bw, 100 * (dd[i].median / dc.median - 1));
    if (batched > 0)
        printf("batched     %d sequences  %8.2f tokens/s aggregate (%.2fx one sequence)\n",
               o->batch_seqs, batched, batched / dc.median);
    printf("peak RSS    %.1f MiB\n", peak / 1048576.0);
}

static void print_json(const bench_opts *o, const dl_model *m, double bw, double bw_lo,
                       stat3 pf, stat3 dc,
                       double dec_bytes, const int *depths, const stat3 *dd,
                       const double *dd_bytes, double gops, double peak, double batched)
{
    const dl_hparams *hp = dl_model_hparams(m);
    const dl_type_traits *tt = dl_type_info(hp->weight_type);
    printf("{\"model\":\"%s\",\"type\":\"%s\",\"threads\":%d,\"isa\":\"%s\",\"attention\":\"%s\","
           "\"prompt_tokens\":%d,\"decode_tokens\":%d,\"reps\":%d,"
           "\"prefill_tokens_per_second\":%.3f,\"prefill_spread\":%.4f,"
           "\"prefill_ops_per_second\":%.4g,"
           "\"decode_tokens_per_second\":%.3f,\"decode_spread\":%.4f,"
           "\"decode_bytes_per_token\":%.0f,\"decode_roofline_ratio\":%.4f,"
           "\"memory_bandwidth_bytes_per_second\":%.4g,\"memory_bandwidth_lowest_probe\":%.4g,"
           "\"peak_rss_bytes\":%.0f,\"depths\":[",
           hp->name[0] ? hp->name : hp->arch, tt ? tt->name : "?", o->run.threads,
           dl_isa_name(dl_isa_active()), o->run.delta.enabled ? "delta" : "dense", o->n_prompt,
           o->n_decode, o->reps, pf.median, pf.spread, gops, dc.median, dc.spread, dec_bytes,
           dc.median * dec_bytes / bw, bw, bw_lo, peak);
    for (int i = 0; i < o->n_depth; i++)
        printf("%s{\"depth\":%d,\"decode_tokens_per_second\":%.3f,\"spread\":%.4f,"
               "\"roofline_ratio\":%.4f}", i ? "," : "", depths[i], dd[i].median, dd[i].spread,
               dd[i].median * dd_bytes[i] / bw);
    printf("]");
    if (batched > 0)
        printf(",\"batched_sequences\":%d,\"batched_decode_tokens_per_second\":%.3f",
               o->batch_seqs, batched);
    printf("}\n");
}

static int run(const bench_opts *o)
{
    bench_run b = {.o = o};
    int rc = 1, max_depth = 0;
    for (int i = 0; i < o->n_depth; i++)
        if (o->depths[i] > max_depth)
            max_depth = o->depths[i];
    int n_ctx_needed = o->n_prompt + o->n_decode;
    if (max_depth + o->n_decode > n_ctx_needed)
        n_ctx_needed = max_depth + o->n_decode;
    dl_seq *s = NULL;
    if (dl_model_load(o->run.model, &b.m, b.err, sizeof b.err))
        goto fail;
    const dl_hparams *hp = dl_model_hparams(b.m);
    int chunk = o->run.batch > o->n_prompt ? o->n_prompt : o->run.batch;
    int max_tok = chunk > o->batch_seqs ? chunk : o->batch_seqs;
    if (!(b.c = dl_ctx_create(b.m, max_tok, n_ctx_needed, o->run.threads, b.err, sizeof b.err)))
        goto fail;
    b.n_tokens = n_ctx_needed + 64;
    b.tokens = malloc((size_t)b.n_tokens * sizeof *b.tokens);
    b.logits = malloc((size_t)hp->n_vocab * sizeof *b.logits);
    if (!b.tokens || !b.logits)
        goto fail;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < b.n_tokens; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b.tokens[i] = (int32_t)(x % (uint64_t)hp->n_vocab);
    }
    /* The machine's read bandwidth varies while we run (a shared host): it is probed before,
     * between and after the measurements, and the best seen is the ceiling decode is held
     * to, so the roofline ratio errs low, never above 1 by a slow probe. */
    double bw_lo = dl_bench_membw(dl_ctx_pool(b.c)), bw = bw_lo;
#define PROBE()                                                                              \
    do {                                                                                     \
        double p_ = dl_bench_membw(dl_ctx_pool(b.c));                                        \
        bw = p_ > bw ? p_ : bw;                                                              \
        bw_lo = p_ < bw_lo ? p_ : bw_lo;                                                     \
    } while (0)

    double pf[MAX_REPS], dc[MAX_REPS], dd_raw[MAX_REPS];
    stat3 dd[MAX_DEPTHS];
    double dd_bytes[MAX_DEPTHS], dec_bytes = 0;
    for (int r = 0; r < o->reps; r++) {
        dl_seq_free(s);
        if (!(s = new_seq(&b, n_ctx_needed)))
            goto fail;
        double t0 = now_s();
        if (fill(&b, s, 0, o->n_prompt, 1))
            goto fail;
        pf[r] = o->n_prompt / (now_s() - t0);
        /* decode bytes at the middle of the decode run */
        double t = decode(&b, s, o->n_decode);
        if (t < 0)
            goto fail;
        dc[r] = o->n_decode / t;
        dec_bytes = decode_bytes(b.m, s) - dl_seq_bytes(s) / 2.0 *
                    (double)o->n_decode / dl_seq_len(s);
        PROBE();
    }
    for (int i = 0; i < o->n_depth; i++) {
        int d = o->depths[i], nd = o->n_decode < 32 ? o->n_decode : 32;
        if (dl_seq_len(s) > d && dl_seq_truncate(s, d))
            goto fail;
        if (dl_seq_len(s) < d && fill(&b, s, dl_seq_len(s), d, 0))
            goto fail;
        for (int r = 0; r < o->reps; r++) {
            double t = decode(&b, s, nd);
            if (t < 0)
                goto fail;
            dd_raw[r] = nd / t;
            dd_bytes[i] = decode_bytes(b.m, s);
            if (dl_seq_truncate(s, d))
                goto fail;
        }
        dd[i] = summarise(dd_raw, o->reps);
    }
    double batched = o->batch_seqs > 1 ? batched_decode(&b, o->batch_seqs, 32) : 0;
    PROBE();
#undef PROBE
    stat3 spf = summarise(pf, o->reps), sdc = summarise(dc, o->reps);
    /* two ops (multiply + add) per weight per token, plus q.k and p.v over half the prompt */
    double attn_ops = 4.0 * hp->n_layer * hp->n_head * hp->head_dim * (o->n_prompt / 2.0);
    double matmul_params = (double)hp->n_params;
    if (!hp->tied_output) /* the embedding is a lookup, not a matmul */
        matmul_params -= (double)hp->n_vocab * hp->n_embd;
    double gops = spf.median * (2.0 * matmul_params + attn_ops);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak = (double)ru.ru_maxrss * 1024.0;
    (o->json ? print_json : print_human)(o, b.m, bw, bw_lo, spf, sdc, dec_bytes, o->depths, dd,
                                         dd_bytes, gops, peak, batched);
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "deltallm bench: %s\n", b.err[0] ? b.err : "out of memory");
    dl_seq_free(s);
    free(b.tokens);
    free(b.logits);
    dl_ctx_free(b.c);
    dl_model_free(b.m);
    return rc;
}

int dl_cmd_bench(int argc, char **argv)
{
    bench_opts o;
    memset(&o, 0, sizeof o);
    int r = parse(&o, argc, argv);
    return r >= 0 ? r : run(&o);
}
