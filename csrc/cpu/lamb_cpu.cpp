// LAMB over a bucket on the CPU (math/lamb.h): the moments pass with its per-tensor norms,
// the trust ratios on the host, then the apply pass. And the sum of squared grads that
// global grad-norm clipping needs before the first pass.
#include <cmath>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {

double grad_squares(Bucket& bucket) {
  std::vector<double> sums;
  FO_REDUCE(bucket, grad_squares, math::GradSquaresHyper{}, bucket.segments(kSegmentNumel), 1, sums);
  double total = 0.0;
  for (double s : sums) total += s;
  return total;
}

void lamb_step(Bucket& bucket, const math::LambHyper& hyper, double lr, bool bias_correction, bool always_adapt) {
  set_coefs_by_step(bucket, bucket.advance_steps(), [&](double step) {
    const double bias_correction1 = bias_correction ? 1.0 - std::pow(hyper.beta1, step) : 1.0;
    const double bias_correction2 = bias_correction ? 1.0 - std::pow(hyper.beta2, step) : 1.0;
    return TensorCoefValues{bias_correction1, bias_correction2, 0.0, 0.0};
  });
  const std::vector<Segment>& segments = bucket.segments(kSegmentNumel);
  std::vector<double> sums;
  FO_REDUCE(bucket, lamb_moments, hyper, segments, 2, sums);

  std::vector<TensorEntry>& entries = bucket.entries();
  std::vector<double> param_sq(entries.size(), 0.0), update_sq(entries.size(), 0.0);
  for (size_t s = 0; s < segments.size(); ++s) {  // in order: NOTE: [Deterministic reductions]
    param_sq[segments[s].entry] += sums[2 * s];
    update_sq[segments[s].entry] += sums[2 * s + 1];
  }
  const bool adapt = always_adapt || hyper.weight_decay != 0.0;
  for (size_t k = 0; k < entries.size(); ++k) {
    const double param_norm = std::sqrt(param_sq[k]);
    const double update_norm = std::sqrt(update_sq[k]);
    const double ratio = adapt && param_norm != 0.0 && update_norm != 0.0 ? param_norm / update_norm : 1.0;
    entries[k].coef[2] = -lr * ratio;
  }
  FO_SWEEP(bucket, lamb_apply, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
