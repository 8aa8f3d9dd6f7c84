/* ternary.c — BitLinear products (see ternary.h): activation quantisation, the scalar
 * paths, dispatch to the AVX2 / AVX-512 dots and the split across the pool.
 *
 * Scratch layout for n_tok tokens of width cols (nb = cols / 128 groups):
 *   float   s[n_tok]               activation scale 127 / absmax (1 for an all-zero row)
 *   int32_t sums[n_tok][nb + 1]    sum(q) per 128-group, then the row total
 *   int8_t  q[n_tok][cols]         quantised activations
 * each region starting on a 64-byte boundary. The codes are unsigned (0..2), so a dot is
 * sum(code * q) - sum(q): the sums turn it into sum((code - 1) * q). */
#include "ternary.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "quant.h"
#include "ternary_impl.h"

/* rows per task unit: their codes stay in L1/L2 across the tokens; also the packed I2_S
 * layout's row group (ternary_impl.h) */
#define ROW_TILE 16

int dl_is_ternary(uint32_t type)
{
    return type == DL_TYPE_I2_S || type == DL_TYPE_TQ2_0 || type == DL_TYPE_TQ1_0;
}

static size_t pad64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

typedef struct act_view {
    float *s;
    int32_t *sums;
    int8_t *q;
    int64_t nb; /* 128-groups per token */
} act_view;

static act_view view(void *scratch, int n_tok, int64_t cols)
{
    act_view v;
    char *p = scratch;
    v.nb = cols / DL_QK_I2_S;
    v.s = (float *)p;
    p += pad64((size_t)n_tok * sizeof(float));
    v.sums = (int32_t *)p;
    p += pad64((size_t)n_tok * (size_t)(v.nb + 1) * sizeof(int32_t));
    v.q = (int8_t *)p;
    return v;
}

size_t dl_ternary_scratch_size(int n_tok, int64_t cols)
{
    int64_t nb = cols / DL_QK_I2_S;
    return pad64((size_t)n_tok * sizeof(float)) +
           pad64((size_t)n_tok * (size_t)(nb + 1) * sizeof(int32_t)) +
           (size_t)n_tok * (size_t)cols + 64;
}

/* ---- activation quantisation ------------------------------------------------------------ */

typedef void (*quant_fn)(const float *x, int64_t cols, float *s_out, int32_t *sums, int8_t *q);

typedef struct quant_args {
    const float *x;
    int n_tok;
    int64_t cols;
    act_view v;
    quant_fn fn;
} quant_args;

static void quantize_token(const float *x, int64_t cols, float *s_out, int32_t *sums, int8_t *q)
{
    float amax = 0.0f;
    for (int64_t i = 0; i < cols; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float s = amax > 0.0f ? 127.0f / amax : 1.0f;
    int32_t total = 0;
    for (int64_t g = 0; g < cols / DL_QK_I2_S; g++) {
        int32_t sum = 0;
        for (int j = 0; j < DL_QK_I2_S; j++) {
            long v = lrintf(x[g * DL_QK_I2_S + j] * s);
            v = v > 127 ? 127 : v < -128 ? -128 : v;
            q[g * DL_QK_I2_S + j] = (int8_t)v;
            sum += (int32_t)v;
        }
        sums[g] = sum;
        total += sum;
    }
    sums[cols / DL_QK_I2_S] = total;
    *s_out = s;
}

static void quant_task(void *arg, int ith, int nth)
{
    const quant_args *a = arg;
    long lo, hi;
    dl_split(a->n_tok, ith, nth, &lo, &hi);
    for (long t = lo; t < hi; t++)
        a->fn(a->x + t * a->cols, a->cols, &a->v.s[t], a->v.sums + t * (a->v.nb + 1),
              a->v.q + t * a->cols);
}

void dl_ternary_quantize(dl_pool *pool, const float *x, int n_tok, int64_t cols, void *scratch)
{
    quant_args a = {x, n_tok, cols, view(scratch, n_tok, cols),
                    dl_isa_active() >= DL_ISA_AVX2 ? dl__quantize_avx2 : quantize_token};
    if (n_tok == 1)
        quant_task(&a, 0, 1); /* one token: not worth waking the pool */
    else
        dl_pool_run(pool, quant_task, &a);
}

/* ---- scalar dots ------------------------------------------------------------------------ */

static int32_t i2s_dot_scalar(const uint8_t *w, const int8_t *q, int64_t n)
{
    int32_t sum = 0;
    for (int64_t g = 0; g < n / 128; g++, w += 32, q += 128)
        for (int p = 0; p < 32; p++)
            for (int k = 0; k < 4; k++)
                sum += ((w[p] >> (6 - 2 * k)) & 3) * q[32 * k + p];
    return sum;
}

static int32_t tq2_dot_scalar(const uint8_t *qs, const int8_t *q)
{
    int32_t sum = 0;
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < 32; p++)
            for (int k = 0; k < 4; k++)
                sum += ((qs[32 * h + p] >> (2 * k)) & 3) * q[128 * h + 32 * k + p];
    return sum;
}

