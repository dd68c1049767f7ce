"""graphres: a declarative model-graph compiler for ResNet-style backbones.

``graphres.build(spec)`` returns a torch module (a :class:`GraphresBackbone`);
``graphres.compile_spec(spec)`` the validated and analysed graph without importing torch. ``spec`` is
a path, the name of a shipped spec (``"resnet50"``, see ``graphres list``) or a mapping.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .diagnostics import CheckpointError, CheckpointWarning, Diagnostic, GraphresError, SpecError
from .pipeline import Compiled, compile_spec
from .spec.load import load_spec

if TYPE_CHECKING:
    from .backends.runtime import GraphresBackbone

__version__ = "0.1.0"
__all__ = ["build", "materialise", "compile_spec", "load_spec", "Compiled", "GraphresBackbone", "SpecError", "GraphresError", "CheckpointError",
           "CheckpointWarning", "Diagnostic", "__version__"]


def __getattr__(name: str) -> Any:
    """``graphres.GraphresBackbone``, the class of every built module, imported (with torch) only
    when asked for, so that ``import graphres`` and the CLI's validate/info/render stay torch-free."""
    if name == "GraphresBackbone":
        from .backends.runtime import GraphresBackbone
        return GraphresBackbone
    raise AttributeError(f"module 'graphres' has no attribute '{name}'")


def build(spec: str | Path | Mapping[str, Any] | Compiled, overrides: Sequence[str] = (), *,
          checkpoint: str | Path | None = None, max_memory: int | str | None = None, inference: bool = False,
          memory_format: str | None = None, compile: bool = False, cache_dir: str | Path | None = None,
          device: Any = None) -> "GraphresBackbone":
    """Compile ``spec`` (a path, a mapping or a :class:`Compiled`) into a torch module.

    ``overrides`` are ``key.path=value`` strings, as ``--set`` on the command line. The weights are
    initialised as OpenMMLab does; a checkpoint (the spec's ``init: {type: pretrained}`` or the
    ``checkpoint`` argument, which wins) is loaded strictly apart from ``fc.*``, in place of that
    initialisation. Raises :class:`SpecError` for spec mistakes and :class:`CheckpointError` for
    checkpoints that do not fit.

    The module is constructed on the meta device and then made real once on ``device`` (default
    the CPU): each tensor is written once, by the spec's initialisation or by the checkpoint, never
    both (backends/materialise.py). ``device="meta"`` returns it unmaterialised (shapes only, no memory,
    no initialisation); :func:`materialise` makes it real later.

    Before allocating, the model's memory is estimated; one that needs more than ``max_memory``
    (bytes, a size such as ``"64G"``, or ``"unlimited"``; default: ``GRAPHRES_MAX_MEMORY``, else the
    memory available) is refused with E067 (docs/limits.md).

    ``inference=True`` returns the eval-only build (a ``GraphresInference``, docs/inference.md):
    BatchNorm, SyncBN and FrozenBN folded into the convs, with the initialised or loaded weights;
    ``memory_format`` (``"channels_last"``, the default, or ``"contiguous"``) is its weights'
    layout; ``compile=True`` compiles it with inductor's freezing (``cache_dir``: the inductor
    cache for warm starts), the compile time kept as ``model.compile_seconds``.
    """
    from .backends.checkpoint import checked_state_dict
    from .backends.materialise import materialise as _materialise
    from .backends.torch_module import build_module
    from .passes.limits import check_memory
    from .pipeline import gc_paused

    if not inference and (memory_format is not None or compile or cache_dir is not None):
        raise ValueError("memory_format, compile and cache_dir apply to the inference build: pass inference=True")
    with gc_paused():
        compiled = spec if isinstance(spec, Compiled) else compile_spec(spec, overrides)
        on_meta = device is not None and str(device).split(":")[0] == "meta"
        if on_meta:
            if checkpoint is not None:
                raise ValueError("a checkpoint cannot be loaded onto the meta device: build on a real device, "
                                 "or build on meta and load it after graphres.materialise(model)")
            if inference:
                raise ValueError("the inference build folds real weights: it cannot be built on the meta device")
            return build_module(compiled.graph, init=False, device="meta")
        check_memory(compiled, "build", max_memory)
        model = _construct(compiled.graph, device)
        # the initialisation is init_weights()'s, as mmengine's runner has it (the spec's init_cfg
        # list, a Pretrained checkpoint loaded last); an explicit checkpoint replaces the spec's
        # Pretrained entries. The checkpoint is read once, here, and put in place of the
        # uninitialised tensors: init_weights runs only when it does not provide every parameter.
        cfgs = list(model.init_cfg or [])
        others = [c for c in cfgs if c.get("type") != "Pretrained"]
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        if checkpoint is not None:
            pretrained = [{"type": "Pretrained", "checkpoint": checkpoint}]
        state, report = None, None
        if pretrained:
            state, report = checked_state_dict(model.state_dict(), pretrained[-1]["checkpoint"],
                                               style=model.checkpoint_style, prefix=pretrained[-1].get("prefix"))
        model.init_cfg = others  # init_weights below must not load the file a second time
        made = _materialise(model, device or "cpu", state)
        model.init_cfg = others + pretrained
        if made:
            model._is_init = True
        else:  # a layer that cannot start on meta: construct it for real, init_weights loads the file
            model = build_module(compiled.graph, init=False, device=device)
            model.init_cfg = others + pretrained
            model.init_weights()
            report = getattr(model, "load_report", None)
        if report is not None:
            model.load_report = report
    if inference:
        from .backends.inference import build_inference
        return build_inference(compiled.graph, model.eval(), memory_format, compile, cache_dir)
    return model


# Constructing on the meta device costs a Python call per tensor operation (torch's device context);
# a layer's default initialisation costs a few nanoseconds per element. Where the layers are small
# (a spec of thousands of 8-channel blocks) constructing them for real, with the default draws taken
# from a copy of the random state, is faster; either way init_weights then writes each tensor once
# more at most, from the same random state, so both give the same tensors for the same seed.
META_MIN_PARAMS_PER_LAYER = 32_768


def _construct(g, device: Any) -> "GraphresBackbone":
    import torch
    from .backends.torch_module import build_module
    layers = sum(1 for _, d in g.nodes(data=True) if d["meta"].get("params"))
    if layers and g.graph["params"] / layers >= META_MIN_PARAMS_PER_LAYER:
        return build_module(g, init=False, device="meta", copies=True)
    target = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        return build_module(g, init=False, device=device, copies=True)


def materialise(model: "GraphresBackbone", device: Any = "cpu") -> "GraphresBackbone":
    """Make a module built with ``device="meta"`` real on ``device``, initialised as
    ``graphres.build`` initialises (the same tensors for the same seed); returns it."""
    from .backends.materialise import materialise as _materialise
    if not _materialise(model, device):
        raise ValueError(f"{type(model).__name__} has a layer whose tensors neither init_weights nor the layer's "
                         f"reset_parameters sets: build it on a real device")
    return model


def _style_of(compiled: Compiled) -> str | None:
    """The one bottleneck style the spec's stages use (see ``passes.openmmlab.spec_style``)."""
    from .passes.openmmlab import spec_style
    return spec_style(compiled.spec)
