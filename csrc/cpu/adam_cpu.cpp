// Adam / AdamW step over a bucket on the CPU: per-tensor bias corrections on the host, then
// one parallel sweep of the active instruction set's kernel (cpu/adam_kernel.h).
#include "bucket.h"
#include "cpu/dispatch.h"

namespace fusedoptim {
namespace cpu {

void adam_step(Bucket& bucket, const math::AdamHyper& hyper) {
  const std::vector<double>& steps = bucket.advance_steps();
  std::vector<TensorEntry>& entries = bucket.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const math::AdamStepCoefs coefs = math::AdamStepCoefs::at_step(hyper, steps[k]);
    entries[k].coef[0] = coefs.neg_step_size;
    entries[k].coef[1] = coefs.bias_correction2_sqrt;
  }
  parallel_sweep(kernels_for(active_capability()).adam, bucket.table(), hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
