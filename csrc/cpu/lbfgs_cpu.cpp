// L-BFGS on the CPU: every pass over the flat vector of fusedoptim.LBFGS.
//
// fusedoptim/lbfgs.py runs torch.optim.LBFGS's algorithm with its scalar logic unchanged and
// hands each pass over the N-element flat vector to this file: reading the params' grads into
// one flat vector, writing a trial point into the params, the memory update and the two-loop
// recursion. Each pass is one at::parallel_for that also computes the dots, sums and maxima
// the Python side asks for next, so no vector is read twice where torch reads it twice.
// Exposed as fusedoptim._C.lbfgs by register_lbfgs().
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/extension.h>

namespace py = pybind11;

namespace fusedoptim {
namespace cpu {
namespace lbfgs {
namespace {

// NOTE: [Deterministic reductions]
// A dot, sum or maximum over the flat vector is taken over fixed blocks of kBlock elements;
// within a block, lane k (of kLanes) accumulates elements k, k + kLanes, k + 2 kLanes, ... in
// order, and the lanes are added in a fixed tree; the block results are then added in block
// order on one thread. So the result does not depend on the number of threads. It is not
// torch's (a BLAS dot, whose order is its own): dots differ from torch's by a few ulps, which
// in fp64 moves the iterates by ~1e-15 relative. fp32 vectors are summed in double.
constexpr int64_t kBlock = 8192;
constexpr int kLanes = 8;
// At least 4 blocks (32,768 elements, the grain of the other sweeps) per thread.
constexpr int64_t kGrainBlocks = 4;
static_assert(kBlock % kLanes == 0, "a block must hold whole lane groups");

// NOTE: [Packs]
// The loops work on kLanes elements at a time held in a Pack: native 16-byte vectors (GCC/Clang
// vector extensions, SSE2 on the baseline x86-64 build, NEON on arm64), elementwise in the
// flat dtype, with no reassociation or contraction (-ffp-contract=off). Written out like this
// because GCC's auto-vectorization of the equivalent scalar loops was unreliable: it
// vectorized across lane groups with shuffles and spills and ran 5x slower.
typedef double F64x2 __attribute__((vector_size(16)));
typedef float F32x4 __attribute__((vector_size(16)));
typedef double F64x2Unaligned __attribute__((vector_size(16), aligned(1), may_alias));
typedef float F32x4Unaligned __attribute__((vector_size(16), aligned(1), may_alias));

template <typename T>
struct NativeVector;
template <>
struct NativeVector<double> {
  typedef F64x2 type;
  typedef F64x2Unaligned unaligned;
};
template <>
struct NativeVector<float> {
  typedef F32x4 type;
  typedef F32x4Unaligned unaligned;
};

template <typename T>
struct Pack {
  typedef typename NativeVector<T>::type V;
  typedef typename NativeVector<T>::unaligned Unaligned;
  static constexpr int kPer = sizeof(V) / sizeof(T);
  static constexpr int kParts = kLanes / kPer;
  V part[kParts];

