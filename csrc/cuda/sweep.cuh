// The CUDA bucket kernels: an update rule (fusedoptim/math/<algo>.h) over a whole bucket in one
// launch, and the segmented reductions. Each csrc/cuda/<algo>_cuda.cu instantiates its rules
// with FO_CUDA_ELEMENTWISE / FO_CUDA_REDUCTION. No torch header (NOTE: [CUDA without torch
// headers] in fusedoptim/cuda/launch.h).
#pragma once
#ifndef FO_ISA
#define FO_ISA isa_cuda
#endif
#include <cstdint>
#include <type_traits>
#include <utility>

#include <cuda_runtime.h>

#include "fusedoptim/cuda/launch.h"
#include "fusedoptim/dtype.h"
#include "fusedoptim/math/rule.h"

namespace fusedoptim {
namespace cuda {
inline namespace FO_ISA {

// NOTE: [One launch per bucket]
// The table of a bucket (a pointer per slot, a length and a padded flat start per tensor)
// lives in device memory, so one launch covers the bucket whatever its tensor count. The
// flat index space is cut into chunks of kChunkNumel elements; a grid sized to the device
// strides over the chunks, and each block finds the first tensor of its chunk by binary
// search over the prefix, then walks the tensors the chunk overlaps. Every tensor starts at a
// multiple of kEntryAlignment, so within a tensor a chunk starts 16-byte aligned: where all of
// a tensor's slots are 16-byte aligned (the allocator's pointers always are, views may not
// be), threads move 16 bytes per load and store; the tensor's last partial vector, and any
// misaligned tensor, go element by element. Indices are 64-bit throughout.

__device__ FO_INLINE int64_t entry_containing(const DeviceTable& table, int64_t index) {
  int64_t lo = 0, hi = table.num_entries;  // invariant: answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (table.prefix[mid] <= index) lo = mid; else hi = mid;
  }
  return lo;
}

// W elements of one slot's type, loaded and stored as 16-byte accesses (a pack of W elements
// of every slot of a tensor is whole 16-byte vectors: W * sizeof(T) is a multiple of 16).
template <typename T, int W>
struct Lanes {
  static constexpr int kVectors = W * int(sizeof(T)) / 16;
  static_assert(kVectors * 16 == W * int(sizeof(T)), "a pack of lanes is whole 16-byte vectors");
  T v[W];
};

// Lanes move as uint4 so that loads and stores are single 128-bit accesses (a struct copy, or
// a memcpy into a uint4, compiled to 32-bit stores).
template <typename T, int W>
union LaneBits {
  Lanes<T, W> lanes;
  uint4 bits[Lanes<T, W>::kVectors];
};

// The emulated build (NOTE: [CUDA emulation]) counts each 16-byte access here and checks its
// alignment, which the GPU requires; for nvcc it is nothing.
#ifndef FO_CUDA_PACK_ACCESS
#define FO_CUDA_PACK_ACCESS(address)
#endif

// Indexed in packs of W elements, so that the compiler can see the 16-byte alignment.
template <typename T, int W>
__device__ FO_INLINE Lanes<T, W> load_lanes(const void* slot, int64_t pack) {
  constexpr int kVectors = Lanes<T, W>::kVectors;
  const uint4* base = static_cast<const uint4*>(slot) + pack * kVectors;
  FO_CUDA_PACK_ACCESS(base);
  LaneBits<T, W> u;
#pragma unroll
  for (int q = 0; q < kVectors; ++q) u.bits[q] = base[q];
  return u.lanes;
}

template <typename T, int W>
__device__ FO_INLINE void store_lanes(void* slot, int64_t pack, const Lanes<T, W>& value) {
  constexpr int kVectors = Lanes<T, W>::kVectors;
  uint4* base = static_cast<uint4*>(slot) + pack * kVectors;
  FO_CUDA_PACK_ACCESS(base);
  LaneBits<T, W> u;
  u.lanes = value;
#pragma unroll
  for (int q = 0; q < kVectors; ++q) base[q] = u.bits[q];
}

// NOTE: [Device steps and GradScaler]
// With torch's capturable=True or fused=True, `step` lives on the device. A step kernel (one
// thread per tensor) then advances it and writes the tensor's coefficients into the device
// table before the update kernel reads them, so a step needs no host sync and its launches can
// be captured in a CUDA graph. GradScaler's protocol is honoured on the device as torch's
// fused kernels do: when *found_inf is not zero both kernels return at once (params, states
// and `step` unchanged); otherwise each grad is divided by *grad_scale, used, and stored back
// unscaled. SGD, which keeps no `step`, takes them in its update kernel alone (fused=True), once
// its momentum buffers hold values (fusedoptim/optimizer.py, NOTE: [GradScaler with fused=True]).

// NOTE: [Precision options on CUDA]
// The CUDA kernels run issue 5's options as the CPU sweeps do (cpu/sweep.h), from the same
// rules and for the same dtype pairs (NOTE: [State dtypes], NOTE: [Master weights]):
// - state_dtype: states load and store as StateStorage, the math stays in the params' type;
// - master_weights: slot 0 is the fp32 master, and the 16-bit param (slot kParam16Slot) is
//   written from it, rounded to nearest even, in the same pass;
// - stochastic_rounding: the param's fp32 result is rounded with rounding_bits(seed, flat
//   index) (NOTE: [Stochastic rounding] in dtype.h), where the flat index is the padded one of
//   the device table and the seed mixes the bucket's seed with a step counter on the device,
//   which the host advances on the stream before each step: a captured graph replays with
//   new bits each time, and no host value is baked into it;
// - max_grad_norm: the clip coefficient comes as the device address of a double the norm's
//   kernels and torch ops wrote on the stream (no host sync); each grad is multiplied by it in
//   the math type after its load, as the CPU multiplies by BucketTable::grad_scale.
// A pack holds kWidth elements of every slot, 16 bytes of the narrowest slot type, so fp32
// params with bf16 states move 8 elements: two vectors of each fp32 slot, one of each bf16.

// NOTE: [Device learning rates]
// torch's fused=True and capturable=True Adam and AdamW take lr as a Tensor on the device, so
// that a scheduler can change it in place (fill_, as torch's schedulers do for a Tensor lr)
// between replays of a captured step; a new tensor in the group would not be seen by a graph
// captured before, in torch as here. For such a
// group the host passes the tensor's address (DeviceTable::lr, float32 or float64) and both
// kernels of a device step read it, in place of the host's lr, into the hyperparameters'
// with_lr: the step size -lr / (1 - beta1^t) and AdamW's decay factor 1 - lr * weight_decay
// are then computed from it in double, as torch's fused kernel reads its float32 lr into a
// double (it refuses a float64 one, which we read as well). The host's lr is NaN then, so
// that a kernel that missed the device one would show it. A
// Tensor lr on the CPU is read by the host each step, as torch's fused Adam reads it.
// Only hyperparameter structs with with_lr take one (the host passes none to other rules);
// Tensor betas, and Tensor lrs of the other algorithms, take the reference path.
template <typename Hyper, typename = void>
struct takes_device_lr : std::false_type {};
template <typename Hyper>
struct takes_device_lr<Hyper, decltype(void(std::declval<const Hyper&>().with_lr(0.0)))> : std::true_type {};

template <typename Hyper>
__device__ FO_INLINE Hyper with_device_lr(const Hyper& hyper, const DeviceTable& table) {
  if constexpr (takes_device_lr<Hyper>::value) {
    if (table.lr != nullptr) {
      return hyper.with_lr(table.lr_is_double ? *static_cast<const double*>(table.lr)
                                              : double(*static_cast<const float*>(table.lr)));
    }
  }
  return hyper;
}

// The stochastic rounding seed of this step (NOTE: [Precision options on CUDA]).
__device__ FO_INLINE uint64_t step_rounding_seed(const DeviceTable& table) {
  const uint64_t step = table.rounding_step != nullptr ? static_cast<uint64_t>(*table.rounding_step) : 0;
  return table.rounding_seed ^ (step * 0x9E3779B97F4A7C15ull);
}

template <template <typename> class Rule, typename Storage, typename StateStorage = Storage, bool kMaster = false,
          bool kStochastic = false>
struct CudaRuleBody {
  using S = math_t<Storage>;
  using Coefs = math::TensorCoefs<S>;
  using ParamStorage = typename std::conditional<kMaster, float, Storage>::type;
  static constexpr int kMaxStates = Rule<S>::kMaxStates;
  static constexpr int kStates = kMaxStates > 0 ? kMaxStates : 1;
  static constexpr int kNarrowest = sizeof(Storage) < sizeof(StateStorage) ? sizeof(Storage) : sizeof(StateStorage);
  static constexpr int kWidth = 16 / kNarrowest;
  Rule<S> rule;
  bool unscale;  // GradScaler: grads divided by unscale_by and stored back
  S unscale_by;
  bool clips;  // max_grad_norm: grads multiplied by clip_coef
  S clip_coef;
  uint64_t seed;  // kStochastic

