// C++ tests of the CPU kernels, without torch:
//  * every elementwise kernel of the KernelTable (FO_ELEMENTWISE_RULES) on every instruction
//    set this CPU runs gives bit-identical results to the scalar path, for fp32, fp64, bf16 and
//    fp16, every tail length, any split of the flat range, several hyperparameter variants
//    (each branch of each rule) and per-tensor coefficients as the host steps set them
//    (csrc/cpu/<algo>_cpu.cpp); with special values (inf, NaN, signed zeros) too, where any
//    NaN equals any NaN;
//  * the reduction kernels (FO_REDUCTION_RULES: LAMB's moments pass and the squared-grad sum)
//    cannot be bit-identical across instruction sets (lanes sum in another order): their
//    per-segment sums must agree with a double-precision reference within rounding, and the
//    states they update must still be bit-identical;
//  * stochastic rounding (bf16, fp16) is bit-identical too, at flat indices past 2^32;
//  * the grad norm's segments reduced side by side give the bits of each reduced alone;
//  * the half conversions round-trip;
//  * the fp64 Adam, Rprop, ASGD and RAdam rules agree with a plain double-precision
//    transcription of torch.optim's formulas.
// A kernel added to the X-macros without a check here is a compile error (check_<name>).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernel_cases.h"

using namespace fusedoptim;
using namespace fusedoptim::cpu;
using namespace fusedoptim::kernel_tests;

// The scalar kernel over the whole range vs `isa`'s over a range split at odd places (as
// parallel_for splits it): bit-identical params and states.  Then the same with special values.
struct IsaChecker {
  CpuCapability isa;

  template <typename T, typename Hyper>
  void elementwise(const char* name, int variant, const char* dtype_name, ElementwiseMember<Hyper> kernel,
                   const Hyper& hyper, const SlotFills& fills, const CoefFn<T>& coefs = nullptr,
                   const FixFn<T>& fix = nullptr) const {
    for (bool specials : {false, true}) {
      const unsigned seed = 17u + 31u * unsigned(variant);
      TestBucket<T> expected(kSizes, seed, fills, specials), actual(kSizes, seed, fills, specials);
      for (TestBucket<T>* b : {&expected, &actual}) {
        if (fix) fix(*b);
        if (coefs)
          for (size_t k = 0; k < b->entries.size(); ++k) coefs(b->entries[k], k);
      }
      EXPECT(expected.same_bits(actual), "%s: test inputs differ", name);
      (kernels_for(CpuCapability::kScalar).*kernel)(expected.table(), hyper, 0, expected.total());
      const int64_t total = actual.total();
      const int64_t cuts[] = {0, 5, 37, total / 2 + 3, total};
      for (int c = 0; c + 1 < 5; ++c) (kernels_for(isa).*kernel)(actual.table(), hyper, cuts[c], cuts[c + 1]);
      const char* where = "";
      EXPECT(expected.same_bits(actual, specials, &where), "%s variant %d%s: %s %s differs from scalar at %s", name,
             variant, specials ? " (special values)" : "", capability_name(isa), dtype_name, where);
    }
  }
};

template <typename Hyper>
using ReductionMember = void (*KernelTable::*)(const BucketTable&, const Hyper&, const Segment*, int64_t, int64_t,
                                               double*);

