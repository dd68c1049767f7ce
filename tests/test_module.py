"""The compiled torch module against the reference behaviour: numerics (an independent plain
PyTorch implementation, tests/reference_resnet.py), initialisation, freezing, norm_eval, with_cp."""
import pytest
import torch
from torch import nn

import graphres
from reference_resnet import RefResNet, randomise

SIZE = 64  # small inputs keep the numeric checks fast; strides and dilations still apply


def spec(depth=50, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), **extra):
    bb = {"type": "ResNet", "depth": depth, "strides": list(strides), "dilations": list(dilations),
          "num_stages": len(strides)}
    bb.update(extra)
    return {"graphres": 1, "input": {"size": [SIZE, SIZE]}, "backbone": bb}


CASES = {
    "r18": (spec(18), dict(depth=18)),
    "r50": (spec(50), dict(depth=50)),
    "r50-caffe": (spec(50, style="caffe"), dict(depth=50, style="caffe")),
    "r50-d8": (spec(50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
               dict(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))),
    "r18-d16": (spec(18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
                dict(depth=18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2))),
    "r50-v1d": ({"graphres": 1, "input": {"size": [SIZE, SIZE]}, "backbone": {"type": "ResNetV1d", "depth": 50}},
                dict(depth=50, deep_stem=True, avg_down=True)),
    "x50-32x4d": ({"graphres": 1, "input": {"size": [SIZE, SIZE]},
                   "backbone": {"type": "ResNeXt", "depth": 50, "groups": 32, "base_width": 4}},
                  dict(depth=50, groups=32, base_width=4)),
    "r50-3stages-out1": (spec(50, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=[1]),
                         dict(depth=50, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(1,))),
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_independent_reference(case):
    spec_dict, ref_kwargs = CASES[case]
    model = graphres.build(spec_dict).eval()
    ref = RefResNet(**ref_kwargs).eval()
    randomise(ref)
    model.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes, both ways
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_gradients_equal_reference():
    model = graphres.build(spec(18, norm_eval=False)).train()  # BN in train mode in both
    ref = RefResNet(depth=18).train()
    randomise(ref)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    sum(o.sum() for o in model(x)).backward()
    sum(o.sum() for o in ref(x)).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_default_init_follows_openmmlab():
    torch.manual_seed(0)
    model = graphres.build("specs/resnet50.yaml")
    w = model.layer3[0].conv2.weight  # fan_out = 256 * 3 * 3
    assert abs(w.std().item() - (2.0 / (256 * 9)) ** 0.5) < 0.05 * (2.0 / (256 * 9)) ** 0.5
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.equal(model.bn1.bias, torch.zeros(64))
    for stage in (model.layer1, model.layer4):
        for block in stage:
            assert torch.equal(block.bn3.weight, torch.zeros_like(block.bn3.weight))  # zero_init_residual
            assert torch.equal(block.bn3.bias, torch.zeros_like(block.bn3.bias))
            assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))
    r18 = graphres.build("specs/resnet18.yaml")
    assert torch.equal(r18.layer2[1].bn2.weight, torch.zeros(128))


def test_zero_init_residual_can_be_turned_off():
    model = graphres.build("specs/resnet50.yaml", ["zero_init_residual=false"])
    assert torch.equal(model.layer1[0].bn3.weight, torch.ones(256))


def test_frozen_stages_and_norm_eval_reapplied_on_train():
    model = graphres.build("specs/resnet50.yaml")  # frozen_stages 1, norm_eval true
    assert model.train() is model and model.eval() is model
    model.train()
    for m in (model.conv1, model.bn1, model.layer1):
        assert not m.training
        assert not any(p.requires_grad for p in m.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert model.layer2.training and model.layer2[0].conv1.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # norm_eval: BN stays in eval mode


def test_norm_eval_false_trains_bn_but_not_frozen():
    model = graphres.build("specs/resnet50.yaml", ["norm_eval=false"]).train()
    assert model.layer2[0].bn1.training
    assert not model.layer1[0].bn1.training  # frozen stage stays in eval
    before = model.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, SIZE, SIZE))
    assert not torch.equal(before, model.layer2[0].bn1.running_mean)