  template <typename Hyper>
  __device__ CudaRuleBody(const Hyper& hyper, const DeviceTable& table)
      : rule(hyper),
        unscale(table.grad_scale != nullptr),
        unscale_by(table.grad_scale != nullptr ? S(*table.grad_scale) : S(1)),
        clips(table.clip_coef != nullptr),
        clip_coef(table.clip_coef != nullptr ? S(*table.clip_coef) : S(1)),
        seed(kStochastic ? step_rounding_seed(table) : 0) {}

  __device__ FO_INLINE bool vector_aligned(const TensorEntry& e) const {
    uintptr_t bits = reinterpret_cast<uintptr_t>(e.ptr[kParamSlot]) | reinterpret_cast<uintptr_t>(e.ptr[kGradSlot]);
    if (kMaster) bits |= reinterpret_cast<uintptr_t>(e.ptr[kParam16Slot]);
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) bits |= reinterpret_cast<uintptr_t>(e.ptr[kFirstStateSlot + k]);
    }
    return (bits & 15u) == 0;
  }

  // The grad the rule sees; with GradScaler, *stored is set to the unscaled grad to store back.
  __device__ FO_INLINE S rule_grad(S grad, S* stored) const {
    if (unscale) {
      grad = grad / unscale_by;
      *stored = grad;
    }
    return clips ? grad * clip_coef : grad;
  }

