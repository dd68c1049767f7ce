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
    """``nn.SyncBatchNorm`` with a defined single-process behaviour, and CPU training under gloo.

    Without a process group, or with a group of one process, there is nothing to synchronise: the
    layer computes exactly what BatchNorm2d computes (torch itself refuses CPU tensors as soon as
    any process group exists, even a one-process one). With several processes and CPU tensors
    (which torch's SyncBatchNorm refuses), the batch statistics are synchronised here: each process's
    per-channel sums, sums of squares and counts are all-reduced (differentiably, so the gradient
    flows through the global statistics as in torch's GPU kernel), and the running statistics are
    updated from the global mean and unbiased variance, the same on every process. A group whose
    backend cannot reduce CPU tensors (NCCL) raises :class:`SyncBNError` naming the fix. GPU tensors
    take torch's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            size = dist.get_world_size(group)
            if size == 1:
                return _BatchNorm.forward(self, x)
            if x.device.type == "cpu":
                backend = str(dist.get_backend(group))
                if backend != "gloo":
                    raise SyncBNError(
                        f"SyncBN synchronises batch statistics across the {size} processes of the process group, "
                        f"but its backend, {backend}, cannot reduce CPU tensors; use gloo for CPU training "
                        f"(dist.init_process_group('gloo')), or run on GPUs")
                return self._cpu_sync_forward(x, group)
        return super().forward(x)

    def _cpu_sync_forward(self, x: torch.Tensor, group) -> torch.Tensor:
        class SumAcrossProcesses(torch.autograd.Function):
            """All-reduce (sum); the gradient of each process's input is the sum of all gradients."""

            @staticmethod
            def forward(ctx, t):
                t = t.clone()
                dist.all_reduce(t, group=group)
                return t

            @staticmethod
            def backward(ctx, grad):
                grad = grad.clone()
                dist.all_reduce(grad, group=group)
                return grad

        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), x.numel() // channels)])
        total = SumAcrossProcesses.apply(local)
        count = total[2 * channels]
        mean = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)  # biased, as BN normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # a cumulative moving average, as torch's BatchNorm
                    momentum = 1.0 / float(self.num_batches_tracked.item())
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach() * momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


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
