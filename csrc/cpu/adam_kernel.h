// Adam / AdamW over a bucket on the CPU, for the instruction set of the including TU.
// Slots: see below; the Python side (fusedoptim/adam.py) allocates the states in the same
// order. Per-tensor coefficients: coef[0] = -step_size, coef[1] = 1 / sqrt(bias_correction2).
#pragma once
#include "fusedoptim/cpu/sweep.h"
#include "fusedoptim/math/adam.h"

namespace fusedoptim {
namespace cpu {
inline namespace FO_ISA {

constexpr int kExpAvgSlot = kFirstStateSlot;
constexpr int kExpAvgSqSlot = kFirstStateSlot + 1;
constexpr int kMaxExpAvgSqSlot = kFirstStateSlot + 2;

template <typename Storage>
struct AdamBody {
  using S = math_t<Storage>;
  math::AdamCoefs<S> coefs;

  explicit AdamBody(const math::AdamHyper& hyper) : coefs(hyper) {}

  template <typename V>
  FO_INLINE void apply(const TensorEntry& e, int64_t i) const {
    Storage* param_ptr = static_cast<Storage*>(e.ptr[kParamSlot]) + i;
    Storage* exp_avg_ptr = static_cast<Storage*>(e.ptr[kExpAvgSlot]) + i;
    Storage* exp_avg_sq_ptr = static_cast<Storage*>(e.ptr[kExpAvgSqSlot]) + i;
    V param = load<V>(param_ptr);
    V exp_avg = load<V>(exp_avg_ptr);
    V exp_avg_sq = load<V>(exp_avg_sq_ptr);
    const V grad = load<V>(static_cast<const Storage*>(e.ptr[kGradSlot]) + i);
    if (coefs.amsgrad) {
      Storage* max_ptr = static_cast<Storage*>(e.ptr[kMaxExpAvgSqSlot]) + i;
      V max_exp_avg_sq = load<V>(max_ptr);
      math::adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, coefs, S(e.coef[0]), S(e.coef[1]));
      store(max_ptr, max_exp_avg_sq);
    } else {
      V unused(S(0));
      math::adam_update(param, grad, exp_avg, exp_avg_sq, unused, coefs, S(e.coef[0]), S(e.coef[1]));
    }
    store(param_ptr, param);
    store(exp_avg_ptr, exp_avg);
    store(exp_avg_sq_ptr, exp_avg_sq);
  }
};

}  // namespace FO_ISA
}  // namespace cpu
}  // namespace fusedoptim
