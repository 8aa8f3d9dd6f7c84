/* simd_unroll.h — the unrolling pragmas of the SIMD kernel files (included by simd_avx2.h
 * and simd_avx512.h).
 *
 * Full unrolling of a loop over a compile-time count (vectors, rows), so that its
 * accumulator array lives in registers. clang 14 left some such loops rolled under
 * "GCC unroll", with the array on the stack (a store per multiply-add); under clang both
 * macros are its full-unroll pragma, under gcc DL_UNROLL(n) is "GCC unroll n" as before. */
#ifndef DL_SIMD_UNROLL_H
#define DL_SIMD_UNROLL_H

#define DL__PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define DL_UNROLL_FULL _Pragma("clang loop unroll(full)")
#define DL_UNROLL(n) _Pragma("clang loop unroll(full)")
#else
#define DL_UNROLL_FULL _Pragma("GCC unroll 16")
#define DL_UNROLL(n) DL__PRAGMA(GCC unroll n)
#endif

#endif
