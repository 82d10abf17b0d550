// A bucket: the params of one param group with one device and storage dtype, their state
// tensors, and the table the kernels sweep. Built by fusedoptim/optimizer.py when the
// plan changes; each step calls prepare() (read grads, validate, fill the table) and then
// one algorithm's run (see <algo>_cpu.cpp).
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "fusedoptim/bucket_table.h"
#include "fusedoptim/math/grad_norm.h"

namespace fusedoptim {
namespace cuda {
class DeviceTableCache;
}  // namespace cuda

class Bucket {
 public:
  // params: every param of the bucket, with or without state. names: how errors name them
  // ("param_groups[0]['params'][3]"). states[s][i]: the tensor holding state s of param i, in
  // the algorithm's slot order, undefined where the param has no state yet; they are the
  // tensors in optimizer.state[p] (views of flat buffers when the plan allocated them); they
  // all have the params' dtype, or all one other dtype the kernels pair with it (state_dtype).
  // scalars[k][i]: param i's 0-dim scalar state k (float32 or float64; on the CPU also bf16 or
  // fp16), if the algorithm keeps any; scalars[0] is the step counter (ASGD adds eta and mu,
  // NAdam mu_product).
  // first_step[i]: 1 while param i's state holds no values yet (SGD's momentum buffer
  // starts as a copy of the grad).
  // masters[i]: param i's fp32 master weights (master_weights=True, bf16/fp16 params only;
  // undefined where the param has no state yet), or empty: none (NOTE: [Master weights] in
  // cpu/sweep.h).
  // Params and states live on one device, the CPU or a CUDA device; scalars on the CPU, or, for
  // a CUDA bucket whose `step` torch keeps on the device (capturable, fused), all on that
  // device in float32 (see device_scalars()).
  Bucket(std::vector<at::Tensor> params, std::vector<std::string> names,
         std::vector<std::vector<at::Tensor>> states, std::vector<std::vector<at::Tensor>> scalars,
         std::vector<int64_t> first_step, std::vector<at::Tensor> masters = {});
  ~Bucket();

  enum Status : int { kReady = 0, kNeedsRebuild = 1 };

  // From now on prepare() takes param i's grad from grads[i] instead of its .grad (the
  // registered ops, which receive grads as arguments).
  void use_grads(std::vector<at::Tensor> grads);

  // Reads every param's grad and fills the table. Raises, naming the param, if a grad's
  // dtype, shape or device does not match its param; returns kNeedsRebuild when the plan no
  // longer fits (a grad without a state slot, a param moved or resized, a sparse grad).
  // Modifies nothing the user can see.
  Status prepare();

  int64_t num_entries() const { return static_cast<int64_t>(entries_.size()); }
  // Whether the last prepare() swept some grads through contiguous copies (strided grads).
  bool has_strided_grads() const { return !grad_copies_.empty(); }

  // For the algorithm runs: the table of the last prepare().
  BucketTable table() const;
  // The device copy of the table for a CUDA bucket; nullptr for a CPU bucket.
  cuda::DeviceTableCache* device_table() const { return device_table_.get(); }
  // The param index of each entry of the last prepare().
  const std::vector<int64_t>& entry_params() const { return entry_params_; }
  std::vector<TensorEntry>& entries() { return entries_; }
  // Whether the scalars live on the device: then only the CUDA step kernels touch them
  // (NOTE: [Device steps and GradScaler] in csrc/cuda/sweep.cuh), never the host.
  bool device_scalars() const { return device_scalars_; }
  // With device scalars: the addresses of each entry's scalar states, `step` first (entry e's
  // scalar k at e * number of scalars + k), of the last prepare().
  const std::vector<void*>& entry_scalar_ptrs() const { return entry_scalar_ptrs_; }
  // Advances the step counter of every param in the table; returns the new values.
  const std::vector<double>& advance_steps();
  // Scalar state k of the param of table entry `entry`, read and written in its own dtype
  // (set_scalar rounds to it; 16-bit states from a float32 value, as torch's ops round them).
  double scalar(int k, size_t entry) const;
  void set_scalar(int k, size_t entry, double value);
  bool scalar_is_double(int k, size_t entry) const;
  // The table cut into segments of at most max_numel elements (see NOTE: [Deterministic
  // reductions]), for the table of the last prepare().
  const std::vector<Segment>& segments(int64_t max_numel);
  // Marks the state of every param in the table as holding values.
  void clear_first_steps();
  // Whether a param in the table has state without values yet (first_step).
  bool has_first_steps() const;
  // The grad multiplier of this step's table (max_grad_norm's clip coefficient) of a CPU
  // bucket; prepare() resets it to 1.
  void set_grad_scale(double scale);
  // A CUDA bucket's clip coefficient: a one-element float64 tensor on its device, read by the
  // kernels (NOTE: [Precision options on CUDA] in csrc/cuda/sweep.cuh); prepare() drops it.
  void set_device_grad_scale(at::Tensor scale);
  // The global grad norm's reduced value of this CUDA bucket's grads (math/grad_norm.h), as a
  // 0-dim float64 tensor on its device; no host sync.
  at::Tensor device_grad_norm(const math::GradNormHyper& hyper);
  // Rounds this step's 16-bit params stochastically with `seed` (NOTE: [Stochastic rounding]
  // in dtype.h); prepare() turns it off. A CUDA bucket mixes the seed with its rounding step
  // counter, which must be set first.
  void set_rounding_seed(uint64_t seed);
  // A CUDA bucket's stochastic-rounding step counter: a one-element int64 tensor on its device
  // that the host advances on the stream before each step; kept until replaced.
  void set_rounding_step(at::Tensor step);

