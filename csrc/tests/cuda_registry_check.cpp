// Links every CUDA object with a stand-in for the host side's registry (csrc/cuda_table.cpp,
// which needs torch) and checks, without a GPU, that loading them registers a launcher for every
// rule of cpu/kernels.h. Built and run by tests/test_cuda_sources.py.
#include <cstdio>

#include "fusedoptim/cuda/launch.h"

namespace fusedoptim {
namespace cuda {
namespace {
const KernelTable* registered = nullptr;
}  // namespace
const KernelTable* kernels() { return registered; }
void register_kernels(const KernelTable* table) { registered = table; }
}  // namespace cuda
}  // namespace fusedoptim

int main() {
  const fusedoptim::cuda::KernelTable* table = fusedoptim::cuda::kernels();
  if (table == nullptr) {
    std::puts("no CUDA kernel table was registered");
    return 1;
  }
  int missing = 0;
#define FO_CHECK_ENTRY(name, Rule, Hyper)            \
  if (table->name == nullptr) {                      \
    std::printf("no CUDA launcher for %s\n", #name); \
    ++missing;                                       \
  }
  FO_ELEMENTWISE_RULES(FO_CHECK_ENTRY)
  FO_REDUCTION_RULES(FO_CHECK_ENTRY)
#undef FO_CHECK_ENTRY
#define FO_CHECK_STEPS(name, Coefs, Hyper)                    \
  if (table->name##_steps == nullptr) {                      \
    std::printf("no CUDA step kernel for %s\n", #name);      \
    ++missing;                                               \
  }
  FO_DEVICE_STEP_RULES(FO_CHECK_STEPS)
#undef FO_CHECK_STEPS
  if (table->grad_norm == nullptr) {
    std::puts("no CUDA grad norm launcher");
    ++missing;
  }
  if (table->multiprocessor_count == nullptr || table->stream_capturing == nullptr) ++missing;
  if (missing == 0) std::puts("every rule has a CUDA launcher");
  return missing == 0 ? 0 : 1;
}
