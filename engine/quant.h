/* quant.h — tensor element types, block layouts and the scalar reference kernels.
 *
 * Type ids are ggml's (GGUF stores them), so a file's tensor type maps directly. The block
 * layouts are those of ggml (Q8_0, Q4_0, Q4_K, Q6_K) so that files written by llama.cpp's
 * tools load unchanged. The reference kernels here are plain C, written for clarity: the
 * fast paths (kernels.h) are tested against them.
 */
#ifndef DL_QUANT_H
#define DL_QUANT_H

#include <stddef.h>
#include <stdint.h>

enum dl_type {
    DL_TYPE_F32 = 0,
    DL_TYPE_F16 = 1,
    DL_TYPE_Q4_0 = 2,
    DL_TYPE_Q4_1 = 3,
    DL_TYPE_Q5_0 = 6,
    DL_TYPE_Q5_1 = 7,
    DL_TYPE_Q8_0 = 8,
    DL_TYPE_Q8_1 = 9,
    DL_TYPE_Q2_K = 10,
    DL_TYPE_Q3_K = 11,
    DL_TYPE_Q4_K = 12,
    DL_TYPE_Q5_K = 13,
    DL_TYPE_Q6_K = 14,
    DL_TYPE_Q8_K = 15,
    DL_TYPE_I8 = 24,
    DL_TYPE_I16 = 25,
    DL_TYPE_I32 = 26,
    DL_TYPE_I64 = 27,
    DL_TYPE_F64 = 28,
    DL_TYPE_BF16 = 30,
    DL_TYPE_TQ1_0 = 34,
    DL_TYPE_TQ2_0 = 35,
    DL_TYPE_I2_S = 36, /* Microsoft bitnet.cpp's id (its ggml fork), not upstream ggml's */
    DL_TYPE_COUNT = 40
};

#define DL_QK8_0 32
#define DL_QK4_0 32
#define DL_QK_K 256
#define DL_K_SCALE_SIZE 12
#define DL_QK_I2_S 128  /* I2_S: values per 32-byte group of 2-bit codes */
#define DL_I2_S_TAIL 32 /* I2_S: bytes after the packed codes (float scale + padding) */

typedef uint16_t dl_fp16; /* IEEE half, raw bits */
typedef uint16_t dl_bf16; /* bfloat16, raw bits */

/* ggml block layouts (little-endian, packed as ggml packs them). */
typedef struct { dl_fp16 d; int8_t qs[DL_QK8_0]; } dl_block_q8_0;            /* 34 bytes */
typedef struct { dl_fp16 d; uint8_t qs[DL_QK4_0 / 2]; } dl_block_q4_0;       /* 18 bytes */
typedef struct {
    dl_fp16 d;                        /* super-block scale for the 6-bit scales */
    dl_fp16 dmin;                     /* super-block scale for the 6-bit mins */
    uint8_t scales[DL_K_SCALE_SIZE];  /* 8 scales + 8 mins, 6 bits each */
    uint8_t qs[DL_QK_K / 2];          /* 4-bit quants */
} dl_block_q4_K;                      /* 144 bytes */
typedef struct {
    uint8_t ql[DL_QK_K / 2];          /* quants, lower 4 bits */
    uint8_t qh[DL_QK_K / 4];          /* quants, upper 2 bits */
    int8_t scales[DL_QK_K / 16];      /* 8-bit scales */
    dl_fp16 d;                        /* super-block scale */
} dl_block_q6_K;                      /* 210 bytes */

/* Ternary types. Codes 0, 1, 2 mean -1, 0, +1 (times the scale) in all three.
 * TQ2_0 (llama.cpp): element 128*h + 32*l + m is bits 2l..2l+1 of qs[32*h + m].
 * TQ1_0 (llama.cpp): base-3 digits, five per byte of qs (the first element the most
 *   significant trit) and four per byte of qh, each byte stored as ceil(v * 256 / 243).
 * I2_S (bitnet.cpp): not a block type; the whole tensor is 2-bit codes, every 128 values
 *   packed into 32 bytes with value 32*g + p at bits 6-2g..7-2g of byte p, followed by
 *   one float (the per-tensor scale) padded to DL_I2_S_TAIL bytes. Rows therefore index
 *   like a 128-element block type of 32 bytes; only the tensor's byte size differs. */
typedef struct { uint8_t qs[DL_QK_K / 4]; dl_fp16 d; } dl_block_tq2_0;       /* 66 bytes */
typedef struct {
    uint8_t qs[(DL_QK_K - 4 * DL_QK_K / 64) / 5];  /* 48 bytes: 240 values */
    uint8_t qh[DL_QK_K / 64];                      /* 4 bytes: 16 values */
    dl_fp16 d;
} dl_block_tq1_0;                                  /* 54 bytes */

typedef struct dl_type_traits {
    const char *name;  /* "Q4_K" */
    int64_t blck;      /* elements per block (1 for plain types) */
    size_t type_size;  /* bytes per block */
    int can_matmul;    /* usable as a weight type by the model */
} dl_type_traits;

/* Traits for a type id from a file, or NULL when the id is unknown. */
const dl_type_traits *dl_type_info(uint32_t type);
/* Bytes for n elements of a type; 0 when n is not a multiple of the block size. */
size_t dl_row_size(uint32_t type, int64_t n);
/* Bytes of a whole tensor with dimensions ne[4] (unused ones 1): rows * row size, plus
 * I2_S's trailing scale. 0 when a row is not whole blocks or the size overflows. */
uint64_t dl_tensor_nbytes(uint32_t type, const int64_t ne[4]);
/* The per-tensor scale stored after an I2_S tensor of nelem values (read unaligned). */
float dl_i2s_scale(const void *data, int64_t nelem);

float dl_fp16_to_f32(dl_fp16 h);
dl_fp16 dl_f32_to_fp16(float f); /* round to nearest even */
float dl_bf16_to_f32(dl_bf16 h);
dl_bf16 dl_f32_to_bf16(float f); /* round to nearest even */

/* Scalar reference kernels. n must be a multiple of the type's block size. I2_S rows
 * carry no scale: they dequantise to -1/0/+1 (multiply by dl_i2s_scale()). */
void dl_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantize n floats (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, TQ1_0, TQ2_0, and I2_S
 * meaning the codes of sign(x) with |x| < 1e-6 as 0, scale not written, as bitnet.cpp).
 * Returns bytes written. */
size_t dl_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);
/* dot(row of type, float vector) in float arithmetic — the reference for matmul. */
float dl_vec_dot_ref(uint32_t type, const void *row, const float *x, int64_t n);

/* A Q4_K block's twelve scale bytes <-> its eight 6-bit sub-block scales and mins. */
void dl_q4k_scales_unpack(const uint8_t q[12], uint8_t sc[8], uint8_t m[8]);
void dl_q4k_scales_pack(const uint8_t sc[8], const uint8_t m[8], uint8_t out[12]);

#endif
