// The CPU bucket sweeps: run an update rule (fusedoptim/math/<algo>.h) over a range
// [begin, end) of a bucket's flat index space, whole SIMD vectors first and the scalar rule
// for each tensor's tail; and the reduction sweep over fixed segments (LAMB's norms).
//
// Header-only and free of the C++ standard library's templates on purpose: a std::
// template instantiated here would be compiled with this TU's ISA flags but keep one
// mangled name across TUs (see NOTE: [One namespace per instruction set]).
#pragma once
#include <cstdint>

#include "fusedoptim/bucket_table.h"
#include "fusedoptim/cpu/vec.h"
#include "fusedoptim/math/grad_norm.h"
#include "fusedoptim/math/rule.h"

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

template <typename A, typename B> struct is_same_type { static constexpr bool value = false; };
template <typename A> struct is_same_type<A, A> { static constexpr bool value = true; };

template <bool B, typename T, typename F> struct pick_type { using type = T; };
template <typename T, typename F> struct pick_type<false, T, F> { using type = F; };


// NOTE: [Master weights]
// With master_weights=True a 16-bit param has an fp32 master copy (the optimizer state
// `master_param`): the rule loads the master from slot 0 instead of the param, updates it in
// fp32 with the 16-bit grad, stores it, and writes the param rounded (nearest even) from it in
// the same pass (slot kParam16Slot). So small updates accumulate in the master where a bf16
// param would round them away. The states are fp32 with master weights; only bf16 and fp16
// params with fp32 states are instantiated.

// NOTE: [Prefetching streams]
// On the 2-core development VM one core cannot keep enough cache misses in flight to stream
// at the machine's bandwidth (a copy on one thread runs at about half the two threads' rate),
// so a sweep over many arrays at once waits on memory more than the bytes require. Asking for
// each array's line some distance ahead (a prefetch, which changes no result) helped where a
// pass streams many arrays or little else: the master-weights step (six arrays; from
// 1.18-1.27x to 1.08-1.16x the fp32 step's time in a two-step A/B, a few percent in
// bench_master.py) and the grad-norm pass (~5-10%). The plain fp32 and 16-bit steps were not
// changed (see benchmarks/RESULTS.md, issue 5).
constexpr int64_t kMasterPrefetchElements = 256;
constexpr int64_t kGradNormPrefetchBytes = 4096;
constexpr int64_t kCacheLineBytes = 64;

// One element (or vector) of a rule: load the param, grad and the states the rule uses, run
// it, store. Slots: param, grad, then the rule's states in order (bucket_table.h). States are
// stored as StateStorage (NOTE: [State dtypes]); the math type is the param storage's. With
// kMaster, slot 0 is the param's fp32 master (NOTE: [Master weights]).
template <template <typename> class Rule, typename Storage, typename StateStorage = Storage, bool kMaster = false,
          bool kStochastic = false>
struct RuleBody {
  using S = math_t<Storage>;
  using Coefs = math::TensorCoefs<S>;
  using ParamStorage = typename pick_type<kMaster, float, Storage>::type;
  static constexpr int kMaxStates = Rule<S>::kMaxStates;
  static_assert(kFirstStateSlot + kMaxStates <= kParam16Slot, "too many states for a table entry");
  Rule<S> rule;
  S grad_scale = S(1);
  bool scales_grad = false;
  uint64_t rounding_seed = 0;  // kStochastic: this step's seed (NOTE: [Stochastic rounding])

  template <typename Hyper>
  explicit RuleBody(const Hyper& hyper) : rule(hyper) {}

  // The table's grad multiplier (max_grad_norm's clip coefficient), applied after the load.
  RuleBody& with_grad_scale(double scale) {
    grad_scale = S(scale);
    scales_grad = scale != 1.0;
    return *this;
  }

  template <typename V>
  FO_INLINE V load_grad(const TensorEntry& e, int64_t i) const {
    const V grad = load<V>(static_cast<const Storage*>(e.ptr[kGradSlot]) + i);
    return scales_grad ? grad * V(grad_scale) : grad;
  }

