/* test_gguf.c — the GGUF reader on the real files and on a corpus of broken ones.
 *
 * The corrupted files are built here, byte by byte: a small valid GGUF (a few keys of every
 * shape, three tensors of three types) is written by an in-test builder that records where
 * each field landed, and each case patches one field. Every case must be rejected with a
 * negative code and a message naming the problem; the same bytes are also fed through
 * dl_gguf_open on a temporary file. Buffers are malloc'd at their exact length so that
 * AddressSanitizer catches any read past the end.
 */
#include <errno.h>
#include <glob.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "quant.h"
#include "testutil.h"

/* ---- a tiny GGUF builder ---- */

typedef struct gb {
    uint8_t *p;
    size_t len, cap;
    unsigned lensz; /* 4 for v1 counts/lengths, 8 for v2/v3 */
} gb;

static void gb_bytes(gb *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void gb_u32(gb *b, uint32_t v) { gb_bytes(b, &v, 4); }
static void gb_u64(gb *b, uint64_t v) { gb_bytes(b, &v, 8); }
static void gb_len(gb *b, uint64_t v)
{
    if (b->lensz == 4)
        gb_u32(b, (uint32_t)v);
    else
        gb_u64(b, v);
}
static void gb_str(gb *b, const char *s)
{
    gb_len(b, strlen(s));
    gb_bytes(b, s, strlen(s));
}

#define N_KEYS 7
#define N_TENSORS 3

/* Where each field of the small file lies (byte offsets). */
typedef struct layout {
    size_t version, n_tensors, n_kv;
    size_t key_len[N_KEYS], key_name[N_KEYS], vtype[N_KEYS], val[N_KEYS];
    size_t arr_type[N_KEYS], arr_n[N_KEYS], arr_str1_len; /* ARRAY keys only */
    size_t t_name_len[N_TENSORS], t_name[N_TENSORS], t_ndims[N_TENSORS];
    size_t t_ne[N_TENSORS][4], t_type[N_TENSORS], t_off[N_TENSORS];
    size_t info_end, data_start;
    uint32_t align;
} layout;

enum { K_ARCH, K_ALIGN, K_A, K_B, K_ARR16, K_ARRSTR, K_STR };

/* The tensors: "tensor_a" F32 8x2 (64 bytes), "tensor_b" Q8_0 32 (34), "tensor_c" F16 4 (8). */
static const struct {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[2];
    uint32_t type;
    uint64_t nbytes;
} TENSORS[N_TENSORS] = {
    {"tensor_a", 2, {8, 2}, DL_TYPE_F32, 64},
    {"tensor_b", 1, {32, 0}, DL_TYPE_Q8_0, 34},
    {"tensor_c", 1, {4, 0}, DL_TYPE_F16, 8},
};

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Build the valid small file: version 1 or 3, data alignment `align` (recorded in
 * general.alignment). The last tensor ends exactly at the end of the file, so cutting any
 * byte off must make it invalid. */
static gb build_small(uint32_t version, uint32_t align, layout *L)
{
    gb b = {NULL, 0, 0, version == 1 ? 4u : 8u};
    memset(L, 0, sizeof *L);
    L->align = align;
    gb_u32(&b, 0x46554747u); /* "GGUF" */
    L->version = b.len;
    gb_u32(&b, version);
    L->n_tensors = b.len;
    gb_len(&b, N_TENSORS);
    L->n_kv = b.len;
    gb_len(&b, N_KEYS);

    static const char *names[N_KEYS] = {"general.architecture", "general.alignment",
                                        "test.key_a", "test.key_b", "test.arr_u16",
                                        "test.arr_str", "test.str"};
    for (int k = 0; k < N_KEYS; k++) {
        L->key_len[k] = b.len;
        gb_len(&b, strlen(names[k]));
        L->key_name[k] = b.len;
        gb_bytes(&b, names[k], strlen(names[k]));
        L->vtype[k] = b.len;
        switch (k) {
        case K_ARCH:
            gb_u32(&b, DL_GGUF_STRING);
            L->val[k] = b.len;
            gb_str(&b, "llama");
            break;
        case K_ALIGN:
            gb_u32(&b, DL_GGUF_U32);
            L->val[k] = b.len;
            gb_u32(&b, align);
            break;
        case K_A:
            gb_u32(&b, DL_GGUF_U32);
            L->val[k] = b.len;
            gb_u32(&b, 7);
            break;
        case K_B: {
            float f = 1.5f;
            gb_u32(&b, DL_GGUF_F32);
            L->val[k] = b.len;
            gb_bytes(&b, &f, 4);
            break;
        }
        case K_ARR16: {
            uint16_t v[3] = {1, 2, 3};
            gb_u32(&b, DL_GGUF_ARRAY);
            L->val[k] = L->arr_type[k] = b.len;
            gb_u32(&b, DL_GGUF_U16);
            L->arr_n[k] = b.len;
            gb_len(&b, 3);
            gb_bytes(&b, v, sizeof v);
            break;
        }
        case K_ARRSTR:
            gb_u32(&b, DL_GGUF_ARRAY);
            L->val[k] = L->arr_type[k] = b.len;
            gb_u32(&b, DL_GGUF_STRING);
            L->arr_n[k] = b.len;
            gb_len(&b, 2);
            gb_str(&b, "x");
            L->arr_str1_len = b.len;
            gb_str(&b, "yz");
            break;
        case K_STR:
            gb_u32(&b, DL_GGUF_STRING);
            L->val[k] = b.len;
            gb_str(&b, "hello");
            break;
        }
    }
    uint64_t off = 0;
    for (int t = 0; t < N_TENSORS; t++) {
        L->t_name_len[t] = b.len;
        gb_len(&b, strlen(TENSORS[t].name));
        L->t_name[t] = b.len;
        gb_bytes(&b, TENSORS[t].name, strlen(TENSORS[t].name));
        L->t_ndims[t] = b.len;
        gb_u32(&b, TENSORS[t].n_dims);
        for (uint32_t d = 0; d < TENSORS[t].n_dims; d++) {
            L->t_ne[t][d] = b.len;
            gb_len(&b, TENSORS[t].ne[d]);
        }
        L->t_type[t] = b.len;
        gb_u32(&b, TENSORS[t].type);
        L->t_off[t] = b.len;
        off = align_up(off, align);
        gb_u64(&b, off);
        off += TENSORS[t].nbytes;
    }
    L->info_end = b.len;
    L->data_start = align_up(b.len, align);
    while (b.len < L->data_start)
        gb_bytes(&b, "", 1);
    /* tensor data: a recognisable byte pattern, zero padding between tensors */
    off = 0;
    for (int t = 0; t < N_TENSORS; t++) {
        uint64_t start = align_up(off, align);
        while (b.len < L->data_start + start)
            gb_bytes(&b, "", 1);
        for (uint64_t i = 0; i < TENSORS[t].nbytes; i++) {
            uint8_t v = (uint8_t)(t * 64 + i);
            gb_bytes(&b, &v, 1);
        }
        off = start + TENSORS[t].nbytes;
    }
    return b;
}

static void put_u32(gb *b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }
static void put_u64(gb *b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }
static void put_len(gb *b, size_t at, uint64_t v)
{
    if (b->lensz == 4)
        put_u32(b, at, (uint32_t)v);
    else
        put_u64(b, at, v);
}

/* Open a copy of exactly len bytes (so ASan sees over-reads); returns rc, fills err. */
static int open_exact(const uint8_t *p, size_t len, char *err, size_t errlen, dl_gguf **out)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, p, len);
    err[0] = 0;
    int rc = dl_gguf_open_memory(copy, len, out, err, errlen);
    if (rc == 0) {
        /* walk everything the reader hands out, then close while the buffer lives */
        for (int64_t i = 0; i < dl_gguf_n_kv(*out); i++) {
            char v[128];
            dl_gguf_format_value(*out, i, v, sizeof v);
        }
        dl_gguf_close(*out);
        *out = (dl_gguf *)1; /* non-NULL marker: "it opened" */
    }
    free(copy);
    return rc;
}

