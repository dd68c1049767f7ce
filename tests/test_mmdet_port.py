"""mmdetection 3.3's backbone tests (tests/test_models/test_backbones/test_resnet.py), ported to
graphres: the cases without DCN and plugins. Upstream builds ``ResNet(**kwargs)``; here the same
kwargs go through the shorthand and graphres.build. Upstream's AssertionError/KeyError cases are
located diagnostics here (their codes are asserted)."""
import pytest
import torch
from torch import nn
from torch.nn.modules import AvgPool2d, GroupNorm
from torch.nn.modules.batchnorm import _BatchNorm

import graphres
from graphres import SpecError


def resnet(kind="ResNet", **kwargs):
    torch.manual_seed(0)
    return graphres.build({"graphres": 1, "backbone": {"type": kind, **kwargs}})


def codes(kind="ResNet", **kwargs):
    with pytest.raises(SpecError) as e:
        resnet(kind, **kwargs)
    return sorted({d.code for d in e.value.diagnostics})


def is_norm(m):
    return isinstance(m, (GroupNorm, _BatchNorm))


def all_zeros(m):
    weight_zero = m.weight is None or bool((m.weight == 0).all())
    bias_zero = m.bias is None or bool((m.bias == 0).all())
    return weight_zero and bias_zero


def check_norm_state(modules, train_state):
    return all(m.training == train_state for m in modules if isinstance(m, _BatchNorm))


def test_resnet_basic_block_attributes_and_forward():
    block = resnet(depth=18).layer1[0]
    assert block.conv1.in_channels == 64 and block.conv1.out_channels == 64 and block.conv1.kernel_size == (3, 3)
    assert block.conv2.kernel_size == (3, 3) and block.norm1.num_features == 64 and block.norm2.num_features == 64
    assert block.downsample is None and block.stride == 1 and block.dilation == 1 and block.with_cp is False
    x = torch.randn(1, 64, 56, 56)
    assert block(x).shape == torch.Size([1, 64, 56, 56])


def test_resnet_bottleneck_styles():
    assert codes(depth=50, style="tensorflow") == ["E013"]  # upstream: AssertionError
    block = resnet(depth=50, style="pytorch").layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert (block.conv1_stride, block.conv2_stride, block.style) == (1, 2, "pytorch")
    block = resnet(depth=50, style="caffe").layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert (block.conv1_stride, block.conv2_stride, block.style) == (2, 1, "caffe")
    block = resnet(depth=50).layer1[1]
    assert block.inplanes == 256 and block.planes == 64 and block.expansion == 4
    assert [block.norm1_name, block.norm2_name, block.norm3_name] == ["bn1", "bn2", "bn3"]
    assert block.norm3 is block.bn3 and block.downsample is None
    assert block(torch.randn(1, 256, 56, 56)).shape == torch.Size([1, 256, 56, 56])


def test_resnet_bottleneck_with_cp():
    block = resnet(depth=50, with_cp=True).layer1[1]
    assert block.with_cp
    x = torch.randn(1, 256, 16, 16, requires_grad=True)
    out = block(x)
    assert out.shape == torch.Size([1, 256, 16, 16])
    out.sum().backward()
    assert x.grad is not None


def test_resnet_res_layer_downsample():
    m = resnet(depth=50)
    layer = m.layer1
    for i in range(len(layer)):
        assert layer[i].conv1.in_channels == (64 if i == 0 else 256)
        assert layer[i].conv1.out_channels == 64
    assert layer[0].downsample[0].out_channels == 256 and layer[0].downsample[0].stride == (1, 1)
    assert m.layer2[0].downsample[0].stride == (2, 2)
    m = resnet(depth=50, avg_down=True)
    assert isinstance(m.layer2[0].downsample[0], AvgPool2d) and m.layer2[0].downsample[1].stride == (1, 1)
    assert m.layer2[0].downsample[0].kernel_size == 2


def test_resnet_backbone_argument_errors():
    assert codes(depth=24) == ["E013"]  # upstream: KeyError
    assert codes(depth=18, num_stages=0) == ["E014"]  # upstream: AssertionError
    assert codes(depth=18, num_stages=5) == ["E014"]
    assert codes(depth=18, strides=(1,), dilations=(1, 1), num_stages=3) == ["E015"]
    assert codes(depth=50, pretrained=0) == ["E011"]  # upstream: TypeError
    assert codes(depth=50, pretrained="x.pth", init_cfg={"type": "Pretrained", "checkpoint": "x.pth"}) == ["E017"]


