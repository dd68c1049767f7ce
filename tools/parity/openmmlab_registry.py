"""Private check: mmdetection's and mmsegmentation's MODELS registries find GraphresBackbone.

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/openmmlab_registry.py

Their registries are children of mmengine's root MODELS, where graphres.integrations.openmmlab
registers. This venv's mmcv-lite has no compiled ops, so the registries' own model imports
(``locations``, which import mmdet.models and hence mmcv._ext) are marked done first; the lookup
through the parent registry is what is checked."""
import logging

import graphres.integrations.openmmlab  # noqa: F401  (registers GraphresBackbone)
from mmengine.config import Config
from mmengine.logging import MMLogger

MMLogger.get_instance("mmengine", log_level="WARNING")
logging.getLogger("mmengine").setLevel(logging.WARNING)

from mmdet.registry import MODELS as MMDET  # noqa: E402
from mmseg.registry import MODELS as MMSEG  # noqa: E402

for name, registry in (("mmdet", MMDET), ("mmseg", MMSEG)):
    registry._imported = True  # skip importing <codebase>.models (needs compiled mmcv ops here)
    model = registry.build(dict(type="GraphresBackbone", spec="resnet50", overrides=dict(frozen_stages=1)))
    print(f"{name}.registry.MODELS (parent {registry.parent.name!r}) built {type(model).__name__}: "
          f"is_init {model.is_init}, depth {model.depth}, frozen_stages {model.frozen_stages}, "
          f"feat_dim {model.feat_dim}")
    model.init_weights()
    print(f"  after init_weights(): is_init {model.is_init}, layer1.0.bn3.weight sum "
          f"{model.layer1[0].bn3.weight.sum().item()}, bn1.weight mean {model.bn1.weight.mean().item()}")

cfg = Config(dict(custom_imports=dict(imports=["graphres.integrations.openmmlab"], allow_failed_imports=False),
                  model=dict(type="GraphresBackbone", spec="resnet18", init_cfg=[dict(type="Kaiming", layer="Conv2d")])))
model = MMDET.build(cfg.model)
print(f"from a Config: {type(model).__name__}, init_cfg {model.init_cfg}")
