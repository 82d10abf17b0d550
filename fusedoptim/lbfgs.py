"""LBFGS: torch.optim.LBFGS with every pass over the flat vector fused.

NOTE: [LBFGS on a flat vector]
torch.optim.LBFGS already works on one flat vector of all params (the direction d, the
previous gradient, the history pairs old_dirs/old_stps), but builds and applies it with
per-param Python loops and one Python-dispatched op per vector operation: a `cat` of every
grad per function evaluation, an `add_` per param per trial point, a clone of every param
before a line search and a `copy_` of every param after each trial, and a two-loop recursion
of 4 ops per history pair.

This class runs the same algorithm statement for statement, and its scalar logic (the line
search, the stopping tests) on the same values: 0-dim tensors of the param dtype wherever torch
has them, so the branches agree and `self.state` holds what torch's does. What changes is each
pass over the N elements, which is one parallel pass of `fusedoptim._C.lbfgs` that also
computes the dots and maxima needed next:

- grads -> flat vector, with max|g| (the optimality test) and g . d (the line search's slope);
- params <- x_init + t * d for a trial point: torch's restore of x_init after the previous
  trial and its add of t * d in one pass, skipping the restore torch does after the last trial;
- the memory update y = g - prev_g, s = t * d with y . s and y . y, fused with prev_g <- g;
- the two-loop recursion, each update fused with the dot that follows it
  (NOTE: [The fused two-loop recursion] in csrc/cpu/lbfgs_cpu.cpp), ending with g . d and
  max|d| (torch's `gtd` and the line search's `d_norm`).

A gathered gradient is never written afterwards (torch's own code only reads them), so the line
search shares them where torch clones them. The history stays torch's lists of tensors:
`state_dict()` is torch's, zero-copy, and loads both ways.

NOTE: [Scratch buffers]
The first write to a new N-element buffer page-faults once per 4 KB page: on the 2-core VM
about 6 ms for 8 MB, ten times the pass that fills it (memory that glibc hands back from an
earlier free is cheap). So the buffers no user can see are reused within a step, where torch
allocates one per use: the gathered gradients (none outlives the line search that gathered it,
none is ever stored in `state`), the line search's origin x_init, and the direction d once
this step has made one (`state['d']` is set at the end of the step; the d of the previous
iteration is dead once the memory update has read it). The history pairs y, s are new tensors,
as in torch: they are the state. Nothing is kept between steps beyond torch's own state.

Steps whose params the kernels can't take (not on the CPU, not contiguous, dtypes other than
float32/float64 and their complex types, mixed dtypes, overlapping params, DTensors and other
tensor subclasses without memory of their own) run torch.optim.LBFGS's own step, unchanged.
"""

import torch
from torch.optim import LBFGS as _TorchLBFGS
from torch.optim.lbfgs import _cubic_interpolate  # the trial steps must be torch's

from fusedoptim import _dtensor, _extension
from fusedoptim._state import copy_loaded_tensors

__all__ = ["LBFGS"]


class _FlatGrad:
    """A gathered flat gradient and its max |g| (torch's `flat_grad.abs().max()`)."""

    __slots__ = ("vec", "max_abs")

    def __init__(self, vec, max_abs):
        self.vec = vec
        self.max_abs = max_abs


def _torch_step(optimizer, closure):
    """torch.optim.LBFGS.step itself, without the hook wrapper torch.optim may have put on it
    (ours already ran the step hooks)."""
    step = _TorchLBFGS.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)


