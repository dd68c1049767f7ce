"""Torch backend: a network constructed on the meta device -> its initialised module, each tensor
written once.

``graphres.build`` constructs the generated network under ``torch.device("meta")``, where torch
allocates nothing and the layers' default ``reset_parameters`` compute nothing and draw no random
numbers, and then makes it real here, once:

1. every tensor gets uninitialised memory on the target device;
2. without a checkpoint, ``model.init_weights()`` (the one place that knows the spec's
   initialisation) runs as it always does, and what it did not write gets its layer's own default
   afterwards: a norm's running statistics (``reset_running_stats``), ``reset_parameters`` of any
   other layer (the classifier's ``fc`` keeps torch's default ``nn.Linear`` initialisation, as
   torchvision's). What was written is read from the tensors' version counters: no tensor is
   written twice (except what ``init_weights`` itself writes twice: the zero-init norms);
3. with a checkpoint that provides every parameter (graphres' strict loading allows only the BN
   step counters to be missing), ``init_weights`` does not run at all: the buffers the checkpoint
   lacks are reset, and the checkpoint's tensors, cast to the model's dtypes, take the places of
   the uninitialised ones (``load_state_dict(assign=True)``: no copy). A checkpoint that provides
   only some parameters (no path of graphres' own) gets step 2 first, then its tensors.

A tensor that neither ``init_weights`` nor its layer's defaults write (a layer type with constants
computed in its ``__init__``, lost on the meta device) cannot be made real this way:
:func:`materialise` then returns False and the caller builds eagerly instead.

The random numbers drawn are ``init_weights``' own, in its order, then torch's default for the
layers it does not initialise (``fc``): the same seed gives the same tensors on every path (a build,
a meta build made real later, an eager construction followed by ``init_weights`` for a network
without such layers). Before this, each conv's default initialisation drew first, so the tensors
for a given seed differ from graphres' earlier versions; no test or document promised that sequence.
Nothing here enters a Python dispatch mode or runs an initialiser on meta tensors (either would
import torch._dynamo, seconds on first use).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def _own_tensors(m: nn.Module) -> Iterable[tuple[str, str, torch.Tensor]]:
    """(kind, name, tensor) of the module's own parameters and buffers (not its children's)."""
    for name, p in m._parameters.items():
        if p is not None:
            yield "_parameters", name, p
    for name, b in m._buffers.items():
        if b is not None:
            yield "_buffers", name, b


def materialise(model: nn.Module, device: str | torch.device = "cpu",
                state: dict[str, torch.Tensor] | None = None) -> bool:
    """Make the meta-device ``model`` real on ``device``, each tensor written once (see the module
    docstring). ``state``: checkpoint tensors under the model's own keys, already checked against it.
    Returns False when some tensor would be left unwritten (the model is then half-made: discard it)."""
    state = state or {}
    with torch.inference_mode(False), torch.no_grad():
        modules = list(model.named_modules())
        made: dict[int, torch.Tensor] = {}  # id of the meta tensor -> its replacement
        olds: list[torch.Tensor] = []  # the meta tensors, alive while their ids are compared
        keys: dict[int, str] = {}
        for prefix, m in modules:
            dot = prefix + "." if prefix else ""
            for kind in ("_parameters", "_buffers"):
                own = m.__dict__[kind]
                for name, t in list(own.items()):
                    if t is None:
                        continue
                    new = made.get(id(t))
                    if new is None:  # a tensor shared by two modules stays shared
                        if t.is_meta:
                            new = torch.empty(t.shape, dtype=t.dtype, device=device)
                            if kind == "_parameters":
                                new = nn.Parameter(new, requires_grad=t.requires_grad)
                        else:
                            new = t
                        made[id(t)] = new
                        olds.append(t)
                        keys[id(new)] = dot + name
                    own[name] = new
        params_provided = bool(state) and all(keys[id(p)] in state for p in model.parameters())
        if not params_provided:
            before = {id(t): t._version for t in made.values()}
            model.init_weights()
            for _, m in modules:
                params = [p for p in m._parameters.values() if p is not None]
                buffers = [b for b in m._buffers.values() if b is not None]
                params_done = all(p._version != before[id(p)] for p in params)
                if params_done and all(b._version != before[id(b)] for b in buffers):
                    continue
                if isinstance(m, _NormBase) and params_done:
                    m.reset_running_stats()
                elif hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        else:
            before = {id(t): t._version for t in made.values()}
            for _, m in modules:  # the buffers a checkpoint may lack: BN step counters
                if isinstance(m, _NormBase) and any(keys[id(t)] not in state for _, _, t in _own_tensors(m)):
                    m.reset_running_stats()
        unwritten = [keys[id(t)] for t in made.values() if t._version == before[id(t)] and keys[id(t)] not in state]
        if unwritten:
            return False
        if state:  # the checkpoint's tensors in place, in the model's dtypes
            own = model.state_dict(keep_vars=True)
            seen: set[int] = set()
            ready = {}
            for k, t in state.items():
                t = t.to(device=device, dtype=own[k].dtype)
                if not t.is_contiguous():
                    t = t.contiguous()
                if t.numel() and t.untyped_storage().data_ptr() in seen:  # views of one storage: not tied
                    t = t.clone()
                seen.add(t.untyped_storage().data_ptr())
                ready[k] = t
            _assign(model, modules, ready)
    return True


_PLAIN_LOADS = (nn.Module._load_from_state_dict, _NormBase._load_from_state_dict)


def _assign(model: nn.Module, modules: list[tuple[str, nn.Module]], ready: dict[str, torch.Tensor]) -> None:
    """Put ``ready``'s tensors in place of the model's (``load_state_dict(assign=True)``'s effect,
    requires_grad kept), directly where every layer loads the plain way (no loading hook of its own;
    a norm's only renames keys of very old checkpoints)."""
    by_name = dict(modules)
    if any(type(m)._load_from_state_dict not in _PLAIN_LOADS or m._load_state_dict_pre_hooks
           or m._load_state_dict_post_hooks for _, m in modules):
        model.load_state_dict(ready, strict=False, assign=True)
        return
    for key, t in ready.items():
        path, _, name = key.rpartition(".")
        m = by_name[path]
        if name in m._parameters:
            m._parameters[name] = nn.Parameter(t, requires_grad=m._parameters[name].requires_grad)
        else:
            m._buffers[name] = t
