// C++ tests of the CUDA kernels (csrc/cuda/*.cu) without a GPU: built with the host compiler
// and run on the CPU (NOTE: [CUDA emulation] in cuda_emulation/cuda_runtime.h), each launch is
// checked against the CPU scalar sweep on the same inputs:
//  * every elementwise kernel (FO_ELEMENTWISE_RULES), every variant of kernel_cases.h, fp32,
//    fp64, bf16 and fp16, with special values, over tensors that cross the 16384-element chunks
//    of a grid smaller than the chunk count, with 16-byte aligned tensors (vector packs) and
//    misaligned views (element by element): bit-identical params and states;
//  * the same variants with device steps, for every rule that has them (FO_DEVICE_STEP_RULES);
//  * coefficients by value (uniform_coefs), max_grad_norm's clip coefficient, GradScaler's
//    unscaling (grads stored back unscaled) and its skip on inf, device steps with a device lr,
//    stochastic rounding, master weights and state dtypes: bit-identical;
//  * the reductions (LAMB's, the grad norm's): within rounding of the CPU's sums, with
//    bit-identical states; the inf norm exact, NaN included;
//  * what a GPU would refuse: no launch error (cudaGetLastError), no misaligned 16-byte access
//    (the emulator stops the program at one), and aligned tensors do take 16-byte accesses.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <cuda_runtime.h>  // the stand-in: the emulator's record

#include "fusedoptim/cuda/launch.h"
#include "kernel_cases.h"

using namespace fusedoptim;
using namespace fusedoptim::cpu;
using namespace fusedoptim::kernel_tests;
namespace emulation = fusedoptim::cuda::emulation;

namespace {

// Smaller than the chunk count of kCudaSizes (3 chunks of 16384), so blocks stride over chunks.
constexpr int kGrid = 2;
const fusedoptim::cuda::Launch kLaunch{nullptr, kGrid};
// Tensors across both chunk boundaries.
const std::vector<int64_t> kCudaSizes = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 4097, 16383, 16385};

// A bucket's device table, in host memory: its entries, and the prefix padded as
// csrc/cuda_table.cpp pads it.
struct EmulatedTable {
  std::vector<TensorEntry> entries;
  std::vector<int64_t> prefix;
  fusedoptim::cuda::DeviceTable table{};

  EmulatedTable(const std::vector<TensorEntry>& from, DType dtype, DType state_dtype)
      : entries(from), prefix(from.size() + 1, 0) {
    for (size_t i = 0; i < entries.size(); ++i) prefix[i + 1] = prefix[i] + fusedoptim::cuda::padded_numel(entries[i].numel);
    table.entries = entries.data();
    table.prefix = prefix.data();
    table.num_entries = int64_t(entries.size());
    table.total_numel = prefix.back();
    table.num_chunks = (table.total_numel + fusedoptim::cuda::kChunkNumel - 1) / fusedoptim::cuda::kChunkNumel;
    table.dtype = dtype;
    table.state_dtype = state_dtype;
  }
  EmulatedTable(const std::vector<TensorEntry>& from, DType dtype) : EmulatedTable(from, dtype, dtype) {}
};

template <typename Hyper>
using CudaElementwise = const char* (*)(const fusedoptim::cuda::DeviceTable&, const Hyper&,
                                        const fusedoptim::cuda::Launch&);

// The CUDA launcher of a CPU kernel (both from FO_ELEMENTWISE_RULES).
template <typename Hyper>
CudaElementwise<Hyper> cuda_kernel_for(ElementwiseMember<Hyper> cpu_kernel) {
#define FO_MATCH(name, Rule, H)                                             \
  if constexpr (std::is_same<Hyper, math::H>::value) {                      \
    if (cpu_kernel == &KernelTable::name) return fusedoptim::cuda::name##_launch; \
  }
  FO_ELEMENTWISE_RULES(FO_MATCH)
#undef FO_MATCH
  return nullptr;
}

template <typename Hyper>
using CudaSteps = const char* (*)(const fusedoptim::cuda::DeviceTable&, const Hyper&,
                                  const fusedoptim::cuda::DeviceSteps&, const fusedoptim::cuda::Launch&);

