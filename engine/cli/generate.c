/* generate.c — `deltallm generate`: prompt in, text out, timings on stderr.
 *
 * The prompt is prefilled in chunks of --batch tokens, then tokens are sampled one at a
 * time. Text goes to stdout exactly as generated (no newline added), so that greedy output
 * can be compared byte for byte; everything else goes to stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#define MAX_STOPS 8

typedef struct gen_opts {
    dl_run_opts run;
    dl_sampler_params sp;
    const char *prompt;
    int n_predict;
    int ignore_eos;
    int special;       /* parse special tokens in the prompt and print them in output */
    int quiet;         /* no stats on stderr */
    const char *stops[MAX_STOPS];
    int n_stops;
} gen_opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: deltallm generate -m MODEL [-p PROMPT] [options]\n\n"
               "  -p, --prompt TEXT       prompt (default: empty, i.e. BOS only)\n"
               "  -n, --n-predict N       tokens to generate (default 128)\n"
               "  --temp T                temperature; 0 = greedy (default 0.8)\n"
               "  --top-k K               (default 40; 0 = off)\n"
               "  --top-p P               (default 0.95)\n"
               "  --min-p P               (default 0.05)\n"
               "  --repeat-penalty R      (default 1.0 = off)\n"
               "  --presence-penalty P    (default 0)\n"
               "  --frequency-penalty P   (default 0)\n"
               "  --seed S                (default 0)\n"
               "  --stop TEXT             stop string (repeatable, up to %d)\n"
               "  --ignore-eos            keep generating past end-of-sequence\n"
               "  --special               parse and print special tokens\n"
               "  -q, --quiet             no statistics on stderr\n"
               "%s",
            MAX_STOPS, dl_run_opts_help);
}

static int parse(gen_opts *o, int argc, char **argv)
{
    dl_run_opts_default(&o->run);
    dl_sampler_params_default(&o->sp);
    o->sp.temperature = 0.8f;
    o->sp.top_k = 40;
    o->sp.top_p = 0.95f;
    o->sp.min_p = 0.05f;
    o->prompt = "";
    o->n_predict = 128;
    for (int i = 1; i < argc; i++) {
        int r = dl_run_opts_parse(&o->run, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        double d;
#define IS(s) (!strcmp(a, s))
        if (IS("-h") || IS("--help")) {
            usage(stdout);
            return 0;
        } else if (IS("--ignore-eos")) {
            o->ignore_eos = 1;
            continue;
        } else if (IS("--special")) {
            o->special = 1;
            continue;
        } else if (IS("-q") || IS("--quiet")) {
            o->quiet = 1;
            continue;
        } else if (IS("-p") || IS("--prompt")) {
            if (!val) {
                fprintf(stderr, "deltallm: %s needs a value\n", a);
                return 2;
            }
            o->prompt = val;
        } else if (IS("-n") || IS("--n-predict")) {
            if (dl_cli_int(a, val, 0, 1 << 24, &l))
                return 2;
            o->n_predict = (int)l;
        } else if (IS("--temp")) {
            if (dl_cli_float(a, val, 0, 100, &d))
                return 2;
            o->sp.temperature = (float)d;
        } else if (IS("--top-k")) {
            if (dl_cli_int(a, val, 0, 1 << 30, &l))
                return 2;
            o->sp.top_k = (int32_t)l;
        } else if (IS("--top-p")) {
            if (dl_cli_float(a, val, 0, 1, &d))
                return 2;
            o->sp.top_p = (float)d;
        } else if (IS("--min-p")) {
            if (dl_cli_float(a, val, 0, 1, &d))
                return 2;
            o->sp.min_p = (float)d;
        } else if (IS("--repeat-penalty")) {
            if (dl_cli_float(a, val, 0.01, 100, &d))
                return 2;
            o->sp.repeat_penalty = (float)d;
        } else if (IS("--presence-penalty")) {
            if (dl_cli_float(a, val, -2, 2, &d))
                return 2;
            o->sp.presence_penalty = (float)d;
        } else if (IS("--frequency-penalty")) {
            if (dl_cli_float(a, val, -2, 2, &d))
                return 2;
            o->sp.frequency_penalty = (float)d;
        } else if (IS("--seed")) {
            if (dl_cli_int(a, val, 0, 0x7fffffffL, &l))
                return 2;
            o->sp.seed = (uint64_t)l;
        } else if (IS("--stop")) {
            if (!val || o->n_stops == MAX_STOPS) {
                fprintf(stderr, "deltallm: --stop needs a value (at most %d)\n", MAX_STOPS);
                return 2;
            }
            o->stops[o->n_stops++] = val;
        } else {
            fprintf(stderr, "deltallm generate: unknown option '%s'\n", a);
            return 2;
        }
#undef IS
        i++;
    }
    if (!o->run.model) {
        fprintf(stderr, "deltallm generate: -m MODEL is required\n");
        return 2;
    }
    return -1;
}

/* Output with stop strings: text is held back while it could be the start of a stop. */
typedef struct out_buf {
    char *text;
    size_t len, cap, emitted;
    int stopped;
} out_buf;

static void out_add(out_buf *b, const gen_opts *o, const char *s, int n)
{
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *t = realloc(b->text, cap);
        if (!t)
            return;
        b->text = t;
        b->cap = cap;
    }
    memcpy(b->text + b->len, s, (size_t)n);
    b->len += (size_t)n;
    size_t partial = 0, end = b->len;
    int at = dl_find_stop(b->text, b->len, o->stops, o->n_stops, &partial);
    if (at >= 0) {
        end = (size_t)at;
        b->stopped = 1;
    } else {
        end = b->len - partial;
    }
    if (end > b->emitted) {
        fwrite(b->text + b->emitted, 1, end - b->emitted, stdout);
        fflush(stdout);
        b->emitted = end;
    }
}

