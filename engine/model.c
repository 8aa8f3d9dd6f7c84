/* model.c — llama-family models from GGUF: loading, sequences and the forward pass.
 *
 * The forward pass follows llama2.c's run.c step by step (embedding, then per layer:
 * RMSNorm, Q/K/V projections, RoPE, attention over the cache, output projection and
 * residual, RMSNorm, SwiGLU feed-forward and residual; final RMSNorm and the output head),
 * but over a batch: the tokens of every item go through each matmul together, and only
 * attention is done per sequence.
 *
 * BitNet b1.58 ("bitnet-b1.58", Microsoft's bitnet.cpp, and llama.cpp's older "bitnet") is
 * the same network plus two RMSNorms — attn_sub_norm on the attention output before Wo,
 * ffn_sub_norm on the gated product before Wdown — with BitLinear projections (ternary
 * weights, int8 per-token activations: ternary.h). The FFN activation follows the
 * architecture name, as llama.cpp decides it (GGUF has no key for it): squared ReLU for
 * "bitnet-b1.58" (the 2B-4T model, hidden_act relu2), SiLU for "bitnet".
 */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "attention.h"
#include "kernels.h"
#include "quant.h"
#include "ternary.h"

#define MAX_LAYERS 512
#define MAX_WIDTH 65536
#define OUT_CHUNK 16 /* rows of the output head computed per matmul call */

enum ffn_act { FFN_SILU, FFN_RELU2 };

/* A matmul weight and its per-tensor scale: for ternary types the I2_S trailing scale
 * times an optional "<name>.scale" tensor (llama.cpp's bitnet); 1 otherwise. */
typedef struct weight {
    dl_weight w;
    float scale;
} weight;

typedef struct layer {
    const float *attn_norm;     /* [n_embd] */
    weight wq;                  /* [n_head*head_dim x n_embd] */
    weight wk;                  /* [n_kv*head_dim x n_embd] */
    weight wv;                  /* [n_kv*head_dim x n_embd] */
    const float *attn_sub_norm; /* [n_head*head_dim], BitNet only */
    weight wo;                  /* [n_embd x n_head*head_dim] */
    const float *ffn_norm;      /* [n_embd] */
    weight w_gate;              /* [n_ff x n_embd] */
    weight w_up;                /* [n_ff x n_embd] */
    const float *ffn_sub_norm;  /* [n_ff], BitNet only */
    weight w_down;              /* [n_embd x n_ff] */
} layer;

struct dl_model {
    dl_gguf *gguf;
    dl_hparams hp;
    int bitnet;                /* architecture bitnet-b1.58 or bitnet: sub-norms */
    enum ffn_act act;          /* FFN gate activation */
    dl_tokenizer *tok;
    weight tok_embd;           /* [n_vocab x n_embd] */
    layer *layers;             /* [n_layer] */
    const float *output_norm;  /* [n_embd] */
    weight output;             /* [n_vocab x n_embd]; the embedding when tied */
    const float *rope_freqs;   /* [head_dim/2] Llama-3 frequency factors, or NULL */
    void **owned;              /* allocated at load: f32 norm vectors, repacked weights */
    int n_owned;
    size_t packed_bytes;       /* of which repacked weights (kernels.h dl_weight_prepare) */
    char *chat_template;
    size_t weight_bytes;
};

struct dl_ctx {
    const dl_model *m;
    dl_pool *pool;
    int max_tokens;
    int max_ctx;
    float *x;        /* [T][n_embd] residual stream */
    float *xb;       /* [T][n_embd] normed input of a block */
    float *xb2;      /* [T][n_embd] block output */
    float *q;        /* [T][n_head*head_dim] */
    float *k;        /* [T][n_kv*head_dim] */
    float *v;        /* [T][n_kv*head_dim] */
    float *att_out;  /* [T][n_head*head_dim] */
    float *hb;       /* [T][n_ff] */
    float *hb2;      /* [T][n_ff] */
    float *xo;       /* [OUT_CHUNK][n_embd] rows that produce logits */
    float *lo;       /* [OUT_CHUNK][n_vocab] logits of rows gathered from several items */
    float *att;      /* [n_threads][max_ctx] attention scores */
    void *mm_scratch;
    void *tq_scratch; /* int8 activations for ternary weights (ternary.h) */
    dl_delta_scratch *dscr; /* delta attention scratch, shared by the sequences run here */
    size_t bytes;
};

struct dl_seq {
    const dl_model *m;
    int n_ctx;
    int len;                 /* tokens in the cache */
    dl_fp16 *k, *v;          /* dense cache [n_layer][n_kv][n_ctx][head_dim], or NULL */
    void *kraw, *vraw;       /* their allocations (k, v: 64-byte aligned inside) */
    dl_delta_cache *delta;   /* DeltaLLM cache when enabled */
    dl_delta_params dp;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- loading ------------------------------------------------------------------------ */

static int key_i32(const dl_gguf *g, const char *arch, const char *suffix, int32_t def,
                   int32_t lo, int32_t hi, int32_t *out, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    int rc = dl_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT && def >= 0) {
        *out = def;
        return 0;
    }
    if (rc) {
        set_err(err, errlen, "model: key '%s' is %s", key,
                rc == -ENOENT ? "missing" : "not a valid integer");
        return -EINVAL;
    }
    if ((int64_t)v < lo || (int64_t)v > hi) {
        set_err(err, errlen, "model: key '%s' = %u is out of range [%d, %d]", key, v, lo, hi);
        return -EINVAL;
    }
    *out = (int32_t)v;
    return 0;
}

