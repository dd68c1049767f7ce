"""Parse stage, entry point: file -> ``_base_`` inheritance -> ``--set`` overrides -> shorthand
expansion -> typed :class:`~graphres.spec.model.Spec`.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path as FsPath
from typing import Any, Mapping, Sequence

from ..diagnostics import Diagnostic, DiagnosticBag, SourceCache, Span, SpecError
from .model import Spec, parse_explicit
from .names import is_name, resolve_name, unknown_name_hint
from .reader import describe
from .shorthand import expand_shorthand, is_shorthand
from .source import Limits, Located, Path, parse_yaml, plain_data, read_text, read_yaml

MAX_BASE_DEPTH = 16


def load_document(path: str | FsPath, sources: SourceCache, _chain: tuple = (), display: str | None = None,
                  _base_span: Span | None = None, text: str | None = None) -> Located:
    """Read a file and merge its ``_base_`` files under it (deep merge; later bases win).

    Files are named in diagnostics as the user would write them: the top file as given, a base
    file by its path relative to the same place (``specs/base.yaml``), not as an absolute path.
    ``text``, when given, is the file's content (an editor's unsaved buffer): ``path`` then only
    names it and anchors its ``_base_`` paths.

    A base must be a spec: a YAML mapping with ``graphres:`` (or a ``_base_`` of its own); the text
    of a file that is not one is never quoted (``_base_: /etc/shadow`` names the file, nothing more)."""
    path = FsPath(path)
    display = display or str(path)
    if text is not None:
        doc = parse_yaml(text, display, sources)
    elif _base_span is None:
        doc = read_yaml(path, sources, display)
    else:
        doc = _read_base(path, display, sources, _base_span)
    if not isinstance(doc.data, dict) or "_base_" not in doc.data:
        doc.data = _strip_delete(doc.data)
        return doc
    bases = doc.data.pop("_base_")
    bspan = doc.span(("_base_",))
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise SpecError([Diagnostic("E005", f"_base_ must be a file name or a list of file names, "
                                            f"found {describe(bases)}", bspan)], sources)
    merged = Located({}, {(): doc.span(())})
    here = _resolve(path, path.name, bspan, sources)
    for i, base in enumerate(bases):
        span = doc.span(("_base_", i)) if ("_base_", i) in doc.spans else bspan
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), base))
        named = resolve_name(base, path.parent, os.path.dirname(display))  # _base_: resnet50
        if named is not None:
            base_path, base_display = _resolve(named[0], base, span, sources), named[1]
        else:
            base_path = _resolve(path.parent / base, base, span, sources)
        if base_path in _chain or base_path == here:
            raise SpecError([Diagnostic("E005", f"_base_ '{base}' includes itself (cycle: "
                                                f"{' -> '.join(p.name for p in _chain + (here, base_path))})",
                                        span)], sources)
        if len(_chain) >= MAX_BASE_DEPTH:
            raise SpecError([Diagnostic("E005", f"_base_ nesting deeper than {MAX_BASE_DEPTH} files", span)], sources)
        try:
            is_file, exists = base_path.is_file(), base_path.exists()
        except OSError as e:  # a name too long, a permission on the way
            raise SpecError([Diagnostic("E005", f"_base_ '{base}' cannot be read: {e.strerror or e}", span)],
                            sources) from None
        if not is_file:
            message = (f"_base_ '{base}' is not a regular file" if exists else
                       f"_base_ file '{base}' not found (paths are relative to {path.name})")
            hint = unknown_name_hint(base) if not base_path.exists() and is_name(base) else None
            raise SpecError([Diagnostic("E005", message, span, hint)], sources)
        merge_into(merged, load_document(base_path, sources, _chain + (here,), base_display, span))
    for key in [k for k in doc.spans if k[:1] == ("_base_",)]:
        doc.spans.pop(key, None)
    doc.key_spans.pop(("_base_",), None)
    merge_into(merged, doc)
    return merged


def _resolve(path: FsPath, name: str, span: Span, sources: SourceCache) -> FsPath:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop: RuntimeError before Python 3.13, OSError after
        raise SpecError([Diagnostic("E005", f"_base_ '{name}' cannot be resolved: "
                                            f"{'symbolic link loop' if isinstance(e, RuntimeError) else e.strerror}",
                                    span)], sources) from None


_SPEC_LINE = re.compile(r"^(graphres|_base_)\s*:", re.M)


def _read_base(path: FsPath, display: str, sources: SourceCache, span: Span) -> Located:
    """A base file, refused without quoting it unless it is a spec."""
    private = SourceCache()
    not_spec = (f"_base_ '{display}' is not a graphres spec", span,
                "a base must be a YAML mapping with 'graphres: 1' (or a _base_ of its own)")
    try:
        text = read_text(path, display, private, Limits.from_env())
    except SpecError as e:
        raise SpecError([Diagnostic("E005", f"_base_ '{display}' cannot be read: "
                                            f"{e.diagnostics[0].message.split(': ', 1)[-1]}", span)], sources) from None
    looks_like_spec = _SPEC_LINE.search(text) is not None
    try:
        doc = parse_yaml(text, display, private)
    except SpecError as e:
        if looks_like_spec:  # a spec with a mistake: located in it, as any spec
            sources.add(display, text)
            raise SpecError(e.diagnostics, sources) from None
        raise SpecError([Diagnostic("E005", *not_spec)], sources) from None
    if not (isinstance(doc.data, dict) and ("graphres" in doc.data or "_base_" in doc.data)):
        raise SpecError([Diagnostic("E005", *not_spec)], sources)
    sources.add(display, text)
    return doc


def merge_into(dst: Located, src: Located, at: Path = ()) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge key by key, anything else replaces.

    A mapping with ``_delete_: true`` replaces instead of merging (OpenMMLab's convention).
    """
    replaced: set = set()  # subtrees of dst that src replaces: their spans go, in one pass below

    def walk(d: Any, s: Any, path: Path) -> Any:
        if isinstance(d, dict) and isinstance(s, dict) and not s.get("_delete_", False):
            for key, value in s.items():
                if key == "_delete_":
                    continue
                d[key] = walk(d.get(key), value, path + (key,)) if key in d else _take(value, path + (key,))
            return d
        replaced.add(path)
        return _take(s, path)

    def _take(value: Any, path: Path) -> Any:
        return _strip_delete(copy.deepcopy(value))

    def stale(p: Path) -> bool:  # strictly inside a replaced subtree
        return any(p[:i] in replaced for i in range(len(at), len(p)))

    dst.data = walk(dst.data, src.data, at)
    if replaced:  # linear in the spans (times the depth), not spans x replacements
        for spans in (dst.spans, dst.key_spans):
            for p in [p for p in spans if stale(p)]:
                del spans[p]
    for p, s in src.spans.items():
        if "_delete_" not in p:
            dst.spans[at + p] = s
    for p, s in src.key_spans.items():
        if "_delete_" not in p:
            dst.key_spans[at + p] = s


