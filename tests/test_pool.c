/* test_pool.c — the thread pool: every index runs once per call, results do not depend on
 * the thread count, back-to-back calls and create/free cycles are clean. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "quant.h"
#include "testutil.h"

typedef struct count_job {
    atomic_int calls[8]; /* calls seen per thread index */
    atomic_int total;
    int nth_seen[8];
} count_job;

static void count_fn(void *arg, int ith, int nth)
{
    count_job *j = arg;
    atomic_fetch_add(&j->calls[ith], 1);
    atomic_fetch_add(&j->total, 1);
    j->nth_seen[ith] = nth;
}

START_TEST(test_each_index_once)
{
    for (int n = 1; n <= 4; n++) {
        dl_pool *p = dl_pool_create(n);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(dl_pool_size(p), n);
        count_job j;
        memset(&j, 0, sizeof j);
        for (int i = 0; i < 8; i++)
            atomic_init(&j.calls[i], 0);
        atomic_init(&j.total, 0);
        dl_pool_run(p, count_fn, &j);
        for (int i = 0; i < n; i++) {
            ck_assert_int_eq(atomic_load(&j.calls[i]), 1);
            ck_assert_int_eq(j.nth_seen[i], n);
        }
        ck_assert_int_eq(atomic_load(&j.calls[n]), 0);
        dl_pool_free(p);
    }
}
END_TEST

START_TEST(test_null_pool_inline)
{
    count_job j;
    memset(&j, 0, sizeof j);
    atomic_init(&j.total, 0);
    dl_pool_run(NULL, count_fn, &j);
    ck_assert_int_eq(atomic_load(&j.calls[0]), 1);
    ck_assert_int_eq(j.nth_seen[0], 1);
    ck_assert_int_eq(dl_pool_size(NULL), 1);
    dl_pool *p = dl_pool_create(0); /* clamped to 1 */
    ck_assert_int_eq(dl_pool_size(p), 1);
    dl_pool_free(p);
    dl_pool_free(NULL);
}
END_TEST

/* Each call must see the previous call's writes and finish before returning. */
typedef struct chain_job {
    long *v;
    long n;
} chain_job;

static void chain_fn(void *arg, int ith, int nth)
{
    chain_job *c = arg;
    long lo, hi;
    dl_split(c->n, ith, nth, &lo, &hi);
    for (long i = lo; i < hi; i++)
        c->v[i] = c->v[(i + 1) % c->n] + 1; /* reads a neighbour's last value */
}

START_TEST(test_back_to_back)
{
    enum { N = 64, RUNS = 10000 };
    long v[N];
    for (int n = 2; n <= 4; n++) {
        dl_pool *p = dl_pool_create(n);
        count_job j;
        memset(&j, 0, sizeof j);
        for (int i = 0; i < 8; i++)
            atomic_init(&j.calls[i], 0);
        atomic_init(&j.total, 0);
        for (int r = 0; r < RUNS; r++)
            dl_pool_run(p, count_fn, &j);
        ck_assert_int_eq(atomic_load(&j.total), RUNS * n);
        /* After k calls every element is at least k: a call that returned early, or a
         * worker running a stale job, would leave one behind. */
        memset(v, 0, sizeof v);
        chain_job c = {v, N};
        for (int r = 0; r < 1000; r++)
            dl_pool_run(p, chain_fn, &c);
        for (int i = 0; i < N; i++)
            ck_assert_int_ge(v[i], 1000);
        dl_pool_free(p);
    }
}
END_TEST

START_TEST(test_split)
{
    for (long n = 0; n < 40; n++)
        for (int nth = 1; nth <= 5; nth++) {
            long prev = 0;
            for (int i = 0; i < nth; i++) {
                long lo, hi;
                dl_split(n, i, nth, &lo, &hi);
                ck_assert_int_eq(lo, prev);
                ck_assert_int_ge(hi, lo);
                ck_assert_int_le(hi - lo, n / nth + 1);
                prev = hi;
            }
            ck_assert_int_eq(prev, n);
        }
}
END_TEST

/* A matmul gives bit-identical results for 1..4 threads (rows are split, never sums). */
START_TEST(test_matmul_thread_count_invariant)
{
    static const uint32_t types[] = {DL_TYPE_F32, DL_TYPE_Q8_0, DL_TYPE_Q4_0, DL_TYPE_Q4_K};
    enum { ROWS = 70, COLS = 512, NTOK = 9 };
    float *src = malloc(sizeof(float) * COLS), *x = malloc(sizeof(float) * COLS * NTOK);
    float *y1 = malloc(sizeof(float) * ROWS * NTOK), *yn = malloc(sizeof(float) * ROWS * NTOK);
    void *scratch = malloc(dl_matmul_scratch_size(NTOK, COLS));
    unsigned s = 1;
    for (int i = 0; i < COLS * NTOK; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = (float)((s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        size_t rb = dl_row_size(types[k], COLS);
        uint8_t *data = malloc(rb * ROWS);
        for (int r = 0; r < ROWS; r++) {
            for (int i = 0; i < COLS; i++) {
                s = s * 1103515245u + 12345u;
                src[i] = (float)((s >> 8) & 0xFFFF) / 65536.0f - 0.5f;
            }
            dl_quantize_row(types[k], src, data + r * rb, COLS);
        }
        dl_weight w = {.type = types[k], .rows = ROWS, .cols = COLS, .row_bytes = rb, .data = data};
        dl_matmul(NULL, &w, x, y1, NTOK, scratch);
        for (int n = 1; n <= 4; n++) {
            dl_pool *p = dl_pool_create(n);
            memset(yn, 0, sizeof(float) * ROWS * NTOK);
            dl_matmul(p, &w, x, yn, NTOK, scratch);
            ck_assert_mem_eq(y1, yn, sizeof(float) * ROWS * NTOK);
            dl_pool_free(p);
        }
        free(data);
    }
    free(src);
    free(x);
    free(y1);
    free(yn);
    free(scratch);
}
END_TEST

START_TEST(test_create_free_cycles)
{
    for (int i = 0; i < 50; i++) {
        dl_pool *p = dl_pool_create(1 + i % 4);
        ck_assert_ptr_nonnull(p);
        if (i % 2) {
            count_job j;
            memset(&j, 0, sizeof j);
            atomic_init(&j.total, 0);
            dl_pool_run(p, count_fn, &j);
            ck_assert_int_eq(atomic_load(&j.total), 1 + i % 4);
        }
        dl_pool_free(p); /* with workers spinning or asleep */
    }
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_each_index_once);
    tcase_add_test(tc, test_null_pool_inline);
    tcase_add_test(tc, test_back_to_back);
    tcase_add_test(tc, test_split);
    tcase_add_test(tc, test_matmul_thread_count_invariant);
    tcase_add_test(tc, test_create_free_cycles);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dl_test_run(pool_suite());
}
