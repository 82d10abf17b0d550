"""The base of every fusedoptim optimizer: torch.optim's interface over fused buckets.

NOTE: [Buckets and the plan]
A bucket is the params of one param group that share a storage dtype and a device, the CPU or
one CUDA device (complex params count as their real dtype). For each bucket the plan holds one flat buffer per state
name (exp_avg, ...), one step counter per param, and a compiled `_C.Bucket` that turns the
params' grads into the flat address table the kernels sweep in one parallel region. The
views the user sees in `self.state[p]` are slices of those buffers, under torch's keys, so
`state_dict()` has exactly torch.optim's format.

The plan is built on the first step and rebuilt only when something changed:
- param groups added (add_param_group), replaced (load_state_dict) or edited in place
  (their `params` list or an option that changes the state layout, see `_layout_key`);
- `self.state` replaced or any entry of it changed (see NOTE: [Tracked state]);
- the compiled bucket reports that its table no longer fits: a grad appeared for a param
  without state, a param changed dtype, size, device or contiguity, or a grad became sparse.
So a step costs O(param groups) in Python plus a few tens of nanoseconds per tensor in C++.

NOTE: [Reference path]
Params the kernels can't take (neither on the CPU nor on CUDA with the CUDA kernels built,
CUDA params of capturable=True or fused=True groups, which keep `step` on the device (see
NOTE: [CUDA steps]), non-contiguous, sparse grads, duplicated in a
group, tensor subclasses without memory of their own, DTensors whose update is not local: see
NOTE: [DTensor params] in _dtensor.py) and whole groups with differentiable=True run
`fusedoptim._reference`: plain torch ops in torch.optim's single-tensor order, on per-param
state tensors. It is correct, just not fused; device, layout and DTensor cases warn once
(ReferencePathWarning).

NOTE: [max_grad_norm]
Every fused optimizer but LAMB (whose max_grad_norm is Apex's) takes `max_grad_norm` and
`norm_type`: a step is then `torch.nn.utils.clip_grad_norm_(all params, max_grad_norm,
norm_type)` followed by the step, except that the grads are not modified. The norm is over
every grad of every group, computed once per step and norm type by the fused reduction of
fusedoptim.clip_grad_norm_ (bucket by bucket, CUDA buckets on their device without a host
sync, then torch's norms for the reference path's grads); its dtype is the grads' promoted
dtype, and the coefficient torch's expression
`clamp(max_grad_norm / (norm + 1e-6), max=1)` in it. The kernels multiply each grad by the
coefficient as they load it (BucketTable::grad_scale), so clipping costs one extra read of
the grads, not a scaling pass; reference-path params step on scaled copies of their grads.
For fp32/fp64 params that is torch's clip + step to the bit given the same coefficient; for
bf16/fp16 the scaled grad is not rounded to 16 bits before the update as torch's in-place
clip rounds it. A coefficient of 1 (norm below the max) leaves the step bit-identical to an
unclipped one. Groups with differentiable=True and DTensor params refuse the option.

NOTE: [State dtypes]
`state_dtype` (every fused optimizer): the elementwise states of a group's params are stored
in that dtype while the params keep theirs; the kernels load them into the params' math type
(fp32 for 16-bit params), update and round them back once per step. The kernels exist for
fp32 params with bf16 states (half the state memory) and for bf16/fp16 params with fp32
states (csrc/include/fusedoptim/cpu/sweep.h has why only these); any other pair raises a
ValueError naming the option when the plan is built, before anything is modified: fp64
params (an fp64 model wants fp64 moments), fp16 states (their range loses Adam's second
moment), complex params, params on the reference path (it keeps torch's states), and
differentiable=True or DTensor params (at construction). A state_dtype equal to the params'
dtype changes nothing. 0-dim states (step, ...) keep torch's dtypes. `state_dict()` holds the
states in state_dtype; torch.optim loads them (it casts states to the param dtype), and
loading any state_dict casts them back into state_dtype buffers.

NOTE: [Master weights]
`master_weights=True` (every fused optimizer): each bf16/fp16 param of the group gets an fp32
copy, state key `master_param` (views of one flat buffer per bucket, like the other states,
made from the param's values on its first step). The kernels update the master with the
16-bit grad in fp32 and write the param rounded (nearest even) from it in the same pass
(NOTE: [Master weights] in csrc/include/fusedoptim/cpu/sweep.h), so updates smaller than
half a 16-bit ulp accumulate instead of vanishing. The states are fp32 then (state_dtype
None or torch.float32). fp32/fp64 params are untouched by the option (no copy). The master is
the truth: writing the 16-bit param directly (load_state_dict of the model) does not reach
it; build the optimizer again, or write `state[p]["master_param"]` too. `state_dict()` holds
the masters in fp32 and load_state_dict keeps them fp32 (torch's would cast them to the
param dtype); torch.optim loads such a state_dict and ignores the key (casting it to 16 bits).
Not with differentiable=True, DTensor params, or params on the reference path (ValueError).

NOTE: [Stochastic rounding]
`stochastic_rounding=True` (every fused optimizer): the update of a bf16/fp16 param is
computed in fp32 as always and stored rounded to one of its two 16-bit neighbours at random,
with the probabilities that make the expected stored value the fp32 result; the states keep
round-to-nearest. The random bits are a hash of a per-step seed and the element's index
(NOTE: [Stochastic rounding] in csrc/include/fusedoptim/dtype.h); each step draws one seed
per 16-bit bucket from torch's default CPU generator, so torch.manual_seed reproduces a run
and the thread count does not matter. It replaces master weights for memory-bound training,
so it refuses master_weights=True and a state_dtype (no kernels for those pairs), and, like
them, differentiable=True, DTensor params and 16-bit params on the reference path.

NOTE: [Failed steps change nothing]
A step first validates every grad (the compiled prepare() for buckets, `_check_step` for the
rest) and only then commits a new plan's state views and runs kernels. A new plan
builds its buffers without touching `self.state`, so an error leaves params and state as they were.
"""

import contextlib
import math
import warnings

import torch
from torch.optim.optimizer import Optimizer, _get_scalar_dtype, _use_grad_for_differentiable

