// Rprop step over a bucket on the CPU: advance the step counters (kept as
// torch.optim.Rprop keeps them), then one parallel sweep of the active instruction set's kernel
// (math/rprop.h).
#include "bucket.h"
#include "cpu/dispatch.h"

namespace fusedoptim {
namespace cpu {

void rprop_step(Bucket& bucket, const math::RpropHyper& hyper) {
  bucket.advance_steps();
  parallel_sweep(kernels_for(active_capability()).rprop, bucket.table(), hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
