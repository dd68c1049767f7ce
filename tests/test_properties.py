"""Property: for random valid specs, the static analysis (shapes, strides, parameters) equals what
the built torch module has and produces."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphres
from graphres import ir


@st.composite
def specs(draw):
    n = draw(st.integers(1, 4))
    block = draw(st.sampled_from(["basic", "bottleneck"]))
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
    return {
        "graphres": 1,
        "input": {"channels": draw(st.integers(1, 4)),
                  "size": [draw(st.integers(low, max(70, low + 10))), draw(st.integers(low, max(70, low + 10)))]},
        "norm": norm,
        "stem": {"type": draw(st.sampled_from(["conv7x7", "deep"])), "channels": draw(st.sampled_from([16, 32]))},
        "stages": stages,
        "out_indices": sorted(draw(st.sets(st.integers(0, n - 1), min_size=1))),
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_static_analysis_equals_torch(spec):
    compiled = graphres.compile_spec(spec)
    g = compiled.graph
    model = graphres.build(compiled).eval()
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    h, w = spec["input"]["size"]
    with torch.no_grad():
        outs = model(torch.randn(1, spec["input"]["channels"], h, w))
    assert [tuple(o.shape[1:]) for o in outs] == [tuple(g.nodes[o["node"]][ir.META]["shape"]) for o in g.graph["outputs"]]
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
