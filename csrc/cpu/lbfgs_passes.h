// The passes of fusedoptim.LBFGS over the flat vector, on raw pointers (lbfgs_cpu.cpp wraps
// them for tensors).
//
// Included twice by lbfgs_cpu.cpp, inside one namespace per instruction set, with
// FO_LBFGS_VECTOR_BYTES the width of the native vectors (NOTE: [Two builds of the passes]). So
// it has no include guard, includes nothing and instantiates no library template: everything
// defined here is compiled for that namespace's instruction set only.

// NOTE: [Packs]
// The loops work on kLanes elements at a time held in a Pack: native vectors of
// FO_LBFGS_VECTOR_BYTES bytes (GCC/Clang vector extensions), elementwise in the flat dtype,
// with no reassociation or contraction (-ffp-contract=off, and the avx2 target has no FMA).
// Lane k always holds element k of the group, whatever the vector width, so both builds give
// bit-identical results (NOTE: [Deterministic reductions]). Written out like this because
// GCC's auto-vectorization of the equivalent scalar loops was unreliable: it vectorized across
// lane groups with shuffles and spills and ran 5x slower.
typedef double F64 __attribute__((vector_size(FO_LBFGS_VECTOR_BYTES)));
typedef float F32 __attribute__((vector_size(FO_LBFGS_VECTOR_BYTES)));
typedef float F32Half __attribute__((vector_size(FO_LBFGS_VECTOR_BYTES / 2)));
typedef double F64Unaligned __attribute__((vector_size(FO_LBFGS_VECTOR_BYTES), aligned(1), may_alias));
typedef float F32Unaligned __attribute__((vector_size(FO_LBFGS_VECTOR_BYTES), aligned(1), may_alias));

template <typename T>
struct NativeVector;
template <>
struct NativeVector<double> {
  typedef F64 type;
  typedef F64Unaligned unaligned;
};
template <>
struct NativeVector<float> {
  typedef F32 type;
  typedef F32Unaligned unaligned;
};

template <typename T>
struct Pack {
  typedef typename NativeVector<T>::type V;
  typedef typename NativeVector<T>::unaligned Unaligned;
  static constexpr int kPer = sizeof(V) / sizeof(T);
  static constexpr int kParts = kLanes / kPer;
  static_assert(kParts * kPer == kLanes, "a Pack holds whole vectors");
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
  T lane(int k) const { return part[k / kPer][k % kPer]; }
  T& lane(int k) { return part[k / kPer][k % kPer]; }
};

// kLanes doubles: the accumulators.
typedef Pack<double> Wide;

inline Wide widen(const Pack<double>& v) { return v; }
inline Wide widen(const Pack<float>& v) {
  Wide r;
  for (int i = 0; i < Pack<float>::kParts; ++i) {
#if FO_LBFGS_VECTOR_BYTES == 16
    const F32Half low = __builtin_shufflevector(v.part[i], v.part[i], 0, 1);
    const F32Half high = __builtin_shufflevector(v.part[i], v.part[i], 2, 3);
#else
    const F32Half low = __builtin_shufflevector(v.part[i], v.part[i], 0, 1, 2, 3);
    const F32Half high = __builtin_shufflevector(v.part[i], v.part[i], 4, 5, 6, 7);
#endif
    r.part[2 * i] = __builtin_convertvector(low, F64);
    r.part[2 * i + 1] = __builtin_convertvector(high, F64);
  }
  return r;
}

inline Wide abs(const Wide& v) {
  return Wide::map(v, v, [](F64 x, F64) { return x < 0 ? -x : x; });
}

// nan_max lane by lane.
inline Wide lanes_nan_max(const Wide& m, const Wide& a) {
  return Wide::map(m, a, [](F64 x, F64 y) { return ((y > x) | (y != y)) ? y : x; });
}

