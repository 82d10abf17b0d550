// Portability macros shared by every backend. No torch header may be included from here:
// the CUDA and per-instruction-set translation units include this file.
#pragma once

#if defined(__CUDACC__)
#define FO_HOST_DEVICE __host__ __device__
#define FO_INLINE __forceinline__
#else
#define FO_HOST_DEVICE
#define FO_INLINE inline __attribute__((always_inline))
#endif

// NOTE: [One namespace per instruction set]
// Every header-defined function (update rules, SIMD wrappers, sweeps) lives in the inline
// namespace FO_ISA, which each translation unit sets from its compile flags (isa_scalar, isa_avx2,
// isa_avx512, isa_cuda). Inline functions and template instantiations compiled with -mavx512f thus
// get different mangled names from those compiled for AVX2 or no extension, so the linker
// can never pick an AVX-512 copy for code that runs on an AVX2 machine (an ODR violation
// that otherwise crashes with SIGILL).
#ifndef FO_ISA
#define FO_ISA isa_generic
#endif
