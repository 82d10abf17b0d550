// C++ tests of the CPU kernels, without torch: every instruction set this CPU runs must give
// bit-identical results to the scalar path (fp32, fp64, bf16, fp16; every tail length; any
// split of the flat range), the half conversions must round-trip, and the fp64 Adam and SGD
// rules must agree with a plain double-precision transcription of torch.optim's formulas.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/kernels.h"

using namespace fusedoptim;
using namespace fusedoptim::cpu;

static int failures = 0;
#define EXPECT(cond, ...)                        \
  do {                                           \
    if (!(cond)) {                               \
      ++failures;                                \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                  \
      std::printf("\n");                         \
    }                                            \
  } while (0)

template <typename T> T from_double(double v);
template <> float from_double<float>(double v) { return float(v); }
template <> double from_double<double>(double v) { return v; }
template <> bf16_t from_double<bf16_t>(double v) { return to_bf16(float(v)); }
template <> fp16_t from_double<fp16_t>(double v) { return to_fp16(float(v)); }
template <typename T> DType dtype_of();
template <> DType dtype_of<float>() { return DType::kFloat32; }
template <> DType dtype_of<double>() { return DType::kFloat64; }
template <> DType dtype_of<bf16_t>() { return DType::kBFloat16; }
template <> DType dtype_of<fp16_t>() { return DType::kFloat16; }

// A bucket of tensors with the given lengths: param, grad and three states, random values.
template <typename T>
struct TestBucket {
  std::vector<std::vector<T>> slots[5];
  std::vector<TensorEntry> entries;
  std::vector<int64_t> prefix;

  TestBucket(const std::vector<int64_t>& sizes, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal;
    int64_t total = 0;
    for (int64_t n : sizes) {
      TensorEntry e{};
      for (int s = 0; s < 5; ++s) {
        std::vector<T> v(n);
        for (auto& x : v) x = from_double<T>(s >= 3 ? std::fabs(normal(rng)) : normal(rng));  // squares stay >= 0
        slots[s].push_back(std::move(v));
      }
      e.numel = n;
      e.coef[0] = -1e-2 / (1 - std::pow(0.9, 3));
      e.coef[1] = 1 / std::sqrt(1 - std::pow(0.999, 3));
      e.first_step = static_cast<int32_t>(n % 2);
      entries.push_back(e);
      prefix.push_back(total);
      total += n;
    }
    prefix.push_back(total);
    for (size_t i = 0; i < entries.size(); ++i)
      for (int s = 0; s < 5; ++s) entries[i].ptr[s] = slots[s][i].data();
  }
  BucketTable table() const {
    return {entries.data(), prefix.data(), int64_t(entries.size()), prefix.back(), dtype_of<T>()};
  }
  bool same_bits(const TestBucket& other) const {
    for (int s = 0; s < 5; ++s)
      for (size_t i = 0; i < slots[s].size(); ++i)
        if (std::memcmp(slots[s][i].data(), other.slots[s][i].data(), slots[s][i].size() * sizeof(T)) != 0) return false;
    return true;
  }
};

const std::vector<int64_t> kSizes = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 4097};

template <typename T>
void check_isa_identity(CpuCapability isa, const char* dtype_name) {
  const math::AdamHyper adam_variants[] = {
      {1e-2, 0.9, 0.999, 1e-8, 0.0, false, false, false, 1.0},
      {1e-2, 0.9, 0.999, 1e-8, 0.1, true, true, false, 1.0 - 1e-3},
      {1e-2, 0.3, 0.99, 1e-6, 0.1, true, false, true, 1.0 - 1e-3},  // 1 - beta1 >= 0.5: the other lerp branch
  };
  for (const auto& hyper : adam_variants) {
    TestBucket<T> expected(kSizes, 1), actual(kSizes, 1);
    kernels_for(CpuCapability::kScalar).adam(expected.table(), hyper, 0, expected.prefix.back());
    // Split the range at odd places to exercise partial tensors, as parallel_for does.
    const int64_t total = actual.prefix.back();
    const int64_t cuts[] = {0, 5, 37, total / 2 + 3, total};
    for (int c = 0; c + 1 < 5; ++c) kernels_for(isa).adam(actual.table(), hyper, cuts[c], cuts[c + 1]);
    EXPECT(expected.same_bits(actual), "adam %s %s differs from scalar", capability_name(isa), dtype_name);
  }
  const math::SgdHyper sgd_variants[] = {
      {1e-2, 0.0, 0.0, 0.0, false, false},
      {1e-2, 0.9, 0.1, 1e-2, false, true},
      {1e-2, 0.9, 0.0, 1e-2, true, false},
  };
  for (const auto& hyper : sgd_variants) {
    TestBucket<T> expected(kSizes, 2), actual(kSizes, 2);
    kernels_for(CpuCapability::kScalar).sgd(expected.table(), hyper, 0, expected.prefix.back());
    kernels_for(isa).sgd(actual.table(), hyper, 0, actual.prefix.back());
    EXPECT(expected.same_bits(actual), "sgd %s %s differs from scalar", capability_name(isa), dtype_name);
  }
}

