// Lion step over a bucket on the CPU: one parallel sweep of the active instruction set's
// kernel (math/lion.h).
#include "bucket.h"
#include "backend.h"

namespace fusedoptim {
namespace cpu {

void lion_step(Bucket& bucket, const math::LionHyper& hyper) {
  FO_SWEEP(bucket, lion, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