// A param's float32 scalar states on the host, as the step kernel's DeviceScalars reads them.
struct HostScalars {
  float* values;
  double get(int k) const { return double(values[k]); }
  void set(int k, double value) const { values[k] = static_cast<float>(value); }
  bool is_double(int) const { return false; }
};

const KernelTable& scalar_kernels() { return kernels_for(CpuCapability::kScalar); }

// Every case of kernel_cases.h: the CPU scalar sweep over the bucket vs the CUDA kernel over
// its device table (coefficients from the entries), aligned and shifted, plain and with
// special values.
struct CudaChecker {
  template <typename T, typename Hyper>
  void elementwise(const char* name, int variant, const char* dtype_name, ElementwiseMember<Hyper> kernel,
                   const Hyper& hyper, const SlotFills& fills, const CoefFn<T>& coefs = nullptr,
                   const FixFn<T>& fix = nullptr) const {
    const CudaElementwise<Hyper> cuda_kernel = cuda_kernel_for(kernel);
    EXPECT(cuda_kernel != nullptr, "%s: no CUDA kernel", name);
    if (cuda_kernel == nullptr) return;
    for (bool specials : {false, true}) {
      const TestBucket<T> inputs(kCudaSizes, 19u + 31u * unsigned(variant), fills, specials);
      for (bool shifted : {false, true}) {
        TestBucket<T> expected(inputs), actual(inputs);
        for (TestBucket<T>* b : {&expected, &actual}) {
          if (fix) fix(*b);
          if (coefs)
            for (size_t k = 0; k < b->entries.size(); ++k) coefs(b->entries[k], k);
          if (shifted) b->shift_odd_entries();
        }
        const TestBucket<T> untouched(expected);
        (scalar_kernels().*kernel)(expected.table(), hyper, 0, expected.total());
        EXPECT(!expected.same_bits(untouched), "%s variant %d: the CPU step changed nothing", name, variant);
        const EmulatedTable device(actual.entries, dtype_of<T>());
        emulation::record.packs = 0;
        const char* error = cuda_kernel(device.table, hyper, kLaunch);
        EXPECT(error == nullptr, "%s: launch failed: %s", name, error);
        // aligned tensors take 16-byte packs (a misaligned one would have stopped the program)
        EXPECT(shifted || emulation::record.packs > 0, "cuda %s %s: no 16-byte access", name, dtype_name);
        const char* where = "";
        EXPECT(expected.same_bits(actual, specials, &where), "cuda %s variant %d%s%s %s differs from the CPU at %s",
               name, variant, specials ? " (special values)" : "", shifted ? " (misaligned)" : "", dtype_name, where);
      }
    }
#define FO_DEVICE_STEPS_CASE(rule, Coefs, H)                                                                   \
  if constexpr (std::is_same<Hyper, math::H>::value) {                                                         \
    if (kernel == &KernelTable::rule) {                                                                        \
      expect_device_steps<T, math::Coefs>(name, variant, dtype_name, kernel, fusedoptim::cuda::rule##_steps_launch, \
                                          cuda_kernel, hyper, fills, fix);                                     \
    }                                                                                                          \
  }
    FO_DEVICE_STEP_RULES(FO_DEVICE_STEPS_CASE)
#undef FO_DEVICE_STEPS_CASE
  }

