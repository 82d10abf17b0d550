"""fusedoptim under torch.distributed on the CPU (gloo, 2 processes): DDP,
ZeroRedundancyOptimizer(optimizer_class=fusedoptim.X) and FSDP2 (fully_shard, DTensor params).

Each setup trains the same small model from the same init on the same per-rank data with
torch.optim.X (for LAMB and Lion: the oracles of reference_optimizers.py) and with
fusedoptim.X, and compares the params (and under FSDP2 the state, state_dict and the
torch.distributed.checkpoint state dicts). FSDP2 and ZeRO runs are also compared with the DDP
run of torch.optim: all three average the same grads, so a shard-local mistake (a norm over a
local shard) shows up even where torch's own DTensor code would share it.

Process start-up dominates (NOTE: [Starting the workers]), so ONE start of 2 processes runs every case
(`distributed_results`, module-scoped); each rank records a verdict per check, and the tests
below only read them. Inside a case every collective (training, `full_tensor()`) runs before
any assertion, so a failing check on one rank can't leave the other waiting in a collective.
"""

import dataclasses
import json
import os
import time
import traceback
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import fusedoptim
from helpers import assert_tensor_close, tol_for, torch_cls

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORLD_SIZE = 2
NUM_STEPS = 5
WORKERS_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    optim: str
    kwargs: dict
    # DDP runs for every case (the ZeRO and FSDP2 runs are compared with it).
    setups: tuple = ("ddp", "zero", "fsdp2")
    dtype: torch.dtype = torch.float32
    # Which path fusedoptim's FSDP2 step must take for every param.
    fsdp2_path: str = "fused"
    # Compare the ZeRO run with the DDP run (not for a global grad norm: under ZeRO each rank's
    # optimizer sees only its partition of the params, for torch's optimizers alike).
    zero_like_ddp: bool = True


ALL_SETUPS = ("ddp", "zero", "fsdp2", "dcp")  # dcp: FSDP2 with torch.distributed.checkpoint
DDP_FSDP2 = ("ddp", "fsdp2")

CASES = [
    Case("SGD", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), setups=ALL_SETUPS),
    Case("Adam", "Adam", dict(lr=0.01, amsgrad=True), setups=ALL_SETUPS),
    Case("AdamW", "AdamW", dict(lr=0.01, weight_decay=0.1), setups=ALL_SETUPS),
    Case("Adadelta", "Adadelta", dict(lr=0.5, weight_decay=0.01), setups=DDP_FSDP2),
    Case("Adagrad", "Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1), setups=DDP_FSDP2 + ("dcp",)),
    Case("Adamax", "Adamax", dict(lr=0.01), setups=DDP_FSDP2),
    Case("ASGD", "ASGD", dict(lr=0.05, t0=2), setups=DDP_FSDP2),
    Case("NAdam", "NAdam", dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1), setups=DDP_FSDP2),
    Case("RAdam", "RAdam", dict(lr=0.01), setups=DDP_FSDP2),
    Case("RMSprop", "RMSprop", dict(lr=0.01, momentum=0.9, centered=True), setups=DDP_FSDP2),
    # torch.optim.Rprop's DTensor ops raise under FSDP2 (an in-place masked write); ours runs
    # the kernels on the shards and must then match the DDP run.
    Case("Rprop", "Rprop", dict(lr=0.05), setups=DDP_FSDP2),
    # The trust ratio needs whole-tensor norms: sharded params take the reference path.
    Case("LAMB", "LAMB", dict(lr=0.01, max_grad_norm=1.0), fsdp2_path="reference", zero_like_ddp=False),
    # No trust ratio: fused on the shards, the clipping norm all-reduced (0.1: it clips).
    Case("LAMB-clip", "LAMB", dict(lr=0.01, weight_decay=0.0, max_grad_norm=0.1), setups=DDP_FSDP2 + ("dcp",)),
    Case("Lion", "Lion", dict(lr=1e-3, weight_decay=0.1)),
    # fp32 LBFGS amplifies rounding differences (1e-2 after 5 steps under DDP); fp64 does not.
    # Under FSDP2 torch's LBFGS can't flatten unevenly sharded params: ours must raise the same.
    Case("LBFGS", "LBFGS", dict(lr=0.5, max_iter=4), setups=DDP_FSDP2, dtype=torch.float64, fsdp2_path=None),
]


def check_ids(setup):
    return [case.id for case in CASES if setup in case.setups]


