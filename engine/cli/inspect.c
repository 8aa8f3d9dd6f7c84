/* inspect.c — `deltallm inspect MODEL`: what a GGUF file holds and what it will cost. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"

static void print_bytes(const char *label, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    printf("%-28s %.2f %s\n", label, b, u[i]);
}

static void print_tensors(const dl_gguf *g, int all)
{
    int64_t n = dl_gguf_n_tensors(g);
    uint64_t per_type[DL_TYPE_COUNT] = {0};
    int64_t per_type_n[DL_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < n; i++) {
        const dl_gguf_tensor *t = dl_gguf_tensor_at(g, i);
        const dl_type_traits *tt = dl_type_info(t->type);
        if (t->type < DL_TYPE_COUNT) {
            per_type[t->type] += t->nbytes;
            per_type_n[t->type]++;
        }
        if (all || i < 12 || i >= n - 3)
            printf("  %-32.*s %-5s [%lld, %lld, %lld, %lld] %llu bytes\n", (int)t->name.len,
                   t->name.ptr, tt ? tt->name : "?", (long long)t->ne[0], (long long)t->ne[1],
                   (long long)t->ne[2], (long long)t->ne[3], (unsigned long long)t->nbytes);
        else if (i == 12)
            printf("  ... (%lld more; --all lists every tensor)\n", (long long)(n - 15));
    }
    printf("tensor types:\n");
    for (int t = 0; t < DL_TYPE_COUNT; t++)
        if (per_type_n[t])
            printf("  %-6s %5lld tensors, %llu bytes\n", dl_type_info((uint32_t)t)->name,
                   (long long)per_type_n[t], (unsigned long long)per_type[t]);
}

int dl_cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--all"))
            all = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: deltallm inspect [--all] MODEL\n");
            return 0;
        } else if (!path)
            path = argv[i];
        else {
            fprintf(stderr, "deltallm inspect: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "usage: deltallm inspect [--all] MODEL\n");
        return 2;
    }
    char err[512];
    dl_gguf *g;
    if (dl_gguf_open(path, &g, err, sizeof err)) {
        fprintf(stderr, "deltallm inspect: %s\n", err);
        return 1;
    }
    printf("file: %s\nGGUF version %u, %llu bytes, alignment %u\n", path, dl_gguf_version(g),
           (unsigned long long)dl_gguf_file_size(g), dl_gguf_alignment(g));
    printf("metadata (%lld keys):\n", (long long)dl_gguf_n_kv(g));
    for (int64_t i = 0; i < dl_gguf_n_kv(g); i++) {
        char buf[160];
        dl_str k = dl_gguf_key_name(g, i);
        dl_gguf_format_value(g, i, buf, sizeof buf);
        printf("  %-44.*s = %s\n", (int)k.len, k.ptr, buf);
    }
    printf("tensors (%lld):\n", (long long)dl_gguf_n_tensors(g));
    print_tensors(g, all);
    dl_gguf_close(g);

    dl_model *m;
    if (dl_model_load(path, &m, err, sizeof err)) {
        printf("model: not loadable for inference: %s\n", err);
        return 0;
    }
    const dl_hparams *hp = dl_model_hparams(m);
    const dl_type_traits *wt = dl_type_info(hp->weight_type);
    printf("model:\n");
    printf("  %-26s %s\n", "architecture", hp->arch);
    printf("  %-26s %s\n", "name", hp->name[0] ? hp->name : "(none)");
    printf("  %-26s %d\n", "layers", hp->n_layer);
    printf("  %-26s %d\n", "width", hp->n_embd);
    printf("  %-26s %d query / %d key-value, %d wide\n", "heads", hp->n_head, hp->n_head_kv,
           hp->head_dim);
    printf("  %-26s %d\n", "feed-forward width", hp->n_ff);
    printf("  %-26s %d\n", "vocabulary", hp->n_vocab);
    printf("  %-26s %d\n", "training context", hp->n_ctx_train);
    printf("  %-26s %g\n", "RoPE base", hp->rope_base);
    printf("  %-26s %g\n", "RMSNorm epsilon", hp->rms_eps);
    printf("  %-26s %s\n", "output head", hp->tied_output ? "tied to embedding" : "separate");
    printf("  %-26s %s\n", "weight type", wt ? wt->name : "?");
    printf("  %-26s %s\n", "tokenizer", dl_tokenizer_model(dl_model_tokenizer(m)));
    printf("  %-26s %.3f M\n", "parameters", hp->n_params / 1e6);
    print_bytes("  weights (mapped)", (double)dl_model_weight_bytes(m));
    if (dl_model_packed_bytes(m))
        print_bytes("  of which repacked at load", (double)dl_model_packed_bytes(m));
    size_t per_tok = dl_model_kv_bytes_per_token(m);
    int ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    printf("  %-26s %zu bytes per token\n", "dense fp16 K+V cache", per_tok);
    char label[64];
    snprintf(label, sizeof label, "  K+V cache at %d tokens", ctx);
    print_bytes(label, (double)per_tok * ctx);
    char cerr[256];
    dl_ctx *c = dl_ctx_create(m, 512, ctx, 1, cerr, sizeof cerr);
    if (c) {
        print_bytes("  scratch (512-token batch)", (double)dl_ctx_bytes(c));
        print_bytes("  total for one sequence", (double)(dl_model_weight_bytes(m) +
                                                          per_tok * ctx + dl_ctx_bytes(c)));
        dl_ctx_free(c);
    }
    dl_model_free(m);
    return 0;
}