static int key_f32(const dl_gguf *g, const char *arch, const char *suffix, float def,
                   float *out, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = dl_gguf_get_f32(g, key, out);
    if (rc == -ENOENT) {
        *out = def;
        return 0;
    }
    if (rc || !isfinite(*out) || *out <= 0) {
        set_err(err, errlen, "model: key '%s' must be a positive number", key);
        return -EINVAL;
    }
    return 0;
}

static int read_hparams(dl_model *m, char *err, size_t errlen)
{
    const dl_gguf *g = m->gguf;
    dl_hparams *hp = &m->hp;
    dl_str s;
    if (dl_gguf_get_str(g, "general.architecture", &s) || s.len == 0 || s.len >= sizeof hp->arch) {
        set_err(err, errlen, "model: key 'general.architecture' is missing or invalid");
        return -EINVAL;
    }
    memcpy(hp->arch, s.ptr, s.len);
    hp->arch[s.len] = 0;
    if (strcmp(hp->arch, "bitnet-b1.58") == 0) {
        m->bitnet = 1;
        m->act = FFN_RELU2;
    } else if (strcmp(hp->arch, "bitnet") == 0) {
        m->bitnet = 1;
        m->act = FFN_SILU;
    } else if (strcmp(hp->arch, "llama") == 0) {
        m->act = FFN_SILU;
    } else {
        set_err(err, errlen, "model: architecture '%s' is not supported (llama, bitnet and "
                "bitnet-b1.58 are)", hp->arch);
        return -ENOTSUP;
    }
    if (dl_gguf_get_str(g, "general.name", &s) == 0) {
        size_t n = s.len < sizeof hp->name - 1 ? (size_t)s.len : sizeof hp->name - 1;
        memcpy(hp->name, s.ptr, n);
        hp->name[n] = 0;
    }
    const char *a = hp->arch;
    int rc;
    if ((rc = key_i32(g, a, "block_count", -1, 1, MAX_LAYERS, &hp->n_layer, err, errlen)) ||
        (rc = key_i32(g, a, "embedding_length", -1, 1, MAX_WIDTH, &hp->n_embd, err, errlen)) ||
        (rc = key_i32(g, a, "attention.head_count", -1, 1, 1024, &hp->n_head, err, errlen)) ||
        (rc = key_i32(g, a, "feed_forward_length", -1, 1, 1 << 20, &hp->n_ff, err, errlen)) ||
        (rc = key_i32(g, a, "context_length", 2048, 1, 1 << 24, &hp->n_ctx_train, err, errlen)))
        return rc;
    if ((rc = key_i32(g, a, "attention.head_count_kv", hp->n_head, 1, hp->n_head,
                      &hp->n_head_kv, err, errlen)))
        return rc;
    if (hp->n_head % hp->n_head_kv != 0) {
        set_err(err, errlen, "model: head_count %d is not a multiple of head_count_kv %d",
                hp->n_head, hp->n_head_kv);
        return -EINVAL;
    }
    if ((rc = key_i32(g, a, "attention.key_length", hp->n_embd / hp->n_head, 2, 1024,
                      &hp->head_dim, err, errlen)))
        return rc;
    if (hp->head_dim % 2 != 0) {
        set_err(err, errlen, "model: head dimension %d must be even (RoPE pairs)", hp->head_dim);
        return -EINVAL;
    }
    if ((rc = key_f32(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps, err,
                      errlen)) ||
        (rc = key_f32(g, a, "rope.freq_base", 10000.0f, &hp->rope_base, err, errlen)))
        return rc;
    return 0;
}

static int bind_vector(dl_model *m, const char *name, int64_t n, int optional,
                       const float **out, char *err, size_t errlen);

/* A fp16 scale that is NaN, infinite or negative (ternary blocks' d are absmaxes). */
static int bad_fp16_scale(dl_fp16 d)
{
    return (d & 0x7c00) == 0x7c00 || ((d & 0x8000) && (d & 0x7fff));
}

/* The per-tensor scale of a ternary weight: I2_S's trailing float (TQ types keep theirs in
 * the blocks, which are checked here) times an optional "<base>.scale" tensor. */
