"""Lowering copies a stage's repeated block instances from the first one lowered (lower.py,
_Template): the graph must be exactly what lowering every instance from its block definition
gives. The reference here is lowering with the copy switched off (every expression evaluated for
every instance), compared node by node: ids, insertion order, operands, every attribute."""
import pytest

import graphres
from graphres import ir, lower


def snapshot(g):
    nodes = [(n, dict(d)) for n, d in g.nodes(data=True)]
    edges = sorted((u, v, d[ir.PORT]) for u, v, d in g.edges(data=True))
    return nodes, edges, repr(sorted(g.graph.items(), key=lambda kv: kv[0]))


def mmdet(**backbone):
    return {"graphres": 1, "name": "m", "input": {"channels": 3, "size": [64, 64]},
            "backbone": {"type": "ResNet", "depth": 50, **backbone}}


GCB = {"type": "ContextBlock", "ratio": 1 / 16}
CASES = [
    ("resnet50", ()),
    ("resnet101_v1d", ()),
    ("resnext50_32x4d", ()),
    ("se_resnet50", ()),
    ("res2net50_26w_4s", ()),
    ("deeplabv3_r50_d8", ()),
    ("resnet18", ("norm={type: GN, num_groups: 16}", "frozen_stages=2")),
    (mmdet(dcn={"type": "DCNv2", "deform_groups": 1}, stage_with_dcn=[False, True, True, True]), ()),
    (mmdet(plugins=[{"cfg": GCB, "stages": [False, True, True, True], "position": "after_conv3"},
                    {"cfg": {"type": "NonLocal2d", "reduction": 4}, "stages": [False, False, True, False],
                     "position": "after_conv2"}]), ()),
    (mmdet(type="mmseg.ResNetV1c", dilations=[1, 1, 2, 4], strides=[1, 2, 1, 1], contract_dilation=True,
           multi_grid=[1, 2, 4],
           plugins=[{"cfg": GCB, "stages": [False, False, True, True], "position": "after_conv3"},
                    {"cfg": {**GCB, "postfix": 2}, "stages": [False, False, True, True], "position": "after_conv3"}]),
     ()),
]


@pytest.mark.parametrize("spec,overrides", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_copied_instances_equal_lowered_ones(spec, overrides, monkeypatch):
    copied = graphres.compile_spec(spec, overrides).graph
    with monkeypatch.context() as m:
        m.setattr(lower, "_template_key", lambda *a, **k: None)
        fresh = graphres.compile_spec(spec, overrides).graph
    assert snapshot(copied) == snapshot(fresh)


def test_repeated_blocks_are_copied_not_lowered_again(monkeypatch):
    """resnet50's 16 blocks: each stage's first block and its second (the first with stride 1 and
    the stage's own input channels) are lowered; the other 8 are copies."""
    lowered = []
    real = lower._lower_instance

    def spy(ctx, block, scope, *args, **kwargs):
        lowered.append(scope)
        return real(ctx, block, scope, *args, **kwargs)

    monkeypatch.setattr(lower, "_lower_instance", spy)
    graphres.compile_spec("resnet50")
    assert lowered == ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                       "layer4.0", "layer4.1"]


def test_errors_in_a_copied_block_are_still_reported_once():
    bad = {"graphres": 1, "name": "bad", "input": {"channels": 3, "size": [32, 32]}, "norm": {"type": "BN"},
           "stem": {"type": "conv7x7", "channels": 8},
           "blocks": {"b": {"params": {"planes": {"type": "int"}}, "out_channels": "planes",
                            "layers": [{"op": "conv", "out": "planes", "kernel": 3, "groups": 3}]}},
           "stages": [{"block": "b", "blocks": 4, "planes": 8}], "out_indices": [0]}
    with pytest.raises(graphres.SpecError) as err:
        graphres.compile_spec(bad)
    assert [d.headline() for d in err.value.diagnostics] == [
        "<dict>: error[E030]: conv groups = 3 must divide its 8 input and 8 output channels"]