  // A rule with device steps (FO_DEVICE_STEP_RULES): its step kernel advances each entry's
  // float32 `step` (and NAdam's, ASGD's other scalars) and writes the coefficients the update
  // kernel reads; the CPU gets those of the host's Coefs at the same step, from the same
  // scalars.
  template <typename T, typename Coefs, typename Hyper>
  static void expect_device_steps(const char* name, int variant, const char* dtype_name,
                                  ElementwiseMember<Hyper> kernel, CudaSteps<Hyper> cuda_steps,
                                  CudaElementwise<Hyper> cuda_kernel, const Hyper& hyper, const SlotFills& fills,
                                  const FixFn<T>& fix) {
    constexpr int kScalars = 1 + Coefs::kExtraScalars;
    TestBucket<T> expected(kCudaSizes, 37u + unsigned(variant), fills), actual(expected);
    if (fix) {
      fix(expected);
      fix(actual);
    }
    const size_t n = expected.entries.size();
    std::vector<float> host(n * kScalars), device(n * kScalars);
    std::vector<float*> pointers(n * kScalars);
    for (size_t e = 0; e < n; ++e) {
      host[e * kScalars] = float(step_of(e) - 1.0);
      for (int k = 1; k < kScalars; ++k) host[e * kScalars + k] = 0.5f + 0.1f * float(k);  // mu_product, eta, mu
    }
    device = host;
    for (size_t i = 0; i < pointers.size(); ++i) pointers[i] = &device[i];
    for (size_t e = 0; e < n; ++e) {
      HostScalars scalars{&host[e * kScalars]};
      const float step = host[e * kScalars] + 1.0f;
      host[e * kScalars] = step;
      if constexpr (Coefs::kExtraScalars == 0) {
        Coefs::at_step(hyper, double(step)).to_coefs(expected.entries[e].coef);
      } else {
        Coefs::advance(hyper, double(step), scalars).to_coefs(expected.entries[e].coef);
      }
    }
    const TestBucket<T> untouched(expected);
    (scalar_kernels().*kernel)(expected.table(), hyper, 0, expected.total());
    EXPECT(!expected.same_bits(untouched), "%s variant %d with device steps: the CPU step changed nothing", name,
           variant);
    const EmulatedTable table(actual.entries, dtype_of<T>());
    const fusedoptim::cuda::DeviceSteps steps{pointers.data(), kScalars};
    EXPECT(cuda_steps(table.table, hyper, steps, kLaunch) == nullptr, "%s: step launch failed", name);
    EXPECT(cuda_kernel(table.table, hyper, kLaunch) == nullptr, "%s: launch failed", name);
    EXPECT(host == device, "cuda %s variant %d %s: device step scalars differ from the host's", name, variant,
           dtype_name);
    const char* where = "";
    EXPECT(expected.same_bits(actual, false, &where), "cuda %s variant %d %s with device steps differs at %s", name,
           variant, dtype_name, where);
  }
};

math::AdamHyper adamw_hyper() {
  math::AdamHyper h{};
  h.lr = 1e-2;
  h.beta1 = 0.9;
  h.beta2 = 0.999;
  h.eps = 1e-8;
  h.weight_decay = 0.1;
  h.decoupled_weight_decay = true;
  h.decay_factor = 1.0 - h.lr * h.weight_decay;
  return h;
}

void set_adam_coefs(TensorEntry& e, const math::AdamHyper& h, double step) {
  math::AdamStepCoefs::at_step(h, step).to_coefs(e.coef);
}

// One coefficient set for the whole bucket, by value: the device entries' own are NaN and unread.
template <typename T>
void check_uniform_coefs(const char* dn) {
  const math::AdamHyper h = adamw_hyper();
  TestBucket<T> expected(kCudaSizes, 5), actual(kCudaSizes, 5);
  for (TensorEntry& e : expected.entries) set_adam_coefs(e, h, 7);
  EmulatedTable device(actual.entries, dtype_of<T>());
  for (TensorEntry& e : device.entries)
    for (double& c : e.coef) c = std::numeric_limits<double>::quiet_NaN();
  device.table.uniform_coefs = 1;
  set_adam_coefs(device.table.uniform, h, 7);
  scalar_kernels().adam(expected.table(), h, 0, expected.total());
  EXPECT(fusedoptim::cuda::adam_launch(device.table, h, kLaunch) == nullptr, "adam launch");
  const char* where = "";
  EXPECT(expected.same_bits(actual, false, &where), "cuda uniform coefficients %s differ at %s", dn, where);
}

