/* synth.h — random-weight GGUF models with the shapes, tensor names and metadata of real
 * llama-architecture models, for benchmarks and tests at real scale (no real model that
 * large is available to the project; see shared/models/SOURCES.md).
 *
 * Shapes ("--shape"):
 *   llama3.2-1b   16 layers, 2048 wide, 32 q / 8 kv heads of 64, FFN 8192, vocab 128256,
 *                 RoPE base 500000 + Llama-3 rope_freqs.weight, tied output; the Llama-3
 *                 BPE vocabulary (and merges) copied from ggml-vocab-llama-bpe.derived.gguf
 *   smollm2-135m  30 layers, 576 wide, 9 / 3 heads of 64, FFN 1536, vocab 49152, tied;
 *                 a synthesised byte-level BPE vocabulary (see synth.c)
 *   stories15m    6 layers, 288 wide, 6 heads of 48, FFN 768, vocab 32000, separate output;
 *                 Llama-2 SentencePiece vocabulary copied from ggml-vocab-llama-spm.gguf
 *   tiny          2 layers, 64 wide, 4 / 2 heads of 16, FFN 128, SPM vocabulary (tests)
 *   tiny256       2 layers, 256 wide, 4 / 2 heads of 64, FFN 512, SPM vocabulary: the
 *                 smallest shape whose rows fit K-quant blocks, so Q4_K/Q6_K get tested
 *   bitnet-2b4t   BitNet-b1.58-2B-4T: architecture bitnet-b1.58, 30 layers, 2560 wide,
 *                 20 / 5 heads of 128, FFN 6912, vocab 128256 (Llama-3 BPE), RoPE 500000,
 *                 tied F16 embedding, attn/ffn sub-norms, ternary projections
 *   bitnet-tiny   the same architecture at tiny256's size, SPM vocabulary (tests)
 *
 * BitNet shapes take only I2_S, TQ1_0 or TQ2_0 (the projections; random -1/0/+1 times a
 * per-tensor fp16-exact scale ~ 1/sqrt(fan-in), so every encoding holds the same values);
 * their norm weights are random in [0.75, 1.25).
 *
 * Types: F32, F16, BF16, Q8_0, Q4_0 (every 2-D weight that type), Q6_K, and Q4_K meaning
 * llama.cpp's Q4_K_M mix: Q6_K for output.weight (token_embd.weight when tied) and for
 * attn_v / ffn_down in the layers llama.cpp's use_more_bits() picks, Q4_K elsewhere.
 * Where a row length is not a multiple of 256, K types fall back as llama.cpp does (Q6_K ->
 * Q8_0; Q4_K -> Q4_0, where llama.cpp would pick Q5_0, which this engine lacks). Norm
 * weights are F32 ones; other weights uniform with standard deviation 0.02.
 *
 * The same (shape, type, seed) gives a byte-identical file.
 */
#ifndef DL_SYNTH_H
#define DL_SYNTH_H

#include <stddef.h>
#include <stdint.h>

/* Write a model to path. type: enum dl_type (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K; for
 * BitNet shapes I2_S, TQ1_0, TQ2_0).
 * shared_dir: the folder holding models/ (the vocabulary sources), e.g. "../shared".
 * Returns 0 or a negative errno-style code with a message in err; a partial file is
 * removed. */
int dl_synth_write(const char *shape, uint32_t type, const char *path, uint64_t seed,
                   const char *shared_dir, char *err, size_t errlen);

/* The shape names above, NULL-terminated (for the CLI's help text). */
const char *const *dl_synth_shapes(void);

#endif
