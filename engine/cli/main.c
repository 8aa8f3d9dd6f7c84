/* deltallm — command-line tool over the engine library.
 *
 *   deltallm generate -m MODEL [-p PROMPT] [-n N] [--temp T] [--seed S] ...
 *   deltallm tokenize -m MODEL TEXT
 *   deltallm inspect MODEL
 *
 * Exit codes: 0 success, 1 runtime failure (bad model file, ...), 2 usage error.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fputs("usage: deltallm COMMAND [options]\n"
          "\n"
          "commands:\n"
          "  generate  -m MODEL [-p PROMPT] [-n N] [sampling and delta options]\n"
          "            generate text from a prompt (greedy with --temp 0)\n"
          "  tokenize  -m MODEL [--no-bos] [--special] TEXT\n"
          "            print the token ids and pieces of TEXT\n"
          "  inspect   MODEL\n"
          "            print metadata, tensors, types, parameter count and memory needs\n"
          "  synth     --shape NAME --type TYPE -o FILE\n"
          "            write a random-weight GGUF with the shapes of a real model\n"
          "  bench     -m MODEL [-t N] [-p 512] [-n 128] [--depth 2048,4096] [--json]\n"
          "            prefill / decode speed, memory, and ratios to the machine's limits\n"
          "  bench-attn [--depth 512,2048,4096]\n"
          "            DeltaLLM vs dense attention time and K-cache bytes\n"
          "  eval      -m MODEL -f TEXT [--ctx 256] [--sweep] | --task T -f FILE\n"
          "            DeltaLLM vs dense: perplexity, KL, top-1 agreement, sparsity, tasks\n"
          "  pull      [--models-dir DIR] [--path-only] [--offline] NAME | --list\n"
          "            find a known model locally (or download it) and check its sha256\n"
          "\n"
          "Run 'deltallm COMMAND --help' for the options of a command.\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    static const struct { const char *name; int (*fn)(int, char **); } cmds[] = {
        {"generate", dl_cmd_generate},
        {"tokenize", dl_cmd_tokenize},
        {"inspect", dl_cmd_inspect},
        {"synth", dl_cmd_synth},
        {"bench", dl_cmd_bench},
        {"eval", dl_cmd_eval},
        {"bench-attn", dl_cmd_bench_attn},
        {"pull", dl_cmd_pull},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i].name))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "deltallm: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
