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
#include "fusedoptim/math/common.h"

namespace fusedoptim {
namespace math {

// Host-side hyperparameters of one step, in double as Python gives them.
struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

inline namespace FO_ISA {

// The hyperparameters converted once per step to the math type S.
template <typename S>
struct SgdCoefs {
  S neg_lr, momentum, one_minus_dampening, weight_decay;
  bool nesterov, maximize, has_momentum, has_weight_decay;

  FO_HOST_DEVICE explicit SgdCoefs(const SgdHyper& h)
      : neg_lr(S(-h.lr)), momentum(S(h.momentum)), one_minus_dampening(S(1.0 - h.dampening)),
        weight_decay(S(h.weight_decay)), nesterov(h.nesterov), maximize(h.maximize),
        has_momentum(h.momentum != 0.0), has_weight_decay(h.weight_decay != 0.0) {}
};

// `first` is true on a param's first step with momentum: torch then starts the buffer as a
// copy of the (decayed) gradient instead of blending it into zeros.
template <typename V, typename S>
FO_HOST_DEVICE FO_INLINE void sgd_update(V& param, V grad, V& momentum_buffer,
                                         const SgdCoefs<S>& c, bool first) {
  if (c.maximize) grad = -grad;
  if (c.has_weight_decay) grad = grad + V(c.weight_decay) * param;
  if (c.has_momentum) {
    momentum_buffer =
        first ? grad : momentum_buffer * V(c.momentum) + V(c.one_minus_dampening) * grad;
    grad = c.nesterov ? grad + V(c.momentum) * momentum_buffer : momentum_buffer;
  }
  param = param + V(c.neg_lr) * grad;
}

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
