/* bench_kern.c — memory bandwidth probe and matmul timing (see bench_kern.h). */
#include "bench_kern.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "quant.h"
#include "ternary.h"

#define MEMBW_BYTES ((size_t)256 << 20) /* 8x a 32 MiB L3: reads come from DRAM */
#define LLC_SPAN ((size_t)96 << 20)     /* weights replicated to at least this many bytes */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct membw_job {
    const uint64_t *buf;
    size_t n;           /* uint64 words */
    uint64_t sink[64];  /* per thread, so the reads are not optimised away */
} membw_job;

/* The read loop at the widest vector width the CPU has: one core's scalar loads may not
 * keep enough misses in flight to reach DRAM bandwidth. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
__attribute__((target("avx512f"))) static uint64_t membw_read512(const uint64_t *p, long n)
{
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (long i = 0; i < n; i += 32) {
        a = _mm512_xor_si512(a, _mm512_load_si512((const void *)(p + i)));
        b = _mm512_xor_si512(b, _mm512_load_si512((const void *)(p + i + 8)));
        c = _mm512_xor_si512(c, _mm512_load_si512((const void *)(p + i + 16)));
        d = _mm512_xor_si512(d, _mm512_load_si512((const void *)(p + i + 24)));
    }
    a = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
    return (uint64_t)_mm_cvtsi128_si64(_mm512_castsi512_si128(a));
}
__attribute__((target("avx2"))) static uint64_t membw_read256(const uint64_t *p, long n)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (long i = 0; i < n; i += 16) {
        a = _mm256_xor_si256(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_xor_si256(b, _mm256_load_si256((const __m256i *)(p + i + 4)));
        c = _mm256_xor_si256(c, _mm256_load_si256((const __m256i *)(p + i + 8)));
        d = _mm256_xor_si256(d, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    a = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    return (uint64_t)_mm_cvtsi128_si64(_mm256_castsi256_si128(a));
}
#endif

static uint64_t membw_read(const uint64_t *p, long n)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (dl_isa_detect() == DL_ISA_AVX512)
        return membw_read512(p, n);
    if (dl_isa_detect() == DL_ISA_AVX2)
        return membw_read256(p, n);
#endif
    uint64_t a = 0, b = 0;
    for (long i = 0; i < n; i += 2) {
        a += p[i];
        b += p[i + 1];
    }
    return a + b;
}

static void membw_fn(void *arg, int ith, int nth)
{
    membw_job *j = arg;
    long lo, hi; /* in 256-byte units, so every slice is whole vectors */
    dl_split((long)(j->n / 32), ith, nth, &lo, &hi);
    j->sink[ith & 63] = membw_read(j->buf + lo * 32, (hi - lo) * 32);
}

double dl_bench_membw(dl_pool *p)
{
    uint64_t *buf = aligned_alloc(64, MEMBW_BYTES);
    if (!buf)
        return 0;
    memset(buf, 1, MEMBW_BYTES); /* fault the pages in before timing */
    membw_job j = {.buf = buf, .n = MEMBW_BYTES / 8};
    double best = 1e30;
    for (int pass = 0; pass < 5; pass++) {
        double t0 = now_s();
        dl_pool_run(p, membw_fn, &j);
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    free(buf);
    return (double)MEMBW_BYTES / best;
}

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

int dl_bench_matmul(dl_pool *p, uint32_t type, int64_t rows, int64_t cols, int n_tok,
                    dl_bench_mm *out)
{
    return dl_bench_matmul_opt(p, type, rows, cols, n_tok, 1, out);
}

int dl_bench_matmul_opt(dl_pool *p, uint32_t type, int64_t rows, int64_t cols, int n_tok,
                        int prepare, dl_bench_mm *out)
{
    size_t rb = dl_row_size(type, cols);
    if (rb == 0 || rows <= 0 || n_tok <= 0 || !out)
        return -EINVAL;
    size_t wbytes = rb * (size_t)rows;
    int copies = (int)((LLC_SPAN + wbytes - 1) / wbytes);
    uint8_t *w = malloc(wbytes * (size_t)copies);
    float *x = malloc(sizeof(float) * (size_t)cols * n_tok);
    float *y = malloc(sizeof(float) * (size_t)rows * n_tok);
    float *src = malloc(sizeof(float) * (size_t)cols);
    const int tern = dl_is_ternary(type);
    void *scratch = malloc(tern ? dl_ternary_scratch_size(n_tok, cols) : dl_matmul_scratch_size(n_tok, cols));
    dl_weight *wt = calloc((size_t)copies, sizeof *wt);
    void **owned = calloc((size_t)copies, sizeof *owned);
    int rc = -ENOMEM;
    if (!w || !x || !y || !src || !scratch || !wt || !owned)
        goto done;
    uint64_t s = 88172645463325252ull;
    /* 64 distinct random rows, repeated: content does not change the speed */
    int64_t distinct = rows < 64 ? rows : 64;
    for (int64_t r = 0; r < distinct; r++) {
        for (int64_t i = 0; i < cols; i++)
            src[i] = (float)(rng(&s) % 2001) / 1000.0f - 1.0f;
        dl_quantize_row(type, src, w + r * rb, cols);
    }
    for (int64_t r = distinct; r < rows; r++)
        memcpy(w + r * rb, w + (r % distinct) * rb, rb);
    for (int c = 1; c < copies; c++)
        memcpy(w + (size_t)c * wbytes, w, wbytes);
    for (int64_t i = 0; i < cols * n_tok; i++)
        x[i] = (float)(rng(&s) % 2001) / 1000.0f - 1.0f;
    for (int c = 0; c < copies; c++) {
        wt[c] = (dl_weight){type, rows, cols, rb, w + (size_t)c * wbytes, NULL};
        /* as the model does at load; the bytes streamed are then the packed copy's */
        if (prepare && (rc = dl_weight_prepare(&wt[c], &owned[c], NULL, 0)) != 0)
            goto done;
    }
    size_t sbytes = wt[0].packed ? dl_weight_prepared_bytes(&wt[0]) : wbytes;

    double best = 1e30, spent = 0;
    for (int round = 0; round < 50 && (round < 3 || spent < 1.0); round++) {
        double t0 = now_s();
        for (int c = 0; c < copies; c++) {
            if (tern) /* as BitLinear runs it: quantise the activations, then the product */
                dl_ternary_matmul(p, &wt[c], 1.0f, x, y, n_tok, scratch);
            else
                dl_matmul(p, &wt[c], x, y, n_tok, scratch);
        }
        double t = (now_s() - t0) / copies;
        spent += t * copies;
        best = t < best ? t : best;
    }
    out->seconds = best;
    out->gflops = 2.0 * (double)rows * (double)cols * n_tok / best * 1e-9;
    out->weight_gbs = (double)sbytes / best * 1e-9;
    rc = 0;
done:
    for (int c = 0; owned && c < copies; c++)
        free(owned[c]);
    free(owned);
    free(wt);
    free(w);
    free(x);
    free(y);
    free(src);
    free(scratch);
    return rc;
}
