/* test_pull.c — `deltallm pull`, run as a user would: it finds the shared stories260K and
 * verifies its sha256, refuses a corrupt local copy, exits 2 on an unknown name, fails plainly
 * when the download cannot be had (a refused local port stands in for the closed internet),
 * and says so where a model has no published checksum. Each run happens in a temp dir that
 * is also $HOME, so no real model folder of the machine is involved (except ../shared when
 * asked for). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static char cli[PATH_MAX];
static char tmp[64];
static char out[8192], err[8192];

static void setup(void)
{
    const char *b = getenv("DL_BUILD");
    char rel[PATH_MAX];
    snprintf(rel, sizeof rel, "%s/deltallm", b && *b ? b : "build");
    ck_assert_ptr_nonnull(realpath(rel, cli));
    snprintf(tmp, sizeof tmp, "/tmp/dl-pull-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    ck_assert_int_eq(system(cmd), 0);
}

static void slurp(const char *path, char *dst, size_t n)
{
    size_t len = 0;
    char *s = dl_test_read_file(path, &len);
    snprintf(dst, n, "%s", s ? s : "");
    free(s);
}

/* Runs `deltallm pull ARGS` in cwd (tmp when NULL) with HOME=tmp and no $DELTALLM_MODELS;
 * returns the exit status, stdout in out, stderr in err. */
static int pull(const char *cwd, const char *args)
{
    char cmd[16384], o[128], e[128];
    snprintf(o, sizeof o, "%s/out", tmp);
    snprintf(e, sizeof e, "%s/err", tmp);
    snprintf(cmd, sizeof cmd, "cd '%s' && HOME='%s' DELTALLM_MODELS= '%s' pull %s >'%s' 2>'%s'",
             cwd ? cwd : tmp, tmp, cli, args, o, e);
    int st = system(cmd);
    slurp(o, out, sizeof out);
    slurp(e, err, sizeof err);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* From the repository root, with the shared folder named: the v3 GGUF, verified. */
START_TEST(test_finds_shared)
{
    char cwd[PATH_MAX], args[PATH_MAX + 64];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    char shared[PATH_MAX];
    ck_assert_ptr_nonnull(realpath(dl_test_shared("models"), shared));
    snprintf(args, sizeof args, "--offline --models-dir '%s' stories260k", shared);
    ck_assert_int_eq(pull(cwd, args), 0);
    ck_assert_msg(strstr(out, "/tinyllamas-stories-260k-f32.v3.gguf\n"), "out: %s", out);
    ck_assert_msg(strstr(err, "sha256 verified"), "err: %s", err);
    /* --path-only: one line, the path, nothing on stderr; names are case-insensitive */
    snprintf(args, sizeof args, "--offline --path-only --models-dir '%s' Stories260K", shared);
    ck_assert_int_eq(pull(cwd, args), 0);
    ck_assert_int_eq(strcmp(err, ""), 0);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof want, "%s/tinyllamas-stories-260k-f32.v3.gguf\n", shared);
    ck_assert_str_eq(out, want);
}
END_TEST

START_TEST(test_unknown_name)
{
    ck_assert_int_eq(pull(NULL, "no-such-model"), 2);
    ck_assert_msg(strstr(err, "unknown model 'no-such-model'"), "err: %s", err);
    ck_assert_msg(strstr(err, "stories260k"), "the known names are listed: %s", err);
    ck_assert_int_eq(pull(NULL, "--bogus stories260k"), 2);
    ck_assert_int_eq(pull(NULL, ""), 2);
}
END_TEST

/* A file with the right name and wrong bytes is refused, never printed as the model. */
START_TEST(test_corrupt_refused)
{
    write_file("tinyllamas-stories-260k-f32.v3.gguf", "GGUF but not really");
    char args[256];
    snprintf(args, sizeof args, "--offline --models-dir '%s' stories260k", tmp);
    ck_assert_int_eq(pull(NULL, args), 1);
    ck_assert_str_eq(out, "");
    ck_assert_msg(strstr(err, "refusing"), "err: %s", err);
    ck_assert_msg(strstr(err, "3c4a7c3a8313e00ae6a6b64df717828f4ba18391ea31ffb01abe9a2c4f7bb9a9"),
                  "the expected checksum is named: %s", err);
}
END_TEST

/* Nothing local and no network: a plain message naming the file, the address and the folder;
 * no partial file is left behind. */
START_TEST(test_download_fails_plainly)
{
    char args[256], part[256];
    snprintf(args, sizeof args, "--models-dir '%s/m' --url http://127.0.0.1:1/x stories15m", tmp);
    ck_assert_int_eq(pull(NULL, args), 1);
    ck_assert_str_eq(out, "");
    ck_assert_msg(strstr(err, "could not download stories15M-q4_0.gguf from http://127.0.0.1:1/x"),
                  "err: %s", err);
    ck_assert_msg(strstr(err, "place the file in"), "err: %s", err);
    snprintf(part, sizeof part, "%s/m/stories15M-q4_0.gguf.part", tmp);
    ck_assert_int_ne(access(part, F_OK), 0);
}
END_TEST

/* No published checksum: the copy is used, and pull says it was NOT verified. */
START_TEST(test_unknown_checksum_said)
{
    write_file("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "abc");
    char args[256];
    snprintf(args, sizeof args, "--offline --models-dir '%s' llama-3.2-1b-instruct", tmp);
    ck_assert_int_eq(pull(NULL, args), 0);
    ck_assert_msg(strstr(err, "NOT verified"), "err: %s", err);
    /* sha256("abc") is reported so the user can record it */
    ck_assert_msg(strstr(err, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
                  "err: %s", err);
    ck_assert_int_eq(pull(NULL, "--list"), 0);
    ck_assert_msg(strstr(out, "unknown (cannot be verified)"), "out: %s", out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pull");
    TCase *t = tcase_create("pull");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, test_finds_shared);
    tcase_add_test(t, test_unknown_name);
    tcase_add_test(t, test_corrupt_refused);
    tcase_add_test(t, test_download_fails_plainly);
    tcase_add_test(t, test_unknown_checksum_said);
    suite_add_tcase(s, t);
    return dl_test_run(s);
}
