/* gguf.h — validating, memory-mapped reader for GGUF files (versions 1, 2 and 3).
 *
 * Every number read from the file is checked before it is used: counts against the bytes
 * left, string and array lengths, integer overflow in sizes, tensor offsets (inside the
 * data section, aligned), dimension products and tensor types. A bad file yields a negative
 * error code and a message in the caller's buffer naming the problem and the key or tensor;
 * nothing in here aborts on file data.
 *
 * Strings returned by this module point into the mapping and are NOT NUL-terminated: use
 * the (ptr, len) pair. They stay valid until dl_gguf_close().
 */
#ifndef DL_GGUF_H
#define DL_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as in the GGUF specification. */
enum dl_gguf_vtype {
    DL_GGUF_U8 = 0, DL_GGUF_I8 = 1, DL_GGUF_U16 = 2, DL_GGUF_I16 = 3,
    DL_GGUF_U32 = 4, DL_GGUF_I32 = 5, DL_GGUF_F32 = 6, DL_GGUF_BOOL = 7,
    DL_GGUF_STRING = 8, DL_GGUF_ARRAY = 9, DL_GGUF_U64 = 10, DL_GGUF_I64 = 11,
    DL_GGUF_F64 = 12,
    DL_GGUF_VTYPE_COUNT
};

#define DL_GGUF_MAX_DIMS 4

typedef struct dl_str {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;    /* bytes */
} dl_str;

typedef struct dl_gguf_tensor {
    dl_str name;
    uint32_t n_dims;
    int64_t ne[DL_GGUF_MAX_DIMS]; /* elements per dimension; ne[0] is the row length */
    uint32_t type;                /* enum dl_type (quant.h) */
    uint64_t offset;              /* bytes from the start of the data section */
    uint64_t nbytes;              /* size of the tensor data */
    const void *data;             /* pointer into the mapping */
} dl_gguf_tensor;

typedef struct dl_gguf dl_gguf;

/* Open and validate a file (mmap, read-only). Returns 0 or a negative errno-style code. */
int dl_gguf_open(const char *path, dl_gguf **out, char *err, size_t errlen);
/* Validate a buffer the caller owns and keeps alive until close (tests, fuzzing). */
int dl_gguf_open_memory(const void *buf, size_t len, dl_gguf **out, char *err, size_t errlen);
void dl_gguf_close(dl_gguf *g);

uint32_t dl_gguf_version(const dl_gguf *g);
uint64_t dl_gguf_file_size(const dl_gguf *g);
uint32_t dl_gguf_alignment(const dl_gguf *g);

/* Metadata. Keys are looked up by exact name; index-based access walks them in file order. */
int64_t dl_gguf_n_kv(const dl_gguf *g);
int64_t dl_gguf_find_key(const dl_gguf *g, const char *key); /* index, or -1 */
dl_str dl_gguf_key_name(const dl_gguf *g, int64_t i);
enum dl_gguf_vtype dl_gguf_key_type(const dl_gguf *g, int64_t i);

/* Typed getters: 0 on success, -ENOENT when the key is absent, -EINVAL when it has a type
 * that cannot be converted (integers convert between widths only when the value fits). */
int dl_gguf_get_u32(const dl_gguf *g, const char *key, uint32_t *out);
int dl_gguf_get_i64(const dl_gguf *g, const char *key, int64_t *out);
int dl_gguf_get_f32(const dl_gguf *g, const char *key, float *out);
int dl_gguf_get_bool(const dl_gguf *g, const char *key, int *out);
int dl_gguf_get_str(const dl_gguf *g, const char *key, dl_str *out);

/* Arrays: element type and count; for scalar element types *data points at the packed
 * little-endian values in the mapping. String arrays are read with dl_gguf_arr_str. */
int dl_gguf_get_arr(const dl_gguf *g, const char *key, enum dl_gguf_vtype *type,
                    uint64_t *n, const void **data);
int dl_gguf_arr_str(const dl_gguf *g, const char *key, uint64_t i, dl_str *out);

/* Print one metadata value as text into buf (arrays summarised). For `inspect`. */
void dl_gguf_format_value(const dl_gguf *g, int64_t i, char *buf, size_t len);

/* Tensors. */
int64_t dl_gguf_n_tensors(const dl_gguf *g);
const dl_gguf_tensor *dl_gguf_tensor_at(const dl_gguf *g, int64_t i);
const dl_gguf_tensor *dl_gguf_find_tensor(const dl_gguf *g, const char *name); /* or NULL */

/* Compare a dl_str with a C string. */
int dl_str_eq(dl_str s, const char *c);

#endif
