// RMSprop (centered, momentum): the update rule, written once for every backend.
//
// Per element, in torch.optim.RMSprop's order of operations:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                               (weight_decay != 0)
//   square_avg = square_avg * alpha + ((1 - alpha) * g) * g
//   grad_avg = lerp(grad_avg, g, 1 - alpha)                (centered)
//   avg = sqrt(square_avg + (-grad_avg) * grad_avg) + eps  (centered; else sqrt(square_avg) + eps)
//   buf = buf * momentum + g / avg; p = p + (-lr) * buf    (momentum > 0)
//   p = p + (-lr * g) / avg                                (otherwise)
#pragma once
#include <cmath>

#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct RmspropHyper {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};

inline namespace FO_ISA {

// States: square_avg, then momentum_buffer (momentum > 0), then grad_avg (centered).
template <typename S>
struct RmspropRule {
  static constexpr int kMaxStates = 3;
  int num_states;
  S neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  bool centered, maximize, has_weight_decay, has_momentum, lerp_weight_is_small;

  FO_HOST_DEVICE explicit RmspropRule(const RmspropHyper& h)
      : num_states(1 + (h.momentum > 0.0) + h.centered), neg_lr(S(-h.lr)), alpha(S(h.alpha)),
        one_minus_alpha(S(1.0 - h.alpha)), eps(S(h.eps)), weight_decay(S(h.weight_decay)), momentum(S(h.momentum)),
        centered(h.centered), maximize(h.maximize), has_weight_decay(h.weight_decay != 0.0),
        has_momentum(h.momentum > 0.0), lerp_weight_is_small(fabs(double(S(1.0 - h.alpha))) < 0.5) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>&) const {
    V& square_avg = state[0];
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    square_avg = square_avg * V(alpha) + V(one_minus_alpha) * grad * grad;
    V avg;
    if (centered) {
      V& grad_avg = state[has_momentum ? 2 : 1];
      grad_avg = fo_lerp(grad_avg, grad, one_minus_alpha, lerp_weight_is_small);
      avg = fo_sqrt(square_avg + (-grad_avg) * grad_avg);
    } else {
      avg = fo_sqrt(square_avg);
    }
    avg = avg + V(eps);
    if (has_momentum) {
      V& momentum_buffer = state[1];
      momentum_buffer = momentum_buffer * V(momentum) + grad / avg;
      param = param + V(neg_lr) * momentum_buffer;
    } else {
      param = param + V(neg_lr) * grad / avg;
    }
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
