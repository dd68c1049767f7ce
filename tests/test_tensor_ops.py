"""The rank-generic tensor ops (flatten, unflatten, reshape, permute, softmax, matmul, layernorm,
scale, div_size, broadcast_add, expand): shape, parameter and MAC rules, their checks, the code
they generate, and a hand-written attention block against torch (MACs against FlopCounterMode)."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import ir
from graphres.diagnostics import SpecError
from graphres.ops import OPS
from graphres.spec.expr import ExprError, evaluate

TENSOR_OPS = ("flatten", "unflatten", "reshape", "permute", "softmax", "matmul", "layernorm", "scale", "div_size",
              "broadcast_add", "expand", "bias", "position_energy", "local_mask", "resize")


def shape(op, attrs, *shapes):
    a = {k: v for k, v in OPS[op].attrs.items() if not isinstance(v, object) or v is not None}
    a = {**{k: v for k, v in OPS[op].attrs.items()}, **attrs}
    assert OPS[op].check_shape(a, list(shapes)) is None
    return OPS[op].shape(a, list(shapes))


def problem(op, attrs, *shapes):
    a = {**OPS[op].attrs, **attrs}
    return OPS[op].check_shape(a, list(shapes))


def test_every_tensor_op_is_in_the_table_after_the_map_ops():
    names = list(OPS)
    assert names[-len(TENSOR_OPS):] == list(TENSOR_OPS)
    for name in TENSOR_OPS:
        assert OPS[name].shape is not None, name


@pytest.mark.parametrize("op, attrs, shapes, out", [
    ("flatten", {}, [(64, 7, 9)], (64, 63)),
    ("flatten", {"start": 0, "end": 1}, [(1, 5, 6)], (5, 6)),
    ("flatten", {"start": 0}, [(2, 3, 4)], (24,)),
    ("unflatten", {}, [(32, 63), (64, 7, 9)], (32, 7, 9)),
    ("reshape", {"dims": (8, -1, 2)}, [(64, 4)], (8, 16, 2)),
    ("reshape", {"dims": (64, 1, 1)}, [(64, 1)], (64, 1, 1)),
    ("permute", {"dims": (1, 0)}, [(64, 49)], (49, 64)),
    ("permute", {"dims": (0, 2, 1)}, [(8, 49, 16)], (8, 16, 49)),
    ("softmax", {"axis": -1}, [(49, 49)], (49, 49)),
    ("matmul", {}, [(49, 16), (16, 25)], (49, 25)),
    ("matmul", {}, [(1, 64, 49), (3, 49, 1)], (3, 64, 1)),  # leading axes broadcast
    ("layernorm", {"dims": (32, 1, 1)}, [(32, 1, 1)], (32, 1, 1)),
    ("scale", {}, [(64, 7, 7)], (64, 7, 7)),
    ("div_size", {"axis": -1, "sqrt": True}, [(49, 25), (49, 16)], (49, 25)),
    ("broadcast_add", {}, [(64, 7, 7), (64, 1, 1)], (64, 7, 7)),
    ("expand", {}, [(16, 49, 1), (16, 1, 25)], (16, 49, 25)),
])
def test_shape_rules(op, attrs, shapes, out):
    assert tuple(shape(op, attrs, *shapes)) == out


@pytest.mark.parametrize("op, attrs, shapes, message", [
    ("matmul", {}, [(64, 49), (64, 49)],
     "matmul at {node}: cannot multiply 64x49 by 64x49"),
    ("matmul", {}, [(2, 4, 5), (3, 5, 6)], "matmul at {node}: cannot multiply 2x4x5 by 3x5x6"),
    ("reshape", {"dims": (7, -1)}, [(64, 4)],
     "reshape at {node}: its 64x4 input (256 values) does not fit dims [7, -1]"),
    ("reshape", {"dims": (-1, -1)}, [(64, 4)], "reshape at {node}: dims [-1, -1] may hold one -1 and positive sizes only"),
    ("permute", {"dims": (0, 0)}, [(64, 4)],
     "permute at {node}: dims [0, 0] is not a permutation of the 2 axes of its 64x4 input"),
    ("softmax", {"axis": 2}, [(64, 4)], "softmax at {node}: axis 2 is not an axis of its 64x4 input"),
    ("flatten", {"start": 2, "end": 1}, [(64, 4, 4)],
     "flatten at {node}: axes 2..1 do not fit its 64x4x4 input (rank 3)"),
    ("unflatten", {}, [(32, 50), (64, 7, 7)],
     "unflatten at {node}: the last axis of its 32x50 input cannot take the spatial size of its 64x7x7 second input"),
    ("layernorm", {"dims": (32, 1, 1)}, [(16, 1, 1)],
     "layernorm at {node}: its input is 16x1x1, but it normalises the last axes as 32x1x1"),
    ("broadcast_add", {}, [(64, 7, 7), (32, 1, 1)],
     "broadcast_add at {node}: shapes 64x7x7 and 32x1x1 do not broadcast"),
])
def test_shape_checks(op, attrs, shapes, message):
    assert problem(op, attrs, *shapes)[0] == message


def test_params_and_macs():
    assert OPS["layernorm"].params({"dims": (32, 1, 1)}, 32, 32, {}) == 64
    assert OPS["layernorm"].tensors({"dims": (32, 1, 1)}, 32, 32, {}) == {"weight": (32, 1, 1), "bias": (32, 1, 1)}
    assert OPS["scale"].params({"size": 3, "value": 0}, 8, 8, {}) == 3
    assert OPS["scale"].tensors({"size": 1, "value": 0}, 8, 8, {}) == {"": (1,)}
    # matmul: one multiply-add per output element and reduced index (FlopCounterMode counts 2 FLOPs each)
    assert OPS["matmul"].macs_shape({}, [(3, 49, 16), (3, 16, 25)], (3, 49, 25)) == 3 * 49 * 25 * 16
    for name in TENSOR_OPS:
        if name not in ("layernorm", "scale", "bias", "position_energy", "local_mask"):
            assert OPS[name].params(OPS[name].attrs, 8, 8, {}) == 0, name


def test_float_parameters_and_int():
    assert evaluate("int(in_channels * ratio)", {"in_channels": 512, "ratio": 1 / 16}) == 32
    assert evaluate("int(in_channels * ratio)", {"in_channels": 64, "ratio": 0.3}) == 19
    with pytest.raises(ExprError, match="constant 2.5 is not allowed"):
        evaluate("2.5 * planes", {"planes": 4})
    with pytest.raises(ExprError, match="int\\(\\) takes one number"):
        evaluate("int(a, b)", {"a": 1, "b": 2})


ATTENTION = """
graphres: 1
name: attn
input: {channels: 3, size: [40, 56]}
stem: {type: conv7x7, channels: 32}
blocks:
  self_attention:
    doc: "single-head attention over the positions, with a learned gamma on the residual"
    params:
      heads: {type: int, default: 2}
    let:
      inner: in_channels // 2
    out_channels: in_channels
    layers:
      - {name: query, op: conv, out: inner, kernel: 1}
      - {name: q, op: reshape, dims: [heads, inner // heads, -1]}        # heads x d x N
      - {name: qt, op: permute, dims: [0, 2, 1]}                           # heads x N x d
      - {name: key, op: conv, out: inner, kernel: 1, from: input}
      - {name: k_pool, op: maxpool, kernel: 2}
      - {name: k_flat, op: flatten}                                        # inner x M
      - {name: k, op: reshape, dims: [heads, inner // heads, -1]}        # heads x d x M (from k_flat)
      - {name: energy, op: matmul, from: [qt, k]}                          # heads x N x M
      - {name: scaled, op: div_size, axis: -1, sqrt: true, from: [energy, qt]}
      - {name: attention, op: softmax, axis: -1}
      - {name: value, op: conv, out: inner, kernel: 1, from: k_pool}
      - {name: v, op: reshape, dims: [heads, inner // heads, -1]}
      - {name: vt, op: permute, dims: [0, 2, 1]}                           # heads x M x d
      - {name: mixed, op: matmul, from: [attention, vt]}                   # heads x N x d
      - {name: mt, op: permute, dims: [0, 2, 1]}
      - {name: flat, op: reshape, dims: [inner, -1]}                       # inner x N
      - {name: back, op: unflatten, from: [flat, input]}                   # inner x H x W
      - {name: proj, op: conv, out: in_channels, kernel: 1, bias: true}
      - {name: norm, op: layernorm, dims: [in_channels, 10, 14]}
      - {name: gamma, op: scale, value: 1}
      - {name: out, op: add, from: [input, gamma]}
stages:
  - {block: self_attention, blocks: 1}
"""


def reference_attention(block, x):
    """The block above, written out with torch."""
    n, c, h, w = x.shape
    inner, heads = c // 2, 2
    q = block.query(x).reshape(n, heads, inner // heads, -1).permute(0, 1, 3, 2)
    kp = torch.nn.functional.max_pool2d(block.key(x), 2)
    k = kp.reshape(n, heads, inner // heads, -1)
    attention = (q @ k / math.sqrt(q.shape[-1])).softmax(-1)
    v = block.value(kp).reshape(n, heads, inner // heads, -1).permute(0, 1, 3, 2)
    y = (attention @ v).permute(0, 1, 3, 2).reshape(n, inner, h, w)
    y = torch.nn.functional.layer_norm(block.proj(y), (c, h, w), block.norm.weight, block.norm.bias)
    return x + block.gamma * y


def test_attention_block_shapes_params_macs_and_numerics(write_spec):
    path = write_spec(ATTENTION)
    g = graphres.compile_spec(path).graph
    meta = lambda n: g.nodes[f"layer1.0.{n}"][ir.META]  # noqa: E731
    assert meta("q")["shape"] == (2, 8, 140)
    assert meta("k")["shape"] == (2, 8, 35)
    assert meta("energy")["shape"] == (2, 140, 35)
    assert meta("energy")["macs"] == 2 * 140 * 35 * 8
    assert meta("mixed")["macs"] == 2 * 140 * 8 * 35
    assert meta("back")["shape"] == (16, 10, 14)
    assert meta("norm")["params"] == 2 * 32 * 10 * 14
    assert meta("gamma")["params"] == 1
    model = graphres.build(path).eval()
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    assert model.state_dict()["layer1.0.gamma"].tolist() == [1.0]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)[0]
    assert counter.get_total_flops() == 2 * 2 * g.graph["macs"]  # batch 2, 2 FLOPs per MAC
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        expected = reference_attention(model.layer1[0], stem)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_a_conv_fed_a_matrix_is_located(write_spec):
    path = write_spec("""
        graphres: 1
        blocks:
          bad:
            params: {planes: {type: int}}
            out_channels: planes
            layers:
              - {name: flat, op: flatten}
              - {name: turned, op: permute, dims: [1, 0]}
              - {name: conv, op: conv, out: planes, kernel: 1}
        stages: [{block: bad, blocks: 1, planes: 8}]
    """)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    d = e.value.diagnostics[0]
    assert (d.code, d.message, d.span.line) == (
        "E120", "'conv' layer 'conv' needs a C x H x W map, but its input's first axis is not its channels", 9)


def test_a_list_attribute_must_be_a_list(write_spec):
    path = write_spec("""
        graphres: 1
        blocks:
          bad:
            params: {planes: {type: int}}
            out_channels: planes
            layers:
              - {name: r, op: reshape, dims: 3}
        stages: [{block: bad, blocks: 1, planes: 8}]
    """)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [(d.code, d.message) for d in e.value.diagnostics][0] == (
        "E011", "reshape.dims must be a non-empty list of integers or expressions, found 3 (an integer)")


def test_generated_source_of_the_tensor_ops(write_spec):
    from graphres.backends.codegen import generate
    source = generate(graphres.compile_spec(write_spec(ATTENTION)).graph).source
    for line in ("out = out.reshape(out.shape[0], 2, 8, -1)", "torch.matmul(", ".softmax(-1)", ".permute(0, 1, 3, 2)",
                 ".flatten(2, -1)", "nn.LayerNorm((32, 10, 14))", "self.gamma = parameter(1, 1)",
                 "self.gamma * ", "out_3.reshape(out_3.shape[:-1] + x.shape[-2:])"):
        assert line in source, line