  __device__ FO_INLINE void apply_one(const TensorEntry& e, const Coefs& coefs, int64_t i, int64_t flat) const {
    S param = load_scalar(static_cast<const ParamStorage*>(e.ptr[kParamSlot]) + i);
    S unscaled = S(0);
    const S grad = rule_grad(load_scalar(static_cast<const Storage*>(e.ptr[kGradSlot]) + i), &unscaled);
    if (unscale) store_scalar(static_cast<Storage*>(e.ptr[kGradSlot]) + i, unscaled);
    S state[kStates];
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) state[k] = load_scalar(static_cast<const StateStorage*>(e.ptr[kFirstStateSlot + k]) + i);
    }
    rule.update(param, grad, state, coefs);
    if constexpr (kStochastic) {
      store_stochastic(static_cast<Storage*>(e.ptr[kParamSlot]) + i, param, rounding_bits(seed, uint64_t(flat)));
    } else {
      store_scalar(static_cast<ParamStorage*>(e.ptr[kParamSlot]) + i, param);
    }
    if constexpr (kMaster) store_scalar(static_cast<Storage*>(e.ptr[kParam16Slot]) + i, param);
    if constexpr (!math::states_read_only<Rule<S>>::value) {
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_scalar(static_cast<StateStorage*>(e.ptr[kFirstStateSlot + k]) + i, state[k]);
      }
    }
  }

  // Elements [pack * kWidth, (pack + 1) * kWidth) with 16-byte accesses (slots aligned); flat:
  // the first one's index in the bucket's flat index space.
  __device__ FO_INLINE void apply_pack(const TensorEntry& e, const Coefs& coefs, int64_t pack, int64_t flat) const {
    Lanes<ParamStorage, kWidth> param_pack = load_lanes<ParamStorage, kWidth>(e.ptr[kParamSlot], pack);
    Lanes<Storage, kWidth> grad_pack = load_lanes<Storage, kWidth>(e.ptr[kGradSlot], pack);
    Lanes<StateStorage, kWidth> state_pack[kStates];
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) state_pack[k] = load_lanes<StateStorage, kWidth>(e.ptr[kFirstStateSlot + k], pack);
    }
    Lanes<Storage, kWidth> param16_pack;  // kMaster: the rounded 16-bit params
