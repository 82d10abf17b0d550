// Run-time choice of the CPU instruction set: CPUID says what the processor has, XGETBV
// whether the OS saves the wide registers. Compiled without ISA flags; no -march=native.
#include "cpu/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define FO_X86 1
#include <cpuid.h>
#else
#define FO_X86 0
#endif

namespace fusedoptim {
namespace cpu {
namespace {

#if FO_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

struct Features {
  bool avx2 = false;    // AVX2 + FMA + F16C, with YMM state enabled by the OS
  bool avx512 = false;  // AVX-512 F/BW/VL/DQ, with ZMM and opmask state enabled

  Features() {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!(osxsave && avx)) return;
    const uint64_t xcr0 = read_xcr0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;
    const bool zmm_state = (xcr0 & 0xE6) == 0xE6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    const bool avx2_bit = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
               avx512vl = b & (1u << 31);
    avx2 = ymm_state && avx2_bit && fma && f16c;
    avx512 = avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
  }
};

const Features& features() {
  static const Features f;
  return f;
}
#endif

}  // namespace

bool capability_compiled(CpuCapability capability) {
  return capability == CpuCapability::kScalar || FO_X86;
}

bool capability_supported(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kScalar: return true;
#if FO_X86
    case CpuCapability::kAvx2: return features().avx2;
    case CpuCapability::kAvx512: return features().avx512;
#endif
    default: return false;
  }
}

const char* capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::kScalar: return "scalar";
    case CpuCapability::kAvx2: return "avx2";
    case CpuCapability::kAvx512: return "avx512";
  }
  return "unknown";
}

const KernelTable& kernels_for(CpuCapability capability) {
#define FO_SCALAR_KERNEL(name, Rule, Hyper) scalar::name##_range,
#define FO_SCALAR_REDUCTION(name, Rule, Hyper) scalar::name##_segments,
  static const KernelTable scalar_kernels{FO_ELEMENTWISE_RULES(FO_SCALAR_KERNEL) FO_REDUCTION_RULES(FO_SCALAR_REDUCTION)
                                              scalar::grad_norm_segments, scalar::scale_grads_range};
#if FO_X86
#define FO_AVX2_KERNEL(name, Rule, Hyper) avx2::name##_range,
#define FO_AVX2_REDUCTION(name, Rule, Hyper) avx2::name##_segments,
#define FO_AVX512_KERNEL(name, Rule, Hyper) avx512::name##_range,
#define FO_AVX512_REDUCTION(name, Rule, Hyper) avx512::name##_segments,
  static const KernelTable avx2_kernels{FO_ELEMENTWISE_RULES(FO_AVX2_KERNEL) FO_REDUCTION_RULES(FO_AVX2_REDUCTION)
                                            avx2::grad_norm_segments, avx2::scale_grads_range};
  static const KernelTable avx512_kernels{FO_ELEMENTWISE_RULES(FO_AVX512_KERNEL) FO_REDUCTION_RULES(FO_AVX512_REDUCTION)
                                              avx512::grad_norm_segments, avx512::scale_grads_range};
  if (capability == CpuCapability::kAvx512) return avx512_kernels;
  if (capability == CpuCapability::kAvx2) return avx2_kernels;
#endif
  return scalar_kernels;
}

}  // namespace cpu
}  // namespace fusedoptim