  template <typename V>
  FO_INLINE void load_states(const TensorEntry& e, int64_t i, V* state) const {
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) state[k] = load<V>(static_cast<const StateStorage*>(e.ptr[kFirstStateSlot + k]) + i);
    }
  }

  // The param rounded stochastically, each lane with the random bits of its flat index
  // (the vector hash and rounding give the scalar ones' bits: NOTE: [Stochastic rounding]).
  template <typename V>
  FO_INLINE void store_param_stochastic(Storage* p, V param, int64_t flat) const {
    store_stochastic(p, param, rounding_seed, uint64_t(flat));
  }

  template <typename V>
  FO_INLINE void store_all(const TensorEntry& e, int64_t i, int64_t flat, V param, const V* state) const {
    if constexpr (kStochastic) {
      store_param_stochastic(static_cast<Storage*>(e.ptr[kParamSlot]) + i, param, flat);
    } else {
      store(static_cast<ParamStorage*>(e.ptr[kParamSlot]) + i, param);
    }
    if constexpr (kMaster) store(static_cast<Storage*>(e.ptr[kParam16Slot]) + i, param);
    if (math::states_read_only<Rule<S>>::value) return;
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) store(static_cast<StateStorage*>(e.ptr[kFirstStateSlot + k]) + i, state[k]);
    }
  }

  // Every array of a master-weights step, kMasterPrefetchElements ahead (NOTE: [Prefetching streams]).
  FO_INLINE void prefetch_master_streams(const TensorEntry& e, int64_t i) const {
    const int64_t ahead = i + kMasterPrefetchElements;
    __builtin_prefetch(static_cast<const float*>(e.ptr[kParamSlot]) + ahead, 1);
    __builtin_prefetch(static_cast<const Storage*>(e.ptr[kGradSlot]) + ahead, 0);
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) __builtin_prefetch(static_cast<const float*>(e.ptr[kFirstStateSlot + k]) + ahead, 1);
    }
    __builtin_prefetch(static_cast<const Storage*>(e.ptr[kParam16Slot]) + ahead, 1);
  }

  // i: the element's index in its tensor; flat: in the bucket's flat index space.
  template <typename V>
  FO_INLINE void apply(const TensorEntry& e, const Coefs& coefs, int64_t i, int64_t flat) const {
    if constexpr (kMaster && width_of<V>::value > 1) prefetch_master_streams(e, i);
    V param = load<V>(static_cast<const ParamStorage*>(e.ptr[kParamSlot]) + i);
    const V grad = load_grad<V>(e, i);
    V state[kMaxStates > 0 ? kMaxStates : 1];
    load_states(e, i, state);
    rule.update(param, grad, state, coefs);
    store_all(e, i, flat, param, state);
  }

  // Reduction rules: update the states, store them, then add the element's contributions
  // to sums from the states as stored, so a later pass that reloads them (LAMB's apply)
  // sees what the sums saw, rounding to bf16/fp16 included.
  template <typename V>
  FO_INLINE void apply_reduce(const TensorEntry& e, const Coefs& coefs, int64_t i, V* sums) const {
    const V param = load<V>(static_cast<const ParamStorage*>(e.ptr[kParamSlot]) + i);
    const V grad = load_grad<V>(e, i);
    V state[kMaxStates > 0 ? kMaxStates : 1];
    load_states(e, i, state);
    rule.update(param, grad, state, coefs);
    for (int k = 0; k < kMaxStates; ++k) {
      if (k < rule.num_states) store(static_cast<StateStorage*>(e.ptr[kFirstStateSlot + k]) + i, state[k]);
    }
    if constexpr (!is_same_type<StateStorage, S>::value) load_states(e, i, state);
    rule.accumulate(param, grad, state, coefs, sums);
  }
};

