"""Backend: an analysed graph and its trained (or initialised) eval module -> the inference build.

The inference pass (:mod:`graphres.passes.fold`) decided which norm folds into which conv and
wrote it on a copy of the IR; this module reads those decisions and does the arithmetic once, on
real tensors, in float64, then casts to the weights' dtype:

    w' = standardize(w) * gamma / sqrt(var + eps)          (standardize only for ConvWS)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta        (b = 0 for a conv without a bias)

The network class is generated from the folded IR (``codegen`` reads it like any other; the
convs with the activation and residual sum the pass fused into them are ``FusedConv2d``), built
on the meta device (nothing is initialised twice) and given the folded tensors. Then the weights
go to ``channels_last`` (the default; a ``contiguous`` build keeps torch's own conv kernels
instead of oneDNN's fused ones, whose outputs are channels_last) and, optionally, the module is
compiled with inductor's freezing.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any, List, Optional

import networkx as nx
import torch
from torch import nn

from .. import ir
from ..passes.fold import G_RENAMED, fold_for_inference
from .runtime import FusedConv2d, GraphresInference
from .torch_module import _network_class
from .codegen import generate

log = logging.getLogger("graphres.inference")

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
# chosen by benchmarks/inference.py on the 2-core CPU (docs/inference.md): channels_last was faster
# at batch 1 and 8, 1 and 2 threads
DEFAULT_MEMORY_FORMAT = "channels_last"


def memory_format_of(name: Any) -> torch.memory_format:
    """``"channels_last"`` / ``"contiguous"`` (or the torch object itself) -> torch's memory format."""
    if name is None:
        name = DEFAULT_MEMORY_FORMAT
    if isinstance(name, torch.memory_format):
        if name not in MEMORY_FORMATS.values():
            raise ValueError(f"memory_format={name} is not supported: use 'channels_last' or 'contiguous'")
        return name
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={name!r} is not one of 'channels_last', 'contiguous'")
    return MEMORY_FORMATS[name]


