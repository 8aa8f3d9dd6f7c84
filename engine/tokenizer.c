/* tokenizer.c — SentencePiece-style and byte-level BPE tokenizers over a GGUF vocabulary.
 *
 * Both encoders follow llama.cpp's algorithms step for step, because a model only works
 * with the exact ids its training tokenizer produced; the test vectors are llama.cpp's.
 *
 * Everything searched by text is hashed once at load: token text -> id, and for byte-level
 * BPE the merge pair (left text, right text) -> rank. Token texts live in one pool indexed
 * by offsets, so a 128k vocabulary costs a handful of allocations. Encoding allocates its
 * working arrays per call (it runs once per prompt, not per generated token); decoding and
 * the UTF-8 stream allocate nothing.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"

enum { KIND_SPM, KIND_BPE };

struct dl_tokenizer {
    int kind;            /* KIND_SPM ("llama") or KIND_BPE ("gpt2") */
    int32_t n_vocab;
    char *pool;          /* every token's text, back to back */
    uint32_t *off;       /* [n_vocab + 1] token i is pool[off[i] .. off[i+1]) */
    float *scores;       /* [n_vocab] SPM merge priority (higher merges first) */
    uint8_t *types;      /* [n_vocab] enum dl_token_type */
    int32_t *tok_hash;   /* [tok_mask + 1] open addressing: token id, -1 = empty */
    uint32_t tok_mask;

    /* Byte-level BPE merges: merge r is mpool[moff[r] .. moff[r+1]), its left part the
     * first mleft[r] bytes, then one space, then the right part. */
    int32_t n_merges;
    char *mpool;
    uint32_t *moff;      /* [n_merges + 1] */
    uint32_t *mleft;     /* [n_merges] */
    int32_t *merge_hash; /* [merge_mask + 1] rank, -1 = empty */
    uint32_t merge_mask;

    int32_t *specials;   /* control / user-defined / unknown tokens, longest text first */
    int n_specials;

    int32_t byte_tok[256];       /* SPM byte fallback: id of <0xNN> (or -1) */
    char byte_enc[256][2];       /* BPE: byte -> GPT-2 printable codepoint, as UTF-8 */
    uint8_t byte_enc_len[256];
    int16_t byte_dec[0x144];     /* BPE: codepoint (< 0x144) -> byte, -1 when unmapped */

    int32_t bos, eos, eot, eom, unk;
    int add_bos;
    int add_space_prefix;        /* SPM: prepend "▁" to text that starts a fragment */
    int ignore_merges;           /* BPE: a pre-token found whole in the vocab is one token */
};

/* ---- small helpers ------------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#define HASH_SEED 0xcbf29ce484222325ULL

static uint32_t table_mask_for(uint64_t n)
{
    uint64_t cap = 16;
    while (cap < n * 2)
        cap <<= 1;
    return (uint32_t)(cap - 1);
}

static const char *tok_text(const dl_tokenizer *t, int32_t id, size_t *len)
{
    *len = t->off[id + 1] - t->off[id];
    return t->pool + t->off[id];
}

int32_t dl_tokenizer_find(const dl_tokenizer *t, const char *text, size_t len)
{
    uint32_t i = (uint32_t)hash_bytes(HASH_SEED, text, len) & t->tok_mask;
    for (;; i = (i + 1) & t->tok_mask) {
        int32_t id = t->tok_hash[i];
        if (id < 0)
            return -1;
        size_t n;
        const char *s = tok_text(t, id, &n);
        if (n == len && memcmp(s, text, len) == 0)
            return id;
    }
}

static uint64_t merge_hash_of(const char *l, size_t ll, const char *r, size_t rl)
{
    /* 0xFF never occurs in UTF-8, so it separates the parts unambiguously. */
    uint64_t h = hash_bytes(HASH_SEED, l, ll);
    h = hash_bytes(h, "\xff", 1);
    return hash_bytes(h, r, rl);
}

/* Rank of merging (l, r), or -1 when the pair is not a merge. */
static int32_t merge_rank(const dl_tokenizer *t, const char *l, size_t ll, const char *r,
                          size_t rl)
{
    if (t->n_merges == 0)
        return -1;
    uint32_t i = (uint32_t)merge_hash_of(l, ll, r, rl) & t->merge_mask;
    for (;; i = (i + 1) & t->merge_mask) {
        int32_t m = t->merge_hash[i];
        if (m < 0)
            return -1;
        const char *s = t->mpool + t->moff[m];
        size_t ml = t->mleft[m], mr = t->moff[m + 1] - t->moff[m] - ml - 1;
        if (ml == ll && mr == rl && memcmp(s, l, ll) == 0 && memcmp(s + ml + 1, r, rl) == 0)
            return m;
    }
}

/* ---- loading -------------------------------------------------------------------------- */

/* Optional token id key: absent keeps *id; present must be inside the vocabulary. */
static int get_id_key(const dl_gguf *g, const char *key, int32_t n_vocab, int32_t *id,
                      char *err, size_t errlen)
{
    int64_t v;
    int rc = dl_gguf_get_i64(g, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0) {
        set_err(err, errlen, "%s: not an integer", key);
        return -EINVAL;
    }
    if (v < 0 || v >= n_vocab) {
        set_err(err, errlen, "%s: id %lld outside the vocabulary of %d", key, (long long)v,
                (int)n_vocab);
        return -EINVAL;
    }
    *id = (int32_t)v;
    return 0;
}

