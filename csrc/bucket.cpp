#include "bucket.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "cpu/dispatch.h"
#include "cuda_table.h"

namespace fusedoptim {
namespace {

DType storage_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: case at::kComplexFloat: return DType::kFloat32;
    case at::kDouble: case at::kComplexDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: case at::kComplexHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "fusedoptim: no fused kernel for dtype ", type);
  }
}

// The (param, state) storage pairs the kernels have (NOTE: [State dtypes] in cpu/sweep.h).
bool state_storage_supported(DType param, DType state) {
  return param == state || (param == DType::kFloat32 && state == DType::kBFloat16) ||
         ((param == DType::kBFloat16 || param == DType::kFloat16) && state == DType::kFloat32);
}

}  // namespace

Bucket::Bucket(std::vector<at::Tensor> params, std::vector<std::string> names,
               std::vector<std::vector<at::Tensor>> states, std::vector<std::vector<at::Tensor>> scalars,
               std::vector<int64_t> first_step, std::vector<at::Tensor> masters)
    : params_(std::move(params)), names_(std::move(names)), states_(std::move(states)), scalars_(std::move(scalars)),
      first_step_(std::move(first_step)), masters_(std::move(masters)), device_(c10::kCPU) {
  const size_t n = params_.size();
  TORCH_CHECK(n > 0, "fusedoptim: a bucket needs at least one param");
  device_ = params_[0].device();
  TORCH_CHECK(device_.is_cpu() || device_.is_cuda(), "fusedoptim: no fused kernels for params on ", device_);
  TORCH_CHECK(names_.size() == n && first_step_.size() == n, "fusedoptim: bucket tables of different lengths");
  TORCH_CHECK(static_cast<int>(states_.size()) <= kMaxSlots - kFirstStateSlot, "fusedoptim: too many states");
  has_slots_ = !states_.empty() || !scalars_.empty() || !masters_.empty();
  dtype_ = storage_dtype(params_[0].scalar_type());
  // The states' dtype: the params' unless the states given have another (state_dtype).
  at::ScalarType state_type = params_[0].scalar_type();
  for (const auto& per_state : states_) {
    for (const at::Tensor& state : per_state) {
      if (state.defined()) {
        state_type = state.scalar_type();
        break;
      }
    }
    if (state_type != params_[0].scalar_type()) break;
  }
  state_dtype_ = storage_dtype(state_type);
  TORCH_CHECK(state_storage_supported(dtype_, state_dtype_) &&
                  c10::isComplexType(state_type) == c10::isComplexType(params_[0].scalar_type()),
              "fusedoptim: no fused kernel for ", params_[0].scalar_type(), " params with ", state_type, " states");
  state_ptrs_.assign(n, {});
  scalar_ptrs_.assign(scalars_.size(), std::vector<void*>(n, nullptr));
  scalar_types_.assign(scalars_.size(), std::vector<at::ScalarType>(n, at::kFloat));
  has_state_.assign(n, 1);
  bool placement_known = false;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params_[i];
    TORCH_CHECK(storage_dtype(p.scalar_type()) == dtype_, "fusedoptim: mixed storage dtypes in one bucket");
    TORCH_CHECK(p.device() == device_, "fusedoptim: params on ", device_, " and ", p.device(), " in one bucket");
    param_dtypes_.push_back(p.scalar_type());
    param_numels_.push_back(p.numel());
    storage_numels_.push_back(p.is_complex() ? 2 * p.numel() : p.numel());
    for (size_t s = 0; s < states_.size(); ++s) {
      TORCH_CHECK(states_[s].size() == n, "fusedoptim: bucket tables of different lengths");
      const at::Tensor& state = states_[s][i];
      if (!state.defined()) {
        has_state_[i] = 0;
        continue;
      }
      const bool same_kind = state_dtype_ == dtype_ ? state.scalar_type() == p.scalar_type()
                                                    : state.scalar_type() == state_type && !p.is_complex();
      TORCH_CHECK(state.device() == device_ && state.is_contiguous() && same_kind && state.numel() == p.numel(),
                  "fusedoptim: the state of ", names_[i], " must be a contiguous tensor like the param, on ", device_,
                  state_dtype_ == dtype_ ? "" : " (of the optimizer's state_dtype)");
      state_ptrs_[i][s] = state.data_ptr();
    }
    for (size_t k = 0; k < scalars_.size(); ++k) {
      TORCH_CHECK(scalars_[k].size() == n, "fusedoptim: bucket tables of different lengths");
      const at::Tensor& scalar = scalars_[k][i];
      if (!scalar.defined()) {
        has_state_[i] = 0;
        continue;
      }
      const at::ScalarType type = scalar.scalar_type();
      const bool on_device = device_.is_cuda() && scalar.device() == device_ && type == at::kFloat;
      TORCH_CHECK((scalar.is_cpu() || on_device) && scalar.numel() == 1 &&
                      (type == at::kFloat || type == at::kDouble || type == at::kBFloat16 || type == at::kHalf),
                  "fusedoptim: the scalar states of ", names_[i],
                  " must be one-element float tensors on the CPU (or float32 on the params' CUDA device)");
      if (!placement_known) device_scalars_ = on_device;  // the first defined scalar decides
      placement_known = true;
      TORCH_CHECK(on_device == device_scalars_, "fusedoptim: scalar states of one bucket on the CPU and on ", device_);
      scalar_ptrs_[k][i] = scalar.data_ptr();
      scalar_types_[k][i] = type;
    }
  }
  TORCH_CHECK(masters_.empty() || ((dtype_ == DType::kBFloat16 || dtype_ == DType::kFloat16) &&
                                   !params_[0].is_complex() && masters_.size() == n &&
                                   (states_.empty() || state_dtype_ == DType::kFloat32)),
              "fusedoptim: master weights are for bf16/fp16 params with float32 states");
  master_ptrs_.assign(n, nullptr);
  for (size_t i = 0; i < masters_.size(); ++i) {
    const at::Tensor& master = masters_[i];
    if (!master.defined()) {
      has_state_[i] = 0;
      continue;
    }
    TORCH_CHECK(master.device() == device_ && master.is_contiguous() && master.scalar_type() == at::kFloat &&
                    master.numel() == params_[i].numel(),
                "fusedoptim: the master weights of ", names_[i], " must be a contiguous float32 tensor like the param, on ",
                device_);
    master_ptrs_[i] = master.data_ptr();
  }
  entries_.reserve(n);
  prefix_.reserve(n + 1);
  entry_params_.reserve(n);
  if (device_.is_cuda()) device_table_ = std::make_unique<cuda::DeviceTableCache>(device_);
}

