/* sbuf.h — a growable byte buffer for building responses, with JSON string escaping.
 * Growth doubles, so a buffer sized at request start rarely reallocates per token. An
 * allocation failure latches `oom` and further appends are dropped; callers check once. */
#ifndef DL_SBUF_H
#define DL_SBUF_H

#include <stddef.h>

typedef struct dl_sbuf {
    char *p;      /* NUL-terminated when len < cap */
    size_t len;   /* bytes used */
    size_t cap;   /* bytes allocated */
    int oom;      /* an append failed */
} dl_sbuf;

int dl_sbuf_init(dl_sbuf *b, size_t cap);
void dl_sbuf_free(dl_sbuf *b);
int dl_sbuf_reserve(dl_sbuf *b, size_t extra);
void dl_sbuf_add(dl_sbuf *b, const char *s, size_t n);
void dl_sbuf_puts(dl_sbuf *b, const char *s);
void dl_sbuf_printf(dl_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s[0..n) as a quoted JSON string. Input must be valid UTF-8 (control characters
 * are escaped; bytes >= 0x80 are copied). */
void dl_sbuf_json_str(dl_sbuf *b, const char *s, size_t n);
/* Drop the first n bytes (consumed by a writer). */
void dl_sbuf_consume(dl_sbuf *b, size_t n);

/* 1 when s[0..n) is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
int dl_utf8_valid(const char *s, size_t n);

#endif