#pragma unroll
    for (int w = 0; w < kWidth; ++w) {
      S param = load_scalar(&param_pack.v[w]);
      S unscaled = S(0);
      const S grad = rule_grad(load_scalar(&grad_pack.v[w]), &unscaled);
      if (unscale) store_scalar(&grad_pack.v[w], unscaled);
      S state[kStates];
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) state[k] = load_scalar(&state_pack[k].v[w]);
      }
      rule.update(param, grad, state, coefs);
      if constexpr (kStochastic) {
        store_stochastic(&param_pack.v[w], param, rounding_bits(seed, uint64_t(flat + w)));
      } else {
        store_scalar(&param_pack.v[w], param);
      }
      if constexpr (kMaster) store_scalar(&param16_pack.v[w], param);
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_scalar(&state_pack[k].v[w], state[k]);
      }
    }
    store_lanes<ParamStorage, kWidth>(e.ptr[kParamSlot], pack, param_pack);
    if constexpr (kMaster) store_lanes<Storage, kWidth>(e.ptr[kParam16Slot], pack, param16_pack);
    if (unscale) store_lanes<Storage, kWidth>(e.ptr[kGradSlot], pack, grad_pack);
    if constexpr (!math::states_read_only<Rule<S>>::value) {
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_lanes<StateStorage, kWidth>(e.ptr[kFirstStateSlot + k], pack, state_pack[k]);
      }
    }
  }

  // Elements [begin, end) of one tensor that starts at flat index `start`, by the whole block.
  __device__ FO_INLINE void apply_range(const TensorEntry& e, const Coefs& coefs, int64_t begin, int64_t end,
                                        int64_t start) const {
    int64_t i = begin;
    if (vector_aligned(e)) {
      // begin is a multiple of kEntryAlignment, hence of kWidth (NOTE: [One launch per bucket]).
      const int64_t first_pack = begin / kWidth, last_pack = end / kWidth;
      for (int64_t k = first_pack + threadIdx.x; k < last_pack; k += blockDim.x) {
        apply_pack(e, coefs, k, start + k * kWidth);
      }
      i = last_pack * kWidth;
    }
    for (int64_t j = i + threadIdx.x; j < end; j += blockDim.x) apply_one(e, coefs, j, start + j);
  }
};

static_assert(kEntryAlignment % (16 / sizeof(bf16_t)) == 0, "a chunk starts a pack of every tensor it touches");

template <typename S>
__device__ FO_INLINE math::TensorCoefs<S> coefs_of(const DeviceTable& table, const TensorEntry& entry) {
  return table.uniform_coefs ? math::TensorCoefs<S>(table.uniform) : math::TensorCoefs<S>(entry);
}

template <template <typename> class Rule, typename Storage, typename StateStorage, bool kMaster, bool kStochastic,
          typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock) elementwise_kernel(const DeviceTable table, const Hyper hyper) {
  using S = math_t<Storage>;
  if (table.found_inf != nullptr && *table.found_inf != 0.0f) return;  // NOTE: [Device steps and GradScaler]
  const CudaRuleBody<Rule, Storage, StateStorage, kMaster, kStochastic> body(with_device_lr(hyper, table), table);
  for (int64_t chunk = blockIdx.x; chunk < table.num_chunks; chunk += gridDim.x) {
    const int64_t begin = chunk * kChunkNumel;
    const int64_t end = begin + kChunkNumel < table.total_numel ? begin + kChunkNumel : table.total_numel;
    for (int64_t e = entry_containing(table, begin); e < table.num_entries && table.prefix[e] < end; ++e) {
      const TensorEntry entry = table.entries[e];  // a copy: stores can't alias it
      const int64_t start = table.prefix[e];
      const int64_t first = begin > start ? begin - start : 0;
      const int64_t last = end - start < entry.numel ? end - start : entry.numel;
      if (first < last) body.apply_range(entry, coefs_of<S>(table, entry), first, last, start);
    }
  }
}

