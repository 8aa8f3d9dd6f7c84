/* attn_impl.h — internal to attention.c: the per-ISA dense attention kernels.
 *
 * A kernel attends a small set of query rows that share one KV head (the query heads of
 * a GQA group, for one or more query positions) over that head's keys. Keys are visited
 * in blocks of DL__ATTN_BK with an online softmax (running max and sum, output rescaled
 * when the max grows), so each K/V block is read from memory once and reused from L1 by
 * every row, and no score buffer proportional to the context is needed.
 */
#ifndef DL_ATTN_IMPL_H
#define DL_ATTN_IMPL_H

#include "quant.h"

#define DL__ATTN_ROWS 16   /* query rows per call */
#define DL__ATTN_HDMAX 256 /* largest head_dim the SIMD kernels take */
#define DL__ATTN_BK 32     /* keys per block */

typedef struct dl__attn_rows {
    const dl_fp16 *k, *v;          /* this KV head's rows: position t at t * hd */
    int hd;                        /* head_dim, 1..DL__ATTN_HDMAX */
    float scale;                   /* applied to q.k before the softmax */
    int n;                         /* rows, 1..DL__ATTN_ROWS */
    const float *q[DL__ATTN_ROWS]; /* hd floats each */
    float *out[DL__ATTN_ROWS];     /* hd floats each */
    int nk[DL__ATTN_ROWS];         /* row r attends to keys 0..nk[r]-1 (nk >= 1) */
} dl__attn_rows;

void dl__attn_rows_avx2(const dl__attn_rows *a);
void dl__attn_rows_avx512(const dl__attn_rows *a);

#endif
