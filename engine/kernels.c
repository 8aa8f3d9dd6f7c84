/* kernels.c — instruction-set dispatch and the scalar kernels.
 *
 * The scalar kernels follow llama2.c's run.c operation for operation (float accumulators,
 * same order), so a model run with DELTALLM_ISA=scalar reproduces its outputs exactly.
 * The SIMD paths (kernels_avx2.c, kernels_avx512.c) reorder sums and, for quantised
 * weights, quantise the activations to 8 bits; they are tested against these.
 */
#include "kernels.h"

#include <math.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern_impl.h"
#include "quant.h"
#include "ternary_impl.h"

/* ---- instruction-set selection ---- */

static atomic_int dl__isa = -1; /* -1: not chosen yet */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* clang 14's __builtin_cpu_supports does not know "f16c": CPUID.1:ECX bit 29. */
static int dl__has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

enum dl_isa dl_isa_detect(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* The AVX-512 file uses F/BW/VL/DQ and VNNI throughout; FMA and F16C everywhere. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma") && dl__has_f16c())
        return DL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && dl__has_f16c())
        return DL_ISA_AVX2;
#endif
    return DL_ISA_SCALAR;
}

static enum dl_isa dl__isa_from_env(enum dl_isa best)
{
    const char *e = getenv("DELTALLM_ISA");
    enum dl_isa cap = best;
    if (!e || !*e)
        return best;
    if (!strcmp(e, "scalar"))
        cap = DL_ISA_SCALAR;
    else if (!strcmp(e, "avx2"))
        cap = DL_ISA_AVX2;
    else if (!strcmp(e, "avx512"))
        cap = DL_ISA_AVX512;
    return cap < best ? cap : best;
}

enum dl_isa dl_isa_active(void)
{
    int v = atomic_load_explicit(&dl__isa, memory_order_relaxed);
    if (v < 0) {
        v = (int)dl__isa_from_env(dl_isa_detect());
        int expect = -1;
        if (!atomic_compare_exchange_strong(&dl__isa, &expect, v))
            v = expect;
    }
    return (enum dl_isa)v;
}

void dl_isa_force(enum dl_isa isa)
{
    enum dl_isa best = dl_isa_detect();
    atomic_store(&dl__isa, (int)(isa < best ? isa : best));
}

const char *dl_isa_name(enum dl_isa isa)
{
    switch (isa) {
    case DL_ISA_AVX2:
        return "avx2";
    case DL_ISA_AVX512:
        return "avx512";
    default:
        return "scalar";
    }
}

static const dl__kops *dl__ops(void)
{
    switch (dl_isa_active()) {
    case DL_ISA_AVX512:
        return &dl__kops_avx512;
    case DL_ISA_AVX2:
        return &dl__kops_avx2;
    default:
        return NULL;
    }
}

/* ---- activation quantisation (the definition the SIMD versions match) ---- */

static float dl__amax(const float *x, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return m;
}

void dl__quant_act32_ref(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 32;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int32_t *sum = (int32_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        float db = dl__amax(x + b * 32, 32) / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        int32_t s = 0;
        for (int i = 0; i < 32; i++) {
            int q = (int)nearbyintf(x[b * 32 + i] * id);
            qs[b * 32 + i] = (int8_t)q;
            s += q;
        }
        d[b] = db;
        sum[b] = s;
    }
}

void dl__quant_actk_ref(const float *x, int64_t cols, void *dst)
{
    int64_t nb = cols / 256;
    int8_t *qs = dst;
    float *d = (float *)(qs + cols);
    int16_t *bsum = (int16_t *)(d + nb);
    for (int64_t b = 0; b < nb; b++) {
        float db = dl__amax(x + b * 256, 256) / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int i = 0; i < 16; i++) {
                int64_t k = b * 256 + g * 16 + i;
                int q = (int)nearbyintf(x[k] * id);
                qs[k] = (int8_t)q;
                s += q;
            }
            bsum[b * 16 + g] = (int16_t)s;
        }
        d[b] = db;
    }
}

size_t dl_matmul_scratch_size(int n_tok, int64_t cols)
{
    int64_t c = (cols + 255) / 256 * 256;
    size_t s32 = dl__act32_stride(c), sk = dl__actk_stride(c);
    return (size_t)(n_tok > 0 ? n_tok : 0) * (s32 > sk ? s32 : sk) + 64;
}

/* ---- matmul ---- */

