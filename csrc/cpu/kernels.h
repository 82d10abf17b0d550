// The entry points each CPU instruction-set TU exports, and the table that picks one at
// run time. Included by the ISA TUs (with their flags) and by the host side (without).
#pragma once
#include <cstdint>

#include "fusedoptim/bucket_table.h"
#include "fusedoptim/math/adadelta.h"
#include "fusedoptim/math/adagrad.h"
#include "fusedoptim/math/adam.h"
#include "fusedoptim/math/adamax.h"
#include "fusedoptim/math/asgd.h"
#include "fusedoptim/math/grad_norm.h"
#include "fusedoptim/math/lamb.h"
#include "fusedoptim/math/lion.h"
#include "fusedoptim/math/nadam.h"
#include "fusedoptim/math/radam.h"
#include "fusedoptim/math/rmsprop.h"
#include "fusedoptim/math/rprop.h"
#include "fusedoptim/math/sgd.h"

namespace fusedoptim {
namespace cpu {

// Ordered: a higher capability runs everything a lower one does.
enum class CpuCapability : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumCapabilities = 3;

// Every elementwise rule: X(kernel name, rule template, hyperparameter struct). Adding an
// algorithm adds a line here; the ISA TUs and the tables follow.
#define FO_ELEMENTWISE_RULES(X)                  \
  X(sgd, SgdRule, SgdHyper)                      \
  X(adam, AdamRule, AdamHyper)                   \
  X(adadelta, AdadeltaRule, AdadeltaHyper)       \
  X(adagrad, AdagradRule, AdagradHyper)          \
  X(adamax, AdamaxRule, AdamaxHyper)             \
  X(asgd, AsgdRule, AsgdHyper)                   \
  X(nadam, NadamRule, NadamHyper)                \
  X(radam, RadamRule, RadamHyper)                \
  X(rmsprop, RmspropRule, RmspropHyper)          \
  X(rprop, RpropRule, RpropHyper)                \
  X(lion, LionRule, LionHyper)                   \
  X(lamb_apply, LambApplyRule, LambHyper)

// Every reduction rule (per-segment sums, see NOTE: [Deterministic reductions]).
#define FO_REDUCTION_RULES(X)                    \
  X(lamb_moments, LambMomentsRule, LambHyper)    \
  X(grad_squares, GradSquaresRule, GradSquaresHyper)

// An elementwise kernel updates the flat index range [begin, end) of one bucket's table; a
// reduction kernel runs segments [first, last) and writes Rule::kNumSums doubles for each.
#define FO_KERNEL_FIELD(name, Rule, Hyper) void (*name)(const BucketTable&, const math::Hyper&, int64_t, int64_t);
#define FO_REDUCTION_FIELD(name, Rule, Hyper) \
  void (*name)(const BucketTable&, const math::Hyper&, const Segment*, int64_t, int64_t, double*);
struct KernelTable {
  FO_ELEMENTWISE_RULES(FO_KERNEL_FIELD)
  FO_REDUCTION_RULES(FO_REDUCTION_FIELD)
  // Over the grads only (math/grad_norm.h): the global grad norm's reduction (one double per
  // segment) and the clip's scaling pass.
  void (*grad_norm)(const BucketTable&, const math::GradNormHyper&, const Segment*, int64_t, int64_t, double*);
  void (*scale_grads)(const BucketTable&, const math::GradScaleHyper&, int64_t, int64_t);
};
#undef FO_KERNEL_FIELD
#undef FO_REDUCTION_FIELD

#define FO_DECLARE_KERNEL(name, Rule, Hyper) \
  void name##_range(const BucketTable&, const math::Hyper&, int64_t, int64_t);
#define FO_DECLARE_REDUCTION(name, Rule, Hyper) \
  void name##_segments(const BucketTable&, const math::Hyper&, const Segment*, int64_t, int64_t, double*);
#define FO_DECLARE_ISA_KERNELS(isa)                                                                      \
  namespace isa {                                                                                        \
  FO_ELEMENTWISE_RULES(FO_DECLARE_KERNEL)                                                                \
  FO_REDUCTION_RULES(FO_DECLARE_REDUCTION)                                                               \
  void grad_norm_segments(const BucketTable&, const math::GradNormHyper&, const Segment*, int64_t, int64_t, \
                          double*);                                                                      \
  void scale_grads_range(const BucketTable&, const math::GradScaleHyper&, int64_t, int64_t);             \
  }
FO_DECLARE_ISA_KERNELS(scalar)
FO_DECLARE_ISA_KERNELS(avx2)
FO_DECLARE_ISA_KERNELS(avx512)
#undef FO_DECLARE_ISA_KERNELS
#undef FO_DECLARE_KERNEL
#undef FO_DECLARE_REDUCTION

// Whether the ISA's kernels were compiled into this build (x86-64 builds all three).
bool capability_compiled(CpuCapability capability);
// Whether this CPU and OS can run it (CPUID and XGETBV).
bool capability_supported(CpuCapability capability);
const char* capability_name(CpuCapability capability);
const KernelTable& kernels_for(CpuCapability capability);

}  // namespace cpu
}  // namespace fusedoptim