void check_half_round_trips() {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float f16 = to_float(fp16_t{uint16_t(bits)});
    const float bf = to_float(bf16_t{uint16_t(bits)});
    if (f16 == f16) EXPECT(to_fp16(f16).bits == bits, "fp16 %04x round trip", bits);
    else EXPECT(std::isnan(to_float(to_fp16(f16))), "fp16 %04x NaN", bits);
    if (bf == bf) EXPECT(to_bf16(bf).bits == bits, "bf16 %04x round trip", bits);
    else EXPECT(std::isnan(to_float(to_bf16(bf))), "bf16 %04x NaN", bits);
  }
  // Ties round to even; overflow to infinity.
  EXPECT(to_bf16(1.0f + 0x1p-8f).bits == 0x3F80, "bf16 tie to even (down)");
  EXPECT(to_bf16(1.0f + 3 * 0x1p-8f).bits == 0x3F82, "bf16 tie to even (up)");
  EXPECT(to_fp16(1.0f + 0x1p-11f).bits == 0x3C00, "fp16 tie to even");
  EXPECT(to_fp16(70000.0f).bits == 0x7C00, "fp16 overflow");
}

void check_rules_against_double_reference() {
  TestBucket<double> bucket({1, 9, 100}, 3), before({1, 9, 100}, 3);
  const math::AdamHyper h{1e-3, 0.9, 0.999, 1e-8, 0.05, true, false, false, 1.0 - 1e-3 * 0.05};
  const double step = 3;
  for (auto& e : bucket.entries) {
    const auto coefs = math::AdamStepCoefs::at_step(h, step);
    e.coef[0] = coefs.neg_step_size;
    e.coef[1] = coefs.inv_bias_correction2_sqrt;
  }
  kernels_for(CpuCapability::kScalar).adam(bucket.table(), h, 0, bucket.prefix.back());
  for (size_t t = 0; t < bucket.entries.size(); ++t) {
    for (int64_t i = 0; i < bucket.entries[t].numel; ++i) {
      double p = before.slots[0][t][i], g = before.slots[1][t][i], m = before.slots[2][t][i],
             v = before.slots[3][t][i], vmax = before.slots[4][t][i];
      g += h.weight_decay * p;
      m = m + (1 - h.beta1) * (g - m);
      v = v * h.beta2 + (1 - h.beta2) * g * g;
      vmax = std::fmax(vmax, v);
      const double denom = std::sqrt(vmax) / std::sqrt(1 - std::pow(h.beta2, step)) + h.eps;
      p -= h.lr / (1 - std::pow(h.beta1, step)) * m / denom;
      EXPECT(std::fabs(p - bucket.slots[0][t][i]) <= 1e-12 * (1 + std::fabs(p)), "adam fp64 param");
      EXPECT(std::fabs(vmax - bucket.slots[4][t][i]) <= 1e-12 * (1 + vmax), "adam fp64 max_exp_avg_sq");
    }
  }
}

int main() {
  check_half_round_trips();
  check_rules_against_double_reference();
  int checked = 0;
  for (int c = 1; c < kNumCapabilities; ++c) {
    const auto isa = CpuCapability(c);
    if (!capability_compiled(isa) || !capability_supported(isa)) {
      std::printf("skip %s: not supported by this CPU\n", capability_name(isa));
      continue;
    }
    check_isa_identity<float>(isa, "fp32");
    check_isa_identity<double>(isa, "fp64");
    check_isa_identity<bf16_t>(isa, "bf16");
    check_isa_identity<fp16_t>(isa, "fp16");
    ++checked;
  }
  std::printf("%d instruction sets checked against scalar; %d failures\n", checked, failures);
  return failures == 0 ? 0 : 1;
}
