"""Property: for random valid specs, the static analysis (shapes, strides, parameters, trainable
parameters, MACs, peak activation memory) equals what the built torch module has and does.

``make test`` runs 100 examples derandomised (the same examples every run, so CI never fails at
random). A long random run: ``GRAPHRES_PROPERTY_EXAMPLES=2000 GRAPHRES_PROPERTY_RANDOM=1
.venv/bin/python -m pytest tests/test_properties.py`` (hypothesis prints the failing spec)."""
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphres
from graphres import ir

from test_analysis import counted_flops, measured_peak


# a block written by the user: a named activation called twice (the second call's operand is read
# again by the add, so it must not run in place), and a squeeze-and-excitation gate (mul)
USER_BLOCK = {"params": {"planes": "int", "stride": {"type": "int", "default": 1}, "dilation": {"type": "int", "default": 1}},
              "out_channels": "planes", "layers": [
                  {"name": "conv1", "op": "conv", "out": "planes", "kernel": 3, "stride": "stride",
                   "padding": "dilation", "dilation": "dilation"},
                  {"name": "bn1", "op": "norm"},
                  {"name": "act", "op": "act"},
                  {"name": "conv2", "op": "conv", "out": "planes", "kernel": 3},
                  {"name": "bn2", "op": "norm"},
                  {"name": "act", "op": "act"},
                  {"name": "se.pool", "op": "global_avgpool"},
                  {"name": "se.fc", "op": "conv", "out": "planes", "kernel": 1, "bias": True},
                  {"name": "se.gate", "op": "act", "type": "sigmoid"},
                  {"name": "scale", "op": "mul", "from": ["act", "se.gate"]},
                  {"seq": "downsample", "from": "input", "when": "stride != 1 or in_channels != out_channels",
                   "layers": [{"op": "conv", "out": "out_channels", "kernel": 1, "stride": "stride"}, {"op": "norm"}]},
                  {"op": "add", "from": ["scale", "bn2", "downsample"]}]}


@st.composite
def specs(draw):
    n = draw(st.integers(1, 4))
    block = draw(st.sampled_from(["basic", "bottleneck", "user"]))
    stages = []
    for i in range(n):
        stage = {"block": block, "blocks": draw(st.integers(1, 2)), "planes": draw(st.sampled_from([8, 16, 24])) * 2 ** i,
                 "stride": draw(st.integers(1, 2)), "dilation": draw(st.integers(1, 3))}
        if block == "bottleneck":
            stage["style"] = draw(st.sampled_from(["pytorch", "caffe"]))
            stage["avg_down"] = draw(st.booleans())
            groups = draw(st.sampled_from([1, 2, 4]))
            if groups > 1:
                stage.update(groups=groups, base_width=draw(st.sampled_from([4, 8])), base_channels=16)
        stages.append(stage)
    norm = draw(st.sampled_from([{"type": "BN"}, {"type": "GN", "num_groups": 4}, {"type": "IN"}]))
    # InstanceNorm needs more than one spatial position (torch raises on 1x1): keep the last map >= 2x2
    low = 17 if norm["type"] != "IN" else 2 * 4 * 2 ** sum(s["stride"] == 2 for s in stages) + 1
    norm = dict(norm, requires_grad=draw(st.booleans()))
    out_indices = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))
    return {
        "graphres": 1,
        "blocks": {"user": USER_BLOCK},
        "act": {"type": draw(st.sampled_from(["relu", "silu", "gelu", "leaky_relu", "hardswish", "relu6"]))},
        "conv": {"type": draw(st.sampled_from(["Conv2d", "Conv2d", "ConvWS"]))},
        "input": {"channels": draw(st.integers(1, 4)),
                  "size": [draw(st.integers(low, max(70, low + 10))), draw(st.integers(low, max(70, low + 10)))]},
        "norm": norm,
        "stem": {"type": draw(st.sampled_from(["conv7x7", "deep"])), "channels": draw(st.sampled_from([16, 32]))},
        "stages": stages,
        "out_indices": draw(st.permutations(out_indices)),  # any order: forward returns stage order
        "frozen_stages": draw(st.integers(-1, n)),
    }


@settings(max_examples=int(os.environ.get("GRAPHRES_PROPERTY_EXAMPLES", 100)), deadline=None,
          derandomize=not os.environ.get("GRAPHRES_PROPERTY_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(specs())
def test_static_analysis_equals_torch(spec):
    compiled = graphres.compile_spec(spec)
    g = compiled.graph
    model = graphres.build(compiled).eval()
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    h, w = spec["input"]["size"]
    x = torch.randn(1, spec["input"]["channels"], h, w)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape[1:]) for o in outs] == [tuple(g.nodes[o["node"]][ir.META]["shape"]) for o in g.graph["outputs"]]
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert counted_flops(model, x) == 2 * g.graph["macs"]
    assert measured_peak(model, x) == g.graph["peak_bytes"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == g.graph["trainable_params"]
    for o, out in zip(g.graph["outputs"], outs):  # the size rule predicts torch's sizes
        b, s = g.nodes[o["node"]][ir.META]["formula"]
        assert tuple(out.shape[2:]) == ((h + b) // s, (w + b) // s)
