/* test_tokenizer.c — tokenizers against llama.cpp's vocabulary test vectors, round trips,
 * special tokens, and the streaming UTF-8 holder (fed whole, piece by piece, byte by byte).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"
#include "unicode.h"

#define SEP "\n__ggml_vocab_test__\n"
#define MAX_IDS 4096

static dl_tokenizer *load_vocab(const char *rel)
{
    char err[256] = "";
    dl_gguf *g = NULL;
    int rc = dl_gguf_open(dl_test_shared(rel), &g, err, sizeof err);
    ck_assert_msg(rc == 0, "open %s: %s", rel, err);
    dl_tokenizer *t = NULL;
    rc = dl_tokenizer_from_gguf(g, &t, err, sizeof err);
    dl_gguf_close(g); /* the tokenizer must not depend on the mapping */
    ck_assert_msg(rc == 0, "tokenizer %s: %s", rel, err);
    return t;
}

/* The llama.cpp test inputs: texts separated by SEP, the last one followed by SEP too. */
typedef struct vectors {
    char *inp, *out;      /* file contents (inp is cut up in place) */
    const char *text[64];
    size_t len[64];
    const char *ids[64];  /* line of space-separated ids, NUL-terminated in out */
    int n;
} vectors;

static void load_vectors(vectors *v, const char *inp_rel, const char *out_rel)
{
    size_t n;
    memset(v, 0, sizeof *v);
    v->inp = dl_test_read_file(dl_test_shared(inp_rel), &n);
    v->out = dl_test_read_file(dl_test_shared(out_rel), NULL);
    ck_assert_msg(v->inp && v->out, "cannot read %s / %s", inp_rel, out_rel);
    char *p = v->inp, *end = v->inp + n;
    while (p < end) {
        char *s = memmem(p, (size_t)(end - p), SEP, strlen(SEP));
        if (!s)
            break;
        ck_assert_int_lt(v->n, 64);
        v->text[v->n] = p;
        v->len[v->n] = (size_t)(s - p);
        v->n++;
        p = s + strlen(SEP);
    }
    char *line = v->out;
    for (int i = 0; i < v->n; i++) {
        ck_assert_msg(line && *line, "%s: fewer lines than inputs", out_rel);
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        v->ids[i] = line;
        line = nl ? nl + 1 : NULL;
    }
}

static void free_vectors(vectors *v)
{
    free(v->inp);
    free(v->out);
}

static int parse_ids(const char *line, int32_t *ids)
{
    int n = 0;
    char *e;
    for (const char *p = line;; p = e) {
        long x = strtol(p, &e, 10);
        if (e == p)
            break;
        ids[n++] = (int32_t)x;
    }
    return n;
}

static void fmt_ids(const int32_t *ids, int n, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o + 12 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, " %d", ids[i]);
}

/* Every vector must match exactly; report each mismatch before failing. */
static void check_vectors(const char *vocab, const char *inp, const char *out, int expect_n)
{
    dl_tokenizer *t = load_vocab(vocab);
    vectors v;
    load_vectors(&v, inp, out);
    ck_assert_int_eq(v.n, expect_n);
    static int32_t got[MAX_IDS], want[MAX_IDS];
    int ok = 0;
    for (int i = 0; i < v.n; i++) {
        int n = dl_tokenize(t, v.text[i], v.len[i], 0, 0, got, MAX_IDS);
        int m = parse_ids(v.ids[i], want);
        if (n == m && memcmp(got, want, (size_t)n * sizeof *got) == 0) {
            ok++;
            continue;
        }
        char a[1024], b[1024];
        fmt_ids(got, n < MAX_IDS ? n : MAX_IDS, a, sizeof a);
        fmt_ids(want, m, b, sizeof b);
        fprintf(stderr, "%s vector %d \"%.*s\":\n  got %s\n want %s\n", vocab, i,
                (int)v.len[i], v.text[i], a, b);
    }
    ck_assert_msg(ok == v.n, "%s: %d of %d vectors match", vocab, ok, v.n);
    free_vectors(&v);
    dl_tokenizer_free(t);
}

START_TEST(spm_vectors)
{
    check_vectors("models/ggml-vocab-llama-spm.gguf", "models/ggml-vocab-llama-spm.gguf.inp",
                  "models/ggml-vocab-llama-spm.gguf.out", 46);
}
END_TEST