  static Pack load(const T* p) {
    Pack r;
    for (int i = 0; i < kParts; ++i) r.part[i] = *reinterpret_cast<const Unaligned*>(p + i * kPer);
    return r;
  }
  void store(T* p) const {
    for (int i = 0; i < kParts; ++i) *reinterpret_cast<Unaligned*>(p + i * kPer) = part[i];
  }
  template <typename Op>
  static Pack map(const Pack& a, const Pack& b, Op op) {
    Pack r;
    for (int i = 0; i < kParts; ++i) r.part[i] = op(a.part[i], b.part[i]);
    return r;
  }
  friend Pack operator+(const Pack& a, const Pack& b) { return map(a, b, [](V x, V y) { return x + y; }); }
  friend Pack operator-(const Pack& a, const Pack& b) { return map(a, b, [](V x, V y) { return x - y; }); }
  friend Pack operator*(const Pack& a, const Pack& b) { return map(a, b, [](V x, V y) { return x * y; }); }
  friend Pack operator*(const Pack& a, T b) { return map(a, a, [b](V x, V) { return x * b; }); }
  friend Pack operator*(T a, const Pack& b) { return map(b, b, [a](V x, V) { return a * x; }); }
  friend Pack operator-(const Pack& a) { return map(a, a, [](V x, V) { return -x; }); }
  double lane(int k) const { return part[k / kPer][k % kPer]; }
};

// kLanes doubles: the accumulators.
typedef Pack<double> Wide;

inline Wide widen(const Pack<double>& v) { return v; }
inline Wide widen(const Pack<float>& v) {
  typedef float F32x2 __attribute__((vector_size(8)));
  Wide r;
  for (int i = 0; i < Pack<float>::kParts; ++i) {
    const F32x2 low = __builtin_shufflevector(v.part[i], v.part[i], 0, 1);
    const F32x2 high = __builtin_shufflevector(v.part[i], v.part[i], 2, 3);
    r.part[2 * i] = __builtin_convertvector(low, F64x2);
    r.part[2 * i + 1] = __builtin_convertvector(high, F64x2);
  }
  return r;
}

inline Wide abs(const Wide& v) {
  return Wide::map(v, v, [](F64x2 x, F64x2) { return x < 0 ? -x : x; });
}

// max that propagates NaN as torch.max does: once NaN, always NaN.
inline double nan_max(double m, double a) { return (a > m || a != a) ? a : m; }
inline Wide nan_max(const Wide& m, const Wide& a) {
  return Wide::map(m, a, [](F64x2 x, F64x2 y) { return ((y > x) | (y != y)) ? y : x; });
}

inline double lane_sum(const Wide& v) {
  return ((v.lane(0) + v.lane(1)) + (v.lane(2) + v.lane(3))) + ((v.lane(4) + v.lane(5)) + (v.lane(6) + v.lane(7)));
}
inline double lane_max(const Wide& v) {
  double m = v.lane(0);
  for (int k = 1; k < kLanes; ++k) m = nan_max(m, v.lane(k));
  return m;
}
inline void add_to_lane(Wide& v, int k, double x) { v.part[k / 2][k % 2] += x; }
inline void max_into_lane(Wide& v, int k, double x) { v.part[k / 2][k % 2] = nan_max(v.part[k / 2][k % 2], x); }

// What a pass reduces: its meaning is given by each pass (a dot, a second dot or a sum of
// absolute values, the largest absolute value).
struct Reduction {
  double sum0 = 0.0;
  double sum1 = 0.0;
  double max_abs = 0.0;
  void merge(const Reduction& other) {
    sum0 += other.sum0;
    sum1 += other.sum1;
    max_abs = nan_max(max_abs, other.max_abs);
  }
};

// Runs block(begin, end) -> Reduction over [0, n) in fixed blocks, in parallel, and merges
// the block results in order (see NOTE: [Deterministic reductions]).
template <typename Block>
Reduction reduce_blocks(int64_t n, const Block& block) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<Reduction> partial(blocks);
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) partial[b] = block(b * kBlock, std::min(n, (b + 1) * kBlock));
  });
  Reduction total;
  for (const Reduction& r : partial) total.merge(r);
  return total;
}

template <typename Block>
void for_blocks(int64_t n, const Block& block) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) block(b * kBlock, std::min(n, (b + 1) * kBlock));
  });
}

// The pass every two-loop step is made of: out[j] = f(out[j], x[j]) for j in [begin, end)
// (without reading out[j] unless kReadsOut), returning sum0 = sum_j w[j] * out[j] and, if
// kMax, max_abs = max_j |out[j]|. `f` is generic: it runs on Packs and, for the tail, on T.
template <bool kReadsOut, bool kMax, typename T, typename F>
Reduction update_dot_range(int64_t begin, int64_t end, T* out, const T* x, const T* w, F f) {
  Wide dot{}, max{};
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes) {
    const Pack<T> v = f(kReadsOut ? Pack<T>::load(out + j) : Pack<T>{}, Pack<T>::load(x + j));
    v.store(out + j);
    const Wide wide = widen(v);
    dot = dot + widen(Pack<T>::load(w + j)) * wide;
    if (kMax) max = nan_max(max, abs(wide));
  }
  for (int k = 0; j < end; ++j, ++k) {
    const T v = f(kReadsOut ? out[j] : T(0), x[j]);
    out[j] = v;
    add_to_lane(dot, k, static_cast<double>(w[j]) * static_cast<double>(v));
    if (kMax) max_into_lane(max, k, std::abs(static_cast<double>(v)));
  }
  Reduction r;
  r.sum0 = lane_sum(dot);
  if (kMax) r.max_abs = lane_max(max);
  return r;
}

