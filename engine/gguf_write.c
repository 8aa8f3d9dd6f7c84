/* gguf_write.c — streaming GGUF v3 writer (see gguf_write.h for the two-phase design). */
#include "gguf_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* Values are serialised by copying host bytes, which is only GGUF's little-endian layout on
 * a little-endian host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "gguf_write assumes little-endian");

#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 64 /* ggml's GGML_MAX_NAME: tensor names must be shorter */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
} wbuf;

struct dl_gguf_writer {
    uint32_t alignment;
    wbuf kv;            /* serialised metadata pairs */
    uint64_t n_kv;
    wbuf keys;          /* NUL-separated key names, for the duplicate check */
    wbuf ti;            /* serialised tensor descriptions */
    uint64_t n_tensors;
    wbuf tnames;        /* NUL-separated tensor names, for the duplicate check */
    uint64_t *sizes;    /* data bytes of each tensor, n_tensors of them */
    size_t sizes_cap;
    uint64_t data_size; /* bytes of the data section so far, each tensor padded */
    /* streaming state */
    FILE *f;
    int streaming;
    uint64_t cur;         /* tensor being written */
    uint64_t cur_written; /* its bytes so far */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int buf_put(wbuf *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return -ENOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static int put_u32(wbuf *b, uint32_t v) { return buf_put(b, &v, 4); }
static int put_u64(wbuf *b, uint64_t v) { return buf_put(b, &v, 8); }

static int put_str(wbuf *b, const char *s, uint64_t len)
{
    int rc = put_u64(b, len);
    return rc ? rc : buf_put(b, s, (size_t)len);
}

/* Whether name occurs in a NUL-separated list. */
static int in_list(const wbuf *b, const char *name)
{
    for (size_t off = 0; off < b->len; off += strlen((const char *)b->p + off) + 1)
        if (strcmp((const char *)b->p + off, name) == 0)
            return 1;
    return 0;
}

static size_t scalar_size(enum dl_gguf_vtype t)
{
    switch (t) {
    case DL_GGUF_U8: case DL_GGUF_I8: case DL_GGUF_BOOL: return 1;
    case DL_GGUF_U16: case DL_GGUF_I16: return 2;
    case DL_GGUF_U32: case DL_GGUF_I32: case DL_GGUF_F32: return 4;
    case DL_GGUF_U64: case DL_GGUF_I64: case DL_GGUF_F64: return 8;
    default: return 0; /* STRING, ARRAY, unknown */
    }
}

int dl_gguf_writer_create(uint32_t alignment, dl_gguf_writer **out)
{
    *out = NULL;
    if (alignment == 0)
        alignment = GGUF_DEFAULT_ALIGNMENT;
    if ((alignment & (alignment - 1)) != 0)
        return -EINVAL;
    dl_gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->alignment = alignment;
    if (alignment != GGUF_DEFAULT_ALIGNMENT) {
        int rc = dl_gguf_writer_add_u32(w, "general.alignment", alignment);
        if (rc) {
            dl_gguf_writer_destroy(w);
            return rc;
        }
    }
    *out = w;
    return 0;
}

void dl_gguf_writer_destroy(dl_gguf_writer *w)
{
    if (!w)
        return;
    free(w->kv.p);
    free(w->keys.p);
    free(w->ti.p);
    free(w->tnames.p);
    free(w->sizes);
    free(w);
}

/* Common start of every pair: validity, uniqueness, the key and the value type. On failure
 * the serialised buffer is rolled back so a rejected pair leaves no trace. */
static int begin_kv(dl_gguf_writer *w, const char *key, enum dl_gguf_vtype type, size_t *mark)
{
    if (w->streaming || !key || !*key || in_list(&w->keys, key))
        return -EINVAL;
    *mark = w->kv.len;
    int rc = buf_put(&w->keys, key, strlen(key) + 1);
    if (rc)
        return rc;
    if ((rc = put_str(&w->kv, key, strlen(key))) || (rc = put_u32(&w->kv, (uint32_t)type))) {
        w->kv.len = *mark;
        w->keys.len -= strlen(key) + 1;
    }
    return rc;
}

static int end_kv(dl_gguf_writer *w, const char *key, size_t mark, int rc)
{
    if (rc) {
        w->kv.len = mark;
        w->keys.len -= strlen(key) + 1;
        return rc;
    }
    w->n_kv++;
    return 0;
}

int dl_gguf_writer_add_scalar(dl_gguf_writer *w, const char *key, enum dl_gguf_vtype type,
                              const void *val)
{
    size_t sz = scalar_size(type), mark;
    if (sz == 0)
        return -EINVAL;
    /* the alignment is the writer's to record: a different value would misplace tensors */
    if (key && strcmp(key, "general.alignment") == 0 &&
        (type != DL_GGUF_U32 || memcmp(val, &w->alignment, 4) != 0))
        return -EINVAL;
    int rc = begin_kv(w, key, type, &mark);
    if (rc)
        return rc;
    return end_kv(w, key, mark, buf_put(&w->kv, val, sz));
}

int dl_gguf_writer_add_u32(dl_gguf_writer *w, const char *key, uint32_t v)
{
    return dl_gguf_writer_add_scalar(w, key, DL_GGUF_U32, &v);
}

int dl_gguf_writer_add_i32(dl_gguf_writer *w, const char *key, int32_t v)
{
    return dl_gguf_writer_add_scalar(w, key, DL_GGUF_I32, &v);
}

int dl_gguf_writer_add_f32(dl_gguf_writer *w, const char *key, float v)
{
    return dl_gguf_writer_add_scalar(w, key, DL_GGUF_F32, &v);
}

int dl_gguf_writer_add_bool(dl_gguf_writer *w, const char *key, int v)
{
    uint8_t b = v ? 1 : 0;
    return dl_gguf_writer_add_scalar(w, key, DL_GGUF_BOOL, &b);
}

int dl_gguf_writer_add_str(dl_gguf_writer *w, const char *key, const char *s)
{
    return dl_gguf_writer_add_strn(w, key, s, strlen(s));
}

int dl_gguf_writer_add_strn(dl_gguf_writer *w, const char *key, const char *s, uint64_t len)
{
    size_t mark;
    int rc = begin_kv(w, key, DL_GGUF_STRING, &mark);
    if (rc)
        return rc;
    return end_kv(w, key, mark, put_str(&w->kv, s, len));
}

int dl_gguf_writer_add_arr(dl_gguf_writer *w, const char *key, enum dl_gguf_vtype elem_type,
                           const void *data, uint64_t n)
{
    size_t sz = scalar_size(elem_type), mark;
    if (sz == 0 || n > SIZE_MAX / sz)
        return -EINVAL;
    int rc = begin_kv(w, key, DL_GGUF_ARRAY, &mark);
    if (rc)
        return rc;
    if (!(rc = put_u32(&w->kv, (uint32_t)elem_type)) && !(rc = put_u64(&w->kv, n)))
        rc = buf_put(&w->kv, data, (size_t)n * sz);
    return end_kv(w, key, mark, rc);
}

int dl_gguf_writer_add_arr_str(dl_gguf_writer *w, const char *key, const dl_str *items,
                               uint64_t n)
{
    size_t mark;
    int rc = begin_kv(w, key, DL_GGUF_ARRAY, &mark);
    if (rc)
        return rc;
    if (!(rc = put_u32(&w->kv, DL_GGUF_STRING)) && !(rc = put_u64(&w->kv, n)))
        for (uint64_t i = 0; i < n && !rc; i++)
            rc = put_str(&w->kv, items[i].ptr, items[i].len);
    return end_kv(w, key, mark, rc);
}

static uint64_t pad_to(uint64_t v, uint32_t a)
{
    return (v + a - 1) / a * a;
}

int dl_gguf_writer_add_tensor(dl_gguf_writer *w, const char *name, uint32_t n_dims,
                              const int64_t *ne, uint32_t type, uint64_t *nbytes)
{
    if (w->streaming || !name || !*name || strlen(name) >= GGUF_MAX_NAME || n_dims == 0 ||
        n_dims > DL_GGUF_MAX_DIMS || in_list(&w->tnames, name))
        return -EINVAL;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] <= 0)
            return -EINVAL;
    size_t row = dl_row_size(type, ne[0]);
    if (row == 0)
        return -EINVAL; /* unknown type or row not a whole number of blocks */
    uint64_t size = row;
    for (uint32_t d = 1; d < n_dims; d++) {
        if (size > UINT64_MAX / (uint64_t)ne[d])
            return -EOVERFLOW;
        size *= (uint64_t)ne[d];
    }
    if (type == DL_TYPE_I2_S) /* bitnet.cpp's per-tensor scale follows the codes */
        size += DL_I2_S_TAIL;
    if (size > UINT64_MAX - w->alignment || w->data_size > UINT64_MAX - pad_to(size, w->alignment))
        return -EOVERFLOW;
    if (w->n_tensors == w->sizes_cap) {
        size_t cap = w->sizes_cap ? w->sizes_cap * 2 : 64;
        uint64_t *ns = realloc(w->sizes, cap * sizeof *ns);
        if (!ns)
            return -ENOMEM;
        w->sizes = ns;
        w->sizes_cap = cap;
    }
    size_t ti_mark = w->ti.len;
    int rc = put_str(&w->ti, name, strlen(name));
    if (!rc)
        rc = put_u32(&w->ti, n_dims);
    for (uint32_t d = 0; d < n_dims && !rc; d++)
        rc = put_u64(&w->ti, (uint64_t)ne[d]);
    if (!rc)
        rc = put_u32(&w->ti, type);
    if (!rc)
        rc = put_u64(&w->ti, w->data_size);
    if (!rc)
        rc = buf_put(&w->tnames, name, strlen(name) + 1);
    if (rc) {
        w->ti.len = ti_mark;
        return rc;
    }
    w->sizes[w->n_tensors++] = size;
    w->data_size += pad_to(size, w->alignment);
    if (nbytes)
        *nbytes = size;
    return 0;
}