START_TEST(bpe_vectors)
{
    check_vectors("models/ggml-vocab-llama-bpe.derived.gguf",
                  "models/ggml-vocab-llama-bpe.gguf.inp", "models/ggml-vocab-llama-bpe.gguf.out",
                  46);
}
END_TEST

/* encode -> decode gives the input back, with and without BOS. */
static void check_roundtrip(const char *vocab)
{
    dl_tokenizer *t = load_vocab(vocab);
    vectors v;
    load_vectors(&v, "models/ggml-vocab-llama-spm.gguf.inp",
                 "models/ggml-vocab-llama-spm.gguf.out");
    static int32_t ids[MAX_IDS];
    static char buf[8192];
    for (int bos = 0; bos <= 1; bos++) {
        for (int i = 0; i < v.n; i++) {
            int n = dl_tokenize(t, v.text[i], v.len[i], bos, 0, ids, MAX_IDS);
            ck_assert_int_ge(n, bos);
            ck_assert_int_le(n, MAX_IDS);
            if (bos)
                ck_assert_int_eq(ids[0], dl_tokenizer_bos(t));
            int m = dl_detokenize(t, ids, n, 1, 0, buf, (int)sizeof buf);
            ck_assert_msg(m == (int)v.len[i] && memcmp(buf, v.text[i], v.len[i]) == 0,
                          "%s: round trip of vector %d gives \"%.*s\"", vocab, i,
                          m < (int)sizeof buf ? m : (int)sizeof buf, buf);
        }
    }
    free_vectors(&v);
    dl_tokenizer_free(t);
}

START_TEST(spm_roundtrip)
{
    check_roundtrip("models/ggml-vocab-llama-spm.gguf");
}
END_TEST

START_TEST(bpe_roundtrip)
{
    check_roundtrip("models/ggml-vocab-llama-bpe.derived.gguf");
}
END_TEST

/* Output capacity: the count needed comes back, only cap ids are written. */
START_TEST(short_buffers)
{
    dl_tokenizer *t = load_vocab("models/ggml-vocab-llama-spm.gguf");
    const char *s = "Hello world, this is a test";
    int32_t full[64], part[4] = {-7, -7, -7, -7};
    int n = dl_tokenize(t, s, strlen(s), 1, 0, full, 64);
    ck_assert_int_gt(n, 4);
    ck_assert_int_eq(dl_tokenize(t, s, strlen(s), 1, 0, part, 3), n);
    ck_assert_mem_eq(part, full, 3 * sizeof *part);
    ck_assert_int_eq(part[3], -7);
    ck_assert_int_eq(dl_tokenize(t, s, strlen(s), 1, 0, NULL, 0), n);

    char whole[256], small[5] = "xxxx";
    int len = dl_detokenize(t, full, n, 1, 0, whole, (int)sizeof whole);
    ck_assert_int_eq(len, (int)strlen(s));
    ck_assert_int_eq(dl_detokenize(t, full, n, 1, 0, small, 4), len);
    ck_assert_mem_eq(small, s, 4);
    ck_assert_int_eq(dl_detokenize(t, full, n, 1, 0, NULL, 0), len);
    dl_tokenizer_free(t);
}
END_TEST

/* ---- streaming detokeniser ----------------------------------------------------------- */

