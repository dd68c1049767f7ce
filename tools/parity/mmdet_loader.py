"""Load mmdetection 3.3's ResNet without its package __init__ (which needs compiled mmcv ops).

Used by the private parity scripts here, in /work/venvs/mm; never by the test suite."""
import importlib.util
import sys
import types
from pathlib import Path


def load_mmdet_resnet():
    """(resnet module, res_layer module) of the installed mmdet, loaded file by file."""
    spec = importlib.util.find_spec("mmdet")
    root = Path(spec.submodule_search_locations[0])
    from mmengine.registry import MODELS as ROOT_MODELS, Registry
    for name in ("mmdet", "mmdet.models", "mmdet.models.layers", "mmdet.models.backbones"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / Path(*name.split(".")[1:]))]
        sys.modules.setdefault(name, mod)
    registry = types.ModuleType("mmdet.registry")
    registry.MODELS = Registry("model", parent=ROOT_MODELS, scope="mmdet_parity")
    sys.modules["mmdet.registry"] = registry

    def load(name, path):
        s = importlib.util.spec_from_file_location(name, path)
        m = importlib.util.module_from_spec(s)
        sys.modules[name] = m
        s.loader.exec_module(m)
        return m

    res_layer = load("mmdet.models.layers.res_layer", root / "models" / "layers" / "res_layer.py")
    sys.modules["mmdet.models.layers"].ResLayer = res_layer.ResLayer
    resnet = load("mmdet.models.backbones.resnet", root / "models" / "backbones" / "resnet.py")
    return resnet, res_layer
