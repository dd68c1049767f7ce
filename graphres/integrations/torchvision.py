"""Integration: graphres backbones in torchvision's detection and segmentation models.

:func:`fpn_backbone` is shaped like torchvision's ``resnet_fpn_backbone``: it returns a
``BackboneWithFPN`` (with ``.out_channels``) that ``FasterRCNN``, ``MaskRCNN``, ``RetinaNet`` (P3-P7
with ``returned_layers=[2, 3, 4]`` and ``LastLevelP6P7``) and ``FCOS`` take as they are.
:func:`segmentation_backbone` returns the ``{"out": layer4}`` extractor ``DeepLabV3`` and ``FCN``
take with their heads.

The pitfall they avoid: torchvision's ``IntermediateLayerGetter`` copies the backbone's children
into a new module, whose ``train()`` is plain torch's, so ``det.train()`` silently puts the frozen
stages and the ``norm_eval`` BatchNorms back into training mode (their running statistics then
move). Here the extractor's ``train()`` re-applies the spec's freezing after torch's. torchvision is
imported when these functions are called, never by ``import graphres``.
"""
from __future__ import annotations

from typing import Any, Sequence

from .. import SpecError, build, compile_spec

_GETTERS: dict[type, type] = {}


def _freezing_getter_class(base: type) -> type:
    """``base`` (torchvision's IntermediateLayerGetter) whose train() keeps the graphres freezing."""
    cls = _GETTERS.get(base)
    if cls is None:
        def train(self, mode: bool = True):
            base.train(self, mode)
            self._graphres_rules.keep_frozen(self, mode)
            return self

        cls = type("FreezingLayerGetter", (base,), {
            "__doc__": "IntermediateLayerGetter whose train() re-applies the graphres spec's frozen stages "
                       "and norm_eval.", "train": train})
        _GETTERS[base] = cls
    return cls


def _keep_freezing(getter: Any, model: Any) -> Any:
    getter.__class__ = _freezing_getter_class(type(getter))
    # the rules' owner, outside the module tree (no duplicated parameters or state-dict keys)
    object.__setattr__(getter, "_graphres_rules", model)
    getter.train(model.training)
    return getter


def _model_and_channels(spec: Any, overrides: Sequence[str], trainable_layers: int | None,
                        checkpoint: Any) -> tuple[Any, list[int]]:
    overrides = list(overrides)
    if trainable_layers is not None:
        compiled = compile_spec(spec, overrides)
        n = len(compiled.graph.graph["stages"])
        if not 0 <= trainable_layers <= n + 1:
            raise ValueError(f"trainable_layers = {trainable_layers} must be in 0..{n + 1} (the stem and {n} stages)")
        # torchvision trains the last k of (stem, layer1..layerN): the spec's frozen_stages N - k
        setting = f"frozen_stages={n - trainable_layers}"
        try:
            compiled = compile_spec(spec, overrides + [setting])
        except SpecError:  # a shorthand spec: the setting is under backbone
            compiled = compile_spec(spec, overrides + ["backbone." + setting])
    else:
        compiled = compile_spec(spec, overrides)
    model = build(compiled, checkpoint=checkpoint)
    return model, [st["channels"] for st in compiled.graph.graph["stages"]]


def fpn_backbone(spec: Any, trainable_layers: int | None = None, returned_layers: Sequence[int] | None = None,
                 extra_blocks: Any = None, out_channels: int = 256, norm_layer: Any = None, *,
                 overrides: Sequence[str] = (), checkpoint: Any = None):
    """torchvision's ``BackboneWithFPN`` over the graphres backbone of ``spec`` (a path, a shipped
    spec's name or a mapping).

    ``trainable_layers``: None keeps the spec's ``frozen_stages``; k trains the last k of the stem
    and the stages, as torchvision (k = 3 is frozen_stages 1). ``returned_layers``: stage numbers
    (1 = layer1), default all. ``extra_blocks``: default ``LastLevelMaxPool()``. The spec's frozen
    stages and norm_eval BatchNorms stay frozen through ``.train()``."""
    from torchvision.models._utils import IntermediateLayerGetter  # noqa: F401  (torchvision, lazily)
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    model, channels = _model_and_channels(spec, overrides, trainable_layers, checkpoint)
    if returned_layers is None:
        returned_layers = list(range(1, len(channels) + 1))
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > len(channels):
        raise ValueError(f"returned_layers = {list(returned_layers)} must be stage numbers in 1..{len(channels)}")
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    in_channels_list = [channels[k - 1] for k in returned_layers]
    det = BackboneWithFPN(model, return_layers, in_channels_list, out_channels,
                          extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
                          norm_layer=norm_layer)
    _keep_freezing(det.body, model)
    return det


def segmentation_backbone(spec: Any, return_layers: dict[str, str] | None = None, *, overrides: Sequence[str] = (),
                          checkpoint: Any = None):
    """torchvision's ``IntermediateLayerGetter`` over the graphres backbone, returning
    ``{"out": layer4}`` by default (``{"layer4": "out", "layer3": "aux"}`` for an auxiliary head), as
    ``DeepLabV3(backbone, DeepLabHead(2048, classes))`` takes it; freezing is kept through train()."""
    from torchvision.models._utils import IntermediateLayerGetter

    model, channels = _model_and_channels(spec, overrides, None, checkpoint)
    getter = IntermediateLayerGetter(model, return_layers or {f"layer{len(channels)}": "out"})
    return _keep_freezing(getter, model)
