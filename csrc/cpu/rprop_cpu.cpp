// Rprop step over a bucket on the CPU: advance the step counters (kept as
// torch.optim.Rprop keeps them), then one parallel sweep of the active instruction set's kernel
// (math/rprop.h).
#include "bucket.h"
#include "backend.h"

namespace fusedoptim {
namespace cpu {

void rprop_step(Bucket& bucket, const math::RpropHyper& hyper) {
  bucket.advance_steps();
  FO_SWEEP(bucket, rprop, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
