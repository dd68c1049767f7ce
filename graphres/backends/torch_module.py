"""Backend: the graph IR -> an executable ``torch.nn.Module`` (OpenMMLab ResNet semantics).

The module tree mirrors the state-dict paths on the nodes (``conv1``, ``layer2.0.downsample.0``),
so torchvision and OpenMMLab checkpoints load as they are. Each block is a :class:`GraphBlock`
whose forward runs a flat, precomputed plan of module calls; networkx is used only while building.
ReLUs and residual adds run in place exactly where that is safe (the value has no other reader),
as in hand-written ResNets. Freezing, ``norm_eval``, initialisation and ``with_cp`` follow the
reference behaviour.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import networkx as nx
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .. import ir
from ..diagnostics import GraphresError

_ACTS: dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace),
    "relu6": lambda inplace: nn.ReLU6(inplace=inplace),
    "silu": lambda inplace: nn.SiLU(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(),
    "leaky_relu": lambda inplace: nn.LeakyReLU(0.01, inplace=inplace),
    "hardswish": lambda inplace: nn.Hardswish(inplace=inplace),
    "sigmoid": lambda inplace: nn.Sigmoid(),
    "hardsigmoid": lambda inplace: nn.Hardsigmoid(inplace=inplace),
}


_INPLACE_AFTER = frozenset({"conv", "norm", "add"})


@dataclass(frozen=True)
class FeatureInfo:
    """One backbone output: its index in out_indices' stage numbering, module, channels and stride."""

    index: int
    module: str
    channels: int
    stride: int


class FeatureInfoList(list):
    """The outputs' metadata, in output order, with timm-style accessors."""

    def channels(self) -> list[int]:
        return [f.channels for f in self]

    def strides(self) -> list[int]:
        return [f.stride for f in self]

    def module_names(self) -> list[str]:
        return [f.module for f in self]


