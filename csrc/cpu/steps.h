// The host side of each algorithm's step over a bucket (csrc/cpu/<algo>_cpu.cpp), shared by
// the optimizers' cached buckets (bindings.cpp) and the registered ops (ops.cpp).
#pragma once
#include <functional>

#include "bucket.h"
#include "cpu/kernels.h"

namespace fusedoptim {
namespace cpu {

// GradScaler's grad_scale and found_inf (one-element float32 tensors on the bucket's device),
// for CUDA buckets with device steps only (NOTE: [Device steps and GradScaler]); nullptr: none.
struct DeviceAmp {
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
};

// A Tensor lr on a CUDA bucket's device (one float32 or float64 element), which the kernels of
// a bucket with device steps read in place of the host's lr (NOTE: [Device learning rates] in
// csrc/cuda/sweep.cuh); nullptr: none.
struct DeviceLr {
  const void* value = nullptr;
  bool is_double = false;
};

// The steps with a `step` counter take `amp` (CUDA buckets with device steps only).
// Adam also takes a device lr (NOTE: [Device learning rates]).
void adam_step(Bucket& bucket, const math::AdamHyper& hyper,
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step, const DeviceAmp& amp = {},
               const DeviceLr& lr = {});
// SGD takes `amp` too, for a CUDA bucket whose params all have momentum buffers with values
// (or no momentum): NOTE: [Device steps and GradScaler].
void sgd_step(Bucket& bucket, const math::SgdHyper& hyper, const DeviceAmp& amp = {});
void adadelta_step(Bucket& bucket, const math::AdadeltaHyper& hyper, const DeviceAmp& amp = {});
void adagrad_step(Bucket& bucket, const math::AdagradHyper& hyper, const DeviceAmp& amp = {});
void adamax_step(Bucket& bucket, const math::AdamaxHyper& hyper, const DeviceAmp& amp = {});
void asgd_step(Bucket& bucket, const math::AsgdHyper& hyper, const DeviceAmp& amp = {});
void nadam_step(Bucket& bucket, const math::NadamHyper& hyper, const DeviceAmp& amp = {});
void radam_step(Bucket& bucket, const math::RadamHyper& hyper, const DeviceAmp& amp = {});
void rmsprop_step(Bucket& bucket, const math::RmspropHyper& hyper, const DeviceAmp& amp = {});
void rprop_step(Bucket& bucket, const math::RpropHyper& hyper, const DeviceAmp& amp = {});
void lion_step(Bucket& bucket, const math::LionHyper& hyper);
// The sum of the squares of every grad element of the bucket (for global grad-norm clipping).
double grad_squares(Bucket& bucket);
// The global grad norm (math/grad_norm.h): the kernel variant for a norm type (raises for
// norm types <= 0), how two partial results combine, and a bucket's grads reduced to one
// value: sum |g|^p, or max |g| for inf (the caller takes the 1/p power).
math::GradNormHyper grad_norm_hyper(double norm_type);
double combine_grad_norms(const math::GradNormHyper& hyper, double a, double b);
double grad_norm(Bucket& bucket, const math::GradNormHyper& hyper);
// Multiplies every grad of the bucket by scale, in the grads' math type (clip_grad_norm_).
void scale_grads(Bucket& bucket, double scale);
// The same over a list of tensors without a Bucket (NOTE: [Grad lists without buckets]);
// the indices of the tensors the kernels can't take are appended to `others`.
double grad_norm_of_list(const std::vector<at::Tensor>& grads, const math::GradNormHyper& hyper,
                         std::vector<int64_t>& others);
void scale_grad_list(const std::vector<at::Tensor>& grads, double scale, std::vector<int64_t>& others);
void lamb_step(Bucket& bucket, const math::LambHyper& hyper, double lr, bool bias_correction, bool always_adapt);

}  // namespace cpu
}  // namespace fusedoptim
