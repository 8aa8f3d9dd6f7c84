/* delta_bench.c — dense vs delta attention timing (see delta_bench.h).
 *
 * The dense baseline runs the same unit/softmax/P.V code as delta attention with every
 * key exact from an fp16 K cache (dl__delta_dense_attention), so that the difference is
 * the score product and the K bytes; the score product alone is the score phase of the
 * fused kernels, timed inside them (dl__delta_time_scores) in separate runs, the
 * end-to-end times with it off. attention.c's dense attention (dl_attn_dense: what a
 * sequence without delta attention runs) is timed too, prefill and decode — the
 * end-to-end comparison that matters to users.
 */
#include "delta_bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention.h"
#include "delta.h"
#include "delta_impl.h"
#include "pool.h"

void dl_delta_bench_default(dl_delta_bench_config *cfg)
{
    *cfg = (dl_delta_bench_config){ .ctx = 2048, .n_head = 32, .n_kv = 8, .head_dim = 64,
                                    .sparsity_target = 0.6f, .window = 32, .sink = 0,
                                    .layers = 4, .n_threads = 1, .reps = 3 };
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t bench_rng;
static float bench_normal(void)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        bench_rng = bench_rng * 6364136223846793005ull + 1442695040888963407ull;
        u[i] = ((double)(bench_rng >> 11) + 0.5) * 0x1p-53;
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

typedef struct bench_buf {
    float *k, *v, *q, *o;  /* ctx x kw, ctx x kw, ctx x qw, ctx x qw */
    dl_fp16 **kc, **vc;    /* [layers] dense fp16 caches [kv][ctx][d] */
    float *scratch;        /* attention.c scratch */
    dl_delta_cache **dc;   /* [layers] */
    dl_delta_cache *base;  /* scratch/shape for the dense baseline */
} bench_buf;

static void store_dense(const dl_delta_bench_config *cfg, dl_fp16 *kc, dl_fp16 *vc,
                        const float *k, const float *v, int p0, int n)
{
    int d = cfg->head_dim;
    for (int a = 0; a < n; a++)
        for (int g = 0; g < cfg->n_kv; g++)
            for (int e = 0; e < d; e++) {
                size_t src = (size_t)a * cfg->n_kv * d + (size_t)g * d + e;
                size_t dst = ((size_t)g * cfg->ctx + p0 + a) * d + e;
                kc[dst] = dl_f32_to_fp16(k[src]);
                vc[dst] = dl_f32_to_fp16(v[src]);
            }
}

static int run(const dl_delta_bench_config *cfg, bench_buf *b, dl_pool *pool,
               dl_delta_bench_result *r, char *err, size_t errlen)
{
    int T = cfg->ctx, d = cfg->head_dim, nh = cfg->n_head, L = cfg->layers;
    size_t kw = (size_t)cfg->n_kv * d, qw = (size_t)nh * d;
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dp.window = cfg->window;
    dp.prefill_window = 0; /* the bench's window, in prefill too */
    dp.sink = cfg->sink;
    dp.sparsity_target = cfg->sparsity_target;

    /* theta for the target, and the prefill statistics (untimed) */
    dl_delta_cache *c = dl_delta_cache_create(1, cfg->n_kv, d, T, &dp, err, errlen);
    if (!c)
        return -EINVAL;
    int rc = dl_delta_attention(c, NULL, pool, 0, nh, b->q, b->k, b->v, T, 1, b->o);
    const dl_delta_stats *st = dl_delta_cache_stats(c);
    r->theta = dl_delta_cache_theta(c, 0);
    r->element_sparsity = dl_delta_element_sparsity(&st->stage[0]);
    r->attention_sparsity = dl_delta_attention_sparsity(&st->stage[0]);
    r->qk_skipped_prefill = dl_delta_qk_skipped(&st->stage[0]);
    r->k_bytes = st->k_cache_bytes;
    r->k_dense_bytes = st->k_cache_dense_bytes;
    r->v_bytes = st->v_cache_bytes;
    dl_delta_cache_free(c);
    if (rc != 0)
        return rc;
    dp.sparsity_target = -1;
    dp.theta = r->theta;

    /* prefill: delta (encode + attention) vs dense (fp16 store + attention) and the
     * engine's dense path; the score product of each run is timed on the side */
    dl_attn_shape shape = { .n_head = nh, .n_kv = cfg->n_kv, .head_dim = d, .n_ctx = T };
    r->prefill_delta_ms = r->prefill_dense_ms = r->prefill_engine_dense_ms = INFINITY;
    r->prefill_delta_scores_ms = r->prefill_dense_scores_ms = INFINITY;
    for (int rep = 0; rep < cfg->reps; rep++) {
        c = dl_delta_cache_create(1, cfg->n_kv, d, T, &dp, err, errlen);
        if (!c)
            return -ENOMEM;
        dl_delta_attention(c, NULL, pool, 0, nh, b->q, b->k, b->v, 1, 1, b->o); /* scratch */
        /* the score product alone: the fused kernels time their score phase while this
         * is on; end to end is timed separately */
        dl_delta_cache_truncate(c, 0);
        dl__delta_time_scores(1);
        dl_delta_attention(c, NULL, pool, 0, nh, b->q, b->k, b->v, T, 1, b->o);
        r->prefill_delta_scores_ms = fmin(r->prefill_delta_scores_ms, dl__delta_score_ns() * 1e-6);
        dl__delta_time_scores(0);
        dl_delta_cache_truncate(c, 0);
        double t0 = now_s();
        dl_delta_attention(c, NULL, pool, 0, nh, b->q, b->k, b->v, T, 1, b->o);
        double t1 = now_s();
        dl_delta_cache_free(c);
        r->prefill_delta_ms = fmin(r->prefill_delta_ms, (t1 - t0) * 1e3);
        store_dense(cfg, b->kc[0], b->vc[0], b->k, b->v, 0, T);
        dl__delta_time_scores(1);
        dl__delta_dense_attention(b->base, pool, nh, b->kc[0], b->vc[0], 0, T, b->q, b->o);
        r->prefill_dense_scores_ms = fmin(r->prefill_dense_scores_ms, dl__delta_score_ns() * 1e-6);
        dl__delta_time_scores(0);
        t0 = now_s();
        store_dense(cfg, b->kc[0], b->vc[0], b->k, b->v, 0, T);
        dl__delta_dense_attention(b->base, pool, nh, b->kc[0], b->vc[0], 0, T, b->q, b->o);
        t1 = now_s();
        r->prefill_dense_ms = fmin(r->prefill_dense_ms, (t1 - t0) * 1e3);
        t0 = now_s();
        dl_kv_store(&shape, b->kc[0], b->vc[0], 0, T, b->k, b->v);
        dl_attn_dense(pool, &shape, b->kc[0], b->vc[0], 0, T, b->q, b->o, b->scratch);
        t1 = now_s();
        r->prefill_engine_dense_ms = fmin(r->prefill_engine_dense_ms, (t1 - t0) * 1e3);
    }

    /* decode: the tokens at positions T - 16 .. T - 1, one at a time, through L layers;
     * times are per token and layer, averaged over the 16 (one of every 16 steps closes a
     * delta block, which costs more than the others) */
    const int S = T > 32 ? 16 : 1, P = T - S;
    for (int l = 0; l < L; l++) {
        b->dc[l] = dl_delta_cache_create(1, cfg->n_kv, d, T, &dp, err, errlen);
        if (!b->dc[l])
            return -ENOMEM;
        dl_delta_attention(b->dc[l], NULL, pool, 0, nh, b->q, b->k, b->v, P, 1, b->o);
        store_dense(cfg, b->kc[l], b->vc[l], b->k, b->v, 0, P);
    }
#define TOK(x, w, j) (b->x + (size_t)(P + (j)) * (w))
    r->decode_delta_us = r->decode_dense_us = r->decode_engine_dense_us = INFINITY;
    r->decode_delta_scores_us = r->decode_dense_scores_us = INFINITY;
    double per = 1e6 / ((double)L * S);
    for (int rep = 0; rep < cfg->reps * 3; rep++) {
        /* end to end (the fused decode kernels where the ISA has them) */
        double t0 = now_s();
        for (int j = 0; j < S; j++)
            for (int l = 0; l < L; l++)
                dl_delta_attention(b->dc[l], NULL, pool, 0, nh, TOK(q, qw, j), TOK(k, kw, j),
                                   TOK(v, kw, j), 1, 0, b->o);
        double t1 = now_s();
        for (int l = 0; l < L; l++)
            dl_delta_cache_truncate(b->dc[l], P);
        r->decode_delta_us = fmin(r->decode_delta_us, (t1 - t0) * per);
        t0 = now_s();
        for (int j = 0; j < S; j++)
            for (int l = 0; l < L; l++) {
                store_dense(cfg, b->kc[l], b->vc[l], TOK(k, kw, j), TOK(v, kw, j), P + j, 1);
                dl__delta_dense_attention(b->base, pool, nh, b->kc[l], b->vc[l], P + j, 1,
                                          TOK(q, qw, j), b->o);
            }
        t1 = now_s();
        r->decode_dense_us = fmin(r->decode_dense_us, (t1 - t0) * per);
        t0 = now_s();
        for (int j = 0; j < S; j++)
            for (int l = 0; l < L; l++) {
                dl_kv_store(&shape, b->kc[l], b->vc[l], P + j, 1, TOK(k, kw, j), TOK(v, kw, j));
                dl_attn_dense(pool, &shape, b->kc[l], b->vc[l], P + j, 1, TOK(q, qw, j), b->o,
                              b->scratch);
            }
        t1 = now_s();
        r->decode_engine_dense_us = fmin(r->decode_engine_dense_us, (t1 - t0) * per);
        /* the score product alone (timed inside the fused kernels) */
        dl__delta_time_scores(1);
        for (int j = 0; j < S; j++)
            for (int l = 0; l < L; l++)
                dl_delta_attention(b->dc[l], NULL, pool, 0, nh, TOK(q, qw, j), TOK(k, kw, j),
                                   TOK(v, kw, j), 1, 0, b->o);
        r->decode_delta_scores_us = fmin(r->decode_delta_scores_us, dl__delta_score_ns() * 1e-3 * per * 1e-6);
        for (int l = 0; l < L; l++)
            dl_delta_cache_truncate(b->dc[l], P);
        dl__delta_time_scores(1);
        for (int j = 0; j < S; j++)
            for (int l = 0; l < L; l++)
                dl__delta_dense_attention(b->base, pool, nh, b->kc[l], b->vc[l], P + j, 1,
                                          TOK(q, qw, j), b->o);
        r->decode_dense_scores_us = fmin(r->decode_dense_scores_us, dl__delta_score_ns() * 1e-3 * per * 1e-6);
        dl__delta_time_scores(0);
    }
#undef TOK
    r->qk_skipped_decode = dl_delta_qk_skipped(&dl_delta_cache_stats(b->dc[0])->stage[1]);
    return 0;
}

int dl_delta_bench(const dl_delta_bench_config *cfg, dl_delta_bench_result *out, char *err,
                   size_t errlen)
{
    if (cfg->ctx < 2 || cfg->n_head < 1 || cfg->n_kv < 1 || cfg->n_head % cfg->n_kv ||
        cfg->head_dim < 1 || cfg->layers < 1 || cfg->n_threads < 1 || cfg->reps < 1 ||
        !(cfg->sparsity_target >= 0 && cfg->sparsity_target < 1)) {
        snprintf(err, errlen, "delta bench: bad configuration");
        return -EINVAL;
    }
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = 0;
    int T = cfg->ctx, L = cfg->layers;
    size_t kw = (size_t)cfg->n_kv * cfg->head_dim, qw = (size_t)cfg->n_head * cfg->head_dim;
    bench_buf b = { 0 };
    dl_delta_params dp;
    dl_delta_params_default(&dp);
    dl_pool *pool = dl_pool_create(cfg->n_threads);
    b.k = malloc((size_t)T * kw * sizeof(float));
    b.v = malloc((size_t)T * kw * sizeof(float));
    b.q = malloc((size_t)T * qw * sizeof(float));
    b.o = malloc((size_t)T * qw * sizeof(float));
    b.scratch = malloc((size_t)cfg->n_threads * T * sizeof(float));
    b.kc = calloc((size_t)L, sizeof *b.kc);
    b.vc = calloc((size_t)L, sizeof *b.vc);
    b.dc = calloc((size_t)L, sizeof *b.dc);
    b.base = dl_delta_cache_create(1, cfg->n_kv, cfg->head_dim, T, &dp, err, errlen);
    int rc = -ENOMEM;
    if (!pool || !b.k || !b.v || !b.q || !b.o || !b.scratch || !b.kc || !b.vc || !b.dc ||
        !b.base)
        goto done;
    for (int l = 0; l < L; l++) {
        b.kc[l] = aligned_alloc(64, (size_t)T * kw * sizeof(dl_fp16));
        b.vc[l] = aligned_alloc(64, (size_t)T * kw * sizeof(dl_fp16));
        if (!b.kc[l] || !b.vc[l])
            goto done;
    }
    bench_rng = 0x5eed;
    for (int t = 0; t < T; t++)
        for (size_t i = 0; i < kw; i++) {
            size_t at = (size_t)t * kw + i;
            b.k[at] = t ? b.k[at - kw] + 0.1f * bench_normal() : bench_normal();
            b.v[at] = bench_normal();
        }
    for (size_t i = 0; i < (size_t)T * qw; i++)
        b.q[i] = bench_normal();
    rc = run(cfg, &b, pool, out, err, errlen);
done:
    if (rc == -ENOMEM && err && errlen && !*err)
        snprintf(err, errlen, "delta bench: out of memory");
    for (int l = 0; b.kc && l < L; l++) {
        free(b.kc[l]);
        free(b.vc[l]);
        if (b.dc)
            dl_delta_cache_free(b.dc[l]);
    }
    free(b.kc);
    free(b.vc);
    free(b.dc);
    dl_delta_cache_free(b.base);
    free(b.k);
    free(b.v);
    free(b.q);
    free(b.o);
    free(b.scratch);
    dl_pool_free(pool);
    return rc;
}
