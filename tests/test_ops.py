"""The op table: every op states every rule, and the rules hold on small cases."""
import dataclasses
import math

import pytest

from graphres.ops import OPS, REQUIRED, OpDef, TorchEmit, Window

SETTINGS = {"norm": {"type": "BN"}, "conv": {"type": "Conv2d"}}
SAMPLE = {"conv": {"out": 8, "kernel": 3}, "linear": {"out": 10}, "maxpool": {"kernel": 3, "stride": 2},
          "avgpool": {"kernel": 2}, "act": {"type": "relu"}, "deform_conv": {"out": 8, "kernel": 3},
          "reshape": {"dims": (8, -1)}, "permute": {"dims": (0, 2, 1)}, "layernorm": {"dims": (8, 1, 1)},
          "bias": {"dims": (8, 1, 4)}, "position_energy": {"heads": 8, "dim": 4, "feat": 16},
          "local_mask": {"max_len": 42, "kv_stride": 2, "spatial_range": 3}}


def attrs_of(name):
    op = OPS[name]
    a = {k: v for k, v in op.attrs.items() if v is not REQUIRED}
    a.update(SAMPLE.get(name, {}))
    op.normalize(a)
    return a


RULES = [f.name for f in dataclasses.fields(OpDef) if f.name not in ("name", "doc", "attrs")]


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_defines_every_rule(name):
    op = OPS[name]
    assert op.name == name and op.doc
    for rule in RULES:
        assert hasattr(op, rule)
    a = attrs_of(name)
    assert all(v is not None for v in a.values()), f"{name}: normalize leaves {a}"
    inputs = [("a", 8)] * op.arity[0]
    hw = [(16, 16)] * op.arity[0]
    assert isinstance(op.channels(a, [c for _, c in inputs]), int)
    assert op.check_channels(a, inputs, SETTINGS) is None
    out_hw = op.spatial(a, hw)
    assert len(out_hw) == 2 and all(isinstance(s, int) for s in out_hw)
    assert op.check_spatial(a, [(1, 1)] * op.arity[0] if name == "linear" else hw) is None
    out_ch = op.channels(a, [c for _, c in inputs])
    assert isinstance(op.params(a, 8, out_ch, SETTINGS), int)
    assert isinstance(op.macs(a, 8, out_ch, out_hw), int)
    w = op.window(a)
    assert w is None or isinstance(w, Window)
    assert isinstance(op.in_place(a), bool) and isinstance(op.overwritable, bool)
    assert isinstance(op.scratch(a, 8, out_ch, 1024, SETTINGS), int)
    assert isinstance(op.label(a, SETTINGS, True), str) and isinstance(op.label(a, SETTINGS, False), str)
    tensors = op.tensors(a, 8, out_ch, SETTINGS)
    assert isinstance(tensors, dict) and bool(tensors) == (op.params(a, 8, out_ch, SETTINGS) > 0)
    assert sum(math.prod(s) for k, s in tensors.items() if k == "" or k.rsplit(".", 1)[-1] in ("weight", "bias")) \
        == op.params(a, 8, out_ch, SETTINGS)
    assert isinstance(op.torch, TorchEmit)
    assert (op.torch.module is not None) == op.has_module  # a module op says how to build its module
    if op.has_module:
        text = op.torch.module(a, 8, out_ch, SETTINGS, False)
        assert text.startswith(("nn.", "ConvWS2d(", "FrozenBatchNorm2d(", "SyncBatchNorm2d(", "DeformConv2dPack(",
                                "ModulatedDeformConv2dPack(", "parameter(", "RelativePosition(", "local_constraint_map(")), text
    call = op.torch.call("self.m" if op.has_module else None, ["a", "b"][:max(op.arity[0], 1)], False)
    assert isinstance(call, str) and call


def test_conv_rules():
    a = attrs_of("conv") | {"stride": 2, "dilation": 2, "padding": 2}
    conv = OPS["conv"]
    assert conv.spatial(a, [(15, 16)]) == (8, 8)
    assert conv.params(a, 4, 8, SETTINGS) == 8 * 4 * 9
    assert conv.macs(a, 4, 8, (8, 8)) == 8 * 8 * 8 * 4 * 9
    assert conv.window(a) == Window(3, 2, 2, 2)
    assert conv.torch.module(a, 4, 8, SETTINGS, False) == \
        "nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=1, bias=False)"
    assert conv.check_channels(a | {"groups": 3}, [("x", 4)], SETTINGS)[0] == \
        "conv groups = 3 must divide its 4 input and 8 output channels"
    ws = {"norm": {"type": "BN"}, "conv": {"type": "ConvWS", "eps": 1e-4}}
    assert conv.torch.module(a, 4, 8, ws, False).startswith("ConvWS2d(4, 8, 3")
    assert conv.scratch(a, 4, 8, 100, ws) == max(2 * 288 * 4 + 3 * 32 - 100, 288 * 4 + 2 * 32)


def test_in_place_rules():
    assert OPS["add"].in_place({}) and OPS["act"].in_place({"type": "silu"})
    assert not OPS["act"].in_place({"type": "gelu"}) and not OPS["act"].in_place({"type": "sigmoid"})
    assert not OPS["mul"].in_place({}) and not OPS["concat"].in_place({})
    assert [n for n, op in OPS.items() if op.overwritable] == ["conv", "norm", "add", "deform_conv"]
    assert OPS["act"].torch.module({"type": "silu"}, 4, 4, SETTINGS, True) == "nn.SiLU(inplace=True)"
    assert OPS["act"].torch.module({"type": "gelu"}, 4, 4, SETTINGS, True) == "nn.GELU()"


def test_norm_emission_follows_the_settings():
    norm = OPS["norm"]
    assert norm.torch.module({}, 8, 8, {"norm": {"type": "GN", "num_groups": 4}}, False) == "nn.GroupNorm(4, 8)"
    assert norm.torch.module({}, 8, 8, {"norm": {"type": "BN", "eps": 1e-3, "momentum": 0.03}}, False) == \
        "nn.BatchNorm2d(8, eps=0.001, momentum=0.03)"
    assert norm.torch.module({}, 8, 8, {"norm": {"type": "FrozenBN"}}, False) == "FrozenBatchNorm2d(8)"
    assert norm.params({}, 8, 8, {"norm": {"type": "IN"}}) == 0
    assert norm.check_channels({}, [("x", 6)], {"norm": {"type": "GN", "num_groups": 4}})[0] == \
        "GN num_groups = 4 does not divide 6 channels"
