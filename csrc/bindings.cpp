// The Python module fusedoptim._C: buckets and their per-algorithm steps, and the CPU
// instruction-set controls. With lbfgs_cpu.cpp the only file that talks to Python (the
// registered ops of ops.cpp reach it through torch.ops).
#include <functional>

#include <torch/extension.h>
#include <torch/version.h>

#include "bucket.h"
#include "cpu/dispatch.h"
#include "cuda_table.h"
#include "fusedoptim/cuda/launch.h"
#include "cpu/steps.h"

namespace fusedoptim {
namespace cpu {
void register_lbfgs(pybind11::module_& m);
}  // namespace cpu
}  // namespace fusedoptim

namespace py = pybind11;
using fusedoptim::Bucket;
using namespace fusedoptim::cpu;

namespace {

// GradScaler's grad_scale / found_inf for a CUDA bucket whose kernels take them (with device
// steps; SGD's on any CUDA bucket): a one-element float32 tensor on the bucket's device, read by
// the kernels (or nullptr when not given). `which`: the buckets that take it, for the error.
const float* device_float(const std::optional<at::Tensor>& tensor, bool kernels_take_it, const char* what,
                          const char* which) {
  if (!tensor) return nullptr;
  TORCH_CHECK(kernels_take_it, "fusedoptim: ", what, " goes to the kernels only of ", which);
  TORCH_CHECK(tensor->scalar_type() == at::kFloat && tensor->numel() == 1 && tensor->is_cuda(), "fusedoptim: ", what,
              " must be a one-element float32 CUDA tensor");
  return tensor->data_ptr<float>();
}

DeviceAmp device_amp(const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                     const Bucket& bucket) {
  const char* which = "CUDA buckets with device-side steps";
  return {device_float(grad_scale, bucket.device_scalars(), "grad_scale", which),
          device_float(found_inf, bucket.device_scalars(), "found_inf", which)};
}

// A Tensor lr the kernels read on the device (NOTE: [Device learning rates] in
// csrc/cuda/sweep.cuh): one float32 or float64 element on a CUDA device. One on another device
// than the bucket's is copied (into `holder`, which must outlive the launches), as torch's
// fused Adam copies it to each device.
DeviceLr device_lr(const std::optional<at::Tensor>& lr, const Bucket& bucket, at::Tensor& holder) {
  if (!lr) return {};
  TORCH_CHECK(bucket.device_scalars(), "fusedoptim: a device lr goes to the kernels only with device-side steps");
  const bool float32_or_64 = lr->scalar_type() == at::kFloat || lr->scalar_type() == at::kDouble;
  TORCH_CHECK(lr->is_cuda() && lr->numel() == 1 && float32_or_64,
              "fusedoptim: a device lr must be a one-element float32 or float64 CUDA tensor, got ", lr->scalar_type(),
              " on ", lr->device());
  const c10::Device device = bucket.device_table()->device();
  holder = lr->device() == device ? *lr : lr->to(lr->options().device(device), /*non_blocking=*/true);
  return {holder.data_ptr(), holder.scalar_type() == at::kDouble};
}

// The trailing arguments of the steps that take GradScaler's tensors.
#define FO_AMP_ARGS py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none()
using MaybeTensor = std::optional<at::Tensor>;

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedoptim's compiled core: fused multi-tensor optimizer kernels";
  m.attr("built_with_torch") = py::str(TORCH_VERSION);

