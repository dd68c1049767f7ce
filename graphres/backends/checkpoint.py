"""Backend helper: load a torchvision, OpenMMLab, timm or detectron2 checkpoint into a compiled module.

Checkpoints are untrusted input: ``torch.load(weights_only=True)``, safetensors, or a numpy-only
unpickler (:mod:`graphres.backends.layouts`). A model-zoo name (``torchvision://resnet50``) is read
from torch.hub's cache (:mod:`graphres.zoo`), never downloaded. Accepted layouts: a bare
state dict, or one wrapped in ``state_dict`` / ``model``; keys may carry ``module.`` (DataParallel)
and ``backbone.`` (detector) prefixes, or the prefix given by ``init.prefix``; timm and detectron2
names are renamed to graphres' own. Loading is strict except for a classifier head (``fc.*``,
loaded too when the spec has ``head``) and, for a whole detector, its non-backbone parts; every
other difference is reported by name.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import zoo
from ..diagnostics import CheckpointError, CheckpointWarning
from .layouts import detect_layout, read_file, to_graphres

_LIST_MAX = 8


@dataclass
class LoadReport:
    loaded: int
    ignored: list[str] = field(default_factory=list)  # fc.* and non-backbone keys, skipped on purpose
    warnings: list[str] = field(default_factory=list)
    layout: str = "torchvision"

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors" + (f" ({self.layout} layout)" if self.layout != "torchvision" else "")
        if self.ignored:
            text += f"; ignored {len(self.ignored)} ({_short(self.ignored)})"
        return text


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_MAX])
    return shown + (f", ... ({len(keys) - _LIST_MAX} more)" if len(keys) > _LIST_MAX else "")


def resolve_checkpoint(path: str | Path) -> Path:
    """The file a checkpoint argument names: a path, or a model-zoo name or URL found in torch.hub's
    cache. A zoo file that is not there is an error saying where it should be and how to fetch it."""
    text = str(path)
    if not zoo.is_zoo_name(text):
        return Path(path)
    url = zoo.zoo_url(text)
    if url is None:
        raise CheckpointError(f"checkpoint '{text}' is not a model-zoo name graphres knows; give the file's path")
    file = zoo.cache_path(url)
    if not file.is_file():
        shown = f"'{text}'" if text == url else f"'{text}' ({url})"
        raise CheckpointError(f"checkpoint {shown} is not in torch.hub's cache: expected {file}; graphres never "
                              f"downloads: {zoo.fetch_hint(url)}")
    return file


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's state dict, and its ``meta`` mapping (empty when it has none)."""
    path = resolve_checkpoint(path)
    file = Path(path)
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' not found") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from None
    if file.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is a directory, not a file")
    if size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)")
    try:
        obj = read_file(file)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' not found") from None
    except Exception as e:  # pickle refusals, corrupt archives
        raise CheckpointError(_unreadable(file, size, e)) from None
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else {}
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint '{path}' holds no state dict (a mapping of names to tensors)")
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"checkpoint '{path}' has {len(bad_keys)} key{'s' if len(bad_keys) != 1 else ''} that "
                              f"{'are' if len(bad_keys) != 1 else 'is'} not a string "
                              f"({_short([_shown(k) for k in bad_keys])}); a state dict maps names to tensors")
    meta_tensors = sorted(k for k, v in obj.items() if v.is_meta)
    if meta_tensors:
        raise CheckpointError(f"checkpoint '{path}' has {len(meta_tensors)} tensor{'s' if len(meta_tensors) != 1 else ''}"
                              f" without data (on the meta device): {_short(meta_tensors)}; save the checkpoint "
                              f"after the weights are materialised")
    odd_layout = sorted(k for k, v in obj.items() if v.layout != torch.strided)
    if odd_layout:
        raise CheckpointError(f"checkpoint '{path}' has sparse or other non-dense tensors: {_short(odd_layout)}")
    return dict(obj), meta


