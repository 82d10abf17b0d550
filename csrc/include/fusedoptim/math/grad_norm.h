// Global gradient norms and gradient scaling, for fusedoptim.clip_grad_norm_ and the
// optimizers' max_grad_norm: written once for every backend.
//
// A p-norm of all the grads is reduced as one number per segment (NOTE: [Deterministic
// reductions] in cpu/sweep.h), in double whatever the grads' dtype:
//   p = 1:        sum |g|
//   p = 2:        sum g * g
//   p = inf:      max |g|          (NaN if any |g| is NaN, as torch's inf norm)
//   other p > 0:  sum |g|^p
// The host combines the segments in order and takes the 1/p power (csrc/cpu/grad_norm_cpu.cpp).
// Scaling multiplies every grad element by the clip coefficient in the grad's math type:
//   g = g * S(scale)
// which is torch's Tensor.mul_ by a 0-dim coefficient (fp32 for bf16/fp16 grads).
#pragma once
#include <cmath>

#include "fusedoptim/math/common.h"

namespace fusedoptim {
namespace math {

enum class NormKind : int32_t { kOne = 0, kTwo = 1, kInf = 2, kPower = 3 };

struct GradNormHyper {
  NormKind kind;
  double p;  // the norm type, used by kPower
};

struct GradScaleHyper {
  double scale;
};

inline namespace FO_ISA {

// The per-element term and how two partial results combine, for a double value type V
// (a scalar or a SIMD vector of doubles). kPower has no SIMD pow: it runs on scalars.
template <NormKind K>
struct GradNormRule {
  static constexpr bool kVectorizable = K != NormKind::kPower;
  double p;

  FO_HOST_DEVICE explicit GradNormRule(const GradNormHyper& h) : p(h.p) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE V term(V g) const {
    if constexpr (K == NormKind::kTwo) {
      return g * g;
    } else if constexpr (K == NormKind::kPower) {
      return pow(fabs(g), p);
    } else {
      return fo_abs(g);
    }
  }

  template <typename V>
  FO_HOST_DEVICE FO_INLINE V combine(V a, V b) const {
    if constexpr (K == NormKind::kInf) {
      return fo_maximum(a, b);
    } else {
      return a + b;
    }
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
