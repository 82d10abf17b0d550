// The fused steps as registered torch ops, torch.ops.fusedoptim.<algo>_: lists of params,
// grads and states in, params and states updated in place, with the same host code and
// kernels as the optimizers (csrc/cpu/<algo>_cpu.cpp). Their fake implementations, for
// torch.compile and opcheck, are in fusedoptim/_ops.py.
//
// NOTE: [Ops and buckets]
// The optimizers keep a Bucket per param group and dtype across steps (its address table
// is built once per plan); an op builds transient buckets from its lists on every call,
// which costs a pass over the tensors' metadata before the sweep. The hyperparameters of
// each op are those of the matching Bucket method in bindings.cpp, in the same order, so a
// step's arguments can be sent either way. States are passed in the slot order of the
// algorithm's rule (fusedoptim/<algo>.py's _state_names); an optional state the options do
// not use is an empty list. 0-dim scalar states (step, ASGD's eta and mu, NAdam's
// mu_product) follow, in _scalar_names order.
#include <map>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "bucket.h"
#include "cpu/steps.h"

namespace fusedoptim {
namespace {

using at::Tensor;
using at::TensorList;

// Runs step(bucket) over one bucket per storage dtype of `params`. Raises, naming the op and
// the list entry, on anything the fused kernels cannot take.
template <typename Step>
void step_lists(const char* op, TensorList params, TensorList grads, std::vector<TensorList> states,
                std::vector<TensorList> scalars, bool first_step, const Step& step) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "fusedoptim::", op, ": ", grads.size(), " grads for ", n, " params");
  std::vector<TensorList> used_states;
  for (TensorList list : states) {
    if (list.empty()) continue;  // an optional state these options do not use
    TORCH_CHECK(list.size() == n, "fusedoptim::", op, ": a state list has ", list.size(), " tensors for ", n,
                " params");
    used_states.push_back(list);
  }
  for (TensorList list : scalars)
    TORCH_CHECK(list.size() == n, "fusedoptim::", op, ": a list of 0-dim states has ", list.size(),
                " tensors for ", n, " params");
  // One bucket per device and storage dtype; complex params join their real dtype.
  std::map<std::pair<std::string, at::ScalarType>, std::vector<size_t>> buckets;
  for (size_t i = 0; i < n; ++i) {
    buckets[{params[i].device().str(), c10::toRealValueType(params[i].scalar_type())}].push_back(i);
  }
  for (const auto& [kind, indices] : buckets) {
    std::vector<Tensor> bucket_params, bucket_grads;
    std::vector<std::string> names;
    std::vector<std::vector<Tensor>> bucket_states(used_states.size()), bucket_scalars(scalars.size());
    for (size_t i : indices) {
      bucket_params.push_back(params[i]);
      bucket_grads.push_back(grads[i]);
      names.push_back("params[" + std::to_string(i) + "]");
      for (size_t s = 0; s < used_states.size(); ++s) bucket_states[s].push_back(used_states[s][i]);
      for (size_t k = 0; k < scalars.size(); ++k) bucket_scalars[k].push_back(scalars[k][i]);
    }
    Bucket bucket(std::move(bucket_params), std::move(names), std::move(bucket_states), std::move(bucket_scalars),
                  std::vector<int64_t>(indices.size(), first_step ? 1 : 0));
    bucket.use_grads(std::move(bucket_grads));
    TORCH_CHECK(bucket.prepare() == Bucket::kReady, "fusedoptim::", op,
                ": params and states must be contiguous tensors of a float dtype on the CPU or CUDA, grads dense "
                "and on their param's device");
    step(bucket);
  }
}

void sgd_(TensorList params, TensorList grads, TensorList momentum_buffers, double lr, double momentum,
          double dampening, double weight_decay, bool nesterov, bool maximize, bool is_first_step) {
  TORCH_CHECK(momentum_buffers.empty() == (momentum == 0.0),
              "fusedoptim::sgd_: momentum_buffers must be given exactly when momentum != 0");
  step_lists("sgd_", params, grads, {momentum_buffers}, {}, is_first_step, [&](Bucket& b) {
    cpu::sgd_step(b, {lr, momentum, dampening, weight_decay, nesterov, maximize});
  });
}

void adam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
           TensorList max_exp_avg_sqs, TensorList state_steps, double lr, double beta1, double beta2, double eps,
           double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay, double decay_factor) {
  TORCH_CHECK(max_exp_avg_sqs.empty() != amsgrad, "fusedoptim::adam_: max_exp_avg_sqs must be given exactly when amsgrad");
  const math::AdamHyper hyper{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
                              decay_factor};
  step_lists("adam_", params, grads, {exp_avgs, exp_avg_sqs, max_exp_avg_sqs}, {state_steps}, false, [&](Bucket& b) {
    cpu::adam_step(b, hyper, [&](double step) { return math::AdamStepCoefs::at_step(hyper, step); });
  });
}

