// NAdam step over a bucket: the momentum schedule and each param's mu_product (a 0-dim state,
// advanced in its own dtype as torch does; NadamStepCoefs) on the host, then one sweep of the
// rule (math/nadam.h) on the bucket's device; or, with device-side steps, the CUDA step kernel
// and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void nadam_step(Bucket& bucket, const math::NadamHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, nadam, hyper, amp)) return;
  set_step_coefs<math::NadamStepCoefs>(bucket, hyper);
  FO_SWEEP(bucket, nadam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