/* Write the bytes to a temporary file and open it by path. */
static int open_via_file(const uint8_t *p, size_t len, char *err, size_t errlen,
                         char *path, size_t pathlen)
{
    snprintf(path, pathlen, "/tmp/dl_test_gguf_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, p, len), (ssize_t)len);
    close(fd);
    dl_gguf *g = NULL;
    err[0] = 0;
    int rc = dl_gguf_open(path, &g, err, errlen);
    if (rc == 0)
        dl_gguf_close(g);
    unlink(path);
    return rc;
}

/* ---- (a) the real models ---- */

static void check_sane(dl_gguf *g, const char *path)
{
    ck_assert_int_gt(dl_gguf_n_kv(g), 0);
    ck_assert_uint_eq(dl_gguf_alignment(g), 32);
    dl_str s;
    ck_assert_int_eq(dl_gguf_get_str(g, "general.architecture", &s), 0);
    ck_assert(dl_str_eq(s, "llama"));
    /* every key can be found by its own name and printed */
    for (int64_t i = 0; i < dl_gguf_n_kv(g); i++) {
        dl_str k = dl_gguf_key_name(g, i);
        char name[256], v[256];
        ck_assert_uint_lt(k.len, sizeof name);
        memcpy(name, k.ptr, k.len);
        name[k.len] = 0;
        ck_assert_int_eq(dl_gguf_find_key(g, name), i);
        ck_assert_int_lt(dl_gguf_key_type(g, i), DL_GGUF_VTYPE_COUNT);
        dl_gguf_format_value(g, i, v, sizeof v);
        ck_assert_uint_gt(strlen(v), 0);
    }
    /* the vocabulary arrays agree in length */
    enum dl_gguf_vtype et;
    uint64_t n_tok, n_type;
    const void *data;
    ck_assert_int_eq(dl_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n_tok, &data), 0);
    ck_assert_int_eq(et, DL_GGUF_STRING);
    ck_assert_int_eq(dl_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n_type, &data), 0);
    ck_assert_int_eq(et, DL_GGUF_I32);
    ck_assert_uint_eq(n_tok, n_type);
    ck_assert_int_eq(dl_gguf_arr_str(g, "tokenizer.ggml.tokens", 1, &s), 0);
    ck_assert(dl_str_eq(s, "<s>") || dl_str_eq(s, "\"")); /* SPM id 1, Llama-3 id 1 */
    ck_assert_int_eq(dl_gguf_arr_str(g, "tokenizer.ggml.tokens", n_tok, &s), -EINVAL);
    /* tensors: inside the file, aligned, sized by their type, findable by name */
    uint64_t size = dl_gguf_file_size(g);
    for (int64_t i = 0; i < dl_gguf_n_tensors(g); i++) {
        const dl_gguf_tensor *t = dl_gguf_tensor_at(g, i);
        ck_assert_ptr_nonnull(t);
        ck_assert_uint_ge(t->n_dims, 1);
        ck_assert_uint_le(t->n_dims, DL_GGUF_MAX_DIMS);
        int64_t rows = 1;
        for (uint32_t d = 1; d < DL_GGUF_MAX_DIMS; d++)
            rows *= t->ne[d];
        ck_assert_uint_eq(t->nbytes, (uint64_t)rows * dl_row_size(t->type, t->ne[0]));
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_le(t->offset + t->nbytes, size);
        char name[256];
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = 0;
        ck_assert_ptr_eq(dl_gguf_find_tensor(g, name), t);
    }
    ck_assert_ptr_null(dl_gguf_tensor_at(g, dl_gguf_n_tensors(g)));
    ck_assert_ptr_null(dl_gguf_tensor_at(g, -1));
    ck_assert_ptr_null(dl_gguf_find_tensor(g, "no.such.tensor"));
    ck_assert_int_eq(dl_gguf_find_key(g, "no.such.key"), -1);
    (void)path;
}