typedef struct dl__mm_task {
    dl__mm m;
    const dl__kops *ops; /* NULL: scalar */
    int act;             /* 0, 32 or 256: activation format being built */
} dl__mm_task;

static void dl__matmul_scalar_rows(const dl__mm *m, int64_t r0, int64_t r1)
{
    const dl_weight *w = m->w;
    const int64_t n = w->cols;
    for (int t = 0; t < m->n_tok; t++) {
        const float *x = m->x + (size_t)t * n;
        float *y = m->y + (size_t)t * w->rows;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
            if (w->type == DL_TYPE_F32) {
                const float *wr = (const float *)row;
                float val = 0.0f;
                for (int64_t j = 0; j < n; j++)
                    val += wr[j] * x[j];
                y[r] = val;
            } else {
                y[r] = dl_vec_dot_ref(w->type, row, x, n);
            }
        }
    }
}

static void dl__quant_job(void *arg, int ith, int nth)
{
    dl__mm_task *k = arg;
    long lo, hi;
    dl_split(k->m.n_tok, ith, nth, &lo, &hi);
    for (long t = lo; t < hi; t++) {
        const float *x = k->m.x + (size_t)t * k->m.w->cols;
        void *dst = (uint8_t *)k->m.xq + (size_t)t * k->m.xq_stride;
        if (k->act == 32)
            k->ops->quant_act32(x, k->m.w->cols, dst);
        else
            k->ops->quant_actk(x, k->m.w->cols, dst);
    }
}

/* Rows go out in multiples of 16 (the SIMD kernels' row tile). */
static void dl__matmul_job(void *arg, int ith, int nth)
{
    dl__mm_task *k = arg;
    long lo, hi;
    dl_split((long)((k->m.w->rows + 15) / 16), ith, nth, &lo, &hi);
    int64_t r0 = lo * 16, r1 = hi * 16 < k->m.w->rows ? hi * 16 : k->m.w->rows;
    if (r0 >= r1)
        return;
    if (!k->ops || k->ops->matmul(&k->m, r0, r1) != 0)
        dl__matmul_scalar_rows(&k->m, r0, r1);
}

void dl_matmul(dl_pool *pool, const dl_weight *w, const float *x, float *y, int n_tok,
               void *scratch)
{
    dl__mm_task k = {.m = {.w = w, .x = x, .y = y, .n_tok = n_tok}, .ops = dl__ops()};
    if (n_tok <= 0 || w->rows <= 0)
        return;
    int act = dl__act_block(w->type);
    if (k.ops && act) {
        if (!scratch || w->cols % act != 0) {
            k.ops = NULL; /* no room for quantised activations: reference path */
        } else {
            k.act = act;
            k.m.xq = (const uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
            k.m.xq_stride = act == 32 ? dl__act32_stride(w->cols) : dl__actk_stride(w->cols);
            dl_pool_run(pool, dl__quant_job, &k);
        }
    }
    dl_pool_run(pool, dl__matmul_job, &k);
}

/* ---- load-time repacking (layout: kern_impl.h) ---- */

size_t dl_weight_prepared_bytes(const dl_weight *w)
{
    /* only the AVX-512 path reads the packed layout; elsewhere it would be dead memory */
    if (dl_isa_active() != DL_ISA_AVX512 || w->rows <= 0 || w->cols <= 0)
        return 0;
    if (w->type == DL_TYPE_F16 || w->type == DL_TYPE_BF16)
        return (size_t)((w->rows + 15) / 16) * dl__ph_group_bytes(w->cols);
    if (w->type == DL_TYPE_I2_S)
        return w->cols % DL_QK_I2_S ? 0 : (size_t)((w->rows + 15) / 16) * dl__i2s_group_bytes(w->cols);
    if (w->type == DL_TYPE_Q4_K)
        return w->cols % 256 ? 0 : (size_t)((w->rows + 15) / 16) * dl__kp_group_bytes(w->cols);
    if (w->type == DL_TYPE_Q6_K)
        return w->cols % 256 ? 0 : (size_t)((w->rows + 15) / 16) * dl__k6_group_bytes(w->cols);
    if ((w->type != DL_TYPE_Q4_0 && w->type != DL_TYPE_Q8_0) || w->cols % 32 != 0)
        return 0;
    return (size_t)((w->rows + 15) / 16) * dl__pk_group_bytes(w->type, w->cols);
}

/* 16-bit weights: a transpose of each 16-row group, in 16 x 16 tiles so that both the rows
 * read and the columns written stay within a few cache lines at a time. */
static void dl__pack_group_h(const dl_weight *w, int64_t r0, uint16_t *dst)
{
    const int nr = w->rows - r0 < 16 ? (int)(w->rows - r0) : 16;
    for (int64_t c0 = 0; c0 < w->cols; c0 += 16) {
        int64_t c1 = w->cols - c0 < 16 ? w->cols : c0 + 16;
        for (int i = 0; i < nr; i++) {
            const uint16_t *row = (const uint16_t *)((const uint8_t *)w->data + (size_t)(r0 + i) * w->row_bytes);
            for (int64_t c = c0; c < c1; c++)
                dst[(size_t)c * 16 + (size_t)i] = row[c];
        }
    }
}

static void dl__pack_group(const dl_weight *w, int64_t r0, uint8_t *dst)
{
    const int64_t nb = w->cols / 32;
    const int q8 = w->type == DL_TYPE_Q8_0;
    const size_t qb = dl__pk_qbytes(w->type), bsz = q8 ? sizeof(dl_block_q8_0) : sizeof(dl_block_q4_0);
    for (int i = 0; i < 16 && r0 + i < w->rows; i++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)(r0 + i) * w->row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + (size_t)b * bsz;
            const uint8_t *q = blk + sizeof(dl_fp16); /* both block types: d, then qs */
            uint8_t *o = dst + dl__pk_quant_off(w->type, b) + 4 * (size_t)i;
            memcpy(dst + dl__pk_scale_off(w->type, b) + 2 * (size_t)i, blk, sizeof(dl_fp16));
            for (size_t k = 0; k < qb / 64; k++)
                for (int j = 0; j < 4; j++)
                    o[64 * k + (size_t)j] = (uint8_t)(q[4 * k + (size_t)j] ^ (q8 ? 0x80 : 0));
        }
    }
}

