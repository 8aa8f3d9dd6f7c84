/* test_synth.c — synthetic models: written, reopened with the GGUF reader, checked for
 * metadata, tensor names/shapes/types, weight statistics and byte-for-byte determinism. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "synth.h"
#include "testutil.h"

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dl_synth_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    rmdir(tmpdir);
}

static const char *tmp_path(const char *name)
{
    static char buf[4][128];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

static const char *shared_dir(void)
{
    const char *d = getenv("DL_SHARED");
    return d && *d ? d : "../shared";
}

static void synth(const char *shape, uint32_t type, const char *path, uint64_t seed)
{
    char err[256] = "";
    int rc = dl_synth_write(shape, type, path, seed, shared_dir(), err, sizeof err);
    ck_assert_msg(rc == 0, "synth %s: %s", shape, err);
}

static dl_gguf *open_model(const char *path)
{
    dl_gguf *g = NULL;
    char err[256] = "";
    int rc = dl_gguf_open(path, &g, err, sizeof err);
    ck_assert_msg(rc == 0, "reopen %s: %s", path, err);
    return g;
}

static uint32_t get_u32(const dl_gguf *g, const char *key)
{
    uint32_t v = 0;
    ck_assert_msg(dl_gguf_get_u32(g, key, &v) == 0, "key %s", key);
    return v;
}

static void check_str(const dl_gguf *g, const char *key, const char *want)
{
    dl_str s;
    ck_assert_msg(dl_gguf_get_str(g, key, &s) == 0, "key %s", key);
    ck_assert_msg(dl_str_eq(s, want), "key %s", key);
}

static const dl_gguf_tensor *tensor(const dl_gguf *g, const char *name, int64_t ne0,
                                    int64_t ne1, uint32_t type)
{
    const dl_gguf_tensor *t = dl_gguf_find_tensor(g, name);
    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_msg(t->ne[0] == ne0 && (ne1 == 0 ? t->n_dims == 1 : t->ne[1] == ne1),
                  "tensor %s shape %lld x %lld", name, (long long)t->ne[0],
                  (long long)t->ne[1]);
    ck_assert_msg(t->type == type, "tensor %s has type %s, expected %s", name,
                  dl_type_info(t->type)->name, dl_type_info(type)->name);
    return t;
}

/* Mean and standard deviation of a whole tensor, dequantised row by row. */
static void tensor_stats(const dl_gguf_tensor *t, double *mean, double *sd, float *amax)
{
    int64_t rows = t->n_dims == 2 ? t->ne[1] : 1;
    size_t rb = dl_row_size(t->type, t->ne[0]);
    float *row = malloc((size_t)t->ne[0] * sizeof *row);
    double s = 0, s2 = 0;
    *amax = 0;
    for (int64_t r = 0; r < rows; r++) {
        dl_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * rb, row, t->ne[0]);
        for (int64_t i = 0; i < t->ne[0]; i++) {
            s += row[i];
            s2 += (double)row[i] * row[i];
            *amax = fmaxf(*amax, fabsf(row[i]));
        }
    }
    double n = (double)rows * (double)t->ne[0];
    *mean = s / n;
    *sd = sqrt(s2 / n - *mean * *mean);
    free(row);
}

/* The tiny shape: 2 layers, 64 wide, 4 q / 2 kv heads of 16, FFN 128, 32000 SPM tokens.
 * Expected tensor types per requested type: no row is a whole K block (64, 128), so K
 * types fall back — Q6_K to Q8_0, Q4_K to Q4_0 — and in the Q4_K mix output.weight and
 * layer 1's attn_v / ffn_down (use_more_bits(1, 2)) are Q6_K before falling back. */
static uint32_t tiny_type(uint32_t req, const char *suffix, int layer)
{
    if (req == DL_TYPE_Q6_K)
        return DL_TYPE_Q8_0;
    if (req != DL_TYPE_Q4_K)
        return req;
    int more = !strcmp(suffix, "output") ||
               (layer == 1 && (!strcmp(suffix, "attn_v") || !strcmp(suffix, "ffn_down")));
    return more ? DL_TYPE_Q8_0 : DL_TYPE_Q4_0;
}

static const uint32_t all_types[] = {DL_TYPE_F32, DL_TYPE_F16, DL_TYPE_BF16, DL_TYPE_Q8_0,
                                     DL_TYPE_Q4_0, DL_TYPE_Q4_K, DL_TYPE_Q6_K};
static const int ftypes[] = {0, 1, 32, 7, 2, 15, 18};

