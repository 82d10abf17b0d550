// Adagrad (dense gradients): the update rule, written once for every backend.
//
// Per element, in torch.optim.Adagrad's order of operations (t = the param's step after
// increment; clr computed per param on the host in double):
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (weight_decay != 0)
//   sum = sum + g * g
//   p = p + (-clr * g) / (sqrt(sum) + eps)         clr = lr / (1 + (t - 1) * lr_decay)
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct AdagradHyper {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
  bool lr_is_float32;  // a float32 Tensor lr: torch computes clr in float32 (math/rule.h)
};

// c[0] = -clr at step t (NOTE: [Step coefficients] in math/rule.h).
struct AdagradStepCoefs {
  static constexpr int kExtraScalars = 0;
  double neg_clr;

  FO_HOST_DEVICE static AdagradStepCoefs at_step(const AdagradHyper& h, double step) {
    const double denominator = 1.0 + (step - 1.0) * h.lr_decay;
    if (h.lr_is_float32) {  // NOTE: [Tensor learning rates]
      const float clr = static_cast<float>(h.lr) / static_cast<float>(denominator);
      return {-double(clr)};
    }
    return {-(h.lr / denominator)};
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = neg_clr;
    c[1] = c[2] = c[3] = 0.0;
  }
};

inline namespace FO_ISA {

// States: sum. Per tensor: c[0] = -clr.
template <typename S>
struct AdagradRule {
  static constexpr int kMaxStates = 1;
  int num_states = 1;
  S eps, weight_decay;
  bool maximize, has_weight_decay;

  FO_HOST_DEVICE explicit AdagradRule(const AdagradHyper& h)
      : eps(S(h.eps)), weight_decay(S(h.weight_decay)), maximize(h.maximize),
        has_weight_decay(h.weight_decay != 0.0) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>& t) const {
    V& sum = state[0];
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    sum = sum + grad * grad;
    param = param + V(t.c[0]) * grad / (fo_sqrt(sum) + V(eps));
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
