#include "sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dl_sbuf_init(dl_sbuf *b, size_t cap)
{
    memset(b, 0, sizeof *b);
    if (cap < 64)
        cap = 64;
    b->p = malloc(cap);
    if (!b->p) {
        b->oom = 1;
        return -1;
    }
    b->cap = cap;
    b->p[0] = 0;
    return 0;
}

void dl_sbuf_free(dl_sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

int dl_sbuf_reserve(dl_sbuf *b, size_t extra)
{
    if (b->oom)
        return -1;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void dl_sbuf_add(dl_sbuf *b, const char *s, size_t n)
{
    if (dl_sbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void dl_sbuf_puts(dl_sbuf *b, const char *s) { dl_sbuf_add(b, s, strlen(s)); }

void dl_sbuf_printf(dl_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    char tmp[256];
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        dl_sbuf_add(b, tmp, (size_t)n);
        return;
    }
    if (dl_sbuf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void dl_sbuf_json_str(dl_sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (dl_sbuf_reserve(b, n + 2))
        return;
    dl_sbuf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        if (ch == '"') esc = "\\\"";
        else if (ch == '\\') esc = "\\\\";
        else if (ch == '\n') esc = "\\n";
        else if (ch == '\r') esc = "\\r";
        else if (ch == '\t') esc = "\\t";
        else if (ch < 0x20 || ch == 0x7f) {
            u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
            u[4] = hex[ch >> 4]; u[5] = hex[ch & 15]; u[6] = 0;
            esc = u;
        }
        if (esc) {
            dl_sbuf_add(b, s + i - run, run);
            run = 0;
            dl_sbuf_puts(b, esc);
        } else {
            run++;
        }
    }
    dl_sbuf_add(b, s + n - run, run);
    dl_sbuf_add(b, "\"", 1);
}

void dl_sbuf_consume(dl_sbuf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = 0;
}

int dl_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + (size_t)len > n)
            return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += (size_t)len;
    }
    return 1;
}