// max_grad_norm: the grads multiplied by the clip coefficient after their load, as the CPU's
// BucketTable::grad_scale; the grads themselves unchanged.
template <typename T>
void check_clip_coef(const char* dn) {
  math::SgdHyper h{};
  h.lr = 0.1;
  h.momentum = 0.9;
  h.weight_decay = 0.01;
  const double coef = 0.37;
  TestBucket<T> expected(kCudaSizes, 6), actual(kCudaSizes, 6);
  BucketTable cpu_table = expected.table();
  cpu_table.grad_scale = coef;
  scalar_kernels().sgd(cpu_table, h, 0, expected.total());
  EmulatedTable device(actual.entries, dtype_of<T>());
  device.table.clip_coef = &coef;
  EXPECT(fusedoptim::cuda::sgd_launch(device.table, h, kLaunch) == nullptr, "sgd launch");
  const char* where = "";
  EXPECT(expected.same_bits(actual, false, &where), "cuda clip coefficient %s differs at %s", dn, where);
}

// GradScaler (NOTE: [Device steps and GradScaler]): grads scaled by 2^10 are divided back in the
// kernel (exactly: a power of two) and stored unscaled; with found_inf nothing changes.
template <typename T>
void check_grad_scaler(const char* dn) {
  const math::AdamHyper h = adamw_hyper();
  const float scale = 1024.0f;
  for (float inf : {0.0f, 1.0f}) {
    TestBucket<T> expected(kCudaSizes, 8), actual(kCudaSizes, 8), scaled_inputs(kCudaSizes, 8);
    for (TestBucket<T>* b : {&expected, &actual, &scaled_inputs}) {
      for (size_t k = 0; k < b->entries.size(); ++k) set_adam_coefs(b->entries[k], h, step_of(k));
    }
    for (TestBucket<T>* b : {&actual, &scaled_inputs}) {
      for (size_t t = 0; t < b->entries.size(); ++t)
        for (int64_t i = 0; i < b->entries[t].numel; ++i) b->set(kGradSlot, t, i, b->get(kGradSlot, t, i) * scale);
    }
    if (inf == 0.0f) scalar_kernels().adam(expected.table(), h, 0, expected.total());
    EmulatedTable device(actual.entries, dtype_of<T>());
    device.table.grad_scale = &scale;
    device.table.found_inf = &inf;
    EXPECT(fusedoptim::cuda::adam_launch(device.table, h, kLaunch) == nullptr, "adam launch");
    const char* where = "";
    if (inf == 0.0f) {
      EXPECT(expected.same_bits(actual, false, &where), "cuda GradScaler unscaling %s differs at %s", dn, where);
    } else {
      EXPECT(scaled_inputs.same_bits(actual, false, &where), "cuda GradScaler skip %s changed %s", dn, where);
    }
  }
}

// Device steps (NOTE: [Device steps and GradScaler]) with a device lr (NOTE: [Device learning
// rates]): the step kernel adds one to each entry's float32 `step` and writes its
// coefficients, and both kernels read the lr from memory (the host's is NaN).
template <typename T, typename Lr>
void check_device_steps(const char* dn, Lr lr) {
  math::AdamHyper on_host = adamw_hyper();
  on_host.lr = on_host.decay_factor = std::numeric_limits<double>::quiet_NaN();
  const math::AdamHyper h = adamw_hyper().with_lr(double(lr));
  for (float inf : {0.0f, 1.0f}) {
    TestBucket<T> expected(kCudaSizes, 9), actual(kCudaSizes, 9), before(kCudaSizes, 9);
    std::vector<float> steps(actual.entries.size());
    std::vector<float*> scalars(steps.size());
    for (size_t k = 0; k < steps.size(); ++k) {
      steps[k] = float(step_of(k) - 1.0);
      scalars[k] = &steps[k];
      set_adam_coefs(expected.entries[k], h, double(steps[k] + 1.0f));
    }
    if (inf == 0.0f) scalar_kernels().adam(expected.table(), h, 0, expected.total());
    EmulatedTable device(actual.entries, dtype_of<T>());
    device.table.lr = &lr;
    device.table.lr_is_double = std::is_same<Lr, double>::value ? 1 : 0;
    device.table.found_inf = &inf;
    const fusedoptim::cuda::DeviceSteps device_steps{scalars.data(), 1};
    EXPECT(fusedoptim::cuda::adam_steps_launch(device.table, on_host, device_steps, kLaunch) == nullptr, "steps");
    EXPECT(fusedoptim::cuda::adam_launch(device.table, on_host, kLaunch) == nullptr, "adam launch");
    bool steps_right = true;
    for (size_t k = 0; k < steps.size(); ++k) steps_right &= steps[k] == float(step_of(k) - (inf == 0.0f ? 0.0 : 1.0));
    EXPECT(steps_right, "cuda device steps %s: wrong step counts (found_inf %g)", dn, double(inf));
    const char* where = "";
    EXPECT((inf == 0.0f ? expected : before).same_bits(actual, false, &where),
           "cuda device steps %s (%s lr, found_inf %g) differ at %s", dn, sizeof(Lr) == 8 ? "double" : "float",
           double(inf), where);
  }
}