template <typename Storage, typename Body>
FO_INLINE void sweep(const BucketTable& table, int64_t begin, int64_t end, const Body& body) {
  using S = math_t<Storage>;
  using V = typename VecOf<S>::type;
  for (int64_t i = entry_containing(table, begin); i < table.num_entries && table.prefix[i] < end; ++i) {
    const TensorEntry& entry = table.entries[i];
    const typename Body::Coefs coefs(entry);
    const int64_t start = table.prefix[i];
    int64_t j = begin > start ? begin - start : 0;
    const int64_t stop = end - start < entry.numel ? end - start : entry.numel;
    if constexpr (width_of<V>::value > 1) {
      for (; j + width_of<V>::value <= stop; j += width_of<V>::value) body.template apply<V>(entry, coefs, j, start + j);
    }
    for (; j < stop; ++j) body.template apply<S>(entry, coefs, j, start + j);
  }
}

// NOTE: [State dtypes]
// state_dtype stores an optimizer's elementwise states in another dtype than the params',
// with the math in the params' math type (fp32 for 16-bit params). Each pair is one more
// instantiation of every rule in every ISA TU, so only the pairs people train with exist:
// fp32 params with bf16 states (halving the state memory), and bf16 or fp16 params with fp32
// states (full-precision moments for 16-bit params). The host refuses the others
// (fusedoptim/optimizer.py, bucket.cpp).
template <typename Storage, typename F>
FO_INLINE void with_state_storage(const BucketTable& table, F&& f) {
  if constexpr (is_same_type<Storage, float>::value) {
    if (table.state_dtype == DType::kBFloat16) return f(bf16_t{});
  } else if constexpr (is_same_type<Storage, bf16_t>::value || is_same_type<Storage, fp16_t>::value) {
    if (table.state_dtype == DType::kFloat32) return f(float{});
  }
  f(Storage{});
}

template <template <typename> class Rule, typename Storage, typename Hyper>
FO_INLINE void sweep_storage(const BucketTable& table, const Hyper& hyper, int64_t begin, int64_t end) {
  if constexpr (is_same_type<Storage, bf16_t>::value || is_same_type<Storage, fp16_t>::value) {
    if (table.master_weights) {
      return sweep<Storage>(table, begin, end, RuleBody<Rule, Storage, float, true>(hyper).with_grad_scale(table.grad_scale));
    }
    if (table.stochastic_rounding) {  // states in the params' dtype (the host checks)
      RuleBody<Rule, Storage, Storage, false, true> body(hyper);
      body.with_grad_scale(table.grad_scale);
      body.rounding_seed = table.rounding_seed;
      return sweep<Storage>(table, begin, end, body);
    }
  }
  with_state_storage<Storage>(table, [&](auto state_tag) {
    using StateStorage = decltype(state_tag);
    sweep<Storage>(table, begin, end, RuleBody<Rule, Storage, StateStorage>(hyper).with_grad_scale(table.grad_scale));
  });
}

// Sweeps [begin, end) with Rule for the bucket's storage dtypes, constructed from hyper.
template <template <typename> class Rule, typename Hyper>
FO_INLINE void sweep_bucket(const BucketTable& table, const Hyper& hyper, int64_t begin, int64_t end) {
  switch (table.dtype) {
    case DType::kFloat32: sweep_storage<Rule, float>(table, hyper, begin, end); break;
    case DType::kFloat64: sweep_storage<Rule, double>(table, hyper, begin, end); break;
    case DType::kBFloat16: sweep_storage<Rule, bf16_t>(table, hyper, begin, end); break;
    case DType::kFloat16: sweep_storage<Rule, fp16_t>(table, hyper, begin, end); break;
  }
}

