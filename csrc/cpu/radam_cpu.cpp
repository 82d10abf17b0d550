// RAdam step over a bucket on the CPU: bias corrections and the variance rectification per
// step count on the host, then one parallel sweep of the active instruction set's kernel
// (math/radam.h).
#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

void radam_step(Bucket& bucket, const math::RadamHyper& hyper) {
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    const auto coefs = math::RadamStepCoefs::at_step(hyper, step);
    return TensorCoefValues{coefs.bias_correction1, coefs.bias_correction2_sqrt, coefs.rect,
                            coefs.rectified ? 1.0 : 0.0};
  });
  FO_SWEEP(bucket, radam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
