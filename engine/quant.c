/* quant.c — type traits, half/bfloat conversions and the scalar reference kernels.
 *
 * The block layouts follow ggml bit for bit (see quant.h); the quantisers are simple
 * round-to-nearest ones (no error-minimising search as in llama.cpp's quantize tool): they
 * exist to produce valid blocks for synthetic models and tests, not best-quality weights.
 */
#include "quant.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Indexed by type id; a NULL name marks an id this build does not know. Sizes are ggml's. */
static const dl_type_traits type_table[DL_TYPE_COUNT] = {
    [DL_TYPE_F32] = {"F32", 1, 4, 1},
    [DL_TYPE_F16] = {"F16", 1, 2, 1},
    [DL_TYPE_Q4_0] = {"Q4_0", 32, 18, 1},
    [DL_TYPE_Q4_1] = {"Q4_1", 32, 20, 0},
    [DL_TYPE_Q5_0] = {"Q5_0", 32, 22, 0},
    [DL_TYPE_Q5_1] = {"Q5_1", 32, 24, 0},
    [DL_TYPE_Q8_0] = {"Q8_0", 32, 34, 1},
    [DL_TYPE_Q8_1] = {"Q8_1", 32, 36, 0},
    [DL_TYPE_Q2_K] = {"Q2_K", 256, 84, 0},
    [DL_TYPE_Q3_K] = {"Q3_K", 256, 110, 0},
    [DL_TYPE_Q4_K] = {"Q4_K", 256, 144, 1},
    [DL_TYPE_Q5_K] = {"Q5_K", 256, 176, 0},
    [DL_TYPE_Q6_K] = {"Q6_K", 256, 210, 1},
    [DL_TYPE_Q8_K] = {"Q8_K", 256, 292, 0},
    [DL_TYPE_I8] = {"I8", 1, 1, 0},
    [DL_TYPE_I16] = {"I16", 1, 2, 0},
    [DL_TYPE_I32] = {"I32", 1, 4, 0},
    [DL_TYPE_I64] = {"I64", 1, 8, 0},
    [DL_TYPE_F64] = {"F64", 1, 8, 0},
    [DL_TYPE_BF16] = {"BF16", 1, 2, 1},
    [DL_TYPE_TQ1_0] = {"TQ1_0", 256, 54, 1},
    [DL_TYPE_TQ2_0] = {"TQ2_0", 256, 66, 1},
    [DL_TYPE_I2_S] = {"I2_S", DL_QK_I2_S, DL_QK_I2_S / 4, 1},
};

/* The structs must match ggml's on-disk sizes or every offset computed from them is wrong. */
_Static_assert(sizeof(dl_block_q8_0) == 34, "q8_0 block size");
_Static_assert(sizeof(dl_block_q4_0) == 18, "q4_0 block size");
_Static_assert(sizeof(dl_block_q4_K) == 144, "q4_K block size");
_Static_assert(sizeof(dl_block_q6_K) == 210, "q6_K block size");
_Static_assert(sizeof(dl_block_tq2_0) == 66, "tq2_0 block size");
_Static_assert(sizeof(dl_block_tq1_0) == 54, "tq1_0 block size");

const dl_type_traits *dl_type_info(uint32_t type)
{
    if (type >= DL_TYPE_COUNT || type_table[type].name == NULL)
        return NULL;
    return &type_table[type];
}

size_t dl_row_size(uint32_t type, int64_t n)
{
    const dl_type_traits *t = dl_type_info(type);
    if (!t || n < 0 || n % t->blck != 0)
        return 0;
    uint64_t nb = (uint64_t)(n / t->blck);
    if (nb > SIZE_MAX / t->type_size)
        return 0;
    return (size_t)nb * t->type_size;
}

uint64_t dl_tensor_nbytes(uint32_t type, const int64_t ne[4])
{
    const dl_type_traits *t = dl_type_info(type);
    if (!t || ne[0] <= 0 || ne[0] % t->blck != 0)
        return 0;
    uint64_t rows = 1;
    for (int d = 1; d < 4; d++) {
        if (ne[d] <= 0 || rows > UINT64_MAX / (uint64_t)ne[d])
            return 0;
        rows *= (uint64_t)ne[d];
    }
    uint64_t row_bytes = (uint64_t)(ne[0] / t->blck) * t->type_size;
    if (rows > (UINT64_MAX - DL_I2_S_TAIL) / row_bytes)
        return 0;
    return rows * row_bytes + (type == DL_TYPE_I2_S ? DL_I2_S_TAIL : 0);
}

