"""Parse stage, part 3: typed, located reading of plain data (shared by every spec schema).

A :class:`Reader` walks a :class:`Located` document and turns type, range and key mistakes into
diagnostics pointing at the offending value, collecting all of them instead of stopping at the
first.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from ..diagnostics import DiagnosticBag, Span, did_you_mean, one_of
from .source import Located, Path

MISSING = object()

_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string",
               list: "a list", dict: "a mapping", type(None): "null"}


def describe(value: Any) -> str:
    """How a found value reads in a message: ``'abc' (a string)``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{value!r} ({_KIND_NAMES.get(type(value), type(value).__name__)})"


def kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def is_kind(value: Any, kind: type | tuple) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if k is bool and isinstance(value, bool):
            return True
        if k not in (int, float, bool) and isinstance(value, k):
            return True
    return False


class Reader:
    def __init__(self, doc: Located, diags: DiagnosticBag):
        self.doc = doc
        self.diags = diags

    def span(self, path: Path) -> Span:
        return self.doc.span(path)

    def get(self, path: Path, default: Any = MISSING) -> Any:
        node = self.doc.data
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                node = node[key]
            else:
                return default
        return node

    def has(self, path: Path) -> bool:
        return self.get(path) is not MISSING

    def mapping(self, path: Path, known: Iterable[str], what: str, required: Iterable[str] = ()) -> dict | None:
        """Check that ``path`` holds a mapping with only ``known`` keys and all ``required`` ones."""
        value = self.get(path)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.diags.add("E011", f"{what} must be a mapping, found {describe(value)}", self.span(path))
            return None
        known = list(known)
        for key in value:
            if key not in known:
                self.diags.add("E010", f"unknown key '{key}' in {what}", self.doc.key_span(path + (key,)),
                               did_you_mean(key, known) or f"known keys: {', '.join(known)}")
        for key in required:
            if key not in value:
                self.diags.add("E012", f"{what} needs the key '{key}'", self.span(path))
        return value

    def value(self, path: Path, kind: type | tuple, default: Any = MISSING, *, what: str | None = None,
              min: int | float | None = None, max: int | float | None = None,
              choices: Iterable[Any] | None = None, hint: str | None = None) -> Any:
        """Read a scalar; on any mistake record a diagnostic and return ``default``."""
        value = self.get(path)
        label = what or ".".join(str(p) for p in path)
        if value is MISSING:
            if default is MISSING:
                self.diags.add("E012", f"missing required key '{label}'", self.span(path[:-1]))
                return None
            return default
        return self.check(value, path, kind, default if default is not MISSING else None, label=label,
                          min=min, max=max, choices=choices, hint=hint)

    def check(self, value: Any, path: Path, kind: type | tuple, fallback: Any = None, *, label: str,
              min: Any = None, max: Any = None, choices: Iterable[Any] | None = None,
              hint: str | None = None) -> Any:
        span = self.span(path)
        if not is_kind(value, kind):
            self.diags.add("E011", f"{label} must be {kind_name(kind)}, found {describe(value)}", span, hint)
            return fallback
        if isinstance(value, float) and not math.isfinite(value):
            self.diags.add("E014", f"{label} = {value!r} must be a finite number", span, hint)
            return fallback
        if choices is not None:
            choices = list(choices)
            if value not in choices:
                self.diags.add("E013", f"{label} = {value!r} is not one of {one_of(choices)}", span,
                               did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else hint)
                return fallback
        if min is not None and value is not None and value < min:
            self.diags.add("E014", f"{label} = {value!r} must be >= {min}", span, hint)
            return fallback
        if max is not None and value is not None and value > max:
            self.diags.add("E014", f"{label} = {value!r} must be <= {max}", span, hint)
            return fallback
        return value

    def int_list(self, path: Path, default: Any = MISSING, *, what: str, min: int | None = None,
                 allow_scalar: bool = False) -> list[int] | None:
        value = self.get(path)
        if value is MISSING:
            if default is MISSING:
                self.diags.add("E012", f"missing required key '{what}'", self.span(path[:-1]))
                return None
            return default
        if allow_scalar and is_kind(value, int):
            return [self.check(value, path, int, value, label=what, min=min)]
        if not isinstance(value, list):
            self.diags.add("E011", f"{what} must be a list of integers, found {describe(value)}", self.span(path))
            return None
        out = []
        ok = True
        for i, item in enumerate(value):
            checked = self.check(item, path + (i,), int, None, label=f"{what}[{i}]", min=min)
            ok &= checked is not None
            out.append(checked)
        return out if ok else None
