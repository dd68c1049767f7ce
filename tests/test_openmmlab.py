"""graphres.integrations.openmmlab: GraphresBackbone built through mmengine's registry, from a
Config with custom_imports, initialised by init_weights() (a Pretrained checkpoint written here,
loaded there), inside a parent BaseModule as mmengine's runner initialises it."""
import math
import textwrap

import torch

import graphres
import graphres.integrations.openmmlab  # noqa: F401  (registers GraphresBackbone; mmengine: the test extra)
from mmengine.config import Config
from mmengine.model import BaseModule
from mmengine.registry import MODELS


def test_registry_builds_an_uninitialised_base_module():
    torch.manual_seed(0)
    m = MODELS.build(dict(type="GraphresBackbone", spec="resnet18", overrides=dict(frozen_stages=1)))
    assert isinstance(m, BaseModule) and isinstance(m, graphres.GraphresBackbone)
    assert type(m).__name__ == "Resnet18OpenMMLab"
    assert m.is_init is False and m.frozen_stages == 1
    assert m.init_cfg == [{"type": "Kaiming", "layer": "Conv2d"},
                          {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]}]
    assert m.layer1[0].bn2.weight.sum().item() == 64.0  # torch's construction-time ones: no zero init yet
    m.init_weights()
    assert m.is_init is True
    assert m.layer1[0].bn2.weight.abs().sum().item() == 0.0  # mmdetection's zero_init_residual
    assert m.bn1.weight.sum().item() == 64.0 and m.bn1.bias.abs().sum().item() == 0.0
    assert list(m.state_dict()) == list(graphres.build("resnet18").state_dict())
    assert not m.layer1[0].conv1.weight.requires_grad and m.layer2[0].conv1.weight.requires_grad


def test_config_with_custom_imports(tmp_path):
    path = tmp_path / "graphres_registry_config.py"  # a name no other test imports (mmengine imports it)
    path.write_text(textwrap.dedent("""\
        custom_imports = dict(imports=['graphres.integrations.openmmlab'], allow_failed_imports=False)
        model = dict(type='GraphresBackbone', spec='resnet50', overrides=dict(out_indices=(1, 3)),
                     init_cfg=[dict(type='Kaiming', layer='Conv2d', mode='fan_in'),
                               dict(type='Constant', val=0.5, layer=['_BatchNorm'])])
        """))
    cfg = Config.fromfile(str(path))
    m = MODELS.build(cfg.model)
    assert m.out_indices == (1, 3) and m.depth == 50
    torch.manual_seed(0)
    m.init_weights()
    assert m.layer1[0].bn3.weight.unique().tolist() == [0.5]  # an explicit init_cfg: no zero init
    w = m.layer3[0].conv2.weight
    assert abs(w.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.01  # Kaiming fan_in
    outs = m(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 8, 8), (1, 2048, 2, 2)]


def test_init_weights_loads_a_pretrained_runner_checkpoint_with_prefix(tmp_path):
    torch.manual_seed(1)
    source = graphres.build("resnet18")
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    ckpt = tmp_path / "epoch_12.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}},
               ckpt)
    m = MODELS.build(dict(type="GraphresBackbone", spec="resnet18",
                          init_cfg=dict(type="Pretrained", checkpoint=str(ckpt), prefix="backbone.")))
    assert not torch.equal(m.conv1.weight, source.conv1.weight)
    m.init_weights()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), source.state_dict().values()))
    assert m.is_init and m.load_report is not None


def test_a_parent_base_module_initialises_its_graphres_child():
    class Detector(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=None)
            self.backbone = MODELS.build(dict(type="GraphresBackbone", spec="resnet18"))
            self.head = torch.nn.Conv2d(512, 4, 1)

    det = Detector()
    assert det.backbone.is_init is False
    det.init_weights()  # mmengine: each child's init_weights once, then update_init_info
    assert det.backbone.is_init is True
    assert det.backbone.layer4[1].bn2.weight.abs().sum().item() == 0.0


def test_graphres_build_follows_the_spec_init_cfg_in_init_weights(tmp_path):
    spec = {"graphres": 1, "backbone": {"type": "ResNet", "depth": 18, "init_cfg": [
        {"type": "Normal", "std": 0.02, "layer": "Conv2d"}, {"type": "Constant", "val": 2, "bias": 1,
                                                             "layer": ["_BatchNorm"]}]}}
    torch.manual_seed(0)
    m = graphres.build(spec)
    assert m.is_init and m.init_cfg == [{"type": "Normal", "layer": ["Conv2d"], "std": 0.02},
                                        {"type": "Constant", "layer": ["_BatchNorm"], "val": 2, "bias": 1}]
    assert round(m.layer4[0].conv2.weight.std().item(), 3) == 0.02
    assert m.layer1[0].bn2.weight.unique().tolist() == [2.0] and m.layer1[0].bn2.bias.unique().tolist() == [1.0]
