// What the CUDA kernels (csrc/cuda/<algo>_cuda.cu) take and export: plain structs and function
// pointers, no torch and no CUDA header, so the host side (csrc/cuda_table.cpp, compiled by the
// C++ compiler against any torch) and the .cu files (compiled by nvcc without torch's CUDA
// headers, see NOTE: [CUDA without torch headers]) share one description.
#pragma once
#include <cstdint>

#include "cpu/kernels.h"  // the rule lists (FO_ELEMENTWISE_RULES, FO_REDUCTION_RULES)
#include "fusedoptim/bucket_table.h"

// The rules whose per-tensor coefficients the device computes from device-side `step` counters
// (every rule of torch.optim's capturable=True and fused=True algorithms): X(rule name,
// step-coefficient struct of NOTE: [Step coefficients] in math/rule.h, hyperparameter struct).
// Groups of other rules with device steps take the reference path (NOTE: [CUDA steps] in
// fusedoptim/optimizer.py).
#define FO_DEVICE_STEP_RULES(X)                  \
  X(adam, AdamStepCoefs, AdamHyper)              \
  X(adadelta, StepCountOnly, AdadeltaHyper)      \
  X(adagrad, AdagradStepCoefs, AdagradHyper)     \
  X(adamax, AdamaxStepCoefs, AdamaxHyper)        \
  X(asgd, AsgdStepCoefs, AsgdHyper)              \
  X(nadam, NadamStepCoefs, NadamHyper)           \
  X(radam, RadamStepCoefs, RadamHyper)           \
  X(rmsprop, StepCountOnly, RmspropHyper)        \
  X(rprop, StepCountOnly, RpropHyper)

