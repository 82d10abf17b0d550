// Host-side helpers of the CPU steps (<algo>_cpu.cpp): per-tensor coefficients.
#pragma once
#include <array>
#include <vector>

#include "bucket.h"

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

}  // namespace cpu
}  // namespace fusedoptim