START_TEST(test_tiny_each_type)
{
    make_tmpdir();
    uint32_t req = all_types[_i];
    const char *path = tmp_path("tiny.gguf");
    synth("tiny", req, path, 1234);
    dl_gguf *g = open_model(path);

    check_str(g, "general.architecture", "llama");
    ck_assert_uint_eq(get_u32(g, "general.file_type"), (uint32_t)ftypes[_i]);
    ck_assert_uint_eq(get_u32(g, "llama.block_count"), 2);
    ck_assert_uint_eq(get_u32(g, "llama.embedding_length"), 64);
    ck_assert_uint_eq(get_u32(g, "llama.feed_forward_length"), 128);
    ck_assert_uint_eq(get_u32(g, "llama.attention.head_count"), 4);
    ck_assert_uint_eq(get_u32(g, "llama.attention.head_count_kv"), 2);
    ck_assert_uint_eq(get_u32(g, "llama.rope.dimension_count"), 16);
    ck_assert_uint_eq(get_u32(g, "llama.vocab_size"), 32000);
    ck_assert_uint_gt(get_u32(g, "llama.context_length"), 0);
    float eps, base;
    ck_assert_int_eq(dl_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    ck_assert_float_eq(eps, 1e-5f);
    ck_assert_int_eq(dl_gguf_get_f32(g, "llama.rope.freq_base", &base), 0);
    ck_assert_float_eq(base, 10000.0f);
    ck_assert_uint_eq(dl_gguf_alignment(g), 32);

    /* the vocabulary is the SPM file's, copied exactly */
    check_str(g, "tokenizer.ggml.model", "llama");
    dl_gguf *v = open_model(dl_test_shared("models/ggml-vocab-llama-spm.gguf"));
    for (int64_t i = 0; i < dl_gguf_n_kv(v); i++) {
        char key[128];
        dl_str k = dl_gguf_key_name(v, i);
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10) != 0)
            continue;
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        char a[256], b[256];
        int64_t j = dl_gguf_find_key(g, key);
        ck_assert_msg(j >= 0, "key %s not copied", key);
        ck_assert_int_eq(dl_gguf_key_type(g, j), dl_gguf_key_type(v, i));
        dl_gguf_format_value(v, i, a, sizeof a);
        dl_gguf_format_value(g, j, b, sizeof b);
        ck_assert_str_eq(a, b);
    }
    const uint64_t probe[] = {0, 1, 2, 3, 259, 1000, 29871, 31999};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        dl_str a, b;
        ck_assert_int_eq(dl_gguf_arr_str(v, "tokenizer.ggml.tokens", probe[i], &a), 0);
        ck_assert_int_eq(dl_gguf_arr_str(g, "tokenizer.ggml.tokens", probe[i], &b), 0);
        ck_assert(a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0);
    }
    enum dl_gguf_vtype et1, et2;
    uint64_t n1, n2;
    const void *d1, *d2;
    ck_assert_int_eq(dl_gguf_get_arr(v, "tokenizer.ggml.scores", &et1, &n1, &d1), 0);
    ck_assert_int_eq(dl_gguf_get_arr(g, "tokenizer.ggml.scores", &et2, &n2, &d2), 0);
    ck_assert(et1 == et2 && n1 == n2 && memcmp(d1, d2, n1 * 4) == 0);
    dl_gguf_close(v);

    /* tensors: 1 embedding + 9 per layer + output norm + output */
    ck_assert_int_eq(dl_gguf_n_tensors(g), 21);
    const dl_gguf_tensor *emb =
        tensor(g, "token_embd.weight", 64, 32000, tiny_type(req, "token_embd", 0));
    for (int l = 0; l < 2; l++) {
        char name[64];
        static const struct { const char *s; int64_t ne0, ne1; } m[] = {
            {"attn_q", 64, 64},   {"attn_k", 64, 32},  {"attn_v", 64, 32},
            {"attn_output", 64, 64}, {"ffn_gate", 64, 128}, {"ffn_up", 64, 128},
            {"ffn_down", 128, 64},
        };
        for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, m[i].s);
            tensor(g, name, m[i].ne0, m[i].ne1, tiny_type(req, m[i].s, l));
        }
        const char *norms[] = {"attn_norm", "ffn_norm"};
        for (int i = 0; i < 2; i++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, norms[i]);
            const dl_gguf_tensor *t = tensor(g, name, 64, 0, DL_TYPE_F32);
            for (int j = 0; j < 64; j++)
                ck_assert_float_eq(((const float *)t->data)[j], 1.0f);
        }
    }
    tensor(g, "output_norm.weight", 64, 0, DL_TYPE_F32);
    tensor(g, "output.weight", 64, 32000, tiny_type(req, "output", 0));
    ck_assert_ptr_null(dl_gguf_find_tensor(g, "rope_freqs.weight"));

    /* weights ~ uniform with sd 0.02 (bound 0.0346): the quantisation error moves the
     * statistics by a few percent at most */
    double mean, sd;
    float amax;
    tensor_stats(emb, &mean, &sd, &amax);
    ck_assert_msg(fabs(mean) < 1e-3 && sd > 0.018 && sd < 0.022 && amax < 0.04f,
                  "token_embd mean %g sd %g amax %g", mean, sd, amax);
    tensor_stats(dl_gguf_find_tensor(g, "blk.1.ffn_down.weight"), &mean, &sd, &amax);
    ck_assert_msg(fabs(mean) < 2e-3 && sd > 0.017 && sd < 0.023 && amax < 0.04f,
                  "ffn_down mean %g sd %g amax %g", mean, sd, amax);
    dl_gguf_close(g);
    unlink(path);
    remove_tmpdir();
}
END_TEST

