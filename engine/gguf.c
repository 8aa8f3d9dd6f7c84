/* gguf.c — validating GGUF reader. See gguf.h.
 *
 * The file is parsed once, front to back, with a bounds-checked cursor. Nothing is trusted:
 * every count is checked against the bytes that remain before anything is allocated for it,
 * so a file claiming 2^60 tensors fails on its first check instead of on malloc.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NAME 4096     /* longest key or tensor name we accept */

typedef struct gguf_kv {
    dl_str key;
    enum dl_gguf_vtype type;
    const uint8_t *val;        /* scalar: the value bytes; string: see str */
    dl_str str;                /* STRING value */
    enum dl_gguf_vtype arr_type; /* ARRAY: element type */
    uint64_t arr_n;            /* ARRAY: element count */
    const uint8_t **arr_strs;  /* ARRAY of STRING: pointer to each element's length field */
} gguf_kv;

struct dl_gguf {
    const uint8_t *base;   /* file bytes */
    uint64_t size;
    void *map;             /* mmap'd region, or NULL when the caller owns the buffer */
    uint32_t version;
    uint32_t alignment;
    unsigned lensz;        /* bytes of a string length / count field: 4 in v1, 8 after */
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    dl_gguf_tensor *tensors;
    uint64_t data_offset;  /* start of the tensor data section */
    /* open-addressing hash tables (index + 1, 0 = empty) for keys and tensor names */
    uint32_t *kv_hash;
    uint64_t kv_hash_cap;
    uint32_t *t_hash;
    uint64_t t_hash_cap;
};

typedef struct cursor {
    const uint8_t *p;
    uint64_t left;
    uint64_t off;  /* offset from the file start, for messages */
} cursor;

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Quote at most 64 bytes of a file string for an error message, non-printables as '?'. */
static const char *quote(dl_str s, char *buf, size_t cap)
{
    size_t n = s.len < 64 ? (size_t)s.len : 64, j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++)
        buf[j++] = (s.ptr[i] >= 32 && s.ptr[i] < 127) ? s.ptr[i] : '?';
    if (s.len > 64 && j + 4 < cap) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = 0;
    return buf;
}

static int take(cursor *c, uint64_t n, const uint8_t **out)
{
    if (n > c->left)
        return -1;
    *out = c->p;
    c->p += n;
    c->left -= n;
    c->off += n;
    return 0;
}

static uint32_t rd_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int get_u32(cursor *c, uint32_t *v)
{
    const uint8_t *p;
    if (take(c, 4, &p))
        return -1;
    *v = rd_u32(p);
    return 0;
}

static int get_u64(cursor *c, uint64_t *v)
{
    const uint8_t *p;
    if (take(c, 8, &p))
        return -1;
    *v = rd_u64(p);
    return 0;
}

/* A count or length field: u32 in GGUF v1, u64 in v2 and v3. */
static int get_len(const dl_gguf *g, cursor *c, uint64_t *v)
{
    if (g->lensz == 4) {
        uint32_t x;
        if (get_u32(c, &x))
            return -1;
        *v = x;
        return 0;
    }
    return get_u64(c, v);
}

static int get_str(const dl_gguf *g, cursor *c, dl_str *s)
{
    uint64_t n;
    const uint8_t *p;
    if (get_len(g, c, &n) || take(c, n, &p))
        return -1;
    s->ptr = (const char *)p;
    s->len = n;
    return 0;
}

static size_t vtype_size(enum dl_gguf_vtype t)
{
    switch (t) {
    case DL_GGUF_U8: case DL_GGUF_I8: case DL_GGUF_BOOL: return 1;
    case DL_GGUF_U16: case DL_GGUF_I16: return 2;
    case DL_GGUF_U32: case DL_GGUF_I32: case DL_GGUF_F32: return 4;
    case DL_GGUF_U64: case DL_GGUF_I64: case DL_GGUF_F64: return 8;
    default: return 0; /* STRING, ARRAY: variable */
    }
}