def _strong_wolfe(obj_func, t, d_norm, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch.optim.lbfgs._strong_wolfe with its scalar logic unchanged.

    Differences, none of them visible: `obj_func(t)` returns (f, g, g . d) from one pass; `d_norm`
    (max |d|) comes from the two-loop's last pass; gradients (_FlatGrad) are shared, not cloned.
    Like torch, `tolerance_change` is this function's default, not the group's.
    """
    f_new, g_new, gtd_new = obj_func(t)
    ls_func_evals = 1

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        # check conditions
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new]
            bracket_gtd = [gtd_prev, gtd_new]
            break

        if abs(gtd_new) <= -c2 * gtd:
            bracket = [t]
            bracket_f = [f_new]
            bracket_g = [g_new]
            done = True
            break

        if gtd_new >= 0:
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, g_new]
            bracket_gtd = [gtd_prev, gtd_new]
            break

        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))

        # next step
        t_prev = tmp
        f_prev = f_new
        g_prev = g_new
        gtd_prev = gtd_new
        f_new, g_new, gtd_new = obj_func(t)
        ls_func_evals += 1
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket = [0, t]
        bracket_f = [f, f_new]
        bracket_g = [g, g_new]

    # zoom phase: we now have a point satisfying the criteria, or a bracket around it. We
    # refine the bracket until we find the exact point satisfying the criteria.
    insuf_progress = False
    # find high and low points in bracket
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        # line-search bracket is so small
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break

        # compute new trial value
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])

        # test that we are making sufficient progress: if `t` is so close to a boundary that
        # we made insufficient progress, or `t` is at a boundary, move `t` to 0.1 * len(bracket)
        # away from the nearest boundary point.
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            # interpolation close to boundary
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                # evaluate at 0.1 away from boundary
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        # Evaluate new point
        f_new, g_new, gtd_new = obj_func(t)
        ls_func_evals += 1
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos] = t
            bracket_f[high_pos] = f_new
            bracket_g[high_pos] = g_new
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                # Wolfe conditions satisfied
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]

            # new point becomes new low
            bracket[low_pos] = t
            bracket_f[low_pos] = f_new
            bracket_g[low_pos] = g_new
            bracket_gtd[low_pos] = gtd_new

    # return stuff
    t = bracket[low_pos]
    f_new = bracket_f[low_pos]
    g_new = bracket_g[low_pos]
    return f_new, g_new, t, ls_func_evals


class LBFGS(_TorchLBFGS):
    # The constructor, its validation and defaults, and the helpers of the fallback step are
    # torch.optim.LBFGS's own; isinstance(opt, torch.optim.LBFGS) holds, as code that special-
    # cases LBFGS's closure expects.

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # The step writes prev_flat_grad in place: never into the loaded dict's tensor.
        for entry in self.state.values():
            copy_loaded_tensors(entry)

    def _flat_params(self):
        """The params as one flat vector for the kernels, or None (torch's step runs)."""
        if not _extension.extension_available():
            return None
        # DTensors (and other wrappers) have no memory the passes could address; torch's step
        # runs its ops on them.
        if not all(_dtensor.has_own_memory(p) for p in self._params):
            return None
        return _extension._C.lbfgs.FlatParams.of(self._params)

    def _gather_grads(self, flat, direction=None, out=None):
        """(flat grad, g . direction or None): torch's _gather_flat_grad, fused, into `out` if given."""
        gathered = flat.gather_grads(direction, out)
        if gathered is None:
            # Sparse or strided grads: torch's own gather (and its errors).
            vec = _TorchLBFGS._gather_flat_grad(self)
            max_abs, gtd = _extension._C.lbfgs.max_abs_and_dot(vec, direction)
        else:
            vec, max_abs, gtd = gathered
        return _FlatGrad(vec, max_abs), gtd

    @torch.compiler.disable  # NOTE: [Steps under torch.compile] in optimizer.py
    @torch.no_grad()
    def step(self, closure):
        """Perform a single optimization step.

        Args:
            closure (Callable): A closure that reevaluates the model
                and returns the loss.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        group = self.param_groups[0]
        line_search_fn = group["line_search_fn"]
        # torch raises this inside the first iteration, after evaluating the closure and
        # counting it in the state (its optimizer then can't step again); we raise before.
        if line_search_fn is not None and line_search_fn != "strong_wolfe":
            raise RuntimeError("only 'strong_wolfe' is supported")
        flat = self._flat_params()
        if flat is None:
            return _torch_step(self, closure)
        lbfgs_kernels = _extension._C.lbfgs

        # Make sure the closure is always called with grad enabled
        closure = torch.enable_grad()(closure)

        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.dim() != 0:
            lr = lr.squeeze()  # torch.optim's _to_scalar
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        history_size = group["history_size"]

        # NOTE: LBFGS has only global state, but we register it as state for
        # the first param, because this helps with casting in load_state_dict
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        # evaluate initial f(x) and df/dx
        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1

        # NOTE: [Scratch buffers]
        spare_grads = []
        x_init = None
        d_is_scratch = False  # whether d was made by this step (else it is state['d'])

        def gather(direction=None):
            return self._gather_grads(flat, direction, spare_grads.pop() if spare_grads else None)

        flat_grad, _ = gather()
        opt_cond = flat_grad.max_abs <= tolerance_grad

        # optimal condition
        if opt_cond:
            return orig_loss

        # tensors cached in state (for tracing)
        d = state.get("d")
        t = state.get("t")
        old_dirs = state.get("old_dirs")
        old_stps = state.get("old_stps")
        ro = state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad = state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")

        n_iter = 0
        # optimize for a max of max_iter iterations
        while n_iter < max_iter:
            # keep track of nb of iterations
            n_iter += 1
            state["n_iter"] += 1

            ############################################################
            # compute gradient descent direction
            ############################################################
            # Each kernel also returns gtd = g . d and d_max = max |d|.
            if state["n_iter"] == 1:
                d, gtd, grad_abs_sum, d_max = lbfgs_kernels.first_direction(flat_grad.vec)
                d_is_scratch = True
                old_dirs = []
                old_stps = []
                ro = []
                H_diag = 1
            else:
                # do lbfgs update (update memory); also copies flat_grad into prev_flat_grad
                y, s, ys, yy = lbfgs_kernels.update_memory(flat_grad.vec, prev_flat_grad, d, float(t))
                if ys > 1e-10:
                    # updating memory
                    if len(old_dirs) == history_size:
                        # shift history by one (limited-memory)
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)

                    # store new direction/step
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)

                    # update scale of initial Hessian approximation
                    H_diag = ys / yy  # (y*y)

                # compute the approximate (L-BFGS) inverse Hessian
                # multiplied by the gradient
                num_old = len(old_dirs)

                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                if num_old > len(al):
                    raise IndexError("list assignment index out of range")  # torch's al[i] = ...

                d, al_values, gtd, d_max = lbfgs_kernels.two_loop(
                    flat_grad.vec, old_dirs, old_stps, ro, float(H_diag), d if d_is_scratch else None
                )
                d_is_scratch = True
                for i, value in enumerate(al_values.unbind()):
                    al[i] = value

            if state["n_iter"] == 1:
                if prev_flat_grad is None:
                    prev_flat_grad = flat_grad.vec.clone(memory_format=torch.contiguous_format)
                else:
                    prev_flat_grad.copy_(flat_grad.vec)
            prev_loss = loss

            ############################################################
            # compute step length
            ############################################################
            # reset initial guess for step size
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / grad_abs_sum) * lr
            else:
                t = lr

            # directional derivative is below tolerance
            if gtd > -tolerance_change:
                break

            # optional line search: user function
            ls_func_evals = 0
            if line_search_fn is not None:
                # perform line search, using user function
                x_init = flat.gather_params(x_init)
                trial_grads = [flat_grad]

                def obj_func(t):
                    flat.add_step(x_init, float(t), d)
                    loss = float(closure())
                    flat_grad, gtd = gather(d)
                    trial_grads.append(flat_grad)
                    return loss, flat_grad, gtd

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, t, d_max, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                spare_grads += [g.vec for g in trial_grads if g is not flat_grad]
                flat.add_step(x_init, float(t), d)
                opt_cond = flat_grad.max_abs <= tolerance_grad
            else:
                # no line search, simply move with fixed-step
                flat.add_step(None, float(t), d)
                if n_iter != max_iter:
                    # re-evaluate function only if not in last iteration
                    # the reason we do this: in a stochastic setting,
                    # no use to re-evaluate that function here
                    with torch.enable_grad():
                        loss = closure()
                    loss = float(loss)
                    # the last gradient now lives on in prev_flat_grad only
                    spare_grads.append(flat_grad.vec)
                    flat_grad, _ = gather()
                    opt_cond = flat_grad.max_abs <= tolerance_grad
                    ls_func_evals = 1

            # update func eval
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            ############################################################
            # check conditions
            ############################################################
            if n_iter == max_iter:
                break

            if current_evals >= max_eval:
                break

            # optimal condition
            if opt_cond:
                break

            # lack of progress: torch's d.mul(t).abs().max(), which is |max|d| * t| as
            # rounding is monotonic
            if (d_max * t).abs() <= tolerance_change:
                break

            if abs(loss - prev_loss) < tolerance_change:
                break

        state["d"] = d
        state["t"] = t
        state["old_dirs"] = old_dirs
        state["old_stps"] = old_stps
        state["ro"] = ro
        state["H_diag"] = H_diag
        state["prev_flat_grad"] = prev_flat_grad
        state["prev_loss"] = prev_loss

        return orig_loss


LBFGS.__doc__ = _TorchLBFGS.__doc__ + """
    fusedoptim: on CPU params of one dtype (float32, float64 or their complex types) each pass
    over the flat vector of all params is one fused parallel pass, with the same iterates and
    the same ``state`` and ``state_dict`` as torch.optim.LBFGS; other params run
    torch.optim.LBFGS's own step. One difference: an unsupported ``line_search_fn`` raises
    torch's RuntimeError at the start of ``step``, before the closure is evaluated.
"""
