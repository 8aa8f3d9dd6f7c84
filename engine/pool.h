/* pool.h — a persistent thread pool for the forward pass.
 *
 * One set of threads for the life of the pool; dl_pool_run() hands every thread the same
 * function with its index, the caller taking index 0, and returns when all are done.
 * Workers spin briefly on a generation counter before sleeping, so back-to-back calls
 * (one per matmul) cost microseconds, not thread creation.
 */
#ifndef DL_POOL_H
#define DL_POOL_H

typedef struct dl_pool dl_pool;
typedef void (*dl_pool_fn)(void *arg, int ith, int nth);

/* n_threads counts the caller; 1 means no extra threads. */
dl_pool *dl_pool_create(int n_threads);
void dl_pool_free(dl_pool *p);
int dl_pool_size(const dl_pool *p);
/* Run fn(arg, i, n) for i = 0..n-1 (i = 0 on the calling thread). p may be NULL: then
 * fn(arg, 0, 1) runs inline. Not reentrant: call from one thread at a time. */
void dl_pool_run(dl_pool *p, dl_pool_fn fn, void *arg);

/* Split [0, n) into nth nearly equal parts; part ith is [*lo, *hi). */
static inline void dl_split(long n, int ith, int nth, long *lo, long *hi)
{
    long per = n / nth, rem = n % nth;
    *lo = ith * per + (ith < rem ? ith : rem);
    *hi = *lo + per + (ith < rem ? 1 : 0);
}

#endif
