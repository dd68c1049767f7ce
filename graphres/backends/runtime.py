"""Torch backend runtime: the classes generated modules use (torch only, no graphres import).

Generated network classes derive from :class:`GraphresBackbone`, which holds the OpenMMLab
behaviour that is not a layer: initialisation, ``frozen_stages``, ``norm_eval`` and the feature
metadata. The layer classes here (weight-standardised conv, frozen and single-process-safe
BatchNorm) are what torch lacks. The code generator copies the source of the classes a network
uses into a standalone ``.py`` file, so this module must import nothing but torch and the
standard library.
"""
import dataclasses
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


class GraphresBlock(nn.Module):
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
            for key, value in attrs.items():
                setattr(block, key, value)
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
        for cfg in cfgs:
            if cfg.get("type") != "Pretrained":
                self._apply_initialiser(cfg)
        zero = self.zero_init_blocks and self.zero_init_residual if zero_init_residual is None else zero_init_residual
        if zero:
            for path in self.zero_init_modules:
                m = self.get_submodule(path)
                if getattr(m, "weight", None) is not None:
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)
        for cfg in cfgs:
            if cfg.get("type") == "Pretrained":
                self._load_pretrained(cfg)
        self._is_init = True

    def _apply_initialiser(self, cfg: dict) -> None:
        """One of mmengine's weight initialisers (its defaults), on every module ``layer`` names."""
        kind = cfg["type"]
        layers = cfg.get("layer") or []
        layers = {layers} if isinstance(layers, str) else set(layers)
        bias = cfg.get("bias", 0)
        if cfg.get("bias_prob") is not None:
            p = float(cfg["bias_prob"])
            bias = -math.log((1 - p) / p)
        with torch.no_grad():
            for m in self.modules():
                if not layers & {c.__name__ for c in type(m).__mro__}:
                    continue
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor):
                    if kind == "Kaiming":
                        fn = nn.init.kaiming_uniform_ if cfg.get("distribution", "normal") == "uniform" \
                            else nn.init.kaiming_normal_
                        fn(w, a=cfg.get("a", 0), mode=cfg.get("mode", "fan_out"),
                           nonlinearity=cfg.get("nonlinearity", "relu"))
                    elif kind == "Xavier":
                        fn = nn.init.xavier_uniform_ if cfg.get("distribution", "normal") == "uniform" \
                            else nn.init.xavier_normal_
                        fn(w, gain=cfg.get("gain", 1))
                    elif kind == "Normal":
                        nn.init.normal_(w, cfg.get("mean", 0), cfg.get("std", 1))
                    elif kind == "Uniform":
                        nn.init.uniform_(w, cfg.get("a", 0), cfg.get("b", 1))
                    elif kind == "Constant":
                        nn.init.constant_(w, cfg["val"])
                    else:
                        raise ValueError(f"init_cfg type {kind!r} is not one of Kaiming, Xavier, Normal, Uniform, "
                                         f"Constant, Pretrained")
                b = getattr(m, "bias", None)
                if isinstance(b, torch.Tensor):
                    nn.init.constant_(b, bias)

    def _load_pretrained(self, cfg: dict) -> None:
        """A Pretrained initialiser: graphres' checkpoint loader (layouts, model-zoo names, prefix);
        in a standalone file without graphres, a state dict in graphres' keys, loaded strictly."""
        try:
            from graphres.backends.checkpoint import load_checkpoint
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
