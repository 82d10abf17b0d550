// SIMD value types for the CPU update rules: the wrappers that make `a + b * c` in a math
// header compile to AVX2 or AVX-512 instructions. Which section is compiled depends on the
// translation unit's target flags; every name lands in that TU's ISA namespace
// (see NOTE: [One namespace per instruction set]).
//
// VecOf<S>::type is the widest vector of math type S this TU supports (S itself in the
// scalar TU). load<V>(ptr) / store(ptr, v) convert between a storage type and V.
#pragma once
#include <cstdint>

#include "fusedoptim/dtype.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fusedoptim {
namespace cpu {
inline namespace FO_ISA {

template <typename S> struct VecOf { using type = S; };

// Scalar loads, for tails and for the scalar TU.
template <typename V> struct Loader;
template <> struct Loader<float> {
  template <typename Storage> static float load(const Storage* p) { return load_scalar(p); }
};
template <> struct Loader<double> {
  static double load(const double* p) { return *p; }
  // Widening loads of the other storage types (the grad-norm reductions sum in double).
  template <typename Storage> static double load(const Storage* p) { return double(load_scalar(p)); }
};
template <typename V, typename Storage> FO_INLINE V load(const Storage* p) { return Loader<V>::load(p); }
template <typename Storage> FO_INLINE void store(Storage* p, float v) { store_scalar(p, v); }
FO_INLINE void store(double* p, double v) { *p = v; }
// Stochastic rounding of the element with flat index `index` (NOTE: [Stochastic rounding]);
// the vector overloads below round lanes first_index, first_index + 1, ... to the same bits.
template <typename Storage>
FO_INLINE void store_stochastic(Storage* p, float v, uint64_t seed, uint64_t index) {
  store_stochastic(p, v, rounding_bits(seed, index));
}

#define FO_VEC_ARITH(Vec, add, sub, mul, div)                                            \
  friend FO_INLINE Vec operator+(Vec a, Vec b) { return Vec(add(a.v, b.v)); }            \
  friend FO_INLINE Vec operator-(Vec a, Vec b) { return Vec(sub(a.v, b.v)); }            \
  friend FO_INLINE Vec operator*(Vec a, Vec b) { return Vec(mul(a.v, b.v)); }            \
  friend FO_INLINE Vec operator/(Vec a, Vec b) { return Vec(div(a.v, b.v)); }

#if defined(__AVX512F__)

struct Vec16f {
  static constexpr int kWidth = 16;
  __m512 v;
  FO_INLINE Vec16f() = default;
  FO_INLINE explicit Vec16f(__m512 x) : v(x) {}
  FO_INLINE Vec16f(float s) : v(_mm512_set1_ps(s)) {}
  FO_VEC_ARITH(Vec16f, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_div_ps)
  friend FO_INLINE Vec16f operator-(Vec16f a) {
    return Vec16f(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN))));
  }
  friend FO_INLINE Vec16f fo_sqrt(Vec16f a) { return Vec16f(_mm512_sqrt_ps(a.v)); }
  friend FO_INLINE Vec16f fo_maximum(Vec16f a, Vec16f b) {
    // max_ps returns b when either is NaN; put a back where a is NaN (torch.maximum).
    const __mmask16 a_nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
    return Vec16f(_mm512_mask_blend_ps(a_nan, _mm512_max_ps(a.v, b.v), a.v));
  }
  friend FO_INLINE Vec16f fo_abs(Vec16f a) {
    return Vec16f(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MAX))));
  }
  friend FO_INLINE Vec16f fo_sign(Vec16f a) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 pos = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(zero, a.v, _CMP_LT_OQ), _mm512_set1_ps(1.0f));
    return Vec16f(_mm512_mask_mov_ps(pos, _mm512_cmp_ps_mask(a.v, zero, _CMP_LT_OQ), _mm512_set1_ps(-1.0f)));
  }
  friend FO_INLINE Vec16f fo_clamp(Vec16f x, Vec16f lo, Vec16f hi) {
    // max/min_ps return the second operand when either is NaN: keep x second so NaN stays.
    return Vec16f(_mm512_min_ps(hi.v, _mm512_max_ps(lo.v, x.v)));
  }
  friend FO_INLINE __mmask16 fo_gt(Vec16f a, Vec16f b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ); }
  friend FO_INLINE __mmask16 fo_lt(Vec16f a, Vec16f b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
  friend FO_INLINE Vec16f fo_select(__mmask16 m, Vec16f a, Vec16f b) { return Vec16f(_mm512_mask_blend_ps(m, b.v, a.v)); }
  friend FO_INLINE double fo_sum(Vec16f a) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a.v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  }
};

