"""Backend: the graph IR -> an executable ``torch.nn.Module`` (OpenMMLab ResNet semantics).

The network is Python source generated from the IR (:mod:`graphres.backends.codegen`), compiled
once per distinct source and registered with :mod:`linecache`, so tracebacks, ``inspect`` and
``torch.jit.script`` see the generated lines, as with torch.fx's GraphModule. The module tree
mirrors the state-dict paths on the nodes (``conv1``, ``layer2.0.downsample.0``), so torchvision
and OpenMMLab checkpoints load as they are, and ``forward`` reaches every layer through that tree
at call time: replacing, wrapping or converting a submodule takes effect. networkx is used only
while generating.
"""
from __future__ import annotations

import contextlib
import hashlib
import linecache
import sys
import types

import networkx as nx

from .codegen import Generated, generate
from .runtime import (ConvWS2d, FeatureInfo, FeatureInfoList, FrozenBatchNorm2d, GraphresBackbone, RepeatedBlocks,
                      SyncBatchNorm2d, SyncBNError)

__all__ = ["build_module", "network_class", "generated_source", "GraphresBackbone", "FeatureInfo", "FeatureInfoList", "ConvWS2d",
           "FrozenBatchNorm2d", "SyncBatchNorm2d", "SyncBNError"]

_CLASSES: dict[str, type] = {}  # source digest -> network class (one compile per distinct source)


def _network_class(gen: Generated) -> type:
    digest = hashlib.sha1(gen.source.encode()).hexdigest()[:12]
    cls = _CLASSES.get(digest)
    if cls is None:
        module_name = f"graphres.generated.{gen.network.lower()}_{digest}"
        filename = f"<graphres-generated {gen.network} {digest}>"
        lines = gen.source.splitlines(keepends=True)
        linecache.cache[filename] = (len(gen.source), None, lines, filename)
        module = types.ModuleType(module_name)
        module.__file__ = filename
        # registered so that inspect.getsource and pickling by reference (torch.save(model) in this
        # process, multiprocessing with fork) find the classes
        sys.modules[module_name] = module
        exec(compile(gen.source, filename, "exec"), module.__dict__)  # noqa: S102  (our own generated code)
        cls = module.__dict__[gen.network]
        cls.generated_source = gen.source
        _CLASSES[digest] = cls
    return cls


def generated_source(g: nx.DiGraph, standalone: bool = False) -> str:
    """The Python source of the network for the analysed graph ``g`` (see ``codegen.generate``)."""
    return generate(g, standalone=standalone).source


def network_class(g: nx.DiGraph) -> type:
    """The network class generated for the analysed graph ``g`` (compiled once per source)."""
    return _network_class(generate(g))


def build_module(g: nx.DiGraph, init: bool = True, device=None, copies: bool = False) -> GraphresBackbone:
    """An instance of the network generated for ``g``, initialised (``init``) and frozen as the
    spec says; constructed under ``torch.device(device)`` when given (``"meta"``: no memory).

    ``copies`` (with ``init=False``): repeated blocks are copies of the first, with uninitialised
    tensors (:class:`~graphres.backends.runtime.RepeatedBlocks`): for a caller that writes every
    tensor next (``graphres.build``, through ``materialise``)."""
    cls = _network_class(generate(g))
    if copies and init:
        raise ValueError("copies are uninitialised: build them with init=False and initialise after")
    with RepeatedBlocks.copies() if copies else contextlib.nullcontext():
        if device is None:
            return cls(init=init)
        import torch
        with torch.device(device):
            return cls(init=init)