 private:
  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<std::vector<at::Tensor>> states_;  // kept alive: the table points into them
  std::vector<std::vector<at::Tensor>> scalars_;
  std::vector<int64_t> first_step_;
  std::vector<at::Tensor> grads_;  // empty: the params' own .grad
  std::vector<at::Tensor> masters_;  // empty: no master weights
  std::vector<void*> master_ptrs_;
  bool has_slots_;  // whether params need state (and a step) before they can step
  bool device_scalars_ = false;

  // Cached at construction: the state and step addresses of each param (null: no state).
  std::vector<std::array<void*, kMaxSlots - kFirstStateSlot>> state_ptrs_;
  std::vector<std::vector<void*>> scalar_ptrs_;  // [k][i]
  // [k][i]: float32 or float64; on the CPU also bf16/fp16, which torch's load_state_dict makes of
  // a 16-bit param's 0-dim states (NAdam's mu_product, ASGD's eta and mu) and then computes in.
  std::vector<std::vector<at::ScalarType>> scalar_types_;
  std::vector<uint8_t> has_state_;  // every state and scalar of the param is defined

  // What the plan was built for; a param that no longer matches needs a rebuild.
  std::vector<at::ScalarType> param_dtypes_;
  std::vector<int64_t> param_numels_;
  std::vector<int64_t> storage_numels_;  // in storage elements: complex params count twice
  DType dtype_;
  DType state_dtype_;  // of the elementwise states: dtype_ unless the optimizer's state_dtype
  c10::Device device_;
  std::unique_ptr<cuda::DeviceTableCache> device_table_;

  // What prepare() learns about one param, in parallel (see NOTE: [Prefetching the grads]).
  enum class Probe : uint8_t { kNoGrad, kReady, kStridedGrad, kNeedsRebuild, kBadGrad };
  struct ParamProbe {
    void* param_data;
    void* grad_data;
    Probe status;
  };
  void probe(int64_t begin, int64_t end);
  const at::Tensor& grad_of(size_t i) const {
    // TensorImpl::grad, not Tensor::grad: the latter also asks autograd whether the param is
    // a leaf, a virtual call per param that only serves a warning.
    return grads_.empty() ? params_[i].unsafeGetTensorImpl()->grad() : grads_[i];
  }
  [[noreturn]] void raise_bad_grad(size_t i) const;

  // Per step.
  std::vector<ParamProbe> probes_;
  std::vector<TensorEntry> entries_;
  std::vector<int64_t> prefix_;
  std::vector<int64_t> entry_params_;
  std::vector<void*> entry_scalar_ptrs_;  // device scalars only
  std::vector<double> entry_steps_;
  std::vector<at::Tensor> grad_copies_;  // contiguous copies of the rare strided grads
  std::vector<Segment> segments_;
  int64_t segments_numel_ = 0;  // the max_numel segments_ was cut with; 0: not cut since prepare()
  double grad_scale_ = 1.0;
  at::Tensor device_grad_scale_;  // CUDA: this step's clip coefficient, or undefined
  at::Tensor rounding_step_;  // CUDA: the stochastic rounding counter
  bool stochastic_rounding_ = false;
  uint64_t rounding_seed_ = 0;
};

}  // namespace fusedoptim