static int get_bool_key(const dl_gguf *g, const char *key, int *val, char *err, size_t errlen)
{
    int rc = dl_gguf_get_bool(g, key, val);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0) {
        set_err(err, errlen, "%s: not a bool", key);
        return -EINVAL;
    }
    *val = *val != 0;
    return 0;
}

static int load_tokens(dl_tokenizer *t, const dl_gguf *g, char *err, size_t errlen)
{
    const char *key = "tokenizer.ggml.tokens";
    enum dl_gguf_vtype ty;
    uint64_t n;
    const void *data;
    if (dl_gguf_get_arr(g, key, &ty, &n, &data) < 0 || ty != DL_GGUF_STRING) {
        set_err(err, errlen, "%s: missing or not an array of strings", key);
        return -EINVAL;
    }
    if (n == 0 || n > INT32_MAX / 2) {
        set_err(err, errlen, "%s: bad token count %llu", key, (unsigned long long)n);
        return -EINVAL;
    }
    t->n_vocab = (int32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        dl_str s;
        if (dl_gguf_arr_str(g, key, i, &s) < 0) {
            set_err(err, errlen, "%s: cannot read token %llu", key, (unsigned long long)i);
            return -EINVAL;
        }
        total += s.len;
    }
    if (total > UINT32_MAX - 1) {
        set_err(err, errlen, "%s: token texts too large", key);
        return -EINVAL;
    }
    t->pool = malloc(total + 1);
    t->off = malloc((n + 1) * sizeof *t->off);
    t->scores = calloc(n, sizeof *t->scores);
    t->types = malloc(n);
    t->tok_mask = table_mask_for(n);
    t->tok_hash = malloc(((size_t)t->tok_mask + 1) * sizeof *t->tok_hash);
    if (!t->pool || !t->off || !t->scores || !t->types || !t->tok_hash) {
        set_err(err, errlen, "out of memory for %llu tokens", (unsigned long long)n);
        return -ENOMEM;
    }
    uint32_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        dl_str s;
        dl_gguf_arr_str(g, key, i, &s);
        t->off[i] = pos;
        memcpy(t->pool + pos, s.ptr, s.len);
        pos += (uint32_t)s.len;
    }
    t->off[n] = pos;
    t->pool[pos] = 0;

    /* Later duplicates win, as in llama.cpp's token_to_id map. */
    memset(t->tok_hash, 0xff, ((size_t)t->tok_mask + 1) * sizeof *t->tok_hash);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len;
        const char *s = tok_text(t, id, &len);
        uint32_t i = (uint32_t)hash_bytes(HASH_SEED, s, len) & t->tok_mask;
        for (;; i = (i + 1) & t->tok_mask) {
            int32_t o = t->tok_hash[i];
            if (o < 0) {
                t->tok_hash[i] = id;
                break;
            }
            size_t ol;
            const char *os = tok_text(t, o, &ol);
            if (ol == len && memcmp(os, s, len) == 0) {
                t->tok_hash[i] = id;
                break;
            }
        }
    }
    return 0;
}

static int load_scores_types(dl_tokenizer *t, const dl_gguf *g, char *err, size_t errlen)
{
    enum dl_gguf_vtype ty;
    uint64_t n;
    const void *data;
    const char *key = "tokenizer.ggml.scores";
    if (dl_gguf_get_arr(g, key, &ty, &n, &data) == 0) {
        if (ty != DL_GGUF_F32 || n != (uint64_t)t->n_vocab) {
            set_err(err, errlen, "%s: expected %d f32 values", key, (int)t->n_vocab);
            return -EINVAL;
        }
        memcpy(t->scores, data, n * sizeof(float));
    }
    key = "tokenizer.ggml.token_type";
    memset(t->types, DL_TOK_NORMAL, (size_t)t->n_vocab);
    if (dl_gguf_get_arr(g, key, &ty, &n, &data) == 0) {
        if ((ty != DL_GGUF_I32 && ty != DL_GGUF_U32) || n != (uint64_t)t->n_vocab) {
            set_err(err, errlen, "%s: expected %d i32 values", key, (int)t->n_vocab);
            return -EINVAL;
        }
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, (const char *)data + 4 * i, 4);
            t->types[i] = (uint8_t)(v >= DL_TOK_UNDEFINED && v <= DL_TOK_BYTE
                                        ? v : DL_TOK_UNDEFINED);
        }
    }
    return 0;
}

