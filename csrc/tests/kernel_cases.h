// The cases the C++ kernel tests share (csrc/tests/test_cpu_kernels.cpp, which checks every
// instruction set against the scalar path, and csrc/tests/test_cuda_emulated.cpp, which checks
// the CUDA kernels run on the CPU against it): a bucket of random tensors, and for every
// elementwise rule its hyperparameter variants (each branch of each rule) with per-tensor
// coefficients as the host steps set them (csrc/cpu/<algo>_cpu.cpp). A check runs each case
// through its Checker's elementwise<T>(name, variant, dtype name, CPU kernel, hyper, slot
// fills, coefficients, input fix-up).
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

namespace fusedoptim {
namespace kernel_tests {

using namespace fusedoptim::cpu;

inline int failures = 0;
inline int checks = 0;
#define EXPECT(cond, ...)                              \
  do {                                                 \
    ++checks;                                          \
    if (!(cond)) {                                     \
      ++failures;                                      \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

template <typename T> T from_double(double v);
template <> inline float from_double<float>(double v) { return float(v); }
template <> inline double from_double<double>(double v) { return v; }
template <> inline bf16_t from_double<bf16_t>(double v) { return to_bf16(float(v)); }
template <> inline fp16_t from_double<fp16_t>(double v) { return to_fp16(float(v)); }
inline double as_double(float v) { return v; }
inline double as_double(double v) { return v; }
inline double as_double(bf16_t v) { return to_float(v); }
inline double as_double(fp16_t v) { return to_float(v); }
template <typename T> DType dtype_of();
template <> inline DType dtype_of<float>() { return DType::kFloat32; }
template <> inline DType dtype_of<double>() { return DType::kFloat64; }
template <> inline DType dtype_of<bf16_t>() { return DType::kBFloat16; }
template <> inline DType dtype_of<fp16_t>() { return DType::kFloat16; }

// How a slot's random values are drawn.
enum Fill : int {
  kSigned,        // N(0, 1)
  kNonNegative,   // |N(0, 1)|: squares, accumulators
  kStepSize,      // (0.5 + |N(0, 1)|) * 0.01: Rprop step sizes
  kSignedZeros,   // N(0, 1) with a quarter exact zeros: Rprop's prev, sign(0) cases
};
using SlotFills = std::array<Fill, kMaxSlots>;
// Slots: param, grad, then the rule's states in its order (bucket_table.h).
constexpr SlotFills kDefaultFills = {kSigned, kSigned, kSigned, kNonNegative, kNonNegative};

// A bucket of tensors with the given lengths: param, grad and three states, random values.
template <typename T>
struct TestBucket {
  std::vector<std::vector<T>> slots[kMaxSlots];
  std::vector<TensorEntry> entries;
  std::vector<int64_t> prefix;

  TestBucket(const std::vector<int64_t>& sizes, unsigned seed, const SlotFills& fills = kDefaultFills,
             bool specials = false) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal;
    std::uniform_int_distribution<int> quarter(0, 3);
    const double special_values[] = {INFINITY, -INFINITY, NAN, 0.0, -0.0};
    int64_t total = 0;
    for (int64_t n : sizes) {
      TensorEntry e{};
      for (int s = 0; s < kMaxSlots; ++s) {
        std::vector<T> v(n);
        for (auto& x : v) {
          double d = normal(rng);
          switch (fills[s]) {
            case kSigned: break;
            case kNonNegative: d = std::fabs(d); break;
            case kStepSize: d = (0.5 + std::fabs(d)) * 0.01; break;
            case kSignedZeros: if (quarter(rng) == 0) d = 0.0; break;
          }
          x = from_double<T>(d);
        }
        // special values at a few (vector-body and tail) positions of every slot, different
        // positions per slot (a NaN state, e.g. a loaded step size, reaches the clamps)
        if (specials) {
          for (int64_t i = 3 * s; i < n; i += 7 + s) v[i] = from_double<T>(special_values[(i + s) % 5]);
        }
        slots[s].push_back(std::move(v));
      }
      e.numel = n;
      e.first_step = static_cast<int32_t>(n % 2);
      entries.push_back(e);
      prefix.push_back(total);
      total += n;
    }
    prefix.push_back(total);
    for (size_t i = 0; i < entries.size(); ++i)
      for (int s = 0; s < kMaxSlots; ++s) entries[i].ptr[s] = slots[s][i].data();
  }
  // A copy whose entries point into its own slots, at the same offsets.
  TestBucket(const TestBucket& other) : entries(other.entries), prefix(other.prefix) {
    for (int s = 0; s < kMaxSlots; ++s) slots[s] = other.slots[s];
    for (size_t i = 0; i < entries.size(); ++i)
      for (int s = 0; s < kMaxSlots; ++s)
        entries[i].ptr[s] = slots[s][i].data() + (static_cast<const T*>(other.entries[i].ptr[s]) - other.slots[s][i].data());
  }
  TestBucket& operator=(const TestBucket&) = delete;

  BucketTable table() const {
    return {entries.data(), prefix.data(), int64_t(entries.size()), prefix.back(), dtype_of<T>()};
  }
  // Every odd tensor (of 2 elements or more) becomes a view from its second element on, so
  // its slots are no longer 16-byte aligned.
  void shift_odd_entries() {
    for (size_t i = 1; i < entries.size(); i += 2) {
      if (entries[i].numel < 2) continue;
      for (int s = 0; s < kMaxSlots; ++s) entries[i].ptr[s] = slots[s][i].data() + 1;
      entries[i].numel -= 1;
    }
    for (size_t i = 0; i < entries.size(); ++i) prefix[i + 1] = prefix[i] + entries[i].numel;
  }
  int64_t total() const { return prefix.back(); }
  double get(int s, size_t t, int64_t i) const { return as_double(slots[s][t][i]); }
  void set(int s, size_t t, int64_t i, double v) { slots[s][t][i] = from_double<T>(v); }
  // Bitwise equality of every slot; with nan_equal, any NaN matches any NaN.
  bool same_bits(const TestBucket& other, bool nan_equal = false, const char** where = nullptr) const {
    for (int s = 0; s < kMaxSlots; ++s)
      for (size_t t = 0; t < slots[s].size(); ++t)
        for (size_t i = 0; i < slots[s][t].size(); ++i) {
          if (std::memcmp(&slots[s][t][i], &other.slots[s][t][i], sizeof(T)) == 0) continue;
          if (nan_equal && std::isnan(get(s, t, i)) && std::isnan(other.get(s, t, i))) continue;
          static char buf[128];
          std::snprintf(buf, sizeof buf, "slot %d tensor %zu (numel %zu) index %zu: %.17g vs %.17g", s, t,
                        slots[s][t].size(), i, get(s, t, i), other.get(s, t, i));
          if (where) *where = buf;
          return false;
        }
    return true;
  }
};

inline const std::vector<int64_t> kSizes = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 4097};

// Per-tensor coefficients (TensorEntry::coef) and input fix-ups of one kernel's check.
template <typename T> using CoefFn = std::function<void(TensorEntry&, size_t)>;
template <typename T> using FixFn = std::function<void(TestBucket<T>&)>;

template <typename Hyper>
using ElementwiseMember = void (*KernelTable::*)(const BucketTable&, const Hyper&, int64_t, int64_t);
// ----------------------------------------------------------------------------- elementwise

// Per-tensor step counts: the entries of a bucket may be at different steps (params that got
// their first grad later), so the coefficients differ per entry.
inline double step_of(size_t k) { return double(1 + (k * 5) % 11); }

template <typename T, typename Checker>
void check_sgd(const Checker& check, const char* dn) {
  const double variants[][4] = {{0.0, 0.0, 0.0, 0}, {0.9, 0.1, 1e-2, 1}, {0.9, 0.0, 1e-2, 2}, {0.5, 0.3, 0.0, 3}};
  for (const auto& v : variants) {
    math::SgdHyper h{};
    h.lr = 1e-2;
    h.momentum = v[0];
    h.dampening = v[1];
    h.weight_decay = v[2];
    h.nesterov = v[3] == 2;
    h.maximize = v[3] == 1 || v[3] == 3;
    check.template elementwise<T>("sgd", int(v[3]), dn, &KernelTable::sgd, h, kDefaultFills);
  }
}

template <typename T, typename Checker>
void check_adam(const Checker& check, const char* dn) {
  for (int v = 0; v < 4; ++v) {
    math::AdamHyper h{};
    h.lr = 1e-2;
    h.beta1 = v == 2 ? 0.3 : 0.9;  // 1 - beta1 >= 0.5: the other lerp branch
    h.beta2 = 0.999;
    h.eps = v == 3 ? 1e-3 : 1e-8;
    h.weight_decay = v == 0 ? 0.0 : 0.1;
    h.amsgrad = v == 1 || v == 3;
    h.maximize = v == 1;
    h.decoupled_weight_decay = v >= 2;
    h.decay_factor = 1.0 - h.lr * h.weight_decay;
    check.template elementwise<T>("adam", v, dn, &KernelTable::adam, h, kDefaultFills, [&](TensorEntry& e, size_t k) {
      const auto c = math::AdamStepCoefs::at_step(h, step_of(k));
      e.coef[0] = c.neg_step_size;
      e.coef[1] = c.inv_bias_correction2_sqrt;
    });
  }
}

template <typename T, typename Checker>
void check_adadelta(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::AdadeltaHyper h{};
    h.lr = v == 2 ? 0.5 : 1.0;
    h.rho = v == 1 ? 0.5 : 0.9;
    h.eps = 1e-6;
    h.weight_decay = v == 1 ? 0.1 : 0.0;
    h.maximize = v == 2;
    check.template elementwise<T>("adadelta", v, dn, &KernelTable::adadelta, h,
                           {kSigned, kSigned, kNonNegative, kNonNegative, kSigned});
  }
}

template <typename T, typename Checker>
void check_adagrad(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::AdagradHyper h{};
    h.lr = 0.1;
    h.lr_decay = v == 1 ? 0.05 : 0.0;
    h.weight_decay = v == 1 ? 0.1 : 0.0;
    h.eps = v == 2 ? 1e-3 : 1e-10;
    h.maximize = v == 2;
    check.template elementwise<T>("adagrad", v, dn, &KernelTable::adagrad, h,
                           {kSigned, kSigned, kNonNegative, kSigned, kSigned}, [&](TensorEntry& e, size_t k) {
                             e.coef[0] = -h.lr / (1.0 + (step_of(k) - 1.0) * h.lr_decay);
                           });
  }
}