def make_model(dtype):
    """Odd sizes: 7 and 3 rows shard unevenly over 2 ranks, the last layer's weight (1, 3)
    and bias (1,) have fewer rows than ranks, so one rank's local shards are empty."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1),
    )
    return model.to(dtype)


def batch(rank, step, dtype):
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 1, generator=generator, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def train(model, optimizer, rank, dtype, steps=range(NUM_STEPS)):
    for step in steps:
        x, y = batch(rank, step, dtype)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)


def fully_sharded(model):
    """FSDP2 over the whole model: one all-gather and one reduce-scatter per step (per-layer
    wrapping would multiply the collectives, and the optimizer sees the same DTensor params)."""
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model)


def optimizer_classes(case):
    return {"torch": torch_cls(case.optim), "fused": getattr(fusedoptim, case.optim)}


# ------------------------------------------------------------------ gathering, then comparing


@dataclasses.dataclass
class Gathered:
    """A DTensor after full_tensor(), with what it was laid out as."""

    placements: tuple
    mesh_shape: tuple
    full: torch.Tensor


def gathered(value):
    """`value` with every DTensor replaced by a Gathered (a collective per DTensor: call it on
    every rank with the same structure)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return Gathered(tuple(value.placements), tuple(value.device_mesh.shape), value.full_tensor().detach().clone())
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: gathered(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(gathered(item) for item in value)
    return value


# fusedoptim's own param-group options.
FUSEDOPTIM_GROUP_KEYS = ("max_grad_norm", "norm_type", "state_dtype", "master_weights", "stochastic_rounding")

def assert_same(actual, expected, where, tol):
    """fusedoptim's (gathered) structure against torch's: same keys, types, placements, values."""
    if isinstance(expected, Gathered):
        assert isinstance(actual, Gathered), f"{where}: {type(actual).__name__} where torch has a DTensor"
        assert (actual.placements, actual.mesh_shape) == (expected.placements, expected.mesh_shape), (
            f"{where}: placements {actual.placements} on mesh {actual.mesh_shape}, "
            f"torch's {expected.placements} on {expected.mesh_shape}")
        assert_same(actual.full, expected.full, where, tol)
    elif isinstance(expected, torch.Tensor):
        assert type(actual) is torch.Tensor, f"{where}: {type(actual).__name__} where torch has a Tensor"
        if expected.dim() == 0:  # step counters and other 0-dim states: torch's dtype and value
            assert actual.dtype == expected.dtype and actual.dim() == 0, (where, actual, expected)
        assert_tensor_close(actual, expected, msg=where, **tol)
    elif isinstance(expected, dict):
        # A param group also holds fusedoptim's own options, which torch's lack.
        own = FUSEDOPTIM_GROUP_KEYS if "params" in expected else ()
        assert isinstance(actual, dict) and [k for k in actual if k in expected or k not in own] == list(expected), (
            f"{where}: keys {list(actual) if isinstance(actual, dict) else actual} != torch's {list(expected)}")
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]", tol)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), (where, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]", tol)
    else:
        assert actual == expected, f"{where}: {actual!r} != torch's {expected!r}"


def full_params(model):
    return gathered([p for p in model.parameters()])


def assert_params_same(actual, expected, tol, against):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        a, e = (x.full if isinstance(x, Gathered) else x for x in (a, e))
        assert_tensor_close(a, e, msg=f"param {i} against {against}", **tol)


def assert_all_fused(optimizer, num_params):
    paths = optimizer.last_step_paths
    assert paths == {"fused": num_params, "reference": 0}, f"last_step_paths {paths}"


# ------------------------------------------------------------------ the cases, per rank


def outcome(run):
    """('ok', result) or ('raise', (type name, message))."""
    try:
        return "ok", run()
    except Exception as error:  # noqa: BLE001 - compared with torch's
        return "raise", (type(error).__name__, str(error))


def ddp_case(case, rank, record):
    from torch.nn.parallel import DistributedDataParallel

    results = {}
    for side, cls in optimizer_classes(case).items():
        model = DistributedDataParallel(make_model(case.dtype))
        optimizer = cls(model.parameters(), **case.kwargs)
        train(model, optimizer, rank, case.dtype)
        results[side] = (full_params(model), optimizer)
    tol = tol_for(case.dtype)

    def check():
        assert_params_same(results["fused"][0], results["torch"][0], tol, "torch.optim under DDP")
        if case.optim != "LBFGS":
            assert_all_fused(results["fused"][1], 6)

    record(f"ddp/{case.id}", check)
    return results["torch"][0]


