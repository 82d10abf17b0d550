#include "cuda_table.h"

#include <cstring>

#include <ATen/ATen.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>

namespace fusedoptim {
namespace cuda {
namespace {

// Set by the CUDA objects' static initializer (csrc/cuda/registry_cuda.cu) when the build has
// them; a plain pointer, so it is valid before any dynamic initialization runs.
const KernelTable* registered_kernels = nullptr;

bool same_tensors(const TensorEntry& a, const TensorEntry& b) {
  return std::memcmp(a.ptr, b.ptr, sizeof(a.ptr)) == 0 && a.numel == b.numel;
}

bool same_coefs(const TensorEntry& a, const TensorEntry& b) {
  return std::memcmp(a.coef, b.coef, sizeof(a.coef)) == 0 && a.first_step == b.first_step;
}

}  // namespace

const KernelTable* kernels() { return registered_kernels; }
void register_kernels(const KernelTable* table) { registered_kernels = table; }

DeviceTableCache::DeviceTableCache(c10::Device device)
    : device_(device), table_stream_(c10::Stream::DEFAULT, device), segment_stream_(c10::Stream::DEFAULT, device) {
  TORCH_CHECK(device.is_cuda(), "fusedoptim: a device table is for CUDA tensors, not ", device);
  TORCH_CHECK(kernels() != nullptr, "fusedoptim: this build of fusedoptim._C has no CUDA kernels");
  const char* error = nullptr;
  const int count = kernels()->multiprocessor_count(device.index(), &error);
  TORCH_CHECK(count > 0, "fusedoptim: cannot query ", device, ": ", error ? error : "no multiprocessors");
  grid_ = count * kBlocksPerMultiprocessor;
}

Launch DeviceTableCache::launch() {
  const c10::impl::VirtualGuardImpl guard_impl(device_.type());
  const c10::Stream stream = guard_impl.getStream(device_);
  if (table_buffer_.defined() && stream != table_stream_) {
    guard_impl.recordDataPtrOnStream(table_buffer_.storage().data_ptr(), stream);
  }
  if (segment_buffer_.defined() && stream != segment_stream_) {
    guard_impl.recordDataPtrOnStream(segment_buffer_.storage().data_ptr(), stream);
  }
  return Launch{stream.native_handle(), grid_};
}

bool DeviceTableCache::capturing(void* stream) {
  const char* error = nullptr;
  const int status = kernels()->stream_capturing(stream, &error);
  TORCH_CHECK(status >= 0, "fusedoptim: cudaStreamIsCapturing failed: ", error);
  return status != 0;
}

void DeviceTableCache::note_capture(const Launch& launch) {
  if (capturing(launch.stream)) table_captured_ = segments_captured_ = true;
}

void DeviceTableCache::retire_if_captured(at::Tensor& buffer, bool& captured) {
  if (!captured) return;
  captured_tables_.push_back(std::move(buffer));
  buffer = at::Tensor();
  captured = false;
}

void DeviceTableCache::upload(at::Tensor& buffer, const void* data, size_t bytes) {
  const int64_t size = static_cast<int64_t>(bytes);
  if (!buffer.defined() || buffer.numel() < size) {
    buffer = at::empty({size}, at::TensorOptions().dtype(at::kByte).device(device_));
  }
  // A fresh pinned block per upload: the caching host allocator keeps it until the copy,
  // queued on the current stream, has read it. A copy captured in a graph reads it again on
  // every replay: then it is kept while the bucket lives (NOTE: [Captured tables]).
  at::Tensor staging = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(staging.data_ptr(), data, bytes);
  buffer.narrow(0, 0, size).copy_(staging, /*non_blocking=*/true);
  const c10::Stream stream = c10::impl::VirtualGuardImpl(device_.type()).getStream(device_);
  if (capturing(stream.native_handle())) captured_tables_.push_back(std::move(staging));
}

DeviceTable DeviceTableCache::sync(const BucketTable& table, const std::vector<void*>* scalar_ptrs) {
  // The clip coefficient reaches CUDA kernels through device_grad_scale (no host sync).
  TORCH_CHECK(table.grad_scale == 1.0, "fusedoptim: a CUDA bucket takes its clip coefficient as a device tensor");
  const int64_t n = table.num_entries;
  TORCH_CHECK(scalar_ptrs == nullptr || (n == 0 ? scalar_ptrs->empty() : scalar_ptrs->size() % n == 0),
              "fusedoptim: ", scalar_ptrs ? scalar_ptrs->size() : 0, " device scalars for ", n, " table entries");
  bool layout_changed = static_cast<int64_t>(uploaded_.size()) != n;
  for (int64_t i = 0; i < n && !layout_changed; ++i) layout_changed = !same_tensors(table.entries[i], uploaded_[i]);
  // Device steps: the step kernel writes every entry's coefficients on the device.
  bool uniform = scalar_ptrs == nullptr;
  for (int64_t i = 1; i < n && uniform; ++i) uniform = same_coefs(table.entries[i], table.entries[0]);
  // Non-uniform coefficients are read from the device entries: upload them when they moved.
  // The scalar pointers travel with the table; a sync without them (the grad norm's, which
  // reads no step) keeps those uploaded.
  if (scalar_ptrs != nullptr && !layout_changed) layout_changed = *scalar_ptrs != uploaded_scalar_ptrs_;
  bool coefs_changed = false;
  if (!uniform && !layout_changed && scalar_ptrs == nullptr) {
    for (int64_t i = 0; i < n && !coefs_changed; ++i) coefs_changed = !same_coefs(table.entries[i], uploaded_[i]);
  }
  if (layout_changed) {
    padded_prefix_.assign(n + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      padded_prefix_[i + 1] = padded_prefix_[i] + padded_numel(table.entries[i].numel);
    }
  }
  if (layout_changed || coefs_changed) {
    uploaded_.assign(table.entries, table.entries + n);
    uploaded_scalar_ptrs_ = scalar_ptrs ? *scalar_ptrs : std::vector<void*>();
    const size_t entry_bytes = n * sizeof(TensorEntry), prefix_bytes = (n + 1) * sizeof(int64_t);
    const size_t scalar_bytes = scalar_ptrs ? scalar_ptrs->size() * sizeof(void*) : 0;
    staging_.resize(entry_bytes + prefix_bytes + scalar_bytes);
    std::memcpy(staging_.data(), table.entries, entry_bytes);
    std::memcpy(staging_.data() + entry_bytes, padded_prefix_.data(), prefix_bytes);
    if (scalar_ptrs) std::memcpy(staging_.data() + entry_bytes + prefix_bytes, scalar_ptrs->data(), scalar_bytes);
    retire_if_captured(table_buffer_, table_captured_);
    const bool fresh = !table_buffer_.defined() || table_buffer_.numel() < static_cast<int64_t>(staging_.size());
    upload(table_buffer_, staging_.data(), staging_.size());
    if (fresh) table_stream_ = c10::impl::VirtualGuardImpl(device_.type()).getStream(device_);
  }
  DeviceTable out{};
  if (n > 0) {
    const auto* base = static_cast<const unsigned char*>(table_buffer_.data_ptr());
    out.entries = reinterpret_cast<const TensorEntry*>(base);
    out.prefix = reinterpret_cast<const int64_t*>(base + n * sizeof(TensorEntry));
    device_scalars_ = reinterpret_cast<float* const*>(base + n * sizeof(TensorEntry) + (n + 1) * sizeof(int64_t));
  }
  out.num_entries = n;
  out.total_numel = n > 0 ? padded_prefix_[n] : 0;
  out.num_chunks = (out.total_numel + kChunkNumel - 1) / kChunkNumel;
  out.dtype = table.dtype;
  out.uniform_coefs = uniform ? 1 : 0;
  if (uniform && n > 0) out.uniform = table.entries[0];
  out.state_dtype = table.state_dtype;
  out.master_weights = table.master_weights ? 1 : 0;
  out.stochastic_rounding = table.stochastic_rounding ? 1 : 0;
  out.rounding_seed = table.rounding_seed;
  out.rounding_step = table.device_rounding_step;
  out.clip_coef = table.device_grad_scale;
  return out;
}

DeviceSegments DeviceTableCache::upload_segments(const std::vector<Segment>& segments, int num_sums) {
  const int64_t count = static_cast<int64_t>(segments.size());
  const bool same = segments.size() == uploaded_segments_.size() &&
                    (count == 0 || std::memcmp(segments.data(), uploaded_segments_.data(), count * sizeof(Segment)) == 0);
  if (!same && count > 0) {
    retire_if_captured(segment_buffer_, segments_captured_);
    const bool fresh = !segment_buffer_.defined() || segment_buffer_.numel() < count * int64_t(sizeof(Segment));
    upload(segment_buffer_, segments.data(), segments.size() * sizeof(Segment));
    if (fresh) segment_stream_ = c10::impl::VirtualGuardImpl(device_.type()).getStream(device_);
    uploaded_segments_ = segments;
  }
  sums_ = at::empty({count * num_sums}, at::TensorOptions().dtype(at::kDouble).device(device_));
  return DeviceSegments{count > 0 ? static_cast<const Segment*>(segment_buffer_.data_ptr()) : nullptr, count,
                        sums_.data_ptr<double>()};
}

at::Tensor DeviceTableCache::grad_norm(const BucketTable& table, const math::GradNormHyper& hyper,
                                       const std::vector<Segment>& segments, const std::vector<void*>* scalar_ptrs) {
  const c10::DeviceGuard guard(device_);
  const DeviceTable device_table = sync(table, scalar_ptrs);
  const DeviceSegments device_segments = upload_segments(segments, 1);
  at::Tensor total = at::empty({}, at::TensorOptions().dtype(at::kDouble).device(device_));
  const Launch where = launch();
  check(kernels()->grad_norm(device_table, hyper, device_segments, total.data_ptr<double>(), where));
  note_capture(where);
  return total;
}

void DeviceTableCache::download_sums(std::vector<double>& out) {
  const at::Tensor host = sums_.cpu();
  out.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
}

}  // namespace cuda
}  // namespace fusedoptim
