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
#include <c10/core/Stream.h>
#include <c10/util/Exception.h>

#include "fusedoptim/cuda/launch.h"

namespace fusedoptim {
namespace cuda {

class DeviceTableCache {
 public:
  // Raises if this build has no CUDA kernels.
  explicit DeviceTableCache(c10::Device device);

  c10::Device device() const { return device_; }

  // With GradScaler's grad_scale and found_inf when given (SGD, which has no step kernel: NOTE:
  // [Device steps and GradScaler]).
  template <typename Hyper>
  void run(const char* (*KernelTable::*kernel)(const DeviceTable&, const Hyper&, const Launch&),
           const BucketTable& table, const Hyper& hyper, const float* grad_scale = nullptr,
           const float* found_inf = nullptr) {
    const c10::DeviceGuard guard(device_);
    DeviceTable device_table = sync(table, nullptr);
    device_table.grad_scale = grad_scale;
    device_table.found_inf = found_inf;
    const Launch where = launch();
    check((kernels()->*kernel)(device_table, hyper, where));
    note_capture(where);
  }

  // A step whose `step` counters live on the device (scalar_ptrs: each entry's float32 scalar
  // states, `step` first, as Bucket::entry_scalar_ptrs() has them): the step kernel advances
  // them and sets the coefficients, then the update runs; with GradScaler's grad_scale and
  // found_inf when given (NOTE: [Device steps and GradScaler]), and the device lr when given
  // (NOTE: [Device learning rates]). No host sync, and no allocation unless the table changed.
  template <typename Hyper>
  void run_device_steps(
      const char* (*KernelTable::*steps_kernel)(const DeviceTable&, const Hyper&, const DeviceSteps&, const Launch&),
      const char* (*KernelTable::*kernel)(const DeviceTable&, const Hyper&, const Launch&), const BucketTable& table,
      const Hyper& hyper, const std::vector<void*>& scalar_ptrs, const float* grad_scale, const float* found_inf,
      const void* lr = nullptr, bool lr_is_double = false) {
    const c10::DeviceGuard guard(device_);
    DeviceTable device_table = sync(table, &scalar_ptrs);
    device_table.grad_scale = grad_scale;
    device_table.found_inf = found_inf;
    device_table.lr = lr;
    device_table.lr_is_double = lr_is_double ? 1 : 0;
    const Launch where = launch();
    const int64_t num_scalars = table.num_entries > 0 ? static_cast<int64_t>(scalar_ptrs.size()) / table.num_entries : 0;
    check((kernels()->*steps_kernel)(device_table, hyper, DeviceSteps{device_scalars_, num_scalars}, where));
    check((kernels()->*kernel)(device_table, hyper, where));
    note_capture(where);
  }

  // Runs a reduction over `segments` and returns num_sums doubles per segment on the host
  // (a sync: LAMB's trust ratios are computed on the host from them).
  template <typename Hyper>
  void reduce(const char* (*KernelTable::*kernel)(const DeviceTable&, const Hyper&, const DeviceSegments&,
                                                  const Launch&),
              const BucketTable& table, const Hyper& hyper, const std::vector<Segment>& segments, int num_sums,
              std::vector<double>& out) {
    const c10::DeviceGuard guard(device_);
    const DeviceTable device_table = sync(table, nullptr);
    const DeviceSegments device_segments = upload_segments(segments, num_sums);
    check((kernels()->*kernel)(device_table, hyper, device_segments, launch()));
    download_sums(out);
  }

  // The grad norm's reduced value of `table`'s grads over `segments` (NOTE: [Precision options on
  // CUDA]): a 0-dim float64 tensor on the device, written on the current stream; no host sync.
  // scalar_ptrs: as run_device_steps gets them for a bucket with device steps (so the table
  // uploaded for the norm serves the step as well), else nullptr.
  at::Tensor grad_norm(const BucketTable& table, const math::GradNormHyper& hyper,
                       const std::vector<Segment>& segments, const std::vector<void*>* scalar_ptrs);

 private:
  // Uploads what changed of `table` (pointers and sizes, or coefficients that differ between
  // entries) and describes it for a launch. With scalar_ptrs (device steps) the coefficients
  // are the step kernel's, never the host's, and the scalar pointers travel with the table.
  // With the device guard held.
  DeviceTable sync(const BucketTable& table, const std::vector<void*>* scalar_ptrs);
  static void check(const char* error) {
    TORCH_CHECK(error == nullptr, "fusedoptim: a CUDA kernel launch failed: ", error);
  }
  // The current stream, on which the table buffer is then safe to use (recorded with the caching
  // allocator when it was allocated on another).
  Launch launch();
  // NOTE: [Captured tables]
  // A CUDA graph captured over a step keeps the device address of the table buffer (and the
  // segment buffer) it read. So once a launch was captured, that buffer is never written again
  // nor freed while the bucket lives: the next upload goes to a new buffer. (A plan rebuild makes new buckets; graphs
  // captured before it must be captured again, as after any change of the params.)
  void note_capture(const Launch& launch);
  // Whether `stream` (a cudaStream_t) is capturing a CUDA graph.
  static bool capturing(void* stream);
  // Copies `bytes` from host memory into `buffer` (grown as needed) on the current stream.
  void upload(at::Tensor& buffer, const void* data, size_t bytes);
  // The segments in device memory (uploaded when they changed) and a fresh output of num_sums
  // doubles per segment.
  DeviceSegments upload_segments(const std::vector<Segment>& segments, int num_sums);
  // A buffer a captured graph reads is kept, and a new one allocated (NOTE: [Captured tables]).
  void retire_if_captured(at::Tensor& buffer, bool& captured);
  void download_sums(std::vector<double>& out);

  c10::Device device_;
  int grid_;
  at::Tensor table_buffer_;  // device: entries, the padded prefix, then (device steps) scalar pointers
  c10::Stream table_stream_;  // the stream table_buffer_ was allocated on
  c10::Stream segment_stream_;  // the stream segment_buffer_ was allocated on
  bool table_captured_ = false;
  std::vector<at::Tensor> captured_tables_;  // and staging blocks of captured uploads: NOTE: [Captured tables]
  float* const* device_scalars_ = nullptr;
  at::Tensor segment_buffer_;
  bool segments_captured_ = false;
  std::vector<Segment> uploaded_segments_;  // what segment_buffer_ holds
  at::Tensor sums_;
  std::vector<TensorEntry> uploaded_;  // what table_buffer_ holds
  std::vector<void*> uploaded_scalar_ptrs_;  // and the scalar pointers after it (device steps), or none
  std::vector<int64_t> padded_prefix_;
  std::vector<unsigned char> staging_;
};

}  // namespace cuda
}  // namespace fusedoptim