template <bool kReadsOut, bool kMax, typename T, typename F>
Reduction update_dot(int64_t n, T* out, const T* x, const T* w, F f) {
  return reduce_blocks(n, [&](int64_t begin, int64_t end) {
    return update_dot_range<kReadsOut, kMax>(begin, end, out, x, w, f);
  });
}

// Reads v[begin, end): sum0 = sum_j v[j] * w[j] if kDot, sum1 = sum_j |v[j]| if kAbsSum, and
// max_abs = max_j |v[j]|.
template <bool kDot, bool kAbsSum, typename T>
Reduction inspect_range(int64_t begin, int64_t end, const T* v, const T* w) {
  Wide dot{}, abs_sum{}, max{};
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes) {
    const Wide wide = widen(Pack<T>::load(v + j));
    const Wide magnitude = abs(wide);
    if (kDot) dot = dot + wide * widen(Pack<T>::load(w + j));
    if (kAbsSum) abs_sum = abs_sum + magnitude;
    max = nan_max(max, magnitude);
  }
  for (int k = 0; j < end; ++j, ++k) {
    const double value = static_cast<double>(v[j]);
    if (kDot) add_to_lane(dot, k, value * static_cast<double>(w[j]));
    if (kAbsSum) add_to_lane(abs_sum, k, std::abs(value));
    max_into_lane(max, k, std::abs(value));
  }
  Reduction r;
  if (kDot) r.sum0 = lane_sum(dot);
  if (kAbsSum) r.sum1 = lane_sum(abs_sum);
  r.max_abs = lane_max(max);
  return r;
}

template <typename T>
Reduction inspect_range(int64_t begin, int64_t end, const T* v, const T* w) {
  return w != nullptr ? inspect_range<true, false>(begin, end, v, w) : inspect_range<false, false>(begin, end, v, w);
}

// ---- checks -------------------------------------------------------------------------------

bool is_flat_dtype(at::ScalarType type) { return type == at::kFloat || type == at::kDouble; }

at::ScalarType real_dtype(at::ScalarType type) {
  if (type == at::kComplexFloat) return at::kFloat;
  if (type == at::kComplexDouble) return at::kDouble;
  return type;
}

void check_flat(const at::Tensor& t, const char* what, at::ScalarType dtype, int64_t n) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.layout() == c10::kStrided && t.is_contiguous() &&
                  t.scalar_type() == dtype && t.numel() == n,
              "fusedoptim.LBFGS: ", what, " must be a contiguous CPU tensor of ", n, " ", dtype,
              " elements, like the flat gradient");
}

void check_same_flat(const at::Tensor& t, const char* what, const at::Tensor& like) {
  check_flat(t, what, like.scalar_type(), like.numel());
}

void check_flat_grad(const at::Tensor& grad) {
  TORCH_CHECK(grad.defined() && grad.device().is_cpu() && grad.dim() == 1 && grad.is_contiguous() &&
                  is_flat_dtype(grad.scalar_type()),
              "fusedoptim.LBFGS: the flat gradient must be a contiguous 1-D float32 or float64 CPU tensor");
}

// A 0-dim tensor of the flat dtype holding `value` rounded to it: what torch's dot, sum or max
// of the flat vector returns.
at::Tensor scalar_of(double value, at::ScalarType dtype) {
  return at::scalar_tensor(value, at::TensorOptions().dtype(dtype));
}