// Stochastic rounding (NOTE: [Precision options on CUDA]): the CPU's bits where the padded flat
// index is the CPU's (every size a multiple of kEntryAlignment), with the seed mixed with the
// device step counter.
template <typename T>
void check_stochastic_rounding(const char* dn) {
  const std::vector<int64_t> sizes = {8, 16, 4096, 16384, 16392, 24, 20000};
  math::SgdHyper h{};
  h.lr = 0.37;
  h.momentum = 0.9;
  const uint64_t seed = 0x0123456789ABCDEFull;
  const int64_t rounding_step = 3;
  for (bool specials : {false, true}) {
    TestBucket<T> expected(sizes, 71, kDefaultFills, specials), actual(sizes, 71, kDefaultFills, specials);
    BucketTable cpu_table = expected.table();
    cpu_table.stochastic_rounding = true;
    cpu_table.rounding_seed = seed ^ (uint64_t(rounding_step) * 0x9E3779B97F4A7C15ull);
    scalar_kernels().sgd(cpu_table, h, 0, expected.total());
    EmulatedTable device(actual.entries, dtype_of<T>());
    device.table.stochastic_rounding = 1;
    device.table.rounding_seed = seed;
    device.table.rounding_step = &rounding_step;
    EXPECT(fusedoptim::cuda::sgd_launch(device.table, h, kLaunch) == nullptr, "sgd launch");
    const char* where = "";
    EXPECT(expected.same_bits(actual, specials, &where), "cuda stochastic rounding %s%s differs at %s", dn,
           specials ? " (special values)" : "", where);
  }
}

// A bucket whose slots differ in storage (NOTE: [State dtypes], NOTE: [Master weights]): params
// and grads of P; states of S; with master weights, slot 0 an fp32 master and the P param in
// kParam16Slot.
template <typename P, typename S>
struct MixedBucket {
  bool master;
  std::vector<std::vector<float>> masters;
  std::vector<std::vector<P>> params, grads;
  std::vector<std::vector<S>> states[3];
  std::vector<TensorEntry> entries;
  std::vector<int64_t> prefix{0};

  MixedBucket(const std::vector<int64_t>& sizes, unsigned seed, bool with_master) : master(with_master) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal;
    for (int64_t n : sizes) {
      masters.emplace_back(n);
      params.emplace_back(n);
      grads.emplace_back(n);
      for (auto& s : states) s.emplace_back(n);
      for (int64_t i = 0; i < n; ++i) {
        masters.back()[i] = float(normal(rng));
        params.back()[i] = from_double<P>(masters.back()[i]);
        grads.back()[i] = from_double<P>(normal(rng));
        for (int k = 0; k < 3; ++k) states[k].back()[i] = from_double<S>(std::fabs(normal(rng)));
      }
      prefix.push_back(prefix.back() + n);
    }
    for (size_t t = 0; t < sizes.size(); ++t) {
      TensorEntry e{};
      e.numel = sizes[t];
      e.ptr[kParamSlot] = master ? static_cast<void*>(masters[t].data()) : static_cast<void*>(params[t].data());
      e.ptr[kGradSlot] = grads[t].data();
      for (int k = 0; k < 3; ++k) e.ptr[kFirstStateSlot + k] = states[k][t].data();
      if (master) e.ptr[kParam16Slot] = params[t].data();
      entries.push_back(e);
    }
  }
  BucketTable table() const {
    BucketTable t{entries.data(), prefix.data(), int64_t(entries.size()), prefix.back(), dtype_of<P>()};
    t.state_dtype = dtype_of<S>();
    t.master_weights = master;
    return t;
  }
  bool same_bits(const MixedBucket& other) const {
    bool same = true;
    for (size_t t = 0; t < entries.size(); ++t) {
      const size_t n = size_t(entries[t].numel);
      same &= std::memcmp(masters[t].data(), other.masters[t].data(), n * sizeof(float)) == 0;
      same &= std::memcmp(params[t].data(), other.params[t].data(), n * sizeof(P)) == 0;
      same &= std::memcmp(grads[t].data(), other.grads[t].data(), n * sizeof(P)) == 0;
      for (int k = 0; k < 3; ++k) same &= std::memcmp(states[k][t].data(), other.states[k][t].data(), n * sizeof(S)) == 0;
    }
    return same;
  }
};