static int load_merges(dl_tokenizer *t, const dl_gguf *g, char *err, size_t errlen)
{
    const char *key = "tokenizer.ggml.merges";
    enum dl_gguf_vtype ty;
    uint64_t n;
    const void *data;
    if (dl_gguf_get_arr(g, key, &ty, &n, &data) < 0 || ty != DL_GGUF_STRING) {
        set_err(err, errlen, "%s: missing or not an array of strings", key);
        return -EINVAL;
    }
    if (n > INT32_MAX / 4) {
        set_err(err, errlen, "%s: too many merges", key);
        return -EINVAL;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        dl_str s;
        if (dl_gguf_arr_str(g, key, i, &s) < 0) {
            set_err(err, errlen, "%s: cannot read merge %llu", key, (unsigned long long)i);
            return -EINVAL;
        }
        total += s.len;
    }
    if (total > UINT32_MAX - 1) {
        set_err(err, errlen, "%s: merges too large", key);
        return -EINVAL;
    }
    t->n_merges = (int32_t)n;
    t->mpool = malloc(total + 1);
    t->moff = malloc((n + 1) * sizeof *t->moff);
    t->mleft = malloc((n ? n : 1) * sizeof *t->mleft);
    t->merge_mask = table_mask_for(n);
    t->merge_hash = malloc(((size_t)t->merge_mask + 1) * sizeof *t->merge_hash);
    if (!t->mpool || !t->moff || !t->mleft || !t->merge_hash) {
        set_err(err, errlen, "out of memory for %llu merges", (unsigned long long)n);
        return -ENOMEM;
    }
    memset(t->merge_hash, 0xff, ((size_t)t->merge_mask + 1) * sizeof *t->merge_hash);
    uint32_t pos = 0;
    for (uint64_t r = 0; r < n; r++) {
        dl_str s;
        dl_gguf_arr_str(g, key, r, &s);
        t->moff[r] = pos;
        memcpy(t->mpool + pos, s.ptr, s.len);
        pos += (uint32_t)s.len;
        /* "left right", split at the first space after the first byte (as llama.cpp);
         * merges may legitimately start with '#'. */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp) {
            set_err(err, errlen, "%s: merge %llu has no space", key, (unsigned long long)r);
            return -EINVAL;
        }
        size_t ll = (size_t)(sp - s.ptr), rl = s.len - ll - 1;
        t->mleft[r] = (uint32_t)ll;
        /* The first occurrence of a pair keeps its rank. */
        if (merge_rank(t, s.ptr, ll, sp + 1, rl) >= 0)
            continue;
        uint32_t i = (uint32_t)merge_hash_of(s.ptr, ll, sp + 1, rl) & t->merge_mask;
        while (t->merge_hash[i] >= 0)
            i = (i + 1) & t->merge_mask;
        t->merge_hash[i] = (int32_t)r;
    }
    t->moff[n] = pos;
    return 0;
}

/* Control, user-defined and unknown tokens, longest first (llama.cpp's matching order). */
static int cmp_special(const void *a, const void *b, void *ctx)
{
    const dl_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->off[x + 1] - t->off[x], ly = t->off[y + 1] - t->off[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int collect_specials(dl_tokenizer *t)
{
    int n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->types[id];
        if ((ty == DL_TOK_CONTROL || ty == DL_TOK_USER_DEFINED || ty == DL_TOK_UNKNOWN) &&
            t->off[id + 1] > t->off[id])
            n++;
    }
    t->specials = malloc((size_t)(n ? n : 1) * sizeof *t->specials);
    if (!t->specials)
        return -ENOMEM;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->types[id];
        if ((ty == DL_TOK_CONTROL || ty == DL_TOK_USER_DEFINED || ty == DL_TOK_UNKNOWN) &&
            t->off[id + 1] > t->off[id])
            t->specials[n++] = id;
    }
    t->n_specials = n;
    qsort_r(t->specials, (size_t)n, sizeof *t->specials, cmp_special, t);
    return 0;
}

/* GPT-2's byte <-> printable-codepoint table: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes are given codepoints 256, 257, ... in byte order. */
static void build_byte_map(dl_tokenizer *t)
{
    int next = 256;
    for (int i = 0; i < 0x144; i++)
        t->byte_dec[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                        (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : next++;
        char tmp[4];
        int n = dl_utf8_encode((uint32_t)cp, tmp);
        memcpy(t->byte_enc[b], tmp, (size_t)n);
        t->byte_enc_len[b] = (uint8_t)n;
        t->byte_dec[cp] = (int16_t)b;
    }
}

static void build_byte_tokens(dl_tokenizer *t)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char raw = (char)b;
        int32_t id = dl_tokenizer_find(t, name, 6);
        if (id < 0)
            id = dl_tokenizer_find(t, &raw, 1); /* llama.cpp's fallback: the byte itself */
        t->byte_tok[b] = id >= 0 ? id : t->unk;
    }
}

static int32_t find_cstr(const dl_tokenizer *t, const char *s)
{
    return dl_tokenizer_find(t, s, strlen(s));
}