// The value of a 0-dim tensor torch.optim.LBFGS keeps in its state (ro), as a double.
double value_of(const at::Tensor& t) {
  if (t.device().is_cpu() && t.numel() == 1) {
    if (t.scalar_type() == at::kDouble) return *t.const_data_ptr<double>();
    if (t.scalar_type() == at::kFloat) return *t.const_data_ptr<float>();
  }
  return t.item<double>();
}

template <typename Fn>
auto dispatch_flat(at::ScalarType dtype, const Fn& fn) {
  if (dtype == at::kDouble) return fn(double{});
  TORCH_CHECK(dtype == at::kFloat, "fusedoptim.LBFGS: no fused kernel for ", dtype);
  return fn(float{});
}

// ---- the params as one flat vector ------------------------------------------------------

// NOTE: [The params as one flat vector]
// torch.optim.LBFGS's flat vector is the params in order, each viewed as reals (a complex param
// is 2 * numel reals), concatenated. FlatParams maps that index space onto the params' own
// memory, so a gather or a scatter is one parallel pass over [0, N) whatever the number of
// params. It holds the param tensors, not their data pointers: every pass re-reads the
// pointers and checks the params still have the size and dtype they had (a closure may
// assign p.data), and bumps the version counter of each param it writes, as torch's
// in-place add_ and copy_ do.
class FlatParams {
 public:
  // Null if torch.optim.LBFGS's own step must run: no params, an empty flat vector, a param
  // not a contiguous strided CPU tensor, dtypes other than one of float32/float64 (complex
  // params count as their real dtype), or params that overlap in memory.
  static std::optional<FlatParams> of(std::vector<at::Tensor> params) {
    if (params.empty()) return std::nullopt;
    const at::ScalarType dtype = real_dtype(params[0].scalar_type());
    if (!is_flat_dtype(dtype)) return std::nullopt;
    std::vector<int64_t> offsets{0};
    std::vector<std::pair<uintptr_t, uintptr_t>> extents;
    for (const at::Tensor& p : params) {
      if (!p.defined() || !p.device().is_cpu() || p.layout() != c10::kStrided || !p.is_contiguous() ||
          real_dtype(p.scalar_type()) != dtype)
        return std::nullopt;
      const int64_t n = p.is_complex() ? 2 * p.numel() : p.numel();
      offsets.push_back(offsets.back() + n);
      if (n > 0) {
        const auto start = reinterpret_cast<uintptr_t>(p.data_ptr());
        extents.emplace_back(start, start + n * at::elementSize(dtype));
      }
    }
    if (offsets.back() == 0) return std::nullopt;
    // A param listed twice, or views sharing memory: torch adds the step to each in turn.
    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i)
      if (extents[i].first < extents[i - 1].second) return std::nullopt;
    return FlatParams(std::move(params), std::move(offsets), dtype);
  }

  int64_t numel() const { return offsets_.back(); }

  // Copies the grads into `out` or a new flat vector (zeros for a param without grad) and
  // returns it with max |g| and, if `direction` is given, g . direction. Nullopt if a grad
  // can't be read as it is (sparse, strided, another dtype or size): the caller then gathers
  // as torch does.
  std::optional<std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>>> gather_grads(
      const std::optional<at::Tensor>& direction, const std::optional<at::Tensor>& out_buffer) {
    refresh();
    std::vector<const void*> grads(params_.size(), nullptr);
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& grad = params_[i].unsafeGetTensorImpl()->grad();
      if (!grad.defined()) continue;
      if (grad.layout() != c10::kStrided || !grad.device().is_cpu() || grad.scalar_type() != params_[i].scalar_type() ||
          grad.numel() != params_[i].numel() || !grad.is_contiguous())
        return std::nullopt;
      grads[i] = grad.const_data_ptr();
    }
    if (direction) check_flat(*direction, "the direction", dtype_, numel());
    at::Tensor out = flat_output(out_buffer);
    Reduction r;
    {
      py::gil_scoped_release no_gil;
      r = dispatch_flat(dtype_, [&](auto zero) {
        using T = decltype(zero);
        T* dst = out.data_ptr<T>();
        const T* dir = direction ? direction->const_data_ptr<T>() : nullptr;
        return reduce_blocks(numel(), [&](int64_t begin, int64_t end) {
          for_segments(begin, end, [&](size_t i, int64_t lo, int64_t hi) {
            if (grads[i] == nullptr) {
              std::fill(dst + lo, dst + hi, T(0));
            } else {
              std::memcpy(dst + lo, static_cast<const T*>(grads[i]) + (lo - offsets_[i]), (hi - lo) * sizeof(T));
            }
          });
          // Reduce the block just copied, still in cache.
          return inspect_range(begin, end, static_cast<const T*>(dst), dir);
        });
      });
    }
    std::optional<at::Tensor> dot;
    if (direction) dot = scalar_of(r.sum0, dtype_);
    return std::make_tuple(out, scalar_of(r.max_abs, dtype_), dot);
  }

  // The params copied into `out` or a new flat vector (torch's _clone_param, flat).
  at::Tensor gather_params(const std::optional<at::Tensor>& out_buffer) {
    refresh();
    at::Tensor out = flat_output(out_buffer);
    py::gil_scoped_release no_gil;
    dispatch_flat(dtype_, [&](auto zero) {
      using T = decltype(zero);
      T* dst = out.data_ptr<T>();
      for_blocks(numel(), [&](int64_t begin, int64_t end) {
        for_segments(begin, end, [&](size_t i, int64_t lo, int64_t hi) {
          std::memcpy(dst + lo, static_cast<const T*>(data_[i]) + (lo - offsets_[i]), (hi - lo) * sizeof(T));
        });
      });
      return 0;
    });
    return out;
  }

  // p = origin + t * direction (a trial point of the line search: torch's _set_param(x_init)
  // followed by _add_grad(t, d)), or p += t * direction without origin (torch's _add_grad).
  void add_step(const std::optional<at::Tensor>& origin, double t, const at::Tensor& direction) {
    refresh();
    check_flat(direction, "the direction", dtype_, numel());
    if (origin) check_flat(*origin, "the line search's origin", dtype_, numel());
    {
      py::gil_scoped_release no_gil;
      dispatch_flat(dtype_, [&](auto zero) {
        using T = decltype(zero);
        const T step = static_cast<T>(t);  // torch casts a Python alpha to the param dtype
        const T* dir = direction.const_data_ptr<T>();
        const T* from = origin ? origin->const_data_ptr<T>() : nullptr;
        for_blocks(numel(), [&](int64_t begin, int64_t end) {
          for_segments(begin, end, [&](size_t i, int64_t lo, int64_t hi) {
            T* p = static_cast<T*>(data_[i]) + (lo - offsets_[i]);
            const T* base = from != nullptr ? from + lo : p;
            const T* d = dir + lo;
            const int64_t n = hi - lo;
            int64_t j = 0;
            for (; j + kLanes <= n; j += kLanes) (Pack<T>::load(base + j) + step * Pack<T>::load(d + j)).store(p + j);
            for (; j < n; ++j) p[j] = base[j] + step * d[j];
          });
        });
        return 0;
      });
    }
    for (const at::Tensor& p : params_) p.unsafeGetTensorImpl()->bump_version();
  }

 private:
  FlatParams(std::vector<at::Tensor> params, std::vector<int64_t> offsets, at::ScalarType dtype)
      : params_(std::move(params)), offsets_(std::move(offsets)), dtype_(dtype), data_(params_.size()) {}

  at::Tensor flat_output(const std::optional<at::Tensor>& buffer) const {
    if (!buffer) return at::empty({numel()}, at::TensorOptions().dtype(dtype_));
    check_flat(*buffer, "an output buffer", dtype_, numel());
    return *buffer;
  }

  void refresh() {
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& p = params_[i];
      const int64_t n = p.is_complex() ? 2 * p.numel() : p.numel();
      TORCH_CHECK(p.device().is_cpu() && p.is_contiguous() && real_dtype(p.scalar_type()) == dtype_ &&
                      n == offsets_[i + 1] - offsets_[i],
                  "fusedoptim.LBFGS: param ", i, " changed its dtype, size, device or layout during the step");
      data_[i] = p.data_ptr();
    }
  }

  // Calls fn(i, lo, hi) for each param i holding part of the flat range [begin, end), with
  // [lo, hi) that part in flat positions.
  template <typename Fn>
  void for_segments(int64_t begin, int64_t end, const Fn& fn) const {
    size_t i = std::upper_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin() - 1;
    for (; i < params_.size() && offsets_[i] < end; ++i) {
      const int64_t lo = std::max(begin, offsets_[i]), hi = std::min(end, offsets_[i + 1]);
      if (lo < hi) fn(i, lo, hi);
    }
  }

  std::vector<at::Tensor> params_;
  std::vector<int64_t> offsets_;  // flat position of each param, and N at the end
  at::ScalarType dtype_;
  std::vector<void*> data_;  // the params' data, re-read by refresh()
};

