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

/* Packed I2_S (dl_weight.packed, made by dl_weight_prepare for the AVX-512 path): rows in
 * groups of 16, the last padded with zero bytes (those rows' results are never stored);
 * group g starts at g * dl__i2s_group_bytes(cols). For each 128-group of columns in order
 * come 8 pieces of 64 bytes; piece k's dword i is row i's code bytes 4k .. 4k+3 of that
 * 128-group. Shifting a piece by 6, 4, 2, 0 and masking gives the codes of columns
 * 4k.., 32+4k.., 64+4k.., 96+4k.. of 16 rows, each one vpdpbusd against 4 broadcast
 * activation bytes: 16 row sums in one register, one sequential stream per thread. */
static inline size_t dl__i2s_group_bytes(int64_t cols)
{
    return (size_t)cols / 4 * 16;
}

/* Integer dots sum(code * q) of one packed 16-row group with nt <= 8 tokens (token t's
 * int8 activations at q + t * qstride): out[t][i] for row i of the group. first: the
 * group is read for the first time (its lines are prefetched ahead). */
void dl__i2s_packed_avx512(const uint8_t *grp, int64_t cols, const int8_t *q, int64_t qstride,
                           int nt, int first, int32_t out[][16]);

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
