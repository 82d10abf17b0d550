// The CPU instruction set steps use now, and the parallel sweep of a bucket with it.
#pragma once
#include <ATen/Parallel.h>

#include "cpu/kernels.h"

namespace fusedoptim {
namespace cpu {

CpuCapability active_capability();
// Forces `capability`; raises if this CPU can't run it.
void set_active_capability(CpuCapability capability);
CpuCapability capability_from_name(const std::string& name);

// Elements per task: large enough that a thread's share amortises the fork, small enough
// that both cores get work on a bucket of a few hundred KB.
constexpr int64_t kGrainSize = 32768;

// Runs kernel(table, hyper, begin, end) over the whole table with at::parallel_for, so
// torch.set_num_threads holds.
template <typename Hyper>
void parallel_sweep(void (*kernel)(const BucketTable&, const Hyper&, int64_t, int64_t), const BucketTable& table,
                    const Hyper& hyper) {
  if (table.total_numel == 0) return;
  at::parallel_for(0, table.total_numel, kGrainSize,
                   [&](int64_t begin, int64_t end) { kernel(table, hyper, begin, end); });
}

}  // namespace cpu
}  // namespace fusedoptim
