// Adam / AdamW step over a bucket: per-tensor bias corrections on the host, then one sweep of
// the rule (math/adam.h) on the bucket's device; or, with device-side steps, the CUDA step
// kernel and the update.
#include <functional>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

// coefs_at_step gives a param's coefficients for its new step count: AdamStepCoefs::at_step
// for Python-float hyperparameters, torch's own tensor arithmetic for Tensor ones (see
// fusedoptim/adam.py, NOTE: [Tensor hyperparameters]).
void adam_step(Bucket& bucket, const math::AdamHyper& hyper,
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step, const DeviceAmp& amp,
               const DeviceLr& lr) {
  if (step_on_device(bucket, &cuda::KernelTable::adam_steps, &cuda::KernelTable::adam, hyper, amp, lr)) {
    return;  // Python-float betas only
  }
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    TensorCoefValues values;
    coefs_at_step(step).to_coefs(values.data());
    return values;
  });
  FO_SWEEP(bucket, adam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
