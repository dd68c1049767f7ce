"""Load mmdet 3.3's and mmseg 1.2's resnet.py files without their package __init__ (which needs
compiled mmcv ops). Private parity tooling: run in /work/venvs/mm, never in CI."""
import importlib.util
import os
import sys
import types


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _namespace(name, path):
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
    return pkg


def resnets():
    """(mmdet's ResNet class, mmseg's ResNet class)."""
    import mmcv.cnn  # noqa: F401  (registers ContextBlock, NonLocal2d, GeneralizedAttention)
    import mmdet
    import mmdet.registry  # noqa: F401
    import mmseg
    import mmseg.registry  # noqa: F401
    out = []
    for pkg, layers, layer_file in ((mmdet, "layers", "res_layer.py"), (mmseg, "utils", "res_layer.py")):
        root = os.path.join(os.path.dirname(pkg.__file__), "models")
        name = pkg.__name__
        _namespace(f"{name}.models", root)
        lay = _namespace(f"{name}.models.{layers}", os.path.join(root, layers))
        _namespace(f"{name}.models.backbones", os.path.join(root, "backbones"))
        lay.ResLayer = _module(f"{name}.models.{layers}.res_layer", os.path.join(root, layers, layer_file)).ResLayer
        out.append(_module(f"{name}.models.backbones.resnet", os.path.join(root, "backbones", "resnet.py")).ResNet)
    return tuple(out)
