// RMSprop step over a bucket on the CPU: advance the step counters (kept as
// torch.optim.RMSprop keeps them), then one parallel sweep of the active instruction set's kernel
// (math/rmsprop.h).
#include "bucket.h"
#include "backend.h"

namespace fusedoptim {
namespace cpu {

void rmsprop_step(Bucket& bucket, const math::RmspropHyper& hyper) {
  bucket.advance_steps();
  FO_SWEEP(bucket, rmsprop, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
