// ASGD step over a bucket: each param's eta and mu (0-dim states) give its coefficients and
// advance (AsgdStepCoefs) on the host, then one sweep of the rule (math/asgd.h) on the
// bucket's device; or, with device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void asgd_step(Bucket& bucket, const math::AsgdHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, asgd, hyper, amp)) return;
  set_step_coefs<math::AsgdStepCoefs>(bucket, hyper);
  FO_SWEEP(bucket, asgd, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