def zero_case(case, rank, record, ddp_params):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    # Adam also packs the params into one flat bucket per rank (ZeRO re-points their .data).
    extra = dict(parameters_as_bucket_view=True) if case.optim == "Adam" else {}
    results = {}
    for side, cls in optimizer_classes(case).items():
        model = DistributedDataParallel(make_model(case.dtype))
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **extra, **case.kwargs)
        train(model, optimizer, rank, case.dtype)
        optimizer.consolidate_state_dict(to=0)
        state_dict = optimizer.state_dict() if rank == 0 else None
        results[side] = (full_params(model), optimizer, gathered(state_dict))
    tol = tol_for(case.dtype)

    def check():
        (fused_params, fused_opt, fused_sd), (torch_params, _, torch_sd) = results["fused"], results["torch"]
        assert_params_same(fused_params, torch_params, tol, "torch.optim under ZeRO")
        if case.zero_like_ddp:
            assert_params_same(fused_params, ddp_params, tol, "torch.optim under DDP")
        # Each rank's local optimizer owns whole params (at least one here): all fused.
        paths = fused_opt.optim.last_step_paths
        assert paths["fused"] >= 1 and paths["reference"] == 0, f"last_step_paths {paths}"
        assert_same(fused_sd, torch_sd, "consolidated state_dict", tol)

    record(f"zero/{case.id}", check)