// NOTE: [Deterministic reductions]
// Per-tensor sums (LAMB's norms) are computed over segments that depend only on the table
// (each tensor cut into pieces of at most kSegmentNumel elements), never on how threads
// split the work, and the host adds the segments of a tensor in order. So a step gives the
// same bits whatever torch.get_num_threads() is.
template <typename Storage, typename Body>
FO_INLINE void reduce_segment(const BucketTable& table, const Segment& segment, const Body& body, double* out) {
  using S = math_t<Storage>;
  using V = typename VecOf<S>::type;
  constexpr int kNumSums = Body::kNumSums;
  const TensorEntry& entry = table.entries[segment.entry];
  const typename Body::Coefs coefs(entry);
  int64_t j = segment.begin;
  double total[kNumSums];
  for (int k = 0; k < kNumSums; ++k) total[k] = 0.0;
  if constexpr (width_of<V>::value > 1) {
    V sums[kNumSums];
    for (int k = 0; k < kNumSums; ++k) sums[k] = V(S(0));
    for (; j + width_of<V>::value <= segment.end; j += width_of<V>::value) {
      body.template apply_reduce<V>(entry, coefs, j, sums);
    }
    for (int k = 0; k < kNumSums; ++k) total[k] = fo_sum(sums[k]);
  }
  S tail[kNumSums];
  for (int k = 0; k < kNumSums; ++k) tail[k] = S(0);
  for (; j < segment.end; ++j) body.template apply_reduce<S>(entry, coefs, j, tail);
  for (int k = 0; k < kNumSums; ++k) out[k] = total[k] + double(tail[k]);
}

template <template <typename> class Rule, typename Storage, typename StateStorage = Storage, bool kMaster = false>
struct ReduceBody : RuleBody<Rule, Storage, StateStorage, kMaster> {
  static constexpr int kNumSums = Rule<math_t<Storage>>::kNumSums;
  using RuleBody<Rule, Storage, StateStorage, kMaster>::RuleBody;
};

template <typename Storage, typename Body>
FO_INLINE void reduce_segments(const BucketTable& table, const Body& body, const Segment* segments, int64_t first,
                               int64_t last, double* out) {
  for (int64_t s = first; s < last; ++s) reduce_segment<Storage>(table, segments[s], body, out + s * Body::kNumSums);
}

template <template <typename> class Rule, typename Storage, typename Hyper>
FO_INLINE void reduce_storage(const BucketTable& table, const Hyper& hyper, const Segment* segments, int64_t first,
                              int64_t last, double* out) {
  if constexpr (is_same_type<Storage, bf16_t>::value || is_same_type<Storage, fp16_t>::value) {
    if (table.master_weights) {
      ReduceBody<Rule, Storage, float, true> body(hyper);
      body.with_grad_scale(table.grad_scale);
      return reduce_segments<Storage>(table, body, segments, first, last, out);
    }
  }
  with_state_storage<Storage>(table, [&](auto state_tag) {
    using StateStorage = decltype(state_tag);
    ReduceBody<Rule, Storage, StateStorage> body(hyper);
    body.with_grad_scale(table.grad_scale);
    reduce_segments<Storage>(table, body, segments, first, last, out);
  });
}

// Runs reduction Rule over segments [first, last), writing Rule::kNumSums doubles per segment.
template <template <typename> class Rule, typename Hyper>
FO_INLINE void reduce_bucket(const BucketTable& table, const Hyper& hyper, const Segment* segments, int64_t first,
                             int64_t last, double* out) {
  switch (table.dtype) {
    case DType::kFloat32: reduce_storage<Rule, float>(table, hyper, segments, first, last, out); break;
    case DType::kFloat64: reduce_storage<Rule, double>(table, hyper, segments, first, last, out); break;
    case DType::kBFloat16: reduce_storage<Rule, bf16_t>(table, hyper, segments, first, last, out); break;
    case DType::kFloat16: reduce_storage<Rule, fp16_t>(table, hyper, segments, first, last, out); break;
  }
}

