/* ternary.h — BitLinear products: ternary weights (I2_S, TQ2_0, TQ1_0) x int8 activations.
 *
 * BitNet b1.58 quantises each token's activations to int8 with its absmax
 * (s = 127 / max|x|, q = round(x * s)), multiplies them with the weight codes in integer
 * arithmetic and rescales: y = sum_blocks(d * sum(code * q)) * scale / s, where d is a TQ
 * block's fp16 scale (1 for I2_S) and `scale` the per-tensor one (I2_S's trailing float
 * times any .scale tensor). Runs of blocks with bit-equal d are summed as integers first,
 * so a TQ2_0 tensor with one d everywhere gives exactly the result of the I2_S tensor with
 * that scale. Every ISA path returns bit-identical results (integer sums, same rescale).
 * On AVX-512 an I2_S weight put through dl_weight_prepare (kernels.h) is read only from
 * its repacked copy (16 rows interleaved: one stream per thread, no horizontal sums).
 */
#ifndef DL_TERNARY_H
#define DL_TERNARY_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "pool.h"

/* I2_S, TQ1_0 or TQ2_0. */
int dl_is_ternary(uint32_t type);

/* Scratch bytes for the int8 activations of n_tok tokens of width cols. */
size_t dl_ternary_scratch_size(int n_tok, int64_t cols);

/* Quantise n_tok rows of cols floats into scratch (cols a multiple of 128). */
void dl_ternary_quantize(dl_pool *pool, const float *x, int n_tok, int64_t cols, void *scratch);

/* y[t][r] for t < n_tok, r < w->rows from activations quantised by dl_ternary_quantize with
 * cols == w->cols. Split across the pool by rows. */
void dl_ternary_matmul_q(dl_pool *pool, const dl_weight *w, float scale, const void *scratch,
                         float *y, int n_tok);

/* dl_ternary_matmul_q for n <= DL_TERNARY_MULTI_MAX weights with the same columns and the
 * same quantised input, in one pool dispatch (y[i] = W[i] x). -EINVAL: bad n, columns differ. */
#define DL_TERNARY_MULTI_MAX 4
int dl_ternary_matmul_q_multi(dl_pool *pool, int n, const dl_weight *const w[],
                              const float scale[], const void *scratch, float *const y[],
                              int n_tok);

/* Both steps. */
void dl_ternary_matmul(dl_pool *pool, const dl_weight *w, float scale, const float *x,
                       float *y, int n_tok, void *scratch);

#endif
