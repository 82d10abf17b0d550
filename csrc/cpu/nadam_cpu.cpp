// NAdam step over a bucket on the CPU: the momentum schedule and each param's mu_product
// (a 0-dim state, advanced in its own dtype as torch does) on the host, then one parallel
// sweep of the active instruction set's kernel (math/nadam.h).
#include <cmath>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {
namespace {
constexpr int kMuProductScalar = 1;  // scalars: step, mu_product

double momentum_at(const math::NadamHyper& h, double step) {
  return h.beta1 * (1.0 - 0.5 * std::pow(0.96, step * h.momentum_decay));
}
}  // namespace

void nadam_step(Bucket& bucket, const math::NadamHyper& hyper) {
  const std::vector<double>& steps = bucket.advance_steps();
  std::vector<TensorEntry>& entries = bucket.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const double step = steps[k];
    const double mu = momentum_at(hyper, step);
    const double mu_next = momentum_at(hyper, step + 1.0);
    // mu_product *= mu: a float32 state multiplies in float32.
    const double old_product = bucket.scalar(kMuProductScalar, k);
    const double product = bucket.scalar_is_double(kMuProductScalar, k)
                               ? old_product * mu
                               : double(static_cast<float>(old_product) * static_cast<float>(mu));
    bucket.set_scalar(kMuProductScalar, k, product);
    const double product_next = product * mu_next;
    TensorEntry& entry = entries[k];
    entry.coef[0] = 1.0 - std::pow(hyper.beta2, step);
    // -lr * (1 - mu) / (1 - product) and (-lr * mu_next) / (1 - product_next), each
    // operation in the lr's dtype (NOTE: [Tensor learning rates]).
    if (hyper.lr_is_float32) {
      const float lr = static_cast<float>(hyper.lr);
      entry.coef[1] = double((-lr * static_cast<float>(1.0 - mu)) / static_cast<float>(1.0 - product));
      entry.coef[2] = double((-lr * static_cast<float>(mu_next)) / static_cast<float>(1.0 - product_next));
    } else {
      entry.coef[1] = -hyper.lr * (1.0 - mu) / (1.0 - product);
      entry.coef[2] = (-hyper.lr * mu_next) / (1.0 - product_next);
    }
  }
  FO_SWEEP(bucket, nadam, hyper);
}

}  // namespace cpu
}  // namespace fusedoptim
