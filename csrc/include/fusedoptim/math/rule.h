// What every update rule (fusedoptim/math/<algo>.h) shares: the per-tensor coefficients the
// host computes each step, and the shape of a rule.
//
// A rule is a class template Rule<S> over the math type S with
//   static constexpr int kMaxStates;   // elementwise states, in slot order
//   int num_states;                    // how many this configuration uses (a prefix)
//   explicit Rule(const Hyper&);       // hyperparameters converted once per step
//   template <typename V> void update(V& param, V grad, V* state, const TensorCoefs<S>&) const;
// and a reduction rule (LAMB) also has kNumSums and accumulate(param, grad, state, coefs,
// sums), adding each element's contributions to sums from the updated, stored states. V is a scalar or a SIMD wrapper (fusedoptim/cpu/vec.h);
// the backend loads and stores, the rule only computes.
#pragma once
#include "fusedoptim/bucket_table.h"
#include "fusedoptim/math/common.h"

namespace fusedoptim {
namespace math {

// NOTE: [Step coefficients]
// What a rule's per-tensor coefficients are at a param's new step count t, written once for
// the host (csrc/cpu/<algo>_cpu.cpp) and for the CUDA step kernel that advances `step` on the
// device (NOTE: [Device steps and GradScaler] in csrc/cuda/sweep.cuh). A Coefs struct has
//   static constexpr int kExtraScalars;   // 0-dim states besides `step` it advances
//   void to_coefs(double* c) const;       // as TensorEntry::coef
// and either (kExtraScalars == 0)
//   static Coefs at_step(const Hyper&, double t);
// or (NAdam's mu_product, ASGD's eta and mu)
//   template <typename Scalars> static Coefs advance(const Hyper&, double t, Scalars& s);
// which reads and writes the param's scalar states k = 1, 2, ... (0 is `step`, the order of
// Bucket's scalars) through s.get(k), s.set(k, value) (rounded to the state's dtype) and
// s.is_double(k). None of it is in FO_ISA: these run on the host, never in a CPU kernel.

// The coefficients of a rule whose per-tensor values do not depend on the step count
// (Adadelta, RMSprop, Rprop): `step` only counts.
struct StepCountOnly {
  static constexpr int kExtraScalars = 0;

  template <typename Hyper>
  FO_HOST_DEVICE static StepCountOnly at_step(const Hyper&, double) {
    return {};
  }

  FO_HOST_DEVICE void to_coefs(double* c) const {
    for (int k = 0; k < kNumTensorCoefs; ++k) c[k] = 0.0;
  }
};

inline namespace FO_ISA {

// NOTE: [Tensor learning rates]
// torch.optim keeps a Tensor lr as a 0-dim tensor, so the per-step scalars it derives from it
// (Adagrad's and Adamax's clr, NAdam's step sizes, ASGD's eta) are tensor arithmetic in the
// lr's dtype: for a float32 lr every operation rounds to float32, Python scalars included.
// The host steps replay that arithmetic in float variables (lr_is_float32), so results match
// torch's bit for bit; Python-float and float64 lrs are plain double arithmetic. (Rounding
// doubles through float casts instead is not safe: GCC's vectorizer merged such a chain into
// float operations that skipped one of the roundings.)

// Whether a rule only reads its states (LAMB's apply pass): then no backend stores them back.
template <typename R, typename = void> struct states_read_only { static constexpr bool value = false; };
template <typename R> struct states_read_only<R, decltype(void(R::kReadOnlyStates))> {
  static constexpr bool value = R::kReadOnlyStates;
};

// A table entry's per-tensor coefficients in the math type (see TensorEntry::coef).
template <typename S>
struct TensorCoefs {
  S c[kNumTensorCoefs];
  bool first_step;

  FO_HOST_DEVICE explicit TensorCoefs(const TensorEntry& e) : first_step(e.first_step != 0) {
    for (int k = 0; k < kNumTensorCoefs; ++k) c[k] = S(e.coef[k]);
  }
};

}  // namespace FO_ISA
}  // namespace math
}  // namespace fusedoptim