void adadelta_(TensorList params, TensorList grads, TensorList square_avgs, TensorList acc_deltas,
               TensorList state_steps, double lr, double rho, double eps, double weight_decay, bool maximize) {
  step_lists("adadelta_", params, grads, {square_avgs, acc_deltas}, {state_steps}, false,
             [&](Bucket& b) { cpu::adadelta_step(b, {lr, rho, eps, weight_decay, maximize}); });
}

void adagrad_(TensorList params, TensorList grads, TensorList state_sums, TensorList state_steps, double lr,
              double lr_decay, double weight_decay, double eps, bool maximize, bool lr_is_float32) {
  step_lists("adagrad_", params, grads, {state_sums}, {state_steps}, false, [&](Bucket& b) {
    cpu::adagrad_step(b, {lr, lr_decay, weight_decay, eps, maximize, lr_is_float32});
  });
}

void adamax_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_infs, TensorList state_steps,
             double lr, double beta1, double beta2, double eps, double weight_decay, bool maximize,
             bool lr_is_float32) {
  step_lists("adamax_", params, grads, {exp_avgs, exp_infs}, {state_steps}, false, [&](Bucket& b) {
    cpu::adamax_step(b, {lr, beta1, beta2, eps, weight_decay, maximize, lr_is_float32});
  });
}

void asgd_(TensorList params, TensorList grads, TensorList axs, TensorList state_steps, TensorList etas,
           TensorList mus, double lr, double lambd, double alpha, double t0, double weight_decay, bool maximize,
           bool lr_is_float32, bool eta_as_float32, bool mu_as_float32) {
  step_lists("asgd_", params, grads, {axs}, {state_steps, etas, mus}, false, [&](Bucket& b) {
    cpu::asgd_step(b, {lr, lambd, alpha, t0, weight_decay, maximize, lr_is_float32, eta_as_float32, mu_as_float32});
  });
}

void nadam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
            TensorList mu_products, double lr, double beta1, double beta2, double eps, double weight_decay,
            double momentum_decay, bool decoupled_weight_decay, bool maximize, double decay_factor,
            bool lr_is_float32) {
  step_lists("nadam_", params, grads, {exp_avgs, exp_avg_sqs}, {state_steps, mu_products}, false, [&](Bucket& b) {
    cpu::nadam_step(b, {lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize,
                        decay_factor, lr_is_float32});
  });
}

void radam_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
            double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
            bool maximize, double decay_factor) {
  step_lists("radam_", params, grads, {exp_avgs, exp_avg_sqs}, {state_steps}, false, [&](Bucket& b) {
    cpu::radam_step(b, {lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, decay_factor});
  });
}

void rmsprop_(TensorList params, TensorList grads, TensorList square_avgs, TensorList momentum_buffers,
              TensorList grad_avgs, TensorList state_steps, double lr, double alpha, double eps, double weight_decay,
              double momentum, bool centered, bool maximize) {
  TORCH_CHECK(momentum_buffers.empty() == (momentum <= 0.0) && grad_avgs.empty() == !centered,
              "fusedoptim::rmsprop_: momentum_buffers must be given exactly when momentum > 0, grad_avgs exactly "
              "when centered");
  step_lists("rmsprop_", params, grads, {square_avgs, momentum_buffers, grad_avgs}, {state_steps}, false,
             [&](Bucket& b) { cpu::rmsprop_step(b, {lr, alpha, eps, weight_decay, momentum, centered, maximize}); });
}

void rprop_(TensorList params, TensorList grads, TensorList prevs, TensorList step_sizes, TensorList state_steps,
            double etaminus, double etaplus, double step_size_min, double step_size_max, bool maximize) {
  step_lists("rprop_", params, grads, {prevs, step_sizes}, {state_steps}, false, [&](Bucket& b) {
    cpu::rprop_step(b, {etaminus, etaplus, step_size_min, step_size_max, maximize});
  });
}

void lion_(TensorList params, TensorList grads, TensorList exp_avgs, double lr, double beta1, double beta2,
           double weight_decay, bool maximize) {
  step_lists("lion_", params, grads, {exp_avgs}, {}, false,
             [&](Bucket& b) { cpu::lion_step(b, {lr, beta1, beta2, weight_decay, maximize}); });
}

void lamb_(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
           double lr, double beta1, double beta2, double eps, double weight_decay, bool bias_correction,
           bool grad_averaging, bool decoupled_weight_decay, bool always_adapt, bool maximize, double clip) {
  step_lists("lamb_", params, grads, {exp_avgs, exp_avg_sqs}, {state_steps}, false, [&](Bucket& b) {
    cpu::lamb_step(b, {beta1, beta2, eps, weight_decay, grad_averaging, decoupled_weight_decay, maximize, clip}, lr,
                   bias_correction, always_adapt);
  });
}

// The sum of squares of every element of `grads`, a float64 0-dim tensor (what global
// grad-norm clipping needs; summed in the fixed order of NOTE: [Deterministic reductions]).
Tensor grad_squares(TensorList grads) {
  double total = 0.0;
  step_lists("grad_squares", grads, grads, {}, {}, false, [&](Bucket& b) { total += cpu::grad_squares(b); });
  return at::zeros({}, at::TensorOptions().dtype(at::kDouble)).fill_(total);
}

