/* test_delta_model.c — DeltaLLM attention on real keys: stories260K run over TinyStories
 * text (acceptance 1 of the DeltaLLM issue, the real-key half; test_delta.c has the
 * random-key half).
 *
 * The delta cache's test oracle (delta_impl.h) keeps every exact key and its own k̂ and
 * computes attention densely in double. Mode 2 checks every layer's kernel output against
 * it on the model's actual keys, queries and values, call by call (so the kernels and the
 * oracle see identical inputs); mode 1 runs the whole model with the oracle in place of
 * the kernels, and the logits must match a kernel run.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "delta.h"
#include "delta_impl.h"
#include "kernels.h"
#include "model.h"
#include "testutil.h"

#define STORIES "models/tinyllamas-stories-260k-f32.v3.gguf"
#define T_ALL 200 /* tokens per run: prefill + decode */

static dl_model *model;
static dl_ctx *ctx;
static int32_t toks[T_ALL];
static int n_vocab;

static void setup(void)
{
    char err[256];
    ck_assert_msg(dl_model_load(dl_test_shared(STORIES), &model, err, sizeof err) == 0, "%s",
                  err);
    n_vocab = dl_model_hparams(model)->n_vocab;
    ctx = dl_ctx_create(model, T_ALL, T_ALL, 2, err, sizeof err);
    ck_assert_msg(ctx != NULL, "%s", err);
    size_t len = 0;
    char *text = dl_test_read_file(dl_test_shared("data/tinystories_val.txt"), &len);
    ck_assert(text != NULL);
    size_t use = len < 4000 ? len : 4000;
    int n = dl_tokenize(dl_model_tokenizer(model), text, use, 1, 0, toks, T_ALL);
    ck_assert_int_ge(n, T_ALL);
    free(text);
}

static void teardown(void)
{
    dl_ctx_free(ctx);
    dl_model_free(model);
}

/* Run T_ALL tokens: prefill in the calls given by chunks[] (summing to n_prefill), then
 * token-by-token decode. logits (T_ALL x n_vocab) may be NULL. dp NULL: dense. Returns
 * the final element sparsity over both stages (0 for dense). */
