"""Backend helper: read checkpoint files and map other projects' key layouts onto graphres' names.

Files are untrusted input and nothing in them runs:

- ``.pth``/``.pt`` (torch.save): ``torch.load(weights_only=True)``. The classes mmengine's runner
  pickles into ``epoch_12.pth`` (``HistoryBuffer`` in ``message_hub``, ``ConfigDict``, numpy arrays)
  are mapped, by their exact names, to inert stand-ins that only keep their state; any other class is
  still refused.
- ``.safetensors``: the ``safetensors`` package (the ``safetensors`` extra).
- ``.pkl`` (detectron2's model zoo): a pickle of numpy arrays, read with an unpickler that knows
  numpy's array and dtype reconstructors and nothing else.

Layouts: graphres' own names are torchvision's, with mmdetection's ``stem.N`` for a deep stem (so
torchvision, OpenMMLab and timm's plain ResNets load as they are). ``timm`` differs for a deep stem
(``conv1.0 ... conv1.6``, ``bn1``); ``detectron2`` everywhere (``res2.0.conv1.norm``, ``shortcut``,
``stem.conv1``).
"""
from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..diagnostics import CheckpointError

LAYOUTS = ("torchvision", "mmdet", "timm", "detectron2")


# -- reading ---------------------------------------------------------------------------------------

class _StandIn:
    """An inert stand-in for a known mmengine class: keeps the pickled state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class _StandInDict:
    """Stand-in for mmengine's ``ConfigDict`` (an addict ``Dict``, itself a dict): becomes a plain
    OrderedDict, the one mapping type torch's weights-only unpickler fills and builds."""

    def __new__(cls, *args: Any) -> Any:
        return OrderedDict()


def _stand_in(name: str, base: type) -> type:
    return type(name.rsplit(".", 1)[1], (base,), {"__module__": "graphres.backends.layouts"})


MMENGINE_CLASSES = {
    "mmengine.logging.history_buffer.HistoryBuffer": _StandIn,
    "mmengine.logging.message_hub.MessageHub": _StandIn,
    "mmengine.config.config.ConfigDict": _StandInDict,
    "mmengine.config.config.Config": _StandIn,
    "addict.addict.Dict": _StandInDict,
}


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy's array, scalar and dtype reconstructors under both module names (numpy 1 and 2)."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = np._core if hasattr(np, "_core") else np.core
    found: list[tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found += [(core.multiarray._reconstruct, f"{module}._reconstruct"),
                  (core.multiarray.scalar, f"{module}.scalar")]
    for kind in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType",
                 "UInt8DType", "Int8DType"):
        if hasattr(getattr(np, "dtypes", None), kind):
            found.append((getattr(np.dtypes, kind), f"numpy.dtypes.{kind}"))
    return found


def _safe_globals() -> list:
    stand_ins = [(_stand_in(name, base), name) for name, base in MMENGINE_CLASSES.items()]
    return stand_ins + _numpy_globals()


def read_file(path: Path) -> Any:
    """The object a checkpoint file holds: tensors in plain containers (numpy arrays become tensors)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{" and path.suffix not in (".pkl",)):
        return _read_safetensors(path)
    if path.suffix == ".pkl" and head[:1] == b"\x80":
        return _to_tensors(_read_numpy_pickle(path))
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: plain weights_only, no stand-ins
        return _to_tensors(torch.load(str(path), map_location="cpu", weights_only=True))
    with torch.serialization.safe_globals(_safe_globals()):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return _to_tensors(obj)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"checkpoint '{path}' is a .safetensors file, which needs the safetensors package: "
                              f"pip install 'graphres[safetensors]'") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged headers
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint '{path}' as safetensors: {reason[:300]}") from None


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and scalars in plain containers; refuses every other global."""

    def __init__(self, file: io.BufferedReader):
        super().__init__(file, encoding="latin1")  # detectron2's pickles come from Python 2 too
        self._allowed = {name: obj for obj, name in _numpy_globals()}
        self._allowed["collections.OrderedDict"] = __import__("collections").OrderedDict
        self._allowed["_codecs.encode"] = __import__("codecs").encode

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        raise pickle.UnpicklingError(f"global '{key}' is not allowed (only numpy arrays are read from a .pkl)")