static int load_special_ids(dl_tokenizer *t, const dl_gguf *g, char *err, size_t errlen)
{
    if (t->kind == KIND_SPM) {
        /* llama.cpp's defaults for SentencePiece vocabularies */
        t->unk = t->n_vocab > 0 ? 0 : -1;
        t->bos = t->n_vocab > 1 ? 1 : -1;
        t->eos = t->n_vocab > 2 ? 2 : -1;
    } else {
        t->unk = -1;
        t->bos = find_cstr(t, "<|begin_of_text|>");
        if (t->bos < 0)
            t->bos = find_cstr(t, "<|endoftext|>");
        t->eos = find_cstr(t, "<|end_of_text|>");
        if (t->eos < 0)
            t->eos = find_cstr(t, "<|endoftext|>");
    }
    t->eot = -1;
    int rc;
    if ((rc = get_id_key(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err, errlen)) ||
        (rc = get_id_key(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err, errlen)) ||
        (rc = get_id_key(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot, err, errlen)) ||
        (rc = get_id_key(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err,
                         errlen)))
        return rc;
    if (t->eot < 0) {
        static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                                "<end_of_turn>"};
        for (size_t i = 0; i < sizeof eot_names / sizeof eot_names[0] && t->eot < 0; i++)
            t->eot = find_cstr(t, eot_names[i]);
    }
    t->eom = -1;
    if (t->kind == KIND_BPE && t->ignore_merges)
        t->eom = find_cstr(t, "<|eom_id|>");

    t->add_bos = t->kind == KIND_SPM || t->ignore_merges;
    t->add_space_prefix = t->kind == KIND_SPM;
    if ((rc = get_bool_key(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err, errlen)) ||
        (rc = get_bool_key(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err,
                           errlen)))
        return rc;
    if (t->kind == KIND_BPE)
        t->add_space_prefix = 0;
    return 0;
}

int dl_tokenizer_from_gguf(const dl_gguf *g, dl_tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    dl_str model, pre = {NULL, 0};
    if (dl_gguf_get_str(g, "tokenizer.ggml.model", &model) < 0) {
        set_err(err, errlen, "tokenizer.ggml.model: missing or not a string");
        return -EINVAL;
    }
    dl_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc;
    if (dl_str_eq(model, "llama")) {
        t->kind = KIND_SPM;
    } else if (dl_str_eq(model, "gpt2")) {
        t->kind = KIND_BPE;
        /* Only Llama-3's pre-tokenizer is implemented; refusing others beats silently
         * producing ids the model was never trained on. */
        if (dl_gguf_get_str(g, "tokenizer.ggml.pre", &pre) < 0 ||
            !(dl_str_eq(pre, "llama-bpe") || dl_str_eq(pre, "llama3") ||
              dl_str_eq(pre, "llama-v3"))) {
            set_err(err, errlen, "tokenizer.ggml.pre: unsupported pre-tokenizer \"%.*s\" "
                    "(only llama-bpe)", (int)(pre.len < 40 ? pre.len : 40),
                    pre.ptr ? pre.ptr : "");
            rc = -ENOTSUP;
            goto fail;
        }
        t->ignore_merges = 1;
    } else {
        set_err(err, errlen, "tokenizer.ggml.model: unsupported \"%.*s\"",
                (int)(model.len < 40 ? model.len : 40), model.ptr);
        rc = -ENOTSUP;
        goto fail;
    }
    if ((rc = load_tokens(t, g, err, errlen)) < 0 ||
        (rc = load_scores_types(t, g, err, errlen)) < 0)
        goto fail;
    if (t->kind == KIND_BPE && (rc = load_merges(t, g, err, errlen)) < 0)
        goto fail;
    if ((rc = load_special_ids(t, g, err, errlen)) < 0)
        goto fail;
    if ((rc = collect_specials(t)) < 0) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    build_byte_map(t);
    build_byte_tokens(t);
    *out = t;
    return 0;
fail:
    dl_tokenizer_free(t);
    return rc;
}

void dl_tokenizer_free(dl_tokenizer *t)
{
    if (!t)
        return;
    free(t->pool);
    free(t->off);
    free(t->scores);
    free(t->types);
    free(t->tok_hash);
    free(t->mpool);
    free(t->moff);
    free(t->mleft);
    free(t->merge_hash);
    free(t->specials);
    free(t);
}

int32_t dl_tokenizer_n_vocab(const dl_tokenizer *t) { return t->n_vocab; }
int32_t dl_tokenizer_bos(const dl_tokenizer *t) { return t->bos; }
int32_t dl_tokenizer_eos(const dl_tokenizer *t) { return t->eos; }
int32_t dl_tokenizer_eot(const dl_tokenizer *t) { return t->eot; }
int dl_tokenizer_add_bos(const dl_tokenizer *t) { return t->add_bos; }
const char *dl_tokenizer_model(const dl_tokenizer *t)
{
    return t->kind == KIND_SPM ? "llama" : "gpt2";
}

int dl_tokenizer_is_eog(const dl_tokenizer *t, int32_t id)
{
    return id >= 0 && (id == t->eos || id == t->eot || id == t->eom);
}

int dl_tokenizer_token_type(const dl_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab)
        return DL_TOK_UNDEFINED;
    return t->types[id];
}

/* ---- encoding: shared pieces ---------------------------------------------------------- */

typedef struct out_ids {
    int32_t *ids;
    int cap;
    int n;   /* ids produced, possibly more than cap */
} out_ids;

