#include "cpu/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

namespace fusedoptim {
namespace cpu {
namespace {

// The best this CPU supports, capped by FUSEDOPTIM_CPU_CAPABILITY when set.
CpuCapability initial_capability() {
  int best = 0;
  for (int c = 0; c < kNumCapabilities; ++c) {
    if (capability_compiled(CpuCapability(c)) && capability_supported(CpuCapability(c))) best = c;
  }
  // An unknown name is ignored here; fusedoptim/_extension.py warns about it at import.
  if (const char* env = std::getenv("FUSEDOPTIM_CPU_CAPABILITY")) {
    for (int c = 0; c < best; ++c) {
      if (std::string(env) == capability_name(CpuCapability(c))) best = c;
    }
  }
  return CpuCapability(best);
}

std::atomic<int>& active() {
  static std::atomic<int> value{static_cast<int>(initial_capability())};
  return value;
}

}  // namespace

CpuCapability capability_from_name(const std::string& name) {
  for (int c = 0; c < kNumCapabilities; ++c) {
    if (name == capability_name(CpuCapability(c))) return CpuCapability(c);
  }
  TORCH_CHECK_VALUE(false, "fusedoptim: unknown CPU capability '", name, "'; expected scalar, avx2 or avx512");
}

CpuCapability active_capability() { return CpuCapability(active().load(std::memory_order_relaxed)); }

void set_active_capability(CpuCapability capability) {
  TORCH_CHECK_VALUE(capability_compiled(capability) && capability_supported(capability), "fusedoptim: this CPU can't run '",
                    capability_name(capability), "' kernels");
  active().store(static_cast<int>(capability), std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace fusedoptim
