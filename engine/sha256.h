/* sha256.h — SHA-256 (FIPS 180-4), for checking downloaded and local model files.
 *
 * Streaming: init, update any number of times with any lengths, final. No allocation; the
 * context is a plain struct the caller owns. dl_sha256_file hashes a whole file. */
#ifndef DL_SHA256_H
#define DL_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct dl_sha256 {
    uint32_t h[8];      /* chaining state */
    uint64_t nbytes;    /* message length so far, bytes */
    uint8_t buf[64];    /* pending partial block */
    size_t nbuf;        /* bytes in buf, < 64 */
} dl_sha256;

void dl_sha256_init(dl_sha256 *s);
void dl_sha256_update(dl_sha256 *s, const void *data, size_t len);
/* Writes the 32-byte digest; the context must be initialised again before reuse. */
void dl_sha256_final(dl_sha256 *s, uint8_t out[32]);

/* One-shot helpers. hex gets 64 lowercase hex digits and a NUL. */
void dl_sha256_hex(const void *data, size_t len, char hex[65]);
void dl_sha256_tohex(const uint8_t digest[32], char hex[65]);
/* Hashes the file at path: 0, or a negative errno with a message in err. */
int dl_sha256_file(const char *path, char hex[65], char *err, size_t errlen);

#endif