static int ternary_scale(dl_model *m, const dl_gguf_tensor *t, const char *name, weight *w,
                         char *err, size_t errlen)
{
    float s = 1.0f;
    if (t->type == DL_TYPE_I2_S) {
        s = dl_i2s_scale(t->data, t->ne[0] * t->ne[1]);
    } else {
        size_t bsz = dl_type_info(t->type)->type_size;
        int64_t nblk = t->ne[0] * t->ne[1] / DL_QK_K;
        for (int64_t i = 0; i < nblk; i++) {
            dl_fp16 d;
            memcpy(&d, (const char *)t->data + (i + 1) * bsz - sizeof d, sizeof d);
            if (bad_fp16_scale(d)) {
                set_err(err, errlen, "model: tensor '%s' block %lld has an invalid scale %g",
                        name, (long long)i, (double)dl_fp16_to_f32(d));
                return -EINVAL;
            }
        }
    }
    char sname[128];
    size_t len = strlen(name);
    const char *suffix = ".weight";
    if (len > strlen(suffix) && strcmp(name + len - strlen(suffix), suffix) == 0) {
        snprintf(sname, sizeof sname, "%.*s.scale", (int)(len - strlen(suffix)), name);
        const float *extra;
        int rc = bind_vector(m, sname, 1, 1, &extra, err, errlen);
        if (rc)
            return rc;
        if (extra)
            s *= extra[0];
    }
    if (!isfinite(s) || s < 0.0f) {
        set_err(err, errlen, "model: tensor '%s' has an invalid scale %g", name, (double)s);
        return -EINVAL;
    }
    w->scale = s;
    return 0;
}

/* Bind a 2-D weight and check its shape and type. */
static int bind_weight(dl_model *m, const char *name, int64_t cols, int64_t rows, int optional,
                       weight *mw, char *err, size_t errlen)
{
    const dl_gguf_tensor *t = dl_gguf_find_tensor(m->gguf, name);
    dl_weight *w = &mw->w;
    memset(mw, 0, sizeof *mw);
    mw->scale = 1.0f;
    if (!t) {
        if (optional)
            return 0;
        set_err(err, errlen, "model: tensor '%s' is missing", name);
        return -EINVAL;
    }
    if (t->ne[0] != cols || (rows >= 0 && t->ne[1] != rows) || t->ne[2] != 1 || t->ne[3] != 1) {
        set_err(err, errlen, "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected "
                "[%lld, %lld]", name, (long long)t->ne[0], (long long)t->ne[1],
                (long long)t->ne[2], (long long)t->ne[3], (long long)cols, (long long)rows);
        return -EINVAL;
    }
    const dl_type_traits *tt = dl_type_info(t->type);
    if (!tt || !tt->can_matmul) {
        set_err(err, errlen, "model: tensor '%s' has type %s, which cannot be used as a weight",
                name, tt ? tt->name : "?");
        return -ENOTSUP;
    }
    w->type = t->type;
    w->rows = t->ne[1];
    w->cols = t->ne[0];
    w->row_bytes = dl_row_size(t->type, t->ne[0]);
    w->data = t->data;
    m->weight_bytes += t->nbytes;
    if (dl_is_ternary(t->type))
        return ternary_scale(m, t, name, mw, err, errlen);
    return 0;
}

/* Keep p to be freed with the model. */
static int own(dl_model *m, void *p)
{
    void **grown = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    m->owned = grown;
    m->owned[m->n_owned++] = p;
    return 0;
}

/* Bind a vector (norm weights, rope factors) as f32, converting when stored otherwise. */
static int bind_vector(dl_model *m, const char *name, int64_t n, int optional,
                       const float **out, char *err, size_t errlen)
{
    const dl_gguf_tensor *t = dl_gguf_find_tensor(m->gguf, name);
    *out = NULL;
    if (!t) {
        if (optional)
            return 0;
        set_err(err, errlen, "model: tensor '%s' is missing", name);
        return -EINVAL;
    }
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1) {
        set_err(err, errlen, "model: tensor '%s' has %lld elements, expected %lld", name,
                (long long)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]), (long long)n);
        return -EINVAL;
    }
    m->weight_bytes += t->nbytes;
    if (t->type == DL_TYPE_F32) {
        *out = t->data;
        return 0;
    }
    const dl_type_traits *tt = dl_type_info(t->type);
    if (!tt || !tt->can_matmul || dl_is_ternary(t->type)) {
        set_err(err, errlen, "model: tensor '%s' has unsupported type %s", name,
                tt ? tt->name : "?");
        return -ENOTSUP;
    }
    float *f = malloc((size_t)n * sizeof *f);
    if (!f || own(m, f)) {
        free(f);
        set_err(err, errlen, "model: out of memory");
        return -ENOMEM;
    }
    dl_dequantize_row(t->type, t->data, f, n);
    *out = f;
    return 0;
}

