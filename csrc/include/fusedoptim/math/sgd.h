// SGD with momentum, dampening, Nesterov, weight decay and maximize: the update rule,
// written once for every backend (see NOTE: [One namespace per instruction set]).
//
// Per element, in torch.optim.SGD's order of operations:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (weight_decay != 0)
//   buf = first ? g : buf * momentum + (1 - dampening) * g     (momentum != 0)
//   g = nesterov ? g + momentum * buf : buf                    (momentum != 0)
//   p = p + (-lr) * g
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

// Host-side hyperparameters of one step, in double as Python gives them.
struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

inline namespace FO_ISA {

// States: momentum_buffer (when momentum != 0).
template <typename S>
struct SgdRule {
  static constexpr int kMaxStates = 1;
  int num_states;
  S neg_lr, momentum, one_minus_dampening, weight_decay;
  bool nesterov, maximize, has_momentum, has_weight_decay;

  FO_HOST_DEVICE explicit SgdRule(const SgdHyper& h)
      : num_states(h.momentum != 0.0 ? 1 : 0), neg_lr(S(-h.lr)), momentum(S(h.momentum)),
        one_minus_dampening(S(1.0 - h.dampening)), weight_decay(S(h.weight_decay)), nesterov(h.nesterov),
        maximize(h.maximize), has_momentum(h.momentum != 0.0), has_weight_decay(h.weight_decay != 0.0) {}

  // On a param's first step with momentum (t.first_step) torch starts the buffer as a copy
  // of the (decayed) gradient instead of blending it into zeros.
  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>& t) const {
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    if (has_momentum) {
      V& momentum_buffer = state[0];
      momentum_buffer = t.first_step ? grad : momentum_buffer * V(momentum) + V(one_minus_dampening) * grad;
      grad = nesterov ? grad + V(momentum) * momentum_buffer : momentum_buffer;
    }
    param = param + V(neg_lr) * grad;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
