/* tokenize.c — `deltallm tokenize -m MODEL TEXT`: ids and pieces, one per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "tokenizer.h"

int dl_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL;
    int bos = 1, special = 0, ids_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(a, "--no-bos"))
            bos = 0;
        else if (!strcmp(a, "--special"))
            special = 1;
        else if (!strcmp(a, "--ids"))
            ids_only = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: deltallm tokenize -m MODEL [--no-bos] [--special] [--ids] TEXT\n");
            return 0;
        } else if (!text && (a[0] != '-' || a[1] == 0))
            text = a;
        else {
            fprintf(stderr, "deltallm tokenize: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!model || !text) {
        fprintf(stderr, "usage: deltallm tokenize -m MODEL [--no-bos] [--special] TEXT\n");
        return 2;
    }
    char err[512];
    dl_gguf *g;
    dl_tokenizer *t;
    if (dl_gguf_open(model, &g, err, sizeof err)) {
        fprintf(stderr, "deltallm tokenize: %s\n", err);
        return 1;
    }
    int rc = dl_tokenizer_from_gguf(g, &t, err, sizeof err);
    dl_gguf_close(g);
    if (rc) {
        fprintf(stderr, "deltallm tokenize: %s\n", err);
        return 1;
    }
    size_t len = strlen(text);
    int add_bos = bos && dl_tokenizer_add_bos(t);
    int n = dl_tokenize(t, text, len, add_bos, special, NULL, 0);
    int32_t *ids = n >= 0 ? malloc(((size_t)n + 1) * sizeof *ids) : NULL;
    if (!ids || dl_tokenize(t, text, len, add_bos, special, ids, n) != n) {
        fprintf(stderr, "deltallm tokenize: failed\n");
        free(ids);
        dl_tokenizer_free(t);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (ids_only) {
            printf(i ? " %d" : "%d", ids[i]);
            continue;
        }
        char piece[256];
        int pn = dl_token_to_piece(t, ids[i], 1, piece, sizeof piece);
        if (pn > (int)sizeof piece)
            pn = (int)sizeof piece;
        printf("%6d -> '", ids[i]);
        for (int j = 0; j < pn; j++) {
            unsigned char ch = (unsigned char)piece[j];
            if (ch == '\n')
                fputs("\\n", stdout);
            else if (ch < 32)
                printf("\\x%02x", ch);
            else
                putchar(ch);
        }
        puts("'");
    }
    if (ids_only)
        putchar('\n');
    free(ids);
    dl_tokenizer_free(t);
    return 0;
}
