// RAdam (with decoupled weight decay as an option): the update rule, written once for every
// backend.
//
// Per element, in torch.optim.RAdam's order of operations (t = the param's step after
// increment; rho_t and the rectification computed per param on the host in double):
//   g = maximize ? -grad : grad
//   p = p * (1 - lr * weight_decay)                (decoupled, weight_decay != 0)
//   g = g + weight_decay * p                       (coupled, weight_decay != 0)
//   exp_avg = lerp(exp_avg, g, 1 - beta1)
//   exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
//   m = exp_avg / (1 - beta1^t)
//   p = p - ((m * lr) * (sqrt(1 - beta2^t) / (sqrt(exp_avg_sq) + eps))) * rect    (rho_t > 5)
//   p = p - m * lr                                                                (otherwise)
#pragma once
#include <cmath>

#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct RadamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled_weight_decay, maximize;
  double decay_factor;  // 1 - lr * weight_decay, computed by the caller as torch does
};

// RAdam's per-step quantities, in double as torch computes them in Python floats (NOTE: [Step
// coefficients] in math/rule.h).
struct RadamStepCoefs {
  static constexpr int kExtraScalars = 0;
  double bias_correction1, bias_correction2_sqrt, rect;
  bool rectified;  // rho_t > 5

  FO_HOST_DEVICE static RadamStepCoefs at_step(const RadamHyper& h, double step) {
    const double bias_correction1 = 1.0 - pow(h.beta1, step);
    const double bias_correction2 = 1.0 - pow(h.beta2, step);
    const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * pow(h.beta2, step) / bias_correction2;
    RadamStepCoefs coefs{bias_correction1, pow(bias_correction2, 0.5), 0.0, rho_t > 5.0};
    if (coefs.rectified) {
      coefs.rect = pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5);
    }
    return coefs;
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = bias_correction1;
    c[1] = bias_correction2_sqrt;
    c[2] = rect;
    c[3] = rectified ? 1.0 : 0.0;
  }
};

inline namespace FO_ISA {

// States: exp_avg, exp_avg_sq. Per tensor: c[0] = 1 - beta1^t, c[1] = sqrt(1 - beta2^t),
// c[2] = rect, c[3] = 1 when rho_t > 5.
template <typename S>
struct RadamRule {
  static constexpr int kMaxStates = 2;
  int num_states = 2;
  S lr, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool maximize, decoupled, has_weight_decay, lerp_weight_is_small;

  FO_HOST_DEVICE explicit RadamRule(const RadamHyper& h)
      : lr(S(h.lr)), one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)), one_minus_beta2(S(1.0 - h.beta2)),
        eps(S(h.eps)), weight_decay(S(h.weight_decay)), decay_factor(S(h.decay_factor)), maximize(h.maximize),
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
    const V corrected = exp_avg / V(t.c[0]);
    if (t.c[3] != S(0)) {
      const V adaptive_lr = V(t.c[1]) / (fo_sqrt(exp_avg_sq) + V(eps));
      param = param - corrected * V(lr) * adaptive_lr * V(t.c[2]);
    } else {
      param = param - corrected * V(lr);
    }
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