from fusedoptim import _dtensor, _extension
from fusedoptim._state import StateMap, copy_loaded_tensors

__all__ = ["FusedOptimizer", "ReferencePathWarning"]

# Appended to the docstrings of the optimizers that take these options (NOTE: [max_grad_norm]).
OPTIONS_DOC = """
    fusedoptim's options, keyword-only:
        max_grad_norm (float, optional): clip the norm of all the optimizer's grads (every
            group) to this before the update: the step is torch.nn.utils.clip_grad_norm_
            followed by step(), with the clip folded into the update kernel (the grads
            themselves are left unmodified). None: no clipping (default: None)
        norm_type (float or 'inf', optional): the p-norm max_grad_norm bounds (default: 2.0)
        state_dtype (torch.dtype, optional): store the elementwise states (exp_avg, ...) in
            this dtype while the params keep theirs; the math stays in fp32 (NOTE: [State
            dtypes] in fusedoptim/optimizer.py). None: the params' dtype (default: None)
        master_weights (bool, optional): keep an fp32 master copy of each bf16/fp16 param in
            the state (``master_param``); the update runs on it in fp32 and the param is
            rounded from it in the same pass (NOTE: [Master weights] in
            fusedoptim/optimizer.py). No effect on fp32/fp64 params (default: False)
        stochastic_rounding (bool, optional): round the fp32 result into bf16/fp16 params
            stochastically (unbiased, reproducible from torch.manual_seed) instead of to
            nearest; not with master_weights or state_dtype (NOTE: [Stochastic rounding] in
            fusedoptim/optimizer.py). No effect on fp32/fp64 params (default: False)
"""

# Element offsets of params inside a flat state buffer are multiples of this, so every
# param's state starts on a 64-byte boundary (and complex views stay aligned).
_OFFSET_ALIGNMENT = 16

_FUSED_DTYPES = (
    torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64, torch.complex128,
)


class ReferencePathWarning(UserWarning):
    """Some params take the plain-torch reference path (correct, but not fused)."""


def _real_dtype(dtype):
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def _scalar(value):
    """A hyperparameter as a Python float (torch accepts 1-element tensors for some)."""
    return value.item() if isinstance(value, torch.Tensor) else float(value)


def _lr_is_float32(lr):
    """Whether torch derives step sizes from this lr in float32 tensor arithmetic (see
    NOTE: [Tensor learning rates] in csrc/include/fusedoptim/math/rule.h)."""
    return isinstance(lr, torch.Tensor) and lr.dtype == torch.float32


def _flat_view(buffer, offset, param):
    """The slice of a flat state buffer that holds `param`'s state, shaped like `param`."""
    if param.is_complex():
        return torch.view_as_complex(buffer.narrow(0, offset, 2 * param.numel()).view(*param.shape, 2))
    return buffer.narrow(0, offset, param.numel()).view(param.shape)


def _fusable_device(device):
    return device.type == "cpu" or (device.type == "cuda" and _extension.cuda_kernels_compiled())


def _fusable_tensor(tensor):
    """Whether the kernels can take `tensor` (a param, or a DTensor param's local shard)."""
    return (
        _fusable_device(tensor.device) and tensor.dtype in _FUSED_DTYPES and tensor.is_contiguous()
        and tensor.layout == torch.strided and _dtensor.has_own_memory(tensor)
    )


# NOTE: [CUDA steps]
# The CUDA kernels take their per-tensor coefficients (bias corrections and the like) from the
# host, which computes them from the `step` counters as on the CPU. torch.optim keeps `step` on
# the CPU too, except for capturable=True and fused=True groups, which keep it on the device
# so that a step needs no host sync and can be captured in a CUDA graph. For those, a CUDA step
# kernel advances `step` (and NAdam's mu_product, ASGD's eta and mu) on the device and computes
# the coefficients from it (`_device_steps`: every algorithm with a `step`, its hyperparameters
# Python numbers, or for Adam and AdamW a Tensor lr, and its 0-dim states float32), so the step
# runs with no host sync, GradScaler's unscaling and skipping included (NOTE: [Device steps and
# GradScaler] in csrc/cuda/sweep.cuh), and Adam's kernels read a CUDA Tensor lr on the device
# (NOTE: [Device learning rates] there); the CUDA params of other such groups (Tensor betas, a
# Tensor lr of another algorithm, float64 steps under a float64 default dtype) take the
# reference path.
def _keeps_step_on_device(group):
    return bool(group.get("capturable") or group.get("fused"))


def _tensor_kind(tensor):
    """What a tensor is, for the ReferencePathWarning."""
    kind = f"{tensor.device.type}/{tensor.dtype}/{'contiguous' if tensor.is_contiguous() else 'strided'}"
    return kind if _dtensor.has_own_memory(tensor) else f"{kind} {type(tensor).__name__} without memory of its own"


def _reusable_state(value, param, dtype):
    """Whether an existing state tensor can be swept in place (it stays the live tensor):
    a contiguous tensor on the param's device, of its shape and the state dtype `dtype`."""
    return (
        isinstance(value, torch.Tensor) and value.device == param.device and value.layout == torch.strided
        and value.dtype == dtype and value.shape == param.shape and value.is_contiguous()
    )


# The state dtypes the kernels pair with each param dtype (NOTE: [State dtypes]).
_STATE_DTYPE_PAIRS = {torch.float32: (torch.bfloat16,), torch.bfloat16: (torch.float32,), torch.float16: (torch.float32,)}
_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _state_dtype_for(group, param):
    """The dtype of `param`'s elementwise states in `group`; ValueError if the kernels have
    no such pair (NOTE: [State dtypes])."""
    wanted = group.get("state_dtype")
    if _uses_master(group, param):
        return torch.float32  # _check_group_options allowed None and float32 only
    if wanted is None or wanted == param.dtype:
        return param.dtype
    if param.is_complex() or wanted not in _STATE_DTYPE_PAIRS.get(param.dtype, ()):
        raise ValueError(
            f"state_dtype={wanted} is not supported for {param.dtype} params: the fused kernels store "
            "bfloat16 states for float32 params and float32 states for bfloat16 and float16 params")
    return wanted


