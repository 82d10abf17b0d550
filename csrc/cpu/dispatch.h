// The CPU instruction set steps use now, and the parallel sweep of a bucket with it.
#pragma once
#include <algorithm>
#include <vector>

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

// Segments of a reduction: at most this many elements, so a large tensor's sum is split
// across threads, yet independent of the thread count (NOTE: [Deterministic reductions]).
constexpr int64_t kSegmentNumel = 32768;

// Runs a reduction kernel over all of `segments` with at::parallel_for; out gets
// num_sums doubles per segment.
template <typename Hyper>
void parallel_reduce(void (*kernel)(const BucketTable&, const Hyper&, const Segment*, int64_t, int64_t, double*),
                     const BucketTable& table, const Hyper& hyper, const std::vector<Segment>& segments,
                     int num_sums, std::vector<double>& out) {
  out.assign(segments.size() * num_sums, 0.0);
  if (segments.empty()) return;
  const int64_t count = static_cast<int64_t>(segments.size());
  const int64_t grain = std::max<int64_t>(1, kGrainSize * count / std::max<int64_t>(1, table.total_numel));
  at::parallel_for(0, count, grain, [&](int64_t first, int64_t last) {
    kernel(table, hyper, segments.data(), first, last, out.data());
  });
}

}  // namespace cpu
}  // namespace fusedoptim
