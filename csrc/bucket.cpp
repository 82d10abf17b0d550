#include "bucket.h"

#include <c10/util/Exception.h>

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

}  // namespace

Bucket::Bucket(std::vector<at::Tensor> params, std::vector<std::string> names,
               std::vector<std::vector<at::Tensor>> states, std::vector<at::Tensor> steps,
               std::vector<int64_t> first_step)
    : params_(std::move(params)), names_(std::move(names)), states_(std::move(states)), steps_(std::move(steps)),
      first_step_(std::move(first_step)) {
  const size_t n = params_.size();
  TORCH_CHECK(n > 0, "fusedoptim: a bucket needs at least one param");
  TORCH_CHECK(names_.size() == n && first_step_.size() == n && (steps_.empty() || steps_.size() == n),
              "fusedoptim: bucket tables of different lengths");
  TORCH_CHECK(static_cast<int>(states_.size()) <= kMaxSlots - kFirstStateSlot, "fusedoptim: too many states");
  has_slots_ = !states_.empty() || !steps_.empty();
  dtype_ = storage_dtype(params_[0].scalar_type());
  state_ptrs_.assign(n, {});
  step_ptrs_.assign(n, nullptr);
  step_is_double_.assign(n, 0);
  has_state_.assign(n, 1);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params_[i];
    TORCH_CHECK(storage_dtype(p.scalar_type()) == dtype_, "fusedoptim: mixed storage dtypes in one bucket");
    param_dtypes_.push_back(p.scalar_type());
    param_numels_.push_back(p.numel());
    for (size_t s = 0; s < states_.size(); ++s) {
      TORCH_CHECK(states_[s].size() == n, "fusedoptim: bucket tables of different lengths");
      const at::Tensor& state = states_[s][i];
      if (!state.defined()) {
        has_state_[i] = 0;
        continue;
      }
      TORCH_CHECK(state.is_cpu() && state.is_contiguous() && state.scalar_type() == p.scalar_type() &&
                      state.numel() == p.numel(),
                  "fusedoptim: the state of ", names_[i], " must be a contiguous CPU tensor like the param");
      state_ptrs_[i][s] = state.data_ptr();
    }
    if (!steps_.empty() && !steps_[i].defined()) has_state_[i] = 0;
    if (!steps_.empty() && steps_[i].defined()) {
      const at::Tensor& step = steps_[i];
      TORCH_CHECK(step.is_cpu() && step.numel() == 1 && (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                  "fusedoptim: the step of ", names_[i], " must be a one-element float CPU tensor");
      step_ptrs_[i] = step.data_ptr();
      step_is_double_[i] = step.scalar_type() == at::kDouble;
    }
  }
  entries_.reserve(n);
  prefix_.reserve(n + 1);
  entry_params_.reserve(n);
}

Bucket::Status Bucket::prepare() {
  entries_.clear();
  prefix_.clear();
  entry_params_.clear();
  grad_copies_.clear();
  bool needs_rebuild = false;
  int64_t total = 0;
  const auto cpu = c10::DeviceType::CPU;
  // NOTE: [Prefetching the grads]
  // Reading 10,000 grads is a chain of dependent loads per param (param impl -> autograd
  // meta -> grad impl -> storage) that mostly miss the cache after a step has streamed the
  // model through it. Touching each level for all params first lets those misses overlap.
  for (const at::Tensor& param : params_) __builtin_prefetch(param.unsafeGetTensorImpl());
  for (const at::Tensor& param : params_) __builtin_prefetch(param.unsafeGetTensorImpl()->autograd_meta());
  for (const at::Tensor& param : params_) {
    const at::Tensor& grad = param.unsafeGetTensorImpl()->grad();
    if (grad.defined()) __builtin_prefetch(grad.unsafeGetTensorImpl());
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& param = params_[i];
    // TensorImpl::grad, not Tensor::grad: the latter also asks autograd whether the param is
    // a leaf, a virtual call per param that only serves a warning.
    const at::Tensor& grad = param.unsafeGetTensorImpl()->grad();
    if (!grad.defined()) continue;
    if (param.scalar_type() != param_dtypes_[i] || param.numel() != param_numels_[i] ||
        param.device().type() != cpu || !param.is_contiguous() || grad.layout() != c10::kStrided) {
      needs_rebuild = true;
      continue;
    }
    TORCH_CHECK(grad.scalar_type() == param.scalar_type(), "the grad of ", names_[i], " has dtype ",
                grad.scalar_type(), " but the param has dtype ", param.scalar_type());
    TORCH_CHECK(grad.sizes() == param.sizes(), "the grad of ", names_[i], " has shape ", grad.sizes(),
                " but the param has shape ", param.sizes());
    TORCH_CHECK(grad.device() == param.device(), "the grad of ", names_[i], " is on ", grad.device(),
                " but the param is on ", param.device());
    if (has_slots_ && !has_state_[i]) {
      needs_rebuild = true;
      continue;
    }
    const at::Tensor* contiguous_grad = &grad;
    if (!grad.is_contiguous()) {
      grad_copies_.push_back(grad.contiguous());
      contiguous_grad = &grad_copies_.back();
    }
    const int64_t numel = param.is_complex() ? 2 * param.numel() : param.numel();
    TensorEntry entry{};
    entry.ptr[kParamSlot] = param.data_ptr();
    entry.ptr[kGradSlot] = contiguous_grad->data_ptr();
    for (size_t s = 0; s < states_.size(); ++s) entry.ptr[kFirstStateSlot + s] = state_ptrs_[i][s];
    entry.numel = numel;
    entry.first_step = static_cast<int32_t>(first_step_[i]);
    entries_.push_back(entry);
    prefix_.push_back(total);
    entry_params_.push_back(static_cast<int64_t>(i));
    total += numel;
  }
  prefix_.push_back(total);
  if (needs_rebuild) {
    entries_.clear();
    return kNeedsRebuild;
  }
  return kReady;
}

BucketTable Bucket::table() const {
  return BucketTable{entries_.data(), prefix_.data(), static_cast<int64_t>(entries_.size()), prefix_.back(), dtype_};
}

const std::vector<double>& Bucket::advance_steps() {
  TORCH_CHECK(!steps_.empty(), "fusedoptim: this bucket keeps no step counters");
  entry_steps_.resize(entries_.size());
  // torch keeps `step` as a float tensor and adds 1 in its dtype; then reads it as a double.
  for (size_t k = 0; k < entries_.size(); ++k) {
    const int64_t i = entry_params_[k];
    if (step_is_double_[i]) {
      entry_steps_[k] = *static_cast<double*>(step_ptrs_[i]) += 1.0;
    } else {
      entry_steps_[k] = *static_cast<float*>(step_ptrs_[i]) += 1.0f;
    }
  }
  return entry_steps_;
}

void Bucket::clear_first_steps() {
  for (int64_t i : entry_params_) first_step_[i] = 0;
}

}  // namespace fusedoptim