float dl_i2s_scale(const void *data, int64_t nelem)
{
    float s;
    memcpy(&s, (const uint8_t *)data + nelem / 4, sizeof s);
    return s;
}

/* ---- half / bfloat16 ------------------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float dl_fp16_to_f32(dl_fp16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf / nan: keep the payload */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Shift m right by s (1..31) rounding to nearest, ties to even. */
static uint32_t shift_rne(uint32_t m, unsigned s)
{
    uint32_t r = m >> s;
    uint32_t rem = m & ((1u << s) - 1);
    uint32_t half = 1u << (s - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++;
    return r;
}

dl_fp16 dl_f32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) /* nan: stay quiet and non-zero, keep the top payload bits */
        return (dl_fp16)(sign | 0x7e00 | ((x >> 13) & 0x3ff));
    if (x >= 0x477ff000u) /* >= 65520 rounds past the largest half (65504): inf */
        return (dl_fp16)(sign | 0x7c00);
    if (x < 0x38800000u) {
        /* below 2^-14: the result is subnormal (or zero), mantissa = round(|f| * 2^24) */
        if (x < 0x33000000u) /* below 2^-25 (half the smallest subnormal): zero */
            return sign;
        uint32_t e = x >> 23;
        uint32_t m = (x & 0x7fffffu) | 0x800000u;
        return (dl_fp16)(sign | shift_rne(m, 126 - e));
    }
    /* normal: rebias the exponent (127 -> 15), round away 13 mantissa bits; a carry out of
     * the mantissa correctly bumps the exponent */
    return (dl_fp16)(sign | shift_rne(x - 0x38000000u, 13));
}

float dl_bf16_to_f32(dl_bf16 h)
{
    return bits_f32((uint32_t)h << 16);
}

dl_bf16 dl_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* nan: force the quiet bit so it stays a nan */
        return (dl_bf16)((x >> 16) | 0x40);
    return (dl_bf16)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---- Q4_K scale packing ---------------------------------------------------------------- */

/* Scale and min j (0..7) of a Q4_K block: 6 bits each, the first four in the low bits of
 * bytes 0..7, the last four split into a nibble (bytes 8..11) plus two high bits borrowed
 * from the top of bytes 0..7. */
static void q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void dl_q4k_scales_unpack(const uint8_t q[12], uint8_t sc[8], uint8_t m[8])
{
    for (int j = 0; j < 8; j++)
        q4k_scale_min(j, q, &sc[j], &m[j]);
}

void dl_q4k_scales_pack(const uint8_t sc[8], const uint8_t m[8], uint8_t out[12])
{
    memset(out, 0, 12);
    for (int j = 0; j < 4; j++) {
        out[j] = sc[j];
        out[j + 4] = m[j];
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((sc[j] & 0xf) | ((m[j] & 0xf) << 4));
        out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        out[j] |= (uint8_t)((m[j] >> 4) << 6);
    }
}

/* ---- ternary codes --------------------------------------------------------------------- */

/* Code (0, 1, 2 for -1, 0, +1) of element e of a TQ2_0 block. */
static int tq2_code(const dl_block_tq2_0 *b, int e)
{
    return (b->qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
}

/* Trit n (0 = most significant) of a TQ1_0 byte: the byte holds ceil(v * 256 / 243), so
 * multiplying by 3^n (mod 256) moves trit n to the top and * 3 >> 8 reads it. */
static int tq1_trit(uint8_t q, int n)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t shifted = (uint8_t)(q * pow3[n]);
    return ((unsigned)shifted * 3) >> 8;
}

/* Elements 0..159: five trits in each of qs[0..31] (element 32n + m in trit n of qs[m]);
 * 160..239: five in each of qs[32..47]; 240..255: four in each of qh[0..3]. */
static int tq1_code(const dl_block_tq1_0 *b, int e)
{
    if (e < 160)
        return tq1_trit(b->qs[e % 32], e / 32);
    if (e < 240)
        return tq1_trit(b->qs[32 + (e - 160) % 16], (e - 160) / 16);
    return tq1_trit(b->qh[(e - 240) % 4], (e - 240) / 4);
}

/* Code of element e of an I2_S tensor (e counted from the start of the tensor or of any
 * row, rows being whole 128-value groups). */
static int i2s_code(const uint8_t *p, int64_t e)
{
    int g = (int)(e % DL_QK_I2_S) / 32;
    return (p[e / DL_QK_I2_S * 32 + e % 32] >> (6 - 2 * g)) & 3;
}

