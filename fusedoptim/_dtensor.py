"""DTensor params (FSDP2's fully_shard, tensor parallel): the fused kernels on the local shards.

NOTE: [DTensor params]
A DTensor is a wrapper: it owns no memory (its data_ptr() is 0) and holds this rank's shard in
`_local_tensor`. torch.optim runs its ops on the DTensors themselves, so its elementwise state
tensors (`zeros_like(p)`) are DTensors with the param's mesh and placements, while 0-dim states
(`step`, ...) stay plain tensors. An elementwise update of a Shard/Replicate DTensor is the
same update of each local shard, so the fused path runs the kernels over the local tensors,
with no communication:

- the bucket's kernel params are aliases of the params' local tensors (`detach()`: same memory,
  no autograd), because the compiled bucket reads each param's grad from the tensor it holds;
  before each step `attach_local_grads` hands each alias its grad's local tensor, and after
  the step `release_local_grads` drops them so no grad outlives `zero_grad(set_to_none=True)`.
  That is a Python loop over the DTensor params per step (plain params have none);
- states live in the flat buffers like any other, and `optimizer.state[p]` holds DTensors that
  wrap those views with the param's mesh and placements: the state_dict is torch.optim's, and
  torch.distributed.checkpoint (get/set_optimizer_state_dict) sees what it expects;
- a DTensor whose update is not local (Partial placements, a grad or a state with other
  placements than the param, a local tensor the kernels can't take, LAMB's per-tensor trust
  ratio on a sharded param) takes the reference path: torch ops on the DTensors;
- reductions over a whole tensor (LAMB's global grad norm) add this rank's partial sums and
  all-reduce them over the mesh dimensions the tensor is sharded on (`reduce_partial_sums`).

FSDP2 replaces a param's `_local_tensor` object in some cases (load_state_dict(assign=True)
before the first forward); the plan notices and is rebuilt.
"""

import sys

import torch

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_dtensor(tensor):
    # Only a tensor subclass can be one, and only once torch.distributed.tensor is imported
    # (this never imports it).
    if type(tensor) in _PLAIN_TYPES:
        return False
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def has_own_memory(tensor):
    """Whether the kernels may address `tensor`'s elements: not for wrapper subclasses (a
    DTensor, a FakeTensor), whose data lives elsewhere or nowhere."""
    if type(tensor) in _PLAIN_TYPES or tensor.numel() == 0:
        return True
    if is_dtensor(tensor):
        return False
    try:
        return tensor.data_ptr() != 0
    except RuntimeError:
        return False


def same_spec(value, param):
    """Whether `value` is a DTensor laid out like DTensor `param` (mesh, placements, shape)."""
    return grad_like(value, param) and value.shape == param.shape


def grad_like(grad, param):
    """Whether `grad` is a DTensor on `param`'s mesh and placements (a grad's shape is the
    param's: autograd checks it). Once per DTensor param per step, so kept cheap."""
    if not is_dtensor(grad):
        return False
    grad_spec, param_spec = grad._spec, param._spec
    # FSDP2 makes the grads with the param's own spec object.
    return grad_spec is param_spec or (
        grad_spec.placements == param_spec.placements and grad_spec.mesh == param_spec.mesh
    )


def local_placements(param):
    """Whether every placement of `param` is Shard or Replicate: then each rank's local tensor
    holds final values (Partial ones hold addends) and elementwise math can run on it."""
    return all(placement.is_shard() or placement.is_replicate() for placement in param.placements)


def is_sharded(param):
    """Whether no rank holds the whole of DTensor `param` (a mesh dim of size > 1 shards it)."""
    mesh = param.device_mesh
    return any(placement.is_shard() and mesh.size(dim) > 1 for dim, placement in enumerate(param.placements))


def reduction_key(tensor):
    """What a sum over `tensor`'s local elements must be all-reduced over: None for a plain
    tensor, else (mesh, which mesh dims shard it). Tensors of one key share one all-reduce."""
    if not is_dtensor(tensor):
        return None
    return tensor.device_mesh, tuple(placement.is_shard() for placement in tensor.placements)


def reduce_partial_sums(partial_sums):
    """{reduction_key: this rank's partial sum (float or 0-dim tensor)} -> the total over all
    keys, a float64 0-dim tensor, each key's sum all-reduced over its sharded mesh dims.
    Every rank must call this with the same keys in the same order (SPMD)."""
    total = torch.zeros((), dtype=torch.float64)
    for key, value in partial_sums.items():
        value = torch.as_tensor(value, dtype=torch.float64).reshape(())
        if key is not None:
            from torch.distributed.tensor import DTensor, Partial, Replicate

            mesh, sharded_dims = key
            placements = [Partial() if sharded else Replicate() for sharded in sharded_dims]
            value = DTensor.from_local(value, mesh, placements, run_check=False).full_tensor()
        total = total + value
    return total


def whole_norm(norm):
    """A norm computed on DTensors is a DTensor whose local value is a partial result
    (`.item()` would read this rank's part only); the whole tensor's norm, as a DTensor
    replicated on its mesh, which `.item()` reads correctly and autograd follows."""
    if not is_dtensor(norm):
        return norm
    from torch.distributed.tensor import Replicate

    return norm.redistribute(placements=[Replicate()] * norm.device_mesh.ndim)


def local_alias(param):
    """The tensor the kernels update for DTensor `param`: its local shard's memory, with no
    autograd history and a `.grad` of its own."""
    return param._local_tensor.detach()


def wrap_like(local, param):
    """A DTensor over `local` with DTensor `param`'s mesh and placements (a state tensor)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride(),
    )
