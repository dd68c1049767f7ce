"""The closed table of primitive ops (shared by lowering, passes and backends; no torch).

Each op states its attributes with defaults, whether it owns a module (and so a state-dict name),
how many inputs it takes, and its rules for output channels, spatial size, parameters and MACs.
Block definitions may only use the ops listed in :data:`OPS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NORM_TYPES = ("BN", "SyncBN", "FrozenBN", "GN", "IN")
NORM_ABBR = {"BN": "bn", "SyncBN": "bn", "FrozenBN": "bn", "GN": "gn", "IN": "in"}
CONV_TYPES = ("Conv2d", "ConvWS")
ACT_TYPES = ("relu", "relu6", "silu", "gelu", "leaky_relu", "hardswish", "sigmoid", "hardsigmoid")


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    attrs: dict[str, Any]  # attribute -> default (REQUIRED when it must be given)
    has_module: bool = True
    arity: tuple[int, int] = (1, 1)  # min, max inputs
    choices: dict[str, tuple] = field(default_factory=dict)


REQUIRED = object()

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("conv", "2-d convolution (bias off by default, padding defaults to dilation * (kernel - 1) // 2)",
              {"out": REQUIRED, "kernel": REQUIRED, "stride": 1, "padding": None, "dilation": 1, "groups": 1,
               "bias": False}),
        OpDef("norm", "the spec's normalisation layer over the input channels (BN, SyncBN, GN or IN)",
              {"zero_init": False}),
        OpDef("act", "activation function", {"type": "relu"}, choices={"type": ACT_TYPES}),
        OpDef("maxpool", "max pooling", {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False}),
        OpDef("avgpool", "average pooling",
              {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True}),
        OpDef("global_avgpool", "average over all spatial positions (output 1x1)", {}),
        OpDef("add", "element-wise sum of its inputs (same shape)", {}, has_module=False, arity=(2, 8)),
        OpDef("mul", "element-wise product; the second input may be 1x1 spatially (broadcast)", {},
              has_module=False, arity=(2, 2)),
        OpDef("concat", "concatenation of its inputs along the channels, in 'from' order (same spatial size)", {},
              has_module=False, arity=(2, 8)),
        OpDef("linear", "fully connected layer over a 1x1 input (after global_avgpool); bias on by default",
              {"out": REQUIRED, "bias": True}),
    ]
}


def conv_padding(attrs: dict) -> int:
    if attrs.get("padding") is not None:
        return attrs["padding"]
    return attrs["dilation"] * (attrs["kernel"] - 1) // 2


def pool_stride(attrs: dict) -> int:
    return attrs["stride"] if attrs.get("stride") is not None else attrs["kernel"]


def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling size rule, including ceil_mode's 'last window starts inside' correction."""
    span = size + 2 * padding - kernel
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def out_hw(op: str, attrs: dict, hw: tuple[int, int]) -> tuple[int, int]:
    """Output spatial size of one node for an input of size ``hw``."""
    if op == "conv":
        pad = conv_padding(attrs)
        return tuple(conv_out_size(s, attrs["kernel"], attrs["stride"], pad, attrs["dilation"]) for s in hw)
    if op in ("maxpool", "avgpool"):
        return tuple(pool_out_size(s, attrs["kernel"], pool_stride(attrs), attrs["padding"], attrs["ceil_mode"])
                     for s in hw)
    if op == "global_avgpool":
        return (1, 1) if min(hw) > 0 else (0, 0)
    return hw


def param_count(op: str, attrs: dict, in_channels: int, out_channels: int, norm: dict | None) -> int:
    if op == "conv":
        count = out_channels * (in_channels // attrs["groups"]) * attrs["kernel"] ** 2
        return count + (out_channels if attrs["bias"] else 0)
    if op == "linear":
        return out_channels * in_channels + (out_channels if attrs["bias"] else 0)
    if op == "norm" and norm is not None:
        affine = norm.get("affine", norm["type"] != "IN")
        return 2 * out_channels if affine else 0
    return 0


def macs(op: str, attrs: dict, in_channels: int, out_channels: int, out_size: tuple[int, int]) -> int:
    """Multiply-accumulates of conv and linear layers, padding counted (torchvision's convention);
    norms, activations, pools, adds, muls and concats count 0, as torch's FlopCounterMode does."""
    if op == "conv":
        return out_channels * out_size[0] * out_size[1] * (in_channels // attrs["groups"]) * attrs["kernel"] ** 2
    if op == "linear":
        return out_channels * in_channels
    return 0