struct Vec8d {
  static constexpr int kWidth = 8;
  __m512d v;
  FO_INLINE Vec8d() = default;
  FO_INLINE explicit Vec8d(__m512d x) : v(x) {}
  FO_INLINE Vec8d(double s) : v(_mm512_set1_pd(s)) {}
  FO_VEC_ARITH(Vec8d, _mm512_add_pd, _mm512_sub_pd, _mm512_mul_pd, _mm512_div_pd)
  friend FO_INLINE Vec8d operator-(Vec8d a) {
    return Vec8d(_mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a.v), _mm512_set1_epi64(INT64_MIN))));
  }
  friend FO_INLINE Vec8d fo_sqrt(Vec8d a) { return Vec8d(_mm512_sqrt_pd(a.v)); }
  friend FO_INLINE Vec8d fo_maximum(Vec8d a, Vec8d b) {
    const __mmask8 a_nan = _mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q);
    return Vec8d(_mm512_mask_blend_pd(a_nan, _mm512_max_pd(a.v, b.v), a.v));
  }
  friend FO_INLINE Vec8d fo_abs(Vec8d a) {
    return Vec8d(_mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(a.v), _mm512_set1_epi64(INT64_MAX))));
  }
  friend FO_INLINE Vec8d fo_sign(Vec8d a) {
    const __m512d zero = _mm512_setzero_pd();
    const __m512d pos = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(zero, a.v, _CMP_LT_OQ), _mm512_set1_pd(1.0));
    return Vec8d(_mm512_mask_mov_pd(pos, _mm512_cmp_pd_mask(a.v, zero, _CMP_LT_OQ), _mm512_set1_pd(-1.0)));
  }
  friend FO_INLINE Vec8d fo_clamp(Vec8d x, Vec8d lo, Vec8d hi) {
    return Vec8d(_mm512_min_pd(hi.v, _mm512_max_pd(lo.v, x.v)));
  }
  friend FO_INLINE __mmask8 fo_gt(Vec8d a, Vec8d b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_GT_OQ); }
  friend FO_INLINE __mmask8 fo_lt(Vec8d a, Vec8d b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
  friend FO_INLINE Vec8d fo_select(__mmask8 m, Vec8d a, Vec8d b) { return Vec8d(_mm512_mask_blend_pd(m, b.v, a.v)); }
  friend FO_INLINE double fo_sum(Vec8d a) { return _mm512_reduce_add_pd(a.v); }
};

template <> struct VecOf<float> { using type = Vec16f; };
template <> struct VecOf<double> { using type = Vec8d; };