template <typename T, typename Checker>
void check_adamax(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::AdamaxHyper h{};
    h.lr = 2e-3;
    h.beta1 = v == 2 ? 0.3 : 0.9;
    h.beta2 = 0.999;
    h.eps = 1e-8;
    h.weight_decay = v == 1 ? 0.1 : 0.0;
    h.maximize = v >= 1;
    check.template elementwise<T>("adamax", v, dn, &KernelTable::adamax, h,
                           {kSigned, kSigned, kSigned, kNonNegative, kSigned}, [&](TensorEntry& e, size_t k) {
                             e.coef[0] = -h.lr / (1.0 - std::pow(h.beta1, step_of(k)));
                           });
  }
}

template <typename T, typename Checker>
void check_asgd(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::AsgdHyper h{};
    h.lr = 0.05;
    h.lambd = v == 1 ? 0.1 : 1e-4;
    h.alpha = 0.75;
    h.t0 = v == 2 ? 1e6 : 2.0;
    h.weight_decay = v == 1 ? 0.1 : 0.0;
    h.maximize = v == 2;
    check.template elementwise<T>("asgd", v, dn, &KernelTable::asgd, h, kDefaultFills, [&](TensorEntry& e, size_t k) {
      const double step = step_of(k);
      const double eta = h.lr / std::pow(1.0 + h.lambd * h.lr * (step - 1.0), h.alpha);
      const double mu = 1.0 / std::fmax(1.0, step - 1.0 - h.t0);
      e.coef[0] = 1.0 - h.lambd * eta;
      e.coef[1] = -eta;
      e.coef[2] = mu;
      e.coef[3] = mu != 1.0 ? 1.0 : 0.0;  // both branches within one table (v != 2)
    });
  }
}