static void i2s_dot4t_scalar(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                             int32_t out[4])
{
    for (int k = 0; k < 4; k++)
        out[k] = i2s_dot_scalar(w, q + k * qstride, n);
}

/* TQ1_0's base-3 bytes; the AVX2 dot (used on AVX-512 too) decodes the same way. */
static int tq1_trit(uint8_t byte, int n)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    return ((unsigned)(uint8_t)(byte * pow3[n]) * 3) >> 8;
}

static int32_t tq1_dot_scalar(const dl_block_tq1_0 *b, const int8_t *q)
{
    int32_t sum = 0;
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 32; m++)
            sum += tq1_trit(b->qs[m], n) * q[32 * n + m];
    for (int n = 0; n < 5; n++)
        for (int m = 0; m < 16; m++)
            sum += tq1_trit(b->qs[32 + m], n) * q[160 + 16 * n + m];
    for (int n = 0; n < 4; n++)
        for (int m = 0; m < 4; m++)
            sum += tq1_trit(b->qh[m], n) * q[240 + 4 * n + m];
    return sum;
}

/* ---- rows ------------------------------------------------------------------------------- */

typedef struct dots {
    dl__i2s_dot_fn i2s;
    dl__i2s_dot4t_fn i2s4t;
    dl__tq2_dot_fn tq2;
    dl__tq1_dot_fn tq1;
} dots;

static dots pick_dots(void)
{
    switch (dl_isa_active()) {
    case DL_ISA_AVX512:
        return (dots){dl__i2s_dot_avx512, dl__i2s_dot4t_avx512,
                      dl__tq2_dot_avx512, dl__tq1_dot_avx2};
    case DL_ISA_AVX2:
        return (dots){dl__i2s_dot_avx2, dl__i2s_dot4t_avx2, dl__tq2_dot_avx2,
                      dl__tq1_dot_avx2};
    default:
        return (dots){i2s_dot_scalar, i2s_dot4t_scalar, tq2_dot_scalar,
                      tq1_dot_scalar};
    }
}

/* A TQ row: blocks whose fp16 d is bit-equal to the previous one extend an integer run;
 * each run is converted once (see ternary.h on why). */
static float tq_row(uint32_t type, const void *row, const int8_t *q, const int32_t *sums,
                    int64_t nblk, const dots *k)
{
    float acc = 0.0f;
    int32_t run = 0;
    dl_fp16 d = 0;
    for (int64_t i = 0; i < nblk; i++) {
        dl_fp16 bd;
        int32_t dot;
        if (type == DL_TYPE_TQ2_0) {
            const dl_block_tq2_0 *b = (const dl_block_tq2_0 *)row + i;
            bd = b->d;
            dot = k->tq2(b->qs, q + 256 * i);
        } else {
            const dl_block_tq1_0 *b = (const dl_block_tq1_0 *)row + i;
            bd = b->d;
            dot = k->tq1(b, q + 256 * i);
        }
        if (i > 0 && bd != d) {
            acc += (float)run * dl_fp16_to_f32(d);
            run = 0;
        }
        d = bd;
        run += dot - sums[2 * i] - sums[2 * i + 1];
    }
    return acc + (float)run * dl_fp16_to_f32(d);
}

typedef struct mm_args {
    const dl_weight *w;
    float scale;
    act_view v;
    float *y;
    int n_tok;
    dots k;
    int packed; /* read w->packed (AVX-512 only; other paths read w->data) */
} mm_args;

/* y for token t, row r from the integer dot (see ternary.h: one rescale for every ISA). */
static inline void put(const mm_args *a, int t, int64_t r, int32_t dot)
{
    float acc = (float)(dot - a->v.sums[t * (a->v.nb + 1) + a->v.nb]);
    a->y[(int64_t)t * a->w->rows + r] = acc * a->scale / a->v.s[t];
}

/* I2_S rows r0..r1: four tokens at a time share each decoded code; the tokens left over
 * (all of them in decode) go row by row (measured faster than four rows at a time, which
 * breaks the prefetcher's single stream per thread). */
static void i2s_tile(const mm_args *a, int64_t r0, int64_t r1)
{
    const dl_weight *w = a->w;
    const uint8_t *base = w->data;
    int t = 0;
    for (; t + 4 <= a->n_tok; t += 4) {
        const int8_t *q = a->v.q + (int64_t)t * w->cols;
        for (int64_t r = r0; r < r1; r++) {
            int32_t d[4];
            a->k.i2s4t(base + r * (int64_t)w->row_bytes, q, w->cols, w->cols, d);
            for (int j = 0; j < 4; j++)
                put(a, t + j, r, d[j]);
        }
    }
    for (; t < a->n_tok; t++) {
        const int8_t *q = a->v.q + (int64_t)t * w->cols;
        for (int64_t r = r0; r < r1; r++)
            put(a, t, r, a->k.i2s(base + r * (int64_t)w->row_bytes, q, w->cols));
    }
}

