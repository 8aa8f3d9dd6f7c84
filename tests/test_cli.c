/* test_cli.c — the deltallm command-line tool, run as a user runs it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

/* Run a shell command; returns its stdout (malloc'd) and exit status. */
static char *run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 == cap)
            out = realloc(out, cap *= 2);
    }
    out[len] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

static const char *cli(void)
{
    static char path[1024];
    const char *b = getenv("DL_BUILD");
    snprintf(path, sizeof path, "%s/deltallm", b && *b ? b : "build");
    return path;
}

START_TEST(generate_golden)
{
    char cmd[4096];
    size_t elen;
    char *expected = dl_test_read_file(dl_test_shared("models/stories260K.greedy200.expected.txt"),
                                       &elen);
    ck_assert_ptr_nonnull(expected);
    snprintf(cmd, sizeof cmd, "%s generate -m %s -n 200 --temp 0 -q 2>/dev/null", cli(),
             dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"));
    int st;
    char *out = run(cmd, &st);
    ck_assert_int_eq(st, 0);
    ck_assert_msg(strcmp(out, expected) == 0, "got:\n%s", out);
    free(out);
    free(expected);
}
END_TEST

START_TEST(generate_seeded_is_reproducible)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'Once upon a time' -n 40 --temp 0.9 "
             "--seed 7 -q 2>/dev/null", cli(),
             dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"));
    int s1, s2;
    char *a = run(cmd, &s1), *b = run(cmd, &s2);
    ck_assert_int_eq(s1, 0);
    ck_assert_int_eq(s2, 0);
    ck_assert_str_eq(a, b);
    ck_assert(strlen(a) > 20);
    free(a);
    free(b);
}
END_TEST

START_TEST(inspect_every_model)
{
    static const char *files[] = {
        "models/tinyllamas-stories-260k-f32.v3.gguf", "models/tinyllamas-stories-260k-f32.gguf",
        "models/llama-2-tiny-random.gguf", "models/ggml-vocab-llama-spm.gguf",
        "models/ggml-vocab-llama-bpe.derived.gguf"};
    static const char *want[] = {"layers                     5", "layers                     5",
                                 "vocabulary                 32000", "tokenizer.ggml.model",
                                 "tokenizer.ggml.merges"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", cli(), dl_test_shared(files[i]));
        int st;
        char *out = run(cmd, &st);
        ck_assert_msg(st == 0, "%s: exit %d", files[i], st);
        ck_assert_msg(strstr(out, "GGUF version") != NULL, "%s", out);
        ck_assert_msg(strstr(out, want[i]) != NULL, "%s: missing '%s' in:\n%s", files[i], want[i],
                      out);
        free(out);
    }
}
END_TEST

START_TEST(tokenize_prints_ids)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s tokenize --ids --no-bos -m %s 'Hello world'", cli(),
             dl_test_shared("models/ggml-vocab-llama-spm.gguf"));
    int st;
    char *out = run(cmd, &st);
    ck_assert_int_eq(st, 0);
    ck_assert_str_eq(out, "15043 3186\n");
    free(out);
}
END_TEST

START_TEST(usage_errors_exit_2)
{
    char cmd[4096];
    int st;
    const char *bad[] = {"", "frobnicate", "generate", "generate -m x -n -5", "inspect",
                         "generate -m x --temp abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null", cli(), bad[i]);
        free(run(cmd, &st));
        ck_assert_msg(st == 2, "'%s' exited %d", bad[i], st);
    }
    snprintf(cmd, sizeof cmd, "%s inspect /nonexistent.gguf 2>&1", cli());
    char *out = run(cmd, &st);
    ck_assert_int_eq(st, 1);
    ck_assert_ptr_nonnull(strstr(out, "No such file"));
    free(out);
}
END_TEST

/* Pull a number out of a flat JSON object; fails the test when the key is absent. */
static double json_num(const char *js, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(js, pat);
    ck_assert_msg(p != NULL, "missing key %s in %s", key, js);
    return strtod(p + strlen(pat), NULL);
}

/* `deltallm eval` on stories260K and tinystories_val.txt with the given options, stderr
 * folded into stdout. */
static char *run_eval(const char *args, int *st)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s eval -m %s -f %s %s 2>&1", cli(),
             dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"),
             dl_test_shared("data/tinystories_val.txt"), args);
    return run(cmd, st);
}