/* tiny256's rows are whole K blocks, so the Q4_K_M mix shows: Q6_K for the output and
 * for layer 1's attn_v / ffn_down (use_more_bits(i, 2) is true only for i = 1). */
START_TEST(test_tiny256_q4_k_mix)
{
    make_tmpdir();
    const char *path = tmp_path("tiny256.gguf");
    synth("tiny256", DL_TYPE_Q4_K, path, 7);
    dl_gguf *g = open_model(path);
    ck_assert_uint_eq(get_u32(g, "general.file_type"), 15);
    ck_assert_uint_eq(get_u32(g, "llama.rope.dimension_count"), 64);
    tensor(g, "token_embd.weight", 256, 32000, DL_TYPE_Q4_K);
    tensor(g, "output.weight", 256, 32000, DL_TYPE_Q6_K);
    tensor(g, "blk.0.attn_q.weight", 256, 256, DL_TYPE_Q4_K);
    tensor(g, "blk.0.attn_k.weight", 256, 128, DL_TYPE_Q4_K);
    tensor(g, "blk.0.attn_v.weight", 256, 128, DL_TYPE_Q4_K);
    tensor(g, "blk.1.attn_v.weight", 256, 128, DL_TYPE_Q6_K);
    tensor(g, "blk.0.ffn_down.weight", 512, 256, DL_TYPE_Q4_K);
    tensor(g, "blk.1.ffn_down.weight", 512, 256, DL_TYPE_Q6_K);
    tensor(g, "blk.1.ffn_up.weight", 256, 512, DL_TYPE_Q4_K);
    double mean, sd;
    float amax;
    const char *check[] = {"output.weight", "blk.0.attn_v.weight"};
    for (int i = 0; i < 2; i++) {
        tensor_stats(dl_gguf_find_tensor(g, check[i]), &mean, &sd, &amax);
        ck_assert_msg(fabs(mean) < 2e-3 && sd > 0.017 && sd < 0.023 && amax < 0.04f,
                      "%s mean %g sd %g amax %g", check[i], mean, sd, amax);
    }
    dl_gguf_close(g);
    unlink(path);
    remove_tmpdir();
}
END_TEST

START_TEST(test_deterministic)
{
    make_tmpdir();
    const char *a = tmp_path("a.gguf"), *b = tmp_path("b.gguf"), *c = tmp_path("c.gguf");
    synth("tiny", DL_TYPE_Q4_K, a, 42);
    synth("tiny", DL_TYPE_Q4_K, b, 42);
    synth("tiny", DL_TYPE_Q4_K, c, 43);
    size_t la, lb, lc;
    char *fa = dl_test_read_file(a, &la), *fb = dl_test_read_file(b, &lb);
    char *fc = dl_test_read_file(c, &lc);
    ck_assert(fa && fb && fc);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(fa, fb, la), 0);
    /* another seed: same layout, different weights */
    ck_assert_uint_eq(la, lc);
    ck_assert_int_ne(memcmp(fa, fc, la), 0);
    dl_gguf *ga = open_model(a), *gc = open_model(c);
    const dl_gguf_tensor *ta = dl_gguf_find_tensor(ga, "blk.0.attn_q.weight");
    const dl_gguf_tensor *tc = dl_gguf_find_tensor(gc, "blk.0.attn_q.weight");
    ck_assert_int_eq(ta->offset, tc->offset);
    ck_assert_int_ne(memcmp(ta->data, tc->data, ta->nbytes), 0);
    dl_gguf_close(ga);
    dl_gguf_close(gc);
    free(fa);
    free(fb);
    free(fc);
    unlink(a);
    unlink(b);
    unlink(c);
    remove_tmpdir();
}
END_TEST

