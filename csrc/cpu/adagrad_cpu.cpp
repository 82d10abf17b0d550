// Adagrad step over a bucket: the decayed learning rate per step count (AdagradStepCoefs) on
// the host, then one sweep of the rule (math/adagrad.h) on the bucket's device; or, with
// device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void adagrad_step(Bucket& bucket, const math::AdagradHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, adagrad, hyper, amp)) return;
  set_step_coefs<math::AdagradStepCoefs>(bucket, hyper);
  FO_SWEEP(bucket, adagrad, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
