// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update
// rule, written once for every backend.
//
// Per element:
//   g = maximize ? -grad : grad
//   c = exp_avg * beta1 + (1 - beta1) * g
//   p = p * (1 - lr * weight_decay)                (weight_decay != 0)
//   p = p + (-lr) * sign(c)
//   exp_avg = exp_avg * beta2 + (1 - beta2) * g
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct LionHyper {
  double lr, beta1, beta2, weight_decay;
  bool maximize;
};

inline namespace FO_ISA {

// States: exp_avg.
template <typename S>
struct LionRule {
  static constexpr int kMaxStates = 1;
  int num_states = 1;
  S neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor;
  bool maximize, has_weight_decay;

  FO_HOST_DEVICE explicit LionRule(const LionHyper& h)
      : neg_lr(S(-h.lr)), beta1(S(h.beta1)), one_minus_beta1(S(1.0 - h.beta1)), beta2(S(h.beta2)),
        one_minus_beta2(S(1.0 - h.beta2)), decay_factor(S(1.0 - h.lr * h.weight_decay)), maximize(h.maximize),
        has_weight_decay(h.weight_decay != 0.0) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>&) const {
    V& exp_avg = state[0];
    if (maximize) grad = -grad;
    const V direction = exp_avg * V(beta1) + V(one_minus_beta1) * grad;
    if (has_weight_decay) param = param * V(decay_factor);
    param = param + V(neg_lr) * fo_sign(direction);
    exp_avg = exp_avg * V(beta2) + V(one_minus_beta2) * grad;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
