// Adadelta step over a bucket: advance the step counters (kept as torch.optim.Adadelta keeps
// them) on the host, then one sweep of the rule (math/adadelta.h) on the bucket's device; or,
// with device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void adadelta_step(Bucket& bucket, const math::AdadeltaHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, adadelta, hyper, amp)) return;
  set_step_coefs<math::StepCountOnly>(bucket, hyper);
  FO_SWEEP(bucket, adadelta, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