Bucket::~Bucket() = default;

void Bucket::use_grads(std::vector<at::Tensor> grads) {
  TORCH_CHECK(grads.size() == params_.size(), "fusedoptim: ", grads.size(), " grads for ", params_.size(), " params");
  grads_ = std::move(grads);
}

// NOTE: [Prefetching the grads]
// Reading 10,000 grads is a chain of dependent loads per param (param impl -> autograd meta ->
// grad impl -> grad storage) that mostly misses the cache, since a step has just streamed the
// model through it. So prepare() probes the params in parallel (each core has its own miss
// buffers), and within a thread a software pipeline prefetches each level of the chain a few
// params ahead so the misses of different params overlap. The probe records what it found
// in a compact array; the table is then built from it sequentially.
void Bucket::probe(int64_t begin, int64_t end) {
  auto impl = [&](int64_t i) { return params_[i].unsafeGetTensorImpl(); };
  for (int64_t i = begin; i < end; ++i) {
    if (i + 24 < end) __builtin_prefetch(impl(i + 24));
    if (i + 16 < end) __builtin_prefetch(impl(i + 16)->autograd_meta());
    if (i + 8 < end) {
      const at::Tensor& ahead = impl(i + 8)->grad();
      if (ahead.defined()) __builtin_prefetch(ahead.unsafeGetTensorImpl());
    }
    if (i + 4 < end) {
      const at::Tensor& ahead = impl(i + 4)->grad();
      if (ahead.defined()) __builtin_prefetch(ahead.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl());
      __builtin_prefetch(impl(i + 4)->storage().unsafeGetStorageImpl());
    }
    ParamProbe& out = probes_[i];
    const at::Tensor& param = params_[i];
    const at::Tensor& grad = grad_of(i);
    if (!grad.defined()) {
      out.status = Probe::kNoGrad;
    } else if (param.scalar_type() != param_dtypes_[i] || param.numel() != param_numels_[i] ||
               param.device() != device_ || !param.is_contiguous() || grad.layout() != c10::kStrided ||
               // A tensor subclass (a DTensor grad, say) has no memory of its own to sweep.
               grad.unsafeGetTensorImpl()->is_python_dispatch()) {
      out.status = Probe::kNeedsRebuild;
    } else if (grad.scalar_type() != param.scalar_type() || grad.sizes() != param.sizes() ||
               grad.device() != param.device()) {
      out.status = Probe::kBadGrad;
    } else if (has_slots_ && !has_state_[i]) {
      out.status = Probe::kNeedsRebuild;
    } else if (!grad.is_contiguous()) {
      out.status = Probe::kStridedGrad;
    } else {
      out.status = Probe::kReady;
      out.param_data = param.data_ptr();
      out.grad_data = grad.data_ptr();
    }
  }
}

