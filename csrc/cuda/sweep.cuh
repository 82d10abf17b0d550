// The CUDA bucket kernels: an update rule (fusedoptim/math/<algo>.h) over a whole bucket in one
// launch, and the segmented reductions. Each csrc/cuda/<algo>_cuda.cu instantiates its rules
// with FO_CUDA_ELEMENTWISE / FO_CUDA_REDUCTION. No torch header (NOTE: [CUDA without torch
// headers] in fusedoptim/cuda/launch.h).
#pragma once
#ifndef FO_ISA
#define FO_ISA isa_cuda
#endif
#include <cstdint>

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

// W storage elements, loaded and stored as one 16-byte access.
template <typename Storage>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / sizeof(Storage);
  Storage v[kWidth];
};

// Packs move as uint4 so that loads and stores are single 128-bit accesses (a struct copy, or
// a memcpy into a uint4, compiled to 32-bit stores).
template <typename Storage>
union PackBits {
  Pack<Storage> pack;
  uint4 bits;
};

// Indexed in packs, so that the compiler can see the 16-byte alignment.
template <typename Storage>
__device__ FO_INLINE Pack<Storage> load_pack(const void* slot, int64_t pack) {
  PackBits<Storage> u;
  u.bits = static_cast<const uint4*>(slot)[pack];
  return u.pack;
}

template <typename Storage>
__device__ FO_INLINE void store_pack(void* slot, int64_t pack, const Pack<Storage>& value) {
  PackBits<Storage> u;
  u.pack = value;
  static_cast<uint4*>(slot)[pack] = u.bits;
}

// NOTE: [Device steps and GradScaler]
// With torch's capturable=True or fused=True, `step` lives on the device. A step kernel (one
// thread per tensor) then advances it and writes the tensor's coefficients into the device
// table before the update kernel reads them, so a step needs no host sync and its launches can
// be captured in a CUDA graph. GradScaler's protocol is honoured on the device as torch's
// fused kernels do: when *found_inf is not zero both kernels return at once (params, states
// and `step` unchanged); otherwise each grad is divided by *grad_scale, used, and stored back
// unscaled.
template <template <typename> class Rule, typename Storage>
struct CudaRuleBody {
  using S = math_t<Storage>;
  using Coefs = math::TensorCoefs<S>;
  static constexpr int kMaxStates = Rule<S>::kMaxStates;
  static constexpr int kStates = kMaxStates > 0 ? kMaxStates : 1;
  static constexpr int kWidth = Pack<Storage>::kWidth;
  Rule<S> rule;
  bool unscale;
  S grad_scale;

  template <typename Hyper>
  __device__ CudaRuleBody(const Hyper& hyper, const float* scale)
      : rule(hyper), unscale(scale != nullptr), grad_scale(scale != nullptr ? S(*scale) : S(1)) {}

  __device__ FO_INLINE bool vector_aligned(const TensorEntry& e) const {
    uintptr_t bits = reinterpret_cast<uintptr_t>(e.ptr[kParamSlot]) | reinterpret_cast<uintptr_t>(e.ptr[kGradSlot]);
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) bits |= reinterpret_cast<uintptr_t>(e.ptr[kFirstStateSlot + k]);
    }
    return (bits & 15u) == 0;
  }

  __device__ FO_INLINE void apply_one(const TensorEntry& e, const Coefs& coefs, int64_t i) const {
    S param = load_scalar(static_cast<const Storage*>(e.ptr[kParamSlot]) + i);
    S grad = load_scalar(static_cast<const Storage*>(e.ptr[kGradSlot]) + i);
    if (unscale) {
      grad = grad / grad_scale;
      store_scalar(static_cast<Storage*>(e.ptr[kGradSlot]) + i, grad);
    }
    S state[kStates];
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) state[k] = load_scalar(static_cast<const Storage*>(e.ptr[kFirstStateSlot + k]) + i);
    }
    rule.update(param, grad, state, coefs);
    store_scalar(static_cast<Storage*>(e.ptr[kParamSlot]) + i, param);
    if constexpr (!math::states_read_only<Rule<S>>::value) {
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_scalar(static_cast<Storage*>(e.ptr[kFirstStateSlot + k]) + i, state[k]);
      }
    }
  }

  // Elements [pack * kWidth, (pack + 1) * kWidth) with 16-byte accesses (slots aligned).
  __device__ FO_INLINE void apply_pack(const TensorEntry& e, const Coefs& coefs, int64_t pack) const {
    using P = Pack<Storage>;
    P param_pack = load_pack<Storage>(e.ptr[kParamSlot], pack);
    P grad_pack = load_pack<Storage>(e.ptr[kGradSlot], pack);
    P state_pack[kStates];
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) state_pack[k] = load_pack<Storage>(e.ptr[kFirstStateSlot + k], pack);
    }