// NOTE: [Grad norms in double]
// The global grad norm (clip_grad_norm_, max_grad_norm) reads only the grads and sums in
// double whatever their dtype: a segment's 32768 fp32 squares summed in float lanes would
// lose up to ~1e-4 relative, more than torch's own cascade sums. Four vector accumulators
// hide the add latency; their lanes and the scalar tail combine in a fixed order, so a
// segment's result depends only on the table and the instruction set's vector width.
//
// NOTE: [Interleaved norm streams]
// A read-only pass over one array per thread waits on memory: on the 2-core development VM
// one stream a thread read at ~20-22 GB/s where four streams a thread read at ~23-26 GB/s
// (a standalone two-thread sum of squares over 96 MB; the SGD step, three arrays read and two
// written, moves ~35-39 GB/s). So a thread reduces kNormStreams consecutive segments side by
// side, block by block, as long as any of them has a whole block left. Each segment still has
// its own accumulators, filled in the same order as alone, so the interleaving changes no bit
// of any segment's result.
template <typename Storage, math::NormKind K>
struct NormStream {
  using V = typename VecOf<double>::type;
  static constexpr int W = math::GradNormRule<K>::kVectorizable ? width_of<V>::value : 1;
  static constexpr int kAccumulators = 4;
  static constexpr int64_t kBlock = int64_t(kAccumulators) * W;

  const Storage* grad;
  int64_t j, end;
  V acc[kAccumulators];

  FO_INLINE void start(const BucketTable& table, const Segment& segment) {
    grad = static_cast<const Storage*>(table.entries[segment.entry].ptr[kGradSlot]);
    j = segment.begin;
    end = segment.end;
    for (int a = 0; a < kAccumulators; ++a) acc[a] = V(0.0);
  }

  FO_INLINE int64_t whole_blocks() const { return W > 1 ? (end - j) / kBlock : 0; }

  FO_INLINE void add_block(const math::GradNormRule<K>& rule) {
    constexpr int64_t kBlockBytes = kBlock * int64_t(sizeof(Storage));
    const char* ahead = reinterpret_cast<const char*>(grad + j) + kGradNormPrefetchBytes;  // NOTE: [Prefetching streams]
    for (int64_t line = 0; line < kBlockBytes; line += kCacheLineBytes) __builtin_prefetch(ahead + line, 0);
    for (int a = 0; a < kAccumulators; ++a) acc[a] = rule.combine(acc[a], rule.term(load<V>(grad + j + a * W)));
    j += kBlock;
  }

  // The rest of the segment, then its total.
  FO_INLINE double finish(const math::GradNormRule<K>& rule) {
    double total = 0.0;
    if constexpr (W > 1) {
      for (int64_t blocks = whole_blocks(); blocks > 0; --blocks) add_block(rule);
      for (; j + W <= end; j += W) acc[0] = rule.combine(acc[0], rule.term(load<V>(grad + j)));
      const V both = rule.combine(rule.combine(acc[0], acc[1]), rule.combine(acc[2], acc[3]));
      double lanes[W];
      store(lanes, both);
      for (int l = 0; l < W; ++l) total = rule.combine(total, lanes[l]);
    }
    for (; j < end; ++j) total = rule.combine(total, rule.term(load<double>(grad + j)));
    return total;
  }
};

template <typename Storage, math::NormKind K>
FO_INLINE void grad_norm_segments(const BucketTable& table, const math::GradNormHyper& hyper, const Segment* segments,
                                  int64_t first, int64_t last, double* out) {
  using Stream = NormStream<Storage, K>;
  constexpr int kNormStreams = Stream::W > 1 ? 4 : 1;  // NOTE: [Interleaved norm streams]
  const math::GradNormRule<K> rule(hyper);
  for (int64_t s = first; s < last; s += kNormStreams) {
    const int count = last - s < kNormStreams ? static_cast<int>(last - s) : kNormStreams;
    Stream streams[kNormStreams];
    for (int k = 0; k < count; ++k) streams[k].start(table, segments[s + k]);
    if constexpr (kNormStreams > 1) {
      int64_t shared = streams[0].whole_blocks();
      for (int k = 1; k < count; ++k) shared = streams[k].whole_blocks() < shared ? streams[k].whole_blocks() : shared;
      for (int64_t b = 0; b < shared; ++b) {
        for (int k = 0; k < count; ++k) streams[k].add_block(rule);
      }
      // The longer segments of a group (a tensor's last piece is often short) go on side by side.
      for (bool more = true; more;) {
        more = false;
        for (int k = 0; k < count; ++k) {
          if (streams[k].j + Stream::kBlock > streams[k].end) continue;
          streams[k].add_block(rule);
          more = true;
        }
      }
    }
    for (int k = 0; k < count; ++k) out[s + k] = streams[k].finish(rule);
  }
}