namespace fusedoptim {
namespace cuda {

// NOTE: [CUDA without torch headers]
// The CPU torch wheel CI builds against has no torch CUDA headers (c10/cuda, ATen/cuda), and the
// GPU machine's torch may differ from the one the kernels were written for. So the kernels
// know nothing of torch: they take a DeviceTable (device pointers, sizes) and a stream as an
// opaque handle, and report launch errors as strings. Only csrc/cuda_table.cpp touches torch
// (device memory through the caching allocator, the current stream, the device guard), with
// torch's device-generic headers, which every build has.

// Elements of a bucket's flat index space a block takes at a time. Each table entry starts at
// a multiple of kEntryAlignment of that space (the host pads the prefix), so every chunk
// starts on a 16-byte boundary of each tensor it touches and 16-byte loads need no head loop.
constexpr int64_t kChunkNumel = 16384;
constexpr int64_t kEntryAlignment = 8;  // elements: 16 bytes of 16-bit storage
constexpr int kThreadsPerBlock = 256;

// A tensor's length in the bucket's padded flat index space.
constexpr int64_t padded_numel(int64_t numel) {
  return (numel + kEntryAlignment - 1) / kEntryAlignment * kEntryAlignment;
}
constexpr int kBlocksPerMultiprocessor = 8;

// A bucket's table in device memory, for one launch.
struct DeviceTable {
  const TensorEntry* entries;  // device
  const int64_t* prefix;       // device: padded flat start of each entry, num_entries + 1 values
  int64_t num_entries;
  int64_t total_numel;  // padded
  int64_t num_chunks;
  DType dtype;
  // When every entry shares its coefficients and first_step (nearly always: one step count
  // per bucket), they come by value here and the device entries' own are not read, so a
  // step uploads nothing unless pointers changed.
  int32_t uniform_coefs;
  TensorEntry uniform;
  // GradScaler's protocol on the device (NOTE: [Device steps and GradScaler] in sweep.cuh), or
  // nullptr: grads are divided by *grad_scale (and stored back unscaled), and nothing is done
  // when *found_inf is not zero.
  const float* grad_scale;
  const float* found_inf;
  // The options of NOTE: [Precision options on CUDA] in csrc/cuda/sweep.cuh, as BucketTable
  // has them: the states' storage, master weights in slot 0, stochastic rounding with
  // rounding_seed mixed with *rounding_step, and max_grad_norm's coefficient *clip_coef
  // (nullptr: no clipping).
  DType state_dtype;
  int32_t master_weights;
  int32_t stochastic_rounding;
  uint64_t rounding_seed;
  const int64_t* rounding_step;
  const double* clip_coef;
  // A Tensor lr on the bucket's device, read by the kernels in place of the hyperparameters'
  // lr (NOTE: [Device learning rates] in csrc/cuda/sweep.cuh): a float32 or (lr_is_double) a
  // float64 value; nullptr: the host's lr.
  const void* lr;
  int32_t lr_is_double;
};

// Per-entry 0-dim states on the device (torch's `step`, and NAdam's mu_product, ASGD's eta and
// mu, for capturable=True and fused=True), which a step kernel advances and turns into the
// entries' coefficients before the update.
struct DeviceSteps {
  float* const* scalars;  // device: entry e's float32 scalar k at scalars[e * num_scalars + k], `step` first
  int64_t num_scalars;
};

// Where a launch runs.
struct Launch {
  void* stream;  // a cudaStream_t: c10::Stream::native_handle()
  int grid;      // blocks for the elementwise kernels (sized to the device)
};

// A reduction over segments (NOTE: [Deterministic reductions]): one block per segment at a
// time, writing Rule::kNumSums doubles per segment to `out` (device).
struct DeviceSegments {
  const Segment* segments;  // device
  int64_t count;
  double* out;  // device
};

// Launchers return nullptr, or the CUDA error string of the launch.
#define FO_CUDA_KERNEL_FIELD(name, Rule, Hyper) \
  const char* (*name)(const DeviceTable&, const math::Hyper&, const Launch&);
#define FO_CUDA_REDUCTION_FIELD(name, Rule, Hyper) \
  const char* (*name)(const DeviceTable&, const math::Hyper&, const DeviceSegments&, const Launch&);
#define FO_CUDA_STEP_FIELD(name, Coefs, Hyper) \
  const char* (*name##_steps)(const DeviceTable&, const math::Hyper&, const DeviceSteps&, const Launch&);
struct KernelTable {
  FO_ELEMENTWISE_RULES(FO_CUDA_KERNEL_FIELD)
  FO_REDUCTION_RULES(FO_CUDA_REDUCTION_FIELD)
  FO_DEVICE_STEP_RULES(FO_CUDA_STEP_FIELD)
  // The global grad norm's reduced value (math/grad_norm.h) of a table's grads into *total
  // (device): per segment, then folded in order (NOTE: [Deterministic reductions on CUDA]).
  const char* (*grad_norm)(const DeviceTable&, const math::GradNormHyper&, const DeviceSegments&, double* total,
                           const Launch&);
  // The number of multiprocessors of a device (sizes the grid), or -1 with *error set.
  int (*multiprocessor_count)(int device, const char** error);
  // 1 if the stream is capturing a CUDA graph, 0 if not, -1 with *error set.
  int (*stream_capturing)(void* stream, const char** error);
};
#undef FO_CUDA_KERNEL_FIELD
#undef FO_CUDA_REDUCTION_FIELD
#undef FO_CUDA_STEP_FIELD

#define FO_CUDA_DECLARE_KERNEL(name, Rule, Hyper) \
  const char* name##_launch(const DeviceTable&, const math::Hyper&, const Launch&);
#define FO_CUDA_DECLARE_REDUCTION(name, Rule, Hyper) \
  const char* name##_launch(const DeviceTable&, const math::Hyper&, const DeviceSegments&, const Launch&);
#define FO_CUDA_DECLARE_STEPS(name, Coefs, Hyper) \
  const char* name##_steps_launch(const DeviceTable&, const math::Hyper&, const DeviceSteps&, const Launch&);
FO_ELEMENTWISE_RULES(FO_CUDA_DECLARE_KERNEL)
FO_REDUCTION_RULES(FO_CUDA_DECLARE_REDUCTION)
FO_DEVICE_STEP_RULES(FO_CUDA_DECLARE_STEPS)
#undef FO_CUDA_DECLARE_KERNEL
#undef FO_CUDA_DECLARE_REDUCTION
#undef FO_CUDA_DECLARE_STEPS
const char* grad_norm_launch(const DeviceTable&, const math::GradNormHyper&, const DeviceSegments&, double* total,
                             const Launch&);
int multiprocessor_count(int device, const char** error);
int stream_capturing(void* stream, const char** error);

// The CUDA kernels of this build, or nullptr when it has none (a CPU-only build). The CUDA
// objects register them when the extension loads (csrc/cuda/registry_cuda.cu).
const KernelTable* kernels();
void register_kernels(const KernelTable* table);

}  // namespace cuda
}  // namespace fusedoptim
