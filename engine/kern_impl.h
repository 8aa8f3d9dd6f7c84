/* kern_impl.h — internal to the kernels: activation formats and the per-ISA tables.
 *
 * For quantised weights the fast paths first quantise the activations (one token per row
 * of x) into 8-bit blocks in the caller's scratch, then take integer dot products.
 * Two formats, each one token per `stride` bytes (64-aligned):
 *
 *   act32 (Q8_0 / Q4_0 weights): int8 qs[cols] | float d[cols/32] | int32 sum[cols/32]
 *   actk  (Q4_K / Q6_K weights): int8 qs[cols] | float d[cols/256] | int16 bsum[cols/16]
 *
 * qs = round_to_nearest_even(x / d), d = max|x| / 127 per block; sum / bsum are sums of qs
 * over the block / over 16 values (the weight offsets and K-quant mins need them). The
 * scalar quantisers below are the definition; the SIMD ones produce identical bytes.
 */
#ifndef DL_KERN_IMPL_H
#define DL_KERN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#define DL__ALIGN64(n) (((n) + 63) & ~(size_t)63)

static inline size_t dl__act32_stride(int64_t cols)
{
    return DL__ALIGN64((size_t)cols + (size_t)cols / 32 * 8);
}
static inline size_t dl__actk_stride(int64_t cols)
{
    return DL__ALIGN64((size_t)cols + (size_t)cols / 256 * 4 + (size_t)cols / 16 * 2);
}

/* Packed Q4_0 / Q8_0 (dl_weight.packed, made by dl_weight_prepare for the AVX-512 path).
 * Rows go in groups of 16, the last padded with zero rows; group g starts at
 * g * dl__pk_group_bytes. Its nb = cols / 32 blocks go in pairs, each pair one 64-byte
 * line of scales (fp16 d[2][16]: block 2p+j, row i of the group at [j][i]) followed by the
 * two blocks' quants (the last pair of an odd nb has one block), so a group is one
 * sequential stream of whole cache lines. A block's quants are 64-byte pieces k whose
 * dword i is row i's qs[4k .. 4k+3]:
 *   Q4_0: 4 pieces, bytes as stored (low nibbles: columns 4k.., high: 16+4k..);
 *   Q8_0: 8 pieces, each byte ^ 0x80 (w + 128, unsigned for vpdpbusd).
 * So one vpdpbusd of a piece with 4 broadcast activation bytes gives 16 rows' partial
 * dots, and the same bytes serve one token (streamed once) or many (reused from cache). */
static inline size_t dl__pk_qbytes(uint32_t type)
{
    return type == 8 ? 512 : 256;
}
/* Offsets inside a group of block b's 16 scales and of its quants. */
static inline size_t dl__pk_scale_off(uint32_t type, int64_t b)
{
    return (size_t)(b / 2) * (64 + 2 * dl__pk_qbytes(type)) + (size_t)(b % 2) * 32;
}
static inline size_t dl__pk_quant_off(uint32_t type, int64_t b)
{
    return (size_t)(b / 2) * (64 + 2 * dl__pk_qbytes(type)) + 64 + (size_t)(b % 2) * dl__pk_qbytes(type);
}
static inline size_t dl__pk_group_bytes(uint32_t type, int64_t cols)
{
    int64_t nb = cols / 32;
    return dl__pk_scale_off(type, nb + (nb % 2)); /* = start of the pair after the last */
}

/* Packed Q4_K (dl_weight.packed, AVX-512 path): rows in groups of 16 as above; a group's
 * cols / 256 super-blocks follow each other, DL__KP_BLOCK bytes each:
 *   [0, 32)     fp16 d[16]        (row i at element i)
 *   [32, 64)    fp16 dmin[16]
 *   [64, 192)   uint8 sc[8][16]   the 6-bit sub-block scales, unpacked: sub-block j, row i
 *   [192, 320)  uint8 mn[8][16]   the 6-bit sub-block mins, likewise
 *   [320, 2368) quants: 64-byte piece 8c + k (c = 0..3, k = 0..7) whose dword i is row i's
 *               qs[32c + 4k .. 32c + 4k + 3], as stored: low nibbles are columns 64c + 4k..,
 *               sub-block 2c; high nibbles 64c + 32 + 4k.., sub-block 2c + 1.
 * The scales are unpacked once at load (the row kernel decoded the 12-byte form per row and
 * block), at 4 bytes more per row and super-block than the 144 of the original. */