// Runs a reduction over all segments split into two calls [0, m) and [m, n), as parallel_for
// may split them.
template <typename T, typename Hyper>
std::vector<double> run_reduction(CpuCapability isa, ReductionMember<Hyper> kernel, TestBucket<T>& b, const Hyper& h,
                                  const std::vector<Segment>& segments, int num_sums) {
  std::vector<double> out(segments.size() * num_sums, -1.0);
  const int64_t n = int64_t(segments.size());
  const int64_t m = n / 3;
  (kernels_for(isa).*kernel)(b.table(), h, segments.data(), 0, m, out.data());
  (kernels_for(isa).*kernel)(b.table(), h, segments.data(), m, n, out.data());
  return out;
}
template <typename T>
void check_lamb_moments(CpuCapability isa, const char* dn) {
  for (int v = 0; v < 4; ++v) {
    const math::LambHyper h = lamb_variant(v);
    const bool bias_correction = v != 2;
    TestBucket<T> ref_in(kSizes, 41u + v), scalar(kSizes, 41u + v), simd(kSizes, 41u + v);
    for (TestBucket<T>* b : {&ref_in, &scalar, &simd})
      for (size_t k = 0; k < b->entries.size(); ++k) lamb_coefs(b->entries[k], k, h, bias_correction);
    const std::vector<Segment> segments = make_segments(scalar.entries, 1000);  // 4097: 5 pieces
    const auto out_scalar = run_reduction(CpuCapability::kScalar, &KernelTable::lamb_moments, scalar, h, segments, 2);
    const auto out_simd = run_reduction(isa, &KernelTable::lamb_moments, simd, h, segments, 2);
    // double-precision reference of math/lamb.h's moments pass, from the same inputs
    std::vector<double> expected(segments.size() * 2, 0.0);
    for (size_t s = 0; s < segments.size(); ++s) {
      const size_t t = size_t(segments[s].entry);
      const TensorEntry& e = ref_in.entries[t];
      for (int64_t i = segments[s].begin; i < segments[s].end; ++i) {
        const double p = ref_in.get(0, t, i);
        double g = ref_in.get(1, t, i);
        double m = ref_in.get(2, t, i), vv = ref_in.get(3, t, i);
        if (h.maximize) g = -g;
        g = g / h.clip;
        if (!h.decoupled_weight_decay && h.weight_decay != 0) g = g + h.weight_decay * p;
        m = m * h.beta1 + (h.grad_averaging ? 1.0 - h.beta1 : 1.0) * g;
        vv = vv * h.beta2 + (1.0 - h.beta2) * g * g;
        // The sums are of the update made from the moments as stored (rounded to T), which is
        // what the apply pass recomputes; fp32/fp64 storage keeps them to within rounding.
        if (sizeof(T) == 2) {
          m = scalar.get(2, t, i);
          vv = scalar.get(3, t, i);
        }
        double u = (m / e.coef[0]) / (std::sqrt(vv / e.coef[1]) + h.eps);
        if (h.decoupled_weight_decay && h.weight_decay != 0) u = u + h.weight_decay * p;
        expected[2 * s] += p * p;
        expected[2 * s + 1] += u * u;
      }
    }
    const char* where = "";
    EXPECT(sums_close(out_scalar, expected, sum_tolerance<T>(), &where), "lamb_moments variant %d scalar %s: %s", v,
           dn, where);
    EXPECT(sums_close(out_simd, expected, sum_tolerance<T>(), &where), "lamb_moments variant %d %s %s: %s", v,
           capability_name(isa), dn, where);
    // the moments it stores are elementwise: bit-identical; the param is not written
    EXPECT(scalar.same_bits(simd, false, &where), "lamb_moments variant %d %s %s states differ at %s", v,
           capability_name(isa), dn, where);
    bool param_untouched = true;
    for (size_t t = 0; t < scalar.entries.size(); ++t)
      param_untouched &= std::memcmp(scalar.slots[0][t].data(), ref_in.slots[0][t].data(),
                                     scalar.slots[0][t].size() * sizeof(T)) == 0;
    EXPECT(param_untouched, "lamb_moments %s wrote the param", dn);
  }
}

template <typename T>
void check_grad_squares(CpuCapability isa, const char* dn) {
  TestBucket<T> scalar(kSizes, 43), simd(kSizes, 43);
  const TestBucket<T> before(kSizes, 43);
  for (int64_t max_numel : {int64_t(7), int64_t(1000), int64_t(32768)}) {
    const std::vector<Segment> segments = make_segments(scalar.entries, max_numel);
    const math::GradSquaresHyper h{};
    const auto out_scalar = run_reduction(CpuCapability::kScalar, &KernelTable::grad_squares, scalar, h, segments, 1);
    const auto out_simd = run_reduction(isa, &KernelTable::grad_squares, simd, h, segments, 1);
    std::vector<double> expected(segments.size(), 0.0);
    for (size_t s = 0; s < segments.size(); ++s)
      for (int64_t i = segments[s].begin; i < segments[s].end; ++i) {
        const double g = before.get(1, size_t(segments[s].entry), i);
        expected[s] += g * g;
      }
    const char* where = "";
    EXPECT(sums_close(out_scalar, expected, sum_tolerance<T>(), &where), "grad_squares scalar %s: %s", dn, where);
    EXPECT(sums_close(out_simd, expected, sum_tolerance<T>(), &where), "grad_squares %s %s: %s",
           capability_name(isa), dn, where);
  }
  const char* where = "";
  EXPECT(before.same_bits(scalar, false, &where) && before.same_bits(simd, false, &where),
         "grad_squares %s modified its inputs at %s", dn, where);
}

