"""Torch backend runtime: the classes generated modules use (torch only, no graphres import).

Generated network classes derive from :class:`GraphresBackbone`, which holds the OpenMMLab
behaviour that is not a layer: initialisation, ``frozen_stages``, ``norm_eval`` and the feature
metadata. The layer classes here (weight-standardised conv, frozen and single-process-safe
BatchNorm) are what torch lacks. The code generator copies the source of the classes a network
uses into a standalone ``.py`` file, so this module must import nothing but torch and the
standard library.
"""
import collections
import contextlib
import contextvars
import dataclasses
import importlib
import math
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


class FusedConv2d(nn.Conv2d):
    """The inference build's convolution: ``act(conv(x) + residual)`` in one layer, the norm after
    it already folded into its weight and bias. ``act`` is ``"none"``, ``"relu"``, ``"silu"``,
    ``"hardswish"`` or ``"gelu"``; ``residual`` says whether ``forward`` takes the residual
    operand; ``reuse_residual`` that nothing reads the residual after this layer (the inference
    pass decided it): a compiled build computes the output in the residual's buffer (eager
    calls allocate the output, as torch's layers do). The state dict is an ``nn.Conv2d``'s.

    On the CPU, for float32 tensors that need no gradient, it runs on oneDNN's fused kernel
    (``torch.ops.mkldnn._convolution_pointwise``) with the weight reordered once into oneDNN's
    blocked layout and kept (one per thread count and batch size, the last four made; re-made when
    the weight changes), the
    sum and the activation done inside the kernel; its outputs are channels_last. Inside
    torch.compile the same calls take :attr:`compiled_call` (graphres' custom operators for that
    kernel). Elsewhere (CUDA, other dtypes, autograd, TorchScript and torch.export, which fuse by
    themselves, or ``prepack = False``) it is ``conv2d``, ``+`` and the activation."""

    __jit_ignored_attributes__ = ["_packed", "compiled_call"]

    # the layer's call inside torch.compile (not torch.export), for the calls that oneDNN's kernel
    # takes (:meth:`_kernel_applies`): set by graphres.backends.inference where oneDNN is present
    # (oneDNN's kernel as custom operators, opaque to inductor); None (a standalone .py file): the
    # plain path, which the compiler fuses by itself
    compiled_call = None

    def __init__(self, *args, act: str = "none", residual: bool = False, reuse_residual: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if act not in ("none", "relu", "silu", "hardswish", "gelu"):
            raise ValueError(f"FusedConv2d: unknown act {act!r}")
        self.act = act
        self.residual = residual
        self.reuse_residual = reuse_residual
        self.prepack = True
        self._packed = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act!r}" + (", residual=True" if self.residual else "") \
            + (", reuse_residual=True" if self.reuse_residual else "")

    def __getstate__(self):  # the oneDNN weight is a cache: not pickled, not deep-copied
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._onednn(x, residual):
                return self._onednn_forward(x, residual)
            if self._compiled(x, residual):
                return FusedConv2d.compiled_call(self, x, residual)
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return self._activate(y)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":
            return torch.relu_(y)
        if self.act == "silu":
            return nn.functional.silu(y, inplace=True)
        if self.act == "hardswish":
            return nn.functional.hardswish(y, inplace=True)
        if self.act == "gelu":
            return nn.functional.gelu(y)
        return y

    @torch.jit.unused
    def _onednn(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        return not torch.compiler.is_compiling() and self._onednn_applies(x, residual)

    @torch.jit.unused
    def _compiled(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        return FusedConv2d.compiled_call is not None and torch.compiler.is_compiling() \
            and not torch.compiler.is_exporting() and self._kernel_applies(x, residual)

    @torch.jit.unused
    def _onednn_applies(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        """Whether oneDNN's fused kernel can run this call: float32 on the CPU, no gradient."""
        return self._kernel_applies(x, residual) and torch.backends.mkldnn.is_available() \
            and torch.backends.mkldnn.enabled

    @torch.jit.unused
    def _kernel_applies(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        """What oneDNN's fused kernel needs of the call, oneDNN's own flags aside (torch.compile
        cannot read them: :attr:`compiled_call` is set only where oneDNN is present)."""
        if not self.prepack or not isinstance(x, torch.Tensor):
            return False
        w = self.weight
        return (x.device.type == "cpu" and x.dtype == torch.float32 and w.device.type == "cpu"
                and w.dtype == torch.float32 and x.dim() == 4 and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                                      or (residual is not None and residual.requires_grad))))

    @torch.jit.unused
    def _onednn_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        w = self.weight
        # oneDNN picks the blocked layout for the thread count and the batch: on 2 threads a layout
        # made for batch 1 ran batch 8 1.3x slower, and one made for batch 8 ran batch 1 3x slower.
        # So a layout is kept per (threads, batch), the last four made, for the current weight. The
        # dict is replaced, never changed, so concurrent callers see a whole one.
        weight = (w.data_ptr(), w._version, tuple(w.shape))
        key = weight + (torch.get_num_threads(), x.shape[0])
        cache = self._packed or {}
        packed = cache.get(key)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape))
            kept = [(k, v) for k, v in cache.items() if k[:3] == weight][-3:]
            self._packed = dict(kept + [(key, packed)])
        return FusedConv2d.onednn_call(x, residual, packed, self.bias.detach() if self.bias is not None else None,
                                       list(self.stride), list(self.padding), list(self.dilation), self.groups,
                                       self.act)

    @staticmethod
    @torch.jit.unused
    def onednn_call(x: torch.Tensor, residual: Optional[torch.Tensor], packed: torch.Tensor,
                    bias: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int],
                    groups: int, act: str, into_residual: bool = False) -> torch.Tensor:
        """``act(conv(x) + residual)`` by oneDNN's fused kernel, ``packed`` the weight in its
        blocked layout for this thread count and batch. With ``into_residual`` the result is
        written over ``residual`` (channels_last, the output's shape) and returned."""
        fused = {"none": None, "relu": "relu", "silu": "swish", "hardswish": "hardswish", "gelu": "gelu"}[act]
        algorithm = "none" if fused == "gelu" else ""  # exact (erf) GELU, as nn.GELU()
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed, bias, padding, stride, dilation, groups, fused or "none", [], algorithm)
        post = fused if fused == "relu" else None  # oneDNN's sum takes ReLU alone after it
        if into_residual:  # the sum is written over the residual (oneDNN's in-place sum)
            y = torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, packed, bias, padding, stride, dilation, groups, "add", None, post, [], None)
        else:
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, packed, bias, padding, stride, dilation, groups, "add", None, post, [], None)
        if post is not None or act == "none":
            return y
        if act == "silu":
            return nn.functional.silu(y, inplace=True)
        if act == "hardswish":
            return nn.functional.hardswish(y, inplace=True)
        return y.copy_(nn.functional.gelu(y)) if into_residual else nn.functional.gelu(y)


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