static const char *vtype_name(enum dl_gguf_vtype t)
{
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < DL_GGUF_VTYPE_COUNT ? names[t] : "?";
}

static uint64_t hash_bytes(const char *p, uint64_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

static int str_eq2(dl_str a, dl_str b)
{
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

int dl_str_eq(dl_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* Insert name (index idx) into a table; returns the index of an existing equal name, or
 * -1 when inserted. The table is sized >= 2x the entries, so probing always ends. */
static int64_t hash_insert(uint32_t *tab, uint64_t cap, dl_str name, int64_t idx,
                           dl_str (*name_at)(const dl_gguf *, int64_t), const dl_gguf *g)
{
    uint64_t h = hash_bytes(name.ptr, name.len) & (cap - 1);
    while (tab[h]) {
        int64_t other = (int64_t)tab[h] - 1;
        if (str_eq2(name_at(g, other), name))
            return other;
        h = (h + 1) & (cap - 1);
    }
    tab[h] = (uint32_t)(idx + 1);
    return -1;
}

static int64_t hash_find(const uint32_t *tab, uint64_t cap, const char *name,
                         dl_str (*name_at)(const dl_gguf *, int64_t), const dl_gguf *g)
{
    if (!cap)
        return -1;
    size_t n = strlen(name);
    uint64_t h = hash_bytes(name, n) & (cap - 1);
    while (tab[h]) {
        int64_t i = (int64_t)tab[h] - 1;
        if (dl_str_eq(name_at(g, i), name))
            return i;
        h = (h + 1) & (cap - 1);
    }
    return -1;
}

static dl_str kv_name_at(const dl_gguf *g, int64_t i) { return g->kv[i].key; }
static dl_str tensor_name_at(const dl_gguf *g, int64_t i) { return g->tensors[i].name; }

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* Read one metadata value of type t (not the key). */
static int read_value(dl_gguf *g, cursor *c, gguf_kv *kv, char *err, size_t errlen)
{
    char q[80];
    if (kv->type == DL_GGUF_STRING) {
        if (get_str(g, c, &kv->str)) {
            set_err(err, errlen, "gguf: string value of key '%s' runs past the end of the file",
                    quote(kv->key, q, sizeof q));
            return -EINVAL;
        }
        return 0;
    }
    if (kv->type != DL_GGUF_ARRAY) {
        size_t sz = vtype_size(kv->type);
        if (take(c, sz, &kv->val)) {
            set_err(err, errlen, "gguf: value of key '%s' runs past the end of the file",
                    quote(kv->key, q, sizeof q));
            return -EINVAL;
        }
        return 0;
    }
    uint32_t et;
    uint64_t n;
    if (get_u32(c, &et) || get_len(g, c, &n)) {
        set_err(err, errlen, "gguf: array header of key '%s' runs past the end of the file",
                quote(kv->key, q, sizeof q));
        return -EINVAL;
    }
    if (et >= DL_GGUF_VTYPE_COUNT) {
        set_err(err, errlen, "gguf: array of key '%s' has unknown element type %u",
                quote(kv->key, q, sizeof q), et);
        return -EINVAL;
    }
    if (et == DL_GGUF_ARRAY) {
        set_err(err, errlen, "gguf: key '%s' is an array of arrays (not supported)",
                quote(kv->key, q, sizeof q));
        return -EINVAL;
    }
    kv->arr_type = (enum dl_gguf_vtype)et;
    kv->arr_n = n;
    kv->val = c->p;
    if (et != DL_GGUF_STRING) {
        size_t sz = vtype_size(kv->arr_type);
        const uint8_t *p;
        if (n > c->left / sz || take(c, n * sz, &p)) {
            set_err(err, errlen, "gguf: array of key '%s' claims %llu elements, more than the "
                    "file holds", quote(kv->key, q, sizeof q), (unsigned long long)n);
            return -EINVAL;
        }
        return 0;
    }
    /* each string needs at least its length field */
    if (n > c->left / g->lensz) {
        set_err(err, errlen, "gguf: string array of key '%s' claims %llu elements, more than "
                "the file holds", quote(kv->key, q, sizeof q), (unsigned long long)n);
        return -EINVAL;
    }
    kv->arr_strs = malloc((n ? n : 1) * sizeof *kv->arr_strs);
    if (!kv->arr_strs) {
        set_err(err, errlen, "gguf: out of memory for string array '%s'",
                quote(kv->key, q, sizeof q));
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        dl_str s;
        kv->arr_strs[i] = c->p;
        if (get_str(g, c, &s)) {
            set_err(err, errlen, "gguf: string %llu of array '%s' runs past the end of the file",
                    (unsigned long long)i, quote(kv->key, q, sizeof q));
            return -EINVAL;
        }
    }
    return 0;
}

static int parse_kvs(dl_gguf *g, cursor *c, char *err, size_t errlen)
{
    char q[80];
    /* smallest possible KV: key length field + type + a 1-byte value */
    uint64_t min_kv = g->lensz + 4 + 1;
    if (g->n_kv < 0 || (uint64_t)g->n_kv > c->left / min_kv) {
        set_err(err, errlen, "gguf: metadata count %lld is more than the file can hold",
                (long long)g->n_kv);
        return -EINVAL;
    }
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof *g->kv);
    g->kv_hash_cap = pow2_at_least((uint64_t)g->n_kv * 2);
    g->kv_hash = calloc(g->kv_hash_cap, sizeof *g->kv_hash);
    if (!g->kv || !g->kv_hash) {
        set_err(err, errlen, "gguf: out of memory");
        return -ENOMEM;
    }
    for (int64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint32_t t;
        if (get_str(g, c, &kv->key)) {
            set_err(err, errlen, "gguf: key %lld runs past the end of the file", (long long)i);
            return -EINVAL;
        }
        if (kv->key.len == 0 || kv->key.len > GGUF_MAX_NAME) {
            set_err(err, errlen, "gguf: key %lld has invalid length %llu", (long long)i,
                    (unsigned long long)kv->key.len);
            return -EINVAL;
        }
        if (get_u32(c, &t)) {
            set_err(err, errlen, "gguf: type of key '%s' runs past the end of the file",
                    quote(kv->key, q, sizeof q));
            return -EINVAL;
        }
        if (t >= DL_GGUF_VTYPE_COUNT) {
            set_err(err, errlen, "gguf: key '%s' has unknown value type %u",
                    quote(kv->key, q, sizeof q), t);
            return -EINVAL;
        }
        kv->type = (enum dl_gguf_vtype)t;
        int rc = read_value(g, c, kv, err, errlen);
        if (rc)
            return rc;
        if (hash_insert(g->kv_hash, g->kv_hash_cap, kv->key, i, kv_name_at, g) >= 0) {
            set_err(err, errlen, "gguf: duplicate key '%s'", quote(kv->key, q, sizeof q));
            return -EINVAL;
        }
    }
    return 0;
}

static int check_alignment(dl_gguf *g, char *err, size_t errlen)
{
    int64_t i = dl_gguf_find_key(g, "general.alignment");
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (i < 0)
        return 0;
    if (g->kv[i].type != DL_GGUF_U32) {
        set_err(err, errlen, "gguf: key 'general.alignment' must be u32, not %s",
                vtype_name(g->kv[i].type));
        return -EINVAL;
    }
    uint32_t a = rd_u32(g->kv[i].val);
    if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
        set_err(err, errlen, "gguf: key 'general.alignment' = %u is not a power of two "
                "between 1 and 2^20", a);
        return -EINVAL;
    }
    g->alignment = a;
    return 0;
}

static int parse_tensor_info(dl_gguf *g, cursor *c, int64_t i, char *err, size_t errlen)
{
    char q[80];
    dl_gguf_tensor *t = &g->tensors[i];
    if (get_str(g, c, &t->name)) {
        set_err(err, errlen, "gguf: name of tensor %lld runs past the end of the file",
                (long long)i);
        return -EINVAL;
    }
    if (t->name.len == 0 || t->name.len > GGUF_MAX_NAME) {
        set_err(err, errlen, "gguf: tensor %lld has invalid name length %llu", (long long)i,
                (unsigned long long)t->name.len);
        return -EINVAL;
    }
    const char *nm = quote(t->name, q, sizeof q);
    if (get_u32(c, &t->n_dims)) {
        set_err(err, errlen, "gguf: tensor '%s': header runs past the end of the file", nm);
        return -EINVAL;
    }
    if (t->n_dims == 0 || t->n_dims > DL_GGUF_MAX_DIMS) {
        set_err(err, errlen, "gguf: tensor '%s' has %u dimensions (1 to %d allowed)", nm,
                t->n_dims, DL_GGUF_MAX_DIMS);
        return -EINVAL;
    }
    uint64_t nelem = 1;
    for (uint32_t d = 0; d < DL_GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if (d < t->n_dims && get_len(g, c, &ne)) {
            set_err(err, errlen, "gguf: tensor '%s': dimensions run past the end of the file",
                    nm);
            return -EINVAL;
        }
        if (ne == 0 || ne > (uint64_t)INT64_MAX) {
            set_err(err, errlen, "gguf: tensor '%s' has invalid dimension %u = %llu", nm, d,
                    (unsigned long long)ne);
            return -EINVAL;
        }
        if (nelem > (uint64_t)INT64_MAX / ne) {
            set_err(err, errlen, "gguf: tensor '%s': element count overflows", nm);
            return -EINVAL;
        }
        nelem *= ne;
        t->ne[d] = (int64_t)ne;
    }
    if (get_u32(c, &t->type) || get_u64(c, &t->offset)) {
        set_err(err, errlen, "gguf: tensor '%s': header runs past the end of the file", nm);
        return -EINVAL;
    }
    const dl_type_traits *tt = dl_type_info(t->type);
    if (!tt) {
        set_err(err, errlen, "gguf: tensor '%s' has unknown type %u", nm, t->type);
        return -EINVAL;
    }
    if (t->ne[0] % tt->blck != 0) {
        set_err(err, errlen, "gguf: tensor '%s': row length %lld is not a multiple of the %s "
                "block size %lld", nm, (long long)t->ne[0], tt->name, (long long)tt->blck);
        return -EINVAL;
    }
    t->nbytes = dl_tensor_nbytes(t->type, t->ne); /* I2_S adds a trailing scale */
    if (t->nbytes == 0) {
        set_err(err, errlen, "gguf: tensor '%s': byte size overflows", nm);
        return -EINVAL;
    }
    if (hash_insert(g->t_hash, g->t_hash_cap, t->name, i, tensor_name_at, g) >= 0) {
        set_err(err, errlen, "gguf: duplicate tensor name '%s'", nm);
        return -EINVAL;
    }
    return 0;
}

static int cmp_offset(const void *a, const void *b)
{
    const dl_gguf_tensor *x = *(const dl_gguf_tensor *const *)a;
    const dl_gguf_tensor *y = *(const dl_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Offsets aligned, data inside the file, no two tensors overlapping. */
static int check_tensor_data(dl_gguf *g, char *err, size_t errlen)
{
    char q[80], q2[80];
    uint64_t data_size = g->size - g->data_offset;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        dl_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            set_err(err, errlen, "gguf: tensor '%s' offset %llu is not aligned to %u",
                    quote(t->name, q, sizeof q), (unsigned long long)t->offset, g->alignment);
            return -EINVAL;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            set_err(err, errlen, "gguf: tensor '%s' data (offset %llu, %llu bytes) lies past "
                    "the end of the file", quote(t->name, q, sizeof q),
                    (unsigned long long)t->offset, (unsigned long long)t->nbytes);
            return -EINVAL;
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    if (g->n_tensors < 2)
        return 0;
    dl_gguf_tensor **order = malloc((size_t)g->n_tensors * sizeof *order);
    if (!order) {
        set_err(err, errlen, "gguf: out of memory");
        return -ENOMEM;
    }
    for (int64_t i = 0; i < g->n_tensors; i++)
        order[i] = &g->tensors[i];
    qsort(order, (size_t)g->n_tensors, sizeof *order, cmp_offset);
    int rc = 0;
    for (int64_t i = 0; i + 1 < g->n_tensors; i++) {
        if (order[i]->offset + order[i]->nbytes > order[i + 1]->offset) {
            set_err(err, errlen, "gguf: tensors '%s' and '%s' overlap",
                    quote(order[i]->name, q, sizeof q), quote(order[i + 1]->name, q2, sizeof q2));
            rc = -EINVAL;
            break;
        }
    }
    free(order);
    return rc;
}

static int parse(dl_gguf *g, char *err, size_t errlen)
{
    cursor c = {g->base, g->size, 0};
    uint32_t magic, version;
    if (get_u32(&c, &magic) || get_u32(&c, &version)) {
        set_err(err, errlen, "gguf: file too short for a header (%llu bytes)",
                (unsigned long long)g->size);
        return -EINVAL;
    }
    if (magic != GGUF_MAGIC) {
        set_err(err, errlen, "gguf: bad magic 0x%08x (not a GGUF file)", magic);
        return -EINVAL;
    }
    if (version < 1 || version > 3) {
        set_err(err, errlen, "gguf: unsupported version %u (1, 2 and 3 are supported)", version);
        return -EINVAL;
    }
    g->version = version;
    g->lensz = version == 1 ? 4 : 8;
    uint64_t nt, nkv;
    if (get_len(g, &c, &nt) || get_len(g, &c, &nkv)) {
        set_err(err, errlen, "gguf: file too short for a header (%llu bytes)",
                (unsigned long long)g->size);
        return -EINVAL;
    }
    if (nkv > (uint64_t)INT32_MAX || nt > (uint64_t)INT32_MAX) {
        set_err(err, errlen, "gguf: counts out of range (%llu tensors, %llu keys)",
                (unsigned long long)nt, (unsigned long long)nkv);
        return -EINVAL;
    }
    g->n_kv = (int64_t)nkv;
    int rc = parse_kvs(g, &c, err, errlen);
    if (rc)
        return rc;
    if ((rc = check_alignment(g, err, errlen)))
        return rc;
    /* smallest tensor info: name length + n_dims + one dimension + type + offset */
    uint64_t min_ti = g->lensz + 4 + g->lensz + 4 + 8;
    if (nt > c.left / min_ti) {
        set_err(err, errlen, "gguf: tensor count %llu is more than the file can hold",
                (unsigned long long)nt);
        return -EINVAL;
    }
    g->n_tensors = (int64_t)nt;
    g->tensors = calloc(nt ? nt : 1, sizeof *g->tensors);
    g->t_hash_cap = pow2_at_least(nt * 2);
    g->t_hash = calloc(g->t_hash_cap, sizeof *g->t_hash);
    if (!g->tensors || !g->t_hash) {
        set_err(err, errlen, "gguf: out of memory");
        return -ENOMEM;
    }
    for (int64_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(g, &c, i, err, errlen)))
            return rc;
    uint64_t a = g->alignment;
    uint64_t start = (c.off + a - 1) / a * a;
    if (start > g->size) {
        if (g->n_tensors > 0) {
            set_err(err, errlen, "gguf: data section starts past the end of the file");
            return -EINVAL;
        }
        start = g->size; /* vocabulary-only files may end right after the header */
    }
    g->data_offset = start;
    return check_tensor_data(g, err, errlen);
}

static int open_buffer(const void *buf, uint64_t len, void *map, dl_gguf **out, char *err,
                       size_t errlen)
{
    dl_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        set_err(err, errlen, "gguf: out of memory");
        return -ENOMEM;
    }
    g->base = buf;
    g->size = len;
    g->map = map;
    int rc = parse(g, err, errlen);
    if (rc) {
        dl_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int dl_gguf_open_memory(const void *buf, size_t len, dl_gguf **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!buf && len) {
        set_err(err, errlen, "gguf: no buffer");
        return -EINVAL;
    }
    return open_buffer(buf, len, NULL, out, err, errlen);
}

int dl_gguf_open(const char *path, dl_gguf **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -EINVAL;
    }
    if (st.st_size < 8) {
        set_err(err, errlen, "%s: gguf: file too short for a header (%lld bytes)", path,
                (long long)st.st_size);
        close(fd);
        return -EINVAL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        set_err(err, errlen, "%s: mmap: %s", path, strerror(e));
        return -e;
    }
    char sub[512] = "";
    int rc = open_buffer(map, (uint64_t)st.st_size, map, out, sub, sizeof sub);
    if (rc)
        set_err(err, errlen, "%s: %s", path, sub);
    return rc;
}

void dl_gguf_close(dl_gguf *g)
{
    if (!g)
        return;
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++)
            free(g->kv[i].arr_strs);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->map)
        munmap(g->map, g->size);
    free(g);
}