// NOTE: [Deterministic reductions on CUDA]
// As on the CPU (NOTE: [Deterministic reductions]), sums are per segment of the table, never
// per whatever the scheduler did: a block takes a segment, each thread adds its strided
// elements in the math type (in double for the grad norm), and the block adds the threads'
// sums in double in a fixed tree. The host adds a tensor's segments in order; the grad norm's
// segments are folded by one block in a fixed order too. Same bits on every run and every
// grid size.
template <int kNumSums>
__device__ FO_INLINE void block_sum_to(double (&partial)[kNumSums][kThreadsPerBlock], double* out) {
  __syncthreads();
  for (int width = kThreadsPerBlock / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      for (int k = 0; k < kNumSums; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int k = 0; k < kNumSums; ++k) out[k] = partial[k][0];
  }
  __syncthreads();
}

template <template <typename> class Rule, typename Storage, typename StateStorage, bool kMaster, typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock)
    reduction_kernel(const DeviceTable table, const Hyper hyper, const DeviceSegments segments) {
  using S = math_t<Storage>;
  using ParamStorage = typename std::conditional<kMaster, float, Storage>::type;
  constexpr int kNumSums = Rule<S>::kNumSums;
  constexpr int kMaxStates = Rule<S>::kMaxStates;
  constexpr int kStates = kMaxStates > 0 ? kMaxStates : 1;
  const Rule<S> rule(hyper);
  const bool clips = table.clip_coef != nullptr;
  const S clip_coef = clips ? S(*table.clip_coef) : S(1);
  __shared__ double partial[kNumSums][kThreadsPerBlock];
  for (int64_t s = blockIdx.x; s < segments.count; s += gridDim.x) {
    const Segment segment = segments.segments[s];
    const TensorEntry& e = table.entries[segment.entry];
    const math::TensorCoefs<S> coefs = coefs_of<S>(table, e);
    S sums[kNumSums];
    for (int k = 0; k < kNumSums; ++k) sums[k] = S(0);
    for (int64_t i = segment.begin + threadIdx.x; i < segment.end; i += blockDim.x) {
      const S param = load_scalar(static_cast<const ParamStorage*>(e.ptr[kParamSlot]) + i);
      const S loaded = load_scalar(static_cast<const Storage*>(e.ptr[kGradSlot]) + i);
      const S grad = clips ? loaded * clip_coef : loaded;
      S state[kStates];
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) state[k] = load_scalar(static_cast<const StateStorage*>(e.ptr[kFirstStateSlot + k]) + i);
      }
      rule.update(param, grad, state, coefs);
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) {
          StateStorage* slot = static_cast<StateStorage*>(e.ptr[kFirstStateSlot + k]) + i;
          store_scalar(slot, state[k]);
          state[k] = load_scalar(slot);  // the sums see the states as stored (rounding included)
        }
      }
      rule.accumulate(param, grad, state, coefs, sums);
    }
    for (int k = 0; k < kNumSums; ++k) partial[k][threadIdx.x] = double(sums[k]);
    block_sum_to<kNumSums>(partial, segments.out + s * kNumSums);
  }
}

