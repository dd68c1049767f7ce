"""The OpenMMLab shorthand: every type and key maps to the explicit form, mistakes stay located."""
import textwrap

import pytest

import graphres
from graphres import SpecError
from graphres.spec.emit import to_explicit


def expand(backbone: dict, **outer) -> dict:
    return to_explicit(graphres.load_spec({"graphres": 1, **outer, "backbone": backbone}))


def test_resnet_defaults_follow_openmmlab():
    d = expand({"type": "ResNet", "depth": 18})
    assert d["stem"] == {"type": "conv7x7", "channels": 64}
    assert [(s["block"], s["blocks"], s["planes"], s["stride"]) for s in d["stages"]] == [
        ("basic", 2, 64, 1), ("basic", 2, 128, 2), ("basic", 2, 256, 2), ("basic", 2, 512, 2)]
    assert d["out_indices"] == [0, 1, 2, 3] and d["frozen_stages"] == -1
    assert d["norm_eval"] is True and d["zero_init_residual"] is True and d["with_cp"] is False


def test_v1c_v1d_and_channel_options():
    v1c = expand({"type": "ResNetV1c", "depth": 50, "stem_channels": 128, "base_channels": 32, "in_channels": 4})
    assert v1c["stem"] == {"type": "deep", "channels": 128}
    assert v1c["input"]["channels"] == 4
    assert [s["planes"] for s in v1c["stages"]] == [32, 64, 128, 256]
    assert v1c["stages"][0]["base_channels"] == 32
    v1d = expand({"type": "ResNetV1d", "depth": 50})
    assert v1d["stem"]["type"] == "deep" and all(s["avg_down"] for s in v1d["stages"])


def test_v1c_v1d_parameter_counts():
    # reference page: ResNetV1c/V1d-50 = 23,527,264 (avg_down adds no parameters)
    for kind in ("ResNetV1c", "ResNetV1d"):
        g = graphres.compile_spec({"backbone": {"type": kind, "depth": 50}}).graph
        assert g.graph["params"] == 23_527_264


def test_v1d_state_dict_layout():
    keys = graphres.build({"backbone": {"type": "ResNetV1d", "depth": 50}}).state_dict().keys()
    assert {"stem.0.weight", "stem.1.weight", "stem.3.weight", "stem.4.weight", "stem.6.weight",
            "stem.7.weight"} <= set(keys)
    assert "conv1.weight" not in keys
    # avg_down shifts the downsample keys even in layer1, as upstream
    assert "layer1.0.downsample.1.weight" in keys and "layer1.0.downsample.2.weight" in keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_resnext_params():
    # reference page: ResNeXt-50 32x4d = 22,979,904; ResNeXt-101 32x8d = 86,742,336
    g = graphres.compile_spec({"backbone": {"type": "ResNeXt", "depth": 50, "groups": 32, "base_width": 4}}).graph
    assert g.graph["params"] == 22_979_904
    g = graphres.compile_spec({"backbone": {"type": "ResNeXt", "depth": 101, "groups": 32, "base_width": 8}}).graph
    assert g.graph["params"] == 86_742_336


def test_style_and_dilations_pass_through():
    d = expand({"type": "ResNet", "depth": 50, "style": "caffe", "strides": [1, 2, 1, 1],
                "dilations": [1, 1, 2, 4], "out_indices": [3], "num_stages": 4})
    assert [(s["stride"], s["dilation"], s.get("style")) for s in d["stages"]] == [
        (1, 1, "caffe"), (2, 1, "caffe"), (1, 2, "caffe"), (1, 4, "caffe")]
    assert d["out_indices"] == [3]


def test_pretrained_becomes_init():
    assert expand({"type": "ResNet", "depth": 18, "init_cfg": {"type": "Pretrained", "checkpoint": "w.pth"}})[
        "init"] == {"type": "pretrained", "checkpoint": "w.pth"}
    assert expand({"type": "ResNet", "depth": 18, "pretrained": "w.pth"})["init"]["checkpoint"] == "w.pth"