template <> struct Loader<Vec16f> {
  static FO_INLINE Vec16f load(const float* p) { return Vec16f(_mm512_loadu_ps(p)); }
  static FO_INLINE Vec16f load(const bf16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return Vec16f(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
  }
  static FO_INLINE Vec16f load(const fp16_t* p) {
    return Vec16f(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
};
template <> struct Loader<Vec8d> {
  static FO_INLINE Vec8d load(const double* p) { return Vec8d(_mm512_loadu_pd(p)); }
  // Widening loads: 8 elements of another storage type as doubles (grad-norm reductions).
  static FO_INLINE Vec8d load(const float* p) { return Vec8d(_mm512_cvtps_pd(_mm256_loadu_ps(p))); }
  static FO_INLINE Vec8d load(const bf16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return Vec8d(_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))));
  }
  static FO_INLINE Vec8d load(const fp16_t* p) {
    return Vec8d(_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
  }
};

FO_INLINE void store(float* p, Vec16f x) { _mm512_storeu_ps(p, x.v); }
FO_INLINE void store(double* p, Vec8d x) { _mm512_storeu_pd(p, x.v); }
FO_INLINE void store(bf16_t* p, Vec16f x) {
  // Round to nearest even as to_bf16 does, quiet NaN for NaN.
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  const __m512i result = _mm512_mask_blend_epi32(nan, rounded, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(result));
}
FO_INLINE void store(fp16_t* p, Vec16f x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Sixteen unsigned 32-bit lanes, for the rounding-bits hash of dtype.h.
struct Vec16u {
  __m512i v;
  FO_INLINE Vec16u() = default;
  FO_INLINE explicit Vec16u(__m512i x) : v(x) {}
  FO_INLINE explicit Vec16u(uint32_t s) : v(_mm512_set1_epi32(int(s))) {}
  friend FO_INLINE Vec16u operator+(Vec16u a, Vec16u b) { return Vec16u(_mm512_add_epi32(a.v, b.v)); }
  friend FO_INLINE Vec16u operator*(Vec16u a, Vec16u b) { return Vec16u(_mm512_mullo_epi32(a.v, b.v)); }
  friend FO_INLINE Vec16u operator^(Vec16u a, Vec16u b) { return Vec16u(_mm512_xor_si512(a.v, b.v)); }
  friend FO_INLINE Vec16u operator>>(Vec16u a, int n) { return Vec16u(_mm512_srli_epi32(a.v, n)); }
};

// rounding_bits(seed, first + l) in lane l.
FO_INLINE Vec16u rounding_bits_lanes(uint64_t seed, uint64_t first) {
  const __m512i base = _mm512_set1_epi32(int(uint32_t(first)));
  const __m512i lo = _mm512_add_epi32(base, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i hi = _mm512_set1_epi32(int(uint32_t(first >> 32)));
  const __mmask16 carry = _mm512_cmplt_epu32_mask(lo, base);  // the low half wrapped past 2^32
  return rounding_bits_of_halves(seed, Vec16u(lo), Vec16u(_mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1))));
}

// to_bf16_stochastic and to_fp16_stochastic (dtype.h) lane by lane, bit for bit.
FO_INLINE void store_stochastic(bf16_t* p, Vec16f x, Vec16u bits) {
  const __m512i truncated = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(x.v), _mm512_srli_epi32(bits.v, 16)), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  const __m512i result = _mm512_mask_blend_epi32(nan, truncated, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(result));
}
FO_INLINE void store_stochastic(fp16_t* p, Vec16f x, Vec16u bits) {
  const __m256i nearest_half = _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 nearest_value = _mm512_cvtph_ps(nearest_half);
  const __m512i nearest = _mm512_cvtepu16_epi32(nearest_half);
  const __m512 abs_x = fo_abs(x).v;
  const __mmask16 up = _mm512_cmp_ps_mask(fo_abs(Vec16f(nearest_value)).v, abs_x, _CMP_LT_OQ);
  const __m512i other = _mm512_add_epi32(nearest, _mm512_mask_blend_epi32(up, _mm512_set1_epi32(-1), _mm512_set1_epi32(1)));
  const __m512 other_value = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(other));
  const __m512 chance = _mm512_div_ps(_mm512_sub_ps(x.v, nearest_value), _mm512_sub_ps(other_value, nearest_value));
  const __m512 uniform = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bits.v, 8)), _mm512_set1_ps(0x1.0p-24f));
  const __mmask16 keep = _mm512_cmp_ps_mask(abs_x, _mm512_set1_ps(65504.0f), _CMP_NLT_UQ) |
                         _mm512_cmp_ps_mask(nearest_value, x.v, _CMP_EQ_OQ);
  const __mmask16 take_other = _mm512_cmp_ps_mask(uniform, chance, _CMP_LT_OQ) & ~keep;
  const __m512i result = _mm512_mask_blend_epi32(take_other, nearest, other);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(result));
}
template <typename Storage>
FO_INLINE void store_stochastic(Storage* p, Vec16f x, uint64_t seed, uint64_t first_index) {
  store_stochastic(p, x, rounding_bits_lanes(seed, first_index));
}

#elif defined(__AVX2__)

struct Vec8f {
  static constexpr int kWidth = 8;
  __m256 v;
  FO_INLINE Vec8f() = default;
  FO_INLINE explicit Vec8f(__m256 x) : v(x) {}
  FO_INLINE Vec8f(float s) : v(_mm256_set1_ps(s)) {}
  FO_VEC_ARITH(Vec8f, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_div_ps)
  friend FO_INLINE Vec8f operator-(Vec8f a) { return Vec8f(_mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f))); }
  friend FO_INLINE Vec8f fo_sqrt(Vec8f a) { return Vec8f(_mm256_sqrt_ps(a.v)); }
  friend FO_INLINE Vec8f fo_maximum(Vec8f a, Vec8f b) {
    // max_ps returns b when either is NaN; put a back where a is NaN (torch.maximum).
    const __m256 a_nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
    return Vec8f(_mm256_blendv_ps(_mm256_max_ps(a.v, b.v), a.v, a_nan));
  }
  friend FO_INLINE Vec8f fo_abs(Vec8f a) { return Vec8f(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)); }
  friend FO_INLINE Vec8f fo_sign(Vec8f a) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(zero, a.v, _CMP_LT_OQ), _mm256_set1_ps(1.0f));
    const __m256 neg = _mm256_and_ps(_mm256_cmp_ps(a.v, zero, _CMP_LT_OQ), _mm256_set1_ps(-1.0f));
    return Vec8f(_mm256_or_ps(pos, neg));
  }
  friend FO_INLINE Vec8f fo_clamp(Vec8f x, Vec8f lo, Vec8f hi) {
    // max/min_ps return the second operand when either is NaN: keep x second so NaN stays.
    return Vec8f(_mm256_min_ps(hi.v, _mm256_max_ps(lo.v, x.v)));
  }
  friend FO_INLINE Vec8f fo_gt(Vec8f a, Vec8f b) { return Vec8f(_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)); }
  friend FO_INLINE Vec8f fo_lt(Vec8f a, Vec8f b) { return Vec8f(_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)); }
  friend FO_INLINE Vec8f fo_select(Vec8f mask, Vec8f a, Vec8f b) { return Vec8f(_mm256_blendv_ps(b.v, a.v, mask.v)); }
  friend FO_INLINE double fo_sum(Vec8f a) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a.v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1));
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, _mm256_add_pd(lo, hi));
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  }
};