static void push_id(out_ids *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* A symbol of the merge loops: a byte range of the working text in a linked list. */
typedef struct sym {
    uint32_t start, n; /* n == 0: merged away */
    int prev, next;
} sym;

/* Candidate merge of symbols left and right, in a binary max-heap. */
typedef struct bigram {
    int left, right;
    float score;    /* SPM: token score (higher first) */
    int32_t rank;   /* BPE: merge rank (lower first) */
    uint32_t size;  /* bytes of the merged text when the candidate was made */
} bigram;

typedef struct heap {
    bigram *a;
    int n;
    int kind;
} heap;

/* Does x come out of the queue before y? Ties go to the leftmost pair, as in llama.cpp. */
static int before(const heap *h, const bigram *x, const bigram *y)
{
    if (h->kind == KIND_SPM) {
        if (x->score != y->score)
            return x->score > y->score;
    } else if (x->rank != y->rank) {
        return x->rank < y->rank;
    }
    return x->left < y->left;
}

static void heap_push(heap *h, bigram b)
{
    int i = h->n++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!before(h, &b, &h->a[p]))
            break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = b;
}

static bigram heap_pop(heap *h)
{
    bigram top = h->a[0], last = h->a[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(h, &h->a[c + 1], &h->a[c]))
            c++;
        if (!before(h, &h->a[c], &last))
            break;
        h->a[i] = h->a[c];
        i = c;
    }
    if (h->n > 0)
        h->a[i] = last;
    return top;
}

/* Split text into one symbol per UTF-8 character; returns the symbol count. An invalid
 * byte is a symbol of its own. (llama.cpp trusts the lead byte's length instead, which can
 * swallow the start of the "▁" after a stray lead byte and break the round trip; for valid
 * UTF-8 both give the same symbols.) */
static int split_chars(const char *s, uint32_t len, sym *syms)
{
    int n = 0;
    for (uint32_t off = 0; off < len;) {
        uint32_t cp;
        uint32_t cl = (uint32_t)dl_utf8_decode((const unsigned char *)s + off, len - off, &cp);
        if (cl == 0)
            cl = 1;
        syms[n] = (sym){off, cl, n - 1, off + cl == len ? -1 : n + 1};
        off += cl;
        n++;
    }
    return n;
}

/* The merge loop both models share: pop the best candidate, skip it when either side has
 * changed since it was queued, else merge right into left and queue the new neighbours. */
typedef int (*try_pair_fn)(const dl_tokenizer *t, const char *s, const sym *syms, int l,
                           int r, bigram *b);

static void merge_loop(const dl_tokenizer *t, const char *s, sym *syms, int n, heap *h,
                       try_pair_fn try_pair)
{
    bigram b;
    for (int i = 1; i < n; i++)
        if (try_pair(t, s, syms, i - 1, i, &b))
            heap_push(h, b);
    while (h->n > 0) {
        b = heap_pop(h);
        sym *l = &syms[b.left], *r = &syms[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size || l->next != b.right)
            continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            syms[r->next].prev = b.left;
        bigram nb;
        if (l->prev >= 0 && try_pair(t, s, syms, l->prev, b.left, &nb))
            heap_push(h, nb);
        if (l->next >= 0 && try_pair(t, s, syms, b.left, l->next, &nb))
            heap_push(h, nb);
    }
}

/* ---- SentencePiece-style BPE ---------------------------------------------------------- */

static int spm_pair(const dl_tokenizer *t, const char *s, const sym *syms, int l, int r,
                    bigram *b)
{
    uint32_t size = syms[l].n + syms[r].n;
    int32_t id = dl_tokenizer_find(t, s + syms[l].start, size);
    if (id < 0)
        return 0;
    *b = (bigram){l, r, t->scores[id], 0, size};
    return 1;
}

/* Encode one raw-text fragment: spaces become "▁" (with one prepended when asked), then
 * characters merge pairwise by best token score; what is left that is not a token falls
 * back to <0xNN> byte tokens. */
static int spm_encode(const dl_tokenizer *t, const char *text, size_t len, int prefix,
                      out_ids *o)
{
    size_t cap = 3 * (len + 1);
    char *s = malloc(cap);
    sym *syms = malloc((len + 2) * sizeof *syms);
    heap h = {malloc(3 * (len + 2) * sizeof(bigram)), 0, KIND_SPM};
    if (!s || !syms || !h.a) {
        free(s), free(syms), free(h.a);
        return -ENOMEM;
    }
    uint32_t n = 0;
    if (prefix) {
        memcpy(s, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            s[n++] = text[i];
        }
    }
    int ns = split_chars(s, n, syms);
    merge_loop(t, s, syms, ns, &h, spm_pair);
    for (int i = ns ? 0 : -1; i >= 0; i = syms[i].next) {
        int32_t id = dl_tokenizer_find(t, s + syms[i].start, syms[i].n);
        if (id >= 0) {
            push_id(o, id);
            continue;
        }
        for (uint32_t j = 0; j < syms[i].n; j++) {
            int32_t bt = t->byte_tok[(unsigned char)s[syms[i].start + j]];
            if (bt >= 0)
                push_id(o, bt);
        }
    }
    free(s);
    free(syms);
    free(h.a);
    return 0;
}

/* ---- byte-level BPE (Llama-3) --------------------------------------------------------- */

enum { CF_VALID = 1, CF_LETTER = 2, CF_NUMBER = 4, CF_SPACE = 8 };

/* A codepoint of the text being pre-tokenised: value, class and where its bytes start. */
typedef struct cpt {
    uint32_t cp;
    uint32_t flags;
    uint32_t off;
} cpt;

/* Decode text into codepoints. An invalid byte becomes one codepoint classed like U+FFFD
 * (a symbol), but keeps its own byte, so it still encodes byte-wise. */
