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

#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
  double decay_factor;  // 1 - lr * weight_decay, computed by the caller as torch does (fusedoptim/adam.py)

  // The hyperparameters with the lr a CUDA kernel read on the device (NOTE: [Device learning
  // rates] in csrc/cuda/sweep.cuh): AdamW's decay factor follows it.
  FO_HOST_DEVICE AdamHyper with_lr(double device_lr) const {
    AdamHyper h = *this;
    h.lr = device_lr;
    h.decay_factor = 1.0 - device_lr * weight_decay;
    return h;
  }
};

// NOTE: [One division]
// torch divides sqrt(v) by sqrt(bias_correction2) and then the moment by the denominator.
// Per element that is a square root and two divisions, which makes the kernel compute-bound
// on a 2-core AVX2 machine (bf16 most of all). We multiply by the reciprocal, computed once
// per step count on the host in double: at most one rounding of difference per element, far
// inside the parity tolerances, and about 10% faster on the small-tensor benchmark.

// Per-param coefficients that depend on the param's own step count, in double, computed as
// torch's single-tensor path computes them in Python floats (NOTE: [Step coefficients] in
// math/rule.h).
struct AdamStepCoefs {
  static constexpr int kExtraScalars = 0;
  double neg_step_size, inv_bias_correction2_sqrt;

  FO_HOST_DEVICE static AdamStepCoefs at_step(const AdamHyper& h, double step) {
    const double bias_correction1 = 1.0 - pow(h.beta1, step);
    const double bias_correction2 = 1.0 - pow(h.beta2, step);
    return {-(h.lr / bias_correction1), 1.0 / pow(bias_correction2, 0.5)};
  }

  // As TensorEntry::coef (AdamRule's c[0], c[1]).
  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = neg_step_size;
    c[1] = inv_bias_correction2_sqrt;
    c[2] = 0.0;
    c[3] = 0.0;
  }
};

inline namespace FO_ISA {

// States: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad). Per tensor: c[0] = -step_size,
// c[1] = 1 / sqrt(bias_correction2) (AdamStepCoefs).
template <typename S>
struct AdamRule {
  static constexpr int kMaxStates = 3;
  int num_states;
  S one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool amsgrad, maximize, decoupled, has_weight_decay, lerp_weight_is_small;

  FO_HOST_DEVICE explicit AdamRule(const AdamHyper& h)
      : num_states(h.amsgrad ? 3 : 2), one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)),
        one_minus_beta2(S(1.0 - h.beta2)), eps(S(h.eps)), weight_decay(S(h.weight_decay)),
        decay_factor(S(h.decay_factor)), amsgrad(h.amsgrad), maximize(h.maximize),
        decoupled(h.decoupled_weight_decay), has_weight_decay(h.weight_decay != 0.0),
        lerp_weight_is_small(fabs(double(S(1.0 - h.beta1))) < 0.5) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>& t) const {
    V& exp_avg = state[0];
    V& exp_avg_sq = state[1];
    if (maximize) grad = -grad;
    if (has_weight_decay) {
      if (decoupled) {
        param = param * V(decay_factor);
      } else {
        grad = grad + V(weight_decay) * param;
      }
    }
    exp_avg = fo_lerp(exp_avg, grad, one_minus_beta1, lerp_weight_is_small);
    exp_avg_sq = exp_avg_sq * V(beta2) + V(one_minus_beta2) * grad * grad;
    V second_moment = exp_avg_sq;
    if (amsgrad) {
      state[2] = fo_maximum(state[2], exp_avg_sq);
      second_moment = state[2];
    }
    const V denom = fo_sqrt(second_moment) * V(t.c[1]) + V(eps);
    param = param + V(t.c[0]) * exp_avg / denom;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