struct Vec4d {
  static constexpr int kWidth = 4;
  __m256d v;
  FO_INLINE Vec4d() = default;
  FO_INLINE explicit Vec4d(__m256d x) : v(x) {}
  FO_INLINE Vec4d(double s) : v(_mm256_set1_pd(s)) {}
  FO_VEC_ARITH(Vec4d, _mm256_add_pd, _mm256_sub_pd, _mm256_mul_pd, _mm256_div_pd)
  friend FO_INLINE Vec4d operator-(Vec4d a) { return Vec4d(_mm256_xor_pd(a.v, _mm256_set1_pd(-0.0))); }
  friend FO_INLINE Vec4d fo_sqrt(Vec4d a) { return Vec4d(_mm256_sqrt_pd(a.v)); }
  friend FO_INLINE Vec4d fo_maximum(Vec4d a, Vec4d b) {
    const __m256d a_nan = _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q);
    return Vec4d(_mm256_blendv_pd(_mm256_max_pd(a.v, b.v), a.v, a_nan));
  }
  friend FO_INLINE Vec4d fo_abs(Vec4d a) { return Vec4d(_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)); }
  friend FO_INLINE Vec4d fo_sign(Vec4d a) {
    const __m256d zero = _mm256_setzero_pd();
    const __m256d pos = _mm256_and_pd(_mm256_cmp_pd(zero, a.v, _CMP_LT_OQ), _mm256_set1_pd(1.0));
    const __m256d neg = _mm256_and_pd(_mm256_cmp_pd(a.v, zero, _CMP_LT_OQ), _mm256_set1_pd(-1.0));
    return Vec4d(_mm256_or_pd(pos, neg));
  }
  friend FO_INLINE Vec4d fo_clamp(Vec4d x, Vec4d lo, Vec4d hi) {
    return Vec4d(_mm256_min_pd(hi.v, _mm256_max_pd(lo.v, x.v)));
  }
  friend FO_INLINE Vec4d fo_gt(Vec4d a, Vec4d b) { return Vec4d(_mm256_cmp_pd(a.v, b.v, _CMP_GT_OQ)); }
  friend FO_INLINE Vec4d fo_lt(Vec4d a, Vec4d b) { return Vec4d(_mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ)); }
  friend FO_INLINE Vec4d fo_select(Vec4d mask, Vec4d a, Vec4d b) { return Vec4d(_mm256_blendv_pd(b.v, a.v, mask.v)); }
  friend FO_INLINE double fo_sum(Vec4d a) {
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, a.v);
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  }
};

template <> struct VecOf<float> { using type = Vec8f; };
template <> struct VecOf<double> { using type = Vec4d; };