  py::class_<Bucket>(m, "Bucket")
      .def(py::init([](std::vector<at::Tensor> params, std::vector<std::string> names,
                       std::vector<std::vector<std::optional<at::Tensor>>> states,
                       std::vector<std::vector<std::optional<at::Tensor>>> scalars, std::vector<int64_t> first_step,
                       std::vector<std::optional<at::Tensor>> masters) {
             auto defined = [](std::vector<std::optional<at::Tensor>>& maybe) {
               std::vector<at::Tensor> out;
               out.reserve(maybe.size());
               for (auto& t : maybe) out.push_back(t ? std::move(*t) : at::Tensor());
               return out;
             };
             std::vector<std::vector<at::Tensor>> state_tensors, scalar_tensors;
             for (auto& per_state : states) state_tensors.push_back(defined(per_state));
             for (auto& per_scalar : scalars) scalar_tensors.push_back(defined(per_scalar));
             return new Bucket(std::move(params), std::move(names), std::move(state_tensors),
                               std::move(scalar_tensors), std::move(first_step), defined(masters));
           }),
           py::arg("params"), py::arg("names"), py::arg("states"), py::arg("scalars"), py::arg("first_step"),
           py::arg("masters") = std::vector<std::optional<at::Tensor>>{})
      .def("prepare", [](Bucket& b) { return static_cast<int>(b.prepare()); })
      .def_property_readonly("num_entries", &Bucket::num_entries)
      .def_property_readonly("has_strided_grads", &Bucket::has_strided_grads)
      .def_property_readonly("device_scalars", &Bucket::device_scalars)
      .def_property_readonly("has_first_steps", &Bucket::has_first_steps)
      .def("adam",
           [](Bucket& b, double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
              bool maximize, bool decoupled_weight_decay, double decay_factor, py::object coefs_at_step,
              MaybeTensor grad_scale, MaybeTensor found_inf, MaybeTensor lr_tensor) {
             const fusedoptim::math::AdamHyper hyper{lr,      beta1,    beta2,   eps, weight_decay, amsgrad,
                                                     maximize, decoupled_weight_decay, decay_factor};
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             at::Tensor lr_here;
             const DeviceLr on_device = device_lr(lr_tensor, b, lr_here);
             if (coefs_at_step.is_none()) {
               py::gil_scoped_release no_gil;
               adam_step(
                   b, hyper, [&](double step) { return fusedoptim::math::AdamStepCoefs::at_step(hyper, step); },
                   amp, on_device);
             } else {
               TORCH_CHECK(!b.device_scalars(), "fusedoptim: Tensor hyperparameters on the host take no device-side steps");
               // Called once per distinct step count, with the GIL held.
               adam_step(b, hyper, [&](double step) {
                 auto pair = coefs_at_step(step).cast<std::pair<double, double>>();
                 return fusedoptim::math::AdamStepCoefs{pair.first, pair.second};
               });
             }
           },
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("amsgrad"), py::arg("maximize"), py::arg("decoupled_weight_decay"), py::arg("decay_factor"),
           py::arg("coefs_at_step") = py::none(), FO_AMP_ARGS, py::arg("device_lr") = py::none())
      .def("sgd",
           [](Bucket& b, double lr, double momentum, double dampening, double weight_decay, bool nesterov,
              bool maximize, MaybeTensor grad_scale, MaybeTensor found_inf) {
             const bool on_cuda = b.device_table() != nullptr;  // no step kernel: any CUDA bucket
             const DeviceAmp amp{device_float(grad_scale, on_cuda, "grad_scale", "CUDA buckets"),
                                 device_float(found_inf, on_cuda, "found_inf", "CUDA buckets")};
             py::gil_scoped_release no_gil;
             sgd_step(b, {lr, momentum, dampening, weight_decay, nesterov, maximize}, amp);
           },
           py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
           py::arg("maximize"), FO_AMP_ARGS)
      // The other algorithms: hyperparameters as torch.optim names them, in its order; then,
      // where they keep a `step`, GradScaler's tensors for CUDA buckets with device steps.
      .def("adadelta",
           [](Bucket& b, double lr, double rho, double eps, double weight_decay, bool maximize, MaybeTensor grad_scale,
              MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             adadelta_step(b, {lr, rho, eps, weight_decay, maximize}, amp);
           },
           py::arg("lr"), py::arg("rho"), py::arg("eps"), py::arg("weight_decay"), py::arg("maximize"), FO_AMP_ARGS)
      .def("adagrad",
           [](Bucket& b, double lr, double lr_decay, double weight_decay, double eps, bool maximize,
              bool lr_is_float32, MaybeTensor grad_scale, MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             adagrad_step(b, {lr, lr_decay, weight_decay, eps, maximize, lr_is_float32}, amp);
           },
           py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
           py::arg("lr_is_float32"), FO_AMP_ARGS)
      .def("adamax",
           [](Bucket& b, double lr, double beta1, double beta2, double eps, double weight_decay, bool maximize,
              bool lr_is_float32, MaybeTensor grad_scale, MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             adamax_step(b, {lr, beta1, beta2, eps, weight_decay, maximize, lr_is_float32}, amp);
           },
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("maximize"), py::arg("lr_is_float32"), FO_AMP_ARGS)
      .def("asgd",
           [](Bucket& b, double lr, double lambd, double alpha, double t0, double weight_decay, bool maximize,
              bool lr_is_float32, bool eta_as_float32, bool mu_as_float32, MaybeTensor grad_scale,
              MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             asgd_step(b, {lr, lambd, alpha, t0, weight_decay, maximize, lr_is_float32, eta_as_float32, mu_as_float32},
                       amp);
           },
           py::arg("lr"), py::arg("lambd"), py::arg("alpha"), py::arg("t0"), py::arg("weight_decay"),
           py::arg("maximize"), py::arg("lr_is_float32"), py::arg("eta_as_float32"), py::arg("mu_as_float32"),
           FO_AMP_ARGS)
      .def("nadam",
           [](Bucket& b, double lr, double beta1, double beta2, double eps, double weight_decay, double momentum_decay,
              bool decoupled_weight_decay, bool maximize, double decay_factor, bool lr_is_float32,
              MaybeTensor grad_scale, MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             nadam_step(b, {lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay, maximize,
                            decay_factor, lr_is_float32}, amp);
           },
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("momentum_decay"), py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("decay_factor"),
           py::arg("lr_is_float32"), FO_AMP_ARGS)
      .def("radam",
           [](Bucket& b, double lr, double beta1, double beta2, double eps, double weight_decay,
              bool decoupled_weight_decay, bool maximize, double decay_factor, MaybeTensor grad_scale,
              MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             radam_step(b, {lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, decay_factor}, amp);
           },
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
           py::arg("decoupled_weight_decay"), py::arg("maximize"), py::arg("decay_factor"), FO_AMP_ARGS)
      .def("rmsprop",
           [](Bucket& b, double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
              bool maximize, MaybeTensor grad_scale, MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             rmsprop_step(b, {lr, alpha, eps, weight_decay, momentum, centered, maximize}, amp);
           },
           py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
           py::arg("centered"), py::arg("maximize"), FO_AMP_ARGS)
      .def("rprop",
           [](Bucket& b, double etaminus, double etaplus, double step_size_min, double step_size_max, bool maximize,
              MaybeTensor grad_scale, MaybeTensor found_inf) {
             const DeviceAmp amp = device_amp(grad_scale, found_inf, b);
             py::gil_scoped_release no_gil;
             rprop_step(b, {etaminus, etaplus, step_size_min, step_size_max, maximize}, amp);
           },
           py::arg("etaminus"), py::arg("etaplus"), py::arg("step_size_min"), py::arg("step_size_max"),
           py::arg("maximize"), FO_AMP_ARGS)
      .def("lion",
           [](Bucket& b, double lr, double beta1, double beta2, double weight_decay, bool maximize) {
             py::gil_scoped_release no_gil;
             lion_step(b, {lr, beta1, beta2, weight_decay, maximize});
           })
      .def("grad_norm",
           [](Bucket& b, double norm_type) {
             const fusedoptim::math::GradNormHyper hyper = grad_norm_hyper(norm_type);
             py::gil_scoped_release no_gil;
             return grad_norm(b, hyper);
           },
           py::arg("norm_type"))
      .def("device_grad_norm",
           [](Bucket& b, double norm_type) {
             const fusedoptim::math::GradNormHyper hyper = grad_norm_hyper(norm_type);
             py::gil_scoped_release no_gil;
             return b.device_grad_norm(hyper);
           },
           py::arg("norm_type"))
      .def("set_grad_scale", &Bucket::set_grad_scale, py::arg("scale"))
      .def("set_device_grad_scale", &Bucket::set_device_grad_scale, py::arg("scale"))
      .def("set_rounding_seed", [](Bucket& b, int64_t seed) { b.set_rounding_seed(static_cast<uint64_t>(seed)); },
           py::arg("seed"))
      .def("set_rounding_step", &Bucket::set_rounding_step, py::arg("step"))
      .def("grad_squares",
           [](Bucket& b) {
             py::gil_scoped_release no_gil;
             return grad_squares(b);
           })
      .def("lamb",
           [](Bucket& b, double lr, double beta1, double beta2, double eps, double weight_decay, bool bias_correction,
              bool grad_averaging, bool decoupled_weight_decay, bool always_adapt, bool maximize, double clip) {
             py::gil_scoped_release no_gil;
             lamb_step(b, {beta1, beta2, eps, weight_decay, grad_averaging, decoupled_weight_decay, maximize, clip},
                       lr, bias_correction, always_adapt);
           });