// What fusedoptim.clip_grad_norm_ needs of its CPU grads (math/grad_norm.h): grad_norm
// reduces them to one float64 0-dim value, sum |g|^p or max |g| for inf (complex grads:
// their real views, so norm_type 2 only); scale_grads_ multiplies them in place.
Tensor grad_norm(TensorList grads, double norm_type) {
  const math::GradNormHyper hyper = cpu::grad_norm_hyper(norm_type);
  for (size_t i = 0; i < grads.size(); ++i)
    TORCH_CHECK(!grads[i].is_complex() || hyper.kind == math::NormKind::kTwo, "fusedoptim::grad_norm: grads[", i,
                "] is complex, which only norm_type 2 takes");
  double total = 0.0;
  step_lists("grad_norm", grads, grads, {}, {}, false,
             [&](Bucket& b) { total = cpu::combine_grad_norms(hyper, total, cpu::grad_norm(b, hyper)); });
  return at::zeros({}, at::TensorOptions().dtype(at::kDouble)).fill_(total);
}

void scale_grads_(TensorList grads, double scale) {
  step_lists("scale_grads_", grads, grads, {}, {}, false, [&](Bucket& b) { cpu::scale_grads(b, scale); });
}

}  // namespace

TORCH_LIBRARY(fusedoptim, m) {
  m.def("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, float momentum, "
        "float dampening, float weight_decay, bool nesterov, bool maximize, bool is_first_step) -> ()");
  m.def("adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay, float decay_factor) -> ()");
  m.def("adadelta_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] acc_deltas, "
        "Tensor(d!)[] state_steps, float lr, float rho, float eps, float weight_decay, bool maximize) -> ()");
  m.def("adagrad_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, Tensor(c!)[] state_steps, "
        "float lr, float lr_decay, float weight_decay, float eps, bool maximize, bool lr_is_float32=False) -> ()");
  m.def("adamax_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_infs, "
        "Tensor(d!)[] state_steps, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "bool maximize, bool lr_is_float32=False) -> ()");
  m.def("asgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] axs, Tensor(c!)[] state_steps, "
        "Tensor(d!)[] etas, Tensor(e!)[] mus, float lr, float lambd, float alpha, float t0, float weight_decay, "
        "bool maximize, bool lr_is_float32=False, bool eta_as_float32=True, bool mu_as_float32=True) -> ()");
  m.def("nadam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] state_steps, Tensor(e!)[] mu_products, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, float momentum_decay, bool decoupled_weight_decay, bool maximize, "
        "float decay_factor, bool lr_is_float32=False) -> ()");
  m.def("radam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] state_steps, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "bool decoupled_weight_decay, bool maximize, float decay_factor) -> ()");
  m.def("rmsprop_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] momentum_buffers, "
        "Tensor(d!)[] grad_avgs, Tensor(e!)[] state_steps, float lr, float alpha, float eps, float weight_decay, "
        "float momentum, bool centered, bool maximize) -> ()");
  m.def("rprop_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] prevs, Tensor(c!)[] step_sizes, "
        "Tensor(d!)[] state_steps, float etaminus, float etaplus, float step_size_min, float step_size_max, "
        "bool maximize) -> ()");
  m.def("lion_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, float lr, float beta1, float beta2, "
        "float weight_decay, bool maximize) -> ()");
  m.def("lamb_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] state_steps, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "bool bias_correction, bool grad_averaging, bool decoupled_weight_decay, bool always_adapt, "
        "bool maximize, float clip) -> ()");
  m.def("grad_squares(Tensor[] grads) -> Tensor");
  m.def("grad_norm(Tensor[] grads, float norm_type) -> Tensor");
  m.def("scale_grads_(Tensor(a!)[] grads, float scale) -> ()");
}

namespace {

// The step ops, for each dispatch key whose tensors the buckets take.
void impl_step_ops(torch::Library& m) {
  m.impl("sgd_", &sgd_);
  m.impl("adam_", &adam_);
  m.impl("adadelta_", &adadelta_);
  m.impl("adagrad_", &adagrad_);
  m.impl("adamax_", &adamax_);
  m.impl("asgd_", &asgd_);
  m.impl("nadam_", &nadam_);
  m.impl("radam_", &radam_);
  m.impl("rmsprop_", &rmsprop_);
  m.impl("rprop_", &rprop_);
  m.impl("lion_", &lion_);
  m.impl("lamb_", &lamb_);
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedoptim, CPU, m) {
  impl_step_ops(m);
  m.impl("grad_squares", &grad_squares);
  m.impl("grad_norm", &grad_norm);
  m.impl("scale_grads_", &scale_grads_);
}

// The same host code runs CUDA buckets (their kernels launch on the current stream); with a
// CPU-only build a CUDA bucket raises when it is made. The grad reductions and scaling are CPU
// passes (fusedoptim.clip_grad_norm_ gives CUDA grads to torch).
TORCH_LIBRARY_IMPL(fusedoptim, CUDA, m) { impl_step_ops(m); }

}  // namespace fusedoptim
