/* tokenizer.h — text <-> token ids for the vocabularies GGUF files carry.
 *
 * Two models, chosen by `tokenizer.ggml.model`:
 *   "llama" — SentencePiece-style BPE over scores, with byte fallback (<0xNN> tokens) and
 *             the leading-space ("▁") convention;
 *   "gpt2"  — byte-level BPE over merges; pre-tokenizer from `tokenizer.ggml.pre`
 *             ("llama-bpe" = Llama-3's split regex, implemented in C; a whole pre-token
 *             already in the vocabulary is emitted as is).
 * Special (control / user-defined) tokens are matched in text only when asked.
 */
#ifndef DL_TOKENIZER_H
#define DL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct dl_tokenizer dl_tokenizer;

/* Token types as GGUF stores them (tokenizer.ggml.token_type). */
enum dl_token_type {
    DL_TOK_UNDEFINED = 0, DL_TOK_NORMAL = 1, DL_TOK_UNKNOWN = 2, DL_TOK_CONTROL = 3,
    DL_TOK_USER_DEFINED = 4, DL_TOK_UNUSED = 5, DL_TOK_BYTE = 6
};

/* Build from a GGUF's tokenizer.ggml.* keys. The tokenizer copies what it needs, so the
 * gguf may be closed afterwards. 0 or negative error with a message naming the key. */
int dl_tokenizer_from_gguf(const dl_gguf *g, dl_tokenizer **out, char *err, size_t errlen);
void dl_tokenizer_free(dl_tokenizer *t);

int32_t dl_tokenizer_n_vocab(const dl_tokenizer *t);
int32_t dl_tokenizer_bos(const dl_tokenizer *t);   /* -1 when none */
int32_t dl_tokenizer_eos(const dl_tokenizer *t);   /* -1 when none */
int32_t dl_tokenizer_eot(const dl_tokenizer *t);   /* end-of-turn (<|eot_id|>), -1 when none */
int dl_tokenizer_add_bos(const dl_tokenizer *t);   /* tokenizer.ggml.add_bos_token */
int dl_tokenizer_is_eog(const dl_tokenizer *t, int32_t id); /* EOS, EOT or another end token */
int dl_tokenizer_token_type(const dl_tokenizer *t, int32_t id);
const char *dl_tokenizer_model(const dl_tokenizer *t); /* "llama" or "gpt2" */
/* Look a token up by its exact vocabulary text; -1 when absent. */
int32_t dl_tokenizer_find(const dl_tokenizer *t, const char *text, size_t len);

/* Encode UTF-8 text. add_bos: prepend BOS; parse_special: recognise special-token text
 * such as "<|eot_id|>" as that token. Writes at most cap ids; returns the number of ids
 * the text needs (which may exceed cap: call again with a larger buffer), or a negative
 * error (-E2BIG past 512 MiB of text). Invalid UTF-8 is encoded byte-wise, never rejected.
 * User-defined tokens are matched even without parse_special, as llama.cpp does. */
int dl_tokenize(const dl_tokenizer *t, const char *text, size_t len, int add_bos,
                int parse_special, int32_t *ids, int cap);

/* The bytes one token stands for, as they appear in the output text ("▁" -> ' ', <0x0A> ->
 * '\n', byte-level BPE decoded to raw bytes). Control tokens give "" unless special != 0,
 * in which case their text is returned. Returns the length; writes at most cap bytes. */
int dl_token_to_piece(const dl_tokenizer *t, int32_t id, int special, char *buf, int cap);

/* Decode a whole sequence (concatenated pieces; with the SentencePiece leading space of
 * the first token removed when remove_leading_space). Returns the length needed. */
int dl_detokenize(const dl_tokenizer *t, const int32_t *ids, int n, int remove_leading_space,
                  int special, char *buf, int cap);

/* Streaming detokeniser: pieces are appended, and only complete UTF-8 sequences come out;
 * a piece ending inside a multi-byte sequence is held back until it completes. Invalid
 * bytes come out as U+FFFD. One per generated stream; no allocation after init. */
typedef struct dl_utf8_stream {
    unsigned char pending[8]; /* bytes of an incomplete sequence */
    int n_pending;
} dl_utf8_stream;

void dl_utf8_stream_init(dl_utf8_stream *s);
/* Feed bytes; writes the complete, valid text to out and returns its length. Each invalid
 * byte can become a 3-byte U+FFFD, so cap >= 3 * len + 8 is always enough (output that
 * does not fit in cap is dropped). */
int dl_utf8_stream_feed(dl_utf8_stream *s, const char *in, int len, char *out, int cap);
/* End of stream: flush a held incomplete sequence as U+FFFD. */
int dl_utf8_stream_flush(dl_utf8_stream *s, char *out, int cap);

#endif
