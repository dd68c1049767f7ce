"""Load OpenMMLab's real ResNet code (mmdet 3.3, mmseg 1.2) and mmcv-lite's DCN classes without
compiled mmcv ops (run in /work/venvs/mm, never in CI). The one loader of the parity scripts:
``load()`` for the modules, ``resnets()`` for the two ResNet classes, ``load_mmdet_resnet()`` for
mmdet's resnet and res_layer modules.

mmcv-lite ships the Python side of DeformConv2dPack / ModulatedDeformConv2dPack but no kernels:
``load_ext`` is stubbed and the two kernel entry points (``deform_conv2d``,
``modulated_deform_conv2d``) are replaced by torchvision.ops.deform_conv2d, which reads the same
offset layout. Everything else (module classes, names, shapes, init) is mmcv's own code.
"""
import importlib.util
import os
import sys
import types

import torch
import torchvision


def _tv_deform(x, offset, weight, stride=1, padding=0, dilation=1, groups=1, deform_groups=1, bias=False,
               im2col_step=32):
    return torchvision.ops.deform_conv2d(x, offset, weight, None, stride, padding, dilation)


def _tv_modulated(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1, groups=1, deform_groups=1):
    return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _package(name: str, path: str):
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
    return pkg


_LOADED = None


def load():
    """Returns (mmdet resnet module, mmseg resnet module, mmcv deform_conv, mmcv modulated_deform_conv)."""
    global _LOADED
    if _LOADED is None:
        _LOADED = _load_all()
    return _LOADED


def resnets():
    """(mmdet's ResNet class, mmseg's ResNet class)."""
    det, seg, _, _ = load()
    return det.ResNet, seg.ResNet


def load_mmdet_resnet():
    """(mmdet's resnet module, its res_layer module)."""
    det, _, _, _ = load()
    return det, sys.modules["mmdet.models.layers.res_layer"]


def _load_all():
    import mmcv
    import mmcv.cnn  # noqa: F401  (registers ContextBlock, NonLocal2d, GeneralizedAttention)
    import mmcv.utils.ext_loader as ext_loader
    ext_loader.load_ext = lambda name, funcs: types.SimpleNamespace()
    mmcv_dir = os.path.dirname(mmcv.__file__)
    _package("mmcv.ops", os.path.join(mmcv_dir, "ops"))
    mdc = _load("mmcv.ops.modulated_deform_conv", os.path.join(mmcv_dir, "ops", "modulated_deform_conv.py"))
    dc = _load("mmcv.ops.deform_conv", os.path.join(mmcv_dir, "ops", "deform_conv.py"))
    dc.deform_conv2d = _tv_deform
    mdc.modulated_deform_conv2d = _tv_modulated

    import mmdet
    import mmdet.registry  # noqa: F401
    import mmdet.utils  # noqa: F401
    det_dir = os.path.dirname(mmdet.__file__)
    _package("mmdet.models", os.path.join(det_dir, "models"))
    _package("mmdet.models.layers", os.path.join(det_dir, "models", "layers"))
    _package("mmdet.models.backbones", os.path.join(det_dir, "models", "backbones"))
    res_layer = _load("mmdet.models.layers.res_layer", os.path.join(det_dir, "models", "layers", "res_layer.py"))
    sys.modules["mmdet.models.layers"].ResLayer = res_layer.ResLayer
    det = _load("mmdet.models.backbones.resnet", os.path.join(det_dir, "models", "backbones", "resnet.py"))

    import mmseg
    import mmseg.registry  # noqa: F401
    seg_dir = os.path.dirname(mmseg.__file__)
    _package("mmseg.models", os.path.join(seg_dir, "models"))
    _package("mmseg.models.utils", os.path.join(seg_dir, "models", "utils"))
    _package("mmseg.models.backbones", os.path.join(seg_dir, "models", "backbones"))
    seg_res_layer = _load("mmseg.models.utils.res_layer", os.path.join(seg_dir, "models", "utils", "res_layer.py"))
    sys.modules["mmseg.models.utils"].ResLayer = seg_res_layer.ResLayer
    seg = _load("mmseg.models.backbones.resnet", os.path.join(seg_dir, "models", "backbones", "resnet.py"))
    return det, seg, dc, mdc
