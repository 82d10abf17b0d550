"""The optimizer's `state` mapping, which notices when anyone changes it.

NOTE: [Tracked state]
The fused path keeps each state (exp_avg, ...) in one flat buffer per bucket and puts views of
it into `optimizer.state[p]` under torch's keys. If anybody replaces or removes one of those
entries (a user resetting a buffer, a checkpoint library writing state back), the kernels would
keep updating the old buffer and the change would be silently lost. Checking every entry each
step would cost a Python loop over params, so instead the mapping and its per-param dicts bump
a version counter on every mutation; the plan records the version it was committed at and is
rebuilt (copying whatever the dicts now hold) when it differs. In-place changes to the tensors
need no tracking: they are the buffers the kernels use.
"""

from collections import defaultdict

import torch


def copy_loaded_tensors(entry):
    """Replaces every tensor of a param's state `entry` (also inside lists, as LBFGS keeps
    them) by a copy, so an optimizer never shares a tensor with the state_dict it loaded:
    torch.optim's load_state_dict keeps the dict's tensors where dtype and device match."""
    for key, value in entry.items():
        if isinstance(value, torch.Tensor):
            dict.__setitem__(entry, key, value.clone())
        elif isinstance(value, list):
            dict.__setitem__(entry, key, [v.clone() if isinstance(v, torch.Tensor) else v for v in value])


class ParamState(dict):
    """The state dict of one param; mutations bump the owning StateMap's version."""

    __slots__ = ("_owner",)

    def __init__(self, owner, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._owner = owner

    def _touch(self):
        self._owner.version += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._touch()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._touch()

    def __ior__(self, other):
        super().update(other)
        self._touch()
        return self

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._touch()

    def setdefault(self, key, default=None):
        if key not in self:
            self._touch()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._touch()
        return super().pop(*args)

    def popitem(self):
        self._touch()
        return super().popitem()

    def clear(self):
        super().clear()
        self._touch()

    def __reduce__(self):
        # Pickles (and deep-copies) as the plain dict torch.optim would have.
        return (dict, (dict(self),))


class StateMap(defaultdict):
    """`optimizer.state`: a defaultdict(dict) like torch's, whose mutations are counted."""

    def __init__(self, items=()):
        super().__init__()
        self.version = 0
        for key, value in dict(items).items():
            self[key] = value

    def __missing__(self, key):
        value = ParamState(self)
        super().__setitem__(key, value)
        return value

    def __setitem__(self, key, value):
        if not (isinstance(value, ParamState) and value._owner is self):
            value = ParamState(self, value)
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key):
        super().__delitem__(key)
        self.version += 1

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = {} if default is None else default
        return self[key]

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def clear(self):
        super().clear()
        self.version += 1

    def __reduce__(self):
        # Pickles as torch's defaultdict(dict) of plain dicts.
        return (_plain_state, (dict((k, dict(v)) for k, v in self.items()),))


def _plain_state(items):
    state = defaultdict(dict)
    state.update(items)
    return state
