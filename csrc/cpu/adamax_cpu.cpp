// Adamax step over a bucket on the CPU: the bias-corrected learning rate per step count on
// the host, then one parallel sweep of the active instruction set's kernel (math/adamax.h).
#include <cmath>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void adamax_step(Bucket& bucket, const math::AdamaxHyper& hyper) {
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    const double bias_correction = 1.0 - std::pow(hyper.beta1, step);
    const double clr = hyper.lr_is_float32  // NOTE: [Tensor learning rates]
                           ? double(static_cast<float>(hyper.lr) / static_cast<float>(bias_correction))
                           : hyper.lr / bias_correction;
    return TensorCoefValues{-clr, 0.0, 0.0, 0.0};
  });
  FO_SWEEP(bucket, adamax, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
