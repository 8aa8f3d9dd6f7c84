/* cli.h — the deltallm subcommands and their shared option parsing. */
#ifndef DL_CLI_H
#define DL_CLI_H

#include "delta.h"
#include "sampler.h"

/* Each subcommand gets argv with argv[0] = its own name; returns the exit code. */
int dl_cmd_generate(int argc, char **argv);
int dl_cmd_tokenize(int argc, char **argv);
int dl_cmd_inspect(int argc, char **argv);
int dl_cmd_synth(int argc, char **argv);
int dl_cmd_bench(int argc, char **argv);
int dl_cmd_eval(int argc, char **argv);
int dl_cmd_bench_attn(int argc, char **argv);
int dl_cmd_pull(int argc, char **argv);

/* Parsing helpers: 0 on success, -1 with a message on stderr naming the option. */
int dl_cli_int(const char *opt, const char *val, long lo, long hi, long *out);
int dl_cli_float(const char *opt, const char *val, double lo, double hi, double *out);

/* Options shared by commands that run the model: returns 1 when argv[*i] was one of them
 * (consuming its value), 0 when it is not, -1 on a bad value. */
typedef struct dl_run_opts {
    const char *model;
    int threads;
    int ctx;      /* 0: the model's training context, capped at 4096 */
    int batch;    /* prompt tokens per forward call */
    dl_delta_params delta;
    int prefill_window_set; /* --delta-prefill-window was given */
} dl_run_opts;

void dl_run_opts_default(dl_run_opts *o);
int dl_run_opts_parse(dl_run_opts *o, int argc, char **argv, int *i);
extern const char *const dl_run_opts_help;

#endif