def folded_state(g: nx.DiGraph, folded: nx.DiGraph, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the inference network generated for ``folded`` (the pass's copy of
    ``g``), computed from ``model``, the eval network of ``g``."""
    source = model.state_dict()
    renamed = folded.graph.get(G_RENAMED, {})
    new_path = {old: new for new, old in renamed.items()}
    out: dict[str, torch.Tensor] = {}
    convs = {}
    for n in folded.nodes:
        d = folded.nodes[n]
        if "fold" in d[ir.META]:  # a conv (the pass's fold target)
            convs[d[ir.MODULE]] = d[ir.META]["fold"]
    folded_norms = {f["norm"] for f in convs.values() if f["norm"]}
    for key, value in source.items():
        module, _, leaf = key.rpartition(".")
        if module in folded_norms or new_path.get(module, module) in convs:
            continue
        out[f"{new_path.get(module, module)}.{leaf}"] = value
    for path, fold in convs.items():
        conv = model.get_submodule(renamed.get(path, path))
        w = conv.weight.detach().to(torch.float64)
        dtype = conv.weight.dtype
        if fold["standardize_eps"] is not None:
            flat = w.reshape(w.shape[0], -1)
            mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
            std = flat.std(dim=1).reshape(-1, 1, 1, 1)
            w = (w - mean) / (std + fold["standardize_eps"])
        b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if fold["norm"] is not None:
            norm = model.get_submodule(fold["norm"])
            scale = torch.rsqrt(norm.running_var.detach().to(torch.float64) + norm.eps)
            shift = -norm.running_mean.detach().to(torch.float64) * scale
            if norm.weight is not None:
                gamma = norm.weight.detach().to(torch.float64)
                scale, shift = scale * gamma, shift * gamma + norm.bias.detach().to(torch.float64)
            w = w * scale.reshape(-1, 1, 1, 1)
            b = b * scale + shift
        out[path + ".weight"] = w.to(dtype)
        if fold["norm"] is not None or fold["bias"]:
            out[path + ".bias"] = b.to(dtype)
    return out


def build_inference(g: nx.DiGraph, model: nn.Module, memory_format: Any = None, compile: bool = False,
                    cache_dir: str | os.PathLike | None = None) -> GraphresInference:
    """The inference build of ``model`` (the eval network built from the analysed graph ``g``,
    its weights initialised or loaded)."""
    fmt = memory_format_of(memory_format)
    folded = fold_for_inference(g)
    cls = _network_class(generate(folded))
    with torch.device("meta"):
        net = cls(init=False)
    state = folded_state(g, folded, model)
    device = next(iter(state.values())).device if state else torch.device("cpu")
    net.load_state_dict(state, strict=True, assign=True)
    net = net.to(device)
    for p in net.parameters():
        p.requires_grad = False
    net.memory_format = "channels_last" if fmt == torch.channels_last else "contiguous"
    if fmt == torch.channels_last:
        net = net.to(memory_format=torch.channels_last)
    else:  # oneDNN's fused kernels write channels_last outputs: a contiguous build keeps torch's convs
        for m in net.modules():
            if isinstance(m, FusedConv2d):
                m.prepack = False
    if hasattr(model, "load_report"):
        net.load_report = model.load_report
    net.compile_seconds = None
    if compile:
        compile_inference(net, g, cache_dir)
    return net


# -- the fused convolution inside torch.compile ----------------------------------------------------
#
# On its plain path (conv2d, +, activation) under torch.compile, inductor fuses FusedConv2d by
# itself: the same oneDNN convolutions as a compiled torchvision, no faster. So inside
# torch.compile (compile=True, or a torch.compile of the user's own) a FusedConv2d calls oneDNN's
# fused kernel through these operators (FusedConv2d.compiled_call, set below), opaque to inductor
# (it compiles everything around them), with the weight kept in oneDNN's blocked layout per thread
# count and batch, as the eager FusedConv2d does: faster than inductor's own weight prepacking on
# this CPU (docs/inference.md). torch.export still sees the plain path.

_PACKED: dict[int, tuple] = {}  # id(weight) -> (weakref to it, {(threads, batch, ...): packed weight})


def _packed_weight(weight: torch.Tensor, padding: List[int], stride: List[int], dilation: List[int], groups: int,
                   shape: List[int]) -> torch.Tensor:
    key = (torch.get_num_threads(), shape[0], weight._version, weight.data_ptr())
    entry = _PACKED.get(id(weight))
    if entry is None or entry[0]() is not weight:
        ident = id(weight)
        entry = _PACKED[ident] = (weakref.ref(weight, lambda _, ident=ident: _PACKED.pop(ident, None)), {})
    layouts = entry[1]
    packed = layouts.get(key)
    if packed is None:
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups, shape)
        if len(layouts) >= 4:  # the last four made, as FusedConv2d keeps
            layouts.pop(next(iter(layouts)))
        layouts[key] = packed
    return packed


@torch.library.custom_op("graphres::fused_conv2d", mutates_args=())
def fused_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int],
                 groups: int, act: str) -> torch.Tensor:
    """``act(conv2d(x, weight, bias) + residual)`` by oneDNN's fused kernel (FusedConv2d's); the
    output is channels_last."""
    channels_last = torch.channels_last
    x = x.contiguous(memory_format=channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=channels_last)
    packed = _packed_weight(weight, padding, stride, dilation, groups, list(x.shape))
    out = FusedConv2d.onednn_call(x, residual, packed, bias, stride, padding, dilation, groups, act)
    return out.contiguous(memory_format=channels_last)


@fused_conv2d.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return x.new_empty(_output_size(x, weight, stride, padding, dilation)).contiguous(
        memory_format=torch.channels_last)


@torch.library.custom_op("graphres::fused_conv2d_into_residual", mutates_args=("residual",))
def fused_conv2d_into_residual(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                               residual: torch.Tensor, stride: List[int], padding: List[int], dilation: List[int],
                               groups: int, act: str) -> None:
    """:func:`fused_conv2d` with the result written over ``residual`` (which has the output's
    shape), by oneDNN's in-place sum when ``residual`` is channels_last, else by a copy.

    A compiled build's layer that the inference pass found to be its residual's last reader
    (``reuse_residual``) calls it on a clone of the residual. Inductor removes the clone when
    nothing reads the residual afterwards, so a run of identity blocks keeps one buffer instead of
    allocating each block's output; where something still holds the residual (a
    forward hook that keeps a block's output), the clone stays and the result is the same."""
    x = x.contiguous(memory_format=torch.channels_last)
    packed = _packed_weight(weight, padding, stride, dilation, groups, list(x.shape))
    if residual.is_contiguous(memory_format=torch.channels_last):
        FusedConv2d.onednn_call(x, residual, packed, bias, stride, padding, dilation, groups, act, into_residual=True)
    else:
        residual.copy_(FusedConv2d.onednn_call(x, residual, packed, bias, stride, padding, dilation, groups, act))