START_TEST(real_models_open)
{
    glob_t gl;
    ck_assert_int_eq(glob(dl_test_shared("models/*.gguf"), 0, NULL, &gl), 0);
    ck_assert_uint_ge(gl.gl_pathc, 5);
    for (size_t i = 0; i < gl.gl_pathc; i++) {
        char err[512];
        dl_gguf *g = NULL;
        int rc = dl_gguf_open(gl.gl_pathv[i], &g, err, sizeof err);
        ck_assert_msg(rc == 0, "%s: %s", gl.gl_pathv[i], err);
        check_sane(g, gl.gl_pathv[i]);
        dl_gguf_close(g);
    }
    globfree(&gl);
}
END_TEST

static dl_gguf *open_model(const char *rel)
{
    char err[512];
    dl_gguf *g = NULL;
    int rc = dl_gguf_open(dl_test_shared(rel), &g, err, sizeof err);
    ck_assert_msg(rc == 0, "%s: %s", rel, err);
    return g;
}

static int64_t get_i64(const dl_gguf *g, const char *key)
{
    int64_t v = -1;
    ck_assert_int_eq(dl_gguf_get_i64(g, key, &v), 0);
    return v;
}

/* Values documented in shared/models/SOURCES.md. */
START_TEST(real_models_values)
{
    dl_gguf *v1 = open_model("models/tinyllamas-stories-260k-f32.gguf");
    dl_gguf *v3 = open_model("models/tinyllamas-stories-260k-f32.v3.gguf");
    ck_assert_uint_eq(dl_gguf_version(v1), 1);
    ck_assert_uint_eq(dl_gguf_version(v3), 3);
    for (int k = 0; k < 2; k++) {
        dl_gguf *g = k ? v3 : v1;
        ck_assert_int_eq(dl_gguf_n_tensors(g), 48);
        ck_assert_int_eq(get_i64(g, "llama.embedding_length"), 64);
        ck_assert_int_eq(get_i64(g, "llama.feed_forward_length"), 172);
        ck_assert_int_eq(get_i64(g, "llama.block_count"), 5);
        ck_assert_int_eq(get_i64(g, "llama.attention.head_count"), 8);
        ck_assert_int_eq(get_i64(g, "llama.attention.head_count_kv"), 4);
        float eps = 0;
        ck_assert_int_eq(dl_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
        ck_assert_float_eq_tol(eps, 1e-5f, 1e-9f);
        uint32_t u = 0;
        ck_assert_int_eq(dl_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), 0);
        ck_assert_uint_eq(u, 1);
        enum dl_gguf_vtype et;
        uint64_t n;
        const void *d;
        ck_assert_int_eq(dl_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &d), 0);
        ck_assert_int_eq(et, DL_GGUF_F32);
        ck_assert_uint_eq(n, 512);
        /* typed getters refuse the wrong type and report absence */
        dl_str s;
        ck_assert_int_eq(dl_gguf_get_str(g, "llama.block_count", &s), -EINVAL);
        ck_assert_int_eq(dl_gguf_get_u32(g, "general.architecture", &u), -EINVAL);
        ck_assert_int_eq(dl_gguf_get_u32(g, "no.such.key", &u), -ENOENT);
    }
    /* v1 and v3 hold the same tensors, byte for byte */
    for (int64_t i = 0; i < 48; i++) {
        const dl_gguf_tensor *a = dl_gguf_tensor_at(v1, i), *b = dl_gguf_tensor_at(v3, i);
        ck_assert_uint_eq(a->name.len, b->name.len);
        ck_assert(memcmp(a->name.ptr, b->name.ptr, a->name.len) == 0);
        ck_assert_uint_eq(a->n_dims, b->n_dims);
        ck_assert(memcmp(a->ne, b->ne, sizeof a->ne) == 0);
        ck_assert_uint_eq(a->type, DL_TYPE_F32);
        ck_assert_uint_eq(a->nbytes, b->nbytes);
        ck_assert(memcmp(a->data, b->data, a->nbytes) == 0);
    }
    /* and the token embedding is the one in the llama2.c checkpoint (after its 7-int header) */
    size_t blen;
    char *bin = dl_test_read_file(dl_test_shared("models/stories260K.bin"), &blen);
    ck_assert_ptr_nonnull(bin);
    const dl_gguf_tensor *emb = dl_gguf_find_tensor(v1, "token_embd.weight");
    ck_assert_ptr_nonnull(emb);
    ck_assert_int_eq(emb->ne[0], 64);
    ck_assert_int_eq(emb->ne[1], 512);
    ck_assert_uint_ge(blen, 28 + emb->nbytes);
    ck_assert(memcmp(bin + 28, emb->data, emb->nbytes) == 0);
    free(bin);
    dl_gguf_close(v1);
    dl_gguf_close(v3);

    dl_gguf *tr = open_model("models/llama-2-tiny-random.gguf");
    ck_assert_int_eq(dl_gguf_n_tensors(tr), 12);
    int n_f16 = 0, n_f32 = 0;
    for (int64_t i = 0; i < 12; i++) {
        uint32_t ty = dl_gguf_tensor_at(tr, i)->type;
        n_f16 += ty == DL_TYPE_F16;
        n_f32 += ty == DL_TYPE_F32;
    }
    ck_assert_int_eq(n_f16, 9);
    ck_assert_int_eq(n_f32, 3);
    ck_assert_int_eq(get_i64(tr, "llama.embedding_length"), 8);
    const dl_gguf_tensor *te = dl_gguf_find_tensor(tr, "token_embd.weight");
    ck_assert_ptr_nonnull(te);
    ck_assert_int_eq(te->ne[1], 32000);
    dl_gguf_close(tr);

    dl_gguf *spm = open_model("models/ggml-vocab-llama-spm.gguf");
    ck_assert_int_eq(dl_gguf_n_tensors(spm), 0);
    ck_assert_int_eq(dl_gguf_n_kv(spm), 22);
    dl_str s;
    ck_assert_int_eq(dl_gguf_arr_str(spm, "tokenizer.ggml.tokens", 2, &s), 0);
    ck_assert(dl_str_eq(s, "</s>"));
    int add_bos = 0;
    ck_assert_int_eq(dl_gguf_get_bool(spm, "tokenizer.ggml.add_bos_token", &add_bos), 0);
    ck_assert_int_eq(add_bos, 1);
    dl_gguf_close(spm);

    dl_gguf *bpe = open_model("models/ggml-vocab-llama-bpe.derived.gguf");
    enum dl_gguf_vtype et;
    uint64_t n;
    const void *d;
    ck_assert_int_eq(dl_gguf_get_arr(bpe, "tokenizer.ggml.tokens", &et, &n, &d), 0);
    ck_assert_uint_eq(n, 128256);
    ck_assert_int_eq(dl_gguf_arr_str(bpe, "tokenizer.ggml.tokens", 128000, &s), 0);
    ck_assert(dl_str_eq(s, "<|begin_of_text|>"));
    ck_assert_int_eq(dl_gguf_arr_str(bpe, "tokenizer.ggml.tokens", 128009, &s), 0);
    ck_assert(dl_str_eq(s, "<|eot_id|>"));
    ck_assert_int_eq(dl_gguf_get_arr(bpe, "tokenizer.ggml.merges", &et, &n, &d), 0);
    ck_assert_uint_eq(n, 280147);
    dl_gguf_close(bpe);
}
END_TEST

