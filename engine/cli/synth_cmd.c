/* synth_cmd.c — `deltallm synth --shape NAME --type TYPE -o FILE`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "quant.h"
#include "synth.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: deltallm synth --shape NAME --type TYPE -o FILE [--seed S] "
               "[--shared DIR]\n\nshapes:");
    for (const char *const *s = dl_synth_shapes(); *s; s++)
        fprintf(f, " %s", *s);
    fprintf(f, "\ntypes: F32 F16 BF16 Q8_0 Q4_0 Q4_K (the Q4_K_M mix) Q6_K\n"
               "--shared: folder with models/ (vocabulary sources; default ../shared)\n");
}

/* A type name as llama.cpp spells it; Q4_K_M is accepted for the Q4_K mix. */
static int parse_type(const char *s, uint32_t *out)
{
    if (!strcasecmp(s, "Q4_K_M")) {
        *out = DL_TYPE_Q4_K;
        return 0;
    }
    for (uint32_t t = 0; t < DL_TYPE_COUNT; t++) {
        const dl_type_traits *tt = dl_type_info(t);
        if (tt && tt->can_matmul && !strcasecmp(tt->name, s)) {
            *out = t;
            return 0;
        }
    }
    return -1;
}

int dl_cmd_synth(int argc, char **argv)
{
    const char *shape = NULL, *out = NULL, *shared = "../shared";
    uint32_t type = DL_TYPE_COUNT;
    long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "deltallm synth: %s needs a value\n", a);
            return 2;
        }
        const char *val = argv[++i];
        if (!strcmp(a, "--shape"))
            shape = val;
        else if (!strcmp(a, "--type")) {
            if (parse_type(val, &type)) {
                fprintf(stderr, "deltallm synth: unknown --type '%s'\n", val);
                return 2;
            }
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            out = val;
        else if (!strcmp(a, "--shared"))
            shared = val;
        else if (!strcmp(a, "--seed")) {
            if (dl_cli_int(a, val, 0, 0x7fffffffL, &seed))
                return 2;
        } else {
            fprintf(stderr, "deltallm synth: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!shape || !out || type == DL_TYPE_COUNT) {
        usage(stderr);
        return 2;
    }
    char err[512];
    if (dl_synth_write(shape, type, out, (uint64_t)seed, shared, err, sizeof err)) {
        fprintf(stderr, "deltallm synth: %s\n", err);
        return 1;
    }
    return 0;
}
