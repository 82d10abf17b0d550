// The CPU bucket sweep: runs an elementwise body over a range [begin, end) of a bucket's
// flat index space, whole SIMD vectors first and the scalar rule for each tensor's tail.
//
// Header-only and free of the C++ standard library's templates on purpose: a std::
// template instantiated here would be compiled with this TU's ISA flags but keep one
// mangled name across TUs (see NOTE: [One namespace per instruction set]).
#pragma once
#include <cstdint>

#include "fusedoptim/bucket_table.h"
#include "fusedoptim/cpu/vec.h"

namespace fusedoptim {
namespace cpu {
inline namespace FO_ISA {

// Index of the last entry whose flat start is <= index.
FO_INLINE int64_t entry_containing(const BucketTable& table, int64_t index) {
  int64_t lo = 0, hi = table.num_entries;  // invariant: answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (table.prefix[mid] <= index) lo = mid; else hi = mid;
  }
  return lo;
}

// Width of a value type: 1 for scalars.
template <typename V, typename = void> struct width_of { static constexpr int value = 1; };
template <typename V> struct width_of<V, decltype(void(V::kWidth))> { static constexpr int value = V::kWidth; };

template <typename Storage, typename Body>
FO_INLINE void sweep(const BucketTable& table, int64_t begin, int64_t end, const Body& body) {
  using S = math_t<Storage>;
  using V = typename VecOf<S>::type;
  for (int64_t i = entry_containing(table, begin); i < table.num_entries && table.prefix[i] < end; ++i) {
    const TensorEntry& entry = table.entries[i];
    const int64_t start = table.prefix[i];
    int64_t j = begin > start ? begin - start : 0;
    const int64_t stop = end - start < entry.numel ? end - start : entry.numel;
    if constexpr (width_of<V>::value > 1) {
      for (; j + width_of<V>::value <= stop; j += width_of<V>::value) body.template apply<V>(entry, j);
    }
    for (; j < stop; ++j) body.template apply<S>(entry, j);
  }
}

// Sweeps [begin, end) with Body<Storage> for the bucket's storage dtype. Body<Storage> is
// an algorithm's elementwise body (see <algo>_kernel.h), constructed from its Hyper.
template <template <typename> class Body, typename Hyper>
FO_INLINE void sweep_bucket(const BucketTable& table, const Hyper& hyper, int64_t begin, int64_t end) {
  switch (table.dtype) {
    case DType::kFloat32: sweep<float>(table, begin, end, Body<float>(hyper)); break;
    case DType::kFloat64: sweep<double>(table, begin, end, Body<double>(hyper)); break;
    case DType::kBFloat16: sweep<bf16_t>(table, begin, end, Body<bf16_t>(hyper)); break;
    case DType::kFloat16: sweep<fp16_t>(table, begin, end, Body<fp16_t>(hyper)); break;
  }
}

}  // namespace FO_ISA
}  // namespace cpu
}  // namespace fusedoptim