// ---- the flat-vector steps of the algorithm ---------------------------------------------

// The first iteration's direction d = -g, with g . d, sum |g| and max |d|.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> first_direction(const at::Tensor& grad) {
  check_flat_grad(grad);
  at::Tensor d = at::empty_like(grad);
  Reduction r, abs_sum;
  {
    py::gil_scoped_release no_gil;
    dispatch_flat(grad.scalar_type(), [&](auto zero) {
      using T = decltype(zero);
      const T* g = grad.const_data_ptr<T>();
      r = update_dot<false, true>(grad.numel(), d.data_ptr<T>(), g, g, [](auto, auto x) { return -x; });
      abs_sum = reduce_blocks(grad.numel(), [&](int64_t begin, int64_t end) {
        return inspect_range<false, true>(begin, end, g, static_cast<const T*>(nullptr));
      });
      return 0;
    });
  }
  const at::ScalarType dtype = grad.scalar_type();
  return {d, scalar_of(r.sum0, dtype), scalar_of(abs_sum.sum1, dtype), scalar_of(r.max_abs, dtype)};
}

// The memory update: y = g - prev_g and s = t * d as new vectors, with y . s and y . y; and
// prev_g <- g (torch's prev_flat_grad.copy_(flat_grad), which reads nothing else).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> update_memory(const at::Tensor& grad,
                                                                          const at::Tensor& prev_grad,
                                                                          const at::Tensor& direction, double t) {
  check_flat_grad(grad);
  check_same_flat(prev_grad, "prev_flat_grad", grad);
  check_same_flat(direction, "the direction d", grad);
  at::Tensor y = at::empty_like(grad), s = at::empty_like(grad);
  Reduction r;
  {
    py::gil_scoped_release no_gil;
    dispatch_flat(grad.scalar_type(), [&](auto zero) {
      using T = decltype(zero);
      const T step = static_cast<T>(t);
      const T* g = grad.const_data_ptr<T>();
      const T* d = direction.const_data_ptr<T>();
      T* prev = prev_grad.data_ptr<T>();
      T* y_out = y.data_ptr<T>();
      T* s_out = s.data_ptr<T>();
      r = reduce_blocks(grad.numel(), [&](int64_t begin, int64_t end) {
        Wide ys{}, yy{};
        int64_t j = begin;
        for (; j + kLanes <= end; j += kLanes) {
          const Pack<T> gv = Pack<T>::load(g + j);
          const Pack<T> yv = gv - Pack<T>::load(prev + j);
          const Pack<T> sv = Pack<T>::load(d + j) * step;
          yv.store(y_out + j);
          sv.store(s_out + j);
          gv.store(prev + j);
          const Wide yw = widen(yv);
          ys = ys + yw * widen(sv);
          yy = yy + yw * yw;
        }
        for (int k = 0; j < end; ++j, ++k) {
          const T gv = g[j], yv = gv - prev[j], sv = d[j] * step;
          y_out[j] = yv;
          s_out[j] = sv;
          prev[j] = gv;
          add_to_lane(ys, k, static_cast<double>(yv) * static_cast<double>(sv));
          add_to_lane(yy, k, static_cast<double>(yv) * static_cast<double>(yv));
        }
        Reduction block;
        block.sum0 = lane_sum(ys);
        block.sum1 = lane_sum(yy);
        return block;
      });
      return 0;
    });
  }
  prev_grad.unsafeGetTensorImpl()->bump_version();
  return {y, s, scalar_of(r.sum0, grad.scalar_type()), scalar_of(r.sum1, grad.scalar_type())};
}