static int run(const gen_opts *o)
{
    char err[512];
    int rc = 1;
    dl_model *m = NULL;
    dl_ctx *c = NULL;
    dl_seq *s = NULL;
    dl_sampler *smp = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    out_buf ob = {0};
    double t0 = now_s();
    if (dl_model_load(o->run.model, &m, err, sizeof err)) {
        fprintf(stderr, "deltallm: %s\n", err);
        return 1;
    }
    const dl_hparams *hp = dl_model_hparams(m);
    const dl_tokenizer *tok = dl_model_tokenizer(m);
    int n_ctx = o->run.ctx ? o->run.ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    int n_prompt = dl_tokenize(tok, o->prompt, strlen(o->prompt), dl_tokenizer_add_bos(tok),
                               o->special, NULL, 0);
    if (n_prompt < 0 || !(ids = malloc(((size_t)n_prompt + 1) * sizeof *ids)) ||
        dl_tokenize(tok, o->prompt, strlen(o->prompt), dl_tokenizer_add_bos(tok), o->special,
                    ids, n_prompt) != n_prompt) {
        fprintf(stderr, "deltallm: could not tokenize the prompt\n");
        goto done;
    }
    if (n_prompt == 0) { /* no BOS in this vocabulary and an empty prompt */
        fprintf(stderr, "deltallm: the prompt is empty and the model has no BOS token\n");
        goto done;
    }
    if (n_prompt + o->n_predict > n_ctx) {
        fprintf(stderr, "deltallm: prompt (%d tokens) + %d to generate exceed the context "
                "of %d (use --ctx)\n", n_prompt, o->n_predict, n_ctx);
        goto done;
    }
    c = dl_ctx_create(m, o->run.batch, n_ctx, o->run.threads, err, sizeof err);
    s = c ? dl_seq_create(m, n_ctx, &o->run.delta, err, sizeof err) : NULL;
    smp = dl_sampler_create(&o->sp, hp->n_vocab);
    logits = malloc((size_t)hp->n_vocab * sizeof *logits);
    if (!c || !s || !smp || !logits) {
        fprintf(stderr, "deltallm: %s\n", (!c || !s) ? err : "out of memory");
        goto done;
    }
    for (int i = 0; i < n_prompt; i++)
        dl_sampler_accept(smp, ids[i]);

    double t1 = now_s();
    for (int p = 0; p < n_prompt; p += o->run.batch) {
        int n = n_prompt - p < o->run.batch ? n_prompt - p : o->run.batch;
        dl_batch_item it = {s, ids + p, n, p + n == n_prompt ? logits : NULL, 0};
        if (dl_forward(c, &it, 1, err, sizeof err)) {
            fprintf(stderr, "deltallm: %s\n", err);
            goto done;
        }
    }
    double t2 = now_s();

    /* SentencePiece vocabularies: the piece right after BOS loses its leading space,
     * as llama.cpp and llama2.c print it. */
    int strip_space = !strcmp(dl_tokenizer_model(tok), "llama");
    int32_t prev = ids[n_prompt - 1];
    dl_utf8_stream us;
    dl_utf8_stream_init(&us);
    int n_gen = 0;
    char piece[256], text[300];
    for (; n_gen < o->n_predict && !ob.stopped; n_gen++) {
        int32_t next = dl_sampler_sample(smp, logits, NULL);
        dl_sampler_accept(smp, next);
        if (!o->ignore_eos && dl_tokenizer_is_eog(tok, next))
            break;
        int n = dl_token_to_piece(tok, next, o->special, piece, sizeof piece);
        if (n > (int)sizeof piece)
            n = (int)sizeof piece;
        const char *pc = piece;
        if (strip_space && prev == dl_tokenizer_bos(tok) && n > 0 && pc[0] == ' ') {
            pc++;
            n--;
        }
        int tn = dl_utf8_stream_feed(&us, pc, n, text, sizeof text);
        out_add(&ob, o, text, tn);
        prev = next;
        if (n_gen + 1 == o->n_predict)
            break; /* the last token needs no forward pass */
        dl_batch_item it = {s, &next, 1, logits, 0};
        if (dl_forward(c, &it, 1, err, sizeof err)) {
            fprintf(stderr, "\ndeltallm: %s\n", err);
            goto done;
        }
    }
    if (n_gen < o->n_predict)
        n_gen++; /* count the token that ended the loop early (EOS or stop) */
    int tn = dl_utf8_stream_flush(&us, text, sizeof text);
    out_add(&ob, o, text, tn);
    if (!ob.stopped && ob.emitted < ob.len)
        fwrite(ob.text + ob.emitted, 1, ob.len - ob.emitted, stdout);
    fflush(stdout);
    double t3 = now_s();
    if (!o->quiet) {
        fprintf(stderr, "\n\nload %.0f ms | prompt %d tokens, %.1f tokens/s | generated %d "
                "tokens, %.1f tokens/s | %d threads\n",
                (t1 - t0) * 1e3, n_prompt, n_prompt / (t2 - t1 + 1e-9), n_gen,
                (n_gen > 1 ? n_gen - 1 : 1) / (t3 - t2 + 1e-9), o->run.threads);
        const dl_delta_stats *ds = dl_seq_delta_stats(s);
        for (int st = 0; ds && st < 2; st++)
            fprintf(stderr, "delta %s: element sparsity %.3f, attention sparsity %.3f, QK work "
                    "skipped %.3f\n", st ? "decode" : "prefill",
                    dl_delta_element_sparsity(&ds->stage[st]),
                    dl_delta_attention_sparsity(&ds->stage[st]),
                    dl_delta_qk_skipped(&ds->stage[st]));
        if (ds)
            fprintf(stderr, "delta K cache %llu bytes (dense fp16 %llu)\n",
                    (unsigned long long)ds->k_cache_bytes,
                    (unsigned long long)ds->k_cache_dense_bytes);
    }
    rc = 0;
done:
    free(ob.text);
    free(logits);
    free(ids);
    dl_sampler_free(smp);
    dl_seq_free(s);
    dl_ctx_free(c);
    dl_model_free(m);
    return rc;
}

int dl_cmd_generate(int argc, char **argv)
{
    gen_opts o;
    memset(&o, 0, sizeof o);
    int r = parse(&o, argc, argv);
    if (r >= 0)
        return r;
    return run(&o);
}
