// ASGD (averaged SGD): the update rule, written once for every backend.
//
// Per element, in torch.optim.ASGD's order of operations. eta and mu are the param's own
// 0-dim states (read before this step's update of them, AsgdStepCoefs):
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                       (weight_decay != 0)
//   p = p * (1 - lambd * eta)
//   p = p + (-eta) * g
//   ax = mu != 1 ? ax + (p - ax) * mu : p
// then, for the next step: eta = lr / (1 + lambd * lr * t)^alpha, mu = 1 / max(1, t - t0).
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct AsgdHyper {
  double lr, lambd, alpha, t0, weight_decay;
  bool maximize;
  bool lr_is_float32;  // a float32 Tensor lr: torch computes eta in float32 (math/rule.h)
  // torch writes eta and mu through torch.as_tensor(value): a Python float becomes the
  // default dtype, a Tensor lr's result keeps its dtype; so these say whether the new values
  // are float32-rounded, whatever the dtype of the states they are copied into.
  bool eta_as_float32, mu_as_float32;
};

// c[0] = 1 - lambd * eta, c[1] = -eta, c[2] = mu, c[3] = whether ax averages, from the eta
// and mu of the last step; then eta and mu advance to step t (NOTE: [Step coefficients] in
// math/rule.h).
struct AsgdStepCoefs {
  static constexpr int kExtraScalars = 2;
  static constexpr int kEta = 1, kMu = 2;  // scalars: step, eta, mu
  double decay, neg_eta, mu, average;

  // lr / (1 + lambd * lr * step)^alpha, in the lr's dtype (NOTE: [Tensor learning rates]).
  FO_HOST_DEVICE static double eta_at(const AsgdHyper& h, double step) {
    if (!h.lr_is_float32) return h.lr / pow(1.0 + h.lambd * h.lr * step, h.alpha);
    const float lr = static_cast<float>(h.lr);
    float base = static_cast<float>(h.lambd) * lr;
    base = base * static_cast<float>(step);
    base = 1.0f + base;
    const float eta = lr / powf(base, static_cast<float>(h.alpha));
    return double(eta);
  }

  template <typename Scalars>
  FO_HOST_DEVICE static AsgdStepCoefs advance(const AsgdHyper& h, double step, Scalars& scalars) {
    const double eta = scalars.get(kEta);
    const double mu = scalars.get(kMu);
    const AsgdStepCoefs out{1.0 - h.lambd * eta, -eta, mu, mu != 1.0 ? 1.0 : 0.0};
    const double new_eta = eta_at(h, step);
    const double span = step - h.t0;
    const double new_mu = 1.0 / (span > 1.0 ? span : 1.0);
    scalars.set(kEta, h.eta_as_float32 ? double(static_cast<float>(new_eta)) : new_eta);
    scalars.set(kMu, h.mu_as_float32 ? double(static_cast<float>(new_mu)) : new_mu);
    return out;
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    c[0] = decay;
    c[1] = neg_eta;
    c[2] = mu;
    c[3] = average;
  }
};

inline namespace FO_ISA {

// States: ax. Per tensor: c[0] = 1 - lambd * eta, c[1] = -eta, c[2] = mu,
// c[3] = 1 when mu != 1 (average) and 0 when ax copies the param.
template <typename S>
struct AsgdRule {
  static constexpr int kMaxStates = 1;
  int num_states = 1;
  S weight_decay;
  bool maximize, has_weight_decay;

  FO_HOST_DEVICE explicit AsgdRule(const AsgdHyper& h)
      : weight_decay(S(h.weight_decay)), maximize(h.maximize), has_weight_decay(h.weight_decay != 0.0) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V grad, V* state, const TensorCoefs<S>& t) const {
    V& ax = state[0];
    if (maximize) grad = -grad;
    if (has_weight_decay) grad = grad + V(weight_decay) * param;
    param = param * V(t.c[0]);
    param = param + V(t.c[1]) * grad;
    ax = t.c[3] != S(0) ? ax + (param - ax) * V(t.c[2]) : param;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
