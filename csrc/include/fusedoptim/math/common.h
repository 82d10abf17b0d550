// Elementwise building blocks shared by the update rules. Each rule is a template on the
// value type V: a scalar (float, double: CUDA and CPU tails) or a SIMD wrapper from
// fusedoptim/cpu/vec.h (found by argument-dependent lookup). Scalars S are the rule's
// coefficients in the math type, converted by V(s).
#pragma once
#include <cmath>

#include "fusedoptim/macros.h"

namespace fusedoptim {
namespace math {
inline namespace FO_ISA {

FO_HOST_DEVICE FO_INLINE float fo_sqrt(float x) { return sqrtf(x); }
FO_HOST_DEVICE FO_INLINE double fo_sqrt(double x) { return sqrt(x); }

// torch.maximum: NaN if either operand is NaN.
template <typename T>
FO_HOST_DEVICE FO_INLINE T fo_maximum(T a, T b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

FO_HOST_DEVICE FO_INLINE float fo_abs(float x) { return fabsf(x); }
FO_HOST_DEVICE FO_INLINE double fo_abs(double x) { return fabs(x); }

// torch.sign: 0 for zeros and NaN.
template <typename T>
FO_HOST_DEVICE FO_INLINE T fo_sign(T x) {
  return T(int(T(0) < x) - int(x < T(0)));
}

// torch.clamp(x, lo, hi): NaN stays NaN.
template <typename T>
FO_HOST_DEVICE FO_INLINE T fo_clamp(T x, T lo, T hi) {
  if (x != x) return x;
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// A value's lanes summed in double (reductions).
FO_HOST_DEVICE FO_INLINE double fo_sum(float x) { return double(x); }
FO_HOST_DEVICE FO_INLINE double fo_sum(double x) { return x; }

// Lane masks: bool for scalars, a mask type for SIMD wrappers (fusedoptim/cpu/vec.h).
template <typename T> FO_HOST_DEVICE FO_INLINE bool fo_gt(T a, T b) { return a > b; }
template <typename T> FO_HOST_DEVICE FO_INLINE bool fo_lt(T a, T b) { return a < b; }
template <typename T> FO_HOST_DEVICE FO_INLINE T fo_select(bool mask, T if_true, T if_false) {
  return mask ? if_true : if_false;
}

// NOTE: [Lerp as torch computes it]
// torch.lerp(self, end, w) evaluates self + w * (end - self) when |w| < 0.5 and
// end - (end - self) * (1 - w) otherwise, to keep precision near both ends. The branch
// depends only on the scalar weight, so the host decides it once per step.
template <typename V, typename S>
FO_HOST_DEVICE FO_INLINE V fo_lerp(V self, V end, S weight, bool weight_is_small) {
  return weight_is_small ? self + V(weight) * (end - self)
                         : end - (end - self) * V(S(1) - weight);
}

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
