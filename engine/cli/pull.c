/* pull.c — `deltallm pull NAME`: find a known model in the local model folders, or download
 * it with the curl binary, and check its sha256 either way.
 *
 * Local folders are searched first, in this order: --models-dir, $DELTALLM_MODELS,
 * ~/.cache/deltallm, /var/lib/deltallm/models, ../shared/models. A copy whose sha256 differs
 * from the published one is refused (and named), never used. Downloads go to the first
 * writable of --models-dir, $DELTALLM_MODELS, ~/.cache/deltallm, as FILE.part, and are only
 * renamed into place once verified. Where no checksum could be found for a model the table
 * says so, and pull prints that the file was NOT verified, with the sha256 it computed.
 *
 * Exit codes: 0 the path is on stdout; 1 nothing usable found or fetched; 2 usage error
 * (unknown NAME included).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "sha256.h"

typedef struct pull_file {
    const char *name;   /* file name in a model folder */
    const char *sha256; /* published checksum, NULL where none could be found */
} pull_file;

typedef struct pull_model {
    const char *name;    /* what the user types, matched case-insensitively */
    const char *what;    /* one line for --list */
    const char *url;     /* download address of files[dl] */
    pull_file files[2];  /* accepted local copies, in order of preference */
    int dl;              /* which of files the download address delivers */
} pull_model;

/* Addresses and checksums as found in public sources (see the README's model table). */
static const pull_model models[] = {
    {"stories260k", "Karpathy's tinyllamas stories260K, F32 (1.2 MB; the test model)",
     "https://raw.githubusercontent.com/crabml/crabml/0151f893c2ef86192bfb24fc7823779391bf0ea3/"
     "testdata/tinyllamas-stories-260k-f32.gguf",
     /* the same weights rewritten losslessly as GGUF v3 (../shared/models/SOURCES.md); it
      * is preferred locally because llama.cpp reads it too, but only the v1 is published */
     {{"tinyllamas-stories-260k-f32.v3.gguf",
       "3c4a7c3a8313e00ae6a6b64df717828f4ba18391ea31ffb01abe9a2c4f7bb9a9"},
      {"tinyllamas-stories-260k-f32.gguf",
       "c14806920629b6c217445c69d7ac61bd0e4047289f8ab824c3f0b4f827a5d1cb"}},
     1},
    {"stories15m", "Karpathy's tinyllamas stories15M, Q4_0 (19 MB)",
     "https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories15M-q4_0.gguf",
     {{"stories15M-q4_0.gguf", "6151b1929d7f5aa3385d9ddef3393e55587c0a55de661562322bc51dfda93a04"},
      {NULL, NULL}},
     0},
    {"smollm2-135m-instruct", "HuggingFaceTB SmolLM2-135M-Instruct, Q8_0 (145 MB)",
     "https://huggingface.co/Mungert/SmolLM2-135M-Instruct-GGUF/resolve/"
     "980b4318b34b2f20e60c89d8f8a98283ec83cbd6/SmolLM2-135M-Instruct-q8_0.gguf",
     {{"SmolLM2-135M-Instruct-q8_0.gguf",
       "bc64cce8e1c11e4ed870633b557e04af718249c817c4cf8a6784116144ec3e28"},
      {NULL, NULL}},
     0},
    {"llama-3.2-1b-instruct", "Meta Llama-3.2-1B-Instruct, Q4_K_M (0.8 GB, bartowski)",
     "https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF/resolve/main/"
     "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
     {{"Llama-3.2-1B-Instruct-Q4_K_M.gguf", NULL}, {NULL, NULL}},
     0},
    {"bitnet-b1.58-2b-4t", "Microsoft BitNet-b1.58-2B-4T, i2_s (1.2 GB)",
     "https://huggingface.co/microsoft/bitnet-b1.58-2B-4T-gguf/resolve/main/ggml-model-i2_s.gguf",
     {{"ggml-model-i2_s.gguf", NULL}, {NULL, NULL}},
     0},
};
#define N_MODELS (sizeof models / sizeof models[0])

typedef struct pull_opts {
    const char *name;
    const char *models_dir; /* --models-dir */
    const char *url;        /* --url: another download address (a mirror) */
    int path_only;          /* print only the path */
    int offline;            /* never download */
} pull_opts;