/* With theta = 0 every change is stored, so delta attention is dense attention. */
START_TEST(eval_theta_zero_is_dense)
{
    int st;
    char *out = run_eval("--ctx 64 --max-windows 3 --delta-theta 0 --delta-window 4 --json", &st);
    ck_assert_msg(st == 0, "%s", out);
    double pd = json_num(out, "ppl_dense"), pq = json_num(out, "ppl_delta");
    ck_assert_msg(pd > 1 && pd < 100, "ppl %g", pd);
    /* Dense keeps fp16(k); delta rebuilds k-hat from fp16-rounded deltas over an fp32
     * reference, so the two agree to fp16 rounding (measured: 1e-4 relative, KL 1.4e-6). */
    ck_assert_msg(fabs(pq / pd - 1) < 1e-3, "dense %g delta %g", pd, pq);
    ck_assert(json_num(out, "kl_mean") < 1e-5);
    ck_assert(json_num(out, "ctx") == 64);
    ck_assert(json_num(out, "top1_agreement") == 1.0);
    ck_assert(json_num(out, "element_sparsity") < 0.05);
    free(out);
}
END_TEST

/* --calibrate: one offset per layer (stories260K: 5), in the tried range, summing to zero
 * so the mean target stays; the run with them reports them. Also --skip-windows. */
START_TEST(eval_calibrate_prints_offsets)
{
    int st;
    char *out = run_eval("--ctx 64 --skip-windows 5 --max-windows 2 --calibrate "
                         "--delta-target 0.5 --calib-step 0.1", &st);
    ck_assert_msg(st == 0, "%s", out);
    ck_assert_msg(strstr(out, "2 windows from window 5"), "%s", out);
    const char *p = strstr(out, "--delta-layer-offsets ");
    ck_assert_msg(p != NULL, "%s", out);
    p += strlen("--delta-layer-offsets ");
    double sum = 0;
    int n = 0;
    for (;;) {
        char *end;
        double v = strtod(p, &end);
        ck_assert_msg(end != p && v >= -0.2 - 1e-6 && v <= 0.2 + 1e-6, "offset %d in %s", n, out);
        sum += v;
        n++;
        if (*end != ',')
            break;
        p = end + 1;
    }
    ck_assert_int_eq(n, 5);
    ck_assert_msg(fabs(sum) < 1e-5, "offsets sum to %g", sum);
    ck_assert_msg(strstr(out, "with them, over the same windows:\nwindows 2 "), "%s", out);
    free(out);
    /* refused without a target */
    out = run_eval("--calibrate --delta-theta 0.3", &st);
    ck_assert_msg(st != 0 && strstr(out, "--calibrate needs a sparsity target"), "%s", out);
    free(out);
}
END_TEST

START_TEST(eval_sweep_prints_rows)
{
    int st;
    char *out = run_eval("--ctx 64 --max-windows 2 --sweep --thetas 0.1,0.5 --windows 4,8 --json",
                         &st);
    ck_assert_msg(st == 0, "%s", out);
    int rows = 0;
    double prev = -1;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n")) {
        rows++;
        json_num(l, "attention_sparsity");
        json_num(l, "qk_work_skipped");
        json_num(l, "k_cache_bytes");
        double el = json_num(l, "element_sparsity");
        if (rows == 3) /* a larger theta zeroes more of the key changes */
            ck_assert_msg(el > prev, "theta 0.5: %g, theta 0.1: %g", el, prev);
        if (rows == 1)
            prev = el;
    }
    ck_assert_int_eq(rows, 4);
    free(out);
}
END_TEST

START_TEST(bench_json_has_the_figures)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s bench -m %s -p 16 -n 8 --reps 1 --json 2>&1", cli(),
             dl_test_shared("models/tinyllamas-stories-260k-f32.v3.gguf"));
    int st;
    char *out = run(cmd, &st);
    ck_assert_msg(st == 0, "%s", out);
    ck_assert(json_num(out, "prefill_tokens_per_second") > 0);
    ck_assert(json_num(out, "decode_tokens_per_second") > 0);
    ck_assert(json_num(out, "memory_bandwidth_bytes_per_second") > 0);
    double r = json_num(out, "decode_roofline_ratio");
    ck_assert(r > 0 && r < 10);
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, generate_golden);
    tcase_add_test(tc, generate_seeded_is_reproducible);
    tcase_add_test(tc, inspect_every_model);
    tcase_add_test(tc, tokenize_prints_ids);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, eval_theta_zero_is_dense);
    tcase_add_test(tc, eval_sweep_prints_rows);
    tcase_add_test(tc, eval_calibrate_prints_offsets);
    tcase_add_test(tc, bench_json_has_the_figures);
    suite_add_tcase(s, tc);
    return dl_test_run(s);
}