static int valid_utf8(const char *s, int n)
{
    for (int i = 0; i < n;) {
        uint32_t cp;
        int k = dl_utf8_decode((const unsigned char *)s + i, (size_t)(n - i), &cp);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

/* Feed in chunks of `step` bytes (0 = all at once), then flush. */
static int stream_all(const char *in, int len, int step, char *out)
{
    dl_utf8_stream s;
    dl_utf8_stream_init(&s);
    int n = 0;
    for (int i = 0; i < len;) {
        int k = step > 0 && step < len - i ? step : len - i;
        n += dl_utf8_stream_feed(&s, in + i, k, out + n, 3 * k + 8);
        i += k;
    }
    n += dl_utf8_stream_flush(&s, out + n, 8);
    return n;
}

START_TEST(stream_valid_text)
{
    const char *text = "Ünïcödé: 🦙 llama, 你好, 𝔘𝔫𝔦 — ok";
    int len = (int)strlen(text);
    char out[256];
    for (int step = 0; step <= 4; step++) {
        int n = stream_all(text, len, step, out);
        ck_assert_int_eq(n, len);
        ck_assert_mem_eq(out, text, (size_t)len);
    }
    /* A split sequence is held back, not emitted half-way. */
    dl_utf8_stream s;
    dl_utf8_stream_init(&s);
    ck_assert_int_eq(dl_utf8_stream_feed(&s, "a\xf0\x9f", 3, out, 16), 1);
    ck_assert_int_eq(out[0], 'a');
    ck_assert_int_eq(dl_utf8_stream_feed(&s, "\xa6", 1, out, 16), 0);
    ck_assert_int_eq(dl_utf8_stream_feed(&s, "\x99!", 2, out, 16), 5);
    ck_assert_mem_eq(out, "\xf0\x9f\xa6\x99!", 5);
    ck_assert_int_eq(dl_utf8_stream_flush(&s, out, 16), 0);
}
END_TEST

START_TEST(stream_invalid_bytes)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b"},                  /* never valid byte */
        {"\x80", "\xef\xbf\xbd"},                            /* stray continuation */
        {"\xe2\x82x", "\xef\xbf\xbdx"},                      /* truncated, then ASCII */
        {"\xe2\x82", "\xef\xbf\xbd"},                        /* truncated at the end */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},            /* overlong lead */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"\xe4\xbd\xe5\xa5\xbd", "\xef\xbf\xbd\xe5\xa5\xbd"}, /* broken then good */
    };
    char out[64];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int len = (int)strlen(cases[c].in);
        for (int step = 0; step <= 1; step++) {
            int n = stream_all(cases[c].in, len, step, out);
            ck_assert_msg(n == (int)strlen(cases[c].want) &&
                              memcmp(out, cases[c].want, (size_t)n) == 0,
                          "case %zu step %d: %d bytes", c, step, n);
            ck_assert(valid_utf8(out, n));
        }
    }
}
END_TEST

/* Pieces of generated tokens through the stream equal the whole decode; SPM byte-fallback
 * tokens split one emoji over four pieces. */
START_TEST(stream_token_pieces)
{
    const char *vocabs[2] = {"models/ggml-vocab-llama-spm.gguf",
                             "models/ggml-vocab-llama-bpe.derived.gguf"};
    const char *text = "🦙 llamas say 你好 and Ünïcödé, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢!";
    for (int k = 0; k < 2; k++) {
        dl_tokenizer *t = load_vocab(vocabs[k]);
        int32_t ids[256];
        int n = dl_tokenize(t, text, strlen(text), 0, 0, ids, 256);
        ck_assert_int_gt(n, 0);
        ck_assert_int_le(n, 256);
        char whole[512], streamed[1024], pc[64];
        int wl = dl_detokenize(t, ids, n, 0, 0, whole, (int)sizeof whole);
        int partial_pieces = 0;
        dl_utf8_stream s;
        dl_utf8_stream_init(&s);
        int sl = 0;
        for (int i = 0; i < n; i++) {
            int pl = dl_token_to_piece(t, ids[i], 0, pc, (int)sizeof pc);
            ck_assert_int_le(pl, (int)sizeof pc);
            partial_pieces += !valid_utf8(pc, pl);
            int o = dl_utf8_stream_feed(&s, pc, pl, streamed + sl, 3 * pl + 8);
            ck_assert(valid_utf8(streamed + sl, o));
            sl += o;
        }
        sl += dl_utf8_stream_flush(&s, streamed + sl, 8);
        ck_assert_int_eq(sl, wl);
        ck_assert_mem_eq(streamed, whole, (size_t)wl);
        /* the pieces really did split characters, so the holding back was exercised */
        ck_assert_int_gt(partial_pieces, 0);
        dl_tokenizer_free(t);
    }
}
END_TEST

/* Deterministic random strings over an alphabet with multi-byte characters, spaces,
 * newlines and invalid bytes: encode -> decode is exact, and the streamed pieces are valid
 * UTF-8. */