def fsdp2_case(case, rank, record, ddp_params):
    runs = {}
    for side, cls in optimizer_classes(case).items():
        model = fully_sharded(make_model(case.dtype))
        optimizer = cls(model.parameters(), **case.kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", fusedoptim.ReferencePathWarning)
            result = outcome(lambda: train(model, optimizer, rank, case.dtype))
        reference_warnings = [w for w in caught if issubclass(w.category, fusedoptim.ReferencePathWarning)]
        runs[side] = dict(model=model, optimizer=optimizer, outcome=result, warned=bool(reference_warnings))
    for run in runs.values():
        if run["outcome"][0] == "ok":
            run["params"] = full_params(run["model"])
            run["state_dict"] = gathered(run["optimizer"].state_dict())
    fused, reference = runs["fused"], runs["torch"]
    tol = tol_for(case.dtype)

    def check():
        fused_ok, torch_ok = fused["outcome"][0] == "ok", reference["outcome"][0] == "ok"
        if torch_ok:
            assert fused_ok, f"fusedoptim raised {fused['outcome'][1]} where torch did not"
            assert_params_same(fused["params"], reference["params"], tol, "torch.optim under FSDP2")
            assert_same(fused["state_dict"], reference["state_dict"], "state_dict()", tol)
        elif not fused_ok:
            assert fused["outcome"] == reference["outcome"], f"fusedoptim {fused['outcome']}, torch {reference['outcome']}"
        # What torch refuses we may also run: correctly, then (like everything else) as DDP.
        if fused_ok:
            assert_params_same(fused["params"], ddp_params, tol, "torch.optim under DDP")
        if case.fsdp2_path == "fused":
            assert_all_fused(fused["optimizer"], 6)
            assert not fused["warned"], "a ReferencePathWarning under FSDP2"
        elif case.fsdp2_path == "reference":
            paths = fused["optimizer"].last_step_paths
            assert paths == {"fused": 0, "reference": 6}, f"last_step_paths {paths}"
            assert fused["warned"], "no ReferencePathWarning for the reference path"

    record(f"fsdp2/{case.id}", check)
    if "dcp" in case.setups:
        dcp_case(case, rank, record, runs)


def dcp_case(case, rank, record, runs):
    """torch.distributed.checkpoint's optimizer state dicts (sharded and full) of both, and
    torch's sharded one loaded into a fresh fusedoptim optimizer that then steps on."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    dicts = {}
    for side, run in runs.items():
        sharded = get_optimizer_state_dict(run["model"], run["optimizer"])
        full = get_optimizer_state_dict(run["model"], run["optimizer"], options=StateDictOptions(full_state_dict=True))
        dicts[side] = (gathered(sharded), gathered(full), sharded)  # gathered: copies, not the live state

    torch_run = runs["torch"]
    resumed_model = fully_sharded(make_model(case.dtype))
    resumed_model.load_state_dict(torch_run["model"].state_dict())
    resumed = getattr(fusedoptim, case.optim)(resumed_model.parameters(), **case.kwargs)
    set_optimizer_state_dict(resumed_model, resumed, dicts["torch"][2])
    extra_steps = range(NUM_STEPS, NUM_STEPS + 2)
    train(torch_run["model"], torch_run["optimizer"], rank, case.dtype, extra_steps)
    train(resumed_model, resumed, rank, case.dtype, extra_steps)
    after = {
        "torch": (full_params(torch_run["model"]), gathered(torch_run["optimizer"].state_dict())),
        "resumed": (full_params(resumed_model), gathered(resumed.state_dict())),
    }
    tol = tol_for(case.dtype)

    def check():
        assert_same(dicts["fused"][0], dicts["torch"][0], "get_optimizer_state_dict()", tol)
        assert_same(dicts["fused"][1], dicts["torch"][1], "get_optimizer_state_dict(full_state_dict=True)", tol)
        assert_params_same(after["resumed"][0], after["torch"][0], tol, "torch.optim resumed alike")
        assert_same(after["resumed"][1], after["torch"][1], "state_dict() after resuming", tol)
        assert_all_fused(resumed, 6)

    record(f"dcp/{case.id}", check)


def worker(rank, store_path, results_dir, parent_package):
    torch.set_num_threads(1)  # 2 processes on 2 cores
    verdicts = {}

    def record(check_id, check):
        try:
            check()
            verdicts[check_id] = None
        except Exception:  # noqa: BLE001 - reported by the test of that id
            verdicts[check_id] = traceback.format_exc(limit=4)

    def save():
        with open(os.path.join(results_dir, f"rank{rank}.json"), "w") as f:
            json.dump(verdicts, f)

    if os.path.dirname(fusedoptim.__file__) != parent_package:
        verdicts["setup"] = f"the worker imported {fusedoptim.__file__}, pytest {parent_package}"
        save()
        return
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, WORLD_SIZE), rank=rank, world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as error:
        verdicts["fsdp2 unavailable"] = str(error)
    try:
        for case in CASES:
            try:
                ddp_params = ddp_case(case, rank, record)
                if "zero" in case.setups:
                    zero_case(case, rank, record, ddp_params)
                if "fsdp2" in case.setups and "fsdp2 unavailable" not in verdicts:
                    fsdp2_case(case, rank, record, ddp_params)
            except Exception:  # noqa: BLE001 - a run that failed outright fails its remaining checks
                verdicts.setdefault(f"crash/{case.id}", traceback.format_exc(limit=6))
            save()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ the tests


# NOTE: [Starting the workers]
# Each worker needs torch, DDP's import of torch._dynamo and FSDP2: ~7 s of imports, twice
# over with "spawn" on 2 cores. A forkserver imports them once (it stays up, idle, until
# pytest exits) and forks both workers from a process that has only imported modules, so
# unlike forking pytest itself no OpenMP thread pool or gloo state is inherited.
_WORKER_PRELOAD = [
    "torch", "torch._dynamo", "torch.distributed.fsdp", "torch.distributed.optim",
    "torch.distributed.checkpoint.state_dict", __name__,
]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """Runs every case in one start of 2 processes; {rank: {check id: None or failure}}."""
    import multiprocessing

    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("distributed")
    start = time.monotonic()
    start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if start_method == "forkserver":
        multiprocessing.set_forkserver_preload(_WORKER_PRELOAD)
    context = mp.start_processes(
        worker, args=(str(tmp / "store"), str(tmp), os.path.dirname(fusedoptim.__file__)),
        nprocs=WORLD_SIZE, join=False, start_method=start_method,
    )
    failure = None
    try:
        while not context.join(timeout=1):
            if time.monotonic() - start > WORKERS_TIMEOUT_S:
                failure = f"the workers ran past {WORKERS_TIMEOUT_S} s"
                break
    except Exception as error:  # noqa: BLE001 - a worker died: its checks report it
        failure = f"{type(error).__name__}: {error}"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    results = {}
    for rank in range(WORLD_SIZE):
        path = tmp / f"rank{rank}.json"
        results[rank] = json.loads(path.read_text()) if path.exists() else {}
    return dict(results=results, failure=failure)


def assert_check_passed(distributed_results, check_id, case_id):
    for rank, verdicts in distributed_results["results"].items():
        assert "setup" not in verdicts, verdicts["setup"]
        if check_id not in verdicts:
            crash = verdicts.get(f"crash/{case_id}") or distributed_results["failure"] or "not run"
            pytest.fail(f"rank {rank}: no verdict for {check_id}: {crash}")
        assert verdicts[check_id] is None, f"rank {rank}: {verdicts[check_id]}"


@pytest.mark.parametrize("case_id", check_ids("ddp"))
def test_ddp_matches_torch(distributed_results, case_id):
    assert_check_passed(distributed_results, f"ddp/{case_id}", case_id)


@pytest.mark.parametrize("case_id", check_ids("zero"))
def test_zero_redundancy_optimizer_matches_torch(distributed_results, case_id):
    assert_check_passed(distributed_results, f"zero/{case_id}", case_id)


def skip_without_fsdp2(distributed_results):
    reason = distributed_results["results"][0].get("fsdp2 unavailable")
    if reason is not None:
        pytest.skip(f"FSDP2 (torch.distributed.fsdp.fully_shard) is not available: {reason}")


@pytest.mark.parametrize("case_id", check_ids("fsdp2"))
def test_fsdp2_matches_torch_on_local_shards(distributed_results, case_id):
    skip_without_fsdp2(distributed_results)
    assert_check_passed(distributed_results, f"fsdp2/{case_id}", case_id)


@pytest.mark.parametrize("case_id", check_ids("dcp"))
def test_fsdp2_checkpoint_state_dicts_match_torch(distributed_results, case_id):
    skip_without_fsdp2(distributed_results)
    assert_check_passed(distributed_results, f"dcp/{case_id}", case_id)