template <> struct Loader<Vec8f> {
  static FO_INLINE Vec8f load(const float* p) { return Vec8f(_mm256_loadu_ps(p)); }
  static FO_INLINE Vec8f load(const bf16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return Vec8f(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
  static FO_INLINE Vec8f load(const fp16_t* p) {
    return Vec8f(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};
template <> struct Loader<Vec4d> {
  static FO_INLINE Vec4d load(const double* p) { return Vec4d(_mm256_loadu_pd(p)); }
  // Widening loads: 4 elements of another storage type as doubles (grad-norm reductions).
  static FO_INLINE Vec4d load(const float* p) { return Vec4d(_mm256_cvtps_pd(_mm_loadu_ps(p))); }
  static FO_INLINE Vec4d load(const bf16_t* p) {
    const __m128i wide = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return Vec4d(_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(wide, 16))));
  }
  static FO_INLINE Vec4d load(const fp16_t* p) {
    return Vec4d(_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
  }
};

FO_INLINE void store(float* p, Vec8f x) { _mm256_storeu_ps(p, x.v); }
FO_INLINE void store(double* p, Vec4d x) { _mm256_storeu_pd(p, x.v); }
// 8 x u32 (each < 2^16) as 8 x u16; packus works per 128-bit lane, so fix the order.
FO_INLINE __m128i narrow_to_u16(__m256i lanes) {
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(lanes, lanes), 0xD8));
}

FO_INLINE void store(bf16_t* p, Vec8f x) {
  // Round to nearest even as to_bf16 does, quiet NaN for NaN.
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_to_u16(rounded));
}
FO_INLINE void store(fp16_t* p, Vec8f x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Eight unsigned 32-bit lanes, for the rounding-bits hash of dtype.h.
struct Vec8u {
  __m256i v;
  FO_INLINE Vec8u() = default;
  FO_INLINE explicit Vec8u(__m256i x) : v(x) {}
  FO_INLINE explicit Vec8u(uint32_t s) : v(_mm256_set1_epi32(int(s))) {}
  friend FO_INLINE Vec8u operator+(Vec8u a, Vec8u b) { return Vec8u(_mm256_add_epi32(a.v, b.v)); }
  friend FO_INLINE Vec8u operator*(Vec8u a, Vec8u b) { return Vec8u(_mm256_mullo_epi32(a.v, b.v)); }
  friend FO_INLINE Vec8u operator^(Vec8u a, Vec8u b) { return Vec8u(_mm256_xor_si256(a.v, b.v)); }
  friend FO_INLINE Vec8u operator>>(Vec8u a, int n) { return Vec8u(_mm256_srli_epi32(a.v, n)); }
};

// rounding_bits(seed, first + l) in lane l.
FO_INLINE Vec8u rounding_bits_lanes(uint64_t seed, uint64_t first) {
  const __m256i base = _mm256_set1_epi32(int(uint32_t(first)));
  const __m256i lo = _mm256_add_epi32(base, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  // The low half wrapped past 2^32 where lo < base unsigned (compared as signed, sign flipped):
  // those lanes carry one into the high half (the mask is -1 there).
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(lo, sign));
  const __m256i hi = _mm256_sub_epi32(_mm256_set1_epi32(int(uint32_t(first >> 32))), carry);
  return rounding_bits_of_halves(seed, Vec8u(lo), Vec8u(hi));
}

// to_bf16_stochastic and to_fp16_stochastic (dtype.h) lane by lane, bit for bit.
FO_INLINE void store_stochastic(bf16_t* p, Vec8f x, Vec8u bits) {
  __m256i truncated = _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(x.v), _mm256_srli_epi32(bits.v, 16)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  truncated = _mm256_blendv_epi8(truncated, _mm256_set1_epi32(0x7FC0), nan);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_to_u16(truncated));
}
FO_INLINE void store_stochastic(fp16_t* p, Vec8f x, Vec8u bits) {
  const __m128i nearest_half = _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 nearest_value = _mm256_cvtph_ps(nearest_half);
  const __m256i nearest = _mm256_cvtepu16_epi32(nearest_half);
  const __m256 abs_x = fo_abs(x).v;
  const __m256 up = _mm256_cmp_ps(fo_abs(Vec8f(nearest_value)).v, abs_x, _CMP_LT_OQ);
  const __m256i step = _mm256_blendv_epi8(_mm256_set1_epi32(-1), _mm256_set1_epi32(1), _mm256_castps_si256(up));
  const __m256i other = _mm256_add_epi32(nearest, step);
  const __m256 other_value = _mm256_cvtph_ps(narrow_to_u16(other));
  const __m256 chance = _mm256_div_ps(_mm256_sub_ps(x.v, nearest_value), _mm256_sub_ps(other_value, nearest_value));
  const __m256 uniform = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits.v, 8)), _mm256_set1_ps(0x1.0p-24f));
  const __m256 keep = _mm256_or_ps(_mm256_cmp_ps(abs_x, _mm256_set1_ps(65504.0f), _CMP_NLT_UQ),
                                   _mm256_cmp_ps(nearest_value, x.v, _CMP_EQ_OQ));
  const __m256 take_other = _mm256_andnot_ps(keep, _mm256_cmp_ps(uniform, chance, _CMP_LT_OQ));
  const __m256i result = _mm256_blendv_epi8(nearest, other, _mm256_castps_si256(take_other));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_to_u16(result));
}
template <typename Storage>
FO_INLINE void store_stochastic(Storage* p, Vec8f x, uint64_t seed, uint64_t first_index) {
  store_stochastic(p, x, rounding_bits_lanes(seed, first_index));
}

#endif

#undef FO_VEC_ARITH

}  // namespace FO_ISA
}  // namespace cpu
}  // namespace fusedoptim