@pytest.fixture
def check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(backbone_yaml: str) -> list[str]:
        text = "graphres: 1\nbackbone:\n" + textwrap.indent(textwrap.dedent(backbone_yaml).strip("\n"), "  ") + "\n"
        (tmp_path / "s.yaml").write_text(text)
        with pytest.raises(SpecError) as e:
            graphres.compile_spec("s.yaml")
        return [d.headline() for d in e.value.diagnostics]
    return run


def test_depth_and_type_errors(check):
    assert check("type: ResNet\ndepth: 51") == [
        "s.yaml:4:10: error[E013]: depth = 51 is not a ResNet depth (18, 34, 50, 101, 152)"]
    assert check("type: ResNeXt\ndepth: 18") == [
        "s.yaml:4:10: error[E013]: depth = 18 is not a ResNeXt depth (50, 101, 152)"]
    assert check("type: Resnet\ndepth: 50") == [
        "s.yaml:3:9: error[E013]: backbone type 'Resnet' is not one of 'ResNet', 'ResNetV1c', 'ResNetV1d', 'ResNeXt' "
        "(optionally prefixed mmdet. or mmseg.)"]
    assert check("depth: 50") == [
        "s.yaml:3:3: error[E012]: backbone needs 'type' (one of ResNet, ResNetV1c, ResNetV1d, ResNeXt)"]


def test_num_stages_and_lengths(check):
    assert check("type: ResNet\ndepth: 50\nnum_stages: 5") == [
        "s.yaml:5:15: error[E014]: num_stages = 5 must be <= 4"]
    assert check("type: ResNet\ndepth: 50\nnum_stages: 3\ndilations: [1, 1, 1, 2]") == [
        "s.yaml:6:14: error[E015]: dilations has 4 values but num_stages = 3"]


def test_default_strides_follow_num_stages():
    d = expand({"type": "ResNet", "depth": 18, "num_stages": 2, "out_indices": [0, 1]})
    assert [s["stride"] for s in d["stages"]] == [1, 2]


def test_frozen_stages_beyond_num_stages(check):
    assert check("type: ResNet\ndepth: 50\nnum_stages: 3\nstrides: [1, 2, 2]\ndilations: [1, 1, 1]\n"
                 "frozen_stages: 4") == [
        "s.yaml:8:18: error[E034]: frozen_stages = 4 is out of range for 3 stages (-1..3)"]


def test_not_supported_yet(check):
    assert check("type: ResNet\ndepth: 50\ndcn: {type: DCNv2, deform_groups: 1}\n"
                 "stage_with_dcn: [false, true, true, true]\n"
                 "plugins: [{cfg: {type: ContextBlock, ratio: 0.0625}, position: after_conv3}]\n"
                 "conv_cfg: {type: DCN}") == [
        "s.yaml:5:8: error[E112]: dcn and conv_cfg are both set: mmdetection builds the deformable conv2 only when "
        "conv_cfg is None ('conv_cfg must be None for DCN')",
        "s.yaml:8:20: error[E016]: conv type 'DCN' (deformable conv) is not supported yet"]


def test_stage_with_dcn_without_dcn_and_conflicting_init(check):
    assert check("type: ResNet\ndepth: 50\nstage_with_dcn: [false, true, true, true]\n"
                 "init_cfg: {type: Pretrained, checkpoint: a.pth}\npretrained: b.pth") == [
        "s.yaml:5:19: error[E017]: stage_with_dcn enables stages but dcn is null",
        "s.yaml:7:15: error[E017]: init_cfg and pretrained are both set"]


def test_unknown_backbone_key(check):
    assert check("type: ResNet\ndepth: 50\nfrozen_stage: 1") == [
        "s.yaml:5:3: error[E010]: unknown key 'frozen_stage' in a ResNet backbone"]


def test_groups_only_for_resnext(check):
    assert check("type: ResNet\ndepth: 50\ngroups: 32") == [
        "s.yaml:5:3: error[E010]: unknown key 'groups' in a ResNet backbone"]


def test_unreadable_spec_is_located():
    with pytest.raises(SpecError, match=r"missing\.yaml: error\[E004\]: cannot read 'missing\.yaml': No such file"):
        graphres.compile_spec("missing.yaml")
