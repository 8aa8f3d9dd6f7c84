/* bench_kern.h — kernel-level measurements for `deltallm bench`.
 *
 * dl_bench_membw gives the machine's streaming read bandwidth with the pool's threads, the
 * ceiling for decode (every weight byte is read once per token); dl_bench_matmul times
 * dl_matmul on random weights of one type and shape, so a model's matmul throughput can be
 * compared with that ceiling. Both allocate and free their own buffers: not for hot paths.
 */
#ifndef DL_BENCH_KERN_H
#define DL_BENCH_KERN_H

#include <stdint.h>

#include "pool.h"

/* Bytes per second read from a buffer far larger than the caches, all threads reading;
 * the best of several passes. 0 when the buffer cannot be allocated. */
double dl_bench_membw(dl_pool *p);

typedef struct dl_bench_mm {
    double seconds;      /* per dl_matmul call (best of the repetitions) */
    double gflops;       /* 2 * rows * cols * n_tok / seconds, in 1e9/s */
    double weight_gbs;   /* weight bytes / seconds, in 1e9 B/s */
} dl_bench_mm;

/* Time dl_matmul for a rows x cols weight of `type` and n_tok tokens. Weights are
 * replicated across enough copies to exceed the last-level cache, as a model's layers do,
 * and each copy goes through dl_weight_prepare as at model load (weight_gbs then counts
 * the bytes of the copy the matmul reads). Returns 0, or -ENOMEM / -EINVAL. */
int dl_bench_matmul(dl_pool *p, uint32_t type, int64_t rows, int64_t cols, int n_tok,
                    dl_bench_mm *out);
/* The same with the preparation optional (prepare = 0: the weights as mapped). */
int dl_bench_matmul_opt(dl_pool *p, uint32_t type, int64_t rows, int64_t cols, int n_tok,
                        int prepare, dl_bench_mm *out);

#endif