def test_frozen_stem_of_deep_stem_and_all_stages():
    model = graphres.build({"backbone": {"type": "ResNetV1d", "depth": 18, "frozen_stages": 4}}).train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.stem.training and not model.layer4.training


def test_frozen_stages_zero_freezes_stem_only():
    model = graphres.build("specs/resnet18.yaml", ["frozen_stages=0"]).train()
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert all(p.requires_grad for p in model.layer1.parameters())


def test_norm_requires_grad_false_freezes_affine_only():
    model = graphres.build("specs/resnet18.yaml", ["norm.requires_grad=false"])
    assert not model.bn1.weight.requires_grad and not model.layer1[0].bn2.bias.requires_grad
    assert model.conv1.weight.requires_grad
    model.train()
    assert not model.bn1.training  # norm_eval is independent of requires_grad but on here


def test_with_cp_matches_plain_forward_and_backward():
    torch.manual_seed(0)
    plain = graphres.build(spec(18))
    cp = graphres.build(spec(18, with_cp=True))
    cp.load_state_dict(plain.state_dict())
    assert all(block.with_cp for stage in (cp.layer1, cp.layer4) for block in stage)
    x = torch.randn(2, 3, SIZE, SIZE, requires_grad=True)
    outs_plain = plain.train()(x)
    outs_cp = cp.train()(x)
    for a, b in zip(outs_plain, outs_cp):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in outs_plain).backward()
    g_plain = x.grad.clone()
    x.grad = None
    sum(o.sum() for o in outs_cp).backward()
    torch.testing.assert_close(x.grad, g_plain)


def test_with_cp_uses_checkpointing(monkeypatch):
    import torch.utils.checkpoint as tm  # the generated block calls torch.utils.checkpoint.checkpoint
    calls = []
    real = tm.checkpoint
    monkeypatch.setattr(tm, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    cp = graphres.build(spec(18, with_cp=True)).train()
    cp(torch.randn(1, 3, SIZE, SIZE, requires_grad=True))
    assert len(calls) == 8  # one per block
    calls.clear()
    with torch.no_grad():
        cp(torch.randn(1, 3, SIZE, SIZE))
    assert calls == []  # no checkpointing without grad


@pytest.mark.parametrize("norm,cls,name", [({"type": "GN", "num_groups": 32}, nn.GroupNorm, "gn1"),
                                           ({"type": "IN"}, nn.InstanceNorm2d, "in1"),
                                           ({"type": "BN"}, nn.BatchNorm2d, "bn1")])
def test_norm_types_and_names(norm, cls, name):
    model = graphres.build({"input": {"size": SIZE}, "norm": norm,
                            "stages": [{"block": "bottleneck", "blocks": 1, "planes": 64}]})
    assert isinstance(getattr(model.layer1[0], name), cls)
    assert isinstance(getattr(model, name), cls)
    assert "layer1.0.downsample.1" in dict(model.named_modules())
    model.eval()(torch.randn(1, 3, SIZE, SIZE))


def test_a_stage_frozen_on_its_own():
    spec = {"graphres": 1, "input": {"size": [64, 64]}, "norm": {"type": "BN"},
            "stem": {"type": "conv7x7", "channels": 16},
            "stages": [{"block": "basic", "blocks": 1, "planes": 16},
                       {"block": "basic", "blocks": 1, "planes": 32, "stride": 2, "frozen": True},
                       {"block": "basic", "blocks": 1, "planes": 64, "stride": 2}],
            "out_indices": [2]}
    compiled = graphres.compile_spec(spec)
    assert [d.code for d in compiled.warnings] == ["W005"]
    model = graphres.build(compiled).train()
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"layer2"}
    assert not model.layer2.training and model.layer1.training and model.layer3.training
    assert compiled.graph.graph["frozen_params"] == sum(p.numel() for p in model.layer2.parameters())
    from graphres.spec.emit import to_explicit
    assert to_explicit(compiled.spec)["stages"][1]["frozen"] is True