// NOTE: [The fused two-loop recursion]
// torch.optim.LBFGS computes the direction as
//   q = -g
//   for i = m-1 .. 0:  al[i] = (s_i . q) * ro[i];  q += -al[i] * y_i
//   r = q * H_diag
//   for i = 0 .. m-1:  be_i = (y_i . r) * ro[i];   r += (al[i] - be_i) * s_i
// with 4m passes over N elements, each re-reading q or r. Each dot here needs the vector the
// previous update has just written, so we fuse every update with the dot that follows it:
//   pass 0:          q = -g,                      dot s_{m-1} . q
//   pass i (m-1..1): q += -al[i] * y_i,           dot s_{i-1} . q
//   pass 0':         q += -al[0] * y_0, r = q*H,  dot y_0 . r
//   pass i (0..m-2): r += (al[i] - be_i) * s_i,   dot y_{i+1} . r
//   last pass:       r += (al[m-1] - be_{m-1}) * s_{m-1},  dot g . r and max |r|
// 2m + 1 passes that each read two history vectors once; the last one also gives the g . d
// and max |d| that torch computes with two more passes. The scalars (al, be, their products
// with ro, H_diag) are rounded to the flat dtype at the same places as torch's 0-dim tensors.
template <typename T>
Reduction two_loop_passes(const at::Tensor& grad, const std::vector<const T*>& dirs, const std::vector<const T*>& stps,
                          const std::vector<T>& ro, T h_diag, T* r, T* al) {
  const int64_t n = grad.numel();
  const int64_t m = static_cast<int64_t>(dirs.size());
  const T* g = grad.const_data_ptr<T>();
  if (m == 0) return update_dot<false, true>(n, r, g, g, [h_diag](auto, auto x) { return -x * h_diag; });

  Reduction pass = update_dot<false, false>(n, r, g, stps[m - 1], [](auto, auto x) { return -x; });
  for (int64_t i = m - 1; i >= 1; --i) {
    al[i] = static_cast<T>(pass.sum0) * ro[i];
    const T alpha = -al[i];
    pass = update_dot<true, false>(n, r, dirs[i], stps[i - 1], [alpha](auto q, auto y) { return q + alpha * y; });
  }
  al[0] = static_cast<T>(pass.sum0) * ro[0];
  const T alpha = -al[0];
  pass = update_dot<true, false>(n, r, dirs[0], dirs[0],
                                 [alpha, h_diag](auto q, auto y) { return (q + alpha * y) * h_diag; });
  for (int64_t i = 0; i < m; ++i) {
    const T be = static_cast<T>(pass.sum0) * ro[i];
    const T coef = al[i] - be;
    const auto update = [coef](auto r, auto s) { return r + coef * s; };
    if (i + 1 < m)
      pass = update_dot<true, false>(n, r, stps[i], dirs[i + 1], update);
    else
      pass = update_dot<true, true>(n, r, stps[i], g, update);
  }
  return pass;
}

