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