static void usage(FILE *f)
{
    fputs("usage: deltallm pull [options] NAME\n"
          "       deltallm pull --list\n\n"
          "Find NAME in the local model folders, or download it with curl, and check its\n"
          "sha256. Prints the model's path on stdout.\n\n"
          "  --models-dir DIR  search DIR first, and download into it\n"
          "  --path-only       print only the path (for scripts)\n"
          "  --offline         never download; fail when no local copy matches\n"
          "  --url URL         download from URL instead of the known address (a mirror)\n"
          "  --list            the known models, their files and addresses\n\n"
          "Folders searched, in order: --models-dir, $DELTALLM_MODELS, ~/.cache/deltallm,\n"
          "/var/lib/deltallm/models, ../shared/models.\n",
          f);
}

static void list(void)
{
    for (size_t i = 0; i < N_MODELS; i++) {
        const pull_model *m = &models[i];
        printf("%-22s %s\n", m->name, m->what);
        for (int k = 0; k < 2 && m->files[k].name; k++)
            printf("%-22s   file %s, sha256 %s\n", "", m->files[k].name,
                   m->files[k].sha256 ? m->files[k].sha256 : "unknown (cannot be verified)");
        printf("%-22s   %s from %s\n", "", m->files[m->dl].name, m->url);
    }
}

/* The candidate folders in search order; returns how many. Strings live in store. */
static int search_dirs(const pull_opts *o, const char *dirs[5], char *store, size_t storelen)
{
    int n = 0;
    if (o->models_dir)
        dirs[n++] = o->models_dir;
    const char *e = getenv("DELTALLM_MODELS");
    if (e && *e)
        dirs[n++] = e;
    const char *home = getenv("HOME");
    if (home && *home) {
        snprintf(store, storelen, "%s/.cache/deltallm", home);
        dirs[n++] = store;
    }
    dirs[n++] = "/var/lib/deltallm/models";
    dirs[n++] = "../shared/models";
    return n;
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Checks path against want (NULL: nothing to check against). 1 usable, 0 refused. */
static int check_copy(const pull_opts *o, const char *path, const char *want)
{
    char hex[65], err[512];
    if (dl_sha256_file(path, hex, err, sizeof err)) {
        fprintf(stderr, "deltallm pull: %s\n", err);
        return 0;
    }
    if (!want) {
        fprintf(stderr,
                "deltallm pull: %s: no published sha256 is known for this file, so it was NOT "
                "verified (its sha256 is %s)\n",
                path, hex);
        return 1;
    }
    if (strcmp(hex, want)) {
        fprintf(stderr,
                "deltallm pull: refusing %s: its sha256 is %s but %s is expected (a corrupt or "
                "different file; delete or replace it)\n",
                path, hex, want);
        return 0;
    }
    if (!o->path_only)
        fprintf(stderr, "deltallm pull: %s: sha256 verified\n", path);
    return 1;
}

/* mkdir -p for the download folder. */
static int make_dirs(const char *dir)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return -ENAMETOOLONG;
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST)
                return -errno;
            *s = '/';
        }
    if (mkdir(p, 0755) && errno != EEXIST)
        return -errno;
    return access(p, W_OK) ? -errno : 0;
}

/* Runs curl for url into out; 0, or -1 with curl's own message (or why it did not run). */
static int run_curl(const char *url, const char *out, char *err, size_t errlen)
{
    int fds[2];
    if (pipe(fds)) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execlp("curl", "curl", "--fail", "--location", "--silent", "--show-error",
               "--connect-timeout", "30", "--retry", "2", "--output", out, url, (char *)NULL);
        fprintf(stderr, "cannot run curl: %s", strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < errlen && (r = read(fds[0], err + n, errlen - 1 - n)) > 0)
        n += (size_t)r;
    char sink[256];
    while (read(fds[0], sink, sizeof sink) > 0)
        ;
    close(fds[0]);
    if (errlen)
        err[n] = 0;
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == '\r'))
        err[--n] = 0;
    char *last = strrchr(err, '\n');
    if (last)
        memmove(err, last + 1, strlen(last + 1) + 1);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    if (!n)
        snprintf(err, errlen, "curl failed (status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return -1;
}

