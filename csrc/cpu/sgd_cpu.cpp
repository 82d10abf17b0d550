// SGD step over a bucket on the CPU: one parallel sweep of the active instruction set's
// kernel (math/sgd.h); on CUDA one launch, which can take GradScaler's tensors.
#include "bucket.h"
#include "backend.h"
#include "cpu/steps.h"

namespace fusedoptim {
namespace cpu {

void sgd_step(Bucket& bucket, const math::SgdHyper& hyper, const DeviceAmp& amp) {
  if (amp.grad_scale != nullptr || amp.found_inf != nullptr) {
    // A skipped step must leave nothing half done: no momentum buffer may still be waiting
    // for its first values (the host clears those flags only after a sweep).
    TORCH_CHECK(bucket.device_table() != nullptr && !bucket.has_first_steps(),
                "fusedoptim: SGD takes grad_scale and found_inf in its kernel only on CUDA, once every momentum "
                "buffer holds values");
    bucket.device_table()->run(&cuda::KernelTable::sgd, bucket.table(), hyper, amp.grad_scale, amp.found_inf);
    return;
  }
  FO_SWEEP(bucket, sgd, hyper);
  bucket.clear_first_steps();
}

}  // namespace cpu
}  // namespace fusedoptim