static int to_cpts(const char *text, size_t len, cpt *c)
{
    int n = 0;
    for (size_t off = 0; off < len;) {
        uint32_t cp;
        int k = dl_utf8_decode((const unsigned char *)text + off, len - off, &cp);
        if (k == 0) {
            cp = 0xFFFD;
            k = 1;
        }
        uint32_t f = CF_VALID;
        if (dl_unicode_is_letter(cp))
            f |= CF_LETTER;
        if (dl_unicode_is_number(cp))
            f |= CF_NUMBER;
        if (dl_unicode_is_whitespace(cp))
            f |= CF_SPACE;
        c[n++] = (cpt){cp, f, (uint32_t)off};
        off += (size_t)k;
    }
    return n;
}

#define NO_CPT 0xFFFFFFFFu

/* Llama-3's split regex, hand-compiled (the same alternation order):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3} |
 *    ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * Writes the end (codepoint index) of each pre-token to ends; returns their count. */
static int llama3_split(const cpt *c, int n, int *ends)
{
#define CP(i) ((i) < n ? c[i].cp : NO_CPT)
#define FL(i) ((i) < n ? c[i].flags : 0u)
#define LOWER(x) ((x) >= 'A' && (x) <= 'Z' ? (x) + 32 : (x))
    int ne = 0, pos = 0;
    while (pos < n) {
        uint32_t cp = CP(pos), f = FL(pos);
        if (cp == '\'' && pos + 1 < n) {
            uint32_t a = LOWER(CP(pos + 1));
            if (a == 's' || a == 't' || a == 'm' || a == 'd') {
                pos += 2;
                ends[ne++] = pos;
                continue;
            }
            if (pos + 2 < n) {
                uint32_t b = LOWER(CP(pos + 2));
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
                    pos += 3;
                    ends[ne++] = pos;
                    continue;
                }
            }
        }
        if (cp != '\r' && cp != '\n' && !(f & CF_NUMBER) &&
            ((f & CF_LETTER) || (FL(pos + 1) & CF_LETTER))) {
            pos++;
            while (FL(pos) & CF_LETTER)
                pos++;
            ends[ne++] = pos;
            continue;
        }
        if (f & CF_NUMBER) {
            int start = pos;
            while ((FL(pos) & CF_NUMBER) && pos - start < 3)
                pos++;
            ends[ne++] = pos;
            continue;
        }
        uint32_t f2 = cp == ' ' ? FL(pos + 1) : f;
        if ((f2 & CF_VALID) && !(f2 & (CF_SPACE | CF_LETTER | CF_NUMBER))) {
            pos += cp == ' ';
            while ((FL(pos) & CF_VALID) && !(FL(pos) & (CF_SPACE | CF_LETTER | CF_NUMBER)))
                pos++;
            while (CP(pos) == '\r' || CP(pos) == '\n')
                pos++;
            ends[ne++] = pos;
            continue;
        }
        int nws = 0, last_rn = -1;
        while (FL(pos + nws) & CF_SPACE) {
            if (CP(pos + nws) == '\r' || CP(pos + nws) == '\n')
                last_rn = pos + nws + 1;
            nws++;
        }
        if (last_rn >= 0) {
            pos = last_rn; /* \s*[\r\n]+ */
        } else if (nws > 1 && pos + nws < n) {
            pos += nws - 1; /* \s+(?!\S): leave the last space to the next token */
        } else if (nws > 0) {
            pos += nws;
        } else {
            pos++;
        }
        ends[ne++] = pos;
    }
    return ne;
#undef CP
#undef FL
#undef LOWER
}

static int bpe_pair(const dl_tokenizer *t, const char *s, const sym *syms, int l, int r,
                    bigram *b)
{
    int32_t rank = merge_rank(t, s + syms[l].start, syms[l].n, s + syms[r].start, syms[r].n);
    if (rank < 0)
        return 0;
    *b = (bigram){l, r, 0.0f, rank, syms[l].n + syms[r].n};
    return 1;
}

/* Encode one pre-token: map its bytes to GPT-2 codepoints, emit it whole when it is a
 * token (Llama-3's ignore_merges), else merge by rank. Scratch buffers are sized by the
 * caller for the longest word. */
static void bpe_word(const dl_tokenizer *t, const char *w, size_t len, char *s, sym *syms,
                     heap *h, out_ids *o)
{
    uint32_t n = 0;
    int ns = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)w[i];
        syms[ns] = (sym){n, t->byte_enc_len[b], ns - 1, i + 1 == len ? -1 : ns + 1};
        memcpy(s + n, t->byte_enc[b], t->byte_enc_len[b]);
        n += t->byte_enc_len[b];
        ns++;
    }
    if (t->ignore_merges) {
        int32_t id = dl_tokenizer_find(t, s, n);
        if (id >= 0) {
            push_id(o, id);
            return;
        }
    }
    h->n = 0;
    merge_loop(t, s, syms, ns, h, bpe_pair);
    for (int i = ns ? 0 : -1; i >= 0; i = syms[i].next) {
        int32_t id = dl_tokenizer_find(t, s + syms[i].start, syms[i].n);
        if (id >= 0) {
            push_id(o, id);
            continue;
        }
        for (uint32_t j = 0; j < syms[i].n; j++) {
            int32_t bt = dl_tokenizer_find(t, s + syms[i].start + j, 1);
            if (bt >= 0)
                push_id(o, bt);
        }
    }
}