START_TEST(random_roundtrip)
{
    static const char *const alphabet[] = {
        "a", "b", "Hello", " ", "  ", "\n", "\t", "\r\n", "\xc3\xa9", "\xe4\xbd\xa0",
        "\xf0\x9f\xa6\x99", "\xff", "\xe2", "\x80", "\xc3", "'s", "'LL", "3", "1234",
        ".", "!!", "<s>", "<|eot_id|>", "\xd0\xbd"};
    const char *vocabs[2] = {"models/ggml-vocab-llama-spm.gguf",
                             "models/ggml-vocab-llama-bpe.derived.gguf"};
    uint64_t seed = 42;
    for (int k = 0; k < 2; k++) {
        dl_tokenizer *t = load_vocab(vocabs[k]);
        for (int r = 0; r < 300; r++) {
            char text[256], back[512], streamed[2048], pc[64];
            size_t len = 0;
            int parts = (int)((seed >> 33) % 24);
            for (int i = 0; i < parts; i++) {
                seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
                const char *a = alphabet[(seed >> 33) % (sizeof alphabet / sizeof alphabet[0])];
                memcpy(text + len, a, strlen(a));
                len += strlen(a);
            }
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            int32_t ids[512];
            int n = dl_tokenize(t, text, len, (int)(seed >> 63), 0, ids, 512);
            ck_assert_int_ge(n, 0);
            ck_assert_int_le(n, 512);
            int m = dl_detokenize(t, ids, n, 1, 0, back, (int)sizeof back);
            ck_assert_msg(m == (int)len && memcmp(back, text, len) == 0,
                          "%s: random string %d does not round-trip: [%.*s] -> [%.*s]", vocabs[k], r, (int)len, text, m, back);
            dl_utf8_stream st;
            dl_utf8_stream_init(&st);
            int sl = 0;
            for (int i = 0; i < n; i++) {
                int pl = dl_token_to_piece(t, ids[i], 0, pc, (int)sizeof pc);
                ck_assert_int_le(pl, (int)sizeof pc);
                sl += dl_utf8_stream_feed(&st, pc, pl, streamed + sl, 3 * pl + 8);
            }
            sl += dl_utf8_stream_flush(&st, streamed + sl, 8);
            ck_assert(valid_utf8(streamed, sl));
            if (valid_utf8(text, (int)len))
                ck_assert_int_eq(sl, m + (k == 0 && n > 0 && len > 0)); /* SPM's "▁" */
        }
        dl_tokenizer_free(t);
    }
}
END_TEST

/* ---- special tokens and metadata ------------------------------------------------------ */

START_TEST(bpe_special_tokens)
{
    dl_tokenizer *t = load_vocab("models/ggml-vocab-llama-bpe.derived.gguf");
    ck_assert_str_eq(dl_tokenizer_model(t), "gpt2");
    ck_assert_int_eq(dl_tokenizer_n_vocab(t), 128256);
    ck_assert_int_eq(dl_tokenizer_bos(t), 128000);
    ck_assert_int_eq(dl_tokenizer_eos(t), 128001);
    ck_assert_int_eq(dl_tokenizer_eot(t), 128009);
    ck_assert_int_eq(dl_tokenizer_add_bos(t), 1);
    ck_assert(dl_tokenizer_is_eog(t, 128001));
    ck_assert(dl_tokenizer_is_eog(t, 128009));
    ck_assert(!dl_tokenizer_is_eog(t, 128000));
    ck_assert(!dl_tokenizer_is_eog(t, 9906));
    ck_assert_int_eq(dl_tokenizer_token_type(t, 128009), DL_TOK_CONTROL);
    ck_assert_int_eq(dl_tokenizer_find(t, "<|eot_id|>", 10), 128009);
    int32_t hello = dl_tokenizer_find(t, "Hello", 5);
    ck_assert_int_ge(hello, 0);

    const char *s = "<|begin_of_text|>Hello<|eot_id|>";
    int32_t ids[64];
    int n = dl_tokenize(t, s, strlen(s), 0, 1, ids, 64);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[0], 128000);
    ck_assert_int_eq(ids[1], hello);
    ck_assert_int_eq(ids[2], 128009);

    /* decoding: control tokens print only when asked */
    char buf[128];
    int m = dl_detokenize(t, ids, n, 0, 1, buf, (int)sizeof buf);
    ck_assert_int_eq(m, (int)strlen(s));
    ck_assert_mem_eq(buf, s, (size_t)m);
    m = dl_detokenize(t, ids, n, 0, 0, buf, (int)sizeof buf);
    ck_assert_int_eq(m, 5);
    ck_assert_mem_eq(buf, "Hello", 5);
    ck_assert_int_eq(dl_token_to_piece(t, 128009, 0, buf, (int)sizeof buf), 0);

    /* parse_special off: the markup is plain text, and no control id appears */
    n = dl_tokenize(t, s, strlen(s), 0, 0, ids, 64);
    ck_assert_int_gt(n, 3);
    for (int i = 0; i < n; i++)
        ck_assert_int_lt(ids[i], 128000);
    m = dl_detokenize(t, ids, n, 0, 0, buf, (int)sizeof buf);
    ck_assert_int_eq(m, (int)strlen(s));
    ck_assert_mem_eq(buf, s, (size_t)m);

    /* several specials, adjacent and repeated, with text between */
    const char *chat = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|eot_id|>";
    n = dl_tokenize(t, chat, strlen(chat), 1, 1, ids, 64);
    ck_assert_int_ge(n, 7);
    ck_assert_int_eq(ids[0], 128000);
    ck_assert_int_eq(ids[1], 128006);
    ck_assert_int_eq(ids[3], 128007);
    ck_assert_int_eq(ids[n - 2], 128009);
    ck_assert_int_eq(ids[n - 1], 128009);
    m = dl_detokenize(t, ids + 1, n - 1, 0, 1, buf, (int)sizeof buf);
    ck_assert_int_eq(m, (int)strlen(chat));
    ck_assert_mem_eq(buf, chat, (size_t)m);
    dl_tokenizer_free(t);
}
END_TEST