// The grad norm's reduced value (math/grad_norm.h) of each segment, in double.
template <typename Storage, math::NormKind K>
__global__ void __launch_bounds__(kThreadsPerBlock)
    grad_norm_kernel(const DeviceTable table, const math::GradNormHyper hyper, const DeviceSegments segments) {
  const math::GradNormRule<K> rule(hyper);
  __shared__ double partial[kThreadsPerBlock];
  for (int64_t s = blockIdx.x; s < segments.count; s += gridDim.x) {
    const Segment segment = segments.segments[s];
    const Storage* grad = static_cast<const Storage*>(table.entries[segment.entry].ptr[kGradSlot]);
    double total = 0.0;  // the identity of both combines: sums, and maxima of |g| >= 0
    for (int64_t i = segment.begin + threadIdx.x; i < segment.end; i += blockDim.x) {
      total = rule.combine(total, rule.term(double(load_scalar(grad + i))));
    }
    partial[threadIdx.x] = total;
    __syncthreads();
    for (int width = kThreadsPerBlock / 2; width > 0; width /= 2) {
      if (threadIdx.x < width) partial[threadIdx.x] = rule.combine(partial[threadIdx.x], partial[threadIdx.x + width]);
      __syncthreads();
    }
    if (threadIdx.x == 0) segments.out[s] = partial[0];
    __syncthreads();
  }
}

// Folds `count` per-segment values into *total with one block, in a fixed order.
template <math::NormKind K>
__global__ void __launch_bounds__(kThreadsPerBlock)
    fold_norms_kernel(const double* values, int64_t count, const math::GradNormHyper hyper, double* total) {
  const math::GradNormRule<K> rule(hyper);
  __shared__ double partial[kThreadsPerBlock];
  double mine = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) mine = rule.combine(mine, values[i]);
  partial[threadIdx.x] = mine;
  __syncthreads();
  for (int width = kThreadsPerBlock / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] = rule.combine(partial[threadIdx.x], partial[threadIdx.x + width]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = partial[0];
}

// One entry's float32 scalar states on the device, for Coefs::advance (NOTE: [Step
// coefficients] in math/rule.h).
struct DeviceScalars {
  float* const* ptrs;  // `step` first
  __device__ double get(int k) const { return double(*ptrs[k]); }
  __device__ void set(int k, double value) const { *ptrs[k] = static_cast<float>(value); }
  __device__ bool is_double(int) const { return false; }
};

// Advances each entry's device-side `step` (and its other scalar states) and writes its
// coefficients into the device table (NOTE: [Device steps and GradScaler]), with the host's
// own Coefs (NOTE: [Step coefficients] in math/rule.h).
template <typename Coefs, typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock)
    advance_steps_kernel(const DeviceTable table, const Hyper hyper, const DeviceSteps steps) {
  if (table.found_inf != nullptr && *table.found_inf != 0.0f) return;
  const Hyper h = with_device_lr(hyper, table);  // NOTE: [Device learning rates]
  TensorEntry* entries = const_cast<TensorEntry*>(table.entries);  // the device copy is ours
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < table.num_entries;
       e += int64_t(gridDim.x) * blockDim.x) {
    DeviceScalars scalars{steps.scalars + e * steps.num_scalars};
    const float step = *scalars.ptrs[0] + 1.0f;  // torch adds 1 to the float32 tensor
    *scalars.ptrs[0] = step;
    if constexpr (Coefs::kExtraScalars == 0) {
      Coefs::at_step(h, double(step)).to_coefs(entries[e].coef);
    } else {
      Coefs::advance(h, double(step), scalars).to_coefs(entries[e].coef);
    }
  }
}

FO_INLINE const char* launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// Every launch: `blocks` blocks of kThreadsPerBlock threads on the stream, then its error. The
// C++ tests build these sources without nvcc and run them on the CPU (NOTE: [CUDA emulation]
// in csrc/tests/cuda_emulation/cuda_runtime.h), where a launch is the emulator's.
template <typename... Params, typename... Args>
const char* launch_kernel(void (*kernel)(Params...), int64_t blocks, void* stream, const Args&... args) {
#ifdef FO_CUDA_EMULATION
  (void)stream;
  emulation::launch(kernel, blocks, kThreadsPerBlock, args...);
#else
  kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, static_cast<cudaStream_t>(stream)>>>(args...);
#endif
  return launch_error();
}

template <template <typename> class Rule, typename Storage, typename StateStorage, bool kMaster, bool kStochastic,
          typename Hyper>
