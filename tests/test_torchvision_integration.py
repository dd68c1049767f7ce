"""The freezing-preserving extractor of graphres.integrations.torchvision, without torchvision:
a container that copies the backbone's children, as torchvision's IntermediateLayerGetter does,
loses the spec's freezing on train(); with the integration's class swap it keeps it."""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import graphres
from graphres.integrations import torchvision as tvi


class CopyChildren(nn.ModuleDict):
    """What IntermediateLayerGetter does: the children up to the last returned layer, called in order."""

    def __init__(self, model: nn.Module, return_layers: dict):
        layers = OrderedDict()
        wanted = dict(return_layers)
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x):
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def bn_modes(root):
    return sum(m.training for m in root.modules() if isinstance(m, _BatchNorm))


def test_plain_copy_loses_the_freezing():
    model = graphres.build("mmdet_faster_rcnn_r50")
    body = CopyChildren(model, {"layer1": "0", "layer4": "3"})
    body.train()
    assert bn_modes(body) == 53  # norm_eval lost: every BatchNorm back in train mode
    assert body["layer1"].training


def test_the_integration_keeps_frozen_stages_and_norm_eval():
    torch.manual_seed(0)
    model = graphres.build("mmdet_faster_rcnn_r50")
    body = tvi._keep_freezing(CopyChildren(model, {"layer1": "0", "layer4": "3"}), model)
    assert type(body).__name__ == "FreezingLayerGetter" and isinstance(body, CopyChildren)
    assert list(body.state_dict()) == list(model.state_dict())  # no extra keys from the rules' owner
    body.train()
    assert bn_modes(body) == 0 and not body["layer1"].training and body["layer2"].training
    assert [n for n, p in body.named_parameters() if not p.requires_grad][:2] == ["conv1.weight", "bn1.weight"]
    before = {k: v.clone() for k, v in body.state_dict().items()}
    out = body(torch.randn(2, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # statistics did not move
    assert body.conv1.weight.grad is None and body.layer2[0].conv1.weight.grad is not None
    body.eval()
    assert not body.training and not body["layer2"].training


def test_trainable_layers_is_torchvisions_count():
    model, channels = tvi._model_and_channels("resnet50", [], 3, None)
    assert model.frozen_stages == 1 and channels == [256, 512, 1024, 2048]
    model, _ = tvi._model_and_channels("mmdet_faster_rcnn_r50", [], 5, None)  # a shorthand spec
    assert model.frozen_stages == -1
