"""Torch backend: a network constructed on the meta device -> real tensors, each written once.

``graphres.build`` constructs the generated network under ``torch.device("meta")``, where torch
allocates nothing and its layers' default ``reset_parameters`` draw nothing, and then makes it real
here, once:

1. every tensor a checkpoint does not provide gets uninitialised memory on the target device
   (the provided ones stay on the meta device for now);
2. what ``init_weights`` does not write gets its layer's own default: a norm's running
   statistics (``reset_running_stats``), and ``reset_parameters`` of any other layer (the
   classifier's ``fc`` keeps torch's default ``nn.Linear`` initialisation, as torchvision's);
3. ``model.init_weights()``, the one place that knows the spec's initialisation, runs as it
   always does; on the tensors still on the meta device (those the checkpoint provides) torch's
   init functions do nothing and draw no random numbers;
4. the checkpoint's tensors, cast to the model's dtypes, take their places
   (``load_state_dict(assign=True)``): no copy, no second initialisation.

Which tensors steps 2 and 3 write is recorded beforehand by running them on the meta device under
a dispatch mode (free: nothing is computed). A module whose tensors neither would write (a layer
type with constants set in its ``__init__``) cannot be made real this way: :func:`materialise`
then returns False and the caller builds eagerly instead.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils._python_dispatch import TorchDispatchMode


class _Writes(TorchDispatchMode):
    """Records the tensors that in-place ops (``normal_``, ``fill_``, ``zero_`` ...) write, and skips
    those ops on meta tensors (there they would compute nothing, slowly: torch runs its Python
    reference implementations for meta tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
            self.written.add(id(args[0]))
            if args[0].is_meta:
                return args[0]
        return func(*args, **(kwargs or {}))


def _written(fn: Callable[[], None]) -> set[int]:
    """The ids of the tensors ``fn`` writes; on meta tensors nothing is computed."""
    mode = _Writes()
    with mode, torch.no_grad():
        fn()
    return mode.written


def _own_tensors(m: nn.Module) -> Iterable[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) of the module's own parameters and buffers (not its children's)."""
    for name, p in m._parameters.items():
        if p is not None:
            yield "_parameters", name, p
    for name, b in m._buffers.items():
        if b is not None:
            yield "_buffers", name, b


def _reset(m: nn.Module, covered: bool) -> None:
    """A layer's own default for what ``init_weights`` leaves: a norm whose parameters
    ``init_weights`` sets (``covered``) only needs its running statistics."""
    if isinstance(m, _NormBase) and covered:
        m.reset_running_stats()
    else:
        m.reset_parameters()


def materialise(model: nn.Module, device: str | torch.device = "cpu",
                state: dict[str, torch.Tensor] | None = None) -> bool:
    """Make the meta-device ``model`` real on ``device``, each tensor written once (see the module
    docstring): ``state`` (checkpoint tensors under the model's own keys, already checked against
    it) provides some; ``init_weights`` and the layers' defaults the others. Returns False, leaving
    the model untouched, when some tensor would be left unwritten."""
    state = state or {}
    modules = list(model.named_modules())
    provided = {id(t) for prefix, m in modules for kind, name, t in _own_tensors(m)
                if (prefix + "." if prefix else "") + name in state}
    by_init = _written(model.init_weights)
    resets: list[tuple[nn.Module, bool]] = []
    for _, m in modules:
        own = [t for _, _, t in _own_tensors(m) if id(t) not in provided]
        left = [t for t in own if id(t) not in by_init]
        if left:
            covered = all(id(p) in by_init or id(p) in provided for p in m._parameters.values() if p is not None)
            if not hasattr(m, "reset_parameters") and not isinstance(m, _NormBase):
                return False
            resets.append((m, covered))
    by_reset = _written(lambda: [_reset(m, covered) for m, covered in resets])
    if any(id(t) not in provided and id(t) not in by_init and id(t) not in by_reset
           for _, m in modules for _, _, t in _own_tensors(m)):
        return False
    # 1. memory for everything the checkpoint does not provide
    made: dict[int, torch.Tensor] = {}  # id of the meta tensor -> its replacement
    replaced: list[torch.Tensor] = []  # the meta tensors, alive while their ids are compared
    for _, m in modules:
        for kind, name, t in list(_own_tensors(m)):
            if id(t) in provided:
                continue
            new = made.get(id(t))
            if new is None:  # a tensor shared by two modules stays shared
                empty = torch.empty_like(t, device=device)
                new = nn.Parameter(empty, requires_grad=t.requires_grad) if kind == "_parameters" else empty
                made[id(t)] = new
                replaced.append(t)
            getattr(m, kind)[name] = new
    # 2. the layers' own defaults, before init_weights (torch's order); 3. the spec's initialisation.
    # The provided tensors are still on the meta device: what would write them is skipped.
    if resets:
        _written(lambda: [_reset(m, covered) for m, covered in resets])
    if any(i in by_init for i in made):  # skipped when the checkpoint provides all it writes
        _written(model.init_weights)
    if state:  # 4. the checkpoint's tensors in place, in the model's dtypes
        own = model.state_dict(keep_vars=True)
        seen: set[int] = set()
        ready = {}
        for k, t in state.items():
            t = t.to(device=device, dtype=own[k].dtype)
            if not t.is_contiguous():
                t = t.contiguous()
            if t.untyped_storage().data_ptr() in seen:  # views of one storage must not tie parameters
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            ready[k] = t
        model.load_state_dict(ready, strict=False, assign=True)
    assert not any(t.is_meta for t in model.state_dict().values()), "a tensor was left on the meta device"
    return True