def test_resnet_default_attributes():
    m = resnet(depth=50)
    assert (m.depth, m.stem_channels, m.base_channels, m.num_stages) == (50, 64, 64, 4)
    assert (m.strides, m.dilations, m.out_indices) == ((1, 2, 2, 2), (1, 1, 1, 1), (0, 1, 2, 3))
    assert (m.frozen_stages, m.norm_eval, m.style, m.deep_stem, m.avg_down) == (-1, True, "pytorch", False, False)
    assert (m.zero_init_residual, m.with_cp, m.stage_blocks, m.feat_dim, m.inplanes) == \
        (True, False, (3, 4, 6, 3), 2048, 2048)
    assert m.res_layers == ["layer1", "layer2", "layer3", "layer4"] and m.norm1_name == "bn1"
    assert m.norm1 is m.bn1 and m.block is type(m.layer1[1]) and m.arch_settings == {50: (m.block, (3, 4, 6, 3))}
    assert m.conv_cfg is None and m.norm_cfg == {"type": "BN", "requires_grad": True, "eps": 1e-05}
    assert resnet(depth=18, base_channels=32).feat_dim == 256
    assert resnet(depth=50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2)).feat_dim == 1024


def test_resnet_frozen_stages():
    m = resnet(depth=18, frozen_stages=1)
    m.train()
    assert m.norm1.training is False
    for layer in [m.conv1, m.norm1]:
        assert all(not p.requires_grad for p in layer.parameters())
    for mod in m.layer1.modules():
        assert mod.training is False
    assert all(not p.requires_grad for p in m.layer1.parameters())
    assert m.layer2.training and all(p.requires_grad for p in m.layer2.parameters())


def test_resnet_v1d_frozen_stages():
    m = resnet("ResNetV1d", depth=18, frozen_stages=1)
    assert len(m.stem) == 9
    m.train()
    assert check_norm_state(m.stem, False)
    assert all(not p.requires_grad for p in m.stem.parameters())
    for mod in m.layer1.modules():
        assert mod.training is False


def test_resnet_forward_shapes():
    x = torch.randn(1, 3, 32, 32)
    for depth, chans in ((18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])):
        m = resnet(depth=depth)
        m.train()
        feat = m(x)
        assert [tuple(f.shape) for f in feat] == [(1, c, 8 // 2 ** i, 8 // 2 ** i) for i, c in enumerate(chans)]
    m = resnet(depth=18, out_indices=(0, 1, 2), num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1)).train()
    assert [tuple(f.shape) for f in m(x)] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]
    m = resnet("ResNetV1d", depth=50).train()  # norm_eval: the 1x1 layer4 BatchNorm uses running statistics
    assert [tuple(f.shape) for f in m(x)] == [(1, 256, 8, 8), (1, 512, 4, 4), (1, 1024, 2, 2), (1, 2048, 1, 1)]


def test_resnet_norm_eval_and_gn():
    m = resnet(depth=18, norm_eval=True)
    m.train()
    assert check_norm_state(m.modules(), False)
    m = resnet(depth=18, norm_eval=False)
    m.train()
    assert check_norm_state(m.modules(), True)
    m = resnet(depth=50, norm_cfg=dict(type="GN", num_groups=32, requires_grad=True))
    for mod in m.modules():
        if is_norm(mod):
            assert isinstance(mod, GroupNorm)
    assert m.norm1_name == "gn1" and m.layer1[0].norm3 is m.layer1[0].gn3


def test_resnet_zero_init_residual():
    m = resnet(depth=50, zero_init_residual=True)
    blocks = [b for name in m.res_layers for b in getattr(m, name)]
    assert all(all_zeros(b.norm3) for b in blocks)
    assert not any(all_zeros(b.norm3) for b in resnet(depth=50, zero_init_residual=False).layer1)
    blocks = [b for name in resnet(depth=18).res_layers for b in getattr(resnet(depth=18), name)]
    assert all(all_zeros(b.norm2) for b in blocks)


def test_resnet_init_cfg_and_pretrained(tmp_path, recwarn):
    m = resnet(depth=18)
    assert m.init_cfg == [{"type": "Kaiming", "layer": "Conv2d"},
                          {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]}]
    conv = m.layer3[0].conv1.weight
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert abs(conv.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.02
    path = tmp_path / "r18.pth"
    torch.save(m.state_dict(), path)
    c = graphres.compile_spec({"graphres": 1, "backbone": {"type": "ResNet", "depth": 18, "pretrained": str(path)}})
    assert [d.code for d in c.warnings] == ["W130"]
    loaded = graphres.build(c)
    assert loaded.init_cfg == [{"type": "Pretrained", "checkpoint": str(path)}]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))


def test_scripting_keeps_working_with_the_attributes():
    m = resnet(depth=18).eval()
    scripted = torch.jit.script(m)
    x = torch.randn(1, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(scripted(x), m(x)))
    assert isinstance(m.layer1[0], nn.Module) and "downsample" not in dict(m.layer1[0].named_children())