class DeformConv2d(nn.Module):
    """The part of mmcv's deformable convolutions (DCN, DCNv2) that does not depend on the version:
    the weight (and bias), the argument checks, and the sampling itself.

    :meth:`deform_conv2d` runs on ``torchvision.ops.deform_conv2d`` when torchvision is importable
    (it reads mmcv's offset layout) and otherwise on a pure-torch implementation with the same
    semantics: for output pixel (i, j), kernel tap (ky, kx) and deform group g, the input is sampled
    at (i * stride - padding + ky * dilation + dy, j * stride - padding + kx * dilation + dx), where
    (dy, dx) are offset channels g * 2 * K + 2 * (ky * kw + kx) and the one after it, bilinearly,
    with zero outside the map; the v2 form multiplies each sample by its mask channel
    g * K + ky * kw + kx. Maps smaller than the kernel are handled as torchvision handles them
    (zero padding), where mmcv's own kernels refuse them."""

    use_torchvision = True  # False forces the pure-torch path (tests compare the two)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, deform_groups: int = 1, bias: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups = {groups} must divide in_channels = {in_channels} and "
                             f"out_channels = {out_channels}")
        if in_channels % deform_groups:
            raise ValueError(f"deform_groups = {deform_groups} must divide in_channels = {in_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deform_groups={self.deform_groups}, bias={self.bias is not None}")

    def deform_conv2d(self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
        if self.use_torchvision:
            try:
                from torchvision.ops import deform_conv2d
            except ImportError:  # torchvision is optional: the pure-torch path computes the same
                pass
            else:
                return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     mask)
        return self.deform_conv2d_torch(x, offset, self.weight, self.bias, self.stride[0], self.padding[0],
                                        self.dilation[0], self.groups, self.deform_groups, mask)

    @staticmethod
    def deform_conv2d_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], stride: int, padding: int, dilation: int, groups: int,
                            deform_groups: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deformable convolution in plain torch ops: the sampling points (regular grid + offsets)
        bilinearly sampled by ``grid_sample`` (zero outside the map, torchvision's rule), then one
        batched matmul (which FlopCounterMode counts as the conv's multiply-accumulates). Besides
        its output it holds, per image, the sampling grid (2 values per tap, group and position),
        while building it 2 more, and the sampled columns (C * k * k values per position)."""
        n, c, h, w = x.shape
        out_ch, _, kh, kw = weight.shape
        ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
        wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
        k, dg, positions = kh * kw, deform_groups, ho * wo
        taps_y = (torch.arange(kh, device=x.device, dtype=x.dtype) * dilation).repeat_interleave(kw)
        taps_x = (torch.arange(kw, device=x.device, dtype=x.dtype) * dilation).repeat(kh)
        rows = (torch.arange(ho, device=x.device, dtype=x.dtype) * stride - padding).repeat_interleave(wo)
        cols_x = (torch.arange(wo, device=x.device, dtype=x.dtype) * stride - padding).repeat(ho)
        off = offset.reshape(n, dg, k, 2, positions)  # (dy, dx) per tap: mmcv's layout
        px = off[:, :, :, 1] + (taps_x[:, None] + cols_x[None, :])
        py = off[:, :, :, 0] + (taps_y[:, None] + rows[None, :])
        grid = torch.stack((px, py), -1)  # grid_sample's (x, y) order
        del px, py
        # pixel p -> (2p + 1) / size - 1: align_corners=False puts pixel centres there
        grid = grid.mul_(torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)).add_(
            torch.tensor([1.0 / w - 1.0, 1.0 / h - 1.0], dtype=x.dtype, device=x.device))
        sampled = torch.nn.functional.grid_sample(x.reshape(n * dg, c // dg, h, w),
                                                  grid.reshape(n * dg, k, positions, 2), mode="bilinear",
                                                  padding_mode="zeros", align_corners=False)
        del grid
        if mask is not None:
            sampled = sampled.reshape(n, dg, c // dg, k, positions).mul_(mask.reshape(n, dg, 1, k, positions))
        columns = sampled.reshape(n, groups, (c // groups) * k, positions)
        out = torch.matmul(weight.reshape(groups, out_ch // groups, (c // groups) * k), columns)
        out = out.reshape(n, out_ch, ho, wo)
        if bias is not None:
            out = out.add_(bias.reshape(1, -1, 1, 1))
        return out


class DeformConv2dPack(DeformConv2d):
    """mmcv's ``DCN`` (DeformConv2dPack): a deformable conv whose offsets come from its own
    ``conv_offset`` (deform_groups * 2 * k * k channels, same window as the conv, with bias).
    Keys ``weight``, ``conv_offset.weight``, ``conv_offset.bias``; no bias (mmcv refuses one).
    Init as mmcv: the weight Kaiming-uniform (relu), conv_offset zero (a backbone's Kaiming init of
    convs then re-initialises conv_offset, which is an ``nn.Conv2d``, but not the weight)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, deform_groups: int = 1, bias: bool = False):
        if bias:
            raise ValueError("DeformConv2dPack (DCN v1) has no bias: mmcv's DeformConv2d refuses bias=True")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deform_groups)
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 2 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deform_conv2d(x, self.conv_offset(x))


