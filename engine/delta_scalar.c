/* delta_scalar.c — the portable DeltaLLM attention kernels (any head dim); the reference
 * the SIMD paths are tested against.
 *
 * The score sweep visits keys t = 0 .. hi[rows-1] once. Because lo[] and hi[] are
 * nondecreasing over the rows, at every t the rows split into three contiguous ranges:
 *   [0, rc)      t is after the query: masked (-inf)
 *   [rc, rf)     lo <= t: exact q.k_t (also every row >= rc while t < sink)
 *   [rf, rows)   t < lo: the row still needs Δk_t in its running sum R, and, once
 *                t >= sink, takes R as its score
 * so each stored delta is read once per unit and applied to every row that needs it.
 */
#include <math.h>

#include "delta_impl.h"

/* Advance the two range boundaries to key t. */
static inline void ranges_at(const dl__dunit *u, int t, int *rc, int *rf)
{
    while (*rf < u->rows && u->lo[*rf] <= t)
        (*rf)++;
    while (u->hi[*rc] < t)
        (*rc)++;
}

static void scores_scalar(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0, rf = 0;
    dl__drows cur;
    dl__drows_init(&cur);
    for (int r = 0; r < rs; r++)
        u->r[r] = 0;
    for (int t = 0; t <= tend; t++) {
        ranges_at(u, t, &rc, &rf);
        float *s = u->st + (size_t)t * rs;
        if (rf < rows) { /* R += q.Δk_t for the rows below their boundary */
            const uint8_t *m;
            const dl_fp16 *v = dl__krow(&cur, k, t, &m);
            for (int e = 0; e < d; e++) {
                if (!(m[e >> 3] >> (e & 7) & 1))
                    continue;
                float dv = dl_fp16_to_f32(*v++);
                const float *qe = u->Qt + (size_t)e * rs;
                for (int r = rf; r < rows; r++)
                    u->r[r] += dv * qe[r];
            }
        }
        int ex_end = t < k->sink ? rows : rf;
        if (ex_end > rc) {
            float kb[512];
            const float *key = dl__exact_key(k, t, kb);
            for (int r = rc; r < ex_end; r++) {
                float acc = 0;
                for (int e = 0; e < d; e++)
                    acc += key[e] * u->Qt[(size_t)e * rs + r];
                s[r] = acc;
            }
        }
        if (t >= k->sink)
            for (int r = rf; r < rows; r++)
                s[r] = u->r[r];
        for (int r = 0; r < rc; r++)
            s[r] = -INFINITY;
    }
}

static void scores_dense_scalar(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows, tend = u->hi[rows - 1];
    int rc = 0;
    for (int t = 0; t <= tend; t++) {
        while (u->hi[rc] < t)
            rc++;
        float *s = u->st + (size_t)t * rs;
        const dl_fp16 *key = k->kdense + (size_t)t * d;
        for (int r = rc; r < rows; r++) {
            float acc = 0;
            for (int e = 0; e < d; e++)
                acc += dl_fp16_to_f32(key[e]) * u->Qt[(size_t)e * rs + r];
            s[r] = acc;
        }
        for (int r = 0; r < rc; r++)
            s[r] = -INFINITY;
    }
}

static void softmax_pv_scalar(const dl__dunit *u)
{
    const dl__dkeys *k = u->k;
    int d = k->d, rs = u->rs, rows = u->rows;
    for (int r = 0; r < rows; r++) {
        float m = -INFINITY, sum = 0;
        for (int t = 0; t <= u->hi[r]; t++)
            m = fmaxf(m, u->st[(size_t)t * rs + r]);
        for (int t = 0; t <= u->hi[r]; t++) {
            float *p = &u->st[(size_t)t * rs + r];
            *p = expf(*p - m);
            sum += *p;
        }
        u->aux[r] = 1.0f / sum;
        for (int e = 0; e < d; e++)
            u->acc[(size_t)r * d + e] = 0;
    }
    int rc = 0, tend = u->hi[rows - 1];
    for (int t = 0; t <= tend; t++) {
        while (u->hi[rc] < t)
            rc++;
        const dl_fp16 *vt = k->h->v + (size_t)t * d;
        for (int r = rc; r < rows; r++) {
            float p = u->st[(size_t)t * rs + r];
            float *o = u->acc + (size_t)r * d;
            for (int e = 0; e < d; e++)
                o[e] += p * dl_fp16_to_f32(vt[e]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int e = 0; e < d; e++)
            u->acc[(size_t)r * d + e] *= u->aux[r];
}

const dl__dops dl__dops_scalar = {
    .scores = scores_scalar,
    .scores_dense = scores_dense_scalar,
    .softmax_pv = softmax_pv_scalar,
};