class ConvWS2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al.; mmcv's ConvWS2d): before each call, every output
    channel's weight is shifted to mean 0 and divided by its (unbiased) standard deviation + eps."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        flat = w.reshape(w.shape[0], -1)
        mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
        std = flat.std(dim=1).reshape(-1, 1, 1, 1)
        return self._conv_forward(x, (w - mean) / (std + self.eps), self.bias)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose affine parameters do not train and whose statistics never update: it always
    normalises with the stored running statistics, in train mode too (detectron2's FrozenBN).
    Keys are BatchNorm2d's, so torchvision and OpenMMLab checkpoints load into it."""

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


class SyncBNError(GraphresError, RuntimeError):
    """SyncBN cannot synchronise in this setting; the message says how to fix it."""


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` with a defined single-process behaviour.

    Without a process group, or with a group of one process, there is nothing to synchronise: the
    layer computes exactly what BatchNorm2d computes (torch itself refuses CPU tensors as soon as
    any process group exists, even a one-process one). With several processes and CPU tensors it
    raises :class:`SyncBNError` naming the fix instead of torch's bare error."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            size = dist.get_world_size(group)
            if size == 1:
                return _BatchNorm.forward(self, x)
            if x.device.type == "cpu":
                raise SyncBNError(
                    f"SyncBN synchronises batch statistics across the {size} processes of the process group, "
                    f"which torch supports for GPU tensors only, but this input is on the CPU; run on GPUs, "
                    f"or use norm: {{type: BN}} (or model.eval()) for CPU training")
        return super().forward(x)


def make_module(op: str, attrs: dict, in_ch: int, out_ch: int, norm: dict, inplace: bool,
                conv: dict | None = None) -> nn.Module:
    if op == "conv":
        args = (in_ch, out_ch, attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])
        if conv and conv.get("type") == "ConvWS":
            return ConvWS2d(*args, bias=attrs["bias"], eps=conv.get("eps", 1e-5))
        return nn.Conv2d(*args, bias=attrs["bias"])
    if op == "linear":
        return Linear(in_ch, out_ch, bias=attrs["bias"])
    if op == "norm":
        return make_norm(norm, out_ch)
    if op == "act":
        return _ACTS[attrs["type"]](inplace)
    if op == "maxpool":
        return nn.MaxPool2d(attrs["kernel"], attrs["stride"], attrs["padding"], ceil_mode=attrs["ceil_mode"])
    if op == "avgpool":
        return nn.AvgPool2d(attrs["kernel"], attrs["stride"], attrs["padding"], ceil_mode=attrs["ceil_mode"],
                            count_include_pad=attrs["count_include_pad"])
    if op == "global_avgpool":
        return nn.AdaptiveAvgPool2d(1)
    raise AssertionError(f"op {op} has no module")


def make_norm(norm: dict, channels: int) -> nn.Module:
    kind, eps = norm["type"], norm.get("eps", 1e-5)
    momentum = norm.get("momentum", 0.1)
    if kind == "BN":
        layer = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=norm.get("affine", True))
    elif kind == "SyncBN":
        layer = SyncBatchNorm2d(channels, eps=eps, momentum=momentum, affine=norm.get("affine", True))
    elif kind == "FrozenBN":
        layer = FrozenBatchNorm2d(channels, eps=eps, momentum=momentum, affine=norm.get("affine", True))
    elif kind == "GN":
        layer = nn.GroupNorm(norm["num_groups"], channels, eps=eps, affine=norm.get("affine", True))
    elif kind == "IN":
        layer = nn.InstanceNorm2d(channels, eps=eps, momentum=momentum, affine=norm.get("affine", False))
    else:
        raise AssertionError(kind)
    for p in layer.parameters():
        p.requires_grad = norm.get("requires_grad", True) and kind != "FrozenBN"
    return layer


class Linear(nn.Linear):
    """``nn.Linear`` over a 1x1 feature map: flattens (N, C, 1, 1) to (N, C) first, as torchvision's
    ResNet does between ``avgpool`` and ``fc``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(x, 1) if x.dim() > 2 else x)


def _concat(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=1)


def _functional(op: str, inplace: bool) -> Callable:
    if op == "add":
        return operator.iadd if inplace else operator.add
    if op == "mul":
        return operator.mul
    if op == "concat":
        return _concat
    raise AssertionError(op)


def _install(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``path`` under ``root``, creating containers on the way
    (``nn.Sequential`` when the children are numbered, as OpenMMLab's downsample and deep stem)."""
    parts = path.split(".")
    parent = root
    for i, part in enumerate(parts[:-1]):
        child = parent._modules.get(part)
        if child is None:
            child = nn.Sequential() if parts[i + 1].isdigit() else nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(parts[-1], module)


def _build_plan(g: nx.DiGraph, nodes: Sequence[str], input_node: str, root: nn.Module, prefix: str,
                norm: dict) -> list[tuple[Callable, tuple[int, ...], tuple[int, ...]]]:
    conv = g.graph.get("conv")
    """Create the modules of ``nodes`` under ``root`` and return their call plan.

    The plan is a list of (callable, operand slots, slots to free afterwards); slot 0 is the input,
    slot i+1 the i-th step's output."""
    slot = {input_node: 0}
    inside = set(nodes)
    plan = []
    for n in nodes:
        d = g.nodes[n]
        srcs = ir.inputs_of(g, n)
        first = srcs[0]
        # In place is safe when nothing else reads the operand, it is not the plan's input, and its
        # producer's backward does not need it (conv, norm, add: the hand-written ResNet pattern).
        sole = (first in inside and first != input_node and g.out_degree(first) == 1
                and g.nodes[first][ir.OP] in _INPLACE_AFTER)
        if d[ir.MODULE] is not None:
            rel = d[ir.MODULE][len(prefix):]
            try:
                module = root.get_submodule(rel)
                if isinstance(module, nn.ReLU) and module.inplace and not sole:
                    module.inplace = False
            except AttributeError:
                module = make_module(d[ir.OP], d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], norm, sole, conv)
                _install(root, rel, module)
            fn: Callable = module
        else:
            fn = _functional(d[ir.OP], sole)
        plan.append((fn, tuple(slot[s] for s in srcs)))
        slot[n] = len(plan)
    last_read: dict[int, int] = {}
    for step, (_, args) in enumerate(plan):
        for a in args:
            last_read[a] = step
    drops: list[list[int]] = [[] for _ in plan]
    for value, step in last_read.items():
        drops[step].append(value)
    return [(fn, args, tuple(sorted(drop))) for (fn, args), drop in zip(plan, drops)]


def _run(plan: list, x: torch.Tensor) -> torch.Tensor:
    values: list = [x] + [None] * len(plan)
    for i, (fn, args, drop) in enumerate(plan, 1):
        if len(args) == 1:
            values[i] = fn(values[args[0]])
        else:
            values[i] = fn(*[values[a] for a in args])
        for d in drop:  # free each intermediate after its last reader, as a hand-written forward does
            values[d] = None
    return values[-1]


class GraphBlock(nn.Module):
    """One block instance (``layer2.0``): its modules, and a plan that calls them in order."""

    def __init__(self, g: nx.DiGraph, scope: str, nodes: list[str], input_node: str, norm: dict,
                 block_type: str, with_cp: bool):
        super().__init__()
        self.block_type = block_type
        self.with_cp = with_cp
        self._plan = _build_plan(g, nodes, input_node, self, scope + ".", norm)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self._plan, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return _run(self._plan, x)

    def extra_repr(self) -> str:
        return f"type={self.block_type}"


class GraphresBackbone(nn.Module):
    """A backbone compiled from a graphres spec; forward returns the tuple of out_indices outputs.

    With the spec's ``head`` it is a classifier, as torchvision's ResNet: forward returns the logits
    (N, num_classes) and :meth:`forward_features` the tuple of out_indices outputs."""

    def __init__(self, g: nx.DiGraph, init: bool = True):
        super().__init__()
        norm = g.graph["norm"]
        self.spec_name = g.graph["name"]
        self.frozen_stages = g.graph["frozen_stages"]
        self._frozen_flags = sorted(g.graph.get("frozen", {}))  # stages frozen on their own
        self.norm_eval = g.graph["norm_eval"]
        self.out_indices = tuple(g.graph["out_indices"])
        order = ir.topological_order(g)
        by_scope: dict[str, list[str]] = {}
        for n in order:
            if n != ir.INPUT:
                by_scope.setdefault(g.nodes[n][ir.SCOPE], []).append(n)
        self._stem_plan = _build_plan(g, by_scope["stem"], ir.INPUT, self, "", norm)
        head = g.graph.get("head")
        self._stem_modules = sorted({g.nodes[n][ir.MODULE].split(".")[0] for n in by_scope["stem"]
                                     if g.nodes[n][ir.MODULE]}, key=list(self._modules).index)
        self.stage_names: list[str] = []
        for st in g.graph["stages"]:
            blocks = []
            x = st["input"]
            for b in range(st["blocks"]):
                scope = f"{st['name']}.{b}"
                nodes = by_scope[scope]
                blocks.append(GraphBlock(g, scope, nodes, x, norm, st["block"], g.graph["with_cp"]))
                x = nodes[-1]
            self.add_module(st["name"], nn.Sequential(*blocks))
            self.stage_names.append(st["name"])
        self._out_set = frozenset(self.out_indices)
        self._head_plan = _build_plan(g, head["nodes"], head["input"], self, "", norm) if head else None
        self.num_classes = head["num_classes"] if head else None
        self.feature_info = FeatureInfoList(
            FeatureInfo(o["index"], o["name"], o["channels"], g.nodes[o["node"]][ir.META].get("stride", 0))
            for o in g.graph["outputs"])
        self._zero_init = [g.nodes[n][ir.MODULE] for n in order
                           if g.nodes[n][ir.OP] == "norm" and g.nodes[n][ir.ATTRS].get("zero_init")]
        if init:
            self.init_weights(g.graph["zero_init_residual"])
        self._freeze_stages()

    def init_weights(self, zero_init_residual: bool = True) -> None:
        """OpenMMLab's default: Kaiming-normal (fan_out, relu) convs, norms 1/0, then the last
        norm of each residual branch to 0 when ``zero_init_residual``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for path in self._zero_init:
                m = self.get_submodule(path)
                if getattr(m, "weight", None) is not None:
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        mods = []
        if self.frozen_stages >= 0:
            mods += [getattr(self, name) for name in self._stem_modules]
        frozen = sorted(set(range(self.frozen_stages)) | set(self._frozen_flags))
        mods += [getattr(self, self.stage_names[i]) for i in frozen]
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "GraphresBackbone":
        """Set train mode, then re-apply frozen_stages and norm_eval (and return self)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _stages(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        x = _run(self._stem_plan, x)
        outs = []
        for i, name in enumerate(self.stage_names):
            x = getattr(self, name)(x)
            if i in self._out_set:
                outs.append(x)
        return tuple(outs), x

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The out_indices stage outputs (what forward returns when the spec has no head)."""
        return self._stages(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        outs, last = self._stages(x)
        if self._head_plan is not None:
            return _run(self._head_plan, last)
        return outs


def build_module(g: nx.DiGraph, init: bool = True) -> GraphresBackbone:
    return GraphresBackbone(g, init=init)

