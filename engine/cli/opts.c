/* opts.c — option parsing shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int dl_cli_int(const char *opt, const char *val, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = val ? strtol(val, &end, 10) : 0;
    if (!val || errno || end == val || *end || v < lo || v > hi) {
        fprintf(stderr, "deltallm: %s needs an integer in [%ld, %ld], got '%s'\n", opt, lo, hi,
                val ? val : "");
        return -1;
    }
    *out = v;
    return 0;
}

int dl_cli_float(const char *opt, const char *val, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = val ? strtod(val, &end) : 0;
    if (!val || errno || end == val || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "deltallm: %s needs a number in [%g, %g], got '%s'\n", opt, lo, hi,
                val ? val : "");
        return -1;
    }
    *out = v;
    return 0;
}

const char *const dl_run_opts_help =
    "  -m, --model FILE        GGUF model file\n"
    "  -t, --threads N         threads (default 2)\n"
    "  -c, --ctx N             context size (default: the model's, at most 4096)\n"
    "  -b, --batch N           prompt tokens per forward pass (default 512)\n"
    "  --delta                 enable DeltaLLM attention (default off)\n"
    "  --delta-theta T         delta threshold in key units\n"
    "  --delta-target S        target element sparsity in [0,1) (picks theta per layer)\n"
    "  --delta-window W        exact keys kept per query (window)\n"
    "  --delta-prefill-window W  exact keys per query in a sliding prefill (0: = window)\n"
    "  --delta-layer-offsets a,b,..  per-layer additions to the target (deltallm eval\n"
    "                          --calibrate prints them; one per layer)\n"
    "  --delta-sink N          first N positions always exact\n"
    "  --delta-stages S        prefill | decode | both\n"
    "  --delta-prefill-mode M  sliding | block\n"
    "  --delta-block-frac F    block mode window as a fraction of the prompt\n"
    "  --delta-lag F           a stored key element stops F * theta short of the key, [0,1]\n";

void dl_run_opts_default(dl_run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->batch = 512;
    dl_delta_params_default(&o->delta);
    o->delta.enabled = 0;
}

int dl_run_opts_parse(dl_run_opts *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
    long l;
    double d;
#define IS(s) (!strcmp(a, s))
    if (IS("--delta")) {
        o->delta.enabled = 1;
        return 1;
    }
    if (IS("-m") || IS("--model")) {
        if (!val) {
            fprintf(stderr, "deltallm: %s needs a file\n", a);
            return -1;
        }
        o->model = val;
    } else if (IS("-t") || IS("--threads")) {
        if (dl_cli_int(a, val, 1, 256, &l))
            return -1;
        o->threads = (int)l;
    } else if (IS("-c") || IS("--ctx")) {
        if (dl_cli_int(a, val, 1, 1 << 20, &l))
            return -1;
        o->ctx = (int)l;
    } else if (IS("-b") || IS("--batch")) {
        if (dl_cli_int(a, val, 1, 8192, &l))
            return -1;
        o->batch = (int)l;
    } else if (IS("--delta-theta")) {
        if (dl_cli_float(a, val, 0, 1e6, &d))
            return -1;
        o->delta.theta = (float)d;
        o->delta.sparsity_target = -1;
        o->delta.enabled = 1;
    } else if (IS("--delta-target")) {
        if (dl_cli_float(a, val, 0, 0.999, &d))
            return -1;
        o->delta.sparsity_target = (float)d;
        o->delta.enabled = 1;
    } else if (IS("--delta-window")) {
        if (dl_cli_int(a, val, 1, 1 << 20, &l))
            return -1;
        o->delta.window = (int32_t)l;
    } else if (IS("--delta-prefill-window")) {
        if (dl_cli_int(a, val, 0, 1 << 20, &l))
            return -1;
        o->delta.prefill_window = (int32_t)l;
        o->prefill_window_set = 1;
    } else if (IS("--delta-layer-offsets")) {
        char err[160];
        if (dl_delta_parse_offsets(val ? val : "", &o->delta, err, sizeof err)) {
            fprintf(stderr, "deltallm: --delta-layer-offsets: %s\n", err);
            return -1;
        }
    } else if (IS("--delta-sink")) {
        if (dl_cli_int(a, val, 0, 1 << 20, &l))
            return -1;
        o->delta.sink = (int32_t)l;
    } else if (IS("--delta-stages")) {
        if (val && !strcmp(val, "prefill"))
            o->delta.stages = DL_STAGE_PREFILL;
        else if (val && !strcmp(val, "decode"))
            o->delta.stages = DL_STAGE_DECODE;
        else if (val && !strcmp(val, "both"))
            o->delta.stages = DL_STAGE_BOTH;
        else {
            fprintf(stderr, "deltallm: --delta-stages must be prefill, decode or both\n");
            return -1;
        }
    } else if (IS("--delta-prefill-mode")) {
        if (val && !strcmp(val, "sliding"))
            o->delta.prefill_mode = DL_PREFILL_SLIDING;
        else if (val && !strcmp(val, "block"))
            o->delta.prefill_mode = DL_PREFILL_BLOCK;
        else {
            fprintf(stderr, "deltallm: --delta-prefill-mode must be sliding or block\n");
            return -1;
        }
    } else if (IS("--delta-block-frac")) {
        if (dl_cli_float(a, val, 1e-6, 1, &d))
            return -1;
        o->delta.block_frac = (float)d;
    } else if (IS("--delta-lag")) {
        if (dl_cli_float(a, val, 0, 1, &d))
            return -1;
        o->delta.lag = (float)d;
    } else {
        return 0;
    }
#undef IS
    (*i)++;
    return 1;
}
