"""Torch backend runtime: the classes generated modules use (torch only, no graphres import).

Generated network classes derive from :class:`GraphresBackbone`, which holds the OpenMMLab
behaviour that is not a layer: initialisation, ``frozen_stages``, ``norm_eval`` and the feature
metadata. The layer classes here (weight-standardised conv, frozen and single-process-safe
BatchNorm) are what torch lacks. The code generator copies the source of the classes a network
uses into a standalone ``.py`` file, so this module must import nothing but torch and the
standard library.
"""
import dataclasses
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One backbone output: its index in out_indices' stage numbering, module, channels and stride."""

    index: int
    module: str
    channels: int
    stride: int


class FeatureInfoList(list):
    """The outputs' metadata, in output order, with timm-style accessors."""

    def channels(self) -> List[int]:
        return [f.channels for f in self]

    def strides(self) -> List[int]:
        return [f.stride for f in self]

    def module_names(self) -> List[str]:
        return [f.module for f in self]


class ConvWS2d(nn.Conv2d):
    """Weight-standardised convolution (Qiao et al.; mmcv's ConvWS2d): before each call, every output
    channel's weight is shifted to mean 0 and divided by its (unbiased) standard deviation + eps."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        flat = w.reshape(w.shape[0], -1)
        mean = flat.mean(dim=1).reshape(-1, 1, 1, 1)
        std = flat.std(dim=1).reshape(-1, 1, 1, 1)
        return self._conv_forward(x, (w - mean) / (std + self.eps), self.bias)


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose affine parameters do not train and whose statistics never update: it always
    normalises with the stored running statistics, in train mode too (detectron2's FrozenBN).
    Keys are BatchNorm2d's, so torchvision and OpenMMLab checkpoints load into it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


class SyncBNError(RuntimeError):
    """SyncBN cannot synchronise in this setting; the message says how to fix it."""


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` with a defined single-process behaviour.

    Without a process group, or with a group of one process, there is nothing to synchronise: the
    layer computes exactly what BatchNorm2d computes (torch itself refuses CPU tensors as soon as
    any process group exists, even a one-process one). With several processes and CPU tensors it
    raises :class:`SyncBNError` naming the fix instead of torch's bare error."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            size = dist.get_world_size(group)
            if size == 1:
                return _BatchNorm.forward(self, x)
            if x.device.type == "cpu":
                raise SyncBNError(
                    f"SyncBN synchronises batch statistics across the {size} processes of the process group, "
                    f"which torch supports for GPU tensors only, but this input is on the CPU; run on GPUs, "
                    f"or use norm: {{type: BN}} (or model.eval()) for CPU training")
        return super().forward(x)


class GraphresBackbone(nn.Module):
    """A backbone compiled from a graphres spec; forward returns the tuple of out_indices outputs.

    With the spec's ``head`` it is a classifier, as torchvision's ResNet: forward returns the logits
    (N, num_classes) and ``forward_features`` the tuple of out_indices outputs.

    Subclasses (generated from the spec) define the layers, ``forward``, ``forward_features`` and
    these class attributes: ``spec_name``, ``out_indices``, ``frozen_stages``, ``norm_eval``,
    ``zero_init_residual``, ``stage_names``, ``frozen_modules`` (the top-level modules that
    frozen_stages freezes), ``zero_init_modules`` (the norms zero_init_residual zeroes),
    ``requires_grad_norms`` (norm.requires_grad), ``num_classes`` and ``feature_info``."""

    spec_name: str = ""
    out_indices: tuple = ()
    frozen_stages: int = -1
    norm_eval: bool = False
    zero_init_residual: bool = True
    stage_names: tuple = ()
    frozen_modules: tuple = ()
    zero_init_modules: tuple = ()
    requires_grad_norms: bool = True
    num_classes: Optional[int] = None
    feature_info: FeatureInfoList = FeatureInfoList()

    def _finish(self, init: bool) -> None:
        """Called last by the generated ``__init__``: norm.requires_grad, the initialisation and
        the frozen stages."""
        if not self.requires_grad_norms:
            for m in self.modules():
                if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)):
                    for p in m.parameters():
                        p.requires_grad = False
        if init:
            self.init_weights()
        self._freeze_stages()

    def init_weights(self, zero_init_residual: Optional[bool] = None) -> None:
        """OpenMMLab's default: Kaiming-normal (fan_out, relu) convs, norms 1/0, then the last
        norm of each residual branch to 0 when ``zero_init_residual`` (the spec's value unless
        given)."""
        if zero_init_residual is None:
            zero_init_residual = self.zero_init_residual
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for path in self.zero_init_modules:
                m = self.get_submodule(path)
                if getattr(m, "weight", None) is not None:
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)

    def _freeze_stages(self) -> None:
        for name in self.frozen_modules:
            m = getattr(self, name)
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "GraphresBackbone":
        """Set train mode, then re-apply frozen_stages and norm_eval (and return self)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


class InferenceBuildError(RuntimeError):
    """An inference build was asked to train."""


class GraphresInference(GraphresBackbone):
    """An eval-only network (``graphres.build(spec, inference=True)``): BatchNorm, SyncBN and
    FrozenBN are folded into the convs before them, so there is nothing to train and no batch
    statistics to use. ``train()`` (``train(True)``) raises :class:`InferenceBuildError`;
    ``eval()`` and ``train(False)`` are accepted. Its parameters do not require gradients."""

    def train(self, mode: bool = True) -> "GraphresInference":
        if mode:
            raise InferenceBuildError(
                f"'{self.spec_name}' is an inference build: its norms are folded into the convolutions, so it "
                f"cannot train; build it without inference=True to train, and fold again afterwards")
        return nn.Module.train(self, False)

    def _finish(self, init: bool) -> None:
        super()._finish(init)
        for p in self.parameters():
            p.requires_grad = False
        nn.Module.train(self, False)