START_TEST(spm_special_tokens)
{
    dl_tokenizer *t = load_vocab("models/ggml-vocab-llama-spm.gguf");
    ck_assert_str_eq(dl_tokenizer_model(t), "llama");
    ck_assert_int_eq(dl_tokenizer_n_vocab(t), 32000);
    ck_assert_int_eq(dl_tokenizer_bos(t), 1);
    ck_assert_int_eq(dl_tokenizer_eos(t), 2);
    ck_assert_int_eq(dl_tokenizer_eot(t), -1);
    ck_assert_int_eq(dl_tokenizer_add_bos(t), 1);
    ck_assert(dl_tokenizer_is_eog(t, 2));
    ck_assert(!dl_tokenizer_is_eog(t, 1));
    ck_assert_int_eq(dl_tokenizer_token_type(t, 13), DL_TOK_BYTE);

    const char *s = "<s>Hello</s>";
    int32_t ids[64];
    int n = dl_tokenize(t, s, strlen(s), 0, 1, ids, 64);
    /* "Hello" after a special token gets the leading "▁": llama.cpp gives 1 15043 2 */
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], 15043);
    ck_assert_int_eq(ids[2], 2);
    n = dl_tokenize(t, s, strlen(s), 0, 0, ids, 64);
    ck_assert_int_gt(n, 3);
    for (int i = 0; i < n; i++)
        ck_assert(ids[i] != 1 && ids[i] != 2);

    char buf[64];
    ck_assert_int_eq(dl_token_to_piece(t, 13, 0, buf, (int)sizeof buf), 1); /* <0x0A> */
    ck_assert_int_eq(buf[0], '\n');
    ck_assert_int_eq(dl_token_to_piece(t, 15043, 0, buf, (int)sizeof buf), 6); /* ▁Hello */
    ck_assert_mem_eq(buf, " Hello", 6);
    ck_assert_int_eq(dl_token_to_piece(t, 1, 0, buf, (int)sizeof buf), 0);
    ck_assert_int_eq(dl_token_to_piece(t, 1, 1, buf, (int)sizeof buf), 3);
    ck_assert_mem_eq(buf, "<s>", 3);
    dl_tokenizer_free(t);
}
END_TEST

