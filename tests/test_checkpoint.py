"""Loading torchvision- and OpenMMLab-layout checkpoints (weights_only), with clear mismatch reports."""
import pytest
import torch

import graphres
from graphres import CheckpointError
from reference_resnet import RefResNet, randomise


@pytest.fixture(scope="module")
def r18_weights():
    ref = RefResNet(depth=18)
    randomise(ref, seed=3)
    return ref.state_dict()


def _torchvision_checkpoint(sd):
    full = dict(sd)
    full["fc.weight"] = torch.randn(1000, 512)
    full["fc.bias"] = torch.randn(1000)
    return full


def test_torchvision_layout_loads_with_only_fc_ignored(tmp_path, r18_weights):
    path = tmp_path / "resnet18.pth"
    torch.save(_torchvision_checkpoint(r18_weights), path)
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert model.load_report.ignored == ["fc.bias", "fc.weight"]
    for k, v in r18_weights.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_spec_init_pretrained_loads(tmp_path, r18_weights, write_spec):
    ckpt = tmp_path / "w.pth"
    torch.save(r18_weights, ckpt)
    spec = write_spec(f"""
        _base_: {(graphres_root() / 'specs/resnet18.yaml')}
        init: {{type: pretrained, checkpoint: {ckpt}}}
    """)
    model = graphres.build(spec)
    assert torch.equal(model.layer4[1].conv2.weight, r18_weights["layer4.1.conv2.weight"])
    # zero_init_residual does not win over the checkpoint
    assert torch.equal(model.layer1[0].bn2.weight, r18_weights["layer1.0.bn2.weight"])


def graphres_root():
    from conftest import ROOT
    return ROOT


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_mmdet_detector_checkpoint_with_prefixes(tmp_path, r18_weights, wrap):
    sd = {f"module.backbone.{k}": v for k, v in r18_weights.items()}
    sd["module.neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 64, 1, 1)
    path = tmp_path / "det.pth"
    torch.save({"meta": {"epoch": 12}, wrap: sd}, path)
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert model.load_report.ignored == ["neck.lateral_convs.0.conv.weight"]
    assert torch.equal(model.conv1.weight, r18_weights["conv1.weight"])


def test_mismatches_are_listed_by_name(tmp_path, r18_weights):
    sd = dict(r18_weights)
    del sd["layer2.0.conv1.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert str(e.value) == (
        f"checkpoint '{path}' does not match the model:\n"
        "  missing in checkpoint (1): layer2.0.conv1.weight\n"
        "  unexpected in checkpoint (1): layer5.0.conv1.weight\n"
        "  shape mismatch (1): layer1.0.conv1.weight: checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3)")


def test_deep_stem_mismatch_gets_a_hint(tmp_path, r18_weights):
    path = tmp_path / "r18.pth"
    torch.save(r18_weights, path)
    with pytest.raises(CheckpointError, match="the spec has a deep stem .ResNetV1c/V1d. but the checkpoint a 7x7"):
        graphres.build({"backbone": {"type": "ResNetV1c", "depth": 18}}, checkpoint=path)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* safely"):
        graphres.build("specs/resnet18.yaml", checkpoint=path)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        graphres.build("specs/resnet18.yaml", checkpoint=tmp_path / "nope.pth")


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path, r18_weights):
    sd = {k: v for k, v in r18_weights.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert torch.equal(model.bn1.running_var, r18_weights["bn1.running_var"])


def _r50_weights():
    ref = RefResNet(depth=50)
    randomise(ref, seed=5)
    return ref.state_dict()


def test_caffe_checkpoint_into_pytorch_spec_warns(tmp_path):
    from graphres import CheckpointWarning
    config = "model = dict(backbone=dict(type='ResNet', depth=50, style='caffe', norm_eval=True))"
    path = tmp_path / "caffe.pth"
    torch.save({"meta": {"config": config}, "state_dict": {f"backbone.{k}": v for k, v in _r50_weights().items()}},
               path)
    with pytest.warns(CheckpointWarning) as w:
        model = graphres.build("specs/resnet50.yaml", checkpoint=path)
    expected = (f"checkpoint '{path}' was trained with style 'caffe' but the spec uses style 'pytorch': "
                "the keys match, the numerics will not (set style: caffe in block_args)")
    assert [str(x.message) for x in w] == [expected]
    assert model.load_report.warnings == [expected]


def test_matching_style_and_basic_blocks_do_not_warn(tmp_path, r18_weights):
    import warnings
    path = tmp_path / "caffe.pth"
    torch.save({"meta": {"config": "backbone=dict(style='caffe')"}, "state_dict": _r50_weights()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = graphres.build("specs/resnet50.yaml", ["block_args.style=caffe"], checkpoint=path)
    assert model.load_report.warnings == []
    path18 = tmp_path / "r18.pth"
    torch.save({"meta": {"cfg": "style: caffe"}, "state_dict": r18_weights}, path18)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # basic blocks accept style and ignore it
        assert graphres.build("specs/resnet18.yaml", checkpoint=path18).load_report.warnings == []
