// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"), in the formulation of
// NVIDIA Apex's FusedLAMB: the update rules, written once for every backend.
//
// Per element, in two passes over the bucket (t = the param's step after increment):
//   moments pass (a reduction, see NOTE: [Deterministic reductions]):
//     g = maximize ? -grad : grad
//     g = g / clip                                 clip = max(global grad norm / max_grad_norm, 1)
//     g = g + weight_decay * p                     (L2 mode, weight_decay != 0)
//     exp_avg = exp_avg * beta1 + beta3 * g        beta3 = grad_averaging ? 1 - beta1 : 1
//     exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
//     u = (exp_avg / bc1) / (sqrt(exp_avg_sq / bc2) + eps)     bc = 1 - beta^t (or 1)
//     u = u + weight_decay * p                     (decoupled mode, weight_decay != 0)
//     sums: |p|^2, |u|^2 per tensor
//   apply pass, u recomputed from the updated moments:
//     p = p + (-lr * ratio) * u      ratio = |p| / |u| when both are non-zero and
//                                    (weight_decay != 0 or always_adapt), else 1
#pragma once
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace math {

struct LambHyper {
  double beta1, beta2, eps, weight_decay;
  bool grad_averaging, decoupled_weight_decay, maximize;
  double clip;  // the global grad-norm divisor, 1 when not clipping
};

// No hyperparameters: the sum of squared grads (global grad-norm clipping).
struct GradSquaresHyper {};

inline namespace FO_ISA {

// LAMB's direction u from the updated moments (shared by both passes so they agree exactly).
// Per tensor: c[0] = bias_correction1, c[1] = bias_correction2.
template <typename S>
struct LambDirection {
  S eps, weight_decay;
  bool add_decay;

  FO_HOST_DEVICE explicit LambDirection(const LambHyper& h)
      : eps(S(h.eps)), weight_decay(S(h.weight_decay)),
        add_decay(h.decoupled_weight_decay && h.weight_decay != 0.0) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE V operator()(V param, V exp_avg, V exp_avg_sq, const TensorCoefs<S>& t) const {
    V u = (exp_avg / V(t.c[0])) / (fo_sqrt(exp_avg_sq / V(t.c[1])) + V(eps));
    if (add_decay) u = u + V(weight_decay) * param;
    return u;
  }
};

// States: exp_avg, exp_avg_sq. Sums: |p|^2, |u|^2, with u from the moments as stored.
template <typename S>
struct LambMomentsRule {
  static constexpr int kMaxStates = 2;
  static constexpr int kNumSums = 2;
  int num_states = 2;
  S beta1, beta3, beta2, one_minus_beta2, weight_decay, clip;
  bool maximize, l2_decay, clips;
  LambDirection<S> direction;

  FO_HOST_DEVICE explicit LambMomentsRule(const LambHyper& h)
      : beta1(S(h.beta1)), beta3(S(h.grad_averaging ? 1.0 - h.beta1 : 1.0)), beta2(S(h.beta2)),
        one_minus_beta2(S(1.0 - h.beta2)), weight_decay(S(h.weight_decay)), clip(S(h.clip)), maximize(h.maximize),
        l2_decay(!h.decoupled_weight_decay && h.weight_decay != 0.0), clips(h.clip != 1.0), direction(h) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V param, V grad, V* state, const TensorCoefs<S>&) const {
    V& exp_avg = state[0];
    V& exp_avg_sq = state[1];
    if (maximize) grad = -grad;
    if (clips) grad = grad / V(clip);
    if (l2_decay) grad = grad + V(weight_decay) * param;
    exp_avg = exp_avg * V(beta1) + V(beta3) * grad;
    exp_avg_sq = exp_avg_sq * V(beta2) + V(one_minus_beta2) * grad * grad;
  }

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void accumulate(V param, V, const V* state, const TensorCoefs<S>& t, V* sums) const {
    const V u = direction(param, state[0], state[1], t);
    sums[0] = sums[0] + param * param;
    sums[1] = sums[1] + u * u;
  }
};

// States: exp_avg, exp_avg_sq (read only). Per tensor: c[2] = -lr * ratio.
template <typename S>
struct LambApplyRule {
  static constexpr int kMaxStates = 2;
  static constexpr bool kReadOnlyStates = true;
  int num_states = 2;
  LambDirection<S> direction;

  FO_HOST_DEVICE explicit LambApplyRule(const LambHyper& h) : direction(h) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V& param, V, V* state, const TensorCoefs<S>& t) const {
    param = param + V(t.c[2]) * direction(param, state[0], state[1], t);
  }
};

// Sums: |g|^2.
template <typename S>
struct GradSquaresRule {
  static constexpr int kMaxStates = 0;
  static constexpr int kNumSums = 1;
  int num_states = 0;

  FO_HOST_DEVICE explicit GradSquaresRule(const GradSquaresHyper&) {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void update(V, V, V*, const TensorCoefs<S>&) const {}

  template <typename V>
  FO_HOST_DEVICE FO_INLINE void accumulate(V, V grad, const V*, const TensorCoefs<S>&, V* sums) const {
    sums[0] = sums[0] + grad * grad;
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