#define DL__KP_BLOCK 2368
static inline size_t dl__kp_group_bytes(int64_t cols)
{
    return (size_t)(cols / 256) * DL__KP_BLOCK;
}

/* Packed Q6_K (AVX-512 path): rows in groups of 16; cols / 256 super-blocks of
 * DL__K6_BLOCK bytes each:
 *   [0, 32)      fp16 d[16]; [32, 64) zero
 *   [64, 320)    int8 sc[16][16]   sub-block j (values 16j ..), row i at 64 + 16j + i
 *   [320, 3392)  16 triples u = 8h + m (h = 0..1, m = 0..7) of three 64-byte pieces, each
 *                with row i's bytes at dword i: ql[64h + 4m ..], ql[64h + 32 + 4m ..],
 *                qh[32h + 4m ..], the order the kernel reads them; one triple holds the
 *                quants of values 128h + 4m + 32q .. + 3 for q = 0..3 (ggml's layout).
 * The bytes are the original ones, moved: 3392 against 16 x 210 = 3360. */
#define DL__K6_BLOCK 3392
static inline size_t dl__k6_group_bytes(int64_t cols)
{
    return (size_t)(cols / 256) * DL__K6_BLOCK;
}

/* Packed F16 / BF16 (dl_weight.packed, AVX-512 path): rows in groups of 16, the last padded
 * with zero rows; group g starts at g * dl__ph_group_bytes(cols) and holds, for each column
 * c in order, the 16 rows' 16-bit values (row i at element i): 32 bytes per column. One
 * conversion (vcvtph2ps, or a shift for BF16) then gives a column of 16 rows, a broadcast
 * activation multiplies it, and the 16 row sums build up in one register: no horizontal
 * sums, and each thread reads its groups as one sequential stream. */
static inline size_t dl__ph_group_bytes(int64_t cols)
{
    return (size_t)cols * 32;
}

/* Scalar definitions of the two activation formats (one token). */
void dl__quant_act32_ref(const float *x, int64_t cols, void *dst);
void dl__quant_actk_ref(const float *x, int64_t cols, void *dst);

/* One matmul as the row kernels see it. */
typedef struct dl__mm {
    const dl_weight *w;
    const float *x;    /* n_tok x cols floats */
    float *y;          /* n_tok x rows floats */
    int n_tok;
    const uint8_t *xq; /* quantised activations (act32 or actk), or NULL */
    size_t xq_stride;  /* bytes per token in xq */
} dl__mm;

/* What one instruction set provides. matmul computes rows [r0, r1) for every token and
 * returns 0, or -1 when it has no path for the weight type (the scalar path runs then). */
typedef struct dl__kops {
    void (*quant_act32)(const float *x, int64_t cols, void *dst);
    void (*quant_actk)(const float *x, int64_t cols, void *dst);
    int (*matmul)(const dl__mm *m, int64_t r0, int64_t r1);
    void (*rmsnorm)(float *out, const float *x, const float *w, int n, float eps);
    void (*softmax)(float *x, int n);
    void (*swiglu)(float *out, const float *gate, const float *up, int n);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n);
    void (*to_fp16)(dl_fp16 *dst, const float *src, int n);
    void (*sqacc)(float *acc, const float *x, int n);
} dl__kops;

extern const dl__kops dl__kops_avx2;
extern const dl__kops dl__kops_avx512;

/* Which activation format a weight type uses on the fast paths: 32, 256, or 0 (none). */
static inline int dl__act_block(uint32_t type)
{
    switch (type) {
    case 8:  /* Q8_0 */
    case 2:  /* Q4_0 */
        return 32;
    case 12: /* Q4_K */
    case 14: /* Q6_K */
        return 256;
    default:
        return 0;
    }
}

#endif