/* ---- (b) the builder's own files are valid ---- */

START_TEST(small_file_valid)
{
    const uint32_t versions[] = {1, 2, 3};
    const uint32_t aligns[] = {32, 1, 64, 256};
    for (int vi = 0; vi < 3; vi++) {
        for (int ai = 0; ai < 4; ai++) {
            layout L;
            gb b = build_small(versions[vi], aligns[ai], &L);
            char err[256];
            dl_gguf *g = NULL;
            uint8_t *copy = malloc(b.len);
            memcpy(copy, b.p, b.len);
            int rc = dl_gguf_open_memory(copy, b.len, &g, err, sizeof err);
            ck_assert_msg(rc == 0, "v%u align %u: %s", versions[vi], aligns[ai], err);
            ck_assert_uint_eq(dl_gguf_version(g), versions[vi]);
            ck_assert_uint_eq(dl_gguf_alignment(g), aligns[ai]);
            ck_assert_int_eq(dl_gguf_n_kv(g), N_KEYS);
            ck_assert_int_eq(dl_gguf_n_tensors(g), N_TENSORS);
            uint32_t u;
            float f;
            dl_str s;
            ck_assert_int_eq(dl_gguf_get_u32(g, "test.key_a", &u), 0);
            ck_assert_uint_eq(u, 7);
            ck_assert_int_eq(dl_gguf_get_f32(g, "test.key_b", &f), 0);
            ck_assert(f == 1.5f);
            ck_assert_int_eq(dl_gguf_get_str(g, "test.str", &s), 0);
            ck_assert(dl_str_eq(s, "hello"));
            ck_assert_int_eq(dl_gguf_arr_str(g, "test.arr_str", 1, &s), 0);
            ck_assert(dl_str_eq(s, "yz"));
            enum dl_gguf_vtype et;
            uint64_t n;
            const void *d;
            ck_assert_int_eq(dl_gguf_get_arr(g, "test.arr_u16", &et, &n, &d), 0);
            ck_assert_int_eq(et, DL_GGUF_U16);
            ck_assert_uint_eq(n, 3);
            uint16_t v16[3];
            memcpy(v16, d, sizeof v16);
            ck_assert(v16[0] == 1 && v16[1] == 2 && v16[2] == 3);
            for (int t = 0; t < N_TENSORS; t++) {
                const dl_gguf_tensor *tt = dl_gguf_find_tensor(g, TENSORS[t].name);
                ck_assert_ptr_nonnull(tt);
                ck_assert_uint_eq(tt->nbytes, TENSORS[t].nbytes);
                ck_assert_uint_eq(tt->type, TENSORS[t].type);
                ck_assert_ptr_eq(tt->data, copy + L.data_start + tt->offset);
                ck_assert_uint_eq(((const uint8_t *)tt->data)[1], (uint8_t)(t * 64 + 1));
            }
            dl_gguf_close(g);
            free(copy);
            free(b.p);
        }
    }
}
END_TEST

