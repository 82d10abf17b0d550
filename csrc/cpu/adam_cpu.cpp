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
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step, const float* grad_scale,
               const float* found_inf) {
  if (bucket.device_scalars()) {  // NOTE: [Device steps and GradScaler] (Python-float hyperparameters)
    bucket.device_table()->run_device_steps(&cuda::KernelTable::adam_steps, &cuda::KernelTable::adam, bucket.table(),
                                            hyper, bucket.entry_step_ptrs(), grad_scale, found_inf);
    return;
  }
  TORCH_CHECK(grad_scale == nullptr && found_inf == nullptr,
              "fusedoptim: grad_scale and found_inf are handled on the device only for CUDA buckets with device steps");
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    TensorCoefValues values;
    coefs_at_step(step).to_coefs(values.data());
    return values;
  });
  FO_SWEEP(bucket, adam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
