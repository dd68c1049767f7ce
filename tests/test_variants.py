"""The ResNet family beyond the plain ResNet: output stride and dilation (torchvision's and
mmsegmentation's), variants against the independent reference (tests/reference_resnet.py), norms,
ConvWS, the classification head, SyncBN on one process, and every shipped spec trained one step
and drawn."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import SpecError, ir
from graphres.backends.graphviz import to_dot
from reference_resnet import RefResNet, WSConv, randomise

from conftest import SPECS, run_cli

SIZE = 64


def conv2_dilations(compiled, stage: int, conv: str = "conv2") -> list[int]:
    g = compiled.graph
    st = g.graph["stages"][stage]
    out = []
    for b in range(st["blocks"]):
        attrs = g.nodes[f"{st['name']}.{b}.{conv}"][ir.ATTRS]
        assert attrs["padding"] == attrs["dilation"]  # padding = dilation keeps the size
        out.append(attrs["dilation"])
    return out


def shorthand(size=512, **bb):
    return {"graphres": 1, "input": {"size": [size, size]}, "backbone": {"depth": 50, **bb}}


# ../shared/reference/mmdet-resnet.md, "Output stride and dilation": layer3 and layer4, block by block
DILATION_TABLE = {
    "mmdet strides (1,2,1,1), dilations (1,1,2,4)":
        (shorthand(type="ResNet", strides=[1, 2, 1, 1], dilations=[1, 1, 2, 4]),
         [2, 2, 2, 2, 2, 2], [4, 4, 4]),
    "mmseg same + contract_dilation (DeepLabV3 R50-D8)":
        ("specs/deeplabv3_r50_d8.yaml", [1, 2, 2, 2, 2, 2], [2, 4, 4]),
    "mmseg strides (1,2,2,1), dilations (1,1,1,2) + contract_dilation (D16)":
        (shorthand(type="mmseg.ResNetV1c", strides=[1, 2, 2, 1], dilations=[1, 1, 1, 2], contract_dilation=True),
         [1, 1, 1, 1, 1, 1], [1, 2, 2]),
    "torchvision replace_stride_with_dilation [F,T,T] (output stride 8)":
        ("specs/resnet50_os8.yaml", [1, 2, 2, 2, 2, 2], [2, 4, 4]),
    "mmseg D16 + multi_grid (1,2,4)":
        (shorthand(type="mmseg.ResNetV1c", strides=[1, 2, 2, 1], dilations=[1, 1, 1, 2], contract_dilation=True,
                   multi_grid=[1, 2, 4]),
         [1, 1, 1, 1, 1, 1], [1, 2, 4]),
}


@pytest.mark.parametrize("case", DILATION_TABLE)
def test_dilation_table_block_by_block(case):
    spec, layer3, layer4 = DILATION_TABLE[case]
    compiled = graphres.compile_spec(spec)
    assert conv2_dilations(compiled, 2) == layer3
    assert conv2_dilations(compiled, 3) == layer4


@pytest.mark.parametrize("output_stride, sizes", [(8, [128, 64, 64, 64]), (16, [128, 64, 32, 32]),
                                                  (32, [128, 64, 32, 16])])
def test_output_stride_stage_sizes_at_512(output_stride, sizes):
    compiled = graphres.compile_spec("specs/resnet50_os8.yaml", [f"output_stride={output_stride}"])
    assert [st["shape"][1] for st in compiled.graph.graph["stages"]] == sizes
    assert [st["shape"][2] for st in compiled.graph.graph["stages"]] == sizes
    model = graphres.build(compiled).eval()
    assert model.feature_info.strides() == [512 // s for s in sizes]


def test_output_stride_16_follows_torchvision():
    compiled = graphres.compile_spec("specs/resnet50_os8.yaml", ["output_stride=16"])
    assert conv2_dilations(compiled, 2) == [1] * 6
    assert conv2_dilations(compiled, 3) == [1, 2, 2]  # replace_stride_with_dilation [F, F, T]
    assert [st["stride"] for st in compiled.graph.graph["stages"]] == [4, 8, 16, 16]


def test_output_stride_on_basic_blocks_dilates_conv1():
    compiled = graphres.compile_spec("specs/resnet18.yaml", ["output_stride=8"])
    assert conv2_dilations(compiled, 2, "conv1") == [1, 2]
    assert conv2_dilations(compiled, 3, "conv1") == [2, 4]


def test_output_stride_8_numerics_equal_reference():
    model = graphres.build("specs/resnet50_os8.yaml").eval()
    ref = RefResNet(50, strides=(1, 2, 1, 1), dilations=(1, 1, [1, 2, 2, 2, 2, 2], [2, 4, 4])).eval()
    randomise(ref)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_output_stride_expansion_round_trips():
    from graphres.spec.emit import to_explicit
    compiled = graphres.compile_spec("specs/resnet50_os8.yaml")
    doc = compiled.explicit()
    assert doc["output_stride"] == 8
    assert [s["stride"] for s in doc["stages"]] == [1, 2, 1, 1]
    assert [s["dilation"] for s in doc["stages"]] == [1, 1, [1, 2, 2, 2, 2, 2], [2, 4, 4]]
    assert graphres.compile_spec(doc).explicit() == doc
    assert to_explicit(compiled.spec)["stages"][3]["stride"] == 2  # the spec as written: the trade is lowering's


def errors(spec, overrides=()):
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(spec, overrides)
    return [d.headline() for d in e.value.diagnostics]


def test_output_stride_declared_differs_from_computed(write_spec):
    path = write_spec("""
        graphres: 1
        stages:
          - {block: basic, blocks: 2, planes: 64}
          - {block: basic, blocks: 2, planes: 128, stride: 2}
          - {block: basic, blocks: 2, planes: 256, stride: 1, dilation: 2}
        output_stride: 16
        """)
    assert errors(path) == [f"{path}:6:16: error[E051]: output_stride is declared 16 but the network reaches 8 "
                            "(stem 4, stage strides 1, 2, 1)"]


def test_output_stride_conflicts_with_a_stated_dilation(write_spec):
    path = write_spec("""
        graphres: 1
        stages:
          - {block: basic, blocks: 2, planes: 64}
          - {block: basic, blocks: 2, planes: 128, stride: 2}
          - {block: basic, blocks: 2, planes: 256, stride: 2, dilation: 2}
        output_stride: 8
        """)
    assert errors(path) == [
        f"{path}:5:52: warning[W001]: stages[2] (layer3) has stride 2 and dilation 2: it both downsamples and dilates",
        f"{path}:5:65: error[E052]: stages[2] (layer3) sets dilation 2 but output_stride 8 trades its stride 2 "
        "for dilation"]


def test_output_stride_value_is_checked():
    assert errors("specs/resnet50_os8.yaml", ["output_stride=12"]) == [
        "--set output_stride=12: error[E013]: output_stride = 12 is not one of 8, 16, 32"]


def test_mmseg_defaults_and_mmdet_differences():
    seg = graphres.compile_spec(shorthand(type="mmseg.ResNetV1c", base_channels=32))
    assert seg.spec.norm_eval is False
    assert seg.spec.stem_args["channels"].value == 64  # mmsegmentation: 64 whatever base_channels is
    det = graphres.compile_spec(shorthand(type="ResNetV1c", base_channels=32))
    assert det.spec.norm_eval is True and det.spec.stem_args["channels"].value == 32
    scoped = graphres.compile_spec({**shorthand(type="ResNetV1c", contract_dilation=True, strides=[1, 2, 1, 1],
                                                dilations=[1, 1, 2, 4]), "default_scope": "mmseg"})
    assert conv2_dilations(scoped, 3) == [2, 4, 4] and scoped.spec.norm_eval is False


def test_mmseg_keys_on_an_mmdet_type_say_which_type_has_them():
    assert errors(shorthand(type="ResNetV1c", contract_dilation=True)) == [
        "<dict>: error[E010]: contract_dilation is an option of mmsegmentation's ResNetV1c, not mmdetection's"]


def test_multi_grid_length(write_spec):
    path = write_spec("""
        graphres: 1
        backbone: {type: mmseg.ResNetV1c, depth: 50, multi_grid: [1, 2]}
        """)
    assert errors(path) == [f"{path}:2:58: error[E015]: multi_grid has 2 values but the last stage (layer4) has "
                            "3 blocks"]


VARIANTS = {
    "v1c": ("specs/resnet50_v1c.yaml", dict(depth=50, deep_stem=True)),
    "v1d": ("specs/resnet50_v1d.yaml", dict(depth=50, deep_stem=True, avg_down=True)),
    "wide": ("specs/wide_resnet50_2.yaml", dict(depth=50, widths=[128, 256, 512, 1024])),
    # the 32x8d width rule of specs/resnext101_32x8d.yaml on 50 layers (101 layers cost CI time, not coverage)
    "resnext50_32x8d": ({"graphres": 1, "backbone": {"type": "ResNeXt", "depth": 50, "groups": 32, "base_width": 8}},
                        dict(depth=50, groups=32, base_width=8)),
    "caffe": ("specs/resnet50_caffe.yaml", dict(depth=50, style="caffe")),
    "deeplab": ("specs/deeplabv3_r50_d8.yaml",
                dict(depth=50, deep_stem=True, strides=(1, 2, 1, 1), dilations=(1, 1, [1, 2, 2, 2, 2, 2], [2, 4, 4]))),
    "se": ("specs/se_resnet50.yaml", dict(depth=50, se=16)),
}


@pytest.mark.parametrize("case", VARIANTS)
def test_variant_numerics_equal_reference(case):
    path, kwargs = VARIANTS[case]
    model = graphres.build(path).eval()
    ref = RefResNet(**kwargs).eval()
    randomise(ref)
    model.load_state_dict(ref.state_dict(), strict=True)  # the key layout, both ways
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_v1d_and_v1c_state_dict_layout():
    v1c = graphres.build("specs/resnet50_v1c.yaml").state_dict()
    v1d = graphres.build("specs/resnet50_v1d.yaml").state_dict()
    stem = {f"stem.{i}.weight" for i in (0, 1, 3, 4, 6, 7)}
    assert stem <= set(v1c) and stem <= set(v1d) and "conv1.weight" not in v1c
    assert "layer1.0.downsample.0.weight" in v1c and "layer1.0.downsample.1.running_mean" in v1c
    # avg_down: the pool (no parameters) is downsample.0 in every stage, layer1 included
    assert "layer1.0.downsample.1.weight" in v1d and "layer1.0.downsample.2.running_mean" in v1d
    assert v1d["layer2.0.downsample.1.weight"].shape == (512, 256, 1, 1)
    assert not any(k.startswith("layer1.0.downsample.0") for k in v1d)


@pytest.mark.parametrize("kind, names", [("GN", ("gn1", "gn2", "gn3")), ("IN", ("in1", "in2", "in3")),
                                         ("SyncBN", ("bn1", "bn2", "bn3")), ("FrozenBN", ("bn1", "bn2", "bn3"))])
def test_norm_names_in_the_state_dict(kind, names):
    norm = {"type": kind, **({"num_groups": 32} if kind == "GN" else {}), **({"affine": True} if kind == "IN" else {})}
    model = graphres.build(["specs/resnet50.yaml"][0], [f"norm={norm}".replace("'", "")])
    keys = model.state_dict()
    stem = "gn1" if kind == "GN" else "in1" if kind == "IN" else "bn1"
    assert f"{stem}.weight" in keys
    for n in names:
        assert f"layer1.0.{n}.weight" in keys
    assert ("layer1.0.bn1.running_mean" in keys) == (kind in ("SyncBN", "FrozenBN"))


def test_group_norm_numerics_equal_reference():
    model = graphres.build("specs/resnet50.yaml", ["norm={type: GN, num_groups: 32}"]).eval()
    ref = RefResNet(50, norm=lambda ch: nn.GroupNorm(32, ch)).eval()
    randomise(ref)
    sd = {k.replace(".bn", ".gn").replace("bn1.", "gn1.") if k.startswith(("bn1", "layer")) else k: v
          for k, v in ref.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_frozen_bn_never_trains():
    model = graphres.build("specs/resnet50.yaml", ["norm={type: FrozenBN}", "norm_eval=false",
                                                    "frozen_stages=-1"]).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    before = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, SIZE, SIZE))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert model.conv1.weight.requires_grad


def test_frozen_bn_refuses_requires_grad_true():
    assert errors("specs/resnet50.yaml", ["norm={type: FrozenBN, requires_grad: true}"]) == [
        "--set norm={type: FrozenBN, requires_grad: true}: error[E017]: FrozenBN never trains its parameters, "
        "but norm.requires_grad is true"]


def test_conv_ws_numerics_equal_independent_definition():
    # train mode (batch statistics) keeps the activations of standardised weights in range
    model = graphres.build("specs/resnet50.yaml", ["conv={type: ConvWS}", "norm_eval=false", "frozen_stages=-1"])
    ref = RefResNet(50, conv=WSConv)
    randomise(ref)
    model.load_state_dict(ref.state_dict(), strict=True)
    model, ref = model.double(), ref.double()  # float64: 50 layers do not amplify rounding differences
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(model.train()(x), ref.train()(x)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_conv_ws_from_the_shorthand():
    compiled = graphres.compile_spec(shorthand(type="ResNet", conv_cfg={"type": "ConvWS"}, size=64))
    assert compiled.graph.graph["conv"] == {"type": "ConvWS", "eps": 1e-5}
    model = graphres.build(compiled)
    assert type(model.layer1[0].conv2).__name__ == "ConvWS2d"
    assert type(model.layer1[0].downsample[0]).__name__ == "ConvWS2d"


def test_head_loads_a_torchvision_classifier_checkpoint_strictly(tmp_path):
    ref = RefResNet(50, num_classes=1000).eval()
    randomise(ref)
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)  # torchvision's layout, fc included
    model = graphres.build("specs/resnet50_classifier.yaml", checkpoint=path).eval()
    assert model.load_report.ignored == []
    assert model.load_report.loaded == len(ref.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 1000)
        torch.testing.assert_close(logits, ref(x), rtol=0, atol=1e-5)
        assert len(model.forward_features(x)) == 4


def test_macs_with_head_equal_flop_counter():
    compiled = graphres.compile_spec("specs/resnet50_classifier.yaml")
    assert compiled.graph.graph["macs"] == 4_089_184_256  # torchvision's figure, fc included
    small = graphres.compile_spec("specs/resnet50_classifier.yaml", input_size=(SIZE, SIZE))
    model = graphres.build(small).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, SIZE, SIZE))
    assert counter.get_total_flops() == 2 * small.graph.graph["macs"]


def test_syncbn_without_a_process_group_is_batchnorm():
    torch.manual_seed(0)
    sync = graphres.build("specs/resnet18.yaml", ["norm={type: SyncBN}", "norm_eval=false"]).train()
    plain = graphres.build("specs/resnet18.yaml", ["norm={type: BN}", "norm_eval=false"]).train()
    plain.load_state_dict(sync.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    for a, b in zip(sync(x), plain(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_syncbn_in_a_one_process_group_on_cpu(tmp_path, monkeypatch):
    import torch.distributed as dist
    from graphres.backends.torch_module import SyncBNError
    model = graphres.build("specs/resnet18.yaml", ["norm={type: SyncBN}", "norm_eval=false"]).train()
    x = torch.randn(2, 3, SIZE, SIZE)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        outs = model(x)  # torch alone: "SyncBatchNorm expected input tensor to be on GPU ..."
        assert outs[-1].shape == (2, 512, 2, 2)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
        plain = graphres.build("specs/resnet18.yaml", ["norm={type: BN}", "norm_eval=false"]).train()
        plain.load_state_dict(model.state_dict())
        for a, b in zip(model(x), plain(x)):  # synchronised over gloo (here one process): BN's statistics
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
        with pytest.raises(SyncBNError, match=r"across the 4 processes .* its backend, nccl, cannot reduce CPU "
                                              r"tensors; use gloo"):
            model(x)
    finally:
        dist.destroy_process_group()


def test_act_section_sets_every_unnamed_activation():
    model = graphres.build("specs/resnet50.yaml", ["act={type: silu}"])
    assert isinstance(model.relu, nn.SiLU) and isinstance(model.layer3[2].relu, nn.SiLU)
    compiled = graphres.compile_spec("specs/se_resnet50.yaml", ["act={type: hardswish}"])
    assert compiled.graph.nodes["layer1.0.se.gate"][ir.ATTRS]["type"] == "sigmoid"  # named its own
    assert compiled.graph.nodes["layer1.0.relu"][ir.ATTRS]["type"] == "hardswish"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_trains_one_step_and_draws(path):
    compiled = graphres.compile_spec(path, input_size=(SIZE, SIZE))
    model = graphres.build(compiled).train()
    out = model(torch.randn(2, compiled.graph.graph["input_channels"], SIZE, SIZE))
    loss = out.square().mean() if isinstance(out, torch.Tensor) else sum(o.square().mean() for o in out)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    torch.optim.SGD(trainable, lr=0.01).step()
    for level in ("stage", "block"):
        assert to_dot(compiled.graph, level).startswith("digraph")


def test_validate_says_a_classifier_returns_logits():
    r = run_cli("validate", "specs/resnet50_classifier.yaml")
    assert r.returncode == 0
    assert r.stdout == ("specs/resnet50_classifier.yaml: ok: resnet50_classifier: 4 stages, 16 blocks, 25,557,032 "
                        "parameters; outputs logits (1000 classes); features layer1 (256 ch, stride 4), layer2 "
                        "(512 ch, stride 8), layer3 (1024 ch, stride 16), layer4 (2048 ch, stride 32)\n")


def test_act_may_be_a_type_name():
    g = graphres.compile_spec("specs/resnet18.yaml", ["act=gelu"]).graph
    assert g.nodes["layer1.0.relu"][ir.ATTRS]["type"] == "gelu"


def test_half_done_output_stride_change_warns(write_spec):
    path = write_spec("""
        graphres: 1
        backbone: {type: ResNet, depth: 50, strides: [1, 2, 2, 1]}
        """)
    compiled = graphres.compile_spec(path)
    assert [d.headline() for d in compiled.warnings] == [
        f"{path}:2:56: warning[W010]: stages[3] (layer4) keeps the resolution (stride 1) without dilation: its 3x3 "
        "convs see half the context they would with stride 2"]
    assert graphres.compile_spec(path, ["backbone.dilations=[1,1,1,2]"]).warnings == []