// Returns (d, al[0..m-1] as one vector, g . d, max |d|); d is written into `out` if given
// (it must not be one of the inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> two_loop(const at::Tensor& grad,
                                                                     const std::vector<at::Tensor>& old_dirs,
                                                                     const std::vector<at::Tensor>& old_stps,
                                                                     const std::vector<at::Tensor>& ro, double h_diag,
                                                                     const std::optional<at::Tensor>& out) {
  check_flat_grad(grad);
  const size_t m = old_dirs.size();
  TORCH_CHECK(old_stps.size() == m && ro.size() == m,
              "fusedoptim.LBFGS: old_dirs, old_stps and ro must have the same length");
  for (size_t i = 0; i < m; ++i) {
    check_same_flat(old_dirs[i], "each of old_dirs", grad);
    check_same_flat(old_stps[i], "each of old_stps", grad);
  }
  const at::ScalarType dtype = grad.scalar_type();
  at::Tensor d = out ? *out : at::empty_like(grad);
  if (out) {
    check_same_flat(d, "the output direction", grad);
    bool aliased = d.is_same(grad);
    for (size_t i = 0; i < m; ++i) aliased |= d.is_same(old_dirs[i]) || d.is_same(old_stps[i]);
    TORCH_CHECK(!aliased, "fusedoptim.LBFGS: the output direction must not be an input of the two-loop");
  }
  at::Tensor al = at::empty({static_cast<int64_t>(m)}, grad.options());
  Reduction last;
  dispatch_flat(dtype, [&](auto zero) {
    using T = decltype(zero);
    std::vector<const T*> dirs, stps;
    std::vector<T> ro_values;
    for (size_t i = 0; i < m; ++i) {
      dirs.push_back(old_dirs[i].const_data_ptr<T>());
      stps.push_back(old_stps[i].const_data_ptr<T>());
      ro_values.push_back(static_cast<T>(value_of(ro[i])));
    }
    py::gil_scoped_release no_gil;
    last = two_loop_passes<T>(grad, dirs, stps, ro_values, static_cast<T>(h_diag), d.data_ptr<T>(), al.data_ptr<T>());
    return 0;
  });
  return {d, al, scalar_of(last.sum0, dtype), scalar_of(last.max_abs, dtype)};
}