static int bpe_encode(const dl_tokenizer *t, const char *text, size_t len, out_ids *o)
{
    if (len == 0)
        return 0;
    cpt *c = malloc(len * sizeof *c);
    int *ends = malloc(len * sizeof *ends);
    char *s = malloc(2 * len);
    sym *syms = malloc(len * sizeof *syms);
    heap h = {malloc(3 * len * sizeof(bigram)), 0, KIND_BPE};
    int rc = 0;
    if (!c || !ends || !s || !syms || !h.a) {
        rc = -ENOMEM;
        goto done;
    }
    int n = to_cpts(text, len, c);
    int ne = llama3_split(c, n, ends);
    int start = 0;
    for (int i = 0; i < ne; i++) {
        uint32_t b0 = c[start].off;
        uint32_t b1 = ends[i] < n ? c[ends[i]].off : (uint32_t)len;
        bpe_word(t, text + b0, b1 - b0, s, syms, &h, o);
        start = ends[i];
    }
done:
    free(c);
    free(ends);
    free(s);
    free(syms);
    free(h.a);
    return rc;
}

/* ---- special tokens and the top level ------------------------------------------------- */

/* A piece of the input: raw text still to encode (id < 0) or an already known token. */
typedef struct frag {
    size_t off, len;
    int32_t id;
} frag;

typedef struct frags {
    frag *a;
    int n, cap;
} frags;

static int frag_push(frags *f, frag x)
{
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 16;
        frag *a = realloc(f->a, (size_t)cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        f->a = a;
        f->cap = cap;
    }
    f->a[f->n++] = x;
    return 0;
}

/* Cut every occurrence of the special tokens out of the raw fragments, longest tokens
 * first, as llama.cpp does. Control and unknown tokens only when parse_special;
 * user-defined tokens always. Each token that occurs rebuilds the list in one pass.
 * Returns 0 or -ENOMEM; on success *out holds the fragments (caller frees out->a). */
static int partition(const dl_tokenizer *t, const char *text, size_t len, int parse_special,
                     frags *out)
{
    frags cur = {NULL, 0, 0}, next = {NULL, 0, 0};
    int rc = frag_push(&cur, (frag){0, len, -1});
    for (int k = 0; k < t->n_specials && rc == 0; k++) {
        int32_t id = t->specials[k];
        if (!parse_special && t->types[id] != DL_TOK_USER_DEFINED)
            continue;
        size_t sl;
        const char *st = tok_text(t, id, &sl);
        if (sl > len || !memmem(text, len, st, sl))
            continue;
        next.n = 0;
        for (int i = 0; i < cur.n && rc == 0; i++) {
            frag f = cur.a[i];
            if (f.id >= 0) {
                rc = frag_push(&next, f);
                continue;
            }
            const char *p;
            while (rc == 0 && f.len >= sl && (p = memmem(text + f.off, f.len, st, sl))) {
                size_t at = (size_t)(p - text);
                if (at > f.off)
                    rc = frag_push(&next, (frag){f.off, at - f.off, -1});
                if (rc == 0)
                    rc = frag_push(&next, (frag){at, sl, id});
                f.len -= at + sl - f.off;
                f.off = at + sl;
            }
            if (rc == 0 && f.len > 0)
                rc = frag_push(&next, f);
        }
        frags tmp = cur;
        cur = next;
        next = tmp;
    }
    free(next.a);
    if (rc < 0) {
        free(cur.a);
        return rc;
    }
    *out = cur;
    return 0;
}

int dl_tokenize(const dl_tokenizer *t, const char *text, size_t len, int add_bos,
                int parse_special, int32_t *ids, int cap)
{
    /* Working buffers index the text with 32-bit offsets and the count is an int. */
    if (len > (1u << 29))
        return -E2BIG;
    out_ids o = {ids, cap < 0 ? 0 : cap, 0};
    if (add_bos && t->bos >= 0)
        push_id(&o, t->bos);
    if (len == 0)
        return o.n;
    frags fr;
    int rc = partition(t, text, len, parse_special, &fr);
    if (rc < 0)
        return rc;
    frag *f = fr.a;
    int prev_special = 1; /* SPM: a fragment after a token (or at the start) gets "▁" */
    for (int i = 0; i < fr.n && rc == 0; i++) {
        if (f[i].id >= 0) {
            push_id(&o, f[i].id);
            prev_special = 1;
        } else if (t->kind == KIND_SPM) {
            rc = spm_encode(t, text + f[i].off, f[i].len, t->add_space_prefix && prev_special,
                            &o);
            prev_special = 0;
        } else {
            rc = bpe_encode(t, text + f[i].off, f[i].len, &o);
        }
    }
    free(f);
    if (rc < 0)
        return rc;
    return o.n;
}

/* ---- decoding ------------------------------------------------------------------------- */

typedef struct out_buf {
    char *buf;
    int cap;
    int n;    /* bytes produced, possibly more than cap */
    int skip; /* bytes still to drop before anything is produced */
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (o->skip > 0) {
            o->skip--;
            continue;
        }
        if (o->n < o->cap)
            o->buf[o->n] = s[i];
        o->n++;
    }
}