void Bucket::raise_bad_grad(size_t i) const {
  const at::Tensor& param = params_[i];
  const at::Tensor& grad = grad_of(i);
  TORCH_CHECK(grad.scalar_type() == param.scalar_type(), "the grad of ", names_[i], " has dtype ",
              grad.scalar_type(), " but the param has dtype ", param.scalar_type());
  TORCH_CHECK(grad.sizes() == param.sizes(), "the grad of ", names_[i], " has shape ", grad.sizes(),
              " but the param has shape ", param.sizes());
  TORCH_CHECK(false, "the grad of ", names_[i], " is on ", grad.device(), " but the param is on ", param.device());
}

Bucket::Status Bucket::prepare() {
  entries_.clear();
  prefix_.clear();
  entry_params_.clear();
  entry_scalar_ptrs_.clear();
  grad_copies_.clear();
  segments_numel_ = 0;
  grad_scale_ = 1.0;
  device_grad_scale_ = at::Tensor();
  stochastic_rounding_ = false;
  const int64_t n = static_cast<int64_t>(params_.size());
  probes_.resize(n);
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) { probe(begin, end); });

  // Every grad is validated before anything is decided, so a bad grad raises even when the
  // plan also needs a rebuild, and nothing has been modified when it does.
  bool needs_rebuild = false;
  for (int64_t i = 0; i < n; ++i) {
    if (probes_[i].status == Probe::kBadGrad) raise_bad_grad(i);
    needs_rebuild |= probes_[i].status == Probe::kNeedsRebuild;
  }
  if (needs_rebuild) return kNeedsRebuild;

  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    ParamProbe& probe = probes_[i];
    if (probe.status == Probe::kNoGrad) continue;
    if (probe.status == Probe::kStridedGrad) {
      const at::Tensor& param = params_[i];
      grad_copies_.push_back(grad_of(i).contiguous());
      probe.param_data = param.data_ptr();
      probe.grad_data = grad_copies_.back().data_ptr();
    }
    const int64_t numel = storage_numels_[i];
    TensorEntry entry{};
    entry.ptr[kParamSlot] = masters_.empty() ? probe.param_data : master_ptrs_[i];
    if (!masters_.empty()) entry.ptr[kParam16Slot] = probe.param_data;
    entry.ptr[kGradSlot] = probe.grad_data;
    for (size_t s = 0; s < states_.size(); ++s) entry.ptr[kFirstStateSlot + s] = state_ptrs_[i][s];
    entry.numel = numel;
    entry.first_step = static_cast<int32_t>(first_step_[i]);
    entries_.push_back(entry);
    prefix_.push_back(total);
    entry_params_.push_back(i);
    if (device_scalars_) {
      for (const std::vector<void*>& ptrs : scalar_ptrs_) entry_scalar_ptrs_.push_back(ptrs[i]);
    }
    total += numel;
  }
  prefix_.push_back(total);
  return kReady;
}

BucketTable Bucket::table() const {
  BucketTable table{entries_.data(), prefix_.data(), static_cast<int64_t>(entries_.size()), prefix_.back(), dtype_,
                    grad_scale_, state_dtype_, !masters_.empty(), stochastic_rounding_, rounding_seed_};
  if (device_grad_scale_.defined()) table.device_grad_scale = device_grad_scale_.const_data_ptr<double>();
  if (stochastic_rounding_ && rounding_step_.defined()) {
    table.device_rounding_step = rounding_step_.const_data_ptr<int64_t>();
  }
  return table;
}

void Bucket::set_grad_scale(double scale) {
  TORCH_CHECK(device_.is_cpu(), "fusedoptim: a CUDA bucket takes its clip coefficient as a device tensor");
  grad_scale_ = scale;
}

