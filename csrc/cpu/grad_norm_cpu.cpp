// The global grad norm and the clip's scaling pass over a bucket's grads on the CPU
// (math/grad_norm.h): fusedoptim.clip_grad_norm_ and the optimizers' max_grad_norm.
#include <cmath>
#include <unordered_set>

#include <c10/util/Exception.h>

#include "cpu/dispatch.h"
#include "cpu/steps.h"

namespace fusedoptim {
namespace cpu {

math::GradNormHyper grad_norm_hyper(double norm_type) {
  if (norm_type == 1.0) return {math::NormKind::kOne, norm_type};
  if (norm_type == 2.0) return {math::NormKind::kTwo, norm_type};
  if (std::isinf(norm_type) && norm_type > 0) return {math::NormKind::kInf, norm_type};
  TORCH_CHECK_VALUE(std::isfinite(norm_type) && norm_type > 0.0,
                    "fusedoptim: the fused grad norm takes norm_type > 0 (or inf), got ", norm_type);
  return {math::NormKind::kPower, norm_type};
}

double combine_grad_norms(const math::GradNormHyper& hyper, double a, double b) {
  if (hyper.kind != math::NormKind::kInf) return a + b;
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return a > b ? a : b;
}

double grad_norm(Bucket& bucket, const math::GradNormHyper& hyper) {
  TORCH_CHECK(bucket.device_table() == nullptr, "fusedoptim: the fused grad norm is for CPU buckets");
  std::vector<double> sums;
  parallel_reduce(kernels_for(active_capability()).grad_norm, bucket.table(), hyper, bucket.segments(kSegmentNumel),
                  1, sums);
  double total = 0.0;
  for (double s : sums) total = combine_grad_norms(hyper, total, s);  // in order: NOTE: [Deterministic reductions]
  return total;
}

void scale_grads(Bucket& bucket, double scale) {
  TORCH_CHECK(bucket.device_table() == nullptr, "fusedoptim: the fused grad scaling is for CPU buckets");
  parallel_sweep(kernels_for(active_capability()).scale_grads, bucket.table(), math::GradScaleHyper{scale});
}

namespace {

// NOTE: [Grad lists without buckets]
// fusedoptim.clip_grad_norm_ gets a new list of grads on every call, so it builds no Bucket
// (whose construction validates params, states and names, ~2 us a tensor): one transient
// table per storage dtype holds just the grads' addresses and lengths. A tensor the kernels
// can't take (not a dense contiguous CPU tensor of a float dtype with memory of its own;
// complex unless allowed; for scaling, the same memory twice, which torch scales twice) is
// returned by index, for torch to handle.
struct ListTable {
  DType dtype;
  std::vector<TensorEntry> entries;
  std::vector<int64_t> prefix{0};
  std::vector<Segment> segments;

  BucketTable table() const {
    return BucketTable{entries.data(), prefix.data(), static_cast<int64_t>(entries.size()), prefix.back(), dtype};
  }
};

bool list_dtype(at::ScalarType type, bool allow_complex, DType& out) {
  switch (type) {
    case at::kFloat: out = DType::kFloat32; return true;
    case at::kDouble: out = DType::kFloat64; return true;
    case at::kBFloat16: out = DType::kBFloat16; return true;
    case at::kHalf: out = DType::kFloat16; return true;
    case at::kComplexFloat: out = DType::kFloat32; return allow_complex;
    case at::kComplexDouble: out = DType::kFloat64; return allow_complex;
    default: return false;
  }
}

std::vector<ListTable> list_tables(const std::vector<at::Tensor>& grads, bool allow_complex, bool unique,
                                   std::vector<int64_t>& others) {
  std::vector<ListTable> tables;
  std::unordered_set<const void*> seen;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    DType dtype;
    const bool takes = g.defined() && g.device().is_cpu() && g.layout() == c10::kStrided && g.is_contiguous() &&
                       !g.unsafeGetTensorImpl()->is_python_dispatch() &&
                       list_dtype(g.scalar_type(), allow_complex, dtype) &&
                       (!unique || g.numel() == 0 || seen.insert(g.data_ptr()).second);
    if (!takes) {
      others.push_back(static_cast<int64_t>(i));
      continue;
    }
    if (g.numel() == 0) continue;
    ListTable* table = nullptr;
    for (ListTable& t : tables) table = t.dtype == dtype ? &t : table;
    if (table == nullptr) {
      tables.push_back(ListTable{dtype});
      table = &tables.back();
    }
    TensorEntry entry{};
    entry.ptr[kParamSlot] = entry.ptr[kGradSlot] = g.data_ptr();
    entry.numel = g.is_complex() ? 2 * g.numel() : g.numel();
    table->entries.push_back(entry);
    table->prefix.push_back(table->prefix.back() + entry.numel);
  }
  for (ListTable& t : tables) {
    for (size_t e = 0; e < t.entries.size(); ++e) {
      for (int64_t begin = 0; begin < t.entries[e].numel; begin += kSegmentNumel) {
        t.segments.push_back(Segment{static_cast<int64_t>(e), begin, std::min(begin + kSegmentNumel, t.entries[e].numel)});
      }
    }
  }
  return tables;
}

}  // namespace

double grad_norm_of_list(const std::vector<at::Tensor>& grads, const math::GradNormHyper& hyper,
                         std::vector<int64_t>& others) {
  double total = 0.0;
  std::vector<double> sums;
  for (const ListTable& t : list_tables(grads, hyper.kind == math::NormKind::kTwo, false, others)) {
    parallel_reduce(kernels_for(active_capability()).grad_norm, t.table(), hyper, t.segments, 1, sums);
    for (double s : sums) total = combine_grad_norms(hyper, total, s);
  }
  return total;
}

void scale_grad_list(const std::vector<at::Tensor>& grads, double scale, std::vector<int64_t>& others) {
  for (const ListTable& t : list_tables(grads, false, true, others)) {
    parallel_sweep(kernels_for(active_capability()).scale_grads, t.table(), math::GradScaleHyper{scale});
  }
}

}  // namespace cpu
}  // namespace fusedoptim