/* ---- (b) truncation at every offset, v1 and v3 ---- */

static int is_truncation_message(const char *err)
{
    return strstr(err, "past the end") || strstr(err, "too short") ||
           strstr(err, "more than the file");
}

START_TEST(truncated_everywhere)
{
    const uint32_t versions[] = {1, 3};
    for (int vi = 0; vi < 2; vi++) {
        layout L;
        gb b = build_small(versions[vi], 32, &L);
        ck_assert_uint_ne(L.info_end % 32, 0); /* so some cuts land in the padding */
        for (size_t len = 0; len < b.len; len++) {
            char err[256], path[64];
            dl_gguf *g = NULL;
            int rc = open_exact(b.p, len, err, sizeof err, &g);
            ck_assert_msg(rc < 0, "v%u cut at %zu of %zu opened", versions[vi], len, b.len);
            ck_assert_ptr_null(g);
            ck_assert_msg(strncmp(err, "gguf: ", 6) == 0 && is_truncation_message(err),
                          "v%u cut at %zu: '%s'", versions[vi], len, err);
            rc = open_via_file(b.p, len, err, sizeof err, path, sizeof path);
            ck_assert_int_lt(rc, 0);
            ck_assert_msg(strstr(err, path) && is_truncation_message(err), "file cut at %zu: '%s'",
                          len, err);
        }
        /* the cut that ends inside the padding before the data section */
        char err[256];
        dl_gguf *g = NULL;
        ck_assert_int_lt(open_exact(b.p, L.info_end + 1, err, sizeof err, &g), 0);
        ck_assert_msg(strstr(err, "data section starts past the end"), "%s", err);
        free(b.p);
    }
}
END_TEST

