/* bench_attn.c — `deltallm bench-attn`: DeltaLLM attention against dense attention at
 * several context depths, on the llama3.2-1b attention shape, with the cache bytes each
 * needs. Synthetic random-walk keys; theta chosen by the engine for --target. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "delta_bench.h"
#include "kernels.h"

int dl_cmd_bench_attn(int argc, char **argv)
{
    dl_delta_bench_config cfg;
    dl_delta_bench_default(&cfg);
    int depths[8] = {512, 2048, 4096}, n_depth = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: deltallm bench-attn [--depth 512,2048,4096] [-t N] [--target S] "
                   "[--window W] [--reps R] [--json]\n");
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "--depth")) {
            n_depth = 0;
            for (char *p = val ? strdup(val) : NULL, *f = p, *tok = p ? strtok(p, ",") : NULL;
                 tok || (free(f), 0); tok = strtok(NULL, ",")) {
                if (n_depth == 8 || dl_cli_int("--depth", tok, 16, 1 << 18, &l)) {
                    free(f);
                    return 2;
                }
                depths[n_depth++] = (int)l;
            }
            if (!n_depth)
                return 2;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (dl_cli_int(a, val, 1, 256, &l))
                return 2;
            cfg.n_threads = (int)l;
        } else if (!strcmp(a, "--target")) {
            if (dl_cli_float(a, val, 0, 0.999, &d))
                return 2;
            cfg.sparsity_target = (float)d;
        } else if (!strcmp(a, "--window")) {
            if (dl_cli_int(a, val, 1, 1 << 16, &l))
                return 2;
            cfg.window = (int)l;
        } else if (!strcmp(a, "--reps")) {
            if (dl_cli_int(a, val, 1, 100, &l))
                return 2;
            cfg.reps = (int)l;
        } else {
            fprintf(stderr, "deltallm bench-attn: unknown option '%s'\n", a);
            return 2;
        }
        i++;
    }
    if (!json)
        printf("attention, %d q / %d kv heads of %d, target element sparsity %.2f, window %d, "
               "%d threads, ISA %s\n"
               "scores: the q.k score product alone (dense: every key from fp16 K; delta: "
               "exact window + delta accumulation; the score phase of the same fused kernels, "
               "timed inside them in separate runs so that the clock reads stay out of the "
               "end-to-end times). "
               "engine: attention.c's dl_attn_dense, the "
               "path a sequence without delta attention runs. prefill includes storing K/V "
               "(delta: encoding); decode is per layer, one token.\n"
               "| depth | theta | elem sp | attn sp | scores prefill dense/delta ms | x | "
               "scores decode dense/delta us | x | prefill engine/dense/delta ms | x engine | "
               "decode engine/dense/delta us | x engine | K bytes | dense K bytes | K ratio |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
               cfg.n_head, cfg.n_kv, cfg.head_dim, cfg.sparsity_target, cfg.window,
               cfg.n_threads, dl_isa_name(dl_isa_active()));
    for (int i = 0; i < n_depth; i++) {
        dl_delta_bench_result r;
        char err[256];
        cfg.ctx = depths[i];
        if (dl_delta_bench(&cfg, &r, err, sizeof err)) {
            fprintf(stderr, "deltallm bench-attn: %s\n", err);
            return 1;
        }
        if (json)
            printf("{\"depth\":%d,\"theta\":%g,\"element_sparsity\":%.4f,"
                   "\"attention_sparsity\":%.4f,\"prefill_dense_ms\":%.3f,"
                   "\"prefill_delta_ms\":%.3f,\"prefill_engine_dense_ms\":%.3f,"
                   "\"prefill_dense_scores_ms\":%.3f,\"prefill_delta_scores_ms\":%.3f,"
                   "\"decode_dense_us\":%.2f,\"decode_delta_us\":%.2f,"
                   "\"decode_engine_dense_us\":%.2f,\"decode_dense_scores_us\":%.2f,"
                   "\"decode_delta_scores_us\":%.2f,\"k_cache_bytes\":%llu,"
                   "\"k_cache_dense_bytes\":%llu,\"v_cache_bytes\":%llu}\n",
                   depths[i], r.theta, r.element_sparsity, r.attention_sparsity,
                   r.prefill_dense_ms, r.prefill_delta_ms, r.prefill_engine_dense_ms,
                   r.prefill_dense_scores_ms, r.prefill_delta_scores_ms, r.decode_dense_us,
                   r.decode_delta_us, r.decode_engine_dense_us, r.decode_dense_scores_us,
                   r.decode_delta_scores_us, (unsigned long long)r.k_bytes,
                   (unsigned long long)r.k_dense_bytes, (unsigned long long)r.v_bytes);
        else
            printf("| %5d | %.3f | %5.1f%% | %5.1f%% | %.2f / %.2f | %4.2fx | %.1f / %.1f | "
                   "%4.2fx | %.2f / %.2f / %.2f | %4.2fx | %.1f / %.1f / %.1f | %4.2fx | %llu | "
                   "%llu | %4.1f%% |\n", depths[i], r.theta, 100 * r.element_sparsity,
                   100 * r.attention_sparsity, r.prefill_dense_scores_ms,
                   r.prefill_delta_scores_ms, r.prefill_dense_scores_ms / r.prefill_delta_scores_ms,
                   r.decode_dense_scores_us, r.decode_delta_scores_us,
                   r.decode_dense_scores_us / r.decode_delta_scores_us, r.prefill_engine_dense_ms,
                   r.prefill_dense_ms, r.prefill_delta_ms,
                   r.prefill_engine_dense_ms / r.prefill_delta_ms, r.decode_engine_dense_us,
                   r.decode_dense_us, r.decode_delta_us,
                   r.decode_engine_dense_us / r.decode_delta_us, (unsigned long long)r.k_bytes,
                   (unsigned long long)r.k_dense_bytes, 100.0 * r.k_bytes / r.k_dense_bytes);
        fflush(stdout);
    }
    return 0;
}
