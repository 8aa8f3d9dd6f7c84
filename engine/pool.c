/* pool.c — persistent worker threads driven by a generation counter.
 *
 * dl_pool_run publishes (fn, arg), bumps `gen` and works as thread 0; each worker notices
 * the new generation, runs its share and decrements `pending`; the caller waits for
 * pending == 0. Workers spin for a short while after each job because the forward pass
 * issues the next one within microseconds; only after that do they sleep on the condvar,
 * so an idle daemon does not burn CPU. The counter is bumped under the mutex and a worker
 * re-checks it under the mutex before sleeping, so no wake-up is lost.
 */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define dl__cpu_relax() _mm_pause()
#else
#define dl__cpu_relax() ((void)0)
#endif

/* Pause-loop iterations before yielding the core (tens of microseconds), and yields before
 * a worker sleeps: short enough that threads beyond the core count (or other processes)
 * get the CPU quickly, long enough to catch the next matmul of a forward pass. */
#define DL_POOL_SPIN 2000
#define DL_POOL_YIELDS 50

struct dl_pool {
    int n;                    /* threads including the caller */
    pthread_t *threads;       /* n - 1 workers */
    struct dl__worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;          /* bumped once per dl_pool_run */
    atomic_int pending;       /* workers still running the current job */
    atomic_int stop;          /* set by dl_pool_free */
    dl_pool_fn fn;            /* current job; written before gen is bumped */
    void *arg;
};

struct dl__worker {
    dl_pool *p;
    int ith;
};

static void *dl__worker_main(void *v)
{
    struct dl__worker *w = v;
    dl_pool *p = w->p;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < DL_POOL_SPIN + DL_POOL_YIELDS; i++) {
            if (i < DL_POOL_SPIN)
                dl__cpu_relax();
            else
                sched_yield();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        p->fn(p->arg, w->ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

dl_pool *dl_pool_create(int n_threads)
{
    if (n_threads < 1)
        n_threads = 1;
    dl_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->threads || !p->workers)
            goto fail;
        for (int i = 1; i < n_threads; i++) {
            p->workers[i - 1] = (struct dl__worker){p, i};
            if (pthread_create(&p->threads[i - 1], NULL, dl__worker_main, &p->workers[i - 1]) !=
                0) {
                p->n = i; /* workers 1..i-1 exist; free joins exactly those */
                goto fail;
            }
        }
    }
    return p;
fail:
    dl_pool_free(p);
    return NULL;
}

void dl_pool_free(dl_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->threads)
        for (int i = 1; i < p->n; i++)
            pthread_join(p->threads[i - 1], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->workers);
    free(p);
}

int dl_pool_size(const dl_pool *p)
{
    return p ? p->n : 1;
}

void dl_pool_run(dl_pool *p, dl_pool_fn fn, void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, p->n);

    /* Jobs are balanced, so the others finish about when we do: spin, then yield (the
     * machine may have fewer cores than threads). */
    for (int i = 0; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; i++) {
        if (i < DL_POOL_SPIN)
            dl__cpu_relax();
        else
            sched_yield();
    }
}