def _read_numpy_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"cannot read checkpoint '{path}' safely: {e}") from None
        except Exception as e:  # truncated or damaged pickles
            raise CheckpointError(f"cannot read checkpoint '{path}' as a pickle: {str(e)[:300] or type(e).__name__}") \
                from None


def _to_tensors(obj: Any) -> Any:
    """numpy arrays (detectron2, some mmengine states) as tensors, in the containers that hold them."""
    try:
        import numpy as np
    except ImportError:
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype.kind in "biuf" else obj
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    return obj


# -- layouts ---------------------------------------------------------------------------------------

# timm's deep stem (resnet50c/d/s) -> mmdetection's Sequential stem (graphres)
TIMM_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
             "conv1.6": "stem.6", "bn1": "stem.7"}
_D2_BLOCK = re.compile(r"^res([2-9])\.(\d+)\.(conv[1-3]|shortcut)(\.norm)?\.(.+)$")
_D2_PREFIXES = ("backbone.bottom_up.", "backbone.")


def detect_layout(keys: list[str]) -> str:
    """``detectron2``, ``timm`` (a timm deep stem) or ``torchvision`` (graphres' own names, also
    OpenMMLab's and timm's plain ResNets)."""
    bare = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    for k in bare:
        for p in ("",) + _D2_PREFIXES:
            if k.startswith(p) and (k[len(p):].startswith("stem.conv1.") or _D2_BLOCK.match(k[len(p):])):
                return "detectron2"
    for k in bare:
        for p in ("", "backbone."):
            if k.startswith(p + "conv1.0.") and any(b.startswith(p + "bn1.") for b in bare):
                return "timm"
    return "torchvision"


def to_graphres(sd: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Rename ``sd`` from ``layout`` to graphres' names: (state dict, keys left out, keys renamed)."""
    if layout == "timm":
        out, renamed = {}, 0
        for k, v in sd.items():
            prefix = "backbone." if k.startswith("backbone.") else ""
            new = _rename_prefix(k[len(prefix):], TIMM_STEM)
            renamed += new != k[len(prefix):]
            out[prefix + new] = v
        return out, [], renamed
    if layout == "detectron2":
        return _from_detectron2(sd)
    return dict(sd), [], 0


def _rename_prefix(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _from_detectron2(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], int]:
    base = next((p for p in _D2_PREFIXES if any(k.startswith(p + "res2.") for k in sd)), "")
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for k, v in sd.items():
        if not k.startswith(base):
            ignored.append(k)
            continue
        rest = k[len(base):]
        if rest.startswith("stem.conv1."):
            tail = rest[len("stem.conv1."):]
            out["bn1." + tail[len("norm."):] if tail.startswith("norm.") else "conv1." + tail] = v
            continue
        m = _D2_BLOCK.match(rest)
        if not m:
            ignored.append(k)
            continue
        stage, block, layer, norm, tail = m.groups()
        if layer == "shortcut":
            name = f"downsample.{1 if norm else 0}"
        else:
            name = f"bn{layer[-1]}" if norm else layer
        out[f"layer{int(stage) - 1}.{block}.{name}.{tail}"] = v
    return out, sorted(ignored), len(out)


def from_graphres(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """graphres' names written in ``layout`` (for ``graphres weights --convert-to``)."""
    if layout == "timm":
        inverse = {v: k for k, v in TIMM_STEM.items()}
        return {_rename_prefix(k, inverse): v for k, v in sd.items()}
    if layout == "detectron2":
        out = {}
        for k, v in sd.items():
            m = re.match(r"^layer(\d+)\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(.+)$", k)
            if k.startswith("conv1."):
                out["stem.conv1." + k[len("conv1."):]] = v
            elif k.startswith("bn1."):
                out["stem.conv1.norm." + k[len("bn1."):]] = v
            elif m:
                stage, block, layer, tail = m.groups()
                name = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(
                    layer, layer if layer.startswith("conv") else f"conv{layer[-1]}.norm")
                out[f"res{int(stage) + 1}.{block}.{name}.{tail}"] = v
            else:
                out[k] = v
        return out
    return dict(sd)
