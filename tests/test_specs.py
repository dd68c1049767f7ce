"""Every shipped spec: exact parameter counts (reference page ground truth), output shapes and
feature_info against real tensors, state-dict layout, and the shorthand == explicit property."""
import pytest
import torch

import graphres
from graphres import ir
from graphres.spec.emit import to_explicit

from conftest import SPECS

# ../shared/reference/mmdet-resnet.md, "backbone params (no fc)"
GROUND_TRUTH_PARAMS = {
    "resnet18.yaml": 11_176_512,
    "resnet34.yaml": 21_284_672,
    "resnet50.yaml": 23_508_032,
    "resnet101.yaml": 42_500_160,
    "resnet152.yaml": 58_143_808,
    "mmdet_faster_rcnn_r50.yaml": 23_508_032,
    "resnet50_caffe.yaml": 23_508_032,  # style changes no parameter
    "resnet50_v1c.yaml": 23_527_264,
    "resnet50_v1d.yaml": 23_527_264,
    "resnext50_32x4d.yaml": 22_979_904,
    "resnext101_32x8d.yaml": 86_742_336,
    "wide_resnet50_2.yaml": 66_834_240,
    # ResNet-101 plus the deep stem's difference from the 7x7 stem, which the page gives for depth 50
    "resnet101_v1d.yaml": 42_500_160 + (23_527_264 - 23_508_032),
    "deeplabv3_r50_d8.yaml": 23_527_264,  # ResNetV1c-50: dilation changes no parameter
    "resnet50_os8.yaml": 23_508_032,
    "se_resnet50.yaml": 26_039_024,
    "resnet50_classifier.yaml": 25_557_032,  # torchvision's count, with fc
    "mmdet_faster_rcnn_r50_dcn.yaml": 24_088_874,  # the reference page's ResNet-50 + DCN (stages 2-4)
    "res2net50_26w_4s.yaml": 25_699_120,  # timm's count (tools/parity/timm_res2net.py), with fc
    "resnest50d.yaml": 27_483_240,  # timm's count (tools/parity/timm_resnest.py), with fc
}
# SE-ResNet-18 as declared in specs/se_resnet18.yaml: ResNet-18 plus, per block, the SE convs
# (planes -> max(planes // r, 8) -> planes, with biases); r = 16, and r = 8 in the last stage.
_SE = sum(n * (2 * p * s + s + p) for n, p, s in [(2, 64, 8), (2, 128, 8), (2, 256, 16), (2, 512, 64)])
GROUND_TRUTH_PARAMS["se_resnet18.yaml"] = 11_176_512 + _SE


def test_every_spec_has_ground_truth():
    assert sorted(p.name for p in SPECS) == sorted(GROUND_TRUTH_PARAMS)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_static_params_equal_ground_truth(path):
    compiled = graphres.compile_spec(path)
    assert compiled.graph.graph["params"] == GROUND_TRUTH_PARAMS[path.name]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_module_matches_static_analysis(path):
    # at most 64x64: the output-stride-8 specs declare 512x512, which is slow on a CPU
    size = tuple(min(v, 64) for v in graphres.compile_spec(path).graph.graph["input_size"])
    compiled = graphres.compile_spec(path, input_size=size)
    model = graphres.build(compiled).eval()
    assert sum(p.numel() for p in model.parameters()) == GROUND_TRUTH_PARAMS[path.name]
    g = compiled.graph
    h, w = size
    with torch.no_grad():
        outs = model.forward_features(torch.randn(2, g.graph["input_channels"], h, w))
    assert len(outs) == len(g.graph["outputs"]) == len(model.feature_info)
    for out, info, o in zip(outs, model.feature_info, g.graph["outputs"]):
        static = g.nodes[o["node"]][ir.META]["shape"]
        assert tuple(out.shape) == (2,) + tuple(static)
        assert out.shape[1] == info.channels
        assert h // out.shape[2] == info.stride and w // out.shape[3] == info.stride


def test_resnet50_macs_match_torchvision_convention():
    g = graphres.compile_spec("specs/resnet50.yaml").graph
    # torchvision's 4,089,184,256 MACs include the fc layer's 2048 * 1000
    assert g.graph["macs"] == 4_089_184_256 - 2048 * 1000


def test_resnet50_feature_info():
    model = graphres.build("specs/resnet50.yaml")
    assert model.feature_info.channels() == [256, 512, 1024, 2048]
    assert model.feature_info.strides() == [4, 8, 16, 32]
    assert model.feature_info.module_names() == ["layer1", "layer2", "layer3", "layer4"]


def _torchvision_keys(depth: int) -> list[str]:
    """torchvision resnet{depth} state-dict keys minus fc, derived from its architecture table."""
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    convs = 2 if depth < 50 else 3
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for s, n in enumerate(blocks, 1):
        for b in range(n):
            p = f"layer{s}.{b}"
            for c in range(1, convs + 1):
                keys += [f"{p}.conv{c}.weight"] + [f"{p}.bn{c}.{k}" for k in bn]
            if b == 0 and (s > 1 or depth >= 50):
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{k}" for k in bn]
    return sorted(keys)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_state_dict_keys_follow_torchvision_layout(depth):
    model = graphres.build(f"specs/resnet{depth}.yaml")
    assert sorted(model.state_dict()) == _torchvision_keys(depth)


def test_shorthand_and_explicit_compile_to_identical_graphs():
    a = graphres.compile_spec("specs/mmdet_faster_rcnn_r50.yaml")
    b = graphres.compile_spec("specs/resnet50.yaml")
    assert to_explicit(a.spec) == to_explicit(b.spec)
    ga, gb = a.graph, b.graph
    assert ir.topological_order(ga) == ir.topological_order(gb)
    for n in ga:
        for key in (ir.OP, ir.ATTRS, ir.MODULE, ir.IN_CH, ir.OUT_CH, ir.SCOPE, ir.STAGE):
            assert ga.nodes[n][key] == gb.nodes[n][key], (n, key)
        assert ga.nodes[n][ir.META] == gb.nodes[n][ir.META]
    assert sorted(ga.edges(data=ir.PORT)) == sorted(gb.edges(data=ir.PORT))


def test_custom_block_builds_its_own_modules():
    model = graphres.build("specs/se_resnet18.yaml")
    block = model.layer4[0]
    assert block.se.reduce.weight.shape == (64, 512, 1, 1)  # max(512 // 8, 8)
    assert block.se.expand.bias.shape == (512,)
    assert model.layer1[0].se.reduce.weight.shape == (8, 64, 1, 1)  # max(64 // 16, 8)
    assert "layer2.0.downsample.0.weight" in model.state_dict()
    assert "layer1.0.downsample.0.weight" not in model.state_dict()


def _graph_signature(g):
    return ([(n, g.nodes[n][ir.OP], g.nodes[n][ir.ATTRS], g.nodes[n][ir.MODULE], g.nodes[n][ir.OUT_CH],
              g.nodes[n][ir.META]) for n in ir.topological_order(g)],
            sorted(g.edges(data=ir.PORT)), g.graph["params"], g.graph["macs"], g.graph["out_indices"],
            g.graph["frozen_stages"], g.graph["norm_eval"])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_expansion_round_trips(path):
    """`graphres expand` output is itself a spec that compiles to the same graph."""
    compiled = graphres.compile_spec(path)
    again = graphres.compile_spec(to_explicit(compiled.spec))
    assert _graph_signature(again.graph) == _graph_signature(compiled.graph)
    assert to_explicit(again.spec) == to_explicit(compiled.spec)