static int bind_layer(dl_model *m, int il, char *err, size_t errlen)
{
    const dl_hparams *hp = &m->hp;
    layer *L = &m->layers[il];
    int64_t e = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char n[96];
    int rc;
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, il), n)
    if ((rc = bind_vector(m, NAME("attn_norm.weight"), e, 0, &L->attn_norm, err, errlen)) ||
        (rc = bind_weight(m, NAME("attn_q.weight"), e, qd, 0, &L->wq, err, errlen)) ||
        (rc = bind_weight(m, NAME("attn_k.weight"), e, kvd, 0, &L->wk, err, errlen)) ||
        (rc = bind_weight(m, NAME("attn_v.weight"), e, kvd, 0, &L->wv, err, errlen)) ||
        (rc = bind_weight(m, NAME("attn_output.weight"), qd, e, 0, &L->wo, err, errlen)) ||
        (rc = bind_vector(m, NAME("ffn_norm.weight"), e, 0, &L->ffn_norm, err, errlen)) ||
        (rc = bind_weight(m, NAME("ffn_gate.weight"), e, hp->n_ff, 0, &L->w_gate, err, errlen)) ||
        (rc = bind_weight(m, NAME("ffn_up.weight"), e, hp->n_ff, 0, &L->w_up, err, errlen)) ||
        (rc = bind_weight(m, NAME("ffn_down.weight"), hp->n_ff, e, 0, &L->w_down, err, errlen)))
        return rc;
    if (m->bitnet &&
        ((rc = bind_vector(m, NAME("attn_sub_norm.weight"), qd, 0, &L->attn_sub_norm, err,
                           errlen)) ||
         (rc = bind_vector(m, NAME("ffn_sub_norm.weight"), hp->n_ff, 0, &L->ffn_sub_norm, err,
                           errlen))))
        return rc;
#undef NAME
    return 0;
}

/* Let the kernels lay out each matmul weight once for their fastest path (kernels.h), and
 * release the originals: after this only the copies are read. */
static int prepare_one(dl_model *m, weight *mw, char *err, size_t errlen)
{
    void *packed = NULL;
    int rc = dl_weight_prepare(&mw->w, &packed, err, errlen);
    if (rc || !packed)
        return rc;
    if (own(m, packed)) {
        free(packed);
        set_err(err, errlen, "model: out of memory");
        return -ENOMEM;
    }
    m->packed_bytes += dl_weight_prepared_bytes(&mw->w);
    /* Reading the original to repack it made its pages resident; matmuls no longer read
     * them, so give them back (a read-only file mapping: they fault in again from the file
     * if a scalar path ever reads them). */
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)mw->w.data + pg - 1) & ~(pg - 1);
    uintptr_t hi = ((uintptr_t)mw->w.data + (uintptr_t)(mw->w.row_bytes * mw->w.rows)) &
                   ~(pg - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
    return 0;
}

static int prepare_weights(dl_model *m, char *err, size_t errlen)
{
    /* a tied output head is the embedding: lookups then read its rows from the copy */
    int rc = prepare_one(m, &m->output, err, errlen);
    if (m->hp.tied_output)
        m->tok_embd.w.packed = m->output.w.packed;
    for (int il = 0; il < m->hp.n_layer && !rc; il++) {
        layer *L = &m->layers[il];
        weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0] && !rc; i++)
            rc = prepare_one(m, ws[i], err, errlen);
    }
    return rc;
}

static int bind_weights(dl_model *m, char *err, size_t errlen)
{
    dl_hparams *hp = &m->hp;
    int rc = bind_weight(m, "token_embd.weight", hp->n_embd, -1, 0, &m->tok_embd, err, errlen);
    if (rc)
        return rc;
    hp->n_vocab = (int32_t)m->tok_embd.w.rows;
    if (hp->n_vocab != dl_tokenizer_n_vocab(m->tok)) {
        set_err(err, errlen, "model: token_embd.weight has %d rows but the vocabulary has %d "
                "tokens", hp->n_vocab, dl_tokenizer_n_vocab(m->tok));
        return -EINVAL;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        set_err(err, errlen, "model: out of memory");
        return -ENOMEM;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = bind_layer(m, il, err, errlen)))
            return rc;
    if ((rc = bind_vector(m, "output_norm.weight", hp->n_embd, 0, &m->output_norm, err, errlen)) ||
        (rc = bind_weight(m, "output.weight", hp->n_embd, hp->n_vocab, 1, &m->output, err,
                          errlen)) ||
        (rc = bind_vector(m, "rope_freqs.weight", hp->head_dim / 2, 1, &m->rope_freqs, err,
                          errlen)))
        return rc;
    hp->tied_output = m->output.w.data == NULL;
    if (hp->tied_output)
        m->output = m->tok_embd;
    if ((rc = prepare_weights(m, err, errlen)))
        return rc;
    hp->weight_type = m->layers[0].w_gate.w.type;
    hp->n_params = 0;
    for (int64_t i = 0; i < dl_gguf_n_tensors(m->gguf); i++) {
        const dl_gguf_tensor *t = dl_gguf_tensor_at(m->gguf, i);
        hp->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return 0;
}

int dl_model_load(const char *path, dl_model **out, char *err, size_t errlen)
{
    *out = NULL;
    dl_model *m = calloc(1, sizeof *m);
    if (!m) {
        set_err(err, errlen, "model: out of memory");
        return -ENOMEM;
    }
    int rc = dl_gguf_open(path, &m->gguf, err, errlen);
    if (rc)
        goto fail;
    if ((rc = read_hparams(m, err, errlen)))
        goto fail;
    if ((rc = dl_tokenizer_from_gguf(m->gguf, &m->tok, err, errlen)))
        goto fail;
    if ((rc = bind_weights(m, err, errlen)))
        goto fail;
    dl_str tmpl;
    if (dl_gguf_get_str(m->gguf, "tokenizer.chat_template", &tmpl) == 0) {
        m->chat_template = malloc(tmpl.len + 1);
        if (!m->chat_template) {
            rc = -ENOMEM;
            set_err(err, errlen, "model: out of memory");
            goto fail;
        }
        memcpy(m->chat_template, tmpl.ptr, tmpl.len);
        m->chat_template[tmpl.len] = 0;
    }
    *out = m;
    return 0;
fail:
    dl_model_free(m);
    return rc;
}