/* ---- dequantisation -------------------------------------------------------------------- */

static void dequant_q8_0(const dl_block_q8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += DL_QK8_0) {
        float d = dl_fp16_to_f32(b[i].d);
        for (int j = 0; j < DL_QK8_0; j++)
            y[j] = d * (float)b[i].qs[j];
    }
}

static void dequant_q4_0(const dl_block_q4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += DL_QK4_0) {
        float d = dl_fp16_to_f32(b[i].d);
        for (int j = 0; j < DL_QK4_0 / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xf) - 8);
            y[j + DL_QK4_0 / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequant_q4_K(const dl_block_q4_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = dl_fp16_to_f32(b[i].d);
        float dmin = dl_fp16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        /* four chunks of 64: the low nibbles hold sub-block 2c, the high ones 2c+1 */
        for (int c = 0; c < 4; c++, q += 32) {
            uint8_t sc, m;
            q4k_scale_min(2 * c, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            q4k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(q[l] & 0xf) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* The 6-bit quant (offset by 32) of element e (0..255) of a Q6_K block. Within each half of
 * 128 elements, ql[l] holds elements l and l+64 (low/high nibble), ql[l+32] holds l+32 and
 * l+96, and qh[l] holds the top two bits of l, l+32, l+64, l+96 in bit pairs 0,2,4,6. */
static int q6k_quant(const dl_block_q6_K *b, int e)
{
    int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    const uint8_t *ql = b->ql + 64 * h;
    const uint8_t *qh = b->qh + 32 * h;
    int lo = (quarter & 1) ? ql[l + 32] : ql[l];
    lo = (quarter & 2) ? lo >> 4 : lo & 0xf;
    int hi = (qh[l] >> (2 * quarter)) & 3;
    return (lo | (hi << 4)) - 32;
}

static void dequant_q6_K(const dl_block_q6_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += DL_QK_K) {
        float d = dl_fp16_to_f32(b[i].d);
        for (int e = 0; e < DL_QK_K; e++)
            y[e] = d * (float)b[i].scales[e / 16] * (float)q6k_quant(&b[i], e);
    }
}

void dl_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    switch (type) {
    case DL_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case DL_TYPE_F16: {
        const dl_fp16 *h = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = dl_fp16_to_f32(h[i]);
        return;
    }
    case DL_TYPE_BF16: {
        const dl_bf16 *h = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = dl_bf16_to_f32(h[i]);
        return;
    }
    case DL_TYPE_Q8_0:
        dequant_q8_0(src, dst, n / DL_QK8_0);
        return;
    case DL_TYPE_Q4_0:
        dequant_q4_0(src, dst, n / DL_QK4_0);
        return;
    case DL_TYPE_Q4_K:
        dequant_q4_K(src, dst, n / DL_QK_K);
        return;
    case DL_TYPE_Q6_K:
        dequant_q6_K(src, dst, n / DL_QK_K);
        return;
    case DL_TYPE_TQ2_0:
        for (int64_t i = 0; i < n / DL_QK_K; i++) {
            const dl_block_tq2_0 *b = (const dl_block_tq2_0 *)src + i;
            float d = dl_fp16_to_f32(b->d);
            for (int e = 0; e < DL_QK_K; e++)
                dst[i * DL_QK_K + e] = d * (float)(tq2_code(b, e) - 1);
        }
        return;
    case DL_TYPE_TQ1_0:
        for (int64_t i = 0; i < n / DL_QK_K; i++) {
            const dl_block_tq1_0 *b = (const dl_block_tq1_0 *)src + i;
            float d = dl_fp16_to_f32(b->d);
            for (int e = 0; e < DL_QK_K; e++)
                dst[i * DL_QK_K + e] = d * (float)(tq1_code(b, e) - 1);
        }
        return;
    case DL_TYPE_I2_S:
        for (int64_t e = 0; e < n; e++)
            dst[e] = (float)(i2s_code(src, e) - 1);
        return;
    default:
        /* No kernel for this type: NaN makes the misuse visible instead of silent zeros. */
        for (int64_t i = 0; i < n; i++)
            dst[i] = NAN;
        return;
    }
}

/* ---- quantisation ---------------------------------------------------------------------- */

static float absmax(const float *x, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, fabsf(x[i]));
    return m;
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* The scale is rounded to half *before* quantising, so the quants are chosen for the
 * scale the reader will actually use. */
static void quant_q8_0(const float *x, dl_block_q8_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK8_0) {
        b[i].d = dl_f32_to_fp16(absmax(x, DL_QK8_0) / 127.0f);
        float d = dl_fp16_to_f32(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < DL_QK8_0; j++)
            b[i].qs[j] = (int8_t)clampi((int)lrintf(x[j] * id), -127, 127);
    }
}

/* As ggml: the element of largest magnitude maps to quant 0 (value -8*d), so the full
 * 16-level range is used on that side; the other side clamps at +7. */
static void quant_q4_0(const float *x, dl_block_q4_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK4_0) {
        float max = 0.0f;
        for (int j = 0; j < DL_QK4_0; j++)
            if (fabsf(x[j]) > fabsf(max))
                max = x[j];
        b[i].d = dl_f32_to_fp16(max / -8.0f);
        float d = dl_fp16_to_f32(b[i].d);
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < DL_QK4_0 / 2; j++) {
            int q0 = clampi((int)lrintf(x[j] * id) + 8, 0, 15);
            int q1 = clampi((int)lrintf(x[j + DL_QK4_0 / 2] * id) + 8, 0, 15);
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Per sub-block of 32: value = d*sc*q - dmin*m with q in 0..15. The sub-block's range
 * [min(x,0), max(x)] sets its scale and min; those are then quantised to 6 bits against
 * the block-wide d and dmin. */
static void quant_q4_K(const float *x, dl_block_q4_K *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK_K) {
        float scale[8], minv[8], max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            const float *s = x + 32 * j;
            float lo = 0.0f, hi = s[0];
            for (int l = 0; l < 32; l++) {
                lo = fminf(lo, s[l]);
                hi = fmaxf(hi, s[l]);
            }
            scale[j] = (hi - lo) / 15.0f;
            minv[j] = -lo;
            max_scale = fmaxf(max_scale, scale[j]);
            max_min = fmaxf(max_min, minv[j]);
        }
        b[i].d = dl_f32_to_fp16(max_scale / 63.0f);
        b[i].dmin = dl_f32_to_fp16(max_min / 63.0f);
        float d = dl_fp16_to_f32(b[i].d), dmin = dl_fp16_to_f32(b[i].dmin);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; j++) {
            sc[j] = (uint8_t)(d > 0.0f ? clampi((int)lrintf(scale[j] / d), 0, 63) : 0);
            m[j] = (uint8_t)(dmin > 0.0f ? clampi((int)lrintf(minv[j] / dmin), 0, 63) : 0);
        }
        dl_q4k_scales_pack(sc, m, b[i].scales);
        uint8_t q[DL_QK_K];
        for (int j = 0; j < 8; j++) {
            float ds = d * sc[j], dm = dmin * m[j];
            float ids = ds > 0.0f ? 1.0f / ds : 0.0f;
            for (int l = 0; l < 32; l++)
                q[32 * j + l] = (uint8_t)clampi((int)lrintf((x[32 * j + l] + dm) * ids), 0, 15);
        }
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b[i].qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
}

