/* ternary_impl.h — shared between ternary.c and its ISA files (private). */
#ifndef DL_TERNARY_IMPL_H
#define DL_TERNARY_IMPL_H

#include <stdint.h>

#include "quant.h"

/* sum(code * q) over n values of an I2_S row (codes 0..2 unsigned); n % 128 == 0. */
typedef int32_t (*dl__i2s_dot_fn)(const uint8_t *w, const int8_t *q, int64_t n);
/* sum(code * q) over one TQ2_0 block's 256 values. */
typedef int32_t (*dl__tq2_dot_fn)(const uint8_t *qs, const int8_t *q);

int32_t dl__i2s_dot_avx2(const uint8_t *w, const int8_t *q, int64_t n);
int32_t dl__tq2_dot_avx2(const uint8_t *qs, const int8_t *q);
int32_t dl__i2s_dot_avx512(const uint8_t *w, const int8_t *q, int64_t n);
int32_t dl__tq2_dot_avx512(const uint8_t *qs, const int8_t *q);

#endif
