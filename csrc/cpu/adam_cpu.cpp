// Adam / AdamW step over a bucket on the CPU: per-tensor bias corrections on the host, then
// one parallel sweep of the active instruction set's kernel (math/adam.h).
#include <functional>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

// coefs_at_step gives a param's coefficients for its new step count: AdamStepCoefs::at_step
// for Python-float hyperparameters, torch's own tensor arithmetic for Tensor ones (see
// fusedoptim/adam.py, NOTE: [Tensor hyperparameters]).
void adam_step(Bucket& bucket, const math::AdamHyper& hyper,
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step) {
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    const math::AdamStepCoefs coefs = coefs_at_step(step);
    return TensorCoefValues{coefs.neg_step_size, coefs.inv_bias_correction2_sqrt, 0.0, 0.0};
  });
  FO_SWEEP(bucket, adam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
