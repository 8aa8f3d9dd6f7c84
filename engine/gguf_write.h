/* gguf_write.h — streaming writer for GGUF version 3 files.
 *
 * A GGUF file starts with counts of metadata pairs and tensors, so everything before the
 * tensor data must be known before the first byte is written. The writer therefore works in
 * two phases:
 *   1. describe: add metadata (kept in memory — a vocabulary is a few MB) and tensor
 *      descriptions (name, shape, type; their offsets are assigned here, in order);
 *   2. stream: dl_gguf_writer_begin() writes the header, then the tensor data is written in
 *      the order the tensors were added, in as many dl_gguf_writer_write() calls as the
 *      caller likes (row by row), so a multi-GB model never sits in memory.
 * dl_gguf_writer_finish() checks that every tensor got exactly its size and flushes.
 *
 * Keys and tensor names must be unique. All values are written little-endian (the host
 * order on every machine we build for; see the static assert in gguf_write.c).
 */
#ifndef DL_GGUF_WRITE_H
#define DL_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf.h" /* dl_str, enum dl_gguf_vtype */

typedef struct dl_gguf_writer dl_gguf_writer;

/* alignment: of the data section and every tensor; 0 means GGUF's default, 32. A value
 * other than 32 is recorded as general.alignment. Returns 0, -EINVAL or -ENOMEM. */
int dl_gguf_writer_create(uint32_t alignment, dl_gguf_writer **out);
void dl_gguf_writer_destroy(dl_gguf_writer *w);

/* Metadata. All return 0, -EINVAL (duplicate key, bad type, already streaming) or -ENOMEM.
 * add_scalar: *val holds one value of the given scalar type (not STRING or ARRAY). */
int dl_gguf_writer_add_scalar(dl_gguf_writer *w, const char *key, enum dl_gguf_vtype type,
                              const void *val);
int dl_gguf_writer_add_u32(dl_gguf_writer *w, const char *key, uint32_t v);
int dl_gguf_writer_add_i32(dl_gguf_writer *w, const char *key, int32_t v);
int dl_gguf_writer_add_f32(dl_gguf_writer *w, const char *key, float v);
int dl_gguf_writer_add_bool(dl_gguf_writer *w, const char *key, int v);
int dl_gguf_writer_add_str(dl_gguf_writer *w, const char *key, const char *s);
int dl_gguf_writer_add_strn(dl_gguf_writer *w, const char *key, const char *s, uint64_t len);
/* An array of n scalars of elem_type, packed little-endian in data. */
int dl_gguf_writer_add_arr(dl_gguf_writer *w, const char *key, enum dl_gguf_vtype elem_type,
                           const void *data, uint64_t n);
/* An array of n strings. */
int dl_gguf_writer_add_arr_str(dl_gguf_writer *w, const char *key, const dl_str *items,
                               uint64_t n);

/* Describe a tensor: ne[0] is the row length (as in gguf.h); type is enum dl_type and
 * ne[0] must be a multiple of its block size. Returns 0, -EINVAL, -EOVERFLOW or -ENOMEM.
 * *nbytes (may be NULL) gets the number of data bytes the tensor will take. */
int dl_gguf_writer_add_tensor(dl_gguf_writer *w, const char *name, uint32_t n_dims,
                              const int64_t *ne, uint32_t type, uint64_t *nbytes);

/* Write header, metadata and tensor descriptions to f (opened "wb"; the writer never
 * closes it), padded to the data section. 0, or -EIO / -EINVAL with a message. */
int dl_gguf_writer_begin(dl_gguf_writer *w, FILE *f, char *err, size_t errlen);
/* Append n bytes of the current tensor's data (tensors in the order they were added, in
 * any chunking). A call must not run past the end of the current tensor; the writer moves
 * on to the next one and inserts the alignment padding itself. -EINVAL on overrun or when
 * not streaming, -EIO on a write failure. */
int dl_gguf_writer_write(dl_gguf_writer *w, const void *data, size_t n, char *err,
                         size_t errlen);
/* Check every tensor was written in full, flush. 0, -EINVAL or -EIO. */
int dl_gguf_writer_finish(dl_gguf_writer *w, char *err, size_t errlen);

#endif
