// The device side of a CUDA bucket: its table in device memory, kept in step with the host
// table Bucket::prepare() fills, and the launches of the CUDA kernels on the current stream
// (NOTE: [One launch per bucket] in csrc/cuda/sweep.cuh). The only file that touches torch for
// CUDA, through torch's device-generic headers (NOTE: [CUDA without torch headers]).
#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include "fusedoptim/cuda/launch.h"

namespace fusedoptim {
namespace cuda {

class DeviceTableCache {
 public:
  // Raises if this build has no CUDA kernels.
  explicit DeviceTableCache(c10::Device device);

  template <typename Hyper>
  void run(const char* (*KernelTable::*kernel)(const DeviceTable&, const Hyper&, const Launch&),
           const BucketTable& table, const Hyper& hyper) {
    const c10::DeviceGuard guard(device_);
    const DeviceTable device_table = sync(table);
    const char* error = (kernels()->*kernel)(device_table, hyper, launch());
    TORCH_CHECK(error == nullptr, "fusedoptim: a CUDA kernel launch failed: ", error);
  }

  // Runs a reduction over `segments` and returns num_sums doubles per segment on the host
  // (a sync: LAMB's trust ratios are computed on the host from them).
  template <typename Hyper>
  void reduce(const char* (*KernelTable::*kernel)(const DeviceTable&, const Hyper&, const DeviceSegments&,
                                                  const Launch&),
              const BucketTable& table, const Hyper& hyper, const std::vector<Segment>& segments, int num_sums,
              std::vector<double>& out) {
    const c10::DeviceGuard guard(device_);
    const DeviceTable device_table = sync(table);
    const DeviceSegments device_segments = upload_segments(segments, num_sums);
    const char* error = (kernels()->*kernel)(device_table, hyper, device_segments, launch());
    TORCH_CHECK(error == nullptr, "fusedoptim: a CUDA kernel launch failed: ", error);
    download_sums(out);
  }

 private:
  // Uploads what changed of `table` (pointers and sizes, or coefficients that differ between
  // entries) and describes it for a launch. With the device guard held.
  DeviceTable sync(const BucketTable& table);
  Launch launch() const;
  // Copies `bytes` from host memory into `buffer` (grown as needed) on the current stream.
  void upload(at::Tensor& buffer, const void* data, size_t bytes);
  DeviceSegments upload_segments(const std::vector<Segment>& segments, int num_sums);
  void download_sums(std::vector<double>& out);

  c10::Device device_;
  int grid_;
  at::Tensor table_buffer_;  // device: entries, then the padded prefix
  at::Tensor segment_buffer_;
  at::Tensor sums_;
  std::vector<TensorEntry> uploaded_;  // what table_buffer_ holds
  std::vector<int64_t> padded_prefix_;
  std::vector<unsigned char> staging_;
};

}  // namespace cuda
}  // namespace fusedoptim
