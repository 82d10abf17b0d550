// ASGD step over a bucket on the CPU: each param's eta and mu (0-dim states) give its
// coefficients, the sweep updates param and average, and the host then advances eta and mu
// as torch.optim.ASGD does (math/asgd.h).
#include <algorithm>
#include <cmath>

#include "backend.h"
#include "cpu/step_coefs.h"

namespace fusedoptim {
namespace cpu {
namespace {
constexpr int kEtaScalar = 1;  // scalars: step, eta, mu
constexpr int kMuScalar = 2;

// lr / (1 + lambd * lr * step)^alpha, in the lr's dtype (NOTE: [Tensor learning rates]).
double eta_at(const math::AsgdHyper& h, double step) {
  if (!h.lr_is_float32) return h.lr / std::pow(1.0 + h.lambd * h.lr * step, h.alpha);
  const float lr = static_cast<float>(h.lr);
  float base = static_cast<float>(h.lambd) * lr;
  base = base * static_cast<float>(step);
  base = 1.0f + base;
  return double(lr / std::pow(base, static_cast<float>(h.alpha)));
}
}  // namespace

void asgd_step(Bucket& bucket, const math::AsgdHyper& hyper) {
  const std::vector<double>& steps = bucket.advance_steps();
  std::vector<TensorEntry>& entries = bucket.entries();
  for (size_t k = 0; k < entries.size(); ++k) {
    const double eta = bucket.scalar(kEtaScalar, k);
    const double mu = bucket.scalar(kMuScalar, k);
    TensorEntry& entry = entries[k];
    entry.coef[0] = 1.0 - hyper.lambd * eta;
    entry.coef[1] = -eta;
    entry.coef[2] = mu;
    entry.coef[3] = mu != 1.0 ? 1.0 : 0.0;
  }
  FO_SWEEP(bucket, asgd, hyper);
  for (size_t k = 0; k < entries.size(); ++k) {
    const double step = steps[k];
    const double eta = eta_at(hyper, step);
    const double mu = 1.0 / std::max(1.0, step - hyper.t0);
    const float eta32 = static_cast<float>(eta), mu32 = static_cast<float>(mu);
    bucket.set_scalar(kEtaScalar, k, hyper.eta_as_float32 ? double(eta32) : eta);
    bucket.set_scalar(kMuScalar, k, hyper.mu_as_float32 ? double(mu32) : mu);
  }
}

}  // namespace cpu
}  // namespace fusedoptim
