/* synth.c — random-weight GGUF models with real llama-architecture shapes (see synth.h).
 *
 * The file is written in one pass: metadata and tensor descriptions first (the vocabulary
 * is copied from a real GGUF in the shared folder), then each weight row by row — a row
 * of floats is generated, quantised to the tensor's type and streamed out — so memory use
 * stays at a few MB whatever the model size.
 */
#include "synth.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "quant.h"

enum vocab_kind {
    VOCAB_SPM,       /* Llama-2 SentencePiece, copied from ggml-vocab-llama-spm.gguf */
    VOCAB_LLAMA3,    /* Llama-3 BPE, copied from ggml-vocab-llama-bpe.derived.gguf */
    VOCAB_SYNTH_BPE, /* byte-level BPE built from the start of the Llama-3 merges */
};

typedef struct synth_shape {
    const char *name;
    const char *title; /* general.name */
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab;
    uint32_t n_ctx;       /* llama.context_length */
    float rope_base;
    int tied;             /* no output.weight: the embedding is reused */
    int llama3_rope;      /* write rope_freqs.weight (Llama 3.1+ long-context scaling) */
    enum vocab_kind vocab;
    int bitnet;           /* architecture bitnet-b1.58: sub-norms, ternary weights */
} synth_shape;

static const synth_shape shapes[] = {
    {"llama3.2-1b", "Llama-3.2-1B shape, random weights", 16, 2048, 32, 8, 8192, 128256,
     131072, 500000.0f, 1, 1, VOCAB_LLAMA3, 0},
    {"smollm2-135m", "SmolLM2-135M shape, random weights", 30, 576, 9, 3, 1536, 49152, 8192,
     100000.0f, 1, 0, VOCAB_SYNTH_BPE, 0},
    {"stories15m", "stories15M shape, random weights", 6, 288, 6, 6, 768, 32000, 256,
     10000.0f, 0, 0, VOCAB_SPM, 0},
    {"tiny", "tiny test shape, random weights", 2, 64, 4, 2, 128, 32000, 256, 10000.0f, 0, 0,
     VOCAB_SPM, 0},
    {"tiny256", "tiny256 test shape, random weights", 2, 256, 4, 2, 512, 32000, 256,
     10000.0f, 0, 0, VOCAB_SPM, 0},
    {"bitnet-2b4t", "BitNet-b1.58-2B-4T shape, random ternary weights", 30, 2560, 20, 5, 6912,
     128256, 4096, 500000.0f, 1, 0, VOCAB_LLAMA3, 1},
    {"bitnet-tiny", "tiny BitNet test shape, random ternary weights", 2, 256, 4, 2, 512,
     32000, 256, 10000.0f, 1, 0, VOCAB_SPM, 1},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

const char *const *dl_synth_shapes(void)
{
    static const char *names[N_SHAPES + 1];
    for (size_t i = 0; i < N_SHAPES; i++)
        names[i] = shapes[i].name;
    names[N_SHAPES] = NULL;
    return names;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- tensor plan ----------------------------------------------------------------------- */

enum fill { FILL_RANDOM, FILL_ONES, FILL_ROPE_FREQS, FILL_TERNARY, FILL_NORM };
enum role { ROLE_OTHER, ROLE_OUTPUT, ROLE_ATTN_V, ROLE_FFN_DOWN };

typedef struct plan_tensor {
    char name[64];
    int64_t ne[2];
    uint32_t n_dims;
    uint32_t type;
    enum fill fill;
} plan_tensor;

/* llama.cpp's rule for which layers get more bits in the *_M mixes: the first and last
 * eighth of the layers, and every third one in between. */
static int use_more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* GGUF general.file_type (llama.cpp's llama_ftype) for the requested type. */
static int ftype_of(uint32_t type)
{
    switch (type) {
    case DL_TYPE_F32: return 0;
    case DL_TYPE_F16: return 1;
    case DL_TYPE_Q4_0: return 2;
    case DL_TYPE_Q8_0: return 7;
    case DL_TYPE_Q4_K: return 15; /* Q4_K_M */
    case DL_TYPE_Q6_K: return 18;
    case DL_TYPE_BF16: return 32;
    case DL_TYPE_TQ1_0: return 36;
    case DL_TYPE_TQ2_0: return 37;
    case DL_TYPE_I2_S: return 40; /* bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S */
    default: return -1;
    }
}

static uint32_t pick_type(uint32_t type, enum role role, int layer, int n_layer, int64_t ne0)
{
    uint32_t t = type;
    if (type == DL_TYPE_Q4_K) {
        if (role == ROLE_OUTPUT)
            t = DL_TYPE_Q6_K;
        else if ((role == ROLE_ATTN_V || role == ROLE_FFN_DOWN) && use_more_bits(layer, n_layer))
            t = DL_TYPE_Q6_K;
    }
    /* other types are written "pure": every 2-D weight in the requested type */
    /* rows that are not whole K blocks: llama.cpp's fallbacks (Q5_0 for Q4_K is missing
     * here, Q4_0 stands in) */
    if (dl_row_size(t, ne0) == 0 && t == DL_TYPE_Q6_K)
        t = DL_TYPE_Q8_0;
    if (dl_row_size(t, ne0) == 0 && t == DL_TYPE_Q4_K)
        t = DL_TYPE_Q4_0;
    if (dl_row_size(t, ne0) == 0)
        t = DL_TYPE_F16;
    return t;
}

static void plan_add(plan_tensor *p, int *n, const char *name, int64_t ne0, int64_t ne1,
                     uint32_t type, enum fill fill)
{
    plan_tensor *t = &p[(*n)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->type = type;
    t->fill = fill;
}

/* BitNet b1.58 as bitnet.cpp writes it: F16 tied embedding, F32 norms (the sub-norms
 * random around 1 so that they matter in tests), every projection ternary in `type`. */
static int make_bitnet_plan(const synth_shape *s, uint32_t type, plan_tensor *p)
{
    int n = 0, kv = s->n_embd / s->n_head * s->n_head_kv;
    char name[64];
    plan_add(p, &n, "token_embd.weight", s->n_embd, s->n_vocab, DL_TYPE_F16, FILL_RANDOM);
    for (int l = 0; l < s->n_layer; l++) {
        static const struct { const char *suffix; int in, out; } mats[] = {
            {"attn_q", 0, 0}, {"attn_k", 0, 1}, {"attn_v", 0, 1}, {"attn_output", 0, 0},
            {"ffn_gate", 0, 2}, {"ffn_up", 0, 2}, {"ffn_down", 2, 0},
        };
        const int64_t width[3] = {s->n_embd, kv, s->n_ff};
        static const char *const norms[4] = {"attn_norm", "attn_sub_norm", "ffn_norm",
                                             "ffn_sub_norm"};
        static const int norm_before[4] = {0, 3, 4, 6}, norm_width[4] = {0, 0, 0, 2};
        for (size_t m = 0; m < sizeof mats / sizeof mats[0]; m++) {
            for (int k = 0; k < 4; k++)
                if (norm_before[k] == (int)m) {
                    snprintf(name, sizeof name, "blk.%d.%s.weight", l, norms[k]);
                    plan_add(p, &n, name, width[norm_width[k]], 0, DL_TYPE_F32, FILL_NORM);
                }
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, mats[m].suffix);
            plan_add(p, &n, name, width[mats[m].in], width[mats[m].out], type, FILL_TERNARY);
        }
    }
    plan_add(p, &n, "output_norm.weight", s->n_embd, 0, DL_TYPE_F32, FILL_NORM);
    return n;
}

/* Tensors in llama.cpp's naming; ne[0] is the input width of each matrix. Returns count. */
static int make_plan(const synth_shape *s, uint32_t type, plan_tensor *p)
{
    int n = 0, hd = s->n_embd / s->n_head, kv = hd * s->n_head_kv;
    char name[64];
    if (s->bitnet)
        return make_bitnet_plan(s, type, p);
    if (s->llama3_rope)
        plan_add(p, &n, "rope_freqs.weight", hd / 2, 0, DL_TYPE_F32, FILL_ROPE_FREQS);
    plan_add(p, &n, "token_embd.weight", s->n_embd, s->n_vocab,
             pick_type(type, s->tied ? ROLE_OUTPUT : ROLE_OTHER, 0, s->n_layer, s->n_embd),
             FILL_RANDOM);
    for (int l = 0; l < s->n_layer; l++) {
        static const struct { const char *suffix; int in, out; enum role role; } mats[] = {
            {"attn_q", 0, 0, ROLE_OTHER},      {"attn_k", 0, 1, ROLE_OTHER},
            {"attn_v", 0, 1, ROLE_ATTN_V},     {"attn_output", 0, 0, ROLE_OTHER},
            {"ffn_gate", 0, 2, ROLE_OTHER},    {"ffn_up", 0, 2, ROLE_OTHER},
            {"ffn_down", 2, 0, ROLE_FFN_DOWN},
        };
        /* widths by code: 0 = n_embd, 1 = kv heads * head_dim, 2 = n_ff */
        const int64_t width[3] = {s->n_embd, kv, s->n_ff};
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        plan_add(p, &n, name, s->n_embd, 0, DL_TYPE_F32, FILL_ONES);
        for (size_t m = 0; m < sizeof mats / sizeof mats[0]; m++) {
            if (m == 4) {
                snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
                plan_add(p, &n, name, s->n_embd, 0, DL_TYPE_F32, FILL_ONES);
            }
            int64_t ne0 = width[mats[m].in], ne1 = width[mats[m].out];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, mats[m].suffix);
            plan_add(p, &n, name, ne0, ne1, pick_type(type, mats[m].role, l, s->n_layer, ne0),
                     FILL_RANDOM);
        }
    }
    plan_add(p, &n, "output_norm.weight", s->n_embd, 0, DL_TYPE_F32, FILL_ONES);
    if (!s->tied)
        plan_add(p, &n, "output.weight", s->n_embd, s->n_vocab,
                 pick_type(type, ROLE_OUTPUT, 0, s->n_layer, s->n_embd), FILL_RANDOM);
    return n;
}

/* ---- metadata -------------------------------------------------------------------------- */

static int add_model_kv(dl_gguf_writer *w, const synth_shape *s, uint32_t type)
{
    int hd = s->n_embd / s->n_head, rc = 0;
#define ADD(call) \
    if ((rc = (call)) != 0) \
        return rc
    const char *arch = s->bitnet ? "bitnet-b1.58" : "llama";
    char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    ADD(dl_gguf_writer_add_str(w, "general.architecture", arch));
    ADD(dl_gguf_writer_add_str(w, "general.name", s->title));
    ADD(dl_gguf_writer_add_u32(w, "general.file_type", (uint32_t)ftype_of(type)));
    ADD(dl_gguf_writer_add_u32(w, "general.quantization_version", 2));
    ADD(dl_gguf_writer_add_u32(w, KEY("context_length"), s->n_ctx));
    ADD(dl_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)s->n_embd));
    ADD(dl_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)s->n_layer));
    ADD(dl_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)s->n_ff));
    ADD(dl_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)s->n_head));
    ADD(dl_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv));
    ADD(dl_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f));
    ADD(dl_gguf_writer_add_f32(w, KEY("rope.freq_base"), s->rope_base));
    ADD(dl_gguf_writer_add_u32(w, KEY("rope.dimension_count"), (uint32_t)hd));
    ADD(dl_gguf_writer_add_u32(w, KEY("vocab_size"), (uint32_t)s->n_vocab));
