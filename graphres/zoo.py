"""Model-zoo names (``torchvision://resnet50``, ``open-mmlab://resnext101_32x4d``), resolved as mmengine does.

Used by the parse stage (an unknown name is E090, with did-you-mean) and by the torch backend, which
reads the file from the cache where mmengine's loader (``torch.hub.load_state_dict_from_url``) keeps
it: ``$TORCH_HOME/hub/checkpoints/<the URL's file name>``. graphres never downloads anything.
Only the ResNet family is listed; stdlib only.
"""
from __future__ import annotations

import os
from pathlib import Path

_TV = "https://download.pytorch.org/models/"
_MM = "https://download.openmmlab.com/pretrain/third_party/"

# torchvision: mmengine's table is torchvision 0.12's model_urls (plain names, the IMAGENET1K_V1
# weights) plus, for every weights enum, '<model>.default' and '<model>.<weights name>'.
_TV_FILES = {
    "resnet18": ("resnet18-f37072fd.pth", None),
    "resnet34": ("resnet34-b627a593.pth", None),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    "resnet152": ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
    "resnext50_32x4d": ("resnext50_32x4d-7cdf4587.pth", "resnext50_32x4d-1a0047aa.pth"),
    "resnext101_32x8d": ("resnext101_32x8d-8ba56ff5.pth", "resnext101_32x8d-110c445d.pth"),
    "resnext101_64x4d": ("resnext101_64x4d-173b62eb.pth", None),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth"),
}
_NOT_IN_0_12 = {"resnext101_64x4d"}  # added in torchvision 0.13: no plain name in mmengine's table


def _torchvision_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for model, (v1, v2) in _TV_FILES.items():
        if model not in _NOT_IN_0_12:
            table[model] = _TV + v1
        table[f"{model}.imagenet1k_v1"] = _TV + v1
        if v2:
            table[f"{model}.imagenet1k_v2"] = _TV + v2
        table[f"{model}.default"] = _TV + (v2 or v1)
    return table


TORCHVISION = _torchvision_table()

# open-mmlab:// (and openmmlab://): mmcv/mmengine's open_mmlab.json, ResNet-family entries.
OPENMMLAB = {
    "detectron/resnet50_caffe": _MM + "resnet50_caffe-788b5fa3.pth",
    "detectron2/resnet50_caffe": _MM + "resnet50_msra-5891d200.pth",
    "detectron/resnet101_caffe": _MM + "resnet101_caffe-3ad79236.pth",
    "detectron2/resnet101_caffe": _MM + "resnet101_msra-6cc46731.pth",
    "detectron2/resnext101_32x8d": _MM + "resnext101_32x8d-1516f1aa.pth",
    "resnext50_32x4d": _MM + "resnext50-32x4d-0ab1a123.pth",
    "resnext101_32x4d": _MM + "resnext101_32x4d-a5af3160.pth",
    "resnext101_64x4d": _MM + "resnext101_64x4d-ee2c6f71.pth",
    "contrib/resnet50_gn": _MM + "resnet50_gn_thangvubk-ad1730dd.pth",
    "detectron/resnet50_gn": _MM + "resnet50_gn-9186a21c.pth",
    "detectron/resnet101_gn": _MM + "resnet101_gn-cac0ab98.pth",
    "jhu/resnet50_gn_ws": _MM + "resnet50_gn_ws-15beedd8.pth",
    "jhu/resnet101_gn_ws": _MM + "resnet101_gn_ws-3e3c308c.pth",
    "jhu/resnext50_32x4d_gn_ws": _MM + "resnext50_32x4d_gn_ws-0d87ac85.pth",
    "jhu/resnext101_32x4d_gn_ws": _MM + "resnext101_32x4d_gn_ws-34ac1a9e.pth",
    "jhu/resnext50_32x4d_gn": _MM + "resnext50_32x4d_gn-c7e8b754.pth",
    "jhu/resnext101_32x4d_gn": _MM + "resnext101_32x4d_gn-ac3bb84e.pth",
    "resnet18_v1c": _MM + "resnet18_v1c-b5776b93.pth",
    "resnet50_v1c": _MM + "resnet50_v1c-2cccc1ad.pth",
    "resnet101_v1c": _MM + "resnet101_v1c-e67eebb6.pth",
}
# mmengine's deprecated names, still accepted with their new name
OPENMMLAB_DEPRECATED = {"resnet50_caffe": "detectron/resnet50_caffe",
                        "resnet101_caffe": "detectron/resnet101_caffe"}

SCHEMES = ("torchvision://", "modelzoo://", "open-mmlab://", "openmmlab://")
URL_SCHEMES = ("http://", "https://")


def is_zoo_name(checkpoint: str) -> bool:
    return checkpoint.startswith(SCHEMES + URL_SCHEMES)


def _table(checkpoint: str) -> tuple[str, dict[str, str], str]:
    """The scheme, its table and the name after the scheme."""
    scheme = next(s for s in SCHEMES if checkpoint.startswith(s))
    name = checkpoint[len(scheme):]
    if scheme in ("torchvision://", "modelzoo://"):
        # as mmengine: 'ResNet50_Weights.IMAGENET1K_V1' is 'resnet50.imagenet1k_v1'
        return scheme, TORCHVISION, name.lower().replace("_weights", "")
    return scheme, OPENMMLAB, OPENMMLAB_DEPRECATED.get(name, name)


def zoo_url(checkpoint: str) -> str | None:
    """The URL a zoo name stands for (the name itself for an http(s) URL); None when unknown."""
    if checkpoint.startswith(URL_SCHEMES):
        return checkpoint
    if not checkpoint.startswith(SCHEMES):
        return None
    _, table, name = _table(checkpoint)
    return table.get(name)


def known_names(checkpoint: str) -> list[str]:
    """Every name of ``checkpoint``'s scheme, written with the scheme (for did-you-mean)."""
    scheme, table, _ = _table(checkpoint)
    return [scheme + k for k in table]


def hub_dir() -> Path:
    """torch.hub's directory, computed as torch does (TORCH_HOME, else $XDG_CACHE_HOME/torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(home)) / "hub"


def cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url(url)`` keeps its download."""
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return hub_dir() / "checkpoints" / name


def fetch_hint(url: str) -> str:
    return (f"fetch it with: python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\" "
            f"(or: curl -L --create-dirs -o {cache_path(url)} {url})")