/* Per sub-block of 16: value = d*sc*q with q in -32..31 and an 8-bit signed scale. */
static void quant_q6_K(const float *x, dl_block_q6_K *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK_K) {
        float scale[16], max_scale = 0.0f;
        for (int j = 0; j < 16; j++) {
            scale[j] = absmax(x + 16 * j, 16) / 31.0f;
            max_scale = fmaxf(max_scale, scale[j]);
        }
        b[i].d = dl_f32_to_fp16(max_scale / 127.0f);
        float d = dl_fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++)
            b[i].scales[j] = (int8_t)(d > 0.0f ? clampi((int)lrintf(scale[j] / d), 0, 127) : 0);
        uint8_t q[DL_QK_K]; /* quant + 32, 0..63 */
        for (int e = 0; e < DL_QK_K; e++) {
            float ds = d * b[i].scales[e / 16];
            int v = ds > 0.0f ? (int)lrintf(x[e] / ds) : 0;
            q[e] = (uint8_t)(clampi(v, -32, 31) + 32);
        }
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int h = 0; h < 2; h++) {
            const uint8_t *qq = q + 128 * h;
            uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((qq[l] & 0xf) | ((qq[l + 64] & 0xf) << 4));
                ql[l + 32] = (uint8_t)((qq[l + 32] & 0xf) | ((qq[l + 96] & 0xf) << 4));
                qh[l] = (uint8_t)((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                  ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
            }
        }
    }
}

