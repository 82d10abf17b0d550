// Lion step over a bucket on the CPU: one parallel sweep of the active instruction set's
// kernel (math/lion.h).
#include "bucket.h"
#include "cpu/dispatch.h"

namespace fusedoptim {
namespace cpu {

void lion_step(Bucket& bucket, const math::LionHyper& hyper) {
  parallel_sweep(kernels_for(active_capability()).lion, bucket.table(), hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