/* n bytes between a packed block and a plain one: into the packed block when pack, out of
 * it otherwise. The K-quant layouts below are each written once, for packing at load and
 * for reading a row back (dl_weight_get_row). */
static void mv(uint8_t *packed, void *plain, size_t n, int pack)
{
    if (pack)
        memcpy(packed, plain, n);
    else
        memcpy(plain, packed, n);
}

/* Q4_K, row i of a group, one super-block <-> its packed block o (kern_impl.h): d and dmin,
 * the scales and mins unpacked to a byte each, then the quants in 64-byte pieces of one
 * dword per row. */
static void q4k_row_block(uint8_t *o, int i, dl_block_q4_K *blk, int pack)
{
    uint8_t sc[8], mn[8];
    mv(o + 2 * i, &blk->d, 2, pack);
    mv(o + 32 + 2 * i, &blk->dmin, 2, pack);
    if (pack)
        dl_q4k_scales_unpack(blk->scales, sc, mn);
    for (int j = 0; j < 8; j++) {
        mv(o + 64 + 16 * j + i, &sc[j], 1, pack);
        mv(o + 192 + 16 * j + i, &mn[j], 1, pack);
    }
    if (!pack)
        dl_q4k_scales_pack(sc, mn, blk->scales);
    for (int p = 0; p < 32; p++)
        mv(o + 320 + 64 * p + 4 * i, blk->qs + 4 * p, 4, pack);
}

/* Q6_K likewise: d, the 16 scales, and the 4-byte runs of ql (32) and qh (16) as dwords of
 * the triples, in the order the kernel reads them. */
static void q6k_row_block(uint8_t *o, int i, dl_block_q6_K *blk, int pack)
{
    mv(o + 2 * i, &blk->d, 2, pack);
    for (int j = 0; j < 16; j++)
        mv(o + 64 + 16 * j + i, &blk->scales[j], 1, pack);
    for (int p = 0; p < 32; p++) {
        int h = p / 16, m = p % 8, second = (p / 8) % 2; /* ql[64h + 32 second + 4m] */
        mv(o + 320 + (size_t)(8 * h + m) * 192 + (size_t)second * 64 + 4 * i, blk->ql + 4 * p,
           4, pack);
    }
    for (int p = 0; p < 16; p++) /* qh[32h + 4m], p = 8h + m */
        mv(o + 320 + (size_t)p * 192 + 128 + 4 * i, blk->qh + 4 * p, 4, pack);
}

