"""Lowering copies a stage's repeated block instances from the first one lowered (lower.py,
_Template): the graph must be exactly what lowering every instance from its block definition
gives. The reference here is lowering with the copy switched off (every expression evaluated for
every instance), compared node by node: ids, insertion order, operands, every attribute."""
import pytest

import graphres
from graphres import ir, lower


def snapshot(g):
    """Everything but ir.TWIN, which only copies have: the passes' results (meta) included, so the
    passes' per-twin reuse of op rules is checked against computing them for every node."""
    nodes = [(n, {k: v for k, v in d.items() if k != ir.TWIN}) for n, d in g.nodes(data=True)]
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


def test_twins_name_the_first_instance_node_they_copy():
    g = graphres.compile_spec("resnet50").graph
    twins = {n: d[ir.TWIN] for n, d in g.nodes(data=True) if ir.TWIN in d}
    assert twins["layer1.2.conv2"] == "layer1.1.conv2" and twins["layer1.1.conv2"] == "layer1.1.conv2"
    assert twins["layer3.5.relu:2"] == "layer3.1.relu:2"
    assert twins["layer2.0.downsample.0"] == "layer2.0.downsample.0"  # recorded, never copied (stride 2)
    assert "conv1" not in twins and "maxpool" not in twins  # the stem is no stage block
    assert len(twins) == 4 * 12 + 12 * 10  # every block: 4 first ones of 12 nodes, 12 others of 10
    for n, t in twins.items():
        a, b = g.nodes[n], g.nodes[t]
        assert (a[ir.OP], a[ir.ATTRS], a[ir.IN_CH], a[ir.OUT_CH]) == (b[ir.OP], b[ir.ATTRS], b[ir.IN_CH], b[ir.OUT_CH])
        assert n.split(".", 2)[2] == t.split(".", 2)[2] and n.split(".")[0] == t.split(".")[0]


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


@pytest.mark.parametrize("spec,overrides", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_generated_source_of_copies_equals_generating_every_instance(spec, overrides, monkeypatch):
    """codegen takes a copied instance's forward and constructors from the instance it copies."""
    from graphres.backends import codegen
    g = graphres.compile_spec(spec, overrides).graph
    shared = codegen.generate(g, standalone=True).source
    with monkeypatch.context() as m:
        m.setattr(codegen, "_twin_instance", lambda *a: None)
        fresh = codegen.generate(g, standalone=True).source
    assert shared == fresh


def test_runs_of_repeated_blocks_are_written_as_loops():
    from graphres.backends import codegen
    src = codegen.generate(graphres.compile_spec("resnet101").graph).source
    assert "        self.layer3 = nn.Sequential(\n            BottleneckDownsample(512, 256, 2, 1024),\n" \
           "            *(Bottleneck(1024, 256) for _ in range(22)),\n        )\n" in src
    assert "        self.layer1 = nn.Sequential(\n            BottleneckDownsample(64, 64, 1, 256),\n" \
           "            Bottleneck(256, 64),\n            Bottleneck(256, 64),\n        )\n" in src  # 2 < RUN
    assert "        'layer1.2.bn3',\n        *(f'layer2.{i}.bn3' for i in range(4)),\n" in src
    assert "        *(f'layer3.{i}.bn3' for i in range(23)),\n" in src
    assert "        **{f'layer3.{i}': {'planes': 256, 'stride': 1, " in src and " for i in range(1, 23)},\n" in src
    m = graphres.build("resnet101")
    assert len(m.layer3) == 23 and m.layer3[22].planes == 256 and m.layer3[0].stride == 2
    assert m.zero_init_modules == tuple(f"layer{s + 1}.{i}.bn3" for s, n in enumerate((3, 4, 23, 3)) for i in range(n))


def test_a_run_check_error_in_repeated_blocks_is_reported_once():
    """E065 (a weight-standardised conv with one weight per output channel) in a block repeated 4
    times: reported at the stage's first instance of that block, not again at each copy."""
    bad = {"graphres": 1, "name": "ws", "input": {"channels": 3, "size": [32, 32]}, "norm": {"type": "BN"},
           "conv": {"type": "ConvWS"}, "stem": {"type": "conv7x7", "channels": 8},
           "blocks": {"b": {"params": {"planes": {"type": "int"}}, "out_channels": "planes",
                            "layers": [{"name": "dw", "op": "conv", "out": "planes", "kernel": 1,
                                        "groups": "planes"}]}},
           "stages": [{"block": "b", "blocks": 4, "planes": 8}], "out_indices": [0]}
    with pytest.raises(graphres.SpecError) as err:
        graphres.compile_spec(bad)
    assert [d.code for d in err.value.diagnostics] == ["E065"]
    assert "layer1.0.dw" in err.value.diagnostics[0].message


def test_copies_share_their_twins_attribute_dicts_and_the_inference_fold_leaves_them_alone():
    """ir.ATTRS dicts are read-only: a copy holds its twin's (as its block parameters); the
    inference fold gives a folded conv a new dict, so the analysed graph is unchanged."""
    import copy
    from graphres.passes.fold import fold_for_inference
    g = graphres.compile_spec("resnet50").graph
    twin, copied = g.nodes["layer3.1.conv1"], g.nodes["layer3.4.conv1"]
    assert copied[ir.TWIN] == "layer3.1.conv1" and copied[ir.ATTRS] is twin[ir.ATTRS]
    assert g.graph[ir.G_BLOCK_PARAMS]["layer3.4"] is g.graph[ir.G_BLOCK_PARAMS]["layer3.1"]
    before = copy.deepcopy({n: d[ir.ATTRS] for n, d in g.nodes(data=True)})
    h = fold_for_inference(g)
    assert {n: d[ir.ATTRS] for n, d in g.nodes(data=True)} == before
    assert h.nodes["layer3.4.conv1"][ir.ATTRS]["bias"] is True and before["layer3.4.conv1"]["bias"] is False