/* Downloads m into the download folder and verifies it; 0 with the path in path. */
static int download(const pull_opts *o, const pull_model *m, char *path, size_t pathlen)
{
    char home[4096], part[8200], err[1024];
    const char *dir = o->models_dir ? o->models_dir : getenv("DELTALLM_MODELS");
    if (!dir || !*dir) {
        const char *h = getenv("HOME");
        snprintf(home, sizeof home, "%s/.cache/deltallm", h && *h ? h : ".");
        dir = home;
    }
    const char *url = o->url ? o->url : m->url;
    const pull_file *f = &m->files[m->dl];
    int r = make_dirs(dir);
    if (r) {
        fprintf(stderr, "deltallm pull: cannot write to %s: %s; place %s there by hand\n", dir,
                strerror(-r), f->name);
        return -1;
    }
    snprintf(path, pathlen, "%s/%s", dir, f->name);
    snprintf(part, sizeof part, "%s.part", path);
    if (!o->path_only)
        fprintf(stderr, "deltallm pull: downloading %s from %s\n", f->name, url);
    if (run_curl(url, part, err, sizeof err)) {
        unlink(part);
        fprintf(stderr, "deltallm pull: could not download %s from %s: %s; place the file in %s\n",
                f->name, url, err, dir);
        return -1;
    }
    if (!check_copy(o, part, f->sha256)) {
        unlink(part);
        return -1;
    }
    if (rename(part, path)) {
        fprintf(stderr, "deltallm pull: rename %s: %s\n", part, strerror(errno));
        unlink(part);
        return -1;
    }
    return 0;
}

static int parse(pull_opts *o, int argc, char **argv, int *do_list)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            *do_list = 1;
        } else if (!strcmp(a, "--path-only")) {
            o->path_only = 1;
        } else if (!strcmp(a, "--offline")) {
            o->offline = 1;
        } else if (!strcmp(a, "--models-dir") || !strcmp(a, "--url")) {
            if (i + 1 >= argc || !*argv[i + 1]) {
                fprintf(stderr, "deltallm pull: %s needs a value\n", a);
                return 2;
            }
            *(a[2] == 'm' ? &o->models_dir : &o->url) = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "deltallm pull: unknown option '%s'\n", a);
            return 2;
        } else if (o->name) {
            fprintf(stderr, "deltallm pull: one NAME at a time ('%s' is extra)\n", a);
            return 2;
        } else {
            o->name = a;
        }
    }
    return -1;
}

int dl_cmd_pull(int argc, char **argv)
{
    pull_opts o = {0};
    int do_list = 0;
    int r = parse(&o, argc, argv, &do_list);
    if (r >= 0)
        return r;
    if (do_list) {
        list();
        return 0;
    }
    if (!o.name) {
        usage(stderr);
        return 2;
    }
    const pull_model *m = NULL;
    for (size_t i = 0; i < N_MODELS; i++)
        if (!strcasecmp(o.name, models[i].name))
            m = &models[i];
    if (!m) {
        fprintf(stderr, "deltallm pull: unknown model '%s'; known:", o.name);
        for (size_t i = 0; i < N_MODELS; i++)
            fprintf(stderr, " %s", models[i].name);
        fputc('\n', stderr);
        return 2;
    }

    const char *dirs[5];
    char store[4096], path[8192];
    int nd = search_dirs(&o, dirs, store, sizeof store);
    for (int d = 0; d < nd; d++)
        for (int k = 0; k < 2 && m->files[k].name; k++) {
            snprintf(path, sizeof path, "%s/%s", dirs[d], m->files[k].name);
            if (is_file(path) && check_copy(&o, path, m->files[k].sha256)) {
                puts(path);
                return 0;
            }
        }
    if (o.offline) {
        fprintf(stderr, "deltallm pull: no usable local copy of %s (%s) and --offline was given; "
                        "place it in one of:", m->name, m->files[m->dl].name);
        for (int d = 0; d < nd; d++)
            fprintf(stderr, " %s", dirs[d]);
        fputc('\n', stderr);
        return 1;
    }
    if (download(&o, m, path, sizeof path))
        return 1;
    puts(path);
    return 0;
}