/* Q4_K / Q6_K: each row's super-blocks into the group's packed blocks. */
static void dl__pack_group_k(const dl_weight *w, int64_t r0, uint8_t *dst)
{
    const int q6 = w->type == DL_TYPE_Q6_K;
    const size_t bb = q6 ? DL__K6_BLOCK : DL__KP_BLOCK;
    for (int i = 0; i < 16 && r0 + i < w->rows; i++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)(r0 + i) * w->row_bytes;
        for (int64_t b = 0; b < w->cols / 256; b++) {
            if (q6) {
                dl_block_q6_K blk;
                memcpy(&blk, row + (size_t)b * sizeof blk, sizeof blk);
                q6k_row_block(dst + (size_t)b * bb, i, &blk, 1);
            } else {
                dl_block_q4_K blk;
                memcpy(&blk, row + (size_t)b * sizeof blk, sizeof blk);
                q4k_row_block(dst + (size_t)b * bb, i, &blk, 1);
            }
        }
    }
}

/* I2_S: each row's 32 code bytes per 128 columns go out as 8 dwords, 64 bytes apart. */
static void dl__pack_group_i2s(const dl_weight *w, int64_t r0, uint8_t *dst)
{
    for (int i = 0; i < 16 && r0 + i < w->rows; i++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)(r0 + i) * w->row_bytes;
        for (int64_t gi = 0; gi < w->cols / DL_QK_I2_S; gi++)
            for (int k = 0; k < 8; k++)
                memcpy(dst + (size_t)gi * 512 + 64 * (size_t)k + 4 * (size_t)i, row + gi * 32 + 4 * k, 4);
    }
}

int dl_weight_prepare(dl_weight *w, void **owned, char *err, size_t errlen)
{
    *owned = NULL;
    size_t n = dl_weight_prepared_bytes(w);
    if (n == 0)
        return 0;
    /* zeroed: padding rows then have scale 0 and add nothing */
    uint8_t *p = aligned_alloc(64, DL__ALIGN64(n));
    if (!p) {
        if (err && errlen)
            snprintf(err, errlen, "kernels: cannot allocate %zu bytes for a repacked weight", n);
        return -ENOMEM;
    }
    memset(p, 0, n);
    if (w->type == DL_TYPE_F16 || w->type == DL_TYPE_BF16) {
        size_t gb = dl__ph_group_bytes(w->cols);
        for (int64_t r = 0; r < w->rows; r += 16)
            dl__pack_group_h(w, r, (uint16_t *)(p + (size_t)(r / 16) * gb));
    } else if (w->type == DL_TYPE_Q4_K || w->type == DL_TYPE_Q6_K) {
        size_t gb = w->type == DL_TYPE_Q6_K ? dl__k6_group_bytes(w->cols)
                                            : dl__kp_group_bytes(w->cols);
        for (int64_t r = 0; r < w->rows; r += 16)
            dl__pack_group_k(w, r, p + (size_t)(r / 16) * gb);
    } else if (w->type == DL_TYPE_I2_S) {
        size_t gb = dl__i2s_group_bytes(w->cols);
        for (int64_t r = 0; r < w->rows; r += 16)
            dl__pack_group_i2s(w, r, p + (size_t)(r / 16) * gb);
    } else {
        size_t gb = dl__pk_group_bytes(w->type, w->cols);
        for (int64_t r = 0; r < w->rows; r += 16)
            dl__pack_group(w, r, p + (size_t)(r / 16) * gb);
    }
    w->packed = p;
    *owned = p;
    return 0;
}