  register_lbfgs(m);

  m.def("cuda_kernels_compiled", [] { return fusedoptim::cuda::kernels() != nullptr; });

  // fusedoptim.clip_grad_norm_'s passes over a list of grads: (reduced value, indices of the
  // grads left to torch) and the indices scale_grad_list left to torch.
  m.def("grad_norm_list", [](const std::vector<at::Tensor>& grads, double norm_type) {
    const fusedoptim::math::GradNormHyper hyper = grad_norm_hyper(norm_type);
    std::vector<int64_t> others;
    py::gil_scoped_release no_gil;
    const double reduced = grad_norm_of_list(grads, hyper, others);
    return std::make_pair(reduced, others);
  });
  m.def("scale_grad_list", [](const std::vector<at::Tensor>& grads, double scale) {
    std::vector<int64_t> others;
    py::gil_scoped_release no_gil;
    scale_grad_list(grads, scale, others);
    return others;
  });

  m.def("cpu_capability", [] { return std::string(capability_name(active_capability())); });
  m.def("set_cpu_capability", [](const std::string& name) { set_active_capability(capability_from_name(name)); });
  m.def("compiled_cpu_capabilities", [] {
    std::vector<std::string> names;
    for (int c = 0; c < kNumCapabilities; ++c)
      if (capability_compiled(CpuCapability(c))) names.emplace_back(capability_name(CpuCapability(c)));
    return names;
  });
  m.def("available_cpu_capabilities", [] {
    std::vector<std::string> names;
    for (int c = 0; c < kNumCapabilities; ++c)
      if (capability_compiled(CpuCapability(c)) && capability_supported(CpuCapability(c)))
        names.emplace_back(capability_name(CpuCapability(c)));
    return names;
  });
}