class ModulatedDeformConv2dPack(DeformConv2d):
    """mmcv's ``DCNv2`` (ModulatedDeformConv2dPack): ``conv_offset`` gives deform_groups * 3 * k * k
    channels, chunked in three: the offset is the first two chunks concatenated, the mask the
    sigmoid of the third. ``init_weights`` is mmcv's: the weight uniform in +-1/sqrt(fan_in), the
    bias and conv_offset zero; the backbone calls it after its own init, as mmengine does, so
    conv_offset ends at zero."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, deform_groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deform_groups,
                         bias)
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 3 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        bound = (self.in_channels * self.kernel_size[0] * self.kernel_size[1]) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_offset(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(mask)
        del out, o1, o2  # the offset conv's output is not needed once split
        return self.deform_conv2d(x, offset, mask)
def parameter(size: int, value: float, fan: int = 0) -> nn.Parameter:
    """A learned tensor of ``size`` values starting at ``value`` (an attention block's gamma), or,
    with ``fan`` > 0, uniform in +-1/sqrt(fan) (mmcv GeneralizedAttention's appr_bias, geom_bias)."""
    if fan > 0:
        bound = 1.0 / math.sqrt(fan)
        return nn.Parameter(torch.empty(size).uniform_(-bound, bound))
    return nn.Parameter(torch.full((size,), float(value)))


def local_constraint_map(max_len: int, kv_stride: int, spatial_range: int) -> nn.Parameter:
    """mmcv GeneralizedAttention's local_constraint_map: 1 where key (y, x) is outside query
    (iy, ix)'s range (rows max((iy - r) // s, 0) to (iy + r + 1) // s, the same for columns), a
    uint8 parameter without gradient, as mmcv registers it."""
    max_len_kv = int((max_len - 1.0) / kv_stride + 1)
    idx, kv = torch.arange(max_len)[:, None], torch.arange(max_len_kv)[None, :]
    lo = torch.clamp(torch.div(idx - spatial_range, kv_stride, rounding_mode="floor"), min=0)
    hi = torch.clamp(torch.div(idx + spatial_range + 1, kv_stride, rounding_mode="floor") + 1, max=max_len)
    near = (kv >= lo) & (kv < hi)  # max_len x max_len_kv
    inside = near[:, None, :, None] & near[None, :, None, :]
    return nn.Parameter((~inside).to(torch.uint8), requires_grad=False)


def local_masked(energy: torch.Tensor, mask: torch.Tensor, q_map: torch.Tensor, kv_map: torch.Tensor) -> torch.Tensor:
    """The energy with -inf where ``mask`` (local_constraint_map) is set, for this query and key size
    (one query row: mmcv's 1x1)."""
    h, w = (1, 1) if energy.shape[-2] == 1 else (q_map.shape[-2], q_map.shape[-1])
    h_kv, w_kv = kv_map.shape[-2], kv_map.shape[-1]
    m = mask[:h, :w, :h_kv, :w_kv].contiguous().view(1, 1, h * w, h_kv * w_kv)
    return energy.masked_fill(m.to(torch.bool), float("-inf"))


class RelativePosition(nn.Linear):
    """mmcv GeneralizedAttention's relative position term of one axis (the ``position_energy`` op).

    The weight is mmcv's ``appr_geom_fc_x`` (or ``_y``): a bias-free ``Linear(feat // 2, heads * dim)``
    applied to the sine embedding (``wave_length`` ** (4 k / feat), sin then cos) of the coordinate
    differences ``(i * q_stride - j * kv_stride) * magnitude`` along the axis, divided by sqrt(2), then
    multiplied with the query (``n x heads x rows x dim``, rows = H*W of the query map, or 1 for a
    learned bias alone). The x (width) term is ``n x heads x H x W x 1 x W_kv``, ``vertical`` the y term
    ``n x heads x H x W x H_kv x 1`` (a 1 in place of H or W for a one-row query). ``transposed``
    reproduces mmcv's y term without geom_bias, which reads the query with H and W swapped (square
    maps only)."""

    def __init__(self, feat: int, heads: int, dim: int, vertical: bool = False, magnitude: int = 1, q_stride: int = 1,
                 kv_stride: int = 1, wave_length: int = 1000, transposed: bool = False):
        super().__init__(feat // 2, heads * dim, bias=False)
        self.feat, self.heads, self.dim, self.vertical = feat, heads, dim, vertical
        self.magnitude, self.q_stride, self.kv_stride = magnitude, q_stride, kv_stride
        self.wave_length, self.transposed = wave_length, transposed

    def forward(self, query: torch.Tensor, q_map: torch.Tensor, kv_map: torch.Tensor) -> torch.Tensor:
        n = query.shape[0]
        h, w = q_map.shape[-2], q_map.shape[-1]
        h_kv, w_kv = kv_map.shape[-2], kv_map.shape[-1]
        size, size_kv = (h, h_kv) if self.vertical else (w, w_kv)
        dtype, device = q_map.dtype, q_map.device
        idx = torch.linspace(0, size - 1, size).to(device=device, dtype=dtype).view(size, 1) * self.q_stride
        idx_kv = torch.linspace(0, size_kv - 1, size_kv).to(device=device, dtype=dtype).view(size_kv, 1) \
            * self.kv_stride
        diff = (idx.unsqueeze(1) - idx_kv.unsqueeze(0)) * self.magnitude  # size x size_kv x 1
        feat_range = torch.arange(0, self.feat / 4).to(device=device, dtype=dtype)
        dim_mat = torch.tensor([float(self.wave_length)]).to(device=device, dtype=dtype)
        dim_mat = (dim_mat ** ((4.0 / self.feat) * feat_range)).view(1, 1, -1)
        embedding = torch.cat(((diff / dim_mat).sin(), (diff / dim_mat).cos()), dim=2)
        feat = nn.functional.linear(embedding, self.weight).view(size, size_kv, self.heads, self.dim)
        feat = feat.permute(2, 0, 1, 3) / math.sqrt(2)  # heads x size x size_kv x dim
        one = query.shape[-2] != h * w or h * w == 1
        q = query.reshape(n, self.heads, 1 if one else h, 1 if one else w, self.dim)
        if not self.vertical:
            out = torch.matmul(q.transpose(2, 3), feat.transpose(-1, -2))  # n x heads x W x H x W_kv
            return out.transpose(2, 3).unsqueeze(4)
        if self.transposed:
            q = q.transpose(2, 3)
        return torch.matmul(q, feat.transpose(-1, -2)).unsqueeze(5)  # n x heads x H x W x H_kv x 1


def init_module(m: nn.Module, kind: str) -> None:
    """A module's own initialisation, after the network's (the attention plugins': mmcv's); the
    bias is then zero, except for ``torch_bias``: the weight keeps the network's initialisation
    and the bias is drawn as torch's own layers draw it, uniform in +-1/sqrt(fan_in) (timm leaves
    ResNeSt's attention convs' biases so)."""
    if kind == "torch_bias":
        if getattr(m, "bias", None) is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(m.bias, -bound, bound)
        return
    if kind == "zeros":
        nn.init.zeros_(m.weight)
    elif kind == "normal_0.01":
        nn.init.normal_(m.weight, 0.0, 0.01)
    elif kind == "kaiming_fan_in":
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    elif kind == "kaiming_uniform_fan_in_a1":
        nn.init.kaiming_uniform_(m.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


class RepeatedBlocks(type):
    """The metaclass of generated blocks: inside :meth:`copies` (``graphres.build``), a block
    class called again with the same arguments returns a copy of the first instance made in that
    context instead of running ``__init__`` again: an object of the same class with the same
    attributes and submodules (copied the same way), and new, uninitialised tensors of the same
    shapes, dtypes, devices and ``requires_grad``. The caller must write every tensor afterwards
    (``graphres.build`` does: ``init_weights`` and the layers' own defaults, or a checkpoint).

    Only a block whose module tree holds nothing but parameters, buffers, submodules and plain
    values (numbers, strings, tuples of them, and lists, sets and dicts of them, such as a conv's
    padding list and the empty hook dicts) is copied; any other is constructed each time. Outside
    :meth:`copies` the class is called as any class is. Constructing a block costs about a hundred
    microseconds per layer in ``nn.Module.__init__`` and the layers' default initialisation; a
    copy about twenty."""

    _prototypes: contextvars.ContextVar = contextvars.ContextVar("graphres_block_prototypes", default=None)

    @classmethod
    @contextlib.contextmanager
    def copies(mcs):
        """Within this context, repeated blocks are copied (see the class)."""
        token = mcs._prototypes.set({})
        try:
            yield
        finally:
            mcs._prototypes.reset(token)

    def __call__(cls, *args, **kwargs):
        prototypes = RepeatedBlocks._prototypes.get()
        if prototypes is None:
            return super().__call__(*args, **kwargs)
        try:
            key = (cls, args, tuple(kwargs.items()))
            recipe = prototypes.get(key)
        except TypeError:  # an argument that cannot be a key
            return super().__call__(*args, **kwargs)
        if recipe is None:
            block = super().__call__(*args, **kwargs)
            prototypes[key] = RepeatedBlocks._recipe(block) if RepeatedBlocks._copyable(block) else False
            return block
        if recipe is False:
            return super().__call__(*args, **kwargs)
        return RepeatedBlocks._copy(recipe)

    @staticmethod
    def _plain(value) -> bool:
        if value is None or type(value) in (bool, int, float, str, torch.dtype, torch.device):
            return True
        if type(value) is tuple:
            return all(RepeatedBlocks._plain(v) for v in value)
        return False

    @staticmethod
    def _copyable(block: nn.Module) -> bool:
        tensors = set()
        every = [m for _, m in block.named_modules(remove_duplicate=False)]
        if len({id(m) for m in every}) != len(every):  # a submodule under two names: copying would untie it
            return False
        for m in every:
            if type(m).__new__ is not object.__new__:
                return False
            for key, value in m.__dict__.items():
                if key in ("_parameters", "_buffers", "_modules"):
                    continue
                kind = type(value)
                if kind in (dict, collections.OrderedDict):
                    if not all(RepeatedBlocks._plain(k) and RepeatedBlocks._plain(v) for k, v in value.items()):
                        return False
                elif kind in (list, set):
                    if not all(RepeatedBlocks._plain(v) for v in value):
                        return False
                elif not RepeatedBlocks._plain(value):
                    return False
            for kind, own in ((nn.Parameter, m._parameters), (torch.Tensor, m._buffers)):
                for t in own.values():
                    if t is None:
                        continue
                    if type(t) is not kind or id(t) in tensors:  # a tied tensor stays tied: constructed
                        return False
                    tensors.add(id(t))
        return True

    @staticmethod
    def _recipe(m: nn.Module) -> tuple:
        """What a copy of ``m`` is made from: its class, its other attributes (the containers among
        them named, to be copied), its tensors and its children's recipes."""
        state = {k: v for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")}
        containers = tuple(k for k, v in state.items() if type(v) in (dict, collections.OrderedDict, list, set))
        return (type(m), state, containers, tuple(m._parameters.items()), tuple(m._buffers.items()),
                tuple((k, None if c is None else RepeatedBlocks._recipe(c)) for k, c in m._modules.items()))

    @staticmethod
    def _copy(recipe: tuple) -> nn.Module:
        kind, state, containers, params, buffers, children = recipe
        new = object.__new__(kind)
        own = state.copy()
        for k in containers:
            own[k] = own[k].copy()
        empty = torch.empty_like
        own["_parameters"] = {k: None if p is None else nn.Parameter(empty(p), p.requires_grad) for k, p in params}
        own["_buffers"] = {k: None if b is None else empty(b) for k, b in buffers}
        own["_modules"] = {k: None if c is None else RepeatedBlocks._copy(c) for k, c in children}
        new.__dict__.update(own)
        return new


class GraphresBlock(nn.Module, metaclass=RepeatedBlocks):
    """The base of every generated block class: mmdetection's block properties.

    ``norm1``/``norm2``/``norm3`` are the norms named by ``norm1_name`` ... (``bn1``, ``gn1``), as
    mmdetection's BasicBlock/Bottleneck have them. The network sets the other attributes mmdetection
    code reads (``inplanes``, ``planes``, ``stride``, ``dilation``, ``style``, ``conv1_stride``,
    ``conv2_stride``, ``expansion``, ``with_cp``, ``downsample = None`` without a shortcut
    projection) from its ``block_attrs``; they are plain attributes, neither parameters nor
    submodules. TorchScript skips the properties."""

    __jit_unused_properties__ = ["norm1", "norm2", "norm3"]

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    @property
    def norm3(self) -> nn.Module:
        return getattr(self, self.norm3_name)


class GraphresBackbone(nn.Module):
    """A backbone compiled from a graphres spec; forward returns the tuple of out_indices outputs.

    With the spec's ``head`` it is a classifier, as torchvision's ResNet: forward returns the logits
    (N, num_classes) and ``forward_features`` the tuple of out_indices outputs.

    Subclasses (generated from the spec) define the layers, ``forward``, ``forward_features`` and
    these class attributes: ``spec_name``, ``out_indices``, ``frozen_stages``, ``norm_eval``,
    ``zero_init_residual``, ``stage_names``, ``frozen_modules`` (the top-level modules that
    frozen_stages freezes), ``zero_init_modules`` (the norms zero_init_residual zeroes),
    ``requires_grad_norms`` (norm.requires_grad), ``num_classes`` and ``feature_info``; and, for code
    written against mmdetection's ResNet, ``init_cfg`` (mmengine's list of initialisers),
    ``block_attrs`` (each block's attributes) and ``depth``, ``stem_channels``, ``base_channels``,
    ``num_stages``, ``strides``, ``dilations``, ``style``, ``deep_stem``, ``avg_down``, ``with_cp``,
    ``stage_blocks``, ``feat_dim``, ``inplanes``, ``norm_cfg``, ``conv_cfg`` (and ``norm1_name``
    with a 7x7 stem)."""

    __jit_unused_properties__ = ["norm1", "block", "arch_settings", "is_init"]

    spec_name: str = ""
    out_indices: tuple = ()
    frozen_stages: int = -1
    norm_eval: bool = False
    zero_init_residual: bool = True
    stage_names: tuple = ()
    frozen_modules: tuple = ()
    zero_init_modules: tuple = ()
    module_inits: tuple = ()
    requires_grad_norms: bool = True
    num_classes: Optional[int] = None
    feature_info: FeatureInfoList = FeatureInfoList()
    init_cfg = None  # mmengine's form: a list of {type: Kaiming | Constant | ... | Pretrained, ...}
    zero_init_blocks = False  # mmdetection's block-level zero init (its default init_cfg only)
    checkpoint_style = None  # the spec's bottleneck style, for the checkpoint loader's style check
    block_attrs: dict = {}

    def _finish(self, init: bool) -> None:
        """Called last by the generated ``__init__``: the mmdetection attributes, norm.requires_grad,
        the initialisation and the frozen stages."""
        self._is_init = False
        self.res_layers = list(self.stage_names)
        for path, attrs in self.block_attrs.items():
            block = self.get_submodule(path)
            own = block.__dict__
            for key, value in attrs.items():
                if (isinstance(value, (torch.Tensor, nn.Module)) or key in block._parameters or key in block._buffers
                        or key in block._modules):
                    setattr(block, key, value)
                else:  # a plain value: what nn.Module.__setattr__ does with it, without its checks
                    own[key] = value
        if not self.requires_grad_norms:
            for m in self.modules():
                if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)):
                    for p in m.parameters():
                        p.requires_grad = False
        if init:
            self.init_weights()
        self._freeze_stages()

    @property
    def norm1(self) -> nn.Module:
        """The stem's norm (``bn1``, ``gn1``), as mmdetection's ``ResNet.norm1``."""
        return getattr(self, self.norm1_name)

    @property
    def block(self) -> type:
        """The class of the stages' repeated block (mmdetection: BasicBlock or Bottleneck)."""
        return type(getattr(self, self.stage_names[0])[-1])

    @property
    def arch_settings(self) -> dict:
        """mmdetection's ``{depth: (block, stage_blocks)}``, for this network's depth."""
        return {self.depth: (self.block, tuple(self.stage_blocks))} if getattr(self, "depth", None) else {}

    @property
    def is_init(self) -> bool:
        """Whether ``init_weights()`` has run (mmengine's ``BaseModule.is_init``)."""
        return bool(self.__dict__.get("_is_init", False))

    def init_weights(self, zero_init_residual: Optional[bool] = None) -> None:
        """Initialise as mmengine's ``BaseModule.init_weights`` does with ``self.init_cfg``: each
        non-Pretrained initialiser in order over the whole module tree, then mmdetection's block
        zero init (the last norm of each block to 0, with its default init_cfg and
        ``zero_init_residual``; ``zero_init_residual`` overrides), then each Pretrained checkpoint,
        loaded here. A layer name matches a module whose class or a base class has that name
        (``Conv2d``, ``_BatchNorm``, ``GroupNorm``, ``Linear`` ...)."""
        cfgs = self.init_cfg
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs or [])
        modules = list(self.modules())
        for cfg in cfgs:
            if cfg.get("type") != "Pretrained":
                self._apply_initialiser(cfg, modules)
        for m in modules:  # then each layer's own init_weights, as mmengine calls them after the parent's
            if m is not self and callable(getattr(type(m), "init_weights", None)):
                m.init_weights()
        for path, kind in self.module_inits:  # the plugins' own initialisation (mmcv's)
            init_module(self.get_submodule(path), kind)
        zero = self.zero_init_blocks and self.zero_init_residual if zero_init_residual is None else zero_init_residual
        if zero:
            with torch.no_grad():
                for path in self.zero_init_modules:
                    m = self.get_submodule(path)
                    if getattr(m, "weight", None) is not None:
                        m.weight.zero_()
                        m.bias.zero_()
        for cfg in cfgs:
            if cfg.get("type") == "Pretrained":
                self._load_pretrained(cfg)
        self._is_init = True

    def _apply_initialiser(self, cfg: dict, modules: Optional[List[nn.Module]] = None) -> None:
        """One of mmengine's weight initialisers (its defaults), on every module ``layer`` names.

        Each tensor is written as torch.nn.init's function for the initialiser writes it (the same
        random draws, in module order); the scale of a Kaiming or Xavier draw is worked out once per
        weight shape."""
        kind = cfg["type"]
        if kind not in ("Kaiming", "Xavier", "Normal", "Uniform", "Constant"):
            raise ValueError(f"init_cfg type {kind!r} is not one of Kaiming, Xavier, Normal, Uniform, "
                             f"Constant, Pretrained")
        layers = cfg.get("layer") or []
        layers = {layers} if isinstance(layers, str) else set(layers)
        bias = cfg.get("bias", 0)
        if cfg.get("bias_prob") is not None:
            p = float(cfg["bias_prob"])
            bias = -math.log((1 - p) / p)
        uniform = cfg.get("distribution", "normal") == "uniform"
        matches = {}  # module class -> whether ``layer`` names it or a base class
        scales = {}  # weight shape -> the std (normal) or bound (uniform) of a Kaiming or Xavier draw
        with torch.no_grad():
            for m in self.modules() if modules is None else modules:
                cls = type(m)
                hit = matches.get(cls)
                if hit is None:
                    hit = matches[cls] = bool(layers & {c.__name__ for c in cls.__mro__})
                if not hit:
                    continue
                w = m._parameters.get("weight")
                if w is None:
                    w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and w.numel() == 0:
                    pass  # torch.nn.init leaves an empty tensor as it is
                elif isinstance(w, torch.Tensor):
                    if kind in ("Kaiming", "Xavier"):
                        scale = scales.get(w.shape)
                        if scale is None:
                            scale = scales[w.shape] = self._scale(kind, cfg, w, uniform)
                        if uniform:
                            w.uniform_(-scale, scale)
                        else:
                            w.normal_(0, scale)
                    elif kind == "Normal":
                        w.normal_(cfg.get("mean", 0), cfg.get("std", 1))
                    elif kind == "Uniform":
                        w.uniform_(cfg.get("a", 0), cfg.get("b", 1))
                    else:
                        w.fill_(cfg["val"])
                b = m._parameters.get("bias")
                if b is None:
                    b = getattr(m, "bias", None)
                if isinstance(b, torch.Tensor):
                    b.fill_(bias)

    @staticmethod
    def _scale(kind: str, cfg: dict, w: torch.Tensor, uniform: bool) -> float:
        """The std of torch.nn.init's kaiming_normal_ / xavier_normal_ for ``w`` (for the uniform
        ones, their bound), computed as those functions compute it."""
        if kind == "Kaiming":
            fan = nn.init._calculate_correct_fan(w, cfg.get("mode", "fan_out"))
            std = nn.init.calculate_gain(cfg.get("nonlinearity", "relu"), cfg.get("a", 0)) / math.sqrt(fan)
            return math.sqrt(3.0) * std if uniform else std
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        std = cfg.get("gain", 1) * math.sqrt(2.0 / float(fan_in + fan_out))
        return math.sqrt(3.0) * std if uniform else std

    def _load_pretrained(self, cfg: dict) -> None:
        """A Pretrained initialiser: graphres' checkpoint loader (layouts, model-zoo names, prefix);
        in a standalone file without graphres, a state dict in graphres' keys, loaded strictly."""
        try:  # graphres' loader where it is installed; a standalone file runs without it
            load_checkpoint = importlib.import_module("graphres.backends.checkpoint").load_checkpoint
        except ImportError:
            state = torch.load(cfg["checkpoint"], map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            prefix = cfg.get("prefix")
            if prefix:
                prefix = prefix if prefix.endswith(".") else prefix + "."
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            self.load_state_dict(state, strict=True)
            return
        self.load_report = load_checkpoint(self, cfg["checkpoint"], style=self.checkpoint_style,
                                           prefix=cfg.get("prefix"))

    def _freeze_stages(self) -> None:
        for name in self.frozen_modules:
            m = getattr(self, name)
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> "GraphresBackbone":
        """Set train mode, then re-apply frozen_stages and norm_eval (and return self)."""
        super().train(mode)
        self.keep_frozen(self, mode)
        return self

    def keep_frozen(self, root: nn.Module, mode: bool = True) -> None:
        """Re-apply frozen_stages and norm_eval after ``root.train(mode)``: ``root`` is this module,
        or a container that holds its children (torchvision's IntermediateLayerGetter copies them
        into a new module, whose own train() knows nothing of freezing)."""
        for name in self.frozen_modules:
            m = getattr(root, name, None)
            if m is not None:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
        if mode and self.norm_eval:
            for m in root.modules():
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
