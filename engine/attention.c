/* attention.c — dense causal attention over the fp16 K/V cache. See attention.h.
 *
 * The scalar path (DL_ISA_SCALAR) is the definition: per (query, head) full scores, then
 * dl_softmax, then the weighted sum of V, in key order. The SIMD paths (attn_impl.h)
 * give each work item one KV head and up to DL__ATTN_ROWS query rows of its GQA group
 * (all its query heads, for consecutive query positions), so every K/V row that is
 * fetched from memory serves all of them; items are dealt round-robin to the threads.
 */
#include "attention.h"

#include <math.h>

#include "attn_impl.h"
#include "kernels.h"

void dl_kv_store(const dl_attn_shape *s, dl_fp16 *kc, dl_fp16 *vc, int pos0, int n,
                 const float *k, const float *v)
{
    int hd = s->head_dim, kvw = s->n_kv * hd;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < s->n_kv; h++) {
            size_t dst = ((size_t)h * s->n_ctx + (size_t)(pos0 + i)) * hd;
            dl_f32_to_fp16_row(kc + dst, k + (size_t)i * kvw + (size_t)h * hd, hd);
            dl_f32_to_fp16_row(vc + dst, v + (size_t)i * kvw + (size_t)h * hd, hd);
        }
}

typedef struct attn_job {
    const dl_attn_shape *s;
    const dl_fp16 *kc, *vc;
    int pos0, n;
    const float *q;
    float *out;
    float *scratch;
} attn_job;

/* One (query, head) pair: scores, softmax, weighted sum of V. */
static void attend_one(const attn_job *j, int i, int h, float *att)
{
    const dl_attn_shape *s = j->s;
    int hd = s->head_dim, qw = s->n_head * hd, kvh = h / (s->n_head / s->n_kv);
    int pos = j->pos0 + i;
    const float *q = j->q + (size_t)i * qw + (size_t)h * hd;
    const dl_fp16 *kh = j->kc + (size_t)kvh * s->n_ctx * hd;
    const dl_fp16 *vh = j->vc + (size_t)kvh * s->n_ctx * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t <= pos; t++) {
        const dl_fp16 *kt = kh + (size_t)t * hd;
        float sc = 0.0f;
        for (int e = 0; e < hd; e++)
            sc += q[e] * dl_fp16_to_f32(kt[e]);
        att[t] = sc * scale;
    }
    dl_softmax(att, pos + 1);
    float *o = j->out + (size_t)i * qw + (size_t)h * hd;
    for (int e = 0; e < hd; e++)
        o[e] = 0.0f;
    for (int t = 0; t <= pos; t++) {
        const dl_fp16 *vt = vh + (size_t)t * hd;
        float a = att[t];
        for (int e = 0; e < hd; e++)
            o[e] += a * dl_fp16_to_f32(vt[e]);
    }
}

static void attn_worker(void *arg, int ith, int nth)
{
    const attn_job *j = arg;
    long lo, hi, total = (long)j->n * j->s->n_head;
    dl_split(total, ith, nth, &lo, &hi);
    /* each thread needs at most pos0 + n scores; the caller sized scratch for its max_ctx */
    float *att = j->scratch + (size_t)ith * (size_t)(j->pos0 + j->n);
    for (long w = lo; w < hi; w++)
        attend_one(j, (int)(w / j->s->n_head), (int)(w % j->s->n_head), att);
}

typedef struct attn_simd_job {
    const attn_job *j;
    void (*rows)(const dl__attn_rows *a);
} attn_simd_job;

static void attn_simd_worker(void *arg, int ith, int nth)
{
    const attn_simd_job *sj = arg;
    const attn_job *j = sj->j;
    const dl_attn_shape *s = j->s;
    int hd = s->head_dim, g = s->n_head / s->n_kv, qw = s->n_head * hd;
    long rows = (long)j->n * g;                              /* per KV head */
    long tiles = (rows + DL__ATTN_ROWS - 1) / DL__ATTN_ROWS; /* per KV head */
    dl__attn_rows a;
    a.hd = hd;
    a.scale = 1.0f / sqrtf((float)hd);
    for (long w = ith; w < (long)s->n_kv * tiles; w += nth) {
        int kvh = (int)(w / tiles);
        long r0 = (w % tiles) * DL__ATTN_ROWS;
        a.k = j->kc + (size_t)kvh * s->n_ctx * hd;
        a.v = j->vc + (size_t)kvh * s->n_ctx * hd;
        a.n = 0;
        for (long r = r0; r < rows && r < r0 + DL__ATTN_ROWS; r++, a.n++) {
            int i = (int)(r / g), h = kvh * g + (int)(r % g);
            size_t off = (size_t)i * qw + (size_t)h * hd;
            a.q[a.n] = j->q + off;
            a.out[a.n] = j->out + off;
            a.nk[a.n] = j->pos0 + i + 1;
        }
        sj->rows(&a);
    }
}

void dl_attn_dense(dl_pool *pool, const dl_attn_shape *s, const dl_fp16 *kc,
                   const dl_fp16 *vc, int pos0, int n, const float *q, float *out,
                   float *scratch)
{
    attn_job j = {s, kc, vc, pos0, n, q, out, scratch};
    enum dl_isa isa = dl_isa_active();
    if (isa != DL_ISA_SCALAR && s->head_dim <= DL__ATTN_HDMAX) {
        attn_simd_job sj = {&j, isa == DL_ISA_AVX512 ? dl__attn_rows_avx512 : dl__attn_rows_avx2};
        dl_pool_run(pool, attn_simd_worker, &sj);
        return;
    }
    dl_pool_run(pool, attn_worker, &j);
}