const char* launch_elementwise_as(const DeviceTable& table, const Hyper& hyper, const Launch& launch) {
  const int64_t blocks = table.num_chunks < launch.grid ? table.num_chunks : launch.grid;
  return launch_kernel(elementwise_kernel<Rule, Storage, StateStorage, kMaster, kStochastic, Hyper>, blocks,
                       launch.stream, table, hyper);
}

template <typename Storage>
constexpr bool is_16_bit = std::is_same<Storage, bf16_t>::value || std::is_same<Storage, fp16_t>::value;

// The table's storage pairs (NOTE: [Precision options on CUDA]): the same choice as the CPU's
// sweep_storage, so the host checks of bucket.cpp cover both.
template <template <typename> class Rule, typename Storage, typename Hyper>
const char* launch_elementwise_storage(const DeviceTable& table, const Hyper& hyper, const Launch& launch) {
  if constexpr (is_16_bit<Storage>) {
    if (table.master_weights) return launch_elementwise_as<Rule, Storage, float, true, false>(table, hyper, launch);
    if (table.stochastic_rounding) {
      return launch_elementwise_as<Rule, Storage, Storage, false, true>(table, hyper, launch);
    }
    if (table.state_dtype == DType::kFloat32) {
      return launch_elementwise_as<Rule, Storage, float, false, false>(table, hyper, launch);
    }
  } else if constexpr (std::is_same<Storage, float>::value) {
    if (table.state_dtype == DType::kBFloat16) {
      return launch_elementwise_as<Rule, float, bf16_t, false, false>(table, hyper, launch);
    }
  }
  return launch_elementwise_as<Rule, Storage, Storage, false, false>(table, hyper, launch);
}

template <template <typename> class Rule, typename Hyper>
const char* launch_elementwise(const DeviceTable& table, const Hyper& hyper, const Launch& launch) {
  if (table.num_chunks == 0) return nullptr;
  switch (table.dtype) {
    case DType::kFloat32: return launch_elementwise_storage<Rule, float>(table, hyper, launch);
    case DType::kFloat64: return launch_elementwise_storage<Rule, double>(table, hyper, launch);
    case DType::kBFloat16: return launch_elementwise_storage<Rule, bf16_t>(table, hyper, launch);
    case DType::kFloat16: return launch_elementwise_storage<Rule, fp16_t>(table, hyper, launch);
  }
  return "fusedoptim: unknown storage dtype";
}

template <template <typename> class Rule, typename Storage, typename StateStorage, bool kMaster, typename Hyper>
const char* launch_reduction_as(const DeviceTable& table, const Hyper& hyper, const DeviceSegments& segments,
                                const Launch& launch) {
  const int64_t blocks = segments.count < launch.grid ? segments.count : launch.grid;
  return launch_kernel(reduction_kernel<Rule, Storage, StateStorage, kMaster, Hyper>, blocks, launch.stream, table,
                       hyper, segments);
}

// The CPU's reduce_storage pairs: reductions round no param, so no stochastic rounding.
template <template <typename> class Rule, typename Storage, typename Hyper>
const char* launch_reduction_storage(const DeviceTable& table, const Hyper& hyper, const DeviceSegments& segments,
                                     const Launch& launch) {
  if constexpr (is_16_bit<Storage>) {
    if (table.master_weights) return launch_reduction_as<Rule, Storage, float, true>(table, hyper, segments, launch);
    if (table.state_dtype == DType::kFloat32) {
      return launch_reduction_as<Rule, Storage, float, false>(table, hyper, segments, launch);
    }
  } else if constexpr (std::is_same<Storage, float>::value) {
    if (table.state_dtype == DType::kBFloat16) {
      return launch_reduction_as<Rule, float, bf16_t, false>(table, hyper, segments, launch);
    }
  }
  return launch_reduction_as<Rule, Storage, Storage, false>(table, hyper, segments, launch);
}