/* ---- (b) the named corruptions ---- */

typedef struct corrupt_case {
    const char *what;
    const char *want; /* distinctive part of the message */
} corrupt_case;

#define TWO32 4294967296ull

/* Apply corruption i to a fresh valid file (v3 unless the case says otherwise). */
static gb make_case(int i, corrupt_case *cc)
{
    layout L;
    uint32_t version = (i == 7 || i == 42) ? 1 : 3;
    gb b = build_small(version, 32, &L);
    switch (i) {
    case 0: *cc = (corrupt_case){"bad magic", "bad magic 0x58554747"};
        b.p[3] = 'X';
        break;
    case 1: *cc = (corrupt_case){"version 0", "unsupported version 0"};
        put_u32(&b, L.version, 0);
        break;
    case 2: *cc = (corrupt_case){"version 4", "unsupported version 4"};
        put_u32(&b, L.version, 4);
        break;
    case 3: *cc = (corrupt_case){"version 0xFFFFFFFF", "unsupported version 4294967295"};
        put_u32(&b, L.version, 0xFFFFFFFFu);
        break;
    case 4: *cc = (corrupt_case){"tensor count 2^40", "counts out of range (1099511627776 tensors"};
        put_len(&b, L.n_tensors, 1ull << 40);
        break;
    case 5: *cc = (corrupt_case){"tensor count 100000", "tensor count 100000 is more than"};
        put_len(&b, L.n_tensors, 100000);
        break;
    case 6: *cc = (corrupt_case){"kv count 2^62", "counts out of range"};
        put_len(&b, L.n_kv, 1ull << 62);
        break;
    case 7: *cc = (corrupt_case){"v1 kv count 2^31-1", "metadata count 2147483647 is more"};
        put_len(&b, L.n_kv, 0x7FFFFFFFu);
        break;
    case 8: *cc = (corrupt_case){"kv count 1000", "metadata count 1000 is more than"};
        put_len(&b, L.n_kv, 1000);
        break;
    case 9: *cc = (corrupt_case){"huge key length", "key 2 runs past the end of the file"};
        put_len(&b, L.key_len[K_A], 1ull << 60);
        break;
    case 10: *cc = (corrupt_case){"empty key", "key 3 has invalid length 0"};
        put_len(&b, L.key_len[K_B], 0);
        break;
    case 11: *cc = (corrupt_case){"huge string value",
                                  "string value of key 'test.str' runs past the end"};
        put_len(&b, L.val[K_STR], 1ull << 62);
        break;
    case 12: *cc = (corrupt_case){"huge string in array",
                                  "string 1 of array 'test.arr_str' runs past the end"};
        put_len(&b, L.arr_str1_len, UINT64_MAX);
        break;
    case 13: *cc = (corrupt_case){"huge array length",
                                  "array of key 'test.arr_u16' claims 9223372036854775808 "
                                  "elements"};
        put_len(&b, L.arr_n[K_ARR16], 1ull << 63);
        break;
    case 14: *cc = (corrupt_case){"huge string array length",
                                  "string array of key 'test.arr_str' claims 4611686018427387904"};
        put_len(&b, L.arr_n[K_ARRSTR], 1ull << 62);
        break;
    case 15: *cc = (corrupt_case){"array of arrays", "key 'test.arr_u16' is an array of arrays"};
        put_u32(&b, L.arr_type[K_ARR16], DL_GGUF_ARRAY);
        break;
    case 16: *cc = (corrupt_case){"unknown array element type",
                                  "array of key 'test.arr_u16' has unknown element type 13"};
        put_u32(&b, L.arr_type[K_ARR16], 13);
        break;
    case 17: *cc = (corrupt_case){"unknown value type", "key 'test.key_a' has unknown value type 13"};
        put_u32(&b, L.vtype[K_A], 13);
        break;
    case 18: *cc = (corrupt_case){"value type 0xFFFFFFFF",
                                  "key 'test.key_b' has unknown value type 4294967295"};
        put_u32(&b, L.vtype[K_B], 0xFFFFFFFFu);
        break;
    case 19: *cc = (corrupt_case){"tensor offset past the end",
                                  "tensor 'tensor_c' data (offset 1099511627776, 8 bytes) lies "
                                  "past the end"};
        put_u64(&b, L.t_off[2], 1ull << 40);
        break;
    case 20: *cc = (corrupt_case){"tensor data runs past the end",
                                  "tensor 'tensor_c' data (offset 160, 8 bytes) lies past"};
        put_u64(&b, L.t_off[2], 160);
        break;
    case 21: *cc = (corrupt_case){"misaligned offset", "tensor 'tensor_b' offset 65 is not aligned "
                                                       "to 32"};
        put_u64(&b, L.t_off[1], 65);
        break;
    case 22: *cc = (corrupt_case){"overlapping tensors",
                                  "tensors 'tensor_a' and 'tensor_b' overlap"};
        put_u64(&b, L.t_off[1], 32);
        break;
    case 23: *cc = (corrupt_case){"n_dims 0", "tensor 'tensor_a' has 0 dimensions"};
        put_u32(&b, L.t_ndims[0], 0);
        break;
    case 24: *cc = (corrupt_case){"n_dims 5", "tensor 'tensor_b' has 5 dimensions"};
        put_u32(&b, L.t_ndims[1], 5);
        break;
    case 25: *cc = (corrupt_case){"zero dimension", "tensor 'tensor_a' has invalid dimension 0 = 0"};
        put_len(&b, L.t_ne[0][0], 0);
        break;
    case 26: *cc = (corrupt_case){"negative dimension",
                                  "tensor 'tensor_a' has invalid dimension 1 = "
                                  "18446744073709551611"};
        put_len(&b, L.t_ne[0][1], (uint64_t)-5);
        break;
    case 27: *cc = (corrupt_case){"element count overflow",
                                  "tensor 'tensor_a': element count overflows"};
        put_len(&b, L.t_ne[0][0], TWO32);
        put_len(&b, L.t_ne[0][1], TWO32);
        break;
    case 28: *cc = (corrupt_case){"byte size overflow", "tensor 'tensor_a': byte size overflows"};
        put_len(&b, L.t_ne[0][0], 1ull << 31);
        put_len(&b, L.t_ne[0][1], 1ull << 31);
        break;
    case 29: *cc = (corrupt_case){"unknown tensor type 99", "tensor 'tensor_c' has unknown type 99"};
        put_u32(&b, L.t_type[2], 99);
        break;
    case 30: *cc = (corrupt_case){"retired tensor type 4 (Q4_2)",
                                  "tensor 'tensor_c' has unknown type 4"};
        put_u32(&b, L.t_type[2], 4);
        break;
    case 31: *cc = (corrupt_case){"row not a multiple of the block",
                                  "tensor 'tensor_b': row length 40 is not a multiple of the Q8_0 "
                                  "block size 32"};
        put_len(&b, L.t_ne[1][0], 40);
        break;
    case 32: *cc = (corrupt_case){"alignment 0", "'general.alignment' = 0 is not a power of two"};
        put_u32(&b, L.val[K_ALIGN], 0);
        break;
    case 33: *cc = (corrupt_case){"alignment 48", "'general.alignment' = 48 is not a power of two"};
        put_u32(&b, L.val[K_ALIGN], 48);
        break;
    case 34: *cc = (corrupt_case){"alignment of the wrong type",
                                  "'general.alignment' must be u32, not i32"};
        put_u32(&b, L.vtype[K_ALIGN], DL_GGUF_I32);
        break;
    case 35: *cc = (corrupt_case){"duplicate key", "duplicate key 'test.key_a'"};
        b.p[L.key_name[K_B] + strlen("test.key_")] = 'a';
        break;
    case 36: *cc = (corrupt_case){"duplicate tensor name", "duplicate tensor name 'tensor_a'"};
        b.p[L.t_name[1] + strlen("tensor_")] = 'a';
        break;
    case 37: *cc = (corrupt_case){"empty tensor name", "tensor 2 has invalid name length 0"};
        put_len(&b, L.t_name_len[2], 0);
        break;
    case 38: *cc = (corrupt_case){"huge tensor name", "name of tensor 0 runs past the end"};
        put_len(&b, L.t_name_len[0], 1ull << 40);
        break;
    case 39: *cc = (corrupt_case){"tensor too large for the file",
                                  "tensor 'tensor_a' data (offset 0, 4398046511104 bytes) lies"};
        put_len(&b, L.t_ne[0][0], 1u << 20);
        put_len(&b, L.t_ne[0][1], 1u << 20);
        break;
    case 40: *cc = (corrupt_case){"empty file", "file too short for a header (0 bytes)"};
        b.len = 0;
        break;
    case 41: *cc = (corrupt_case){"all-zero header", "bad magic 0x00000000"};
        memset(b.p, 0, 24);
        break;
    case 42: *cc = (corrupt_case){"v1 tensor count 2^32-1", "counts out of range (4294967295"};
        put_len(&b, L.n_tensors, 0xFFFFFFFFu);
        break;
    default: ck_abort_msg("no case %d", i);
    }
    return b;
}