// max |v| and, with `direction`, v . direction: for a flat gradient gathered by torch's own
// code (sparse or strided grads).
std::tuple<at::Tensor, std::optional<at::Tensor>> max_abs_and_dot(const at::Tensor& v,
                                                                  const std::optional<at::Tensor>& direction) {
  check_flat_grad(v);
  if (direction) check_same_flat(*direction, "the direction", v);
  Reduction r;
  {
    py::gil_scoped_release no_gil;
    dispatch_flat(v.scalar_type(), [&](auto zero) {
      using T = decltype(zero);
      const T* x = v.const_data_ptr<T>();
      const T* dir = direction ? direction->const_data_ptr<T>() : nullptr;
      r = reduce_blocks(v.numel(), [&](int64_t begin, int64_t end) { return inspect_range(begin, end, x, dir); });
      return 0;
    });
  }
  std::optional<at::Tensor> dot;
  if (direction) dot = scalar_of(r.sum0, v.scalar_type());
  return {scalar_of(r.max_abs, v.scalar_type()), dot};
}

}  // namespace
}  // namespace lbfgs

void register_lbfgs(py::module_& m) {
  using namespace lbfgs;
  auto sub = m.def_submodule("lbfgs", "the flat-vector passes of fusedoptim.LBFGS on the CPU");
  py::class_<FlatParams>(sub, "FlatParams")
      .def_static("of", &FlatParams::of, py::arg("params"))
      .def_property_readonly("numel", &FlatParams::numel)
      .def("gather_grads", &FlatParams::gather_grads, py::arg("direction") = py::none(), py::arg("out") = py::none())
      .def("gather_params", &FlatParams::gather_params, py::arg("out") = py::none())
      .def("add_step", &FlatParams::add_step, py::arg("origin"), py::arg("t"), py::arg("direction"));
  sub.def("first_direction", &first_direction, py::arg("grad"));
  sub.def("update_memory", &update_memory, py::arg("grad"), py::arg("prev_grad"), py::arg("direction"), py::arg("t"));
  sub.def("two_loop", &two_loop, py::arg("grad"), py::arg("old_dirs"), py::arg("old_stps"), py::arg("ro"),
          py::arg("h_diag"), py::arg("out") = py::none());
  sub.def("max_abs_and_dot", &max_abs_and_dot, py::arg("v"), py::arg("direction") = py::none());
}

}  // namespace cpu
}  // namespace fusedoptim
