/* unicode.h — the little Unicode the tokenizers need: UTF-8 decoding that never fails,
 * and the character classes of Llama-3's pre-tokenizer regex (\p{L}, \p{N}, \s).
 */
#ifndef DL_UNICODE_H
#define DL_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Decode one well-formed UTF-8 sequence (no overlongs, surrogates or values past
 * U+10FFFF) at s[0..len). Returns its length 1..4 and sets *cp, or 0 when the bytes there
 * do not start a complete valid sequence (the caller then treats s[0] as a lone byte). */
int dl_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp);
/* Encode cp (<= U+10FFFF) into out[0..4); returns the byte count. */
int dl_utf8_encode(uint32_t cp, char *out);

int dl_unicode_is_letter(uint32_t cp);     /* general category L* */
int dl_unicode_is_number(uint32_t cp);     /* general category N* */
int dl_unicode_is_whitespace(uint32_t cp); /* White_Space property (regex \s) */

#endif