template <typename T, typename Checker>
void check_nadam(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::NadamHyper h{};
    h.lr = 2e-3;
    h.beta1 = v == 2 ? 0.3 : 0.9;
    h.beta2 = 0.999;
    h.eps = 1e-8;
    h.weight_decay = v == 0 ? 0.0 : 0.1;
    h.momentum_decay = 4e-3;
    h.decoupled_weight_decay = v == 2;
    h.maximize = v == 1;
    h.decay_factor = 1.0 - h.lr * h.weight_decay;
    check.template elementwise<T>("nadam", v, dn, &KernelTable::nadam, h, kDefaultFills, [&](TensorEntry& e, size_t k) {
      const double step = step_of(k);
      auto mu_at = [&](double t) { return h.beta1 * (1.0 - 0.5 * std::pow(0.96, t * h.momentum_decay)); };
      double product = 1.0;
      for (double t = 1; t <= step; ++t) product *= mu_at(t);
      e.coef[0] = 1.0 - std::pow(h.beta2, step);
      e.coef[1] = -h.lr * (1.0 - mu_at(step)) / (1.0 - product);
      e.coef[2] = (-h.lr * mu_at(step + 1)) / (1.0 - product * mu_at(step + 1));
    });
  }
}

template <typename T, typename Checker>
void check_radam(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::RadamHyper h{};
    h.lr = 1e-3;
    h.beta1 = v == 2 ? 0.3 : 0.9;
    h.beta2 = 0.9;  // rho_t <= 5 for steps 1-6, > 5 later: both branches in one table
    h.eps = 1e-8;
    h.weight_decay = v == 0 ? 0.0 : 0.1;
    h.decoupled_weight_decay = v == 1;
    h.maximize = v == 2;
    h.decay_factor = 1.0 - h.lr * h.weight_decay;
    check.template elementwise<T>("radam", v, dn, &KernelTable::radam, h, kDefaultFills, [&](TensorEntry& e, size_t k) {
      const auto c = math::RadamStepCoefs::at_step(h, step_of(k));
      e.coef[0] = c.bias_correction1;
      e.coef[1] = c.bias_correction2_sqrt;
      e.coef[2] = c.rect;
      e.coef[3] = c.rectified ? 1.0 : 0.0;
    });
  }
}