// The grad norm's reduction (NOTE: [Interleaved norm streams]): run over ranges of segments,
// where each thread reduces up to four side by side, every segment's value has the bits of
// that segment reduced alone, for every norm kind, with special values too.
template <typename T>
void check_grad_norm(CpuCapability isa, const char* dn) {
  const math::GradNormHyper hypers[] = {{math::NormKind::kOne, 1.0}, {math::NormKind::kTwo, 2.0},
                                        {math::NormKind::kInf, INFINITY}, {math::NormKind::kPower, 3.0}};
  for (bool specials : {false, true}) {
    const TestBucket<T> bucket(kSizes, 47, kDefaultFills, specials);
    for (int64_t max_numel : {int64_t(7), int64_t(1000), int64_t(32768)}) {
      const std::vector<Segment> segments = make_segments(bucket.entries, max_numel);
      const int64_t n = int64_t(segments.size());
      for (const math::GradNormHyper& h : hypers) {
        std::vector<double> alone(n, -1.0), together(n, -2.0);
        for (int64_t s = 0; s < n; ++s) kernels_for(isa).grad_norm(bucket.table(), h, segments.data(), s, s + 1, alone.data());
        kernels_for(isa).grad_norm(bucket.table(), h, segments.data(), 0, n / 3, together.data());
        kernels_for(isa).grad_norm(bucket.table(), h, segments.data(), n / 3, n, together.data());
        EXPECT(std::memcmp(alone.data(), together.data(), n * sizeof(double)) == 0,
               "grad norm %s %s (kind %d, segments of %lld%s): interleaved segments differ from alone",
               capability_name(isa), dn, int(h.kind), static_cast<long long>(max_numel),
               specials ? ", special values" : "");
      }
    }
  }
}

// Every kernel of the KernelTable, for one dtype.
template <typename T>
void check_all_kernels(CpuCapability isa, const char* dtype_name) {
  check_elementwise_rules<T>(IsaChecker{isa}, dtype_name);
#define FO_CHECK_KERNEL(name, Rule, Hyper) check_##name<T>(isa, dtype_name);
  FO_REDUCTION_RULES(FO_CHECK_KERNEL)
#undef FO_CHECK_KERNEL
}

// stochastic_rounding=True (NOTE: [Stochastic rounding]): the SIMD hash and rounding give the
// scalar bits, with the flat index space starting at 0 and just below 2^32 and 5 * 2^32 (where
// the low halves of a vector's indices wrap and carry into the high half), values of every
// magnitude.
template <typename T>
void check_stochastic_rounding(CpuCapability isa, const char* dn) {
  math::SgdHyper h{};
  h.lr = 0.37;
  h.momentum = 0.9;
  const auto spread_magnitudes = [](TestBucket<T>& b) {
    for (size_t t = 0; t < b.entries.size(); ++t)
      for (int64_t i = 0; i < b.entries[t].numel; ++i)
        for (int s : {kParamSlot, kGradSlot}) b.set(s, t, i, std::ldexp(b.get(s, t, i), int((i * 7 + s) % 44) - 27));
  };
  for (int64_t offset : {int64_t(0), (int64_t(1) << 32) - 301, (int64_t(5) << 32) - 1000}) {
    for (bool specials : {false, true}) {
      TestBucket<T> expected(kSizes, 71, kDefaultFills, specials), actual(kSizes, 71, kDefaultFills, specials);
      for (TestBucket<T>* b : {&expected, &actual}) {
        spread_magnitudes(*b);
        for (int64_t& start : b->prefix) start += offset;
      }
      BucketTable scalar_table = expected.table(), isa_table = actual.table();
      for (BucketTable* t : {&scalar_table, &isa_table}) {
        t->stochastic_rounding = true;
        t->rounding_seed = 0x0123456789ABCDEFull + uint64_t(offset);
      }
      const int64_t begin = offset, end = expected.prefix.back();
      kernels_for(CpuCapability::kScalar).sgd(scalar_table, h, begin, end);
      const int64_t cuts[] = {begin, begin + 5, begin + 37, (begin + end) / 2 + 3, end};
      for (int c = 0; c + 1 < 5; ++c) kernels_for(isa).sgd(isa_table, h, cuts[c], cuts[c + 1]);
      const char* where = "";
      EXPECT(expected.same_bits(actual, specials, &where), "stochastic sgd %s %s, flat offset %lld%s: %s",
             capability_name(isa), dn, static_cast<long long>(offset), specials ? " (special values)" : "", where);
    }
  }
}

