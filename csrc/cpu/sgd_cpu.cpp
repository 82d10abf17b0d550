// SGD step over a bucket on the CPU: one parallel sweep of the active instruction set's
// kernel (math/sgd.h).
#include "bucket.h"
#include "backend.h"

namespace fusedoptim {
namespace cpu {

void sgd_step(Bucket& bucket, const math::SgdHyper& hyper) {
  FO_SWEEP(bucket, sgd, hyper);
  bucket.clear_first_steps();
}

}  // namespace cpu
}  // namespace fusedoptim
