/* test_gguf_write.c — the streaming GGUF writer, checked by reading its output back with
 * the validating reader (gguf.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_write.h"
#include "quant.h"
#include "testutil.h"

/* A writer's output captured in memory. */
typedef struct memfile {
    FILE *f;
    char *buf;
    size_t len;
} memfile;

static void mem_open(memfile *m)
{
    m->buf = NULL;
    m->len = 0;
    m->f = open_memstream(&m->buf, &m->len);
    ck_assert_ptr_nonnull(m->f);
}

static void mem_close(memfile *m)
{
    ck_assert_int_eq(fclose(m->f), 0);
}

static dl_gguf *reopen(const memfile *m)
{
    dl_gguf *g = NULL;
    char err[256] = "";
    int rc = dl_gguf_open_memory(m->buf, m->len, &g, err, sizeof err);
    ck_assert_msg(rc == 0, "reader rejected the file: %s", err);
    return g;
}

START_TEST(test_all_kv_types)
{
    dl_gguf_writer *w;
    ck_assert_int_eq(dl_gguf_writer_create(0, &w), 0);
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint64_t u64 = 1ull << 40;
    int64_t i64 = -(1ll << 40);
    double f64 = 0.25;
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.u8", DL_GGUF_U8, &u8), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.i8", DL_GGUF_I8, &i8), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.u16", DL_GGUF_U16, &u16), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.i16", DL_GGUF_I16, &i16), 0);
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "t.u32", 4000000000u), 0);
    ck_assert_int_eq(dl_gguf_writer_add_i32(w, "t.i32", -2000000000), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.u64", DL_GGUF_U64, &u64), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.i64", DL_GGUF_I64, &i64), 0);
    ck_assert_int_eq(dl_gguf_writer_add_f32(w, "t.f32", 1.5f), 0);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "t.f64", DL_GGUF_F64, &f64), 0);
    ck_assert_int_eq(dl_gguf_writer_add_bool(w, "t.bool", 7), 0);
    ck_assert_int_eq(dl_gguf_writer_add_str(w, "t.str", "héllo"), 0);
    ck_assert_int_eq(dl_gguf_writer_add_strn(w, "t.strn", "a\0b", 3), 0); /* embedded NUL */
    const int32_t ai[] = {1, -2, 3};
    const float af[] = {0.5f, -1.0f};
    ck_assert_int_eq(dl_gguf_writer_add_arr(w, "t.arr_i32", DL_GGUF_I32, ai, 3), 0);
    ck_assert_int_eq(dl_gguf_writer_add_arr(w, "t.arr_f32", DL_GGUF_F32, af, 2), 0);
    ck_assert_int_eq(dl_gguf_writer_add_arr(w, "t.arr_empty", DL_GGUF_U8, NULL, 0), 0);
    const dl_str strs[] = {{"one", 3}, {"", 0}, {"three", 5}};
    ck_assert_int_eq(dl_gguf_writer_add_arr_str(w, "t.arr_str", strs, 3), 0);

    memfile m;
    mem_open(&m);
    char err[256];
    ck_assert_int_eq(dl_gguf_writer_begin(w, m.f, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_finish(w, err, sizeof err), 0);
    mem_close(&m);
    dl_gguf_writer_destroy(w);

    dl_gguf *g = reopen(&m);
    ck_assert_uint_eq(dl_gguf_version(g), 3);
    ck_assert_int_eq(dl_gguf_n_kv(g), 17);
    ck_assert_int_eq(dl_gguf_n_tensors(g), 0);
    ck_assert_int_eq(dl_gguf_find_key(g, "general.alignment"), -1); /* default not written */
    const struct { const char *key; enum dl_gguf_vtype t; int64_t v; } ints[] = {
        {"t.u8", DL_GGUF_U8, 200},           {"t.i8", DL_GGUF_I8, -100},
        {"t.u16", DL_GGUF_U16, 60000},       {"t.i16", DL_GGUF_I16, -30000},
        {"t.u32", DL_GGUF_U32, 4000000000ll}, {"t.i32", DL_GGUF_I32, -2000000000},
        {"t.u64", DL_GGUF_U64, 1ll << 40},   {"t.i64", DL_GGUF_I64, -(1ll << 40)},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int64_t v;
        int64_t idx = dl_gguf_find_key(g, ints[i].key);
        ck_assert_int_ge(idx, 0);
        ck_assert_int_eq(dl_gguf_key_type(g, idx), ints[i].t);
        ck_assert_int_eq(dl_gguf_get_i64(g, ints[i].key, &v), 0);
        ck_assert_int_eq(v, ints[i].v);
    }
    float f;
    ck_assert_int_eq(dl_gguf_get_f32(g, "t.f32", &f), 0);
    ck_assert_float_eq(f, 1.5f);
    ck_assert_int_eq(dl_gguf_key_type(g, dl_gguf_find_key(g, "t.f64")), DL_GGUF_F64);
    ck_assert_int_eq(dl_gguf_get_f32(g, "t.f64", &f), 0);
    ck_assert_float_eq(f, 0.25f);
    int b;
    ck_assert_int_eq(dl_gguf_get_bool(g, "t.bool", &b), 0);
    ck_assert_int_eq(b, 1);
    dl_str s;
    ck_assert_int_eq(dl_gguf_get_str(g, "t.str", &s), 0);
    ck_assert(s.len == strlen("héllo") && memcmp(s.ptr, "héllo", s.len) == 0);
    ck_assert_int_eq(dl_gguf_get_str(g, "t.strn", &s), 0);
    ck_assert(s.len == 3 && memcmp(s.ptr, "a\0b", 3) == 0);
    enum dl_gguf_vtype et;
    uint64_t n;
    const void *data;
    ck_assert_int_eq(dl_gguf_get_arr(g, "t.arr_i32", &et, &n, &data), 0);
    ck_assert(et == DL_GGUF_I32 && n == 3 && memcmp(data, ai, sizeof ai) == 0);
    ck_assert_int_eq(dl_gguf_get_arr(g, "t.arr_f32", &et, &n, &data), 0);
    ck_assert(et == DL_GGUF_F32 && n == 2 && memcmp(data, af, sizeof af) == 0);
    ck_assert_int_eq(dl_gguf_get_arr(g, "t.arr_empty", &et, &n, &data), 0);
    ck_assert(et == DL_GGUF_U8 && n == 0);
    ck_assert_int_eq(dl_gguf_get_arr(g, "t.arr_str", &et, &n, &data), 0);
    ck_assert(et == DL_GGUF_STRING && n == 3);
    for (uint64_t i = 0; i < 3; i++) {
        ck_assert_int_eq(dl_gguf_arr_str(g, "t.arr_str", i, &s), 0);
        ck_assert(s.len == strs[i].len && memcmp(s.ptr, strs[i].ptr, s.len) == 0);
    }
    /* key order is insertion order */
    ck_assert(dl_str_eq(dl_gguf_key_name(g, 0), "t.u8"));
    ck_assert(dl_str_eq(dl_gguf_key_name(g, 16), "t.arr_str"));
    dl_gguf_close(g);
    free(m.buf);
}
END_TEST