// ----------------------------------------------------------------------------- misc

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

bool near(double a, double b) { return std::fabs(a - b) <= 1e-12 * (1 + std::fabs(b)); }

void check_rules_against_double_reference() {
  {  // Adam (coupled weight decay, amsgrad)
    TestBucket<double> bucket({1, 9, 100}, 3), before({1, 9, 100}, 3);
    math::AdamHyper h{};
    h.lr = 1e-3;
    h.beta1 = 0.9;
    h.beta2 = 0.999;
    h.eps = 1e-8;
    h.weight_decay = 0.05;
    h.amsgrad = true;
    h.decay_factor = 1.0 - 1e-3 * 0.05;
    const double step = 3;
    for (auto& e : bucket.entries) {
      const auto coefs = math::AdamStepCoefs::at_step(h, step);
      e.coef[0] = coefs.neg_step_size;
      e.coef[1] = coefs.inv_bias_correction2_sqrt;
    }
    kernels_for(CpuCapability::kScalar).adam(bucket.table(), h, 0, bucket.total());
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
        EXPECT(near(p, bucket.slots[0][t][i]), "adam fp64 param");
        EXPECT(near(vmax, bucket.slots[4][t][i]), "adam fp64 max_exp_avg_sq");
      }
    }
  }
  {  // Rprop: sign agreement, the clamps, the zeroed grad after a sign change
    const SlotFills fills = {kSigned, kSignedZeros, kSignedZeros, kStepSize, kSigned};
    TestBucket<double> bucket({1, 9, 100}, 4, fills), before({1, 9, 100}, 4, fills);
    math::RpropHyper h{};
    h.etaminus = 0.3;
    h.etaplus = 1.5;
    h.step_size_min = 0.008;
    h.step_size_max = 0.012;
    kernels_for(CpuCapability::kScalar).rprop(bucket.table(), h, 0, bucket.total());
    int hit_min = 0, hit_max = 0, zeros = 0;
    for (size_t t = 0; t < bucket.entries.size(); ++t) {
      for (int64_t i = 0; i < bucket.entries[t].numel; ++i) {
        double p = before.slots[0][t][i], g = before.slots[1][t][i], prev = before.slots[2][t][i],
               ss = before.slots[3][t][i];
        const double s = g * prev;
        const double factor = s > 0 ? h.etaplus : (s < 0 ? h.etaminus : 1.0);
        ss = std::fmin(std::fmax(ss * factor, h.step_size_min), h.step_size_max);
        hit_min += ss == h.step_size_min;
        hit_max += ss == h.step_size_max;
        if (s < 0) g = 0;
        zeros += g == 0;
        p -= (g > 0 ? 1.0 : (g < 0 ? -1.0 : 0.0)) * ss;
        EXPECT(near(p, bucket.slots[0][t][i]), "rprop fp64 param");
        EXPECT(near(ss, bucket.slots[3][t][i]), "rprop fp64 step_size");
        EXPECT(g == bucket.slots[2][t][i], "rprop fp64 prev");
      }
    }
    EXPECT(hit_min > 0 && hit_max > 0 && zeros > 0, "rprop reference: clamps/zeros not exercised");
  }
  {  // ASGD: decay, step, average (mu != 1) / copy (mu == 1)
    TestBucket<double> bucket({1, 9, 100}, 5), before({1, 9, 100}, 5);
    math::AsgdHyper h{};
    h.lr = 0.05;
    h.lambd = 0.1;
    h.alpha = 0.75;
    h.t0 = 1;
    h.weight_decay = 0.1;
    const double eta = 0.04, mus[] = {1.0, 0.5, 0.25};
    for (size_t k = 0; k < bucket.entries.size(); ++k) {
      auto& e = bucket.entries[k];
      e.coef[0] = 1.0 - h.lambd * eta;
      e.coef[1] = -eta;
      e.coef[2] = mus[k];
      e.coef[3] = mus[k] != 1.0 ? 1.0 : 0.0;
    }
    kernels_for(CpuCapability::kScalar).asgd(bucket.table(), h, 0, bucket.total());
    for (size_t t = 0; t < bucket.entries.size(); ++t) {
      for (int64_t i = 0; i < bucket.entries[t].numel; ++i) {
        double p = before.slots[0][t][i], g = before.slots[1][t][i], ax = before.slots[2][t][i];
        g += h.weight_decay * p;
        p *= 1.0 - h.lambd * eta;
        p -= eta * g;
        ax = mus[t] != 1.0 ? ax + (p - ax) * mus[t] : p;
        EXPECT(near(p, bucket.slots[0][t][i]), "asgd fp64 param");
        EXPECT(near(ax, bucket.slots[2][t][i]), "asgd fp64 ax");
      }
    }
  }
  {  // RAdam: unrectified (step 2) and rectified (step 9) entries, beta2 = 0.9
    TestBucket<double> bucket({9, 100}, 6), before({9, 100}, 6);
    math::RadamHyper h{};
    h.lr = 1e-2;
    h.beta1 = 0.9;
    h.beta2 = 0.9;
    h.eps = 1e-8;
    const double steps[] = {2, 9};
    for (size_t k = 0; k < 2; ++k) {
      const auto c = math::RadamStepCoefs::at_step(h, steps[k]);
      auto& e = bucket.entries[k];
      e.coef[0] = c.bias_correction1;
      e.coef[1] = c.bias_correction2_sqrt;
      e.coef[2] = c.rect;
      e.coef[3] = c.rectified ? 1.0 : 0.0;
    }
    EXPECT(bucket.entries[0].coef[3] == 0.0 && bucket.entries[1].coef[3] == 1.0, "radam: rho_t branches");
    kernels_for(CpuCapability::kScalar).radam(bucket.table(), h, 0, bucket.total());
    for (size_t t = 0; t < 2; ++t) {
      const double step = steps[t];
      const double rho_inf = 2 / (1 - h.beta2) - 1;
      const double bc2 = 1 - std::pow(h.beta2, step);
      const double rho_t = rho_inf - 2 * step * std::pow(h.beta2, step) / bc2;
      for (int64_t i = 0; i < bucket.entries[t].numel; ++i) {
        double p = before.slots[0][t][i], g = before.slots[1][t][i], m = before.slots[2][t][i],
               v = before.slots[3][t][i];
        m = m + (1 - h.beta1) * (g - m);
        v = v * h.beta2 + (1 - h.beta2) * g * g;
        const double corrected = m / (1 - std::pow(h.beta1, step));
        if (rho_t > 5) {
          const double rect = std::sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
          p -= corrected * h.lr * (std::sqrt(bc2) / (std::sqrt(v) + h.eps)) * rect;
        } else {
          p -= corrected * h.lr;
        }
        EXPECT(near(p, bucket.slots[0][t][i]), "radam fp64 param (step %g)", step);
      }
    }
  }
}

int main() {
  check_half_round_trips();
  check_rules_against_double_reference();
  int checked = 0;
  for (int c = 0; c < kNumCapabilities; ++c) {
    const auto isa = CpuCapability(c);
    if (!capability_compiled(isa) || !capability_supported(isa)) {
      std::printf("skip %s: not supported by this CPU\n", capability_name(isa));
      continue;
    }
    // scalar against itself too: the range split and the reductions' reference
    check_all_kernels<float>(isa, "fp32");
    check_all_kernels<double>(isa, "fp64");
    check_all_kernels<bf16_t>(isa, "bf16");
    check_all_kernels<fp16_t>(isa, "fp16");
    check_stochastic_rounding<bf16_t>(isa, "bf16");
    check_stochastic_rounding<fp16_t>(isa, "fp16");
    check_grad_norm<float>(isa, "fp32");
    check_grad_norm<double>(isa, "fp64");
    check_grad_norm<bf16_t>(isa, "bf16");
    check_grad_norm<fp16_t>(isa, "fp16");
    if (c > 0) ++checked;
  }
  std::printf("%d instruction sets checked against scalar; %d checks; %d failures\n", checked, checks, failures);
  return failures == 0 ? 0 : 1;
}
