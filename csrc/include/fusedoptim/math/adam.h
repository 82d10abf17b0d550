// Adam and AdamW (decoupled weight decay), with amsgrad and maximize: the update rule,
// written once for every backend (see NOTE: [One namespace per instruction set]).
//
// Per element, in torch.optim.Adam's order of operations (t = the param's step after
// increment; bias corrections computed per param on the host in double):
//   g = maximize ? -grad : grad
//   p = p * (1 - lr * weight_decay)                (decoupled, weight_decay != 0)
//   g = g + weight_decay * p                       (coupled, weight_decay != 0)
//   m = lerp(m, g, 1 - beta1)
//   v = v * beta2 + ((1 - beta2) * g) * g
//   v_max = maximum(v_max, v)                      (amsgrad)
//   denom = sqrt(amsgrad ? v_max : v) * (1 / sqrt(1 - beta2^t)) + eps   (see NOTE: [One division])
//   p = p + ((-lr / (1 - beta1^t)) * m) / denom
#pragma once
#include <cmath>

#include "fusedoptim/math/common.h"

namespace fusedoptim {
namespace math {

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
  double decay_factor;  // 1 - lr * weight_decay, computed by the caller as torch does (fusedoptim/adam.py)
};

// NOTE: [One division]
// torch divides sqrt(v) by sqrt(bias_correction2) and then the moment by the denominator.
// Per element that is a square root and two divisions, which makes the kernel compute-bound
// on a 2-core AVX2 machine (bf16 most of all). We multiply by the reciprocal, computed once
// per step count on the host in double: at most one rounding of difference per element, far
// inside the parity tolerances, and about 10% faster on the small-tensor benchmark.

// Per-param coefficients that depend on the param's own step count, in double, computed as
// torch's single-tensor path computes them in Python floats.
struct AdamStepCoefs {
  double neg_step_size, inv_bias_correction2_sqrt;

  FO_HOST_DEVICE static AdamStepCoefs at_step(const AdamHyper& h, double step) {
    const double bias_correction1 = 1.0 - pow(h.beta1, step);
    const double bias_correction2 = 1.0 - pow(h.beta2, step);
    return {-(h.lr / bias_correction1), 1.0 / pow(bias_correction2, 0.5)};
  }
};

inline namespace FO_ISA {

template <typename S>
struct AdamCoefs {
  S one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool amsgrad, maximize, decoupled, has_weight_decay, lerp_weight_is_small;

  FO_HOST_DEVICE explicit AdamCoefs(const AdamHyper& h)
      : one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)), one_minus_beta2(S(1.0 - h.beta2)),
        eps(S(h.eps)), weight_decay(S(h.weight_decay)), decay_factor(S(h.decay_factor)),
        amsgrad(h.amsgrad), maximize(h.maximize), decoupled(h.decoupled_weight_decay),
        has_weight_decay(h.weight_decay != 0.0),
        lerp_weight_is_small(fabs(double(S(1.0 - h.beta1))) < 0.5) {}
};

template <typename V, typename S>
FO_HOST_DEVICE FO_INLINE void adam_update(V& param, V grad, V& exp_avg, V& exp_avg_sq,
                                          V& max_exp_avg_sq, const AdamCoefs<S>& c,
                                          S neg_step_size, S inv_bias_correction2_sqrt) {
  if (c.maximize) grad = -grad;
  if (c.has_weight_decay) {
    if (c.decoupled) {
      param = param * V(c.decay_factor);
    } else {
      grad = grad + V(c.weight_decay) * param;
    }
  }
  exp_avg = fo_lerp(exp_avg, grad, c.one_minus_beta1, c.lerp_weight_is_small);
  exp_avg_sq = exp_avg_sq * V(c.beta2) + V(c.one_minus_beta2) * grad * grad;
  V second_moment = exp_avg_sq;
  if (c.amsgrad) {
    max_exp_avg_sq = fo_maximum(max_exp_avg_sq, exp_avg_sq);
    second_moment = max_exp_avg_sq;
  }
  const V denom = fo_sqrt(second_moment) * V(inv_bias_correction2_sqrt) + V(c.eps);
  param = param + V(neg_step_size) * exp_avg / denom;
}

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
