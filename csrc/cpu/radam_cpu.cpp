// RAdam step over a bucket: bias corrections and the variance rectification per step count
// (RadamStepCoefs) on the host, then one sweep of the rule (math/radam.h) on the bucket's
// device; or, with device-side steps, the CUDA step kernel and the update.
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void radam_step(Bucket& bucket, const math::RadamHyper& hyper, const DeviceAmp& amp) {
  if (FO_STEP_ON_DEVICE(bucket, radam, hyper, amp)) return;
  set_step_coefs<math::RadamStepCoefs>(bucket, hyper);
  FO_SWEEP(bucket, radam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