/* The 512-token vocabulary of the default test model. */
START_TEST(tok512_vocab)
{
    dl_tokenizer *t = load_vocab("models/tinyllamas-stories-260k-f32.v3.gguf");
    ck_assert_int_eq(dl_tokenizer_n_vocab(t), 512);
    ck_assert_str_eq(dl_tokenizer_model(t), "llama");
    ck_assert_int_eq(dl_tokenizer_bos(t), 1);
    ck_assert_int_eq(dl_tokenizer_eos(t), 2);
    const char *texts[] = {"Once upon a time", "Once upon a time, there was a little girl.",
                           "Lily said: \"Wow!\"\n 你好 🦙"};
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        const char *s = texts[k];
        int32_t ids[256];
        int n = dl_tokenize(t, s, strlen(s), 1, 0, ids, 256);
        ck_assert_int_gt(n, 1);
        ck_assert_int_le(n, 256);
        ck_assert_int_eq(ids[0], 1);
        for (int i = 0; i < n; i++)
            ck_assert(ids[i] >= 0 && ids[i] < 512);
        if (k == 0)
            ck_assert_int_lt(n, (int)strlen(s)); /* merges happened */
        char buf[256];
        int m = dl_detokenize(t, ids, n, 1, 0, buf, (int)sizeof buf);
        ck_assert_int_eq(m, (int)strlen(s));
        ck_assert_mem_eq(buf, s, (size_t)m);
    }
    dl_tokenizer_free(t);
}
END_TEST

/* ---- bad metadata --------------------------------------------------------------------- */

/* A minimal GGUF v3 with string KVs only. */
static size_t build_gguf(unsigned char *buf, const char *const *kv, int n_kv)
{
    size_t o = 0;
#define PUT(p, n) (memcpy(buf + o, (p), (n)), o += (n))
    uint32_t u32;
    uint64_t u64;
    PUT("GGUF", 4);
    u32 = 3, PUT(&u32, 4);
    u64 = 0, PUT(&u64, 8);
    u64 = (uint64_t)n_kv, PUT(&u64, 8);
    for (int i = 0; i < n_kv; i++) {
        u64 = strlen(kv[2 * i]), PUT(&u64, 8);
        PUT(kv[2 * i], strlen(kv[2 * i]));
        u32 = 8, PUT(&u32, 4);
        u64 = strlen(kv[2 * i + 1]), PUT(&u64, 8);
        PUT(kv[2 * i + 1], strlen(kv[2 * i + 1]));
    }
#undef PUT
    while (o % 32)
        buf[o++] = 0;
    return o;
}

START_TEST(bad_metadata)
{
    static const char *const unknown_model[] = {"tokenizer.ggml.model", "bert"};
    static const char *const other_pre[] = {"tokenizer.ggml.model", "gpt2",
                                            "tokenizer.ggml.pre", "qwen2"};
    static const char *const no_tokens[] = {"tokenizer.ggml.model", "llama"};
    static const char *const no_model[] = {"general.name", "x"};
    static const struct {
        const char *const *kv;
        int n;
        int rc;
        const char *key;
    } cases[] = {
        {unknown_model, 1, -ENOTSUP, "tokenizer.ggml.model"},
        {other_pre, 2, -ENOTSUP, "tokenizer.ggml.pre"},
        {no_tokens, 1, -EINVAL, "tokenizer.ggml.tokens"},
        {no_model, 1, -EINVAL, "tokenizer.ggml.model"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        static unsigned char buf[1024];
        size_t len = build_gguf(buf, cases[c].kv, cases[c].n);
        char err[256] = "";
        dl_gguf *g = NULL;
        ck_assert_msg(dl_gguf_open_memory(buf, len, &g, err, sizeof err) == 0, "%s", err);
        dl_tokenizer *t = (dl_tokenizer *)&err; /* must be reset to NULL */
        int rc = dl_tokenizer_from_gguf(g, &t, err, sizeof err);
        ck_assert_int_eq(rc, cases[c].rc);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(err, cases[c].key), "message \"%s\" names no key", err);
        dl_gguf_close(g);
    }
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, spm_vectors);
    tcase_add_test(tc, bpe_vectors);
    tcase_add_test(tc, spm_roundtrip);
    tcase_add_test(tc, bpe_roundtrip);
    tcase_add_test(tc, short_buffers);
    tcase_add_test(tc, stream_valid_text);
    tcase_add_test(tc, stream_invalid_bytes);
    tcase_add_test(tc, stream_token_pieces);
    tcase_add_test(tc, random_roundtrip);
    tcase_add_test(tc, bpe_special_tokens);
    tcase_add_test(tc, spm_special_tokens);
    tcase_add_test(tc, tok512_vocab);
    tcase_add_test(tc, bad_metadata);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(tokenizer_suite());
}
