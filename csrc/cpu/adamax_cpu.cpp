// Adamax step over a bucket: the bias-corrected learning rate per step count (AdamaxStepCoefs)
// on the host, then one sweep of the rule (math/adamax.h) on the bucket's device; or, with
// device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void adamax_step(Bucket& bucket, const math::AdamaxHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, adamax, hyper, amp)) return;
  set_step_coefs<math::AdamaxStepCoefs>(bucket, hyper);
  FO_SWEEP(bucket, adamax, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