void dl_model_free(dl_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->chat_template);
    dl_tokenizer_free(m->tok);
    dl_gguf_close(m->gguf);
    free(m);
}

const dl_hparams *dl_model_hparams(const dl_model *m) { return &m->hp; }
const dl_tokenizer *dl_model_tokenizer(const dl_model *m) { return m->tok; }
const dl_gguf *dl_model_gguf(const dl_model *m) { return m->gguf; }
size_t dl_model_weight_bytes(const dl_model *m) { return m->weight_bytes; }
size_t dl_model_packed_bytes(const dl_model *m) { return m->packed_bytes; }
const char *dl_model_chat_template(const dl_model *m) { return m->chat_template; }

size_t dl_model_kv_bytes_per_token(const dl_model *m)
{
    const dl_hparams *hp = &m->hp;
    return (size_t)2 * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(dl_fp16);
}

/* ---- contexts ----------------------------------------------------------------------- */

dl_ctx *dl_ctx_create(const dl_model *m, int max_tokens, int max_ctx, int n_threads,
                      char *err, size_t errlen)
{
    const dl_hparams *hp = &m->hp;
    if (max_tokens < 1 || max_ctx < 1 || n_threads < 1 || n_threads > 1024) {
        set_err(err, errlen, "ctx: max_tokens, max_ctx and threads must be >= 1");
        return NULL;
    }
    dl_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        set_err(err, errlen, "ctx: out of memory");
        return NULL;
    }
    c->m = m;
    c->max_tokens = max_tokens;
    c->max_ctx = max_ctx;
    size_t T = (size_t)max_tokens, qd = (size_t)hp->n_head * hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    int64_t widest = hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd;
    if ((int64_t)qd > widest)
        widest = (int64_t)qd;
    struct { float **p; size_t n; } bufs[] = {
        {&c->x, T * hp->n_embd}, {&c->xb, T * hp->n_embd}, {&c->xb2, T * hp->n_embd},
        {&c->q, T * qd}, {&c->k, T * kvd}, {&c->v, T * kvd}, {&c->att_out, T * qd},
        {&c->hb, T * hp->n_ff}, {&c->hb2, T * hp->n_ff}, {&c->xo, (size_t)OUT_CHUNK * hp->n_embd},
        {&c->lo, (size_t)OUT_CHUNK * hp->n_vocab},
        {&c->att, (size_t)n_threads * max_ctx},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i].p = malloc(bufs[i].n * sizeof(float));
        c->bytes += bufs[i].n * sizeof(float);
        if (!*bufs[i].p)
            goto oom;
    }
    size_t mms = dl_matmul_scratch_size(max_tokens, widest);
    c->mm_scratch = malloc(mms ? mms : 1);
    c->bytes += mms;
    if (!c->mm_scratch)
        goto oom;
    size_t tqs = dl_ternary_scratch_size(max_tokens, widest);
    c->tq_scratch = aligned_alloc(64, (tqs + 63) & ~(size_t)63);
    c->bytes += tqs;
    if (!c->tq_scratch)
        goto oom;
    c->dscr = dl_delta_scratch_create(max_ctx, (int)hp->head_dim,
                                      (int)(hp->n_head / hp->n_head_kv), n_threads, err, errlen);
    if (!c->dscr) {
        dl_ctx_free(c);
        return NULL;
    }
    c->bytes += dl_delta_scratch_bytes(c->dscr);
    c->pool = dl_pool_create(n_threads);
    if (!c->pool)
        goto oom;
    return c;
oom:
    set_err(err, errlen, "ctx: out of memory (%d tokens x %d context)", max_tokens, max_ctx);
    dl_ctx_free(c);
    return NULL;
}

void dl_ctx_free(dl_ctx *c)
{
    if (!c)
        return;
    float *bufs[] = {c->x, c->xb, c->xb2, c->q, c->k, c->v, c->att_out, c->hb, c->hb2, c->xo, c->lo,
                     c->att};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c->mm_scratch);
    free(c->tq_scratch);
    dl_delta_scratch_free(c->dscr);
    dl_pool_free(c->pool);
    free(c);
}

size_t dl_ctx_bytes(const dl_ctx *c) { return c->bytes; }
int dl_ctx_max_tokens(const dl_ctx *c) { return c->max_tokens; }
dl_pool *dl_ctx_pool(dl_ctx *c) { return c->pool; }

/* ---- sequences ---------------------------------------------------------------------- */