template <typename T, typename Checker>
void check_rmsprop(const Checker& check, const char* dn) {
  const int variants[][3] = {{0, 0, 0}, {1, 0, 1}, {0, 1, 0}, {1, 1, 1}, {1, 1, 2}};  // momentum, centered, misc
  int v = 0;
  for (const auto& var : variants) {
    math::RmspropHyper h{};
    h.lr = 1e-2;
    h.alpha = var[2] == 2 ? 0.3 : 0.99;  // 1 - alpha >= 0.5: the other lerp branch
    h.eps = 1e-8;
    h.weight_decay = var[2] == 1 ? 0.1 : 0.0;
    h.momentum = var[0] ? 0.9 : 0.0;
    h.centered = var[1] != 0;
    h.maximize = var[2] == 1;
    // states: square_avg, then momentum_buffer (momentum > 0), then grad_avg (centered)
    const int grad_avg_slot = kFirstStateSlot + (var[0] ? 2 : 1);
    check.template elementwise<T>("rmsprop", v++, dn, &KernelTable::rmsprop, h,
                           {kSigned, kSigned, kNonNegative, kSigned, kSigned}, nullptr,
                           [&](TestBucket<T>& b) {  // square_avg >= grad_avg^2: a real variance
                             if (!h.centered) return;
                             for (size_t t = 0; t < b.entries.size(); ++t)
                               for (int64_t i = 0; i < b.entries[t].numel; ++i) {
                                 const double g = b.get(grad_avg_slot, t, i);
                                 b.set(kFirstStateSlot, t, i, g * g + b.get(kFirstStateSlot, t, i));
                               }
                           });
  }
}

template <typename T, typename Checker>
void check_rprop(const Checker& check, const char* dn) {
  const double variants[][4] = {{0.5, 1.2, 1e-6, 50}, {0.3, 1.5, 0.008, 0.012}, {0.1, 3.0, 1e-3, 0.1}};
  int v = 0;
  for (const auto& var : variants) {
    math::RpropHyper h{};
    h.etaminus = var[0];
    h.etaplus = var[1];
    h.step_size_min = var[2];  // variant 1: both clamps hit (step sizes ~0.005-0.02)
    h.step_size_max = var[3];
    h.maximize = v == 2;
    check.template elementwise<T>("rprop", v++, dn, &KernelTable::rprop, h,
                           {kSigned, kSignedZeros, kSignedZeros, kStepSize, kSigned});
  }
}

