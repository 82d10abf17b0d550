// NAdam (with decoupled weight decay as an option): the update rule, written once for every
// backend.
//
// Per element, in torch.optim.NAdam's order of operations (t = the param's step after
// increment; mu_product is the param's own 0-dim state, advanced by NadamStepCoefs):
//   g = maximize ? -grad : grad
//   p = p * (1 - lr * weight_decay)                (decoupled, weight_decay != 0)
//   g = g + weight_decay * p                       (coupled, weight_decay != 0)
//   exp_avg = lerp(exp_avg, g, 1 - beta1)
//   exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
//   denom = sqrt(exp_avg_sq / (1 - beta2^t)) + eps
//   p = p + (c_grad * g) / denom                   c_grad = -lr * (1 - mu_t) / (1 - mu_product)
//   p = p + (c_avg * exp_avg) / denom              c_avg = -lr * mu_{t+1} / (1 - mu_product * mu_{t+1})
// with mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)).
#pragma once
#include <cmath>

#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct NadamHyper {
  double lr, beta1, beta2, eps, weight_decay, momentum_decay;
  bool decoupled_weight_decay, maximize;
  double decay_factor;  // 1 - lr * weight_decay, computed by the caller as torch does
  bool lr_is_float32;   // a float32 Tensor lr: torch computes the step sizes in float32 (math/rule.h)
};

// c[0] = 1 - beta2^t, c[1] = c_grad, c[2] = c_avg at step t, advancing the param's
// mu_product (NOTE: [Step coefficients] in math/rule.h).
struct NadamStepCoefs {
  static constexpr int kExtraScalars = 1;
  static constexpr int kMuProduct = 1;  // scalars: step, mu_product
  double bias_correction2, grad_step, avg_step;

  FO_HOST_DEVICE static double momentum_at(const NadamHyper& h, double step) {
    return h.beta1 * (1.0 - 0.5 * pow(0.96, step * h.momentum_decay));
  }

  template <typename Scalars>
  FO_HOST_DEVICE static NadamStepCoefs advance(const NadamHyper& h, double step, Scalars& scalars) {
    const double mu = momentum_at(h, step);
    const double mu_next = momentum_at(h, step + 1.0);
    // mu_product *= mu: a float32 state multiplies in float32.
    const double old_product = scalars.get(kMuProduct);
    double product = old_product * mu;
    if (!scalars.is_double(kMuProduct)) {
      const float product32 = static_cast<float>(old_product) * static_cast<float>(mu);
      product = double(product32);
    }
    scalars.set(kMuProduct, product);
    const double product_next = product * mu_next;
    NadamStepCoefs out{1.0 - pow(h.beta2, step), 0.0, 0.0};
    // -lr * (1 - mu) / (1 - product) and (-lr * mu_next) / (1 - product_next), each operation
    // in the lr's dtype (NOTE: [Tensor learning rates]).
    if (h.lr_is_float32) {
      const float lr = static_cast<float>(h.lr);
      const float grad_step = (-lr * static_cast<float>(1.0 - mu)) / static_cast<float>(1.0 - product);
      const float avg_step = (-lr * static_cast<float>(mu_next)) / static_cast<float>(1.0 - product_next);
      out.grad_step = double(grad_step);
      out.avg_step = double(avg_step);
    } else {
      out.grad_step = -h.lr * (1.0 - mu) / (1.0 - product);
      out.avg_step = (-h.lr * mu_next) / (1.0 - product_next);
    }
    return out;
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = bias_correction2;
    c[1] = grad_step;
    c[2] = avg_step;
    c[3] = 0.0;
  }
};

inline namespace FO_ISA {

// States: exp_avg, exp_avg_sq. Per tensor: c[0] = 1 - beta2^t, c[1] = c_grad, c[2] = c_avg.
template <typename S>
struct NadamRule {
  static constexpr int kMaxStates = 2;
  int num_states = 2;
  S one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  bool maximize, decoupled, has_weight_decay, lerp_weight_is_small;

  FO_HOST_DEVICE explicit NadamRule(const NadamHyper& h)
      : one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)), one_minus_beta2(S(1.0 - h.beta2)), eps(S(h.eps)),
        weight_decay(S(h.weight_decay)), decay_factor(S(h.decay_factor)), maximize(h.maximize),
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
    const V denom = fo_sqrt(exp_avg_sq / V(t.c[0])) + V(eps);
    param = param + V(t.c[1]) * grad / denom;
    param = param + V(t.c[2]) * exp_avg / denom;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