uint32_t dl_gguf_version(const dl_gguf *g) { return g->version; }
uint64_t dl_gguf_file_size(const dl_gguf *g) { return g->size; }
uint32_t dl_gguf_alignment(const dl_gguf *g) { return g->alignment; }
int64_t dl_gguf_n_kv(const dl_gguf *g) { return g->n_kv; }
int64_t dl_gguf_n_tensors(const dl_gguf *g) { return g->n_tensors; }

int64_t dl_gguf_find_key(const dl_gguf *g, const char *key)
{
    return hash_find(g->kv_hash, g->kv_hash_cap, key, kv_name_at, g);
}

dl_str dl_gguf_key_name(const dl_gguf *g, int64_t i) { return g->kv[i].key; }
enum dl_gguf_vtype dl_gguf_key_type(const dl_gguf *g, int64_t i) { return g->kv[i].type; }

const dl_gguf_tensor *dl_gguf_tensor_at(const dl_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const dl_gguf_tensor *dl_gguf_find_tensor(const dl_gguf *g, const char *name)
{
    int64_t i = hash_find(g->t_hash, g->t_hash_cap, name, tensor_name_at, g);
    return i >= 0 ? &g->tensors[i] : NULL;
}

/* Read an integer-typed scalar as a signed 128-bit-safe pair (neg flag + magnitude). */
static int scalar_int(const gguf_kv *kv, int64_t *sv, uint64_t *uv, int *is_signed)
{
    const uint8_t *p = kv->val;
    *is_signed = 1;
    switch (kv->type) {
    case DL_GGUF_U8: case DL_GGUF_BOOL: *sv = p[0]; break;
    case DL_GGUF_I8: *sv = (int8_t)p[0]; break;
    case DL_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *sv = v; break; }
    case DL_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *sv = v; break; }
    case DL_GGUF_U32: *sv = rd_u32(p); break;
    case DL_GGUF_I32: *sv = (int32_t)rd_u32(p); break;
    case DL_GGUF_I64: *sv = (int64_t)rd_u64(p); break;
    case DL_GGUF_U64: *uv = rd_u64(p); *is_signed = 0; break;
    default: return -EINVAL;
    }
    return 0;
}