static double run_seq(const dl_delta_params *dp, int oracle, const int *chunks, int n_chunks,
                      float *logits)
{
    char err[256];
    dl__delta_oracle_mode(oracle);
    dl_seq *s = dl_seq_create(model, T_ALL, dp, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    int pos = 0;
    for (int i = 0; i < n_chunks; i++) {
        dl_batch_item it = { s, toks + pos, chunks[i],
                             logits ? logits + (size_t)pos * n_vocab : NULL, 1 };
        ck_assert_msg(dl_forward(ctx, &it, 1, err, sizeof err) == 0, "%s", err);
        pos += chunks[i];
    }
    for (; pos < T_ALL; pos++) {
        dl_batch_item it = { s, toks + pos, 1, logits ? logits + (size_t)pos * n_vocab : NULL,
                             0 };
        ck_assert_msg(dl_forward(ctx, &it, 1, err, sizeof err) == 0, "%s", err);
    }
    double sp = 0;
    const dl_delta_stats *st = dl_seq_delta_stats(s);
    if (st) {
        dl_delta_stage_stats both = st->stage[0];
        dl_delta_stats_add(&both, &st->stage[1]);
        sp = dl_delta_element_sparsity(&both);
    }
    dl_seq_free(s);
    return sp;
}

static float max_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* Every layer's kernel output vs the oracle on real keys: sliding and block prefill
 * (one call and two chunks), decode, windows 1 .. beyond the context, fixed theta and a
 * sparsity target, sink 0 and 4. */
START_TEST(test_real_keys_kernels_vs_oracle)
{
    static const int windows[] = { 1, 3, 16, 64, 150, 400 };
    int one[] = { 150 }, two[] = { 100, 50 };
    /* head dim 8: the scalar and the AVX2 kernels (AVX-512 needs d % 16 == 0) */
    for (int isa = DL_ISA_SCALAR; isa <= DL_ISA_AVX2 && isa <= (int)dl_isa_detect(); isa++)
    for (int mode = 0; mode < 2; mode++)
        for (size_t wi = 0; wi < sizeof windows / sizeof windows[0]; wi++)
            for (int knob = 0; knob < 2; knob++) {
                dl_delta_params dp;
                dl_delta_params_default(&dp);
                dp.sparsity_target = -1; /* these tests give theta */
                dp.prefill_mode = mode ? DL_PREFILL_BLOCK : DL_PREFILL_SLIDING;
                dp.block_frac = 0.1f;
                dp.window = windows[wi];
                dp.sink = (int)(wi % 2) * 4;
                if (knob)
                    dp.sparsity_target = 0.6f;
                else
                    dp.theta = 1.0f;
                int chunked = (int)wi % 3 == 1;
                dl_isa_force((enum dl_isa)isa);
                double sp = run_seq(&dp, 2, chunked ? two : one, chunked ? 2 : 1, NULL);
                double e = dl__delta_oracle_err();
                ck_assert_msg(e < 1e-4, "isa %d mode %d window %d knob %d: kernel vs oracle %g",
                              isa, mode, dp.window, knob, e);
                /* not a vacuous comparison: many key elements are really delta-coded */
                ck_assert_msg(sp > 0.3, "element sparsity %g", sp);
            }
    dl__delta_oracle_mode(0);
    dl_isa_force(dl_isa_detect());
}
END_TEST

/* The whole model run with the oracle in place of the kernels gives the same logits. */
START_TEST(test_real_keys_logits)
{
    size_t nl = (size_t)T_ALL * n_vocab;
    float *a = malloc(nl * sizeof(float)), *b = malloc(nl * sizeof(float));
    int one[] = { 120 };
    for (int mode = 0; mode < 2; mode++) {
        dl_delta_params dp;
        dl_delta_params_default(&dp);
        dp.sparsity_target = -1; /* these tests give theta */
        dp.theta = 1.0f;
        dp.window = 8;
        dp.prefill_mode = mode ? DL_PREFILL_BLOCK : DL_PREFILL_SLIDING;
        /* fp16 deltas: the two runs' keys differ by rounding, so an element near the
         * threshold can be stored in one and not the other; with fp16 the runs meet again
         * the next time both store it (k̂ ~ k), with 8-bit deltas each stored value keeps
         * its own rounding (up to 1/16 of the delta) and the runs stay apart by up to
         * theta — measured 0.08 (AVX2 matmuls) and 0.37 (scalar) on these logits. The
         * 8-bit kernels are checked against the oracle call by call above. */
        dp.value_bits = 16;
        double sp = run_seq(&dp, 0, one, 1, a);
        run_seq(&dp, 1, one, 1, b);
        dl__delta_oracle_mode(0);
        /* float kernels vs the double oracle through 5 layers and 200 positions: 2e-3
         * (sliding) and 1e-3 (block) on logits of magnitude ~10 on most runs. Unlike the
         * call-by-call check above, the two runs' keys differ by rounding, so an element
         * within rounding of its threshold may be coded in one run and not the other;
         * until both store it again, k̂ differs there by up to theta (1 here) and the
         * next few positions' logits move: with AVX2 matmuls one such flip at decode
         * position 189 gave 0.136, 6 positions above 2e-2 and every earlier position
         * within 2e-3. So: the prefill positions agree to 2e-2, and after them at most
         * 5% of positions may move, by less than 0.25. */
        int moved = 0;
        float e = 0, e_prefill = max_diff(a, b, (size_t)one[0] * n_vocab);
        for (int t = 0; t < T_ALL; t++) {
            float m = max_diff(a + (size_t)t * n_vocab, b + (size_t)t * n_vocab, n_vocab);
            moved += m > 2e-2f;
            e = fmaxf(e, m);
        }
        ck_assert_msg(e_prefill < 2e-2f, "mode %d: kernel vs oracle prefill logits %g", mode,
                      e_prefill);
        ck_assert_msg(moved <= T_ALL / 20 && e < 0.25f,
                      "mode %d: kernel vs oracle logits %g, %d positions above 2e-2", mode, e,
                      moved);
        ck_assert_msg(sp > 0.3, "element sparsity %g", sp);
    }
    free(a);
    free(b);
}
END_TEST

/* theta = 0: delta attention (kernels, and the oracle) equals attention over the exact
 * keys (window beyond the context) up to the fp16 rounding of the stored deltas and of the
 * ring's exact keys, and the dense model up to that plus the dense cache's fp16 K.
 * Measured (AVX-512, kernels / oracle): vs the all-exact run 0.060 / 0.058 at window 1,
 * 0.031 / 0.033 at 17 (with an fp32 ring it was 0.013 at window 1: the decode steps'
 * exact reference keys are now fp16-rounded, a larger error than rounding small deltas);
 * vs the dense model 0.052 / 0.050 at window 1 and 0.028 all-exact (0.045 with the fp32
 * ring). Hence 8e-2 and 0.1. */
START_TEST(test_real_keys_theta_zero_dense)
{
    size_t nl = (size_t)T_ALL * n_vocab;
    float *dense = malloc(nl * sizeof(float)), *exact = malloc(nl * sizeof(float));
    float *b = malloc(nl * sizeof(float));
    int one[] = { 120 };
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.sparsity_target = -1; /* these tests give theta */
    dp.theta = 0;
    dp.window = 1000;
    run_seq(NULL, 0, one, 1, dense);
    run_seq(&dp, 0, one, 1, exact);
    for (int oracle = 0; oracle < 2; oracle++)
        for (int w = 1; w <= 300; w *= 17) {
            dp.window = w;
            run_seq(&dp, oracle, one, 1, b);
            dl__delta_oracle_mode(0);
            float e = max_diff(exact, b, nl), ed = max_diff(dense, b, nl);
            ck_assert_msg(e < 8e-2f, "oracle %d window %d: theta 0 vs exact keys %g", oracle,
                          w, e);
            ck_assert_msg(ed < 0.1f, "oracle %d window %d: theta 0 vs dense model %g", oracle,
                          w, ed);
        }
    free(dense);
    free(exact);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("delta_model");
    TCase *tc = tcase_create("real_keys");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_real_keys_kernels_vs_oracle);
    tcase_add_test(tc, test_real_keys_logits);
    tcase_add_test(tc, test_real_keys_theta_zero_dense);
    suite_add_tcase(s, tc);
    return dl_test_run(s);
}
