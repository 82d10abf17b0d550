// The flat address table of a bucket, as the kernels see it: plain structs, no torch, so the
// same table feeds every CPU instruction set and (in device memory) the CUDA kernels.
#pragma once
#include <cstdint>

#include "fusedoptim/dtype.h"

namespace fusedoptim {

// Named slots of a table entry. Slot 0 is always the param and slot 1 its grad; the
// optimizer's states follow in the order the algorithm names them (see each math header).
// With master weights slot 0 is the fp32 master copy the rule updates, and the 16-bit param
// written from it is in the last slot (NOTE: [Master weights] in cpu/sweep.h).
constexpr int kParamSlot = 0;
constexpr int kGradSlot = 1;
constexpr int kFirstStateSlot = 2;
constexpr int kMaxSlots = 6;
constexpr int kParam16Slot = kMaxSlots - 1;
constexpr int kNumTensorCoefs = 4;

// One tensor of a bucket that has a gradient this step.
struct TensorEntry {
  void* ptr[kMaxSlots];
  int64_t numel;      // in storage elements (complex params count twice, as real views)
  double coef[kNumTensorCoefs];  // per-tensor coefficients, set by the host step (<algo>_cpu.cpp)
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
  // Every grad is multiplied by this before the rule sees it (the clip coefficient of
  // max_grad_norm, in the math type); 1.0: not at all.
  double grad_scale = 1.0;
  // The storage of the elementwise states (state_dtype): the params' unless the optimizer
  // asked for another; see NOTE: [State dtypes] in cpu/sweep.h for the pairs that exist.
  DType state_dtype = dtype;
  // Slot 0 holds fp32 master weights of the bucket's 16-bit params (master_weights=True).
  bool master_weights = false;
  // The 16-bit params are rounded stochastically, with this step's seed (NOTE: [Stochastic
  // rounding] in dtype.h).
  bool stochastic_rounding = false;
  uint64_t rounding_seed = 0;
  // CUDA buckets only (NOTE: [Precision options on CUDA] in csrc/cuda/sweep.cuh): the clip
  // coefficient as the device address of a double (grad_scale stays 1, so no host sync), and
  // the step counter stochastic rounding advances on the device (so a captured graph draws
  // new bits on each replay). nullptr: not this step.
  const double* device_grad_scale = nullptr;
  const int64_t* device_rounding_step = nullptr;
};

// A piece of one entry, [begin, end) in the entry's own index space: the unit of the
// reduction sweeps (see NOTE: [Deterministic reductions]).
struct Segment {
  int64_t entry, begin, end;
};

}  // namespace fusedoptim
