// The flat address table of a bucket, as the kernels see it: plain structs, no torch, so the
// same table feeds every CPU instruction set and (in device memory) the CUDA kernels.
#pragma once
#include <cstdint>

#include "fusedoptim/dtype.h"

namespace fusedoptim {

// Named slots of a table entry. Slot 0 is always the param and slot 1 its grad; the
// optimizer's states follow in the order the algorithm names them (see each math header).
constexpr int kParamSlot = 0;
constexpr int kGradSlot = 1;
constexpr int kFirstStateSlot = 2;
constexpr int kMaxSlots = 5;

// One tensor of a bucket that has a gradient this step.
struct TensorEntry {
  void* ptr[kMaxSlots];
  int64_t numel;      // in storage elements (complex params count twice, as real views)
  double coef[2];     // per-tensor coefficients (Adam: -step_size, 1/sqrt(bias_correction2))
  int32_t first_step; // 1 on the step that initialises this tensor's state (SGD momentum)
};

// The entries of one step; prefix[i] is the flat index where entry i starts, so a range
// [begin, end) of the bucket's flat index space maps to entries by binary search.
struct BucketTable {
  const TensorEntry* entries;
  const int64_t* prefix;
  int64_t num_entries;
  int64_t total_numel;
  DType dtype;
};

}  // namespace fusedoptim
