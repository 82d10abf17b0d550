// Adagrad step over a bucket on the CPU: the decayed learning rate per step count on the
// host, then one parallel sweep of the active instruction set's kernel (math/adagrad.h).
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void adagrad_step(Bucket& bucket, const math::AdagradHyper& hyper) {
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    const double denominator = 1.0 + (step - 1.0) * hyper.lr_decay;
    const double clr = hyper.lr_is_float32  // NOTE: [Tensor learning rates]
                           ? double(static_cast<float>(hyper.lr) / static_cast<float>(denominator))
                           : hyper.lr / denominator;
    return TensorCoefValues{-clr, 0.0, 0.0, 0.0};
  });
  FO_SWEEP(bucket, adagrad, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