static int write_all(dl_gguf_writer *w, const void *p, size_t n, char *err, size_t errlen)
{
    if (n && fwrite(p, 1, n, w->f) != n) {
        set_err(err, errlen, "gguf write: %s", strerror(errno ? errno : EIO));
        return -EIO;
    }
    return 0;
}

static int write_zeros(dl_gguf_writer *w, uint64_t n, char *err, size_t errlen)
{
    static const uint8_t zeros[64];
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        int rc = write_all(w, zeros, k, err, errlen);
        if (rc)
            return rc;
        n -= k;
    }
    return 0;
}

/* Pad the finished tensor and skip over any empty ones that follow. */
static int advance(dl_gguf_writer *w, char *err, size_t errlen)
{
    while (w->cur < w->n_tensors && w->cur_written == w->sizes[w->cur]) {
        uint64_t size = w->sizes[w->cur];
        int rc = write_zeros(w, pad_to(size, w->alignment) - size, err, errlen);
        if (rc)
            return rc;
        w->cur++;
        w->cur_written = 0;
    }
    return 0;
}

int dl_gguf_writer_begin(dl_gguf_writer *w, FILE *f, char *err, size_t errlen)
{
    if (w->streaming) {
        set_err(err, errlen, "gguf write: begin called twice");
        return -EINVAL;
    }
    wbuf hdr = {0};
    int rc = buf_put(&hdr, "GGUF", 4);
    if (!rc)
        rc = put_u32(&hdr, GGUF_VERSION);
    if (!rc)
        rc = put_u64(&hdr, w->n_tensors);
    if (!rc)
        rc = put_u64(&hdr, w->n_kv);
    if (rc) {
        free(hdr.p);
        set_err(err, errlen, "gguf write: out of memory");
        return rc;
    }
    w->f = f;
    w->streaming = 1;
    uint64_t head = hdr.len + w->kv.len + w->ti.len;
    if ((rc = write_all(w, hdr.p, hdr.len, err, errlen)) == 0 &&
        (rc = write_all(w, w->kv.p, w->kv.len, err, errlen)) == 0 &&
        (rc = write_all(w, w->ti.p, w->ti.len, err, errlen)) == 0)
        rc = write_zeros(w, pad_to(head, w->alignment) - head, err, errlen);
    free(hdr.p);
    return rc;
}