template <typename P, typename S>
void check_mixed_storage(const char* what, bool master) {
  math::AdamHyper h = adamw_hyper();
  h.amsgrad = true;  // all three states
  MixedBucket<P, S> expected(kCudaSizes, 13, master), actual(kCudaSizes, 13, master), before(kCudaSizes, 13, master);
  for (MixedBucket<P, S>* b : {&expected, &actual})
    for (size_t k = 0; k < b->entries.size(); ++k) set_adam_coefs(b->entries[k], h, step_of(k));
  scalar_kernels().adam(expected.table(), h, 0, expected.prefix.back());
  EmulatedTable device(actual.entries, dtype_of<P>(), dtype_of<S>());
  device.table.master_weights = master ? 1 : 0;
  EXPECT(fusedoptim::cuda::adam_launch(device.table, h, kLaunch) == nullptr, "adam launch");
  EXPECT(!expected.same_bits(before), "cuda %s: the CPU step changed nothing", what);
  EXPECT(expected.same_bits(actual), "cuda %s differs from the CPU", what);
}

template <typename Hyper>
using CudaReduction = const char* (*)(const fusedoptim::cuda::DeviceTable&, const Hyper&,
                                      const fusedoptim::cuda::DeviceSegments&, const fusedoptim::cuda::Launch&);

// A reduction's per-segment sums: CUDA's within rounding of the CPU scalar ones (the order of
// the additions differs), and the states it stores bit-identical.
template <typename T, typename Hyper, typename Cpu>
void expect_reduction(const char* name, Cpu cpu_kernel, CudaReduction<Hyper> cuda_kernel, const Hyper& h, int num_sums,
                      const std::function<void(TensorEntry&, size_t)>& coefs, const char* dn) {
  TestBucket<T> expected(kCudaSizes, 23), actual(kCudaSizes, 23);
  for (TestBucket<T>* b : {&expected, &actual})
    if (coefs)
      for (size_t k = 0; k < b->entries.size(); ++k) coefs(b->entries[k], k);
  const std::vector<Segment> segments = make_segments(expected.entries, 1000);
  std::vector<double> cpu_sums(segments.size() * num_sums), cuda_sums(segments.size() * num_sums, -1.0);
  (scalar_kernels().*cpu_kernel)(expected.table(), h, segments.data(), 0, int64_t(segments.size()), cpu_sums.data());
  const EmulatedTable device(actual.entries, dtype_of<T>());
  const fusedoptim::cuda::DeviceSegments device_segments{segments.data(), int64_t(segments.size()), cuda_sums.data()};
  EXPECT(cuda_kernel(device.table, h, device_segments, kLaunch) == nullptr, "%s launch", name);
  const char* where = "";
  EXPECT(sums_close(cuda_sums, cpu_sums, sum_tolerance<T>(), &where), "cuda %s %s sums: %s", name, dn, where);
  EXPECT(expected.same_bits(actual, false, &where), "cuda %s %s states differ at %s", name, dn, where);
}