/* Ternary: d = the block's absmax, codes round(x / d) + 1, as llama.cpp's reference. */
static void quant_tq2_0(const float *x, dl_block_tq2_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK_K) {
        b[i].d = dl_f32_to_fp16(absmax(x, DL_QK_K));
        float d = dl_fp16_to_f32(b[i].d), id = d != 0.0f ? 1.0f / d : 0.0f;
        memset(b[i].qs, 0, sizeof b[i].qs);
        for (int e = 0; e < DL_QK_K; e++) {
            int c = clampi((int)lroundf(x[e] * id), -1, 1) + 1;
            b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)(c << (2 * (e % 128 / 32)));
        }
    }
}

/* Pack k trits (first = most significant) as ceil(v * 3^(5-k) * 256 / 243). */
static uint8_t tq1_pack(const int *c, int k)
{
    unsigned v = 0;
    for (int j = 0; j < k; j++)
        v = v * 3 + (unsigned)c[j];
    for (int j = k; j < 5; j++)
        v *= 3;
    return (uint8_t)((v * 256 + 242) / 243);
}

static void quant_tq1_0(const float *x, dl_block_tq1_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += DL_QK_K) {
        b[i].d = dl_f32_to_fp16(absmax(x, DL_QK_K));
        float d = dl_fp16_to_f32(b[i].d), id = d != 0.0f ? 1.0f / d : 0.0f;
        int c[DL_QK_K];
        for (int e = 0; e < DL_QK_K; e++)
            c[e] = clampi((int)lroundf(x[e] * id), -1, 1) + 1;
        int t[5];
        for (int m = 0; m < 32; m++) {
            for (int n = 0; n < 5; n++)
                t[n] = c[32 * n + m];
            b[i].qs[m] = tq1_pack(t, 5);
        }
        for (int m = 0; m < 16; m++) {
            for (int n = 0; n < 5; n++)
                t[n] = c[160 + 16 * n + m];
            b[i].qs[32 + m] = tq1_pack(t, 5);
        }
        for (int m = 0; m < 4; m++) {
            for (int n = 0; n < 4; n++)
                t[n] = c[240 + 4 * n + m];
            b[i].qh[m] = tq1_pack(t, 4);
        }
    }
}

/* bitnet.cpp's rule: magnitudes below 1e-6 are 0, otherwise the sign. */
static void quant_i2_s(const float *x, uint8_t *p, int64_t n)
{
    memset(p, 0, (size_t)n / 4);
    for (int64_t e = 0; e < n; e++) {
        int c = fabsf(x[e]) < 1e-6f ? 1 : x[e] > 0 ? 2 : 0;
        p[e / DL_QK_I2_S * 32 + e % 32] |= (uint8_t)(c << (6 - 2 * (int)(e % DL_QK_I2_S / 32)));
    }
}

size_t dl_quantize_row(uint32_t type, const float *src, void *dst, int64_t n)
{
    size_t bytes = dl_row_size(type, n);
    if (bytes == 0 && n != 0)
        return 0;
    switch (type) {
    case DL_TYPE_F32:
        memcpy(dst, src, bytes);
        return bytes;
    case DL_TYPE_F16: {
        dl_fp16 *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = dl_f32_to_fp16(src[i]);
        return bytes;
    }
    case DL_TYPE_BF16: {
        dl_bf16 *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = dl_f32_to_bf16(src[i]);
        return bytes;
    }
    case DL_TYPE_Q8_0:
        quant_q8_0(src, dst, n / DL_QK8_0);
        return bytes;
    case DL_TYPE_Q4_0:
        quant_q4_0(src, dst, n / DL_QK4_0);
        return bytes;
    case DL_TYPE_Q4_K:
        quant_q4_K(src, dst, n / DL_QK_K);
        return bytes;
    case DL_TYPE_Q6_K:
        quant_q6_K(src, dst, n / DL_QK_K);
        return bytes;
    case DL_TYPE_TQ2_0:
        quant_tq2_0(src, dst, n / DL_QK_K);
        return bytes;
    case DL_TYPE_TQ1_0:
        quant_tq1_0(src, dst, n / DL_QK_K);
        return bytes;
    case DL_TYPE_I2_S:
        quant_i2_s(src, dst, n);
        return bytes;
    default:
        return 0; /* no quantiser for this type */
    }
}

/* ---- dot products ---------------------------------------------------------------------- */

static float dot_q8_0(const dl_block_q8_0 *b, const float *x, int64_t nb)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++, x += DL_QK8_0) {
        float s = 0.0f;
        for (int j = 0; j < DL_QK8_0; j++)
            s += (float)b[i].qs[j] * x[j];
        sum += dl_fp16_to_f32(b[i].d) * s;
    }
    return sum;
}

