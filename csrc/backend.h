// Runs an update rule or a reduction over a bucket on the bucket's device: the CPU's active
// instruction set (at::parallel_for) or one CUDA launch. The host steps (<algo>_cpu.cpp) are the
// same for both: they compute the per-tensor coefficients and call these.
#pragma once
#include <vector>

#include "bucket.h"
#include "cpu/dispatch.h"
#include "cuda_table.h"

namespace fusedoptim {

template <typename Hyper>
void sweep_rule(Bucket& bucket, void (*cpu::KernelTable::*cpu_kernel)(const BucketTable&, const Hyper&, int64_t, int64_t),
                const char* (*cuda::KernelTable::*cuda_kernel)(const cuda::DeviceTable&, const Hyper&,
                                                               const cuda::Launch&),
                const Hyper& hyper) {
  if (cuda::DeviceTableCache* device = bucket.device_table()) {
    device->run(cuda_kernel, bucket.table(), hyper);
  } else {
    cpu::parallel_sweep(cpu::kernels_for(cpu::active_capability()).*cpu_kernel, bucket.table(), hyper);
  }
}

// num_sums doubles per segment of `segments` into `out` (NOTE: [Deterministic reductions]).
template <typename Hyper>
void reduce_rule(Bucket& bucket,
                 void (*cpu::KernelTable::*cpu_kernel)(const BucketTable&, const Hyper&, const Segment*, int64_t,
                                                       int64_t, double*),
                 const char* (*cuda::KernelTable::*cuda_kernel)(const cuda::DeviceTable&, const Hyper&,
                                                                const cuda::DeviceSegments&, const cuda::Launch&),
                 const Hyper& hyper, const std::vector<Segment>& segments, int num_sums, std::vector<double>& out) {
  if (cuda::DeviceTableCache* device = bucket.device_table()) {
    device->reduce(cuda_kernel, bucket.table(), hyper, segments, num_sums, out);
  } else {
    cpu::parallel_reduce(cpu::kernels_for(cpu::active_capability()).*cpu_kernel, bucket.table(), hyper, segments,
                         num_sums, out);
  }
}

// Both kernels of one rule by the rule's name in the lists of cpu/kernels.h.
#define FO_SWEEP(bucket, name, hyper) sweep_rule(bucket, &cpu::KernelTable::name, &cuda::KernelTable::name, hyper)
#define FO_REDUCE(bucket, name, hyper, segments, num_sums, out) \
  reduce_rule(bucket, &cpu::KernelTable::name, &cuda::KernelTable::name, hyper, segments, num_sums, out)

}  // namespace fusedoptim