dl_seq *dl_seq_create(const dl_model *m, int n_ctx, const dl_delta_params *delta, char *err,
                      size_t errlen)
{
    const dl_hparams *hp = &m->hp;
    if (n_ctx < 1 || n_ctx > (1 << 24)) {
        set_err(err, errlen, "sequence: context size %d out of range", n_ctx);
        return NULL;
    }
    if (delta && delta->enabled && dl_delta_params_check(delta, err, errlen) != 0)
        return NULL;
    dl_seq *s = calloc(1, sizeof *s);
    if (!s) {
        set_err(err, errlen, "sequence: out of memory");
        return NULL;
    }
    s->m = m;
    s->n_ctx = n_ctx;
    if (delta && delta->enabled) {
        s->dp = *delta;
        s->delta = dl_delta_cache_create(hp->n_layer, hp->n_head_kv, hp->head_dim, n_ctx, delta,
                                         err, errlen);
        if (!s->delta) {
            free(s);
            return NULL;
        }
        return s;
    }
    /* calloc of this size is served by fresh zero pages: memory becomes resident only as
     * positions are written, which is what dl_seq_bytes reports. */
    size_t n = (size_t)hp->n_layer * hp->n_head_kv * (size_t)n_ctx * hp->head_dim;
    /* 64 bytes more, to start the rows on a cache line (calloc's large blocks begin 16
     * bytes into a page, so each 128-byte key row of a 64-dim head would span 3 lines) */
    s->kraw = calloc(n * sizeof(dl_fp16) + 64, 1);
    s->vraw = calloc(n * sizeof(dl_fp16) + 64, 1);
    s->k = s->kraw ? (dl_fp16 *)(((uintptr_t)s->kraw + 63) & ~(uintptr_t)63) : NULL;
    s->v = s->vraw ? (dl_fp16 *)(((uintptr_t)s->vraw + 63) & ~(uintptr_t)63) : NULL;
    if (!s->k || !s->v) {
        set_err(err, errlen, "sequence: out of memory for a %d-token cache", n_ctx);
        dl_seq_free(s);
        return NULL;
    }
    return s;
}

void dl_seq_free(dl_seq *s)
{
    if (!s)
        return;
    free(s->kraw);
    free(s->vraw);
    dl_delta_cache_free(s->delta);
    free(s);
}

int dl_seq_len(const dl_seq *s) { return s->len; }
int dl_seq_n_ctx(const dl_seq *s) { return s->n_ctx; }

int dl_seq_truncate(dl_seq *s, int n)
{
    if (n < 0 || n > s->len)
        return -EINVAL;
    if (s->delta) {
        int rc = dl_delta_cache_truncate(s->delta, n);
        if (rc)
            return rc;
    }
    s->len = n;
    return 0;
}

size_t dl_seq_bytes(const dl_seq *s)
{
    if (s->delta)
        return dl_delta_cache_bytes(s->delta);
    return (size_t)s->len * dl_model_kv_bytes_per_token(s->m);
}

const dl_delta_stats *dl_seq_delta_stats(const dl_seq *s)
{
    return s->delta ? dl_delta_cache_stats(s->delta) : NULL;
}

const dl_delta_stage_stats *dl_seq_delta_layer_stats(const dl_seq *s, int il)
{
    return s->delta ? dl_delta_cache_layer_stats(s->delta, il) : NULL;
}

const dl_delta_cache *dl_seq_delta_cache(const dl_seq *s) { return s->delta; }

const dl_delta_params *dl_seq_delta_params(const dl_seq *s)
{
    return s->delta ? &s->dp : NULL;
}

/* ---- forward pass ------------------------------------------------------------------- */

static int check_batch(const dl_ctx *c, const dl_batch_item *items, int n_items, int *total,
                       char *err, size_t errlen)
{
    *total = 0;
    for (int i = 0; i < n_items; i++) {
        const dl_batch_item *it = &items[i];
        if (!it->seq || !it->tokens || it->n_tokens < 1) {
            set_err(err, errlen, "forward: item %d has no sequence or no tokens", i);
            return -EINVAL;
        }
        if (it->seq->m != c->m || it->seq->len + it->n_tokens > it->seq->n_ctx) {
            set_err(err, errlen, "forward: item %d: %d + %d tokens exceed the context of %d", i,
                    it->seq->len, it->n_tokens, it->seq->n_ctx);
            return -ERANGE;
        }
        if (it->seq->len + it->n_tokens > c->max_ctx) {
            set_err(err, errlen, "forward: item %d exceeds the context size this ctx was "
                    "created for (%d)", i, c->max_ctx);
            return -ERANGE;
        }
        for (int j = 0; j < i; j++)
            if (items[j].seq == it->seq) {
                set_err(err, errlen, "forward: items %d and %d are the same sequence", j, i);
                return -EINVAL;
            }
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= c->m->hp.n_vocab) {
                set_err(err, errlen, "forward: token id %d out of range [0, %d)", it->tokens[t],
                        c->m->hp.n_vocab);
                return -EINVAL;
            }
        *total += it->n_tokens;
    }
    if (*total > c->max_tokens) {
        set_err(err, errlen, "forward: %d tokens exceed the batch size %d", *total,
                c->max_tokens);
        return -ERANGE;
    }
    return 0;
}

/* Attention for one item and layer: dense over the fp16 cache, or DeltaLLM's hybrid with
 * the ctx's shared scratch (so sessions hold only cache data). Returns 0, or the delta
 * cache's error code. */
