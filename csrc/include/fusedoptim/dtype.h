// Storage types of params and states, and their conversions to the math type.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fusedoptim/macros.h"

namespace fusedoptim {

// Storage dtypes a bucket can hold. Complex params are stored as their real dtype (a real
// view of twice the length), as torch's own optimizers treat them.
enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

// The type the update rule computes in: fp64 for fp64, fp32 for everything else.
template <typename Storage> struct math_type { using type = float; };
template <> struct math_type<double> { using type = double; };
template <typename Storage> using math_t = typename math_type<Storage>::type;

inline namespace FO_ISA {

FO_HOST_DEVICE FO_INLINE uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
FO_HOST_DEVICE FO_INLINE float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

FO_HOST_DEVICE FO_INLINE float to_float(bf16_t v) { return bits_float(uint32_t(v.bits) << 16); }

// Round to nearest even, NaN kept quiet: the rounding torch (c10::BFloat16) uses.
FO_HOST_DEVICE FO_INLINE bf16_t to_bf16(float f) {
  if (f != f) return bf16_t{0x7FC0};
  uint32_t u = float_bits(f);
  uint32_t rounding_bias = ((u >> 16) & 1u) + 0x7FFFu;
  return bf16_t{uint16_t((u + rounding_bias) >> 16)};
}

// NOTE: [Portable half conversions]
// IEEE binary16 <-> binary32 with round to nearest even, in plain float and integer
// arithmetic (the method of the FP16 library, also what c10::Half uses), so the scalar path
// needs no F16C and gives exactly what the hardware conversions give. It relies on IEEE
// float rounding: the project builds with -ffp-contract=off and never with fast-math.
FO_HOST_DEVICE FO_INLINE float to_float(fp16_t v) {
  const uint32_t w = uint32_t(v.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = 0x1.0p-112f;
  const float normalized = bits_float((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = bits_float((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < denormalized_cutoff ? float_bits(denormalized) : float_bits(normalized));
  return bits_float(result);
}

FO_HOST_DEVICE FO_INLINE fp16_t to_fp16(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  const uint32_t w = float_bits(f);
  float base = (bits_float(w & 0x7FFFFFFFu) * scale_to_inf) * scale_to_zero;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return fp16_t{uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// NOTE: [Stochastic rounding]
// stochastic_rounding=True rounds a 16-bit param's fp32 result to one of its two 16-bit
// neighbours with probabilities that make the expected value the fp32 result (a value a
// quarter of the way up rounds up one time in four), so updates below half an ulp survive on
// average. The random bits are counter-based: a hash of (the step's seed, the element's flat
// index in its bucket), so a result depends on neither the thread count nor the instruction
// set, and the host draws one 64-bit seed per bucket and step from torch's default
// generator (torch.manual_seed reproduces a run). bf16: the fp32 bits plus 16 random low
// bits, truncated. fp16: the nearest half and its other neighbour, the other one chosen with
// probability |x - nearest| / ulp. NaN and infinities stay as round-to-nearest gives them;
// fp16 values of magnitude >= 65504 too (their upper neighbour would be infinity).
//
// The hash is written once over a type U of unsigned 32-bit lanes: uint32_t here, the SIMD
// integer vectors of cpu/vec.h for a vector of consecutive indices, so every instruction set
// draws the same bits for the same index.
template <typename U>
FO_HOST_DEVICE FO_INLINE U mix32_lanes(U x) {
  x = x ^ (x >> 16);
  x = x * U(0x7FEB352Du);
  x = x ^ (x >> 15);
  x = x * U(0x846CA68Bu);
  x = x ^ (x >> 16);
  return x;
}

// The random bits of the elements whose indices have these low and high 32-bit halves.
template <typename U>
FO_HOST_DEVICE FO_INLINE U rounding_bits_of_halves(uint64_t seed, U index_lo, U index_hi) {
  return mix32_lanes(mix32_lanes(index_lo ^ U(uint32_t(seed))) + index_hi * U(0x9E3779B9u) + U(uint32_t(seed >> 32)));
}

FO_HOST_DEVICE FO_INLINE uint32_t fo_mix32(uint32_t x) { return mix32_lanes(x); }

FO_HOST_DEVICE FO_INLINE uint32_t rounding_bits(uint64_t seed, uint64_t index) {
  return rounding_bits_of_halves(seed, uint32_t(index), uint32_t(index >> 32));
}

FO_HOST_DEVICE FO_INLINE bf16_t to_bf16_stochastic(float f, uint32_t bits) {
  if (f != f) return bf16_t{0x7FC0};
  return bf16_t{uint16_t((float_bits(f) + (bits >> 16)) >> 16)};
}

FO_HOST_DEVICE FO_INLINE fp16_t to_fp16_stochastic(float f, uint32_t bits) {
  const fp16_t nearest = to_fp16(f);
  const float a = to_float(nearest);
  if (!(fabsf(f) < 65504.0f) || a == f) return nearest;
  const fp16_t other{uint16_t(fabsf(a) < fabsf(f) ? nearest.bits + 1 : nearest.bits - 1)};
  const float b = to_float(other);
  const float chance = (f - a) / (b - a);  // exact differences: both within a half ulp of f
  return float(bits >> 8) * 0x1.0p-24f < chance ? other : nearest;
}

FO_HOST_DEVICE FO_INLINE void store_stochastic(bf16_t* p, float v, uint32_t bits) { *p = to_bf16_stochastic(v, bits); }
FO_HOST_DEVICE FO_INLINE void store_stochastic(fp16_t* p, float v, uint32_t bits) { *p = to_fp16_stochastic(v, bits); }

// Scalar load/store between a storage type and its math type.
FO_HOST_DEVICE FO_INLINE float load_scalar(const float* p) { return *p; }
FO_HOST_DEVICE FO_INLINE double load_scalar(const double* p) { return *p; }
FO_HOST_DEVICE FO_INLINE float load_scalar(const bf16_t* p) { return to_float(*p); }
FO_HOST_DEVICE FO_INLINE float load_scalar(const fp16_t* p) { return to_float(*p); }
FO_HOST_DEVICE FO_INLINE void store_scalar(float* p, float v) { *p = v; }
FO_HOST_DEVICE FO_INLINE void store_scalar(double* p, double v) { *p = v; }
FO_HOST_DEVICE FO_INLINE void store_scalar(bf16_t* p, float v) { *p = to_bf16(v); }
FO_HOST_DEVICE FO_INLINE void store_scalar(fp16_t* p, float v) { *p = to_fp16(v); }

}  // namespace FO_ISA
}  // namespace fusedoptim