def _strip_delete(value: Any) -> Any:
    """Drop ``_delete_`` markers that had nothing to replace (no base, or a subtree the base lacks)."""
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


def apply_overrides(doc: Located, overrides: Sequence[str], sources: SourceCache) -> None:
    """Apply ``--set a.b.0.c=VALUE`` overrides; VALUE is read as YAML (safely)."""
    diags = []
    for text in overrides:
        origin = f"--set {text}"
        span = Span(origin, 0, 0, 1, "set on the command line")
        if "=" not in text:
            diags.append(Diagnostic("E006", f"override '{text}' must look like key.path=value", span,
                                    "for example --set stages.3.dilation=2"))
            continue
        key, raw = text.split("=", 1)
        parts: list[Any] = [p for p in key.strip().split(".")]
        if not key.strip() or any(not p for p in parts):
            diags.append(Diagnostic("E006", f"override key '{key}' is empty or has an empty part", span))
            continue
        try:
            value_doc = parse_yaml(raw if raw.strip() else "''", origin)
        except SpecError as e:
            diags.extend(e.diagnostics)
            continue
        node = doc.data
        path: Path = ()
        ok = True
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    diags.append(Diagnostic("E006", f"'{'.'.join(parts[:depth + 1])}' does not index the "
                                                    f"{len(node)}-item list at '{'.'.join(parts[:depth]) or '<root>'}'",
                                            span))
                    ok = False
                    break
                part = int(part) % len(node)
            elif isinstance(node, dict):
                if not last and part not in node:
                    node[part] = {}
                    doc.spans[path + (part,)] = span  # a mapping the override creates
            else:
                diags.append(Diagnostic("E006", f"'{'.'.join(parts[:depth])}' is {describe(node)}, "
                                                f"so '{part}' cannot be set inside it", span))
                ok = False
                break
            path += (part,)
            if last:
                node[part] = value_doc.data
            else:
                node = node[part]
        if ok:
            for p in [p for p in doc.spans if p[: len(path)] == path]:
                del doc.spans[p]
            vspan = Span(origin, 0, 0, 1, "set on the command line")
            doc.spans[path] = vspan
            doc.key_spans[path] = vspan
            for p in value_doc.spans:
                doc.spans[path + p] = vspan
    if diags:
        raise SpecError(diags, sources)


def load_spec(source: str | FsPath | Mapping[str, Any], overrides: Sequence[str] = (), *,
              text: str | None = None) -> Spec:
    """Read a spec (a path, or an already parsed mapping) into a checked :class:`Spec`.

    With ``text``, the spec is that text and ``source`` its file name (for messages and for
    resolving ``_base_``), as for a file being edited. Raises :class:`SpecError` with every
    diagnostic found.
    """
    sources = SourceCache()
    if isinstance(source, Mapping) or callable(getattr(type(source), "to_dict", None)):
        file = "<dict>"
        data, problems = plain_data(source, file)
        if problems:
            raise SpecError(problems, sources)
        doc = Located(data, {(): Span(file)})
    else:
        source, file = resolve_spec(source) if text is None else (source, str(source))
        doc = load_document(source, sources, text=text, display=file)
    apply_overrides(doc, overrides, sources)
    spec, diags = parse_document(doc, sources, file)
    diags.raise_if_errors(sources)
    assert spec is not None
    spec.warnings = [d for d in diags if not d.is_error]
    return spec


def resolve_spec(source: str | FsPath) -> tuple[FsPath, str]:
    """The file a spec argument stands for, and its name in messages: a path as given, or the
    file of a spec name (``resnet50``: a local ``resnet50`` or ``resnet50.yaml`` first, then the
    shipped spec). A name with no file behind it is E100, with the shipped names."""
    text = str(source)
    named = resolve_name(text, FsPath("."))
    if named is not None:
        return named
    if is_name(text) and not FsPath(text).exists():
        raise SpecError([Diagnostic("E100", f"'{text}' is neither a file nor a shipped spec", Span(text),
                                    unknown_name_hint(text))])
    return FsPath(source), text


def parse_document(doc: Located, sources: SourceCache, file: str) -> tuple[Spec | None, DiagnosticBag]:
    diags = DiagnosticBag()
    if is_shorthand(doc):
        doc = expand_shorthand(doc, diags)
        if "stages" not in doc.data:  # nothing to check further
            return None, diags
    spec = parse_explicit(doc, diags, sources, file)
    return spec, diags

