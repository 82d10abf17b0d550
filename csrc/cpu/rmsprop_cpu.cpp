// RMSprop step over a bucket: advance the step counters (kept as torch.optim.RMSprop keeps
// them) on the host, then one sweep of the rule (math/rmsprop.h) on the bucket's device; or,
// with device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void rmsprop_step(Bucket& bucket, const math::RmspropHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, rmsprop, hyper, amp)) return;
  set_step_coefs<math::StepCountOnly>(bucket, hyper);
  FO_SWEEP(bucket, rmsprop, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