template <typename T>
void check_reductions(const char* dn) {
  const math::LambHyper h = lamb_variant(1);
  expect_reduction<T>("lamb_moments", &KernelTable::lamb_moments, fusedoptim::cuda::lamb_moments_launch, h, 2,
                      [&](TensorEntry& e, size_t k) { lamb_coefs(e, k, h, true); }, dn);
  expect_reduction<T>("grad_squares", &KernelTable::grad_squares, fusedoptim::cuda::grad_squares_launch,
                      math::GradSquaresHyper{}, 1, nullptr, dn);
}

// The grad norm's reduced value (before the 1/p power): CUDA's per-segment values folded on
// the device vs the CPU's folded in order; sums within rounding, the inf norm exact (NaN if
// any grad is NaN).
template <typename T>
void check_grad_norm(const char* dn) {
  for (bool specials : {false, true}) {
    for (double p : {1.0, 2.0, 3.0, double(INFINITY)}) {
      if (specials && p != INFINITY) continue;
      TestBucket<T> bucket(kCudaSizes, 29, kDefaultFills, specials);
      const math::GradNormHyper hyper = p == INFINITY ? math::GradNormHyper{math::NormKind::kInf, p}
                                        : p == 1.0    ? math::GradNormHyper{math::NormKind::kOne, p}
                                        : p == 2.0    ? math::GradNormHyper{math::NormKind::kTwo, p}
                                                      : math::GradNormHyper{math::NormKind::kPower, p};
      const std::vector<Segment> segments = make_segments(bucket.entries, 1000);
      std::vector<double> cpu_sums(segments.size()), cuda_sums(segments.size(), -1.0);
      scalar_kernels().grad_norm(bucket.table(), hyper, segments.data(), 0, int64_t(segments.size()), cpu_sums.data());
      double expected = 0.0;
      for (double s : cpu_sums) {
        expected = hyper.kind != math::NormKind::kInf ? expected + s
                   : std::isnan(expected) || std::isnan(s) ? NAN
                                                            : std::fmax(expected, s);
      }
      const EmulatedTable device(bucket.entries, dtype_of<T>());
      const fusedoptim::cuda::DeviceSegments device_segments{segments.data(), int64_t(segments.size()),
                                                             cuda_sums.data()};
      double total = -1.0;
      EXPECT(fusedoptim::cuda::grad_norm_launch(device.table, hyper, device_segments, &total, kLaunch) == nullptr,
             "grad norm launch");
      const auto same = [&](double actual, double reference) {
        return hyper.kind == math::NormKind::kInf ? (std::isnan(reference) ? std::isnan(actual) : actual == reference)
                                                  : std::fabs(actual - reference) <= 1e-12 * std::fabs(reference);
      };
      bool segments_right = true;
      for (size_t k = 0; k < segments.size(); ++k) segments_right &= same(cuda_sums[k], cpu_sums[k]);
      EXPECT(segments_right, "cuda grad norm %s p=%g%s: a segment's value differs from the CPU's", dn, p,
             specials ? " (special values)" : "");
      const bool right = same(total, expected);
      EXPECT(right, "cuda grad norm %s p=%g%s: %.17g vs CPU %.17g", dn, p, specials ? " (special values)" : "", total,
             expected);
    }
  }
}

template <typename T>
void check_all(const char* dn) {
  check_elementwise_rules<T>(CudaChecker{}, dn);
  check_uniform_coefs<T>(dn);
  check_clip_coef<T>(dn);
  check_grad_scaler<T>(dn);
  check_device_steps<T>(dn, 0.01f);
  check_device_steps<T>(dn, 0.01);
  check_reductions<T>(dn);
  check_grad_norm<T>(dn);
}

}  // namespace

int main() {
  check_all<float>("fp32");
  check_all<double>("fp64");
  check_all<bf16_t>("bf16");
  check_all<fp16_t>("fp16");
  check_stochastic_rounding<bf16_t>("bf16");
  check_stochastic_rounding<fp16_t>("fp16");
  check_mixed_storage<bf16_t, float>("bf16 master weights", true);
  check_mixed_storage<fp16_t, float>("fp16 master weights", true);
  check_mixed_storage<bf16_t, float>("bf16 params, fp32 states", false);
  check_mixed_storage<float, bf16_t>("fp32 params, bf16 states", false);
  std::printf("cuda kernels emulated: %d checks; %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
