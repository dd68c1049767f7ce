"""Integration: graphres backbones in OpenMMLab's registries (mmengine's root ``MODELS``).

Importing this module (in a config: ``custom_imports=dict(imports=['graphres.integrations.openmmlab'])``)
registers ``GraphresBackbone`` in mmengine's root MODELS registry, so the config of every
OpenMMLab codebase (mmdetection's and mmsegmentation's MODELS are its children) can name it::

    backbone=dict(type='GraphresBackbone', spec='resnet50', overrides=dict(frozen_stages=1),
                  init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50'))

The built module is the generated network itself (state-dict keys ``conv1.weight``,
``layer1.0.bn1.*`` ..., as mmdetection's ResNet), made an mmengine ``BaseModule`` too. As
mmengine's registry builds do, it is left uninitialised (torch's construction-time values):
the runner's ``init_weights()`` applies ``init_cfg`` (the spec's own when none is given),
loading a Pretrained checkpoint there, and sets ``is_init``.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from mmengine.model import BaseModule
from mmengine.registry import MODELS

from .. import compile_spec
from ..backends.torch_module import network_class
from ..passes.limits import check_memory

_CLASSES: dict[type, type] = {}


def openmmlab_class(cls: type) -> type:
    """The generated network class ``cls`` made an mmengine ``BaseModule`` as well (one per class,
    registered beside it so that it pickles by reference)."""
    sub = _CLASSES.get(cls)
    if sub is None:
        import sys
        name = cls.__name__ + "OpenMMLab"
        sub = type(name, (cls, BaseModule), {"__module__": cls.__module__, "__qualname__": name,
                                             "__doc__": cls.__doc__})
        setattr(sys.modules[cls.__module__], name, sub)
        _CLASSES[cls] = sub
    return sub


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(_plain(value))}" for key, value in overrides.items()]
    return list(overrides)


def _plain(value: Any) -> Any:
    """ConfigDicts and tuples (what mmengine's Config holds) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@MODELS.register_module(name="GraphresBackbone")
def GraphresBackbone(spec: Any, overrides: Mapping[str, Any] | Sequence[str] | None = None,
                     init_cfg: dict | list | None = None):  # noqa: N802  (the registry's type name)
    """A graphres backbone for an OpenMMLab config: ``spec`` is a spec path, a shipped spec's name
    (``resnet50``) or a mapping; ``overrides`` settings as ``--set`` takes them (a dict
    ``{'frozen_stages': 1, 'stages.3.stride': 1}`` or ``key=value`` strings); ``init_cfg``
    mmengine's initialisers, replacing the spec's (mmdetection's block zero-init then applies
    only with the spec's own default)."""
    compiled = compile_spec(_plain(spec) if isinstance(spec, Mapping) else spec, _override_strings(overrides))
    check_memory(compiled, "build", None)
    cls = openmmlab_class(network_class(compiled.graph))
    model = cls(init=False)
    # BaseModule.__init__ set init_cfg to None; mmengine reads the instance's init_cfg
    model.init_cfg = copy.deepcopy(init_cfg) if init_cfg is not None else copy.deepcopy(cls.init_cfg)
    if init_cfg is not None:
        model.zero_init_blocks = False
    model._is_init = False
    return model