/* Tensors with a non-default alignment, data streamed in uneven pieces. */
START_TEST(test_tensors_streamed)
{
    dl_gguf_writer *w;
    ck_assert_int_eq(dl_gguf_writer_create(64, &w), 0);
    ck_assert_int_eq(dl_gguf_writer_add_str(w, "general.architecture", "llama"), 0);
    const int64_t ne_a[] = {3, 2}, ne_b[] = {64, 3}, ne_c[] = {256}, ne_d[] = {2, 1, 1, 5};
    uint64_t nb[4];
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "a", 2, ne_a, DL_TYPE_F32, &nb[0]), 0);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "b", 2, ne_b, DL_TYPE_Q8_0, &nb[1]), 0);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "c", 1, ne_c, DL_TYPE_Q4_K, &nb[2]), 0);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "d", 4, ne_d, DL_TYPE_F16, &nb[3]), 0);
    ck_assert_uint_eq(nb[0], 24);
    ck_assert_uint_eq(nb[1], 3 * 68);
    ck_assert_uint_eq(nb[2], 144);
    ck_assert_uint_eq(nb[3], 20);

    uint8_t *bytes[4];
    for (int t = 0; t < 4; t++) {
        bytes[t] = malloc(nb[t]);
        for (uint64_t i = 0; i < nb[t]; i++)
            bytes[t][i] = (uint8_t)(i * 7 + (uint64_t)t * 31 + 1);
    }
    memfile m;
    mem_open(&m);
    char err[256];
    ck_assert_int_eq(dl_gguf_writer_begin(w, m.f, err, sizeof err), 0);
    for (uint64_t i = 0; i < nb[0]; i++) /* byte by byte */
        ck_assert_int_eq(dl_gguf_writer_write(w, bytes[0] + i, 1, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[1], 100, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[1] + 100, nb[1] - 100, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[2], nb[2], err, sizeof err), 0);
    /* overrunning the current tensor is refused and leaves the state as it was */
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[3], nb[3] + 1, err, sizeof err), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[3], nb[3], err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_write(w, bytes[3], 1, err, sizeof err), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_finish(w, err, sizeof err), 0);
    mem_close(&m);
    dl_gguf_writer_destroy(w);

    ck_assert_uint_eq(m.len % 64, 0); /* the last tensor is padded too */
    dl_gguf *g = reopen(&m);
    ck_assert_uint_eq(dl_gguf_alignment(g), 64);
    uint32_t al;
    ck_assert_int_eq(dl_gguf_get_u32(g, "general.alignment", &al), 0);
    ck_assert_uint_eq(al, 64);
    ck_assert_int_eq(dl_gguf_n_tensors(g), 4);
    const char *names[] = {"a", "b", "c", "d"};
    const uint32_t types[] = {DL_TYPE_F32, DL_TYPE_Q8_0, DL_TYPE_Q4_K, DL_TYPE_F16};
    const uint32_t dims[] = {2, 2, 1, 4};
    const int64_t *nes[] = {ne_a, ne_b, ne_c, ne_d};
    for (int t = 0; t < 4; t++) {
        const dl_gguf_tensor *ti = dl_gguf_find_tensor(g, names[t]);
        ck_assert_ptr_nonnull(ti);
        ck_assert_uint_eq(ti->type, types[t]);
        ck_assert_uint_eq(ti->n_dims, dims[t]);
        for (uint32_t d = 0; d < dims[t]; d++)
            ck_assert_int_eq(ti->ne[d], nes[t][d]);
        ck_assert_uint_eq(ti->offset % 64, 0);
        ck_assert_uint_eq(ti->nbytes, nb[t]);
        ck_assert_int_eq(memcmp(ti->data, bytes[t], nb[t]), 0);
        free(bytes[t]);
    }
    dl_gguf_close(g);
    free(m.buf);
}
END_TEST