/* I2_S repacked at load (ternary_impl.h), AVX-512: 16 rows per tile, tokens 8 at a time. */
static void i2s_packed_tile(const mm_args *a, int64_t r0, int64_t r1)
{
    const dl_weight *w = a->w;
    const uint8_t *grp = (const uint8_t *)w->packed + (size_t)(r0 / 16) * dl__i2s_group_bytes(w->cols);
    int32_t d[8][16];
    for (int t = 0; t < a->n_tok; t += 8) {
        int nt = a->n_tok - t < 8 ? a->n_tok - t : 8;
        dl__i2s_packed_avx512(grp, w->cols, a->v.q + (int64_t)t * w->cols, w->cols, nt, t == 0, d);
        for (int j = 0; j < nt; j++)
            for (int64_t r = r0; r < r1; r++)
                put(a, t + j, r, d[j][r - r0]);
    }
}

/* Row tiles lo..hi-1 for every token. */
static void mm_tiles(const mm_args *a, long lo, long hi)
{
    const dl_weight *w = a->w;
    for (long tile = lo; tile < hi; tile++) {
        int64_t r0 = tile * ROW_TILE, r1 = r0 + ROW_TILE < w->rows ? r0 + ROW_TILE : w->rows;
        if (w->type == DL_TYPE_I2_S) {
            if (a->packed)
                i2s_packed_tile(a, r0, r1);
            else
                i2s_tile(a, r0, r1);
            continue;
        }
        for (int t = 0; t < a->n_tok; t++) {
            const int8_t *q = a->v.q + (int64_t)t * w->cols;
            const int32_t *sums = a->v.sums + t * (a->v.nb + 1);
            float *y = a->y + (int64_t)t * w->rows;
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *row = (const uint8_t *)w->data + r * (int64_t)w->row_bytes;
                float acc = tq_row(w->type, row, q, sums, w->cols / DL_QK_K, &a->k);
                y[r] = acc * a->scale / a->v.s[t];
            }
        }
    }
}



/* Several products in one pool dispatch: the row tiles of all the weights are numbered
 * one after another and the threads split that one range, so a decode step does one
 * wake-up and one barrier for Q, K and V (and for gate and up) instead of one each —
 * at one token a small product such as K (640 rows) costs about what the dispatch does. */
typedef struct mm_multi {
    int n;
    mm_args a[DL_TERNARY_MULTI_MAX];
    long first[DL_TERNARY_MULTI_MAX + 1]; /* first global tile of each weight, then the total */
} mm_multi;

static void mm_multi_task(void *arg, int ith, int nth)
{
    const mm_multi *m = arg;
    long lo, hi;
    dl_split(m->first[m->n], ith, nth, &lo, &hi);
    for (int i = 0; i < m->n; i++) {
        long a0 = lo > m->first[i] ? lo : m->first[i];
        long a1 = hi < m->first[i + 1] ? hi : m->first[i + 1];
        if (a0 < a1)
            mm_tiles(&m->a[i], a0 - m->first[i], a1 - m->first[i]);
    }
}

int dl_ternary_matmul_q_multi(dl_pool *pool, int n, const dl_weight *const w[],
                              const float scale[], const void *scratch, float *const y[],
                              int n_tok)
{
    if (n < 1 || n > DL_TERNARY_MULTI_MAX)
        return -EINVAL;
    mm_multi m = { .n = n };
    for (int i = 0; i < n; i++) {
        if (w[i]->cols != w[0]->cols)
            return -EINVAL;
        m.a[i] = (mm_args){w[i], scale[i], view((void *)scratch, n_tok, w[i]->cols), y[i], n_tok,
                           pick_dots(),
                           w[i]->packed && w[i]->type == DL_TYPE_I2_S &&
                               dl_isa_active() == DL_ISA_AVX512};
        m.first[i + 1] = m.first[i] + (long)((w[i]->rows + ROW_TILE - 1) / ROW_TILE);
    }
    dl_pool_run(pool, mm_multi_task, &m);
    return 0;
}

void dl_ternary_matmul_q(dl_pool *pool, const dl_weight *w, float scale, const void *scratch,
                         float *y, int n_tok)
{
    dl_ternary_matmul_q_multi(pool, 1, &w, &scale, scratch, &y, n_tok);
}

void dl_ternary_matmul(dl_pool *pool, const dl_weight *w, float scale, const float *x,
                       float *y, int n_tok, void *scratch)
{
    dl_ternary_quantize(pool, x, n_tok, w->cols, scratch);
    dl_ternary_matmul_q(pool, w, scale, scratch, y, n_tok);
}
