// The CPU kernels compiled for one instruction set: avx2. The build gives this file its
// own target flags (setup.py and CMakeLists.txt: CPU_ISA_FLAGS); it includes no torch header.
#define FO_ISA isa_avx2
#include "cpu/kernels.h"
#include "fusedoptim/cpu/sweep.h"

namespace fusedoptim {
namespace cpu {
namespace avx2 {

#define FO_DEFINE_KERNEL(name, Rule, Hyper)                                                         \
  void name##_range(const BucketTable& table, const math::Hyper& hyper, int64_t begin, int64_t end) { \
    sweep_bucket<math::Rule>(table, hyper, begin, end);                                              \
  }
#define FO_DEFINE_REDUCTION(name, Rule, Hyper)                                                     \
  void name##_segments(const BucketTable& table, const math::Hyper& hyper, const Segment* segments, \
                       int64_t first, int64_t last, double* out) {                                 \
    reduce_bucket<math::Rule>(table, hyper, segments, first, last, out);                           \
  }
FO_ELEMENTWISE_RULES(FO_DEFINE_KERNEL)
FO_REDUCTION_RULES(FO_DEFINE_REDUCTION)

void grad_norm_segments(const BucketTable& table, const math::GradNormHyper& hyper, const Segment* segments,
                        int64_t first, int64_t last, double* out) {
  grad_norm_bucket(table, hyper, segments, first, last, out);
}

void scale_grads_range(const BucketTable& table, const math::GradScaleHyper& hyper, int64_t begin, int64_t end) {
  scale_grads_bucket(table, hyper, begin, end);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace fusedoptim