inline double lane_sum(const Wide& v) {
  return ((v.lane(0) + v.lane(1)) + (v.lane(2) + v.lane(3))) + ((v.lane(4) + v.lane(5)) + (v.lane(6) + v.lane(7)));
}
inline double lane_max(const Wide& v) {
  double m = v.lane(0);
  for (int k = 1; k < kLanes; ++k) m = nan_max(m, v.lane(k));
  return m;
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
    if (kMax) max = lanes_nan_max(max, abs(wide));
  }
  for (int k = 0; j < end; ++j, ++k) {
    const T v = f(kReadsOut ? out[j] : T(0), x[j]);
    out[j] = v;
    dot.lane(k) += static_cast<double>(w[j]) * static_cast<double>(v);
    if (kMax) max.lane(k) = nan_max(max.lane(k), std::abs(static_cast<double>(v)));
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
    max = lanes_nan_max(max, magnitude);
  }
  for (int k = 0; j < end; ++j, ++k) {
    const double value = static_cast<double>(v[j]);
    if (kDot) dot.lane(k) += value * static_cast<double>(w[j]);
    if (kAbsSum) abs_sum.lane(k) += std::abs(value);
    max.lane(k) = nan_max(max.lane(k), std::abs(value));
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

// Calls fn(i, lo, hi) for each param i holding part of the flat range [begin, end), [lo, hi)
// being that part in flat positions; offsets[i] is param i's flat position, offsets[count] = N.
template <typename Fn>
void for_segments(const int64_t* offsets, int64_t count, int64_t begin, int64_t end, const Fn& fn) {
  int64_t low = 0, high = count;  // the last param starting at or before `begin`
  while (high - low > 1) {
    const int64_t mid = (low + high) / 2;
    if (offsets[mid] <= begin) low = mid; else high = mid;
  }
  for (int64_t i = low; i < count && offsets[i] < end; ++i) {
    const int64_t lo = begin > offsets[i] ? begin : offsets[i];
    const int64_t hi = end < offsets[i + 1] ? end : offsets[i + 1];
    if (lo < hi) fn(i, lo, hi);
  }
}

// The entry points, one type per instruction set for lbfgs_cpu.cpp's dispatch. All vectors
// are flat: N elements of T, contiguous.
struct Passes {
  // out <- the grads (grads[i] null: zeros); sum0 = out . direction (if given), max_abs = max|out|.
  template <typename T>
  static Reduction gather_grads(const int64_t* offsets, int64_t count, const void* const* grads, T* out,
                                const T* direction) {
    return reduce_blocks(offsets[count], [&](int64_t begin, int64_t end) {
      for_segments(offsets, count, begin, end, [&](int64_t i, int64_t lo, int64_t hi) {
        if (grads[i] == nullptr) {
          for (int64_t j = lo; j < hi; ++j) out[j] = T(0);
        } else {
          std::memcpy(out + lo, static_cast<const T*>(grads[i]) + (lo - offsets[i]), (hi - lo) * sizeof(T));
        }
      });
      return inspect_range(begin, end, static_cast<const T*>(out), direction);  // the block, still in cache
    });
  }

  // out <- the params.
  template <typename T>
  static void gather_params(const int64_t* offsets, int64_t count, void* const* params, T* out) {
    for_blocks(offsets[count], [&](int64_t begin, int64_t end) {
      for_segments(offsets, count, begin, end, [&](int64_t i, int64_t lo, int64_t hi) {
        std::memcpy(out + lo, static_cast<const T*>(params[i]) + (lo - offsets[i]), (hi - lo) * sizeof(T));
      });
    });
  }

  // params <- origin + step * direction, or params += step * direction without origin.
  template <typename T>
  static void add_step(const int64_t* offsets, int64_t count, void* const* params, const T* origin, T step,
                       const T* direction) {
    for_blocks(offsets[count], [&](int64_t begin, int64_t end) {
      for_segments(offsets, count, begin, end, [&](int64_t i, int64_t lo, int64_t hi) {
        T* p = static_cast<T*>(params[i]) + (lo - offsets[i]);
        const T* base = origin != nullptr ? origin + lo : p;
        const T* d = direction + lo;
        const int64_t n = hi - lo;
        int64_t j = 0;
        for (; j + kLanes <= n; j += kLanes) (Pack<T>::load(base + j) + step * Pack<T>::load(d + j)).store(p + j);
        for (; j < n; ++j) p[j] = base[j] + step * d[j];
      });
    });
  }

  // d <- -g; sum0 = g . d, sum1 = sum |g|, max_abs = max |d|.
  template <typename T>
  static Reduction first_direction(int64_t n, const T* g, T* d) {
    Reduction r = update_dot<false, true>(n, d, g, g, [](auto, auto x) { return -x; });
    r.sum1 = reduce_blocks(n, [&](int64_t begin, int64_t end) {
               return inspect_range<false, true>(begin, end, g, static_cast<const T*>(nullptr));
             }).sum1;
    return r;
  }

  // y <- g - prev, s <- d * step, prev <- g; sum0 = y . s, sum1 = y . y.
  template <typename T>
  static Reduction update_memory(int64_t n, const T* g, T* prev, const T* d, T step, T* y, T* s) {
    return reduce_blocks(n, [&](int64_t begin, int64_t end) {
      Wide ys{}, yy{};
      int64_t j = begin;
      for (; j + kLanes <= end; j += kLanes) {
        const Pack<T> gv = Pack<T>::load(g + j);
        const Pack<T> yv = gv - Pack<T>::load(prev + j);
        const Pack<T> sv = Pack<T>::load(d + j) * step;
        yv.store(y + j);
        sv.store(s + j);
        gv.store(prev + j);
        const Wide yw = widen(yv);
        ys = ys + yw * widen(sv);
        yy = yy + yw * yw;
      }
      for (int k = 0; j < end; ++j, ++k) {
        const T gv = g[j], yv = gv - prev[j], sv = d[j] * step;
        y[j] = yv;
        s[j] = sv;
        prev[j] = gv;
        ys.lane(k) += static_cast<double>(yv) * static_cast<double>(sv);
        yy.lane(k) += static_cast<double>(yv) * static_cast<double>(yv);
      }
      Reduction block;
      block.sum0 = lane_sum(ys);
      block.sum1 = lane_sum(yy);
      return block;
    });
  }

  // The two-loop recursion (NOTE: [The fused two-loop recursion]): r <- the direction, al[i]
  // for each of the m pairs; returns sum0 = g . r and max_abs = max |r|.
  template <typename T>
  static Reduction two_loop(int64_t n, const T* g, const T* const* dirs, const T* const* stps, const T* ro,
                            int64_t m, T h_diag, T* r, T* al) {
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

  // sum0 = v . w (if w), max_abs = max |v|.
  template <typename T>
  static Reduction inspect(int64_t n, const T* v, const T* w) {
    return reduce_blocks(n, [&](int64_t begin, int64_t end) { return inspect_range(begin, end, v, w); });
  }
};