#pragma unroll
    for (int w = 0; w < kWidth; ++w) {
      S param = load_scalar(&param_pack.v[w]);
      S grad = load_scalar(&grad_pack.v[w]);
      if (unscale) {
        grad = grad / grad_scale;
        store_scalar(&grad_pack.v[w], grad);
      }
      S state[kStates];
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) state[k] = load_scalar(&state_pack[k].v[w]);
      }
      rule.update(param, grad, state, coefs);
      store_scalar(&param_pack.v[w], param);
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_scalar(&state_pack[k].v[w], state[k]);
      }
    }
    store_pack<Storage>(e.ptr[kParamSlot], pack, param_pack);
    if (unscale) store_pack<Storage>(e.ptr[kGradSlot], pack, grad_pack);
    if constexpr (!math::states_read_only<Rule<S>>::value) {
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) store_pack<Storage>(e.ptr[kFirstStateSlot + k], pack, state_pack[k]);
      }
    }
  }

  // Elements [begin, end) of one tensor, by the whole block.
  __device__ FO_INLINE void apply_range(const TensorEntry& e, const Coefs& coefs, int64_t begin, int64_t end) const {
    int64_t i = begin;
    if (vector_aligned(e)) {
      // begin is a multiple of kEntryAlignment, hence of kWidth (NOTE: [One launch per bucket]).
      const int64_t first_pack = begin / kWidth, last_pack = end / kWidth;
      for (int64_t k = first_pack + threadIdx.x; k < last_pack; k += blockDim.x) apply_pack(e, coefs, k);
      i = last_pack * kWidth;
    }
    for (int64_t j = i + threadIdx.x; j < end; j += blockDim.x) apply_one(e, coefs, j);
  }
};

template <typename S>
__device__ FO_INLINE math::TensorCoefs<S> coefs_of(const DeviceTable& table, const TensorEntry& entry) {
  return table.uniform_coefs ? math::TensorCoefs<S>(table.uniform) : math::TensorCoefs<S>(entry);
}

template <template <typename> class Rule, typename Storage, typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock) elementwise_kernel(const DeviceTable table, const Hyper hyper) {
  using S = math_t<Storage>;
  if (table.found_inf != nullptr && *table.found_inf != 0.0f) return;  // NOTE: [Device steps and GradScaler]
  const CudaRuleBody<Rule, Storage> body(hyper, table.grad_scale);
  for (int64_t chunk = blockIdx.x; chunk < table.num_chunks; chunk += gridDim.x) {
    const int64_t begin = chunk * kChunkNumel;
    const int64_t end = begin + kChunkNumel < table.total_numel ? begin + kChunkNumel : table.total_numel;
    for (int64_t e = entry_containing(table, begin); e < table.num_entries && table.prefix[e] < end; ++e) {
      const TensorEntry entry = table.entries[e];  // a copy: stores can't alias it
      const int64_t start = table.prefix[e];
      const int64_t first = begin > start ? begin - start : 0;
      const int64_t last = end - start < entry.numel ? end - start : entry.numel;
      if (first < last) body.apply_range(entry, coefs_of<S>(table, entry), first, last);
    }
  }
}

// NOTE: [Deterministic reductions on CUDA]
// As on the CPU (NOTE: [Deterministic reductions]), sums are per segment of the table, never
// per whatever the scheduler did: a block takes a segment, each thread adds its strided
// elements in the math type, and the block adds the threads' sums in double in a fixed tree.
// The host adds a tensor's segments in order. Same bits on every run and every grid size.
template <template <typename> class Rule, typename Storage, typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock)
    reduction_kernel(const DeviceTable table, const Hyper hyper, const DeviceSegments segments) {
  using S = math_t<Storage>;
  constexpr int kNumSums = Rule<S>::kNumSums;
  const Rule<S> rule(hyper);
  constexpr int kMaxStates = Rule<S>::kMaxStates;
  constexpr int kStates = kMaxStates > 0 ? kMaxStates : 1;
  __shared__ double partial[kNumSums][kThreadsPerBlock];
  for (int64_t s = blockIdx.x; s < segments.count; s += gridDim.x) {
    const Segment segment = segments.segments[s];
    const TensorEntry& e = table.entries[segment.entry];
    const math::TensorCoefs<S> coefs = coefs_of<S>(table, e);
    S sums[kNumSums];
    for (int k = 0; k < kNumSums; ++k) sums[k] = S(0);
    for (int64_t i = segment.begin + threadIdx.x; i < segment.end; i += blockDim.x) {
      const S param = load_scalar(static_cast<const Storage*>(e.ptr[kParamSlot]) + i);
      const S grad = load_scalar(static_cast<const Storage*>(e.ptr[kGradSlot]) + i);
      S state[kStates];
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) state[k] = load_scalar(static_cast<const Storage*>(e.ptr[kFirstStateSlot + k]) + i);
      }
      rule.update(param, grad, state, coefs);
      for (int k = 0; k < kMaxStates; ++k) {
        if (k < rule.num_states) {
          Storage* slot = static_cast<Storage*>(e.ptr[kFirstStateSlot + k]) + i;
          store_scalar(slot, state[k]);
          state[k] = load_scalar(slot);  // the sums see the states as stored (rounding included)
        }
      }
      rule.accumulate(param, grad, state, coefs, sums);
    }
    for (int k = 0; k < kNumSums; ++k) partial[k][threadIdx.x] = double(sums[k]);
    __syncthreads();
    for (int width = kThreadsPerBlock / 2; width > 0; width /= 2) {
      if (threadIdx.x < width) {
        for (int k = 0; k < kNumSums; ++k) partial[k][threadIdx.x] += partial[k][threadIdx.x + width];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      for (int k = 0; k < kNumSums; ++k) segments.out[s * kNumSums + k] = partial[k][0];
    }
    __syncthreads();
  }
}

