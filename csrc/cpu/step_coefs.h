// Host-side helpers of the steps (<algo>_cpu.cpp): per-tensor coefficients from the step counts,
// and the device-side steps of CUDA buckets.
#pragma once
#include <array>
#include <vector>

#include "bucket.h"
#include "cpu/steps.h"
#include "cuda_table.h"

namespace fusedoptim {
namespace cpu {

using TensorCoefValues = std::array<double, kNumTensorCoefs>;

// Sets every entry's coefficients from its step count. The params of a bucket nearly always
// share one step count, so coefs_at_step runs once per distinct count in a row.
template <typename F>
void set_coefs_by_step(Bucket& bucket, const std::vector<double>& steps, F&& coefs_at_step) {
  std::vector<TensorEntry>& entries = bucket.entries();
  double cached_step = -1.0;
  TensorCoefValues coefs{};
  for (size_t k = 0; k < entries.size(); ++k) {
    if (k == 0 || steps[k] != cached_step) {
      cached_step = steps[k];
      coefs = coefs_at_step(cached_step);
    }
    for (int c = 0; c < kNumTensorCoefs; ++c) entries[k].coef[c] = coefs[c];
  }
}

// One table entry's scalar states on the host, in their own dtypes, for Coefs::advance (NOTE:
// [Step coefficients] in math/rule.h).
class EntryScalars {
 public:
  EntryScalars(Bucket& bucket, size_t entry) : bucket_(bucket), entry_(entry) {}
  double get(int k) const { return bucket_.scalar(k, entry_); }
  void set(int k, double value) { bucket_.set_scalar(k, entry_, value); }
  bool is_double(int k) const { return bucket_.scalar_is_double(k, entry_); }

 private:
  Bucket& bucket_;
  size_t entry_;
};

// Advances every entry's step (and its other scalar states) on the host and sets its
// coefficients with Coefs (NOTE: [Step coefficients] in math/rule.h).
template <typename Coefs, typename Hyper>
void set_step_coefs(Bucket& bucket, const Hyper& hyper) {
  const std::vector<double>& steps = bucket.advance_steps();
  if constexpr (Coefs::kExtraScalars == 0) {
    set_coefs_by_step(bucket, steps, [&](double step) {
      TensorCoefValues values;
      Coefs::at_step(hyper, step).to_coefs(values.data());
      return values;
    });
  } else {
    std::vector<TensorEntry>& entries = bucket.entries();
    for (size_t k = 0; k < entries.size(); ++k) {
      EntryScalars scalars(bucket, k);
      Coefs::advance(hyper, steps[k], scalars).to_coefs(entries[k].coef);
    }
  }
}

// A CUDA bucket whose scalar states torch keeps on the device (capturable=True, fused=True):
// the CUDA step kernel advances them and sets the coefficients, then the update runs, with
// GradScaler's tensors when given (NOTE: [Device steps and GradScaler] in csrc/cuda/sweep.cuh),
// and a device lr when given (NOTE: [Device learning rates]). Returns false, having done
// nothing, for any other bucket, which must then take no `amp` and no `lr`.
template <typename Hyper>
bool step_on_device(Bucket& bucket,
                    const char* (*cuda::KernelTable::*steps_kernel)(const cuda::DeviceTable&, const Hyper&,
                                                                    const cuda::DeviceSteps&, const cuda::Launch&),
                    const char* (*cuda::KernelTable::*kernel)(const cuda::DeviceTable&, const Hyper&,
                                                              const cuda::Launch&),
                    const Hyper& hyper, const DeviceAmp& amp, const DeviceLr& lr = {}) {
  if (!bucket.device_scalars()) {
    TORCH_CHECK(amp.grad_scale == nullptr && amp.found_inf == nullptr,
                "fusedoptim: grad_scale and found_inf are handled on the device only for CUDA buckets with device steps");
    TORCH_CHECK(lr.value == nullptr, "fusedoptim: a device lr is read only by CUDA buckets with device steps");
    return false;
  }
  bucket.device_table()->run_device_steps(steps_kernel, kernel, bucket.table(), hyper, bucket.entry_scalar_ptrs(),
                                          amp.grad_scale, amp.found_inf, lr.value, lr.is_double);
  return true;
}

// The step of rule `name` (cpu/kernels.h) on a bucket with device scalars, by its name.
#define FO_STEP_ON_DEVICE(bucket, name, hyper, amp) \
  step_on_device(bucket, &cuda::KernelTable::name##_steps, &cuda::KernelTable::name, hyper, amp)

}  // namespace cpu
}  // namespace fusedoptim