START_TEST(test_refusals)
{
    dl_gguf_writer *w;
    ck_assert_int_eq(dl_gguf_writer_create(3, &w), -EINVAL);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(dl_gguf_writer_create(32, &w), 0);
    uint32_t v = 1;
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "k", 1), 0);
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "k", 2), -EINVAL);   /* duplicate key */
    ck_assert_int_eq(dl_gguf_writer_add_str(w, "k", "x"), -EINVAL); /* also across types */
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "", 2), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_scalar(w, "s", DL_GGUF_STRING, &v), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_arr(w, "s", DL_GGUF_ARRAY, &v, 1), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "general.alignment", 64), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "general.alignment", 32), 0); /* consistent */
    const int64_t ne[] = {33, 2}, ok[] = {32, 2}, neg[] = {32, -1};
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 2, ne, DL_TYPE_Q8_0, NULL), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 2, ok, 4, NULL), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 2, neg, DL_TYPE_F32, NULL), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 0, ok, DL_TYPE_F32, NULL), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 5, ok, DL_TYPE_F32, NULL), -EINVAL);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, longname, 2, ok, DL_TYPE_F32, NULL), -EINVAL);
    const int64_t huge[] = {INT64_MAX / 4, INT64_MAX / 4};
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "h", 2, huge, DL_TYPE_F32, NULL), -EOVERFLOW);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 2, ok, DL_TYPE_Q8_0, NULL), 0);
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "t", 2, ok, DL_TYPE_Q8_0, NULL), -EINVAL);

    char err[256] = "";
    uint8_t data[68] = {0};
    ck_assert_int_eq(dl_gguf_writer_write(w, data, 1, err, sizeof err), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_finish(w, err, sizeof err), -EINVAL);
    memfile m;
    mem_open(&m);
    ck_assert_int_eq(dl_gguf_writer_begin(w, m.f, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_begin(w, m.f, err, sizeof err), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_add_u32(w, "late", 1), -EINVAL); /* after begin */
    ck_assert_int_eq(dl_gguf_writer_add_tensor(w, "late", 2, ok, DL_TYPE_F32, NULL), -EINVAL);
    ck_assert_int_eq(dl_gguf_writer_write(w, data, 10, err, sizeof err), 0);
    err[0] = 0;
    ck_assert_int_eq(dl_gguf_writer_finish(w, err, sizeof err), -EINVAL); /* incomplete */
    ck_assert_ptr_nonnull(strstr(err, "incomplete"));
    ck_assert_int_eq(dl_gguf_writer_write(w, data, 58, err, sizeof err), 0);
    ck_assert_int_eq(dl_gguf_writer_finish(w, err, sizeof err), 0);
    mem_close(&m);
    dl_gguf_writer_destroy(w);
    dl_gguf *g = reopen(&m);
    ck_assert_int_eq(dl_gguf_n_kv(g), 2);
    ck_assert_int_eq(dl_gguf_n_tensors(g), 1);
    dl_gguf_close(g);
    free(m.buf);
}
END_TEST

static Suite *gguf_write_suite(void)
{
    Suite *s = suite_create("gguf_write");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_all_kv_types);
    tcase_add_test(tc, test_tensors_streamed);
    tcase_add_test(tc, test_refusals);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(gguf_write_suite());
}