// Advances each entry's device-side `step` and writes its coefficients into the device table
// (NOTE: [Device steps and GradScaler]). Coefs::at_step is the host's own function.
template <typename Coefs, typename Hyper>
__global__ void __launch_bounds__(kThreadsPerBlock)
    advance_steps_kernel(const DeviceTable table, const Hyper hyper, const DeviceSteps steps) {
  if (table.found_inf != nullptr && *table.found_inf != 0.0f) return;
  TensorEntry* entries = const_cast<TensorEntry*>(table.entries);  // the device copy is ours
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < table.num_entries;
       e += int64_t(gridDim.x) * blockDim.x) {
    const float step = *steps.steps[e] + 1.0f;  // torch adds 1 to the float32 tensor
    *steps.steps[e] = step;
    Coefs::at_step(hyper, double(step)).to_coefs(entries[e].coef);
  }
}

FO_INLINE const char* launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template <template <typename> class Rule, typename Storage, typename Hyper>
const char* launch_elementwise_as(const DeviceTable& table, const Hyper& hyper, const Launch& launch) {
  const int64_t blocks = table.num_chunks < launch.grid ? table.num_chunks : launch.grid;
  elementwise_kernel<Rule, Storage, Hyper>
      <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, static_cast<cudaStream_t>(launch.stream)>>>(table, hyper);
  return launch_error();
}

template <template <typename> class Rule, typename Hyper>
const char* launch_elementwise(const DeviceTable& table, const Hyper& hyper, const Launch& launch) {
  if (table.num_chunks == 0) return nullptr;
  switch (table.dtype) {
    case DType::kFloat32: return launch_elementwise_as<Rule, float>(table, hyper, launch);
    case DType::kFloat64: return launch_elementwise_as<Rule, double>(table, hyper, launch);
    case DType::kBFloat16: return launch_elementwise_as<Rule, bf16_t>(table, hyper, launch);
    case DType::kFloat16: return launch_elementwise_as<Rule, fp16_t>(table, hyper, launch);
  }
  return "fusedoptim: unknown storage dtype";
}

template <template <typename> class Rule, typename Storage, typename Hyper>
const char* launch_reduction_as(const DeviceTable& table, const Hyper& hyper, const DeviceSegments& segments,
                                const Launch& launch) {
  const int64_t blocks = segments.count < launch.grid ? segments.count : launch.grid;
  reduction_kernel<Rule, Storage, Hyper><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0,
                                           static_cast<cudaStream_t>(launch.stream)>>>(table, hyper, segments);
  return launch_error();
}

template <template <typename> class Rule, typename Hyper>
const char* launch_reduction(const DeviceTable& table, const Hyper& hyper, const DeviceSegments& segments,
                             const Launch& launch) {
  if (segments.count == 0) return nullptr;
  switch (table.dtype) {
    case DType::kFloat32: return launch_reduction_as<Rule, float>(table, hyper, segments, launch);
    case DType::kFloat64: return launch_reduction_as<Rule, double>(table, hyper, segments, launch);
    case DType::kBFloat16: return launch_reduction_as<Rule, bf16_t>(table, hyper, segments, launch);
    case DType::kFloat16: return launch_reduction_as<Rule, fp16_t>(table, hyper, segments, launch);
  }
  return "fusedoptim: unknown storage dtype";
}

template <typename Coefs, typename Hyper>
const char* launch_advance_steps(const DeviceTable& table, const Hyper& hyper, const DeviceSteps& steps,
                                 const Launch& launch) {
  if (table.num_entries == 0) return nullptr;
  const int64_t needed = (table.num_entries + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t blocks = needed < launch.grid ? needed : launch.grid;
  advance_steps_kernel<Coefs, Hyper><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0,
                                       static_cast<cudaStream_t>(launch.stream)>>>(table, hyper, steps);
  return launch_error();
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