int dl_gguf_writer_write(dl_gguf_writer *w, const void *data, size_t n, char *err,
                         size_t errlen)
{
    if (!w->streaming) {
        set_err(err, errlen, "gguf write: data before begin");
        return -EINVAL;
    }
    if (n == 0)
        return 0;
    if (w->cur >= w->n_tensors || n > w->sizes[w->cur] - w->cur_written) {
        set_err(err, errlen, "gguf write: %zu bytes overrun tensor %llu", n,
                (unsigned long long)w->cur);
        return -EINVAL;
    }
    int rc = write_all(w, data, n, err, errlen);
    if (rc)
        return rc;
    w->cur_written += n;
    return advance(w, err, errlen);
}

int dl_gguf_writer_finish(dl_gguf_writer *w, char *err, size_t errlen)
{
    if (!w->streaming) {
        set_err(err, errlen, "gguf write: finish before begin");
        return -EINVAL;
    }
    if (w->cur != w->n_tensors) {
        set_err(err, errlen, "gguf write: tensor %llu of %llu incomplete (%llu of %llu bytes)",
                (unsigned long long)w->cur, (unsigned long long)w->n_tensors,
                (unsigned long long)w->cur_written, (unsigned long long)w->sizes[w->cur]);
        return -EINVAL;
    }
    if (fflush(w->f) != 0) {
        set_err(err, errlen, "gguf write: flush: %s", strerror(errno));
        return -EIO;
    }
    return 0;
}