@fused_conv2d_into_residual.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, act):
    return None


def _output_size(x: torch.Tensor, weight: torch.Tensor, stride: List[int], padding: List[int],
                 dilation: List[int]) -> tuple:
    """The (N, C, H, W) of a convolution's output."""
    n, _, h, w = x.shape
    k_h, k_w = weight.shape[2:]
    return (n, weight.shape[0], (h + 2 * padding[0] - dilation[0] * (k_h - 1) - 1) // stride[0] + 1,
            (w + 2 * padding[1] - dilation[1] * (k_w - 1) - 1) // stride[1] + 1)


def _compiled_call(m: FusedConv2d, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
    """FusedConv2d's call inside torch.compile (``FusedConv2d.compiled_call``, for a float32 CPU
    call that needs no gradient): one ``graphres::fused_conv2d``, or, for a layer that is its
    residual's last reader (``reuse_residual``), one ``graphres::fused_conv2d_into_residual``.
    Plain attribute and tensor-property reads, which dynamo traces without a break."""
    stride, padding, dilation = list(m.stride), list(m.padding), list(m.dilation)
    if m.reuse_residual and residual is not None and residual.dtype == torch.float32 \
            and residual.device.type == "cpu" \
            and tuple(residual.shape) == _output_size(x, m.weight, stride, padding, dilation):
        # on a copy, as far as Python sees: the residual is left as it was (a hook may hold it),
        # and inductor drops the copy when nothing reads the residual afterwards
        out = residual.clone(memory_format=torch.channels_last)
        fused_conv2d_into_residual(x, m.weight, m.bias, out, stride, padding, dilation, m.groups, m.act)
        return out
    return fused_conv2d(x, m.weight, m.bias, residual, stride, padding, dilation, m.groups, m.act)


if torch.backends.mkldnn.is_available():
    FusedConv2d.compiled_call = _compiled_call


def compile_inference(net: GraphresInference, g: nx.DiGraph, cache_dir: str | os.PathLike | None = None) -> float:
    """Compile ``net`` in place (``nn.Module.compile``) with inductor's freezing (the weights are
    constants, so conv weights are prepacked and folded into the kernels) and its FX graph cache
    (warm starts; in ``cache_dir`` when given, else inductor's default or ``TORCHINDUCTOR_CACHE_DIR``).
    The first call, on a batch-1 input of the spec's size, is made here and its time returned and
    kept as ``net.compile_seconds`` (and logged on the ``graphres.inference`` logger)."""
    if cache_dir is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.fspath(cache_dir)
    net.compile(backend="inductor", options={"freezing": True, "fx_graph_cache": True})
    param = next(net.parameters())
    example = torch.randn(1, g.graph[ir.G_INPUT_CHANNELS], *g.graph[ir.G_INPUT_SIZE], device=param.device,
                          dtype=param.dtype)
    if net.memory_format == "channels_last":
        example = example.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.no_grad():
        net(example)
    net.compile_seconds = time.perf_counter() - start
    log.info("compiled %s in %.2f s (inductor, freezing)", g.graph[ir.G_NAME], net.compile_seconds)
    return net.compile_seconds