START_TEST(test_refusals)
{
    make_tmpdir();
    const char *path = tmp_path("bad.gguf");
    char err[256] = "";
    ck_assert_int_eq(dl_synth_write("llama9-1t", DL_TYPE_F16, path, 1, shared_dir(), err,
                                    sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "unknown shape"));
    ck_assert_int_eq(dl_synth_write("tiny", DL_TYPE_Q5_K, path, 1, shared_dir(), err,
                                    sizeof err), -EINVAL);
    ck_assert_int_eq(dl_synth_write("tiny", 4, path, 1, shared_dir(), err, sizeof err),
                     -EINVAL);
    ck_assert_int_lt(dl_synth_write("tiny", DL_TYPE_F16, path, 1, "/nonexistent", err,
                                    sizeof err), 0);
    ck_assert_int_ne(access(path, F_OK), 0); /* nothing left behind */
    ck_assert_int_lt(dl_synth_write("tiny", DL_TYPE_F16, "/nonexistent/dir/x.gguf", 1,
                                    shared_dir(), err, sizeof err), 0);
    const char *const *names = dl_synth_shapes();
    int n = 0, has_1b = 0;
    for (; names[n]; n++)
        has_1b |= !strcmp(names[n], "llama3.2-1b");
    ck_assert_int_eq(n, 7);
    ck_assert(has_1b);
    /* BitNet shapes take only ternary types, llama shapes none */
    ck_assert_int_eq(dl_synth_write("bitnet-tiny", DL_TYPE_F16, path, 1, shared_dir(), err,
                                    sizeof err), -EINVAL);
    ck_assert_int_eq(dl_synth_write("tiny256", DL_TYPE_TQ2_0, path, 1, shared_dir(), err,
                                    sizeof err), -EINVAL);
    remove_tmpdir();
}
END_TEST

/* The tiny BitNet shape: its architecture, tensor types (I2_S with the trailing scale,
 * F16 tied embedding, F32 sub-norms) and a model that loads. */
START_TEST(test_bitnet_tiny)
{
    make_tmpdir();
    const char *path = tmp_path("bitnet.gguf");
    char err[256] = "";
    ck_assert_msg(dl_synth_write("bitnet-tiny", DL_TYPE_I2_S, path, 3, shared_dir(), err,
                                 sizeof err) == 0, "%s", err);
    dl_gguf *g;
    ck_assert_msg(dl_gguf_open(path, &g, err, sizeof err) == 0, "%s", err);
    dl_str arch;
    ck_assert_int_eq(dl_gguf_get_str(g, "general.architecture", &arch), 0);
    ck_assert(dl_str_eq(arch, "bitnet-b1.58"));
    uint32_t ft;
    ck_assert_int_eq(dl_gguf_get_u32(g, "general.file_type", &ft), 0);
    ck_assert_uint_eq(ft, 40);
    const dl_gguf_tensor *t = dl_gguf_find_tensor(g, "blk.1.ffn_down.weight");
    ck_assert_uint_eq(t->type, DL_TYPE_I2_S);
    ck_assert_uint_eq(t->nbytes, 512 * 256 / 4 + 32);
    float scale = dl_i2s_scale(t->data, 512 * 256);
    ck_assert(scale == dl_fp16_to_f32(dl_f32_to_fp16(1.0f / sqrtf(512.0f))));
    ck_assert_uint_eq(dl_gguf_find_tensor(g, "token_embd.weight")->type, DL_TYPE_F16);
    ck_assert_ptr_null(dl_gguf_find_tensor(g, "output.weight"));
    ck_assert_int_eq(dl_gguf_find_tensor(g, "blk.0.ffn_sub_norm.weight")->ne[0], 512);
    ck_assert_int_eq(dl_gguf_find_tensor(g, "blk.0.attn_sub_norm.weight")->ne[0], 256);
    dl_gguf_close(g);
    dl_model *m;
    ck_assert_msg(dl_model_load(path, &m, err, sizeof err) == 0, "%s", err);
    dl_model_free(m);
    unlink(path);
    remove_tmpdir();
}
END_TEST

static Suite *synth_suite(void)
{
    Suite *s = suite_create("synth");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_tiny_each_type, 0,
                        (int)(sizeof all_types / sizeof all_types[0]));
    tcase_add_test(tc, test_tiny256_q4_k_mix);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_bitnet_tiny);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(synth_suite());
}
