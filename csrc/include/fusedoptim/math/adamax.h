// Adamax: the update rule, written once for every backend.
//
// Per element, in torch.optim.Adamax's order of operations (t = the param's step after
// increment; clr computed per param on the host in double):
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (weight_decay != 0)
//   exp_avg = lerp(exp_avg, g, 1 - beta1)
//   exp_inf = maximum(exp_inf * beta2, |g| + eps)
//   p = p + (-clr * exp_avg) / exp_inf             clr = lr / (1 - beta1^t)
#pragma once
#include <cmath>

#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct AdamaxHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool maximize;
  bool lr_is_float32;  // a float32 Tensor lr: torch computes clr in float32 (math/rule.h)
};

// c[0] = -clr at step t (NOTE: [Step coefficients] in math/rule.h).
struct AdamaxStepCoefs {
  static constexpr int kExtraScalars = 0;
  double neg_clr;

  FO_HOST_DEVICE static AdamaxStepCoefs at_step(const AdamaxHyper& h, double step) {
    const double bias_correction = 1.0 - pow(h.beta1, step);
    if (h.lr_is_float32) {  // NOTE: [Tensor learning rates]
      const float clr = static_cast<float>(h.lr) / static_cast<float>(bias_correction);
      return {-double(clr)};
    }
    return {-(h.lr / bias_correction)};
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = neg_clr;
    c[1] = c[2] = c[3] = 0.0;
  }
};

inline namespace FO_ISA {

// States: exp_avg, exp_inf. Per tensor: c[0] = -clr.
template <typename S>
struct AdamaxRule {
  static constexpr int kMaxStates = 2;
  int num_states = 2;
  S one_minus_beta1, beta2, eps, weight_decay;
  bool maximize, has_weight_decay, lerp_weight_is_small;

  FO_HOST_DEVICE explicit AdamaxRule(const AdamaxHyper& h)
      : one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)), eps(S(h.eps)), weight_decay(S(h.weight_decay)),
        maximize(h.maximize), has_weight_decay(h.weight_decay != 0.0),
        lerp_weight_is_small(fabs(double(S(1.0 - h.beta1))) < 0.5) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>& t) const {
    V& exp_avg = state[0];
    V& exp_inf = state[1];
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    exp_avg = fo_lerp(exp_avg, grad, one_minus_beta1, lerp_weight_is_small);
    exp_inf = fo_maximum(exp_inf * V(beta2), fo_abs(grad) + V(eps));
    param = param + V(t.c[0]) * exp_avg / exp_inf;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