static int attention(dl_ctx *c, dl_seq *s, int il, int row0, int n)
{
    const dl_hparams *hp = &c->m->hp;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const float *q = c->q + row0 * qd, *k = c->k + row0 * kvd, *v = c->v + row0 * kvd;
    float *out = c->att_out + row0 * qd;
    if (s->delta)
        return dl_delta_attention(s->delta, c->dscr, c->pool, il, hp->n_head, q, k, v, n, n > 1, out);
    dl_attn_shape sh = {hp->n_head, hp->n_head_kv, hp->head_dim, s->n_ctx};
    size_t layer_off = (size_t)il * hp->n_head_kv * s->n_ctx * hp->head_dim;
    dl_kv_store(&sh, s->k + layer_off, s->v + layer_off, s->len, n, k, v);
    dl_attn_dense(c->pool, &sh, s->k + layer_off, s->v + layer_off, s->len, n, q, out, c->att);
    return 0;
}

/* y = W x for the T rows of x (see dl_matmul); ternary weights take BitLinear's path. */
static void matmul(dl_ctx *c, const weight *w, const float *x, float *y, int T)
{
    if (dl_is_ternary(w->w.type))
        dl_ternary_matmul(c->pool, &w->w, w->scale, x, y, T, c->tq_scratch);
    else
        dl_matmul(c->pool, &w->w, x, y, T, c->mm_scratch);
}

/* n products of the same input x (Q/K/V, gate/up): ternary ones share one int8 copy and
 * one pool dispatch. */
static void matmul_shared(dl_ctx *c, const float *x, int T, int n, const weight *const w[],
                          float *const y[])
{
    int all_ternary = n <= DL_TERNARY_MULTI_MAX;
    for (int i = 0; i < n; i++)
        all_ternary &= dl_is_ternary(w[i]->w.type) && w[i]->w.cols == w[0]->w.cols;
    if (!all_ternary) { /* llama-family weights (a mixed set quantises per product) */
        for (int i = 0; i < n; i++)
            matmul(c, w[i], x, y[i], T);
        return;
    }
    const dl_weight *tw[DL_TERNARY_MULTI_MAX];
    float sc[DL_TERNARY_MULTI_MAX];
    for (int i = 0; i < n; i++) {
        tw[i] = &w[i]->w;
        sc[i] = w[i]->scale;
    }
    dl_ternary_quantize(c->pool, x, T, w[0]->w.cols, c->tq_scratch);
    dl_ternary_matmul_q_multi(c->pool, n, tw, sc, c->tq_scratch, y, T); /* one dispatch */
}

/* out = relu(gate)^2 * up: the BitNet b1.58 FFN gate. */
static void relu2_gate(float *out, const float *gate, const float *up, int n)
{
    for (int i = 0; i < n; i++) {
        float g = gate[i] > 0.0f ? gate[i] : 0.0f;
        out[i] = g * g * up[i];
    }
}

