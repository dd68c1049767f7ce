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
__all__ = ["build", "compile_spec", "load_spec", "Compiled", "GraphresBackbone", "SpecError", "GraphresError", "CheckpointError",
           "CheckpointWarning", "Diagnostic", "__version__"]


def __getattr__(name: str) -> Any:
    """``graphres.GraphresBackbone``, the class of every built module, imported (with torch) only
    when asked for, so that ``import graphres`` and the CLI's validate/info/render stay torch-free."""
    if name == "GraphresBackbone":
        from .backends.runtime import GraphresBackbone
        return GraphresBackbone
    raise AttributeError(f"module 'graphres' has no attribute '{name}'")


def build(spec: str | Path | Mapping[str, Any] | Compiled, overrides: Sequence[str] = (), *,
          checkpoint: str | Path | None = None, max_memory: int | str | None = None) -> "GraphresBackbone":
    """Compile ``spec`` (a path, a mapping or a :class:`Compiled`) into a torch module.

    ``overrides`` are ``key.path=value`` strings, as ``--set`` on the command line. The weights are
    initialised as OpenMMLab does; a checkpoint (the spec's ``init: {type: pretrained}`` or the
    ``checkpoint`` argument, which wins) is then loaded strictly apart from ``fc.*``. Raises
    :class:`SpecError` for spec mistakes and :class:`CheckpointError` for checkpoints that do not fit.

    Before allocating, the model's memory is estimated; one that needs more than ``max_memory``
    (bytes, a size such as ``"64G"``, or ``"unlimited"``; default: ``GRAPHRES_MAX_MEMORY``, else the
    memory available) is refused with E067 (docs/limits.md).
    """
    from .backends.torch_module import build_module

    from .passes.limits import check_memory

    compiled = spec if isinstance(spec, Compiled) else compile_spec(spec, overrides)
    check_memory(compiled, "build", max_memory)
    # the weights are initialised in init_weights(), as mmengine's runner has it: the spec's init
    # (mmengine's init_cfg list, a Pretrained checkpoint loaded last); an explicit checkpoint
    # replaces the spec's Pretrained entries
    model = build_module(compiled.graph, init=checkpoint is None)
    if checkpoint is not None:
        cfgs = [c for c in (model.init_cfg or []) if c.get("type") != "Pretrained"]
        model.init_cfg = cfgs + [{"type": "Pretrained", "checkpoint": checkpoint}]
        model.init_weights()
    return model


def _style_of(compiled: Compiled) -> str | None:
    """The one bottleneck style the spec's stages use (see ``passes.openmmlab.spec_style``)."""
    from .passes.openmmlab import spec_style
    return spec_style(compiled.spec)
