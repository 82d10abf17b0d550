// Adadelta step over a bucket on the CPU: advance the step counters (kept as
// torch.optim.Adadelta keeps them), then one parallel sweep of the active instruction set's kernel
// (math/adadelta.h).
#include "bucket.h"
#include "backend.h"

namespace fusedoptim {
namespace cpu {

void adadelta_step(Bucket& bucket, const math::AdadeltaHyper& hyper) {
  bucket.advance_steps();
  FO_SWEEP(bucket, adadelta, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
