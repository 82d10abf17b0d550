// The host side of each algorithm's step over a bucket (csrc/cpu/<algo>_cpu.cpp), shared by
// the optimizers' cached buckets (bindings.cpp) and the registered ops (ops.cpp).
#pragma once
#include <functional>

#include "bucket.h"
#include "cpu/kernels.h"

namespace fusedoptim {
namespace cpu {

// grad_scale, found_inf: GradScaler's device tensors, for CUDA buckets with device steps only.
void adam_step(Bucket& bucket, const math::AdamHyper& hyper,
               const std::function<math::AdamStepCoefs(double)>& coefs_at_step,
               const float* grad_scale = nullptr, const float* found_inf = nullptr);
void sgd_step(Bucket& bucket, const math::SgdHyper& hyper);
void adadelta_step(Bucket& bucket, const math::AdadeltaHyper& hyper);
void adagrad_step(Bucket& bucket, const math::AdagradHyper& hyper);
void adamax_step(Bucket& bucket, const math::AdamaxHyper& hyper);
void asgd_step(Bucket& bucket, const math::AsgdHyper& hyper);
void nadam_step(Bucket& bucket, const math::NadamHyper& hyper);
void radam_step(Bucket& bucket, const math::RadamHyper& hyper);
void rmsprop_step(Bucket& bucket, const math::RmspropHyper& hyper);
void rprop_step(Bucket& bucket, const math::RpropHyper& hyper);
void lion_step(Bucket& bucket, const math::LionHyper& hyper);
// The sum of the squares of every grad element of the bucket (for global grad-norm clipping).
double grad_squares(Bucket& bucket);
void lamb_step(Bucket& bucket, const math::LambHyper& hyper, double lr, bool bias_correction, bool always_adapt);

}  // namespace cpu
}  // namespace fusedoptim
