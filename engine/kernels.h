/* kernels.h — the numeric building blocks of the forward pass, with run-time dispatch.
 *
 * The forward pass calls these by name; behind each is a scalar path (always present and
 * tested) and, where written, AVX2 / AVX-512 paths chosen once at start from CPUID. The
 * environment variable DELTALLM_ISA=scalar|avx2|avx512 caps the choice (tests use it to run
 * every path present on the machine).
 */
#ifndef DL_KERNELS_H
#define DL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "pool.h"
#include "quant.h"

enum dl_isa { DL_ISA_SCALAR = 0, DL_ISA_AVX2 = 1, DL_ISA_AVX512 = 2 };

/* The path in use (detected once, capped by DELTALLM_ISA), and a way to force one. */
enum dl_isa dl_isa_active(void);
enum dl_isa dl_isa_detect(void);          /* best the CPU supports */
void dl_isa_force(enum dl_isa isa);        /* for tests: clamped to what the CPU has */
const char *dl_isa_name(enum dl_isa isa);

/* A weight matrix: rows x cols, each row cols elements of `type` (row_bytes each).
 * packed: NULL, or the copy dl_weight_prepare made in the fast paths' own layout; `data`
 * must stay valid either way (the scalar and AVX2 paths, and the reference, read it). */
typedef struct dl_weight {
    uint32_t type;
    int64_t rows;
    int64_t cols;
    size_t row_bytes;
    const void *data;
    const void *packed;
} dl_weight;

/* Called once per weight at load. Where the active instruction set has a faster layout
 * for w's type (AVX-512: Q4_0 and Q8_0, 16 rows interleaved per 32-column block; F16 and
 * BF16, 16 rows interleaved per column; I2_S for ternary.h, 16 rows interleaved per 4 code
 * bytes; used for every token count), allocates that copy, points w->packed at it and stores it in *owned
 * (free() it after the last matmul with w); otherwise leaves w unchanged, *owned = NULL.
 * Returns 0, or -ENOMEM (message in err). After this the matmuls read only the copy. */
int dl_weight_prepare(dl_weight *w, void **owned, char *err, size_t errlen);
/* Bytes dl_weight_prepare would allocate for w now: 0 when it would not repack. */
size_t dl_weight_prepared_bytes(const dl_weight *w);
/* Row r of w as cols floats, as dl_dequantize_row gives it, read from the packed copy when
 * there is one (so a tied embedding's lookups need not keep the original resident). */
void dl_weight_get_row(const dl_weight *w, int64_t r, float *out);

/* Scratch bytes dl_matmul needs for n_tok tokens of width cols (quantised activations). */
size_t dl_matmul_scratch_size(int n_tok, int64_t cols);

/* y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tok, r < rows; x is n_tok x cols floats,
 * y is n_tok x rows floats. Split across the pool by rows. scratch: see above. */
void dl_matmul(dl_pool *pool, const dl_weight *w, const float *x, float *y, int n_tok,
               void *scratch);

/* out = x / rms(x) * w, n elements. */
void dl_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* In-place softmax of n values. */
void dl_softmax(float *x, int n);
/* out[i] = silu(gate[i]) * up[i] */
void dl_swiglu(float *out, const float *gate, const float *up, int n);
/* Rotate pairs (2i, 2i+1) of each head_dim-wide head by pos * freq_i, where
 * freq_i = base^(-2i/head_dim) / factors[i] (factors may be NULL). n_heads heads. */
void dl_rope(float *x, int n_heads, int head_dim, int pos, float base, const float *factors);

/* dst[i] = dl_f32_to_fp16(src[i]) (round to nearest even), vectorised. */
void dl_f32_to_fp16_row(dl_fp16 *dst, const float *src, int n);
/* acc[i] += x[i] * x[i], rounded after the multiply and after the add (no fused
 * multiply-add): the same bits on every instruction set. */
void dl_sqacc_f32(float *acc, const float *x, int n);
float dl_dot_f32(const float *a, const float *b, int n);
/* y += a * x */
void dl_axpy_f32(float *y, float a, const float *x, int n);

#endif
