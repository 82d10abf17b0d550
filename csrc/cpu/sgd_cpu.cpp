// SGD step over a bucket on the CPU: one parallel sweep of the active instruction set's
// kernel (math/sgd.h).
#include "bucket.h"
#include "cpu/dispatch.h"

namespace fusedoptim {
namespace cpu {

void sgd_step(Bucket& bucket, const math::SgdHyper& hyper) {
  parallel_sweep(kernels_for(active_capability()).sgd, bucket.table(), hyper);
  bucket.clear_first_steps();
}

}  // namespace cpu
}  // namespace fusedoptim