#define N_CASES 43

START_TEST(corrupted_corpus)
{
    corrupt_case cc;
    gb b = make_case(_i, &cc);
    char err[512], path[64];
    dl_gguf *g = NULL;
    int rc = open_exact(b.p, b.len, err, sizeof err, &g);
    ck_assert_msg(rc < 0, "case %d (%s) opened", _i, cc.what);
    ck_assert_ptr_null(g);
    ck_assert_msg(strstr(err, cc.want) != NULL, "case %d (%s): got '%s', want '%s'", _i,
                  cc.what, err, cc.want);
    rc = open_via_file(b.p, b.len, err, sizeof err, path, sizeof path);
    ck_assert_msg(rc < 0, "case %d (%s) opened as a file", _i, cc.what);
    ck_assert_msg(strstr(err, cc.want) && strstr(err, path), "case %d (%s) as a file: '%s'", _i,
                  cc.what, err);
    free(b.p);
}
END_TEST

/* Every single-bit flip of the small file: opening either fails with a message or
 * succeeds and every accessor stays inside the buffer (ASan watches). */
START_TEST(bit_flips)
{
    layout L;
    gb b = build_small(3, 32, &L);
    int failed = 0, opened = 0;
    for (size_t at = 0; at < L.data_start; at++) {
        for (int bit = 0; bit < 8; bit++) {
            b.p[at] ^= (uint8_t)(1u << bit);
            char err[256];
            dl_gguf *g = NULL;
            if (open_exact(b.p, b.len, err, sizeof err, &g) < 0) {
                ck_assert_msg(strncmp(err, "gguf: ", 6) == 0 && strlen(err) > 12, "'%s'", err);
                failed++;
            } else {
                opened++;
            }
            b.p[at] ^= (uint8_t)(1u << bit);
        }
    }
    /* most flips in the header are fatal; flips in names and values are not */
    ck_assert_int_gt(failed, 0);
    ck_assert_int_gt(opened, 0);
    free(b.p);
}
END_TEST