def _uses_state_dtype(group, param):
    """Whether `group`'s state_dtype differs from what `param`'s states would be anyway."""
    wanted = group.get("state_dtype")
    return wanted is not None and wanted != param.dtype


def _uses_master(group, param):
    """Whether `param` gets fp32 master weights in `group` (NOTE: [Master weights])."""
    return bool(group.get("master_weights")) and param.dtype in (torch.bfloat16, torch.float16)


def _uses_stochastic_rounding(group, param):
    """Whether `param`'s update is rounded stochastically in `group` (NOTE: [Stochastic rounding])."""
    return bool(group.get("stochastic_rounding")) and param.dtype in (torch.bfloat16, torch.float16)


def _refuse_differentiable_and_dtensors(group, option):
    """ValueError naming `option` for a group with differentiable=True or DTensor params, which
    the option's kernels don't take."""
    if group.get("differentiable"):
        raise ValueError(f"{option} is not supported with differentiable=True")
    if any(_dtensor.is_dtensor(p) for p in group["params"]):
        raise ValueError(f"{option} is not supported with DTensor params yet")


def _refused_on_reference_path(group, param):
    """The option of `group` the reference path can't honour for `param`, or None."""
    if _uses_master(group, param):
        return "master_weights"
    if _uses_stochastic_rounding(group, param):
        return "stochastic_rounding"
    if _uses_state_dtype(group, param):
        return "state_dtype"
    return None


# The dtypes of 0-dim states the host steps read and write in place: torch's load_state_dict
# casts a 16-bit param's (NAdam's mu_product, ASGD's eta and mu) to its dtype, and torch then
# computes them in it. The CUDA step kernels take float32 only.
_HOST_SCALAR_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _reusable_scalar(value, device):
    """Whether an existing 0-dim state can be read in place (on `device`: see NOTE: [CUDA steps])."""
    return (
        isinstance(value, torch.Tensor) and value.device == device and value.numel() == 1
        and value.dtype in ((torch.float32,) if device.type == "cuda" else _HOST_SCALAR_DTYPES)
        and value.is_contiguous()
    )