def _shown(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _unreadable(file: Path, size: int, e: Exception) -> str:
    """Why ``torch.load`` failed, in words about the file rather than torch's internals."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(file):
        return (f"checkpoint '{file}' is truncated or damaged: it starts as a torch.save archive, but its "
                f"{size:,} bytes end before the archive's directory")
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        return f"checkpoint '{file}' is not a torch.save file (it starts with {head!r})"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    refused = re.search(r"Unsupported (global|operand)[^\n]*?(GLOBAL (\S+)|$)", str(e), re.M)
    if refused:
        reason = f"refused: {refused.group(3) or refused.group(0)}".rstrip(".")
    if "weights_only" in str(e) or "Unsupported global" in str(e):
        return (f"cannot read checkpoint '{file}' safely (weights_only=True): it holds Python objects other "
                f"than tensors and plain containers ({reason[:200]})")
    return f"cannot read checkpoint '{file}' (weights_only=True): {reason[:300]}"


_STYLE = re.compile(r"""\bstyle\s*[=:]\s*['"]?(caffe|pytorch)\b""")


def checkpoint_style(meta: dict) -> str | None:
    """The bottleneck style recorded in an OpenMMLab checkpoint's config text, if it says one."""
    texts = [v for k, v in meta.items() if k in ("config", "cfg") and isinstance(v, str)]
    found = {m.group(1) for text in texts for m in _STYLE.finditer(text)}
    return found.pop() if len(found) == 1 else None


def normalise_keys(sd: dict[str, torch.Tensor], keep_head: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip ``module.`` and ``backbone.`` prefixes; return the backbone keys and the ignored ones
    (``fc.*`` among them unless ``keep_head``: the model has a classification head to load)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in sd):
        ignored = sorted(k for k in sd if not k.startswith("backbone."))
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    head = [] if keep_head else sorted(k for k in sd if k.startswith("fc."))
    for k in head:
        del sd[k]
    return sd, head + ignored


def check_values(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """What is wrong with the tensors themselves: errors (an integer, boolean or complex tensor where the
    model has floats), and findings that load but are said aloud (a cast between float types, NaN or
    infinite values, a negative running variance)."""
    errors, notes = [], []
    kinds: dict[str, list[str]] = {}
    casts: dict[tuple, list[str]] = {}
    for k in sorted(sd):
        t, mine = sd[k], own[k]
        if not mine.is_floating_point():
            continue
        if t.is_complex():
            kinds.setdefault("complex", []).append(k)
        elif not t.is_floating_point():
            kinds.setdefault("integer" if t.dtype != torch.bool else "boolean", []).append(k)
        elif t.dtype != mine.dtype:
            casts.setdefault((t.dtype, mine.dtype), []).append(k)
    for kind, keys in kinds.items():
        errors.append(f"{kind} tensors where the model has floating-point ones ({len(keys)}): {_short(keys)}")
    for (src, dst), keys in casts.items():
        notes.append(f"{len(keys)} tensor{'s' if len(keys) != 1 else ''} cast from {_dtype(src)} to {_dtype(dst)}: "
                     f"{_short(keys)}")
    if errors:
        return errors, notes
    floats = [k for k in sorted(sd) if sd[k].is_floating_point()]
    # a tensor's sum is finite when all its values are (NaN and infinities propagate): one pass over
    # the weights without a mask; a sum that overflows is checked value by value
    suspect = [k for k in floats if sd[k].numel() and not bool(torch.isfinite(sd[k].sum()))]
    not_finite = [f"{k} ({int((~torch.isfinite(sd[k])).sum()):,} of {sd[k].numel():,})" for k in suspect
                  if not bool(torch.isfinite(sd[k]).all())]
    if not_finite:
        notes.append(f"{len(not_finite)} tensor{'s hold' if len(not_finite) != 1 else ' holds'} NaN or infinite values: "
                     f"{_short(not_finite)}; the model's outputs will be NaN")
    negative = [f"{k} (min {float(sd[k].min()):g})" for k in floats
                if k.endswith("running_var") and sd[k].numel() and bool((sd[k] < 0).any())]
    if negative:
        notes.append(f"{len(negative)} negative running variance{'s' if len(negative) != 1 else ''}: "
                     f"{_short(negative)}; a variance is never negative, so these weights are damaged")
    return errors, notes


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def select_prefix(sd: dict[str, torch.Tensor], prefix: str, path: object) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The keys under ``prefix`` (mmengine's ``init_cfg.prefix``) with it removed, and the others."""
    if sd and all(k.startswith("module.") for k in sd) and not prefix.startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    dotted = prefix if prefix.endswith(".") else prefix + "."
    chosen = {k[len(dotted):]: v for k, v in sd.items() if k.startswith(dotted)}
    if not chosen:
        firsts = sorted({k.split(".", 1)[0] + "." for k in sd})
        raise CheckpointError(f"checkpoint '{path}' has no key starting with '{dotted}' (init prefix); its keys "
                              f"start with {_short(firsts)}")
    return chosen, sorted(k for k in sd if not k.startswith(dotted))


@dataclass
class KeyMapping:
    """How a checkpoint's keys meet a model's: the preview of ``graphres weights`` and the plan of a load."""
    file: Path
    layout: str
    sd: dict[str, torch.Tensor]       # the checkpoint's tensors under graphres' names
    ignored: list[str]                # left out on purpose: fc.*, non-backbone keys, other prefixes
    renamed: int                      # keys renamed from the layout's names
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    meta: dict

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def map_keys(own: dict[str, torch.Tensor], path: str | Path, prefix: str | None = None,
             layout: str | None = None) -> KeyMapping:
    """Read ``path`` and match its keys, renamed from their layout (detected unless given), to ``own``."""
    file = resolve_checkpoint(path)
    raw, meta = read_state_dict(file)
    ignored: list[str] = []
    if prefix:
        raw, ignored = select_prefix(raw, prefix, path)
    elif raw and all(k.startswith("module.") for k in raw):
        raw = {k[len("module."):]: v for k, v in raw.items()}
    found = layout or detect_layout(list(raw))
    if found == "timm" and "conv1.0.weight" in own:
        # the model is itself written with timm's deep-stem names (specs/resnest50d.yaml): none to rename
        left_out, renamed = [], 0
    else:
        raw, left_out, renamed = to_graphres(raw, found)
    sd, skipped = normalise_keys(raw, keep_head="fc.weight" in own)
    ignored = skipped + sorted(set(ignored + left_out) - set(skipped))
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # absent from old checkpoints
    missing = sorted(k for k in own if k not in sd and k not in optional)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(sd) if k in own and sd[k].shape != own[k].shape]
    return KeyMapping(file, found, sd, ignored, renamed, missing, unexpected, mismatched, meta)


def load_checkpoint(model: nn.Module, path: str | Path, style: str | None = None,
                    prefix: str | None = None) -> LoadReport:
    """Load ``path`` into ``model``; raise :class:`CheckpointError` naming every mismatch.

    ``path`` may be a model-zoo name (``torchvision://resnet50``, ``open-mmlab://...``) read from
    torch.hub's cache; ``prefix`` loads only the keys under it (``backbone.`` of a detector).
    ``style`` is the model's bottleneck style: style does not change any key, so a caffe-style
    checkpoint loads silently into a pytorch-style model with wrong numerics. Where the checkpoint's
    metadata records its style and it differs, a :class:`CheckpointWarning` says so."""
    sd, report = checked_state_dict(model.state_dict(), path, style, prefix, stacklevel=4)
    with torch.no_grad():
        model.load_state_dict(sd, strict=False)
    return report


def checked_state_dict(own: dict[str, torch.Tensor], path: str | Path, style: str | None = None,
                       prefix: str | None = None, stacklevel: int = 3) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors of ``path`` under the keys of ``own`` (a model's state dict; meta tensors do, only
    names, shapes and dtypes are read), every rule of :func:`load_checkpoint` checked, and the report;
    ``graphres.build`` puts them in place of the initialisation (backends/materialise.py)."""
    plan = map_keys(own, path, prefix)
    sd, ignored, meta = plan.sd, plan.ignored, plan.meta
    missing, unexpected, mismatched = plan.missing, plan.unexpected, plan.mismatched
    path = plan.file if str(plan.file) != str(path) else path
    if missing or unexpected or mismatched:
        lines = [f"checkpoint '{path}' does not match the model:"]
        if missing:
            lines.append(f"  missing in checkpoint ({len(missing)}): {_short(missing)}")
        if unexpected:
            lines.append(f"  unexpected in checkpoint ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatch ({len(mismatched)}): {_short(mismatched)}")
        if any(k.startswith("stem.") for k in missing) and any(k in unexpected for k in ("conv1.weight",)):
            lines.append("  hint: the spec has a deep stem (ResNetV1c/V1d) but the checkpoint a 7x7 stem")
        elif any(k.startswith("stem.") for k in unexpected) and "conv1.weight" in missing:
            lines.append("  hint: the checkpoint has a deep stem (ResNetV1c/V1d) but the spec a 7x7 stem")
        raise CheckpointError("\n".join(lines))
    problems, notes = check_values(sd, own)
    if problems:
        raise CheckpointError(f"checkpoint '{path}' cannot be loaded:\n" + "\n".join(f"  {p}" for p in problems))
    report = LoadReport(loaded=len(sd), ignored=ignored, layout=plan.layout)
    for note in notes:
        message = f"checkpoint '{path}': {note}"
        report.warnings.append(message)
        warnings.warn(message, CheckpointWarning, stacklevel=stacklevel)
    recorded = checkpoint_style(meta)
    if style and recorded and recorded != style:
        message = (f"checkpoint '{path}' was trained with style '{recorded}' but the spec uses style '{style}': "
                   f"the keys match, the numerics will not (set style: {recorded} in block_args)")
        report.warnings.append(message)
        warnings.warn(message, CheckpointWarning, stacklevel=stacklevel)
    return sd, report


# -- graphres weights: preview and conversion ---------------------------------------------------

def model_keys(graph) -> dict[str, torch.Tensor]:
    """The state dict a compiled graph's module has, on the meta device (shapes only, no memory)."""
    from .torch_module import build_module
    with torch.device("meta"):
        return build_module(graph, init=False).state_dict()


def _fits(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    names = {k for k in own if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    mine = {k for k in sd if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    return names == mine and all(sd[k].shape == own[k].shape for k in names)


def preview(graph, path: str | Path, prefix: str | None = None,
            candidates=None) -> dict:
    """What ``graphres weights`` prints: the layout, the keys mapped, missing, unexpected and
    mismatched, and, when it does not fit, the candidate specs it would fit (``candidates()`` returns
    name -> compiled graph; called only then)."""
    plan = map_keys(model_keys(graph), path, prefix)
    fits_instead = []
    if not plan.fits and candidates is not None:
        fits_instead = [name for name, g in candidates().items() if _fits(plan.sd, model_keys(g))]
    return {"file": str(plan.file), "layout": plan.layout, "mapped": len(plan.sd) - len(plan.unexpected),
            "renamed": plan.renamed, "ignored": plan.ignored, "missing": plan.missing,
            "unexpected": plan.unexpected, "mismatched": plan.mismatched, "fits": plan.fits,
            "fits_instead": fits_instead, "plan": plan}


def convert(plan: KeyMapping, layout: str, has_deep_stem: bool) -> dict:
    """The mapped state dict written in ``layout``, as that project saves it."""
    from .layouts import from_graphres
    if layout == "torchvision" and has_deep_stem:
        raise CheckpointError("torchvision's ResNets have a 7x7 stem, and this spec a deep one: convert to timm "
                              "or mmdet instead")
    sd = {k: v for k, v in plan.sd.items()}
    if layout == "mmdet":
        return {"state_dict": sd, "meta": {"converted_by": "graphres weights"}}
    if layout == "detectron2":
        return {"model": from_graphres(sd, "detectron2")}
    return from_graphres(sd, layout)