/* The caller's error buffer is respected whatever its size. */
START_TEST(error_buffer_sizes)
{
    layout L;
    gb b = build_small(3, 32, &L);
    put_u32(&b, L.version, 9);
    dl_gguf *g = NULL;
    char small[8];
    memset(small, 'Z', sizeof small);
    ck_assert_int_lt(dl_gguf_open_memory(b.p, b.len, &g, small, 5), 0);
    ck_assert_str_eq(small, "gguf");
    ck_assert_int_eq(small[5], 'Z');
    ck_assert_int_lt(dl_gguf_open_memory(b.p, b.len, &g, NULL, 0), 0);
    ck_assert_int_lt(dl_gguf_open_memory(b.p, b.len, &g, small, 0), 0);
    ck_assert_int_eq(small[0], 'g');
    char err[256];
    ck_assert_int_lt(dl_gguf_open("/nonexistent/dir/x.gguf", &g, err, sizeof err), 0);
    ck_assert_ptr_null(g);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dir/x.gguf"));
    ck_assert_int_lt(dl_gguf_open("/tmp", &g, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
    free(b.p);
}
END_TEST

static Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, real_models_open);
    tcase_add_test(tc, real_models_values);
    tcase_add_test(tc, small_file_valid);
    tcase_add_test(tc, truncated_everywhere);
    tcase_add_loop_test(tc, corrupted_corpus, 0, N_CASES);
    tcase_add_test(tc, bit_flips);
    tcase_add_test(tc, error_buffer_sizes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return dl_test_run(gguf_suite()); }