static const gguf_kv *find(const dl_gguf *g, const char *key)
{
    int64_t i = dl_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i];
}

int dl_gguf_get_i64(const dl_gguf *g, const char *key, int64_t *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    int64_t s = 0;
    uint64_t u = 0;
    int sg;
    if (scalar_int(kv, &s, &u, &sg))
        return -EINVAL;
    if (!sg) {
        if (u > (uint64_t)INT64_MAX)
            return -EINVAL;
        s = (int64_t)u;
    }
    *out = s;
    return 0;
}

int dl_gguf_get_u32(const dl_gguf *g, const char *key, uint32_t *out)
{
    int64_t v;
    int rc = dl_gguf_get_i64(g, key, &v);
    if (rc)
        return rc;
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

int dl_gguf_get_f32(const dl_gguf *g, const char *key, float *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type == DL_GGUF_F32) {
        memcpy(out, kv->val, 4);
        return 0;
    }
    if (kv->type == DL_GGUF_F64) {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
        return 0;
    }
    int64_t v;
    if (dl_gguf_get_i64(g, key, &v))
        return -EINVAL;
    *out = (float)v;
    return 0;
}

int dl_gguf_get_bool(const dl_gguf *g, const char *key, int *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != DL_GGUF_BOOL && kv->type != DL_GGUF_U8 && kv->type != DL_GGUF_I8)
        return -EINVAL;
    *out = kv->val[0] != 0;
    return 0;
}