void Bucket::set_device_grad_scale(at::Tensor scale) {
  TORCH_CHECK(device_.is_cuda() && scale.device() == device_ && scale.scalar_type() == at::kDouble &&
                  scale.numel() == 1,
              "fusedoptim: the clip coefficient of a CUDA bucket is a one-element float64 tensor on ", device_);
  device_grad_scale_ = std::move(scale);
}

void Bucket::set_rounding_seed(uint64_t seed) {
  TORCH_CHECK((dtype_ == DType::kBFloat16 || dtype_ == DType::kFloat16) && masters_.empty() && state_dtype_ == dtype_,
              "fusedoptim: stochastic rounding is for bf16/fp16 params without master weights or another state dtype");
  TORCH_CHECK(device_.is_cpu() || rounding_step_.defined(),
              "fusedoptim: stochastic rounding on CUDA needs the bucket's step counter (set_rounding_step)");
  stochastic_rounding_ = true;
  rounding_seed_ = seed;
}

void Bucket::set_rounding_step(at::Tensor step) {
  TORCH_CHECK(device_.is_cuda() && step.device() == device_ && step.scalar_type() == at::kLong && step.numel() == 1,
              "fusedoptim: the stochastic rounding counter of a CUDA bucket is a one-element int64 tensor on ",
              device_);
  rounding_step_ = std::move(step);
}

const std::vector<double>& Bucket::advance_steps() {
  TORCH_CHECK(!scalars_.empty(), "fusedoptim: this bucket keeps no step counters");
  TORCH_CHECK(!device_scalars_, "fusedoptim: this bucket's step counters are on ", device_);
  entry_steps_.resize(entries_.size());
  // torch keeps `step` as a float tensor and adds 1 in its dtype; then reads it as a double.
  for (size_t k = 0; k < entries_.size(); ++k) {
    set_scalar(0, k, scalar(0, k) + 1.0);
    entry_steps_[k] = scalar(0, k);
  }
  return entry_steps_;
}

double Bucket::scalar(int k, size_t entry) const {
  const int64_t i = entry_params_[entry];
  const void* ptr = scalar_ptrs_[k][i];
  switch (scalar_types_[k][i]) {
    case at::kDouble: return *static_cast<const double*>(ptr);
    case at::kBFloat16: return double(static_cast<float>(*static_cast<const c10::BFloat16*>(ptr)));
    case at::kHalf: return double(static_cast<float>(*static_cast<const c10::Half*>(ptr)));
    default: return double(*static_cast<const float*>(ptr));
  }
}

void Bucket::set_scalar(int k, size_t entry, double value) {
  const int64_t i = entry_params_[entry];
  void* ptr = scalar_ptrs_[k][i];
  switch (scalar_types_[k][i]) {
    case at::kDouble: *static_cast<double*>(ptr) = value; break;
    case at::kBFloat16: *static_cast<c10::BFloat16*>(ptr) = c10::BFloat16(static_cast<float>(value)); break;
    case at::kHalf: *static_cast<c10::Half*>(ptr) = c10::Half(static_cast<float>(value)); break;
    default: *static_cast<float*>(ptr) = static_cast<float>(value); break;
  }
}

bool Bucket::scalar_is_double(int k, size_t entry) const {
  return scalar_types_[k][entry_params_[entry]] == at::kDouble;
}

at::Tensor Bucket::device_grad_norm(const math::GradNormHyper& hyper) {
  TORCH_CHECK(device_table_ != nullptr, "fusedoptim: device_grad_norm is for CUDA buckets");
  return device_table_->grad_norm(table(), hyper, segments(cpu::kSegmentNumel),
                                  device_scalars_ ? &entry_scalar_ptrs_ : nullptr);
}

const std::vector<Segment>& Bucket::segments(int64_t max_numel) {
  if (segments_numel_ == max_numel) return segments_;  // LAMB with clipping asks twice a step
  segments_numel_ = max_numel;
  segments_.clear();
  for (size_t e = 0; e < entries_.size(); ++e) {
    const int64_t numel = entries_[e].numel;
    for (int64_t begin = 0; begin < numel; begin += max_numel) {
      segments_.push_back(Segment{static_cast<int64_t>(e), begin, std::min(begin + max_numel, numel)});
    }
  }
  return segments_;
}

void Bucket::clear_first_steps() {
  for (int64_t i : entry_params_) first_step_[i] = 0;
}

bool Bucket::has_first_steps() const {
  for (int64_t i : entry_params_) {
    if (first_step_[i] != 0) return true;
  }
  return false;
}

}  // namespace fusedoptim
