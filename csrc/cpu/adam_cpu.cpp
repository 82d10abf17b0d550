// Adam / AdamW step over a bucket on the CPU: per-tensor bias corrections on the host, then
// one parallel sweep of the active instruction set's kernel (cpu/adam_kernel.h).
#include <functional>

#include "bucket.h"
#include "cpu/dispatch.h"

namespace fusedoptim {
namespace cpu {

// coefs_at_step gives a param's coefficients for its new step count: AdamStepCoefs::at_step
// for Python-float hyperparameters, torch's own tensor arithmetic for Tensor ones (see
// fusedoptim/adam.py, NOTE: [Tensor hyperparameters]).
void adam_step(Bucket& bucket, const math::AdamHyper& hyper,
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step) {
  const std::vector<double>& steps = bucket.advance_steps();
  std::vector<TensorEntry>& entries = bucket.entries();
  // Params of a bucket nearly always share one step count: compute its coefficients once.
  double cached_step = -1.0;
  math::AdamStepCoefs coefs{};
  for (size_t k = 0; k < entries.size(); ++k) {
    if (steps[k] != cached_step) {
      cached_step = steps[k];
      coefs = coefs_at_step(cached_step);
    }
    entries[k].coef[0] = coefs.neg_step_size;
    entries[k].coef[1] = coefs.inv_bias_correction2_sqrt;
  }
  parallel_sweep(kernels_for(active_capability()).adam, bucket.table(), hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