#undef KEY
#undef ADD
    return 0;
}

/* Copy one metadata pair from a reader to the writer, keeping its type. */
static int copy_kv(dl_gguf_writer *w, const dl_gguf *g, int64_t i, char *err, size_t errlen)
{
    dl_str k = dl_gguf_key_name(g, i);
    char key[256];
    if (k.len >= sizeof key) {
        set_err(err, errlen, "synth: vocabulary key too long");
        return -EINVAL;
    }
    memcpy(key, k.ptr, k.len);
    key[k.len] = 0;
    enum dl_gguf_vtype t = dl_gguf_key_type(g, i);
    int rc;
    switch (t) {
    case DL_GGUF_STRING: {
        dl_str v;
        rc = dl_gguf_get_str(g, key, &v);
        if (!rc)
            rc = dl_gguf_writer_add_strn(w, key, v.ptr, v.len);
        break;
    }
    case DL_GGUF_ARRAY: {
        enum dl_gguf_vtype et;
        uint64_t n;
        const void *data;
        rc = dl_gguf_get_arr(g, key, &et, &n, &data);
        if (rc)
            break;
        if (et != DL_GGUF_STRING) {
            rc = dl_gguf_writer_add_arr(w, key, et, data, n);
            break;
        }
        dl_str *items = n ? malloc((size_t)n * sizeof *items) : NULL;
        if (n && !items) {
            rc = -ENOMEM;
            break;
        }
        for (uint64_t j = 0; j < n && !rc; j++)
            rc = dl_gguf_arr_str(g, key, j, &items[j]);
        if (!rc)
            rc = dl_gguf_writer_add_arr_str(w, key, items, n);
        free(items);
        break;
    }
    case DL_GGUF_U32: {
        uint32_t v;
        if (!(rc = dl_gguf_get_u32(g, key, &v)))
            rc = dl_gguf_writer_add_u32(w, key, v);
        break;
    }
    case DL_GGUF_F32: {
        float v;
        if (!(rc = dl_gguf_get_f32(g, key, &v)))
            rc = dl_gguf_writer_add_f32(w, key, v);
        break;
    }
    case DL_GGUF_BOOL: {
        int v;
        if (!(rc = dl_gguf_get_bool(g, key, &v)))
            rc = dl_gguf_writer_add_bool(w, key, v);
        break;
    }
    case DL_GGUF_U8: case DL_GGUF_I8: case DL_GGUF_U16: case DL_GGUF_I16: case DL_GGUF_I32:
    case DL_GGUF_I64: {
        /* read as i64, write back in the original width (little-endian low bytes) */
        int64_t v;
        if (!(rc = dl_gguf_get_i64(g, key, &v)))
            rc = dl_gguf_writer_add_scalar(w, key, t, &v);
        break;
    }
    default: /* U64 and F64 never occur in tokenizer metadata */
        rc = -EINVAL;
        break;
    }
    if (rc)
        set_err(err, errlen, "synth: copying vocabulary key %s failed (%d)", key, rc);
    return rc;
}