template <template <typename> class Rule, typename Hyper>
const char* launch_reduction(const DeviceTable& table, const Hyper& hyper, const DeviceSegments& segments,
                             const Launch& launch) {
  if (segments.count == 0) return nullptr;
  switch (table.dtype) {
    case DType::kFloat32: return launch_reduction_storage<Rule, float>(table, hyper, segments, launch);
    case DType::kFloat64: return launch_reduction_storage<Rule, double>(table, hyper, segments, launch);
    case DType::kBFloat16: return launch_reduction_storage<Rule, bf16_t>(table, hyper, segments, launch);
    case DType::kFloat16: return launch_reduction_storage<Rule, fp16_t>(table, hyper, segments, launch);
  }
  return "fusedoptim: unknown storage dtype";
}

template <typename Storage, math::NormKind K>
const char* launch_grad_norm_as(const DeviceTable& table, const math::GradNormHyper& hyper,
                                const DeviceSegments& segments, double* total, const Launch& launch) {
  if (segments.count > 0) {
    const int64_t blocks = segments.count < launch.grid ? segments.count : launch.grid;
    if (const char* error = launch_kernel(grad_norm_kernel<Storage, K>, blocks, launch.stream, table, hyper, segments)) {
      return error;
    }
  }
  return launch_kernel(fold_norms_kernel<K>, 1, launch.stream, segments.out, segments.count, hyper, total);
}

template <typename Storage>
const char* launch_grad_norm_storage(const DeviceTable& table, const math::GradNormHyper& hyper,
                                     const DeviceSegments& segments, double* total, const Launch& launch) {
  switch (hyper.kind) {
    case math::NormKind::kOne: return launch_grad_norm_as<Storage, math::NormKind::kOne>(table, hyper, segments, total, launch);
    case math::NormKind::kTwo: return launch_grad_norm_as<Storage, math::NormKind::kTwo>(table, hyper, segments, total, launch);
    case math::NormKind::kInf: return launch_grad_norm_as<Storage, math::NormKind::kInf>(table, hyper, segments, total, launch);
    case math::NormKind::kPower: return launch_grad_norm_as<Storage, math::NormKind::kPower>(table, hyper, segments, total, launch);
  }
  return "fusedoptim: unknown norm kind";
}

template <typename Coefs, typename Hyper>
const char* launch_advance_steps(const DeviceTable& table, const Hyper& hyper, const DeviceSteps& steps,
                                 const Launch& launch) {
  if (table.num_entries == 0) return nullptr;
  const int64_t needed = (table.num_entries + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t blocks = needed < launch.grid ? needed : launch.grid;
  return launch_kernel(advance_steps_kernel<Coefs, Hyper>, blocks, launch.stream, table, hyper, steps);
}

}  // namespace FO_ISA
}  // namespace cuda
}  // namespace fusedoptim

// Defines the launcher fusedoptim::cuda::<name>_steps_launch declared in launch.h.
#define FO_CUDA_DEVICE_STEPS(name, Coefs, Hyper)                                                     \
  namespace fusedoptim {                                                                             \
  namespace cuda {                                                                                   \
  const char* name##_steps_launch(const DeviceTable& table, const math::Hyper& hyper,                \
                                  const DeviceSteps& steps, const Launch& launch) {                 \
    return launch_advance_steps<math::Coefs>(table, hyper, steps, launch);                           \
  }                                                                                                  \
  }                                                                                                  \
  }

// Defines the launcher fusedoptim::cuda::<name>_launch declared in launch.h.
#define FO_CUDA_ELEMENTWISE(name, Rule, Hyper)                                                       \
  namespace fusedoptim {                                                                             \
  namespace cuda {                                                                                   \
  const char* name##_launch(const DeviceTable& table, const math::Hyper& hyper, const Launch& launch) { \
    return launch_elementwise<math::Rule>(table, hyper, launch);                                     \
  }                                                                                                  \
  }                                                                                                  \
  }
#define FO_CUDA_REDUCTION(name, Rule, Hyper)                                                         \
  namespace fusedoptim {                                                                             \
  namespace cuda {                                                                                   \
  const char* name##_launch(const DeviceTable& table, const math::Hyper& hyper,                      \
                            const DeviceSegments& segments, const Launch& launch) {                 \
    return launch_reduction<math::Rule>(table, hyper, segments, launch);                             \
  }                                                                                                  \
  }                                                                                                  \
  }
