// The global grad norm and the clip's scaling pass over a bucket's grads on the CPU
// (math/grad_norm.h): fusedoptim.clip_grad_norm_ and the optimizers' max_grad_norm.
#include <cmath>

#include <c10/util/Exception.h>

#include "cpu/dispatch.h"
#include "cpu/steps.h"

namespace fusedoptim {
namespace cpu {

math::GradNormHyper grad_norm_hyper(double norm_type) {
  if (norm_type == 1.0) return {math::NormKind::kOne, norm_type};
  if (norm_type == 2.0) return {math::NormKind::kTwo, norm_type};
  if (std::isinf(norm_type) && norm_type > 0) return {math::NormKind::kInf, norm_type};
  TORCH_CHECK_VALUE(std::isfinite(norm_type) && norm_type > 0.0,
                    "fusedoptim: the fused grad norm takes norm_type > 0 (or inf), got ", norm_type);
  return {math::NormKind::kPower, norm_type};
}

double combine_grad_norms(const math::GradNormHyper& hyper, double a, double b) {
  if (hyper.kind != math::NormKind::kInf) return a + b;
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return a > b ? a : b;
}

double grad_norm(Bucket& bucket, const math::GradNormHyper& hyper) {
  std::vector<double> sums;
  parallel_reduce(kernels_for(active_capability()).grad_norm, bucket.table(), hyper, bucket.segments(kSegmentNumel),
                  1, sums);
  double total = 0.0;
  for (double s : sums) total = combine_grad_norms(hyper, total, s);  // in order: NOTE: [Deterministic reductions]
  return total;
}

void scale_grads(Bucket& bucket, double scale) {
  parallel_sweep(kernels_for(active_capability()).scale_grads, bucket.table(), math::GradScaleHyper{scale});
}

}  // namespace cpu
}  // namespace fusedoptim