int dl_gguf_get_str(const dl_gguf *g, const char *key, dl_str *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != DL_GGUF_STRING)
        return -EINVAL;
    *out = kv->str;
    return 0;
}

int dl_gguf_get_arr(const dl_gguf *g, const char *key, enum dl_gguf_vtype *type, uint64_t *n,
                    const void **data)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != DL_GGUF_ARRAY)
        return -EINVAL;
    *type = kv->arr_type;
    *n = kv->arr_n;
    *data = kv->val;
    return 0;
}

int dl_gguf_arr_str(const dl_gguf *g, const char *key, uint64_t i, dl_str *out)
{
    const gguf_kv *kv = find(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != DL_GGUF_ARRAY || kv->arr_type != DL_GGUF_STRING || i >= kv->arr_n)
        return -EINVAL;
    const uint8_t *p = kv->arr_strs[i];
    uint64_t len = g->lensz == 4 ? rd_u32(p) : rd_u64(p);
    out->ptr = (const char *)p + g->lensz;
    out->len = len;
    return 0;
}

static void format_scalar(enum dl_gguf_vtype t, const uint8_t *p, char *buf, size_t len)
{
    switch (t) {
    case DL_GGUF_U8: snprintf(buf, len, "%u", p[0]); break;
    case DL_GGUF_I8: snprintf(buf, len, "%d", (int8_t)p[0]); break;
    case DL_GGUF_BOOL: snprintf(buf, len, "%s", p[0] ? "true" : "false"); break;
    case DL_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); snprintf(buf, len, "%u", v); break; }
    case DL_GGUF_I16: { int16_t v; memcpy(&v, p, 2); snprintf(buf, len, "%d", v); break; }
    case DL_GGUF_U32: snprintf(buf, len, "%u", rd_u32(p)); break;
    case DL_GGUF_I32: snprintf(buf, len, "%d", (int32_t)rd_u32(p)); break;
    case DL_GGUF_U64: snprintf(buf, len, "%llu", (unsigned long long)rd_u64(p)); break;
    case DL_GGUF_I64: snprintf(buf, len, "%lld", (long long)(int64_t)rd_u64(p)); break;
    case DL_GGUF_F32: { float v; memcpy(&v, p, 4); snprintf(buf, len, "%g", v); break; }
    case DL_GGUF_F64: { double v; memcpy(&v, p, 8); snprintf(buf, len, "%g", v); break; }
    default: snprintf(buf, len, "?"); break;
    }
}

void dl_gguf_format_value(const dl_gguf *g, int64_t i, char *buf, size_t len)
{
    const gguf_kv *kv = &g->kv[i];
    char q[80];
    if (kv->type == DL_GGUF_STRING) {
        snprintf(buf, len, "\"%s\"", quote(kv->str, q, sizeof q));
    } else if (kv->type == DL_GGUF_ARRAY) {
        snprintf(buf, len, "[%s x %llu]", vtype_name(kv->arr_type),
                 (unsigned long long)kv->arr_n);
    } else {
        format_scalar(kv->type, kv->val, buf, len);
    }
}
