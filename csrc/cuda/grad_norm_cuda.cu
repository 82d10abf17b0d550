// The global grad norm of max_grad_norm over a CUDA bucket's grads (math/grad_norm.h): one
// reduction per segment and one fold, both deterministic (NOTE: [Deterministic reductions on
// CUDA]), the result left on the device for the clip coefficient (NOTE: [Precision options on
// CUDA]).
#include "cuda/sweep.cuh"

namespace fusedoptim {
namespace cuda {

const char* grad_norm_launch(const DeviceTable& table, const math::GradNormHyper& hyper,
                             const DeviceSegments& segments, double* total, const Launch& launch) {
  switch (table.dtype) {
    case DType::kFloat32: return launch_grad_norm_storage<float>(table, hyper, segments, total, launch);
    case DType::kFloat64: return launch_grad_norm_storage<double>(table, hyper, segments, total, launch);
    case DType::kBFloat16: return launch_grad_norm_storage<bf16_t>(table, hyper, segments, total, launch);
    case DType::kFloat16: return launch_grad_norm_storage<fp16_t>(table, hyper, segments, total, launch);
  }
  return "fusedoptim: unknown storage dtype";
}

}  // namespace cuda
}  // namespace fusedoptim
