/* ternary_impl.h — shared between ternary.c and its ISA files (private). */
#ifndef DL_TERNARY_IMPL_H
#define DL_TERNARY_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* sum(code * q) over n values of an I2_S row (codes 0..2 unsigned); n % 128 == 0. */
typedef int32_t (*dl__i2s_dot_fn)(const uint8_t *w, const int8_t *q, int64_t n);
/* The same for one row against 4 tokens (q, q + qstride, ...): each code is decoded once. */
typedef void (*dl__i2s_dot4t_fn)(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                                 int32_t out[4]);
/* sum(code * q) over one TQ2_0 block's 256 values. */
typedef int32_t (*dl__tq2_dot_fn)(const uint8_t *qs, const int8_t *q);
/* sum(code * q) over one TQ1_0 block's 256 values (trits decoded from base 3). */
typedef int32_t (*dl__tq1_dot_fn)(const dl_block_tq1_0 *b, const int8_t *q);

/* One token's absmax int8 quantisation (see ternary.c's scratch layout): bit-identical to
 * the scalar loop (same float products, round-to-nearest-even, saturation at +-127/-128). */
void dl__quantize_avx2(const float *x, int64_t cols, float *s_out, int32_t *sums, int8_t *q);

int32_t dl__i2s_dot_avx2(const uint8_t *w, const int8_t *q, int64_t n);
void dl__i2s_dot4t_avx2(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                        int32_t out[4]);
int32_t dl__tq2_dot_avx2(const uint8_t *qs, const int8_t *q);
int32_t dl__tq1_dot_avx2(const dl_block_tq1_0 *b, const int8_t *q);
int32_t dl__i2s_dot_avx512(const uint8_t *w, const int8_t *q, int64_t n);
void dl__i2s_dot4t_avx512(const uint8_t *w, const int8_t *q, int64_t qstride, int64_t n,
                          int32_t out[4]);
int32_t dl__tq2_dot_avx512(const uint8_t *qs, const int8_t *q);

#endif
