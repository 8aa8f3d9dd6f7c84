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
    DL_TYPE_COUNT = 40
};

#define DL_QK8_0 32
#define DL_QK4_0 32
#define DL_QK_K 256
#define DL_K_SCALE_SIZE 12

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

float dl_fp16_to_f32(dl_fp16 h);
dl_fp16 dl_f32_to_fp16(float f); /* round to nearest even */
float dl_bf16_to_f32(dl_bf16 h);
dl_bf16 dl_f32_to_bf16(float f); /* round to nearest even */

/* Scalar reference kernels. n must be a multiple of the type's block size. */
void dl_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantize n floats (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K). Returns bytes written. */
size_t dl_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);
/* dot(row of type, float vector) in float arithmetic — the reference for matmul. */
float dl_vec_dot_ref(uint32_t type, const void *row, const float *x, int64_t n);

#endif
