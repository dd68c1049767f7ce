"""Parse stage, part 0: spec names -> files. The specs shipped in the package (``graphres/specs/*.yaml``)
can be named as timm names its models: ``resnet50``, ``resnext50_32x4d``.

A name is a bare word (no folder, no ``.yaml``). It is looked up in this order, so that a local
file always wins over a shipped name: the file of that exact name, then ``NAME.yaml``, both in the
folder the name is relative to (the working folder for a spec given on the command line or to
``graphres.build``, the spec's own folder for a ``_base_``), then the shipped ``NAME.yaml``.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..diagnostics import did_you_mean

SUFFIX = ".yaml"
SHIPPED_DISPLAY = "graphres/specs"  # how a shipped spec's file is named in messages
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def shipped_dir() -> Path:
    """The folder of the shipped specs, inside the installed package."""
    return Path(str(resources.files("graphres") / "specs"))


def shipped_names() -> list[str]:
    """The names of the shipped specs, sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in shipped_dir().glob("*" + SUFFIX) if p.is_file())


def is_name(text: str) -> bool:
    """Whether ``text`` can name a shipped spec: a bare word such as ``resnet50``."""
    return _NAME.fullmatch(text) is not None


def shipped_path(name: str) -> Path | None:
    """The shipped spec called ``name``, or None."""
    if not is_name(name):
        return None
    path = shipped_dir() / (name + SUFFIX)
    return path if path.is_file() else None


def resolve_name(text: str, folder: Path, display_folder: str = "") -> tuple[Path, str] | None:
    """The file a spec name stands for, and how to call it in messages; None when ``text`` is no
    name, or a name with no file behind it (the caller reports that). A path (``specs/x.yaml``,
    ``x.yaml``) is never a name, and an existing file of that name is always itself."""
    if not is_name(text) or (folder / text).exists():
        return None
    local = folder / (text + SUFFIX)
    if local.is_file():
        return local, str(Path(display_folder) / (text + SUFFIX)) if display_folder else text + SUFFIX
    shipped = shipped_path(text)
    if shipped is not None:
        return shipped, f"{SHIPPED_DISPLAY}/{text}{SUFFIX}"
    return None


def unknown_name_hint(text: str) -> str:
    """What to say of a name (or path) that is neither a file nor a shipped spec."""
    stem = Path(text).name
    stem = stem[: -len(SUFFIX)] if stem.endswith(SUFFIX) else stem
    names = shipped_names()
    if stem in names and stem != text:  # resnet50.yaml in a folder that has no such file
        return f"the shipped spec is named without folder or {SUFFIX}: {stem}"
    close = did_you_mean(stem, names)
    listing = f"shipped specs: {', '.join(names)} (graphres list)"
    return f"{close} {listing}" if close else listing
