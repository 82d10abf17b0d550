// The CPU kernels compiled for one instruction set: avx2. The build gives this file its
// own target flags (setup.py and CMakeLists.txt: CPU_ISA_FLAGS); it includes no torch header.
#define FO_ISA isa_avx2
#include "cpu/kernels.h"
#include "cpu/adam_kernel.h"
#include "cpu/sgd_kernel.h"

namespace fusedoptim {
namespace cpu {
namespace avx2 {

void adam_range(const BucketTable& table, const math::AdamHyper& hyper, int64_t begin, int64_t end) {
  sweep_bucket<AdamBody>(table, hyper, begin, end);
}

void sgd_range(const BucketTable& table, const math::SgdHyper& hyper, int64_t begin, int64_t end) {
  sweep_bucket<SgdBody>(table, hyper, begin, end);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace fusedoptim