void dl_weight_get_row(const dl_weight *w, int64_t r, float *out)
{
    if (!w->packed || (w->type != DL_TYPE_F16 && w->type != DL_TYPE_BF16 &&
                       w->type != DL_TYPE_Q4_0 && w->type != DL_TYPE_Q8_0 &&
                       w->type != DL_TYPE_Q4_K && w->type != DL_TYPE_Q6_K)) {
        dl_dequantize_row(w->type, (const uint8_t *)w->data + (size_t)r * w->row_bytes, out, w->cols);
        return;
    }
    const int i = (int)(r % 16);
    if (w->type == DL_TYPE_F16 || w->type == DL_TYPE_BF16) {
        const uint16_t *g = (const uint16_t *)((const uint8_t *)w->packed + (size_t)(r / 16) * dl__ph_group_bytes(w->cols));
        for (int64_t c = 0; c < w->cols; c++) {
            uint16_t h = g[(size_t)c * 16 + (size_t)i];
            out[c] = w->type == DL_TYPE_F16 ? dl_fp16_to_f32(h) : dl_bf16_to_f32(h);
        }
        return;
    }
    if (w->type == DL_TYPE_Q4_K || w->type == DL_TYPE_Q6_K) { /* each block as stored */
        const int q6 = w->type == DL_TYPE_Q6_K;
        const size_t bb = q6 ? DL__K6_BLOCK : DL__KP_BLOCK;
        /* read only: the layout functions take the packed side writable for packing */
        uint8_t *g = (uint8_t *)w->packed + (size_t)(r / 16) * (q6 ? dl__k6_group_bytes(w->cols)
                                                                 : dl__kp_group_bytes(w->cols));
        for (int64_t b = 0; b < w->cols / 256; b++) {
            dl_block_q4_K b4;
            dl_block_q6_K b6;
            if (q6)
                q6k_row_block(g + (size_t)b * bb, i, &b6, 0);
            else
                q4k_row_block(g + (size_t)b * bb, i, &b4, 0);
            dl_dequantize_row(w->type, q6 ? (const void *)&b6 : (const void *)&b4,
                              out + b * 256, 256);
        }
        return;
    }
    /* Q4_0 / Q8_0: rebuild each block as stored, then the reference dequantiser */
    const uint8_t *g = (const uint8_t *)w->packed + (size_t)(r / 16) * dl__pk_group_bytes(w->type, w->cols);
    const int q8 = w->type == DL_TYPE_Q8_0;
    const size_t qb = dl__pk_qbytes(w->type);
    uint8_t blk[sizeof(dl_block_q8_0)];
    for (int64_t b = 0; b < w->cols / 32; b++) {
        memcpy(blk, g + dl__pk_scale_off(w->type, b) + 2 * (size_t)i, sizeof(dl_fp16));
        const uint8_t *q = g + dl__pk_quant_off(w->type, b) + 4 * (size_t)i;
        for (size_t k = 0; k < qb / 64; k++)
            for (int j = 0; j < 4; j++)
                blk[sizeof(dl_fp16) + 4 * k + (size_t)j] = (uint8_t)(q[64 * k + (size_t)j] ^ (q8 ? 0x80 : 0));
        dl_dequantize_row(w->type, blk, out + b * 32, 32);
    }
}

/* ---- vector kernels ---- */

void dl_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->rmsnorm(out, x, w, n, eps);
        return;
    }
    float ss = 0.0f;
    for (int j = 0; j < n; j++)
        ss += x[j] * x[j];
    ss /= n;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < n; j++)
        out[j] = w[j] * (ss * x[j]);
}

void dl_softmax(float *x, int n)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->softmax(x, n);
        return;
    }
    if (n <= 0)
        return;
    float max_val = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max_val)
            max_val = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (int i = 0; i < n; i++)
        x[i] /= sum;
}

void dl_swiglu(float *out, const float *gate, const float *up, int n)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->swiglu(out, gate, up, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        float val = gate[i];
        val *= 1.0f / (1.0f + expf(-val));
        out[i] = val * up[i];
    }
}

/* Scalar on every path: it is a small share of the work and matching llama2.c's
 * cosf/sinf bit for bit matters more than speed here. */
void dl_rope(float *x, int n_heads, int head_dim, int pos, float base, const float *factors)
{
    for (int i = 0; i < head_dim / 2; i++) {
        float freq = 1.0f / powf(base, (float)(2 * i) / (float)head_dim);
        if (factors)
            freq /= factors[i];
        float val = pos * freq;
        float fcr = cosf(val), fci = sinf(val);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim + 2 * i;
            float v0 = v[0], v1 = v[1];
            v[0] = v0 * fcr - v1 * fci;
            v[1] = v0 * fci + v1 * fcr;
        }
    }
}

float dl_dot_f32(const float *a, const float *b, int n)
{
    const dl__kops *o = dl__ops();
    if (o)
        return o->dot(a, b, n);
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void dl_f32_to_fp16_row(dl_fp16 *dst, const float *src, int n)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->to_fp16(dst, src, n);
        return;
    }
    for (int i = 0; i < n; i++)
        dst[i] = dl_f32_to_fp16(src[i]);
}

void dl_sqacc_f32(float *acc, const float *x, int n)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->sqacc(acc, x, n);
        return;
    }
    for (int i = 0; i < n; i++)
        acc[i] += x[i] * x[i];
}

void dl_axpy_f32(float *y, float a, const float *x, int n)
{
    const dl__kops *o = dl__ops();
    if (o) {
        o->axpy(y, a, x, n);
        return;
    }
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}