template <typename T, typename Checker>
void check_lion(const Checker& check, const char* dn) {
  for (int v = 0; v < 3; ++v) {
    math::LionHyper h{};
    h.lr = 1e-3;
    h.beta1 = v == 2 ? 0.0 : 0.9;
    h.beta2 = v == 2 ? 1.0 : 0.99;
    h.weight_decay = v == 1 ? 0.1 : 0.0;
    h.maximize = v == 1;
    check.template elementwise<T>("lion", v, dn, &KernelTable::lion, h,
                           {kSigned, kSignedZeros, kSignedZeros, kSigned, kSigned});
  }
}

inline math::LambHyper lamb_variant(int v) {
  math::LambHyper h{};
  h.beta1 = v == 3 ? 0.5 : 0.9;
  h.beta2 = 0.999;
  h.eps = 1e-6;
  h.weight_decay = v == 0 ? 0.0 : 0.01;
  h.grad_averaging = v != 2;
  h.decoupled_weight_decay = v != 1;
  h.maximize = v == 2;
  h.clip = v == 3 ? 2.5 : 1.0;
  return h;
}

inline void lamb_coefs(TensorEntry& e, size_t k, const math::LambHyper& h, bool bias_correction) {
  const double step = step_of(k);
  e.coef[0] = bias_correction ? 1.0 - std::pow(h.beta1, step) : 1.0;
  e.coef[1] = bias_correction ? 1.0 - std::pow(h.beta2, step) : 1.0;
  e.coef[2] = -1e-3 * (0.5 + 0.1 * double(k));  // -lr * trust ratio, per tensor
}

template <typename T, typename Checker>
void check_lamb_apply(const Checker& check, const char* dn) {
  for (int v = 0; v < 4; ++v) {
    const math::LambHyper h = lamb_variant(v);
    check.template elementwise<T>("lamb_apply", v, dn, &KernelTable::lamb_apply, h, kDefaultFills,
                           [&](TensorEntry& e, size_t k) { lamb_coefs(e, k, h, v != 2); });
  }
}

// Every elementwise rule of the KernelTable (FO_ELEMENTWISE_RULES): a rule added there without
// a check_<name> here is a compile error.
template <typename T, typename Checker>
void check_elementwise_rules(const Checker& check, const char* dtype_name) {
#define FO_CHECK_RULE(name, Rule, Hyper) check_##name<T>(check, dtype_name);
  FO_ELEMENTWISE_RULES(FO_CHECK_RULE)
#undef FO_CHECK_RULE
}

// ----------------------------------------------------------------------------- reductions

// Segments of at most max_numel elements per entry (as Bucket::segments builds them).
inline std::vector<Segment> make_segments(const std::vector<TensorEntry>& entries, int64_t max_numel) {
  std::vector<Segment> segments;
  for (size_t e = 0; e < entries.size(); ++e)
    for (int64_t begin = 0; begin < entries[e].numel; begin += max_numel)
      segments.push_back(Segment{int64_t(e), begin, std::min(begin + max_numel, entries[e].numel)});
  return segments;
}
// |actual - expected| <= tol * (|expected| + 1e-30) for every sum.
inline bool sums_close(const std::vector<double>& actual, const std::vector<double>& expected, double tol,
                const char** where) {
  static char buf[160];
  if (actual.size() != expected.size()) return false;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!(std::fabs(actual[i] - expected[i]) <= tol * (std::fabs(expected[i]) + 1e-30))) {
      std::snprintf(buf, sizeof buf, "sum %zu: %.17g vs reference %.17g", i, actual[i], expected[i]);
      *where = buf;
      return false;
    }
  }
  return true;
}

template <typename T>
double sum_tolerance() {
  return std::is_same<T, double>::value ? 1e-12 : 2e-5;  // math in double / in float
}

}  // namespace kernel_tests
}  // namespace fusedoptim
