// SGD over a bucket on the CPU, for the instruction set of the including TU.
// Slots: see kMomentumBufferSlot; the Python side (fusedoptim/sgd.py) allocates the
// states in the same order.
#pragma once
#include "fusedoptim/cpu/sweep.h"
#include "fusedoptim/math/sgd.h"

namespace fusedoptim {
namespace cpu {
inline namespace FO_ISA {

constexpr int kMomentumBufferSlot = kFirstStateSlot;

template <typename Storage>
struct SgdBody {
  math::SgdCoefs<math_t<Storage>> coefs;

  explicit SgdBody(const math::SgdHyper& hyper) : coefs(hyper) {}

  template <typename V>
  FO_INLINE void apply(const TensorEntry& e, int64_t i) const {
    Storage* param_ptr = static_cast<Storage*>(e.ptr[kParamSlot]) + i;
    const Storage* grad_ptr = static_cast<const Storage*>(e.ptr[kGradSlot]) + i;
    V param = load<V>(param_ptr);
    if (coefs.has_momentum) {
      Storage* buf_ptr = static_cast<Storage*>(e.ptr[kMomentumBufferSlot]) + i;
      V buf = e.first_step ? V(0) : load<V>(buf_ptr);
      math::sgd_update(param, load<V>(grad_ptr), buf, coefs, e.first_step != 0);
      store(buf_ptr, buf);
    } else {
      V unused(0);
      math::sgd_update(param, load<V>(grad_ptr), unused, coefs, false);
    }
    store(param_ptr, param);
  }
};

}  // namespace FO_ISA
}  // namespace cpu
}  // namespace fusedoptim
