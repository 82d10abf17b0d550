// The entry points each CPU instruction-set TU exports, and the table that picks one at
// run time. Included by the ISA TUs (with their flags) and by the host side (without).
#pragma once
#include <cstdint>

#include "fusedoptim/bucket_table.h"
#include "fusedoptim/math/adam.h"
#include "fusedoptim/math/sgd.h"

namespace fusedoptim {
namespace cpu {

// Ordered: a higher capability runs everything a lower one does.
enum class CpuCapability : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumCapabilities = 3;

// Each kernel updates the flat index range [begin, end) of one bucket's table.
struct KernelTable {
  void (*adam)(const BucketTable&, const math::AdamHyper&, int64_t, int64_t);
  void (*sgd)(const BucketTable&, const math::SgdHyper&, int64_t, int64_t);
};

#define FO_DECLARE_ISA_KERNELS(isa)                                                         \
  namespace isa {                                                                           \
  void adam_range(const BucketTable&, const math::AdamHyper&, int64_t, int64_t);            \
  void sgd_range(const BucketTable&, const math::SgdHyper&, int64_t, int64_t);              \
  }
FO_DECLARE_ISA_KERNELS(scalar)
FO_DECLARE_ISA_KERNELS(avx2)
FO_DECLARE_ISA_KERNELS(avx512)
#undef FO_DECLARE_ISA_KERNELS

// Whether the ISA's kernels were compiled into this build (x86-64 builds all three).
bool capability_compiled(CpuCapability capability);
// Whether this CPU and OS can run it (CPUID and XGETBV).
bool capability_supported(CpuCapability capability);
const char* capability_name(CpuCapability capability);
const KernelTable& kernels_for(CpuCapability capability);

}  // namespace cpu
}  // namespace fusedoptim