template <typename Storage>
FO_INLINE void grad_norm_segments(const BucketTable& table, const math::GradNormHyper& hyper, const Segment* segments,
                                  int64_t first, int64_t last, double* out) {
  switch (hyper.kind) {
    case math::NormKind::kOne: grad_norm_segments<Storage, math::NormKind::kOne>(table, hyper, segments, first, last, out); break;
    case math::NormKind::kTwo: grad_norm_segments<Storage, math::NormKind::kTwo>(table, hyper, segments, first, last, out); break;
    case math::NormKind::kInf: grad_norm_segments<Storage, math::NormKind::kInf>(table, hyper, segments, first, last, out); break;
    case math::NormKind::kPower: grad_norm_segments<Storage, math::NormKind::kPower>(table, hyper, segments, first, last, out); break;
  }
}

// The grad-norm reduction over segments [first, last): one double per segment.
FO_INLINE void grad_norm_bucket(const BucketTable& table, const math::GradNormHyper& hyper, const Segment* segments,
                                int64_t first, int64_t last, double* out) {
  switch (table.dtype) {
    case DType::kFloat32: grad_norm_segments<float>(table, hyper, segments, first, last, out); break;
    case DType::kFloat64: grad_norm_segments<double>(table, hyper, segments, first, last, out); break;
    case DType::kBFloat16: grad_norm_segments<bf16_t>(table, hyper, segments, first, last, out); break;
    case DType::kFloat16: grad_norm_segments<fp16_t>(table, hyper, segments, first, last, out); break;
  }
}

// grad = grad * scale over [begin, end) of the flat index space, in the grads' math type.
template <typename Storage>
FO_INLINE void scale_grads_sweep(const BucketTable& table, double scale, int64_t begin, int64_t end) {
  using S = math_t<Storage>;
  using V = typename VecOf<S>::type;
  constexpr int W = width_of<V>::value;
  const S s = S(scale);
  for (int64_t i = entry_containing(table, begin); i < table.num_entries && table.prefix[i] < end; ++i) {
    const TensorEntry& entry = table.entries[i];
    Storage* grad = static_cast<Storage*>(entry.ptr[kGradSlot]);
    const int64_t start = table.prefix[i];
    int64_t j = begin > start ? begin - start : 0;
    const int64_t stop = end - start < entry.numel ? end - start : entry.numel;
    if constexpr (W > 1) {
      for (; j + W <= stop; j += W) store(grad + j, load<V>(grad + j) * V(s));
    }
    for (; j < stop; ++j) store(grad + j, load<S>(grad + j) * s);
  }
}

FO_INLINE void scale_grads_bucket(const BucketTable& table, const math::GradScaleHyper& hyper, int64_t begin,
                                  int64_t end) {
  switch (table.dtype) {
    case DType::kFloat32: scale_grads_sweep<float>(table, hyper.scale, begin, end); break;
    case DType::kFloat64: scale_grads_sweep<double>(table, hyper.scale, begin, end); break;
    case DType::kBFloat16: scale_grads_sweep<bf16_t>(table, hyper.scale, begin, end); break;
    case DType::kFloat16: scale_grads_sweep<fp16_t>(table, hyper.scale, begin, end); break;
  }
}

}  // namespace FO_ISA
}  // namespace cpu
}  // namespace fusedoptim