static void piece(const dl_tokenizer *t, int32_t id, int special, out_buf *o)
{
    if (id < 0 || id >= t->n_vocab)
        return;
    size_t len;
    const char *s = tok_text(t, id, &len);
    switch (t->types[id]) {
    case DL_TOK_CONTROL:
    case DL_TOK_UNKNOWN:
        if (special)
            put(o, s, len);
        return;
    case DL_TOK_USER_DEFINED:
        put(o, s, len);
        return;
    case DL_TOK_BYTE:
        if (t->kind == KIND_SPM && len == 6 && memcmp(s, "<0x", 3) == 0) {
            char b = (char)strtol(s + 3, NULL, 16);
            put(o, &b, 1);
            return;
        }
        break;
    case DL_TOK_NORMAL:
        break;
    default:
        return; /* undefined / unused tokens print nothing, as in llama.cpp */
    }
    if (t->kind == KIND_SPM) {
        for (size_t i = 0; i < len;) {
            if (len - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                put(o, " ", 1);
                i += 3;
            } else {
                put(o, s + i, 1);
                i++;
            }
        }
        return;
    }
    /* Byte-level: each codepoint stands for one byte; anything else is copied as is. */
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int k = dl_utf8_decode((const unsigned char *)s + i, len - i, &cp);
        if (k > 0 && cp < 0x144 && t->byte_dec[cp] >= 0) {
            char b = (char)t->byte_dec[cp];
            put(o, &b, 1);
        } else {
            k = k > 0 ? k : 1;
            put(o, s + i, (size_t)k);
        }
        i += (size_t)k;
    }
}

int dl_token_to_piece(const dl_tokenizer *t, int32_t id, int special, char *buf, int cap)
{
    out_buf o = {buf, cap < 0 ? 0 : cap, 0, 0};
    piece(t, id, special, &o);
    return o.n;
}

int dl_detokenize(const dl_tokenizer *t, const int32_t *ids, int n, int remove_leading_space,
                  int special, char *buf, int cap)
{
    out_buf o = {buf, cap < 0 ? 0 : cap, 0, 0};
    /* The "▁" the encoder prepended belongs to the first token after any BOS. */
    int strip = remove_leading_space && t->kind == KIND_SPM && t->add_space_prefix;
    for (int i = 0; i < n; i++) {
        if (strip && ids[i] != t->bos) {
            strip = 0;
            char first = 0;
            out_buf probe = {&first, 1, 0, 0};
            piece(t, ids[i], special, &probe);
            o.skip = probe.n > 0 && first == ' ';
        }
        piece(t, ids[i], special, &o);
    }
    return o.n;
}

/* ---- streaming UTF-8 ------------------------------------------------------------------ */

void dl_utf8_stream_init(dl_utf8_stream *s)
{
    memset(s, 0, sizeof *s);
}

/* Bytes a sequence with this lead byte needs in total; 0 when it cannot start one. */
static int seq_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* May c follow the pending bytes? The second byte's range depends on the lead (this
 * rejects overlongs, surrogates and values past U+10FFFF as early as possible). */
static int continues(const dl_utf8_stream *s, unsigned char c)
{
    if (s->n_pending == 1) {
        switch (s->pending[0]) {
        case 0xE0: return c >= 0xA0 && c <= 0xBF;
        case 0xED: return c >= 0x80 && c <= 0x9F;
        case 0xF0: return c >= 0x90 && c <= 0xBF;
        case 0xF4: return c >= 0x80 && c <= 0x8F;
        default: break;
        }
    }
    return c >= 0x80 && c <= 0xBF;
}

static void put_bounded(char *out, int cap, int *n, const void *p, int len)
{
    if (*n + len <= cap) {
        memcpy(out + *n, p, (size_t)len);
        *n += len;
    }
}

int dl_utf8_stream_feed(dl_utf8_stream *s, const char *in, int len, char *out, int cap)
{
    static const char repl[3] = {'\xef', '\xbf', '\xbd'};
    int n = 0;
    for (int i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (s->n_pending > 0) {
            if (continues(s, c)) {
                s->pending[s->n_pending++] = c;
                if (s->n_pending == seq_len(s->pending[0])) {
                    put_bounded(out, cap, &n, s->pending, s->n_pending);
                    s->n_pending = 0;
                }
                continue;
            }
            /* The held prefix can never complete: one U+FFFD for all of it, then c is
             * looked at afresh. */
            put_bounded(out, cap, &n, repl, 3);
            s->n_pending = 0;
        }
        int need = seq_len(c);
        if (need == 1)
            put_bounded(out, cap, &n, &c, 1);
        else if (need == 0)
            put_bounded(out, cap, &n, repl, 3);
        else
            s->pending[s->n_pending++] = c;
    }
    return n;
}

int dl_utf8_stream_flush(dl_utf8_stream *s, char *out, int cap)
{
    static const char repl[3] = {'\xef', '\xbf', '\xbd'};
    int n = 0;
    if (s->n_pending > 0)
        put_bounded(out, cap, &n, repl, 3);
    s->n_pending = 0;
    return n;
}