class _Bucket:
    """The Python side of one bucket: its params, their state tensors and the compiled table.

    A param with state keeps its state tensors when they can be swept in place, so references
    to them stay live as in torch.optim; the others (first step, or after load_state_dict,
    which must not alias the loaded dict) get views of one new flat buffer per state name.
    A bucket holds plain params or DTensor params, never both: for DTensors the kernels run on
    aliases of the local shards and the state holds DTensors over the local state views
    (NOTE: [DTensor params] in _dtensor.py).
    """

    def __init__(self, params, names, group, optimizer, slot_states, copy_existing):
        self.params = params
        self.is_dtensor = _dtensor.is_dtensor(params[0])
        # What a sum over this bucket's elements must be all-reduced over (LAMB's grad norm).
        self.reduction_key = _dtensor.reduction_key(params[0])
        if self.is_dtensor:
            self.local_sources = [p._local_tensor for p in params]
            self.kernel_params = kernel_params = [_dtensor.local_alias(p) for p in params]
        else:
            self.kernel_params = kernel_params = params
        self.has_complex = any(p.is_complex() for p in params)
        state_dtype = _state_dtype_for(group, kernel_params[0])  # the same for the whole bucket
        self.master = _uses_master(group, kernel_params[0])
        self.stochastic = _uses_stochastic_rounding(group, kernel_params[0])
        self.state_names = state_names = optimizer._state_names(group)
        self.scalar_names = scalar_names = optimizer._scalar_names(group)
        step_dtype = optimizer._step_dtype(group)
        # Whether `step` and the other 0-dim states live on the params' CUDA device.
        self.device_steps = (
            kernel_params[0].device.type == "cuda" and optimizer._has_step and _keeps_step_on_device(group)
            and optimizer._device_steps(group)
        )
        # Whether the kernels can take GradScaler's tensors without a step kernel (SGD with
        # fused=True; NOTE: [GradScaler with fused=True]).
        self.amp_without_step = (
            kernel_params[0].device.type == "cuda" and optimizer._kernel_amp_without_step and bool(group.get("fused"))
        )
        scalar_device = kernel_params[0].device if self.device_steps else torch.device("cpu")
        n = len(params)
        self.has_slot = [st is not None for st in slot_states]
        self.states = {name: [None] * n for name in state_names}  # what the kernels sweep
        self.state_values = {name: [None] * n for name in state_names}  # what optimizer.state holds
        self.scalars = {name: [None] * n for name in scalar_names}
        needs_storage = {name: [] for name in state_names}
        needs_scalar = {name: [] for name in scalar_names}
        for i, (p, st) in enumerate(zip(params, slot_states)):
            if st is None:
                continue
            for name in state_names:
                if st and name not in st:
                    # An option that adds a state (RMSprop's momentum, Adam's amsgrad) was
                    # switched on after the state was made: torch's step fails the same way.
                    raise KeyError(name)
                value = st.get(name)
                local = value._local_tensor if _dtensor.is_dtensor(value) else value
                if not copy_existing and _reusable_state(local, kernel_params[i], state_dtype):
                    self.states[name][i] = local
                    self.state_values[name][i] = value
                else:
                    needs_storage[name].append(i)
            for name in scalar_names:
                value = st.get(name)
                if not copy_existing and _reusable_scalar(value, scalar_device):
                    self.scalars[name][i] = value
                else:
                    needs_scalar[name].append(i)
        dtype = _real_dtype(state_dtype)
        for name, indices in needs_storage.items():
            offsets, total = [], 0
            for i in indices:
                offsets.append(total)
                size = kernel_params[i].numel() * (2 if kernel_params[i].is_complex() else 1)
                total += -(-size // _OFFSET_ALIGNMENT) * _OFFSET_ALIGNMENT
            buffer = torch.zeros(total, dtype=dtype, device=kernel_params[0].device)
            for i, offset in zip(indices, offsets):
                view = _flat_view(buffer, offset, kernel_params[i])
                old = slot_states[i].get(name)
                if isinstance(old, torch.Tensor):
                    # Carry over what the state held (a DTensor's local shard: same placements).
                    view.copy_((old._local_tensor if _dtensor.is_dtensor(old) else old).detach())
                else:
                    initial = optimizer._initial_state(group, name)
                    if initial != 0:
                        view.fill_(complex(initial, initial) if view.is_complex() else initial)
                self.states[name][i] = view
                self.state_values[name][i] = _dtensor.wrap_like(view, params[i]) if self.is_dtensor else view
        for name, indices in needs_scalar.items():
            if not indices:
                continue
            values = torch.zeros(len(indices), dtype=step_dtype, device=scalar_device)
            for k, i in enumerate(indices):
                old = slot_states[i].get(name)
                if (not self.device_steps and isinstance(old, torch.Tensor)
                        and old.dtype in _HOST_SCALAR_DTYPES and old.dtype != step_dtype):
                    self.scalars[name][i] = old.detach().to("cpu", copy=True).reshape(())  # torch keeps a loaded dtype
                    continue
                values[k] = _scalar(old) if old is not None else optimizer._initial_scalar(group, name)
                self.scalars[name][i] = values[k]
        self.masters = self._masters(slot_states, copy_existing) if self.master else [None] * n
        first_step = [int(optimizer._first_step(group, st)) if st is not None else 0 for st in slot_states]
        self.compiled = _extension._C.Bucket(
            kernel_params, names, [self.states[name] for name in state_names],
            [self.scalars[name] for name in scalar_names], first_step, self.masters if self.master else [],
        )
        self.device = kernel_params[0].device
        # A CUDA bucket's stochastic rounding mixes this device counter into each step's seed
        # (NOTE: [Precision options on CUDA] in csrc/cuda/sweep.cuh).
        self.rounding_step = None
        if self.stochastic and self.device.type == "cuda":
            self.rounding_step = torch.zeros((), dtype=torch.int64, device=self.device)
            self.compiled.set_rounding_step(self.rounding_step)

    def set_clip_coefficient(self, coef):
        """This step's max_grad_norm coefficient (a 0-dim tensor) for the kernels: by value on
        the CPU, as a device tensor on CUDA (no host sync)."""
        if self.device.type == "cuda":
            self.compiled.set_device_grad_scale(coef.to(self.device, torch.float64).reshape(()))
        else:
            self.compiled.set_grad_scale(coef.item() if coef.device.type == "cpu" else coef.cpu().item())

    def set_rounding(self):
        """Draws this step's stochastic rounding seed (NOTE: [Stochastic rounding])."""
        if self.rounding_step is not None:
            self.rounding_step.add_(1)
        self.compiled.set_rounding_seed(_rounding_seed())

    def _masters(self, slot_states, copy_existing):
        """Each param's fp32 master weights: its state's when reusable, else a view of one new
        flat buffer holding the loaded master or the param's values (NOTE: [Master weights])."""
        masters = [None] * len(self.params)
        needs = []
        for i, st in enumerate(slot_states):
            if st is None:
                continue
            old = st.get("master_param")
            if not copy_existing and _reusable_state(old, self.params[i], torch.float32):
                masters[i] = old
            else:
                needs.append(i)
        offsets, total = [], 0
        for i in needs:
            offsets.append(total)
            total += -(-self.params[i].numel() // _OFFSET_ALIGNMENT) * _OFFSET_ALIGNMENT
        buffer = torch.empty(total, dtype=torch.float32, device=self.params[0].device)
        for i, offset in zip(needs, offsets):
            view = _flat_view(buffer, offset, self.params[i])
            old = slot_states[i].get("master_param")
            view.copy_(old.detach() if isinstance(old, torch.Tensor) else self.params[i].detach())
            masters[i] = view
        return masters

    def commit(self, state):
        """Puts this bucket's state tensors into `state` under torch's keys, in torch's order."""
        for i, p in enumerate(self.params):
            if not self.has_slot[i]:
                continue
            entry = state[p]
            for name in self.scalar_names:
                if entry.get(name) is not self.scalars[name][i]:
                    dict.__setitem__(entry, name, self.scalars[name][i])
            for name in self.state_names:
                if entry.get(name) is not self.state_values[name][i]:
                    dict.__setitem__(entry, name, self.state_values[name][i])
            if self.master and entry.get("master_param") is not self.masters[i]:
                dict.__setitem__(entry, "master_param", self.masters[i])

    def attach_local_grads(self):
        """Gives each local alias its DTensor grad's local tensor, for the compiled prepare().
        False (and nothing attached) if the plan no longer fits: a param's local tensor was
        replaced, or its grad is laid out otherwise than the param (the reference path's)."""
        for p, source, alias in zip(self.params, self.local_sources, self.kernel_params):
            grad = p.grad
            if p._local_tensor is not source or (grad is not None and not _dtensor.grad_like(grad, p)):
                self.release_local_grads()
                return False
            alias.grad = None if grad is None else grad._local_tensor
        return True

    def release_local_grads(self):
        for alias in self.kernel_params:
            alias.grad = None


class _Plan:
    """Everything a step needs, valid until the optimizer's groups or state change."""

    def __init__(self, optimizer, after_load=False):
        self.groups = []  # per group: (group, buckets, reference params)
        self.layout = optimizer._layout_snapshot()
        self.state = optimizer.state
        self.state_version = None  # set by commit()
        for g, group in enumerate(optimizer.param_groups):
            params = group["params"]
            fused, reference = optimizer._split_group(g, group)
            for i in reference:
                option = _refused_on_reference_path(group, params[i])
                if option is not None:
                    raise ValueError(
                        f"{option} is not supported for param_groups[{g}]['params'][{i}]: it takes the "
                        f"plain-torch reference path ({_tensor_kind(params[i])}), which keeps torch's states")
            by_kind = {}
            for i in fused:
                kind = (_real_dtype(params[i].dtype), params[i].device, _dtensor.reduction_key(params[i]))
                by_kind.setdefault(kind, []).append(i)

            def slot_state(p):
                # A param gets a slot in the flat buffers if it has state, or will get it
                # on this step (it has a grad). None: no slot.
                existing = optimizer.state.get(p)
                if existing:
                    return existing
                if not after_load and p.grad is not None and (optimizer._wants_state(group) or _uses_master(group, p)):
                    return {}
                return None

            buckets = [
                _Bucket(
                    [params[i] for i in indices],
                    [f"param_groups[{g}]['params'][{i}]" for i in indices],
                    group,
                    optimizer,
                    [slot_state(params[i]) for i in indices],
                    copy_existing=after_load,
                )
                for indices in by_kind.values()
            ]
            self.groups.append((group, buckets, [params[i] for i in reference]))

    def prepare(self):
        """Validates all grads and fills the tables; False if the plan must be rebuilt.
        DTensor buckets hold their local grads until release_local_grads()."""
        ready = True
        for _, buckets, _ in self.groups:
            for bucket in buckets:
                if bucket.is_dtensor and not bucket.attach_local_grads():
                    ready = False
                    continue
                ready &= bucket.compiled.prepare() == 0
        if not ready:
            self.release_local_grads()
        return ready

    def release_local_grads(self):
        for _, buckets, _ in self.groups:
            for bucket in buckets:
                if bucket.is_dtensor:
                    bucket.release_local_grads()

    def amp_on_device(self):
        """Whether every param with a grad is in a CUDA bucket whose kernels take GradScaler's
        grad_scale and found_inf (NOTE: [Device steps and GradScaler]): one with device steps,
        or SGD's once no momentum buffer waits for its first values (a skipped first step would
        leave it half made)."""
        buckets = [b for _, group_buckets, _ in self.groups for b in group_buckets]
        return (
            any(b.compiled.num_entries for b in buckets)
            and all(
                (b.device_steps or (b.amp_without_step and not b.compiled.has_first_steps))
                and not b.is_dtensor
                # A strided grad is swept through a contiguous copy: its unscaled values would not
                # reach the user's .grad, which torch's fused kernels leave unscaled.
                and not b.compiled.has_strided_grads
                for b in buckets
            )
            and not any(p.grad is not None for _, _, reference in self.groups for p in reference)
        )

    def commit(self, state):
        for _, buckets, _ in self.groups:
            for bucket in buckets:
                bucket.commit(state)
        self.state_version = state.version


def _rounding_seed():
    """A 64-bit seed from torch's default CPU generator (NOTE: [Stochastic rounding])."""
    return int(torch.empty((), dtype=torch.int64).random_())


@contextlib.contextmanager
def _scaled_grads(params, coef):
    """Within the block, each param's grad is its grad times `coef` (as torch's clip_grad_norm_
    multiplies it); the param's own grad is put back after."""
    if coef is None:
        yield
        return
    grads = [p.grad for p in params]
    try:
        for p, grad in zip(params, grads):
            p.grad = grad.mul(coef.to(grad.device))
        yield
    finally:
        for p, grad in zip(params, grads):
            p.grad = grad


class FusedOptimizer(Optimizer):
    """A torch.optim.Optimizer whose step() runs fused kernels over buckets.

    Subclasses give the algorithm: its state names in slot order, whether it keeps a `step`
    counter, the options that change the state layout, and the fused and reference steps.
    """

    _plan = None
    _has_step = False
    # Whether the kernels of a fused=True group take GradScaler's tensors without a step kernel
    # (SGD: NOTE: [GradScaler with fused=True]).
    _kernel_amp_without_step = False
    # Options torch.optim's __setstate__ restores for optimizers pickled before they existed.
    _group_defaults = {}
    # Whether the optimizer takes max_grad_norm and norm_type (NOTE: [max_grad_norm]).
    _clips_grads = True

    def _own_defaults(self):
        """fusedoptim's own group options and their defaults (torch.optim has none of them)."""
        clip = {"max_grad_norm": None, "norm_type": 2.0} if self._clips_grads else {}
        return {**clip, "state_dtype": None, "master_weights": False, "stochastic_rounding": False}

    def __init__(self, params, defaults):
        super().__init__(params, defaults)
        # torch.optim's checks of the implementation flags, after the params (same order).
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self.state = StateMap(self.state)
        self.last_step_paths = {"fused": 0, "reference": 0}
        self._warned_reference_path = False
        if defaults.get("fused"):
            self._step_supports_amp_scaling = True  # NOTE: [GradScaler with fused=True]

    # ---- what each algorithm defines ------------------------------------------------
    def _state_names(self, group):
        """The flat states of a group, in the kernel's slot order."""
        raise NotImplementedError

    def _scalar_names(self, group):
        """The 0-dim states of a group's params, in torch's key order ("step" first)."""
        return ("step",) if self._has_step else ()

    def _initial_state(self, group, name):
        """The value a new state tensor starts from (zeros unless the algorithm says)."""
        return 0

    def _initial_scalar(self, group, name):
        """The value a new 0-dim state starts from."""
        return 0.0

    def _wants_state(self, group):
        """Whether a param of this group gets state on its first step with a grad."""
        return bool(self._state_names(group)) or bool(self._scalar_names(group))

    def _first_step(self, group, param_state):
        """Whether a param with this (possibly empty) state has not stepped yet (SGD)."""
        return False

    def _layout_key(self, group):
        """Options whose change needs a new plan (they change states or routing)."""
        return (
            tuple(self._state_names(group)), tuple(self._scalar_names(group)), self._reference_group(group),
            self._step_dtype(group), _keeps_step_on_device(group) and self._device_steps(group),
            group.get("state_dtype"), bool(group.get("master_weights")), bool(group.get("stochastic_rounding")),
        )

    # Algorithms whose fused host code does not replay torch's arithmetic in the dtype of Tensor
    # betas (torch computes their moment weights and bias corrections in it): such groups take
    # torch's own step.
    _tensor_betas_take_reference_path = False

    def _reference_group(self, group):
        """Whether every param of `group` takes the reference path (differentiable=True, or
        Tensor betas where _tensor_betas_take_reference_path)."""
        if self._tensor_betas_take_reference_path and any(isinstance(b, torch.Tensor) for b in group["betas"]):
            return True
        return bool(group.get("differentiable"))

    def _step_dtype(self, group):
        """The dtype of 0-dim states: torch.optim's _get_scalar_dtype(is_fused=group's fused)."""
        return _get_scalar_dtype(is_fused=group.get("fused"))

    def _lacks_step_kernel(self, group, tensor):
        """Whether CUDA `tensor` would keep `step` on the device in `group` but its algorithm has
        no CUDA step kernel for it (NOTE: [CUDA steps]): then it takes the reference path."""
        return (
            tensor.device.type == "cuda" and self._has_step and _keeps_step_on_device(group)
            and not self._device_steps(group)
        )

    def _device_steps(self, group):
        """Whether a CUDA step kernel computes this group's per-tensor coefficients from device-side
        `step` counters (NOTE: [CUDA steps]); then `_fused_step` takes `device_amp`."""
        return (
            self._has_step and self._step_dtype(group) == torch.float32
            and self._step_kernel_takes_hyperparameters(group)
        )

    def _step_kernel_takes_hyperparameters(self, group):
        """Whether the step kernels take this group's lr and betas: Python numbers (Adam also
        takes a Tensor lr)."""
        return not any(isinstance(x, torch.Tensor) for x in (group["lr"], *group.get("betas", ())))

    def _needs_whole_tensor(self, group):
        """None if this group's update of a param can run on each local shard of a sharded
        DTensor (elementwise, or with reductions the optimizer all-reduces itself); else why
        not, for the ReferencePathWarning."""
        return None

    def _fused_step(self, group, bucket):
        raise NotImplementedError

    def _reference_step(self, group, params):
        raise NotImplementedError

    # torch.optim's error for a sparse grad, or None where the algorithm takes them.
    _sparse_grad_error = None

    def _check_step(self, group, reference_params):
        """Raise, before anything is modified, what torch.optim's step would raise for this
        group (reference_params: the group's params with a grad on the reference path)."""
        if self._sparse_grad_error is not None and any(p.grad.is_sparse for p in reference_params):
            raise RuntimeError(self._sparse_grad_error)

    def _check_group_options(self, group):
        """Raise, naming the option, for a group whose options this optimizer can't honour."""
        state_dtype = group["state_dtype"]
        if state_dtype is not None:
            if state_dtype not in _STATE_DTYPES:
                raise ValueError(f"Invalid state_dtype value: {state_dtype}")
            _refuse_differentiable_and_dtensors(group, "state_dtype")
        master = group["master_weights"]
        if not isinstance(master, bool):
            raise ValueError(f"Invalid master_weights value: {master}")
        if master:
            _refuse_differentiable_and_dtensors(group, "master_weights")
            if state_dtype not in (None, torch.float32):
                raise ValueError(
                    f"state_dtype={state_dtype} is not supported with master_weights=True: master weights keep "
                    "float32 states")
        stochastic = group["stochastic_rounding"]
        if not isinstance(stochastic, bool):
            raise ValueError(f"Invalid stochastic_rounding value: {stochastic}")
        if stochastic:
            if master:
                raise ValueError("stochastic_rounding and master_weights=True cannot be used together")
            if state_dtype is not None:
                raise ValueError(f"state_dtype={state_dtype} is not supported with stochastic_rounding=True")
            _refuse_differentiable_and_dtensors(group, "stochastic_rounding")
        if not self._clips_grads:
            return
        max_norm, norm_type = group["max_grad_norm"], group["norm_type"]
        try:
            norm_value = float(norm_type)
        except (TypeError, ValueError):
            norm_value = math.nan
        if not norm_value > 0:
            raise ValueError(f"Invalid norm_type value: {norm_type}")
        if max_norm is None:
            return
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"Invalid max_grad_norm value: {max_norm}")
        if group.get("differentiable"):
            raise ValueError("max_grad_norm is not supported with differentiable=True")

    def _check_clip_params(self):
        """The global norm of max_grad_norm covers every group: none may hold DTensors."""
        if not self._clips_grads or all(group["max_grad_norm"] is None for group in self.param_groups):
            return
        if any(_dtensor.is_dtensor(p) for group in self.param_groups for p in group["params"]):
            raise ValueError(
                "max_grad_norm is not supported with DTensor params yet: use torch.nn.utils.clip_grad_norm_")

    # ---- torch.optim interface ------------------------------------------------------
    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        try:
            self._check_group_options(self.param_groups[-1])
            self._check_clip_params()
        except ValueError:
            self.param_groups.pop()
            raise
        self._plan = None

    def load_state_dict(self, state_dict):
        # A torch.optim state_dict has no clip options: the groups keep this optimizer's
        # (torch's __setstate__ would reset them to None and 2.0).
        absent = [[key for key in self._own_defaults() if key not in saved] for saved in state_dict["param_groups"]]
        # torch's load casts every floating state to its param's dtype: keep the fp32 masters.
        saved_ids = [i for saved in state_dict["param_groups"] for i in saved["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        masters = {p: state_dict["state"][i]["master_param"] for i, p in zip(saved_ids, params)
                   if "master_param" in state_dict["state"].get(i, {})}
        super().load_state_dict(state_dict)
        for p, master in masters.items():
            dict.__setitem__(self.state[p], "master_param", master.detach().to(p.device, torch.float32, copy=True))
        for group, keys in zip(self.param_groups, absent):
            for key in keys:
                group[key] = self.defaults[key]
        # Pack the loaded state into flat buffers now: the optimizer then never aliases the
        # loaded dict's tensors, and the next step finds its plan ready.
        self._plan = None
        packed = set()
        try:
            plan = _Plan(self, after_load=True) if _extension.extension_available() else None
        except (KeyError, ValueError):
            plan = None  # the loaded state lacks a buffer the groups need, or a state_dtype: the step raises
        if plan is not None:
            plan.commit(self.state)
            self._plan = plan
            packed = {p for _, buckets, _ in plan.groups for b in buckets for p, slot in zip(b.params, b.has_slot) if slot}
        for param, entry in self.state.items():
            if param not in packed:
                copy_loaded_tensors(entry)

    def __setstate__(self, state):
        super().__setstate__(state)
        if not isinstance(self.state, StateMap):
            self.state = StateMap(self.state)
        self._plan = None
        self.__dict__.setdefault("last_step_paths", {"fused": 0, "reference": 0})
        self.__dict__.setdefault("_warned_reference_path", False)
        # As torch.optim's __setstate__: options newer than the pickle get their defaults, and
        # 0-dim states pickled as Python numbers become tensors.
        for group in self.param_groups:
            for key, value in self._group_defaults.items():
                group.setdefault(key, value)
            for key, value in self._own_defaults().items():
                group.setdefault(key, value)
            on_device = bool(group.get("capturable") or group.get("fused"))
            for p in group["params"]:
                p_state = self.state.get(p)
                for name in self._scalar_names(group) if p_state else ():
                    if name in p_state and not torch.is_tensor(p_state[name]):
                        dict.__setitem__(p_state, name, torch.tensor(
                            float(p_state[name]), dtype=self._step_dtype(group), device=p.device if on_device else "cpu"))

    def state_dict(self):
        state_dict = super().state_dict()
        # Plain dicts, as torch.optim returns, so torch.load(weights_only=True) reads them.
        state_dict["state"] = {k: dict(v) for k, v in state_dict["state"].items()}
        return state_dict

    # ---- the step ---------------------------------------------------------------------
    def _layout_snapshot(self):
        return [(group, group["params"], len(group["params"]), self._layout_key(group))
                for group in self.param_groups]

    def _plan_is_current(self, plan):
        if plan.state is not self.state or plan.state_version != self.state.version:
            return False
        now = self._layout_snapshot()
        return len(now) == len(plan.layout) and all(
            a[0] is b[0] and a[1] is b[1] and a[2:] == b[2:] for a, b in zip(now, plan.layout)
        )

    def _split_group(self, g, group):
        """Indices of a group's params for the fused path and for the reference path."""
        params = group["params"]
        if not _extension.extension_available() or self._reference_group(group):
            return [], list(range(len(params)))
        if len(set(params)) != len(params):
            return [], list(range(len(params)))  # duplicates: torch updates them twice
        fused, reference, unsupported = [], [], []  # unsupported: what they are, for the warning
        for i, p in enumerate(params):
            if _dtensor.is_dtensor(p):
                fusable, unsupported_kind = self._dtensor_path(group, p)
                (fused if fusable else reference).append(i)
                if unsupported_kind is not None:
                    unsupported.append(unsupported_kind)
                continue
            grad = p.grad
            if not _fusable_tensor(p):
                unsupported.append(_tensor_kind(p))
                reference.append(i)
            elif self._lacks_step_kernel(group, p):
                unsupported.append(f"{_tensor_kind(p)} with the step on the device (capturable or fused)")
                reference.append(i)
            elif grad is not None and (grad.layout != torch.strided or not _dtensor.has_own_memory(grad)):
                reference.append(i)
            else:
                fused.append(i)
        if unsupported and not self._warned_reference_path:
            self._warned_reference_path = True
            warnings.warn(
                f"fusedoptim.{type(self).__name__}: {len(unsupported)} params of param_groups[{g}] "
                f"({', '.join(sorted(set(unsupported)))}) have no fused kernel here and take the plain-torch "
                "reference path",
                ReferencePathWarning,
                stacklevel=4,
            )
        return fused, reference

    def _dtensor_path(self, group, p):
        """(whether DTensor `p` takes the fused path, None or what it is if it lastingly can't)
        (NOTE: [DTensor params] in _dtensor.py)."""
        local = p._local_tensor
        if not _fusable_tensor(local):
            return False, f"DTensor of local {_tensor_kind(local)}"
        if self._lacks_step_kernel(group, local):
            return False, f"DTensor of local {_tensor_kind(local)} with the step on the device (capturable or fused)"
        if not _dtensor.local_placements(p):
            return False, f"DTensor on {p.placements}"
        why_whole = self._needs_whole_tensor(group)
        if why_whole is not None and _dtensor.is_sharded(p):
            return False, f"sharded DTensor: {why_whole} needs the whole tensor"
        grad = p.grad
        if grad is not None and not (
            _dtensor.grad_like(grad, p) and grad._local_tensor.layout == torch.strided
            and _dtensor.has_own_memory(grad._local_tensor)
        ):
            return False, None  # torch's DTensor ops redistribute (or refuse) it
        state = self.state.get(p)
        if state:
            for name in self._state_names(group):
                value = state.get(name)
                if isinstance(value, torch.Tensor) and not _dtensor.same_spec(value, p):
                    return False, None  # a state laid out otherwise: torch's DTensor ops decide
            for name in self._scalar_names(group):
                if _dtensor.is_dtensor(state.get(name)):
                    return False, None
        return True, None

    def _ready_plan(self, rebuild=True):
        """The plan of this step, prepared; with rebuild=False None where that needs a new plan
        (which would make the state of params stepping for the first time)."""
        plan = self._plan
        if plan is None or not self._plan_is_current(plan):
            if not rebuild:
                return None
            plan = _Plan(self)
        try:
            if not plan.prepare():
                if not rebuild:
                    return None  # prepare() released the local grads
                plan = _Plan(self)
                if not plan.prepare():
                    raise AssertionError("fusedoptim: a freshly built plan does not fit its params")
            for group, _, reference in plan.groups:
                self._check_step(group, [p for p in reference if p.grad is not None])
        except BaseException:
            plan.release_local_grads()  # a plan that is not ready has released them already
            raise
        if plan is not self._plan:
            plan.commit(self.state)
            self._plan = plan
        return plan

    # NOTE: [GradScaler with fused=True]
    # As torch.optim's fused optimizers, a fused=True one sets _step_supports_amp_scaling, so
    # torch.amp.GradScaler does not unscale its grads (nor refuse fp16 ones) but sets
    # `grad_scale` and `found_inf` and calls step() even after an overflow. torch's fused
    # kernels then unscale the grads in place and update, or, on an overflow, leave params,
    # grads and `step` as they were; Adam's first step still creates its (zero) state. We do
    # the same around our kernels: the grads are divided by the scale first, as torch's
    # kernels divide, then the step runs; where every param with a grad is in a CUDA bucket
    # whose kernels take grad_scale and found_inf (device steps, or SGD), they go there instead,
    # with no host sync (`amp_on_device`). (torch's fused SGD leaves an uninitialized momentum
    # buffer after an overflowed first step; SGD here creates no state then: until every
    # momentum buffer holds values, its step reads found_inf on the host.)
    def _skip_overflowed_step(self):
        if self._has_step:
            self._ready_plan()  # the state a first step creates, at step 0
        self.last_step_paths = {"fused": 0, "reference": 0}

    def _unscale_grads(self, grad_scale):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_div_(grads, grad_scale.reshape(()).to(grads[0].device))

    def _clips_any(self):
        return self._clips_grads and any(group["max_grad_norm"] is not None for group in self.param_groups)

    def _clip_coefficients(self, plan):
        """Per group of the plan, its clip coefficient (a 0-dim tensor) or None (NOTE:
        [max_grad_norm]); None if no group clips."""
        if not self._clips_grads or all(group["max_grad_norm"] is None for group, _, _ in plan.groups):
            return None
        norms = {}
        coefs = []
        for group, _, _ in plan.groups:
            if group["max_grad_norm"] is None:
                coefs.append(None)
                continue
            norm_type = float(group["norm_type"])
            if norm_type not in norms:
                norms[norm_type] = self._global_grad_norm(plan, norm_type)
            total = norms[norm_type]
            coefs.append(None if total is None else torch.clamp(float(group["max_grad_norm"]) / (total + 1e-6), max=1.0))
        return coefs

    def _global_grad_norm(self, plan, norm_type):
        """The norm of every grad of the plan as torch.nn.utils.get_total_norm gives it (its
        dtype), None without grads. On the CPU when CPU buckets have grads; a model all on one
        CUDA device keeps it there, computed with no host sync."""
        from fusedoptim.clip import _combine_reduced, _norm_of_reduced

        reduced, dtype, others = None, None, []
        device_reduced = {}  # CUDA device -> its buckets' reduced value, a 0-dim float64 tensor
        for _, buckets, reference in plan.groups:
            for bucket in buckets:
                if not bucket.compiled.num_entries:
                    continue
                if bucket.has_complex and norm_type != 2.0:
                    others += [p.grad for p in bucket.params if p.grad is not None]
                    continue
                if bucket.device.type == "cuda":
                    value = bucket.compiled.device_grad_norm(norm_type)
                    old = device_reduced.get(bucket.device)
                    device_reduced[bucket.device] = value if old is None else _combine_reduced(old, value, norm_type)
                else:
                    value = bucket.compiled.grad_norm(norm_type)
                    reduced = value if reduced is None else _combine_reduced(reduced, value, norm_type)
                real = _real_dtype(bucket.params[0].dtype)
                dtype = real if dtype is None else torch.promote_types(dtype, real)
            others += [p.grad for p in reference if p.grad is not None]
        if reduced is None and not device_reduced:
            return torch.nn.utils.get_total_norm(others, norm_type) if others else None
        for grad in others:
            dtype = torch.promote_types(dtype, _real_dtype(grad.dtype))
        norms = [] if reduced is None else [torch.tensor(_norm_of_reduced(reduced, norm_type), dtype=dtype)]
        norms += [_norm_of_reduced(value, norm_type).to(dtype) for value in device_reduced.values()]
        if others:
            norms.append(torch.nn.utils.get_total_norm(others, norm_type))
        if len(norms) == 1:
            return norms[0]
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device, dtype) for n in norms]), norm_type)

    # NOTE: [Steps under torch.compile]
    # Inside a torch.compile'd training step, dynamo would trace into step() up to the first
    # call into the extension and compile the Python around it, specializing on every
    # hyperparameter it reads: each new lr from a scheduler would then recompile. The fused
    # kernels gain nothing from tracing (a step is already one sweep per bucket), so step()
    # and everything it calls run eagerly: the compiled function breaks its graph around
    # opt.step(), gives the eager result, and never recompiles for a new lr.
    @torch.compiler.disable
    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not isinstance(self.state, StateMap):
            self.state = StateMap(self.state)
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        device_amp = False  # NOTE: [Device steps and GradScaler]: the kernels unscale and skip
        # (not when clipping: the norm is of the unscaled grads)
        if (grad_scale is not None or found_inf is not None) and not self._clips_any():
            plan = None
            if self._has_step and any(
                _keeps_step_on_device(group) and self._device_steps(group) for group in self.param_groups
            ):
                plan = self._ready_plan()  # the state a first step creates, as _skip_overflowed_step
            elif self._kernel_amp_without_step and self._plan is not None and any(
                b.amp_without_step for _, buckets, _ in self._plan.groups for b in buckets
            ):
                # SGD creates no state on a skipped step: only an existing plan, with a CUDA
                # fused=True bucket, may serve (and CPU-only plans are not prepared twice).
                plan = self._ready_plan(rebuild=False)
            device_amp = plan is not None and plan.amp_on_device()
            if plan is not None and not device_amp:
                plan.release_local_grads()  # DTensor grads: the host path prepares the plan again
        if not device_amp:
            if found_inf is not None and found_inf.item() != 0:
                self._skip_overflowed_step()
                return loss
            if grad_scale is not None:
                self._unscale_grads(grad_scale)
            plan = self._ready_plan()
        fused = reference = 0
        try:
            coefs = self._clip_coefficients(plan)
            for g, (group, buckets, reference_params) in enumerate(plan.groups):
                coef = coefs[g] if coefs else None
                for bucket in buckets:
                    if not bucket.compiled.num_entries:
                        continue
                    if coef is not None:
                        bucket.set_clip_coefficient(coef)
                    if bucket.stochastic:
                        bucket.set_rounding()
                    if device_amp:
                        device = bucket.kernel_params[0].device
                        self._fused_step(group, bucket.compiled, device_amp=(
                            None if grad_scale is None else grad_scale.to(device, torch.float32).reshape(1),
                            None if found_inf is None else found_inf.to(device, torch.float32).reshape(1),
                        ))
                    else:
                        self._fused_step(group, bucket.compiled)
                    fused += bucket.compiled.num_entries
                with_grad = [p for p in reference_params if p.grad is not None]
                if with_grad:
                    version = self.state.version
                    with _scaled_grads(with_grad, coef):
                        self._reference_step(group, with_grad)
                    if plan.state_version == version:
                        plan.state_version = self.state.version  # the reference path's own state
                    reference += len(with_grad)
        finally:
            plan.release_local_grads()
        self.last_step_paths = {"fused": fused, "reference": reference}
        return loss
