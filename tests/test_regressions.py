"""Regressions of issue 9: rules computed twice had drifted; each case once failed."""
import re

import pytest
import torch
import torch.nn.functional as F

import graphres
from graphres import ir
from graphres.ops import pool_out_size
from conftest import run_cli

SILU_SPEC = {
    "graphres": 1, "input": {"size": [32, 32]}, "act": {"type": "silu"},
    "stem": {"type": "conv7x7", "channels": 8},
    "blocks": {"twice": {"params": {"planes": "int"}, "out_channels": "planes", "layers": [
        {"name": "conv1", "op": "conv", "out": "planes", "kernel": 3},
        {"name": "bn1", "op": "norm"},
        {"name": "act", "op": "act"},
        {"name": "conv2", "op": "conv", "out": "planes", "kernel": 3},
        {"name": "bn2", "op": "norm"},
        {"name": "act", "op": "act"},
        {"op": "add", "from": ["act", "bn2"]}]}},
    "stages": [{"block": "twice", "blocks": 1, "planes": 8}],
}


def test_shared_silu_does_not_overwrite_a_value_read_later():
    model = graphres.build(SILU_SPEC, ["zero_init_residual=false"]).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        x = torch.randn(2, 3, 32, 32)
        stem = F.max_pool2d(F.silu(model.bn1(model.conv1(x))), 3, 2, 1)
        b = model.layer1[0]
        bn2 = b.bn2(b.conv2(F.silu(b.bn1(b.conv1(stem)))))
        expected = F.silu(bn2) + bn2  # the add reads bn2, so the second silu must not run in place
        out = model(x)[0]
    assert torch.equal(out, expected)
    g = graphres.compile_spec(SILU_SPEC).graph
    assert not g.nodes["layer1.0.act"][ir.META]["in_place"] and not g.nodes["layer1.0.act:1"][ir.META]["in_place"]
    assert not model.layer1[0].act.inplace


@pytest.mark.parametrize("size,kernel,stride,padding,expected", [
    (1, 2, 2, 0, 1), (2, 2, 2, 0, 1), (3, 2, 2, 0, 2), (4, 3, 2, 1, 3), (5, 3, 2, 0, 2), (1, 3, 2, 1, 1)])
def test_ceil_mode_pool_size_is_torchs(size, kernel, stride, padding, expected):
    assert pool_out_size(size, kernel, stride, padding, ceil_mode=True) == expected
    t = F.avg_pool2d(torch.zeros(1, 1, size, size), kernel, stride, padding, ceil_mode=True)
    assert t.shape[-1] == expected


def test_v1d_at_16_pixels_validates_and_matches_torch():
    r = run_cli("validate", "specs/resnet50_v1d.yaml", "--set", "input.size=16")
    assert r.returncode == 0, r.stderr
    g = graphres.compile_spec("specs/resnet50_v1d.yaml", ["input.size=16"]).graph
    model = graphres.build("specs/resnet50_v1d.yaml", ["input.size=16"]).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 16, 16))
    assert [tuple(o.shape[1:]) for o in outs] == [tuple(g.nodes[o["node"]][ir.META]["shape"])
                                                   for o in g.graph["outputs"]]
    assert tuple(outs[-1].shape) == (1, 2048, 1, 1)


def test_w002_caret_points_at_the_output_it_is_about(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("graphres: 1\ninput: {size: [32, 32]}\nstages:\n"
                    + "".join(f"  - {{block: basic, blocks: 1, planes: {p}, stride: {s}}}\n"
                              for p, s in [(64, 1), (128, 2), (256, 2), (512, 2)])
                    + "out_indices: [3, 0]\n")
    r = run_cli("validate", spec)
    assert r.returncode == 0, r.stderr
    head = f"{spec}:8:15: warning[W002]: feature output 3 (layer4) is only 1x1 for the input size 32x32 (stride 32)"
    lines = r.stderr.splitlines()
    assert lines[0] == head
    assert lines[2:4] == ["8 | out_indices: [3, 0]", "  |               ^"]


def test_render_names_the_size_the_macs_are_for(tmp_path):
    from graphres.backends.graphviz import render
    compiled = graphres.compile_spec("specs/resnet18.yaml", input_size=(64, 64))
    out = render(compiled.graph, tmp_path / "r.dot")
    text = out.read_text() if hasattr(out, "read_text") else (tmp_path / "r.dot").read_text()
    macs = compiled.graph.graph["macs"]
    assert re.search(r"MACs at 64x64", text) and "at 224x224" not in text
    assert macs == graphres.compile_spec("specs/resnet18.yaml", ["input.size=64"]).graph.graph["macs"]


def test_init_weights_defaults_to_the_specs_zero_init_residual():
    model = graphres.build("specs/resnet50.yaml", ["zero_init_residual=false"])
    torch.nn.init.zeros_(model.layer1[0].bn3.weight)
    model.init_weights()
    assert torch.equal(model.layer1[0].bn3.weight, torch.ones(256))
    model.init_weights(zero_init_residual=True)
    assert torch.equal(model.layer1[0].bn3.weight, torch.zeros(256))
    on = graphres.build("specs/resnet50.yaml")
    on.init_weights()
    assert torch.equal(on.layer1[0].bn3.weight, torch.zeros(256))
