// Rprop: the update rule, written once for every backend.
//
// Per element, in torch.optim.Rprop's order of operations:
//   g = maximize ? -grad : grad
//   s = g * prev
//   factor = s > 0 ? etaplus : (s < 0 ? etaminus : 1)        (torch.sign(NaN) is 0: factor 1)
//   step_size = clamp(step_size * factor, step_size_min, step_size_max)
//   g = s < 0 ? 0 : g
//   p = p + (-sign(g)) * step_size
//   prev = g
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct RpropHyper {
  double etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;
};

inline namespace FO_ISA {

// States: prev, step_size.
template <typename S>
struct RpropRule {
  static constexpr int kMaxStates = 2;
  int num_states = 2;
  S etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;

  FO_HOST_DEVICE explicit RpropRule(const RpropHyper& h)
      : etaminus(S(h.etaminus)), etaplus(S(h.etaplus)), step_size_min(S(h.step_size_min)),
        step_size_max(S(h.step_size_max)), maximize(h.maximize) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>&) const {
    V& prev = state[0];
    V& step_size = state[1];
    if (maximize) grad = -grad;
    const V agreement = grad * prev;
    const auto increase = fo_gt(agreement, V(S(0)));
    const auto reverse = fo_lt(agreement, V(S(0)));
    const V factor = fo_select(increase, V(etaplus), fo_select(reverse, V(etaminus), V(S(1))));
    step_size = fo_clamp(step_size * factor, V(step_size_min), V(step_size_max));
    grad = fo_select(reverse, V(S(0)), grad);
    param = param + (-fo_sign(grad)) * step_size;
    prev = grad;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
