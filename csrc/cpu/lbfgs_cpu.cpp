// L-BFGS on the CPU: every pass over the flat vector of fusedoptim.LBFGS.
//
// fusedoptim/lbfgs.py runs torch.optim.LBFGS's algorithm with its scalar logic unchanged and
// hands each pass over the N-element flat vector to this file: reading the params' grads into
// one flat vector, writing a trial point into the params, the memory update and the two-loop
// recursion. Each pass is one at::parallel_for that also computes the dots, sums and maxima
// the Python side asks for next. The passes themselves are in lbfgs_passes.h; this file checks
// and unpacks tensors, picks the instruction set, and registers fusedoptim._C.lbfgs (for
// fusedoptim.LBFGS) and the same passes as ops, torch.ops.fusedoptim.lbfgs_*.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/dispatch.h"

namespace py = pybind11;

namespace fusedoptim {
namespace cpu {
namespace lbfgs {
namespace {

// NOTE: [Deterministic reductions]
// A dot, sum or maximum over the flat vector is taken over fixed blocks of kBlock elements;
// within a block, lane k (of kLanes) accumulates elements k, k + kLanes, k + 2 kLanes, ... in
// order, and the lanes are added in a fixed tree; the block results are then added in block
// order on one thread. So the result depends neither on the number of threads nor on the
// instruction set. It is not torch's (a BLAS dot, whose order is its own): dots differ from
// torch's by a few ulps, which in fp64 moves the iterates by ~1e-15 relative. fp32 vectors
// are summed in double.
constexpr int64_t kBlock = 8192;
constexpr int kLanes = 8;
// At least 4 blocks (32,768 elements, the grain of the other sweeps) per thread.
constexpr int64_t kGrainBlocks = 4;
static_assert(kBlock % kLanes == 0, "a block must hold whole lane groups");

// max that propagates NaN as torch.max does: once NaN, always NaN.
inline double nan_max(double m, double a) { return (a > m || a != a) ? a : m; }

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

// NOTE: [Two builds of the passes]
// lbfgs_passes.h is compiled twice: in namespace `baseline` with 16-byte vectors for the
// build's own target (SSE2 on x86-64, NEON on arm64), and on x86-64 with GCC in namespace
// `avx2` with 32-byte vectors under #pragma GCC target("avx2"), which applies to the functions
// defined in that region only. The active CPU capability (fusedoptim.set_cpu_capability,
// FUSEDOPTIM_CPU_CAPABILITY) picks one per pass: `scalar` takes the baseline, `avx2` and
// `avx512` take avx2. Both keep the same lanes in the same order: their results are
// bit-identical. With 2 threads on 1M elements the fp64 passes are bound by memory either
// way; the fp32 ones (converted to double for the dots) and passes over cached vectors run
// up to twice as fast with AVX2.
namespace baseline {
#define FO_LBFGS_VECTOR_BYTES 16
#include "cpu/lbfgs_passes.h"
#undef FO_LBFGS_VECTOR_BYTES
}  // namespace baseline

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FO_LBFGS_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
// GCC notes that 32-byte vector returns have another ABI without AVX: these functions are
// internal to this file, no such value crosses it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
namespace avx2 {
#define FO_LBFGS_VECTOR_BYTES 32
#include "cpu/lbfgs_passes.h"
#undef FO_LBFGS_VECTOR_BYTES
}  // namespace avx2
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

// Calls fn(passes, T{}) with the Passes of the active instruction set and the flat dtype's T.
template <typename Fn>
Reduction run_passes(at::ScalarType dtype, const Fn& fn) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "fusedoptim.LBFGS: no fused kernel for ", dtype);
  auto with_type = [&](auto passes) {
    return dtype == at::kDouble ? fn(passes, double{}) : fn(passes, float{});
  };
#ifdef FO_LBFGS_HAVE_AVX2
  if (active_capability() != CpuCapability::kScalar) return with_type(avx2::Passes{});
#endif
  return with_type(baseline::Passes{});
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

template <typename T>
T* data_of(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

template <typename T>
const T* data_of(const std::optional<at::Tensor>& t) {
  return t ? static_cast<const T*>(t->data_ptr()) : nullptr;
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
      const std::optional<at::Tensor>& direction, const std::optional<at::Tensor>& out_buffer,
      const std::vector<std::optional<at::Tensor>>* given_grads = nullptr) {
    refresh();
    TORCH_CHECK(!given_grads || given_grads->size() == params_.size(), "fusedoptim: ", given_grads->size(),
                " grads for ", params_.size(), " params");
    std::vector<const void*> grads(params_.size(), nullptr);
    const at::Tensor undefined;
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& grad = !given_grads ? params_[i].unsafeGetTensorImpl()->grad()
                               : (*given_grads)[i] ? *(*given_grads)[i] : undefined;
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
      r = run_passes(dtype_, [&](auto passes, auto zero) {
        using T = decltype(zero);
        return passes.gather_grads(offsets_.data(), count(), grads.data(), data_of<T>(out), data_of<T>(direction));
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
    run_passes(dtype_, [&](auto passes, auto zero) {
      using T = decltype(zero);
      passes.gather_params(offsets_.data(), count(), data_.data(), data_of<T>(out));
      return Reduction{};
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
      run_passes(dtype_, [&](auto passes, auto zero) {
        using T = decltype(zero);
        // torch casts a Python alpha to the param dtype
        passes.add_step(offsets_.data(), count(), data_.data(), data_of<T>(origin), static_cast<T>(t),
                        data_of<T>(direction));
        return Reduction{};
      });
    }
    for (const at::Tensor& p : params_) p.unsafeGetTensorImpl()->bump_version();
  }

 private:
  FlatParams(std::vector<at::Tensor> params, std::vector<int64_t> offsets, at::ScalarType dtype)
      : params_(std::move(params)), offsets_(std::move(offsets)), dtype_(dtype), data_(params_.size()) {}

  int64_t count() const { return static_cast<int64_t>(params_.size()); }

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
  Reduction r;
  {
    r = run_passes(grad.scalar_type(), [&](auto passes, auto zero) {
      using T = decltype(zero);
      return passes.first_direction(grad.numel(), data_of<T>(grad), data_of<T>(d));
    });
  }
  const at::ScalarType dtype = grad.scalar_type();
  return {d, scalar_of(r.sum0, dtype), scalar_of(r.sum1, dtype), scalar_of(r.max_abs, dtype)};
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
    r = run_passes(grad.scalar_type(), [&](auto passes, auto zero) {
      using T = decltype(zero);
      return passes.update_memory(grad.numel(), data_of<T>(grad), data_of<T>(prev_grad), data_of<T>(direction),
                                  static_cast<T>(t), data_of<T>(y), data_of<T>(s));
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
// (Passes::two_loop in lbfgs_passes.h.)

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
  std::vector<const void*> dirs(m), stps(m);
  std::vector<double> ro_values(m);
  for (size_t i = 0; i < m; ++i) {
    dirs[i] = old_dirs[i].data_ptr();
    stps[i] = old_stps[i].data_ptr();
    ro_values[i] = value_of(ro[i]);
  }
  Reduction last;
  {
    last = run_passes(dtype, [&](auto passes, auto zero) {
      using T = decltype(zero);
      std::vector<T> ro_t(ro_values.begin(), ro_values.end());
      return passes.two_loop(grad.numel(), data_of<T>(grad), reinterpret_cast<const T* const*>(dirs.data()),
                             reinterpret_cast<const T* const*>(stps.data()), ro_t.data(), static_cast<int64_t>(m),
                             static_cast<T>(h_diag), data_of<T>(d), data_of<T>(al));
    });
  }
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
    r = run_passes(v.scalar_type(), [&](auto passes, auto zero) {
      using T = decltype(zero);
      return passes.inspect(v.numel(), data_of<T>(v), data_of<T>(direction));
    });
  }
  std::optional<at::Tensor> dot;
  if (direction) dot = scalar_of(r.sum0, v.scalar_type());
  return {scalar_of(r.max_abs, v.scalar_type()), dot};
}


// ---- the same passes as registered ops, torch.ops.fusedoptim.lbfgs_* (fakes: fusedoptim/_ops.py)

FlatParams flat_params_of(const char* op, at::TensorList params) {
  auto flat = FlatParams::of(params.vec());
  TORCH_CHECK(flat, "fusedoptim::", op, ": params must be non-overlapping contiguous CPU tensors of one dtype, ",
              "float32 or float64 (or their complex types), with at least one element in all");
  return std::move(*flat);
}

at::Tensor zero_if_absent(const std::optional<at::Tensor>& dot, at::ScalarType dtype) {
  return dot ? *dot : scalar_of(0.0, dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> op_gather_grads(at::TensorList params,
                                                               const c10::List<std::optional<at::Tensor>>& grads,
                                                               const std::optional<at::Tensor>& direction) {
  FlatParams flat = flat_params_of("lbfgs_gather_grads", params);
  std::vector<std::optional<at::Tensor>> given(grads.begin(), grads.end());
  auto gathered = flat.gather_grads(direction, std::nullopt, &given);
  TORCH_CHECK(gathered, "fusedoptim::lbfgs_gather_grads: grads must be dense contiguous CPU tensors with their ",
              "params' dtype and size");
  auto& [vec, max_abs, dot] = *gathered;
  return {vec, max_abs, zero_if_absent(dot, vec.scalar_type())};
}

at::Tensor op_gather_params(at::TensorList params) {
  return flat_params_of("lbfgs_gather_params", params).gather_params(std::nullopt);
}

void op_add_step(at::TensorList params, const std::optional<at::Tensor>& origin, double t,
                 const at::Tensor& direction) {
  flat_params_of("lbfgs_add_step", params).add_step(origin, t, direction);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> op_two_loop(const at::Tensor& grad, at::TensorList old_dirs,
                                                                        at::TensorList old_stps, at::TensorList ro,
                                                                        double h_diag) {
  return two_loop(grad, old_dirs.vec(), old_stps.vec(), ro.vec(), h_diag, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> op_max_abs_and_dot(const at::Tensor& v, const std::optional<at::Tensor>& direction) {
  auto [max_abs, dot] = max_abs_and_dot(v, direction);
  return {max_abs, zero_if_absent(dot, v.scalar_type())};
}

}  // namespace
}  // namespace lbfgs

void register_lbfgs(py::module_& m) {
  using namespace lbfgs;
  // The passes run without the GIL (the ops of the fragment below are called without it).
  using no_gil = py::call_guard<py::gil_scoped_release>;
  auto sub = m.def_submodule("lbfgs", "the flat-vector passes of fusedoptim.LBFGS on the CPU");
  py::class_<FlatParams>(sub, "FlatParams")
      .def_static("of", &FlatParams::of, py::arg("params"))
      .def_property_readonly("numel", &FlatParams::numel)
      .def(
          "gather_grads",
          [](FlatParams& flat, const std::optional<at::Tensor>& direction, const std::optional<at::Tensor>& out) {
            return flat.gather_grads(direction, out);
          },
          py::arg("direction") = py::none(), py::arg("out") = py::none(), no_gil())
      .def("gather_params", &FlatParams::gather_params, py::arg("out") = py::none(), no_gil())
      .def("add_step", &FlatParams::add_step, py::arg("origin"), py::arg("t"), py::arg("direction"), no_gil());
  sub.def("first_direction", &first_direction, py::arg("grad"), no_gil());
  sub.def("update_memory", &update_memory, py::arg("grad"), py::arg("prev_grad"), py::arg("direction"), py::arg("t"),
          no_gil());
  sub.def("two_loop", &two_loop, py::arg("grad"), py::arg("old_dirs"), py::arg("old_stps"), py::arg("ro"),
          py::arg("h_diag"), py::arg("out") = py::none(), no_gil());
  sub.def("max_abs_and_dot", &max_abs_and_dot, py::arg("v"), py::arg("direction") = py::none(), no_gil());
}

}  // namespace cpu
}  // namespace fusedoptim

// Outputs that need no direction (dot) are 0. The ops allocate their results; the optimizer's
// pybind methods above can also write into reusable buffers (NOTE: [Scratch buffers]).
TORCH_LIBRARY_FRAGMENT(fusedoptim, m) {
  m.def("lbfgs_gather_grads(Tensor[] params, Tensor?[] grads, Tensor? direction) -> (Tensor, Tensor, Tensor)");
  m.def("lbfgs_gather_params(Tensor[] params) -> Tensor");
  m.def("lbfgs_add_step(Tensor(a!)[] params, Tensor? origin, float t, Tensor direction) -> ()");
  m.def("lbfgs_first_direction(Tensor grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lbfgs_update_memory(Tensor grad, Tensor(a!) prev_grad, Tensor direction, float t) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lbfgs_two_loop(Tensor grad, Tensor[] old_dirs, Tensor[] old_stps, Tensor[] ro, float h_diag) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lbfgs_max_abs_and_dot(Tensor v, Tensor? direction) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fusedoptim, CPU, m) {
  using namespace fusedoptim::cpu::lbfgs;
  m.impl("lbfgs_gather_grads", &op_gather_grads);
  m.impl("lbfgs_gather_params", &op_gather_params);
  m.impl("lbfgs_add_step", &op_add_step);
  m.impl("lbfgs_first_direction", &first_direction);
  m.impl("lbfgs_update_memory", &update_memory);
  m.impl("lbfgs_two_loop", &op_two_loop);
  m.impl("lbfgs_max_abs_and_dot", &op_max_abs_and_dot);
}