static float dot_q4_0(const dl_block_q4_0 *b, const float *x, int64_t nb)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++, x += DL_QK4_0) {
        float s = 0.0f;
        for (int j = 0; j < DL_QK4_0 / 2; j++) {
            s += (float)((b[i].qs[j] & 0xf) - 8) * x[j];
            s += (float)((b[i].qs[j] >> 4) - 8) * x[j + DL_QK4_0 / 2];
        }
        sum += dl_fp16_to_f32(b[i].d) * s;
    }
    return sum;
}

/* sum_l (d*sc*q_l - dmin*m) x_l = d*sc*sum(q_l x_l) - dmin*m*sum(x_l), per sub-block. */
static float dot_q4_K(const dl_block_q4_K *b, const float *x, int64_t nb)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        float d = dl_fp16_to_f32(b[i].d), dmin = dl_fp16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32, x += 64) {
            uint8_t sc1, m1, sc2, m2;
            q4k_scale_min(2 * c, b[i].scales, &sc1, &m1);
            q4k_scale_min(2 * c + 1, b[i].scales, &sc2, &m2);
            float qx1 = 0.0f, qx2 = 0.0f, sx1 = 0.0f, sx2 = 0.0f;
            for (int l = 0; l < 32; l++) {
                qx1 += (float)(q[l] & 0xf) * x[l];
                sx1 += x[l];
                qx2 += (float)(q[l] >> 4) * x[l + 32];
                sx2 += x[l + 32];
            }
            sum += d * sc1 * qx1 - dmin * m1 * sx1 + d * sc2 * qx2 - dmin * m2 * sx2;
        }
    }
    return sum;
}

static float dot_q6_K(const dl_block_q6_K *b, const float *x, int64_t nb)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++, x += DL_QK_K) {
        float d = dl_fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            float s = 0.0f;
            for (int l = 0; l < 16; l++)
                s += (float)q6k_quant(&b[i], 16 * j + l) * x[16 * j + l];
            sum += d * (float)b[i].scales[j] * s;
        }
    }
    return sum;
}

float dl_vec_dot_ref(uint32_t type, const void *row, const float *x, int64_t n)
{
    float sum = 0.0f;
    switch (type) {
    case DL_TYPE_F32: {
        const float *w = row;
        for (int64_t i = 0; i < n; i++)
            sum += w[i] * x[i];
        return sum;
    }
    case DL_TYPE_F16: {
        const dl_fp16 *w = row;
        for (int64_t i = 0; i < n; i++)
            sum += dl_fp16_to_f32(w[i]) * x[i];
        return sum;
    }
    case DL_TYPE_BF16: {
        const dl_bf16 *w = row;
        for (int64_t i = 0; i < n; i++)
            sum += dl_bf16_to_f32(w[i]) * x[i];
        return sum;
    }
    case DL_TYPE_Q8_0:
        return dot_q8_0(row, x, n / DL_QK8_0);
    case DL_TYPE_Q4_0:
        return dot_q4_0(row, x, n / DL_QK4_0);
    case DL_TYPE_Q4_K:
        return dot_q4_K(row, x, n / DL_QK_K);
    case DL_TYPE_Q6_K:
        return dot_q6_K(row, x, n / DL_QK_K);
    case DL_TYPE_TQ2_0:
        for (int64_t i = 0; i < n / DL_QK_K; i++, x += DL_QK_K) {
            const dl_block_tq2_0 *b = (const dl_block_tq2_0 *)row + i;
            float s = 0.0f;
            for (int e = 0; e < DL_QK_K; e++)
                s += (float)(tq2_code(b, e) - 1) * x[e];
            sum += dl_fp16_to_f32(b->d) * s;
        }
        return sum;
    case DL_TYPE_TQ1_0:
        for (int64_t i = 0; i < n / DL_QK_K; i++, x += DL_QK_K) {
            const dl_block_tq1_0 *b = (const dl_block_tq1_0 *)row + i;
            float s = 0.0f;
            for (int e = 0; e < DL_QK_K; e++)
                s += (float)(tq1_code(b, e) - 1) * x[e];
            sum += dl_fp16_to_f32(b->d) * s;
        }
        return sum;
    case DL_TYPE_I2_S:
        for (int64_t e = 0; e < n; e++)
            sum += (float)(i2s_code(row, e) - 1) * x[e];
        return sum;
    default:
        return NAN; /* no kernel for this type */
    }
}
