// Adadelta: the update rule, written once for every backend.
//
// Per element, in torch.optim.Adadelta's order of operations:
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                                   (weight_decay != 0)
//   square_avg = square_avg * rho + ((1 - rho) * g) * g
//   delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
//   acc_delta = acc_delta * rho + ((1 - rho) * delta) * delta
//   p = p + (-lr) * delta
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct AdadeltaHyper {
  double lr, rho, eps, weight_decay;
  bool maximize;
};

inline namespace FO_ISA {

// States: square_avg, acc_delta.
template <typename S>
struct AdadeltaRule {
  static constexpr int kMaxStates = 2;
  int num_states = 2;
  S neg_lr, rho, one_minus_rho, eps, weight_decay;
  bool maximize, has_weight_decay;

  FO_HOST_DEVICE explicit AdadeltaRule(const AdadeltaHyper& h)
      : neg_lr(S(-h.lr)), rho(S(h.rho)), one_minus_rho(S(1.0 - h.rho)), eps(S(h.eps)),
        weight_decay(S(h.weight_decay)), maximize(h.maximize), has_weight_decay(h.weight_decay != 0.0) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>&) const {
    V& square_avg = state[0];
    V& acc_delta = state[1];
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    square_avg = square_avg * V(rho) + V(one_minus_rho) * grad * grad;
    const V std = fo_sqrt(square_avg + V(eps));
    const V delta = fo_sqrt(acc_delta + V(eps)) / std * grad;
    acc_delta = acc_delta * V(rho) + V(one_minus_rho) * delta * delta;
    param = param + V(neg_lr) * delta;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