static int copy_tokenizer_kv(dl_gguf_writer *w, const dl_gguf *g, char *err, size_t errlen)
{
    for (int64_t i = 0; i < dl_gguf_n_kv(g); i++) {
        dl_str k = dl_gguf_key_name(g, i);
        if (k.len > 10 && memcmp(k.ptr, "tokenizer.", 10) == 0) {
            int rc = copy_kv(w, g, i, err, errlen);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- synthesised byte-level BPE vocabulary --------------------------------------------- */

/* Open-addressing set of strings, by index into a token table. */
typedef struct strset {
    uint32_t *slot; /* token index + 1; 0 = empty */
    uint32_t mask;
    const dl_str *tok;
} strset;

static uint32_t str_hash(const char *p, uint64_t n)
{
    uint32_t h = 2166136261u;
    for (uint64_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* Slot of a string: the one holding it, or the empty one where it would go. */
static uint32_t *set_slot(const strset *s, const char *p, uint64_t n)
{
    for (uint32_t i = str_hash(p, n) & s->mask;; i = (i + 1) & s->mask) {
        uint32_t v = s->slot[i];
        if (v == 0)
            return &s->slot[i];
        const dl_str *t = &s->tok[v - 1];
        if (t->len == n && memcmp(t->ptr, p, n) == 0)
            return &s->slot[i];
    }
}

static size_t utf8_put(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* SmolLM2's 17 special tokens, at its ids 0..16. */
static const char *const smol_specials[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
    "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
    "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>",
};
#define N_SMOL_SPECIALS 17

/* A gpt2-style vocabulary of n_vocab tokens: SmolLM2's special tokens, the 256 byte tokens
 * in GPT-2's byte-to-unicode spelling, then the results of the Llama-3 merges taken in rank
 * order, keeping each merge whose two parts are already tokens (so the merge list is
 * consistent and BPE over it is well defined) until the vocabulary is full. */
static int synth_bpe_kv(dl_gguf_writer *w, const dl_gguf *src, int n_vocab, char *err,
                        size_t errlen)
{
    enum dl_gguf_vtype et;
    uint64_t n_merges;
    const void *unused;
    int rc = dl_gguf_get_arr(src, "tokenizer.ggml.merges", &et, &n_merges, &unused);
    if (rc || et != DL_GGUF_STRING) {
        set_err(err, errlen, "synth: source vocabulary has no merges");
        return rc ? rc : -EINVAL;
    }
    /* arena for the merged token texts: each is one byte shorter than its merge line */
    size_t arena_len = 512;
    for (uint64_t i = 0; i < n_merges; i++) {
        dl_str m;
        if ((rc = dl_gguf_arr_str(src, "tokenizer.ggml.merges", i, &m)))
            return rc;
        arena_len += m.len;
    }
    uint32_t cap = 1;
    while (cap < 2u * (uint32_t)n_vocab)
        cap <<= 1;
    dl_str *tok = calloc((size_t)n_vocab, sizeof *tok);
    dl_str *merges = calloc((size_t)n_vocab, sizeof *merges);
    int32_t *types = calloc((size_t)n_vocab, sizeof *types);
    uint32_t *slots = calloc(cap, sizeof *slots);
    char *arena = malloc(arena_len);
    if (!tok || !merges || !types || !slots || !arena) {
        rc = -ENOMEM;
        set_err(err, errlen, "synth: out of memory");
        goto done;
    }
    strset set = {slots, cap - 1, tok};
    int n = 0;
    uint64_t n_used = 0;
    size_t used = 0;
    for (int i = 0; i < N_SMOL_SPECIALS; i++) {
        tok[n] = (dl_str){smol_specials[i], strlen(smol_specials[i])};
        types[n] = 3; /* CONTROL */
        *set_slot(&set, tok[n].ptr, tok[n].len) = (uint32_t)n + 1;
        n++;
    }
    /* GPT-2 byte spelling: printable Latin-1 bytes stand for themselves, the other 68 are
     * mapped to code points 256.. in byte order; listed printable ones first, as GPT-2 */
    for (int pass = 0; pass < 2; pass++) {
        unsigned extra = 0;
        for (unsigned b = 0; b < 256; b++) {
            int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
            unsigned cp = printable ? b : 256 + extra++;
            if (printable != (pass == 0))
                continue;
            size_t len = utf8_put(arena + used, cp);
            tok[n] = (dl_str){arena + used, len};
            used += len;
            types[n] = 1; /* NORMAL */
            *set_slot(&set, tok[n].ptr, tok[n].len) = (uint32_t)n + 1;
            n++;
        }
    }
    for (uint64_t i = 0; i < n_merges && n < n_vocab; i++) {
        dl_str m;
        if ((rc = dl_gguf_arr_str(src, "tokenizer.ggml.merges", i, &m)))
            goto done;
        const char *sp = memchr(m.ptr, ' ', m.len);
        if (!sp || sp == m.ptr || sp == m.ptr + m.len - 1)
            continue;
        uint64_t la = (uint64_t)(sp - m.ptr), lb = m.len - la - 1;
        if (*set_slot(&set, m.ptr, la) == 0 || *set_slot(&set, sp + 1, lb) == 0)
            continue;
        char *t = arena + used; /* tentatively write a+b; kept only if new */
        memcpy(t, m.ptr, la);
        memcpy(t + la, sp + 1, lb);
        uint32_t *slot = set_slot(&set, t, la + lb);
        if (*slot != 0)
            continue;
        tok[n] = (dl_str){t, la + lb};
        types[n] = 1;
        *slot = (uint32_t)n + 1;
        used += la + lb;
        merges[n_used++] = m;
        n++;
    }
    if (n < n_vocab) {
        set_err(err, errlen, "synth: only %d tokens could be built from the merges", n);
        rc = -EINVAL;
        goto done;
    }
    if ((rc = dl_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = dl_gguf_writer_add_str(w, "tokenizer.ggml.pre", "llama-bpe")) ||
        (rc = dl_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tok, (uint64_t)n)) ||
        (rc = dl_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", DL_GGUF_I32, types,
                                     (uint64_t)n)) ||
        (rc = dl_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, n_used)) ||
        (rc = dl_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (rc = dl_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
        (rc = dl_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (rc = dl_gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 2)) ||
        (rc = dl_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 0)))
        set_err(err, errlen, "synth: writing the vocabulary failed (%d)", rc);
done:
    free(tok);
    free(merges);
    free(types);
    free(slots);
    free(arena);
    return rc;
}

/* Llama-3 chat template, when the shared folder has it (Llama 3.2 1B and 3B share it). */
static int add_chat_template(dl_gguf_writer *w, const char *shared_dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
             shared_dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0; /* optional */
    char *buf = NULL;
    size_t len = 0, cap = 0, k;
    char chunk[4096];
    int rc = 0;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + k > cap) {
            cap = (len + k) * 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            buf = nb;
        }
        memcpy(buf + len, chunk, k);
        len += k;
    }
    fclose(f);
    if (!rc)
        rc = dl_gguf_writer_add_strn(w, "tokenizer.chat_template", buf ? buf : "", len);
    free(buf);
    return rc;
}

/* ---- weights --------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Llama 3.1+ RoPE frequency factors (scale 32, low/high frequency factors 1 and 4,
 * original context 8192), as llama.cpp's converter computes them for rope_freqs.weight. */
static void llama3_rope_factors(float *out, int n, int head_dim, float base)
{
    const double factor = 32.0, lo = 1.0, hi = 4.0, old_ctx = 8192.0;
    const double lo_wavelen = old_ctx / lo, hi_wavelen = old_ctx / hi;
    for (int i = 0; i < n; i++) {
        double freq = 1.0 / pow(base, 2.0 * i / head_dim);
        double wavelen = 2.0 * M_PI / freq;
        if (wavelen < hi_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > lo_wavelen) {
            out[i] = (float)factor;
        } else {
            double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            out[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
        }
    }
}

/* Generate, quantise and stream one tensor in chunks of whole rows. */
static int write_tensor(dl_gguf_writer *w, const plan_tensor *t, const synth_shape *s,
                        uint64_t seed, float *row, uint8_t *chunk, size_t chunk_cap, char *err,
                        size_t errlen)
{
    int64_t ne0 = t->ne[0], rows = t->n_dims == 2 ? t->ne[1] : 1;
    size_t row_bytes = dl_row_size(t->type, ne0);
    int64_t per_chunk = (int64_t)(chunk_cap / row_bytes);
    /* uniform on [-a, a] with a = 0.02 * sqrt(3) has standard deviation 0.02 */
    const float a = 0.02f * 1.7320508f;
    uint64_t state = seed;
    /* ternary weights: one per-tensor scale, fp16-exact so that I2_S and TQ2_0 encode
     * exactly the same values; about 1/sqrt(fan-in) keeps activations near unit size */
    float tscale = dl_fp16_to_f32(dl_f32_to_fp16(1.0f / sqrtf((float)ne0)));
    for (int64_t r0 = 0; r0 < rows; r0 += per_chunk) {
        int64_t nr = rows - r0 < per_chunk ? rows - r0 : per_chunk;
        for (int64_t r = 0; r < nr; r++) {
            for (int64_t i = 0; i < ne0; i++) {
                if (t->fill == FILL_ONES)
                    row[i] = 1.0f;
                else if (t->fill == FILL_RANDOM)
                    row[i] = ((float)(splitmix64(&state) >> 40) * 0x1p-23f - 1.0f) * a;
                else if (t->fill == FILL_TERNARY)
                    row[i] = tscale * (float)((int)(splitmix64(&state) % 3) - 1);
                else if (t->fill == FILL_NORM)
                    row[i] = 0.75f + 0.5f * (float)(splitmix64(&state) >> 40) * 0x1p-24f;
            }
            if (t->fill == FILL_ROPE_FREQS)
                llama3_rope_factors(row, (int)ne0, s->n_embd / s->n_head, s->rope_base);
            dl_quantize_row(t->type, row, chunk + (size_t)r * row_bytes, ne0);
        }
        int rc = dl_gguf_writer_write(w, chunk, (size_t)nr * row_bytes, err, errlen);
        if (rc)
            return rc;
    }
    if (t->type == DL_TYPE_I2_S) {
        uint8_t tail[DL_I2_S_TAIL] = {0};
        memcpy(tail, &tscale, sizeof tscale);
        return dl_gguf_writer_write(w, tail, sizeof tail, err, errlen);
    }
    return 0;
}

static int write_file(dl_gguf_writer *w, const plan_tensor *plan, int n, const synth_shape *s,
                      uint64_t seed, const char *path, char *err, size_t errlen)
{
    enum { CHUNK = 1 << 20 };
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        set_err(err, errlen, "synth: cannot create %s: %s", path, strerror(e));
        return -e;
    }
    int64_t max_ne0 = 0;
    for (int i = 0; i < n; i++)
        max_ne0 = plan[i].ne[0] > max_ne0 ? plan[i].ne[0] : max_ne0;
    float *row = malloc((size_t)max_ne0 * sizeof *row);
    uint8_t *chunk = malloc(CHUNK + (size_t)max_ne0 * 4); /* at least one F32 row */
    int rc = 0;
    if (!row || !chunk) {
        set_err(err, errlen, "synth: out of memory");
        rc = -ENOMEM;
    }
    if (!rc)
        rc = dl_gguf_writer_begin(w, f, err, errlen);
    /* each tensor has its own stream, so one tensor's values do not depend on the others */
    for (int i = 0; i < n && !rc; i++) {
        uint64_t ts = seed ^ (0xa0761d6478bd642full * (uint64_t)(i + 1));
        rc = write_tensor(w, &plan[i], s, splitmix64(&ts), row, chunk,
                          CHUNK + (size_t)max_ne0 * 4, err, errlen);
    }
    if (!rc)
        rc = dl_gguf_writer_finish(w, err, errlen);
    if (fclose(f) != 0 && !rc) {
        set_err(err, errlen, "synth: closing %s: %s", path, strerror(errno));
        rc = -EIO;
    }
    if (rc)
        unlink(path);
    free(row);
    free(chunk);
    return rc;
}

int dl_synth_write(const char *shape, uint32_t type, const char *path, uint64_t seed,
                   const char *shared_dir, char *err, size_t errlen)
{
    const synth_shape *s = NULL;
    for (size_t i = 0; i < N_SHAPES; i++)
        if (shape && strcmp(shape, shapes[i].name) == 0)
            s = &shapes[i];
    if (!s) {
        set_err(err, errlen, "synth: unknown shape '%s'", shape ? shape : "");
        return -EINVAL;
    }
    int ternary = type == DL_TYPE_I2_S || type == DL_TYPE_TQ1_0 || type == DL_TYPE_TQ2_0;
    if (ftype_of(type) < 0 || ternary != s->bitnet) {
        const dl_type_traits *tt = dl_type_info(type);
        set_err(err, errlen, "synth: type %s not supported for shape %s (%s)",
                tt ? tt->name : "?", s->name,
                s->bitnet ? "I2_S, TQ1_0, TQ2_0" : "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K");
        return -EINVAL;
    }
    const char *vfile = s->vocab == VOCAB_SPM ? "ggml-vocab-llama-spm.gguf"
                                              : "ggml-vocab-llama-bpe.derived.gguf";
    char vpath[4096];
    snprintf(vpath, sizeof vpath, "%s/models/%s", shared_dir ? shared_dir : "../shared",
             vfile);
    dl_gguf *src = NULL;
    dl_gguf_writer *w = NULL;
    plan_tensor *plan = NULL;
    char verr[256];
    int rc = dl_gguf_open(vpath, &src, verr, sizeof verr);
    if (rc) {
        set_err(err, errlen, "synth: vocabulary %s: %s", vpath, verr);
        return rc;
    }
    if ((rc = dl_gguf_writer_create(32, &w)) || (rc = add_model_kv(w, s, type))) {
        set_err(err, errlen, "synth: writing metadata failed (%d)", rc);
        goto done;
    }
    if (s->vocab == VOCAB_SYNTH_BPE) {
        rc = synth_bpe_kv(w, src, s->n_vocab, err, errlen);
    } else {
        enum dl_gguf_vtype et;
        uint64_t n_tok = 0;
        const void *unused;
        rc = dl_gguf_get_arr(src, "tokenizer.ggml.tokens", &et, &n_tok, &unused);
        if (rc || n_tok != (uint64_t)s->n_vocab) {
            set_err(err, errlen, "synth: %s has %llu tokens, shape %s needs %d", vpath,
                    (unsigned long long)n_tok, s->name, s->n_vocab);
            rc = -EINVAL;
            goto done;
        }
        rc = copy_tokenizer_kv(w, src, err, errlen);
        if (!rc && s->vocab == VOCAB_LLAMA3 && (rc = add_chat_template(w, shared_dir)))
            set_err(err, errlen, "synth: adding the chat template failed (%d)", rc);
    }
    if (rc)
        goto done;
    plan = calloc((size_t)(s->n_layer * 11 + 4), sizeof *plan);
    if (!plan) {
        rc = -ENOMEM;
        set_err(err, errlen, "synth: out of memory");
        goto done;
    }
    int n = make_plan(s, type, plan);
    for (int i = 0; i < n; i++) {
        rc = dl_gguf_writer_add_tensor(w, plan[i].name, plan[i].n_dims, plan[i].ne,
                                       plan[i].type, NULL);
        if (rc) {
            set_err(err, errlen, "synth: tensor %s: bad description (%d)", plan[i].name, rc);
            goto done;
        }
    }
    rc = write_file(w, plan, n, s, seed, path, err, errlen);
done:
    free(plan);
    dl_gguf_writer_destroy(w);
    dl_gguf_close(src);
    return rc;
}