static void add_rows(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static int m_bitnet(const dl_ctx *c)
{
    return c->m->bitnet;
}

static int layer_forward(dl_ctx *c, const layer *L, int il, dl_batch_item *items,
                         int n_items, int T)
{
    const dl_hparams *hp = &c->m->hp;
    int E = hp->n_embd;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;

    /* attention block: x += Wo · attn(RoPE(Wq·n(x)), RoPE(Wk·n(x)), Wv·n(x)) */
    for (int t = 0; t < T; t++)
        dl_rmsnorm(c->xb + (size_t)t * E, c->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
    const weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
    float *const qkv_out[3] = {c->q, c->k, c->v};
    matmul_shared(c, c->xb, T, 3, qkv, qkv_out);
    int row = 0;
    for (int i = 0; i < n_items; i++) {
        dl_seq *s = items[i].seq;
        for (int t = 0; t < items[i].n_tokens; t++) {
            int pos = s->len + t;
            dl_rope(c->q + (size_t)(row + t) * qd, hp->n_head, hp->head_dim, pos, hp->rope_base,
                    c->m->rope_freqs);
            dl_rope(c->k + (size_t)(row + t) * kvd, hp->n_head_kv, hp->head_dim, pos,
                    hp->rope_base, c->m->rope_freqs);
        }
        int rc = attention(c, s, il, row, items[i].n_tokens);
        if (rc)
            return rc;
        row += items[i].n_tokens;
    }
    const float *att = c->att_out;
    if (m_bitnet(c)) { /* BitNet: RMSNorm the attention output before Wo (into q, now free) */
        for (int t = 0; t < T; t++)
            dl_rmsnorm(c->q + t * qd, c->att_out + t * qd, L->attn_sub_norm, (int)qd,
                       hp->rms_eps);
        att = c->q;
    }
    matmul(c, &L->wo, att, c->xb2, T);
    add_rows(c->x, c->xb2, (size_t)T * E);

    /* feed-forward block: x += Wdown · (act(Wgate·n(x)) * Wup·n(x)), act SiLU or ReLU^2 */
    for (int t = 0; t < T; t++)
        dl_rmsnorm(c->xb + (size_t)t * E, c->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
    const weight *gate_up[2] = {&L->w_gate, &L->w_up};
    float *const gate_up_out[2] = {c->hb, c->hb2};
    matmul_shared(c, c->xb, T, 2, gate_up, gate_up_out);
    if (c->m->act == FFN_RELU2)
        relu2_gate(c->hb, c->hb, c->hb2, T * hp->n_ff);
    else
        dl_swiglu(c->hb, c->hb, c->hb2, T * hp->n_ff);
    const float *ffn = c->hb;
    if (m_bitnet(c)) { /* BitNet: RMSNorm the gated product before Wdown (into hb2) */
        size_t F = (size_t)hp->n_ff;
        for (int t = 0; t < T; t++)
            dl_rmsnorm(c->hb2 + t * F, c->hb + t * F, L->ffn_sub_norm, hp->n_ff, hp->rms_eps);
        ffn = c->hb2;
    }
    matmul(c, &L->w_down, ffn, c->xb2, T);
    add_rows(c->x, c->xb2, (size_t)T * E);
    return 0;
}

/* Final norm and output head for every row of an item that wants all its logits. */
static void output_all_logits(dl_ctx *c, const dl_batch_item *it, int row0)
{
    const dl_hparams *hp = &c->m->hp;
    int E = hp->n_embd;
    for (int r = 0; r < it->n_tokens; r += OUT_CHUNK) {
        int n = it->n_tokens - r < OUT_CHUNK ? it->n_tokens - r : OUT_CHUNK;
        for (int j = 0; j < n; j++)
            dl_rmsnorm(c->xo + (size_t)j * E, c->x + (size_t)(row0 + r + j) * E, c->m->output_norm,
                       E, hp->rms_eps);
        matmul(c, &c->m->output, c->xo, it->logits + (size_t)r * hp->n_vocab, n);
    }
}

/* The output head for the last row of every item that wants only that: the rows of up to
 * OUT_CHUNK items go through one matmul, so a batched decode step reads the head (the
 * largest matrix) once, not once per sequence. */
static void output_last_logits(dl_ctx *c, dl_batch_item *items, int n_items)
{
    const dl_hparams *hp = &c->m->hp;
    int E = hp->n_embd, n = 0, row = 0;
    dl_batch_item *who[OUT_CHUNK];
    for (int i = 0; i < n_items; i++) {
        row += items[i].n_tokens;
        if (!items[i].logits || items[i].all_logits)
            continue;
        dl_rmsnorm(c->xo + (size_t)n * E, c->x + (size_t)(row - 1) * E, c->m->output_norm, E,
                   hp->rms_eps);
        who[n++] = &items[i];
        if (n < OUT_CHUNK && i + 1 < n_items)
            continue;
        matmul(c, &c->m->output, c->xo, c->lo, n);
        for (int j = 0; j < n; j++)
            memcpy(who[j]->logits, c->lo + (size_t)j * hp->n_vocab,
                   (size_t)hp->n_vocab * sizeof(float));
        n = 0;
    }
    if (n) { /* the last items wanted no logits */
        matmul(c, &c->m->output, c->xo, c->lo, n);
        for (int j = 0; j < n; j++)
            memcpy(who[j]->logits, c->lo + (size_t)j * hp->n_vocab,
                   (size_t)hp->n_vocab * sizeof(float));
    }
}

/* Row `tok` of the token embedding as floats (a ternary embedding times its scale). */
static void embed(const dl_model *m, int32_t tok, float *out)
{
    const dl_weight *w = &m->tok_embd.w;
    dl_weight_get_row(w, tok, out); /* from the repacked copy of a tied output head */
    if (m->tok_embd.scale != 1.0f)
        for (int64_t i = 0; i < w->cols; i++)
            out[i] *= m->tok_embd.scale;
}

int dl_forward(dl_ctx *c, dl_batch_item *items, int n_items, char *err, size_t errlen)
{
    const dl_model *m = c->m;
    const dl_hparams *hp = &m->hp;
    int T, rc = check_batch(c, items, n_items, &T, err, errlen);
    if (rc)
        return rc;
    if (T == 0)
        return 0;
    int row = 0;
    for (int i = 0; i < n_items; i++)
        for (int t = 0; t < items[i].n_tokens; t++, row++)
            embed(m, items[i].tokens[t], c->x + (size_t)row * hp->n_embd);
    for (int il = 0; il < hp->n_layer; il++) {
        if ((rc = layer_forward(c, &m->layers[il], il, items, n_items, T)) == 0)
            continue;
        /* Undo what the layers before the failure appended: every sequence keeps the
         * length it had, so the batch can be retried or the sequence used as it was. */
        for (int i = 0; i < n_items; i++)
            if (items[i].seq->delta)
                dl_delta_cache_truncate(items[i].seq->delta, items[i].seq->len);
        set_err(err, errlen, "forward: attention failed at layer %d: %s", il, strerror(-rc));
        return rc;
    }
    output_last_logits(c, items, n_items);
    row = 0;
    for (int i = 0; i < n_items; i++) {
        if (items[i].logits && items[i].all_logits)
            output_all_logits(c, &items[i], row);
        row += items[i].n_tokens;
        items[i].seq->len += items[i].n_tokens;
    }
    return 0;
}
