"""Parse stage, part 1: YAML text -> plain data plus the span of every value.

Only PyYAML's composer is used (safe: it builds nodes, never objects); scalars are then resolved
with the safe constructor, and any tag outside YAML's core schema is refused. The result is a
:class:`Located` document: plain dicts/lists/scalars, and two maps from a value's path
(a tuple of keys and indices) to the span of the value and of its key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from ..diagnostics import Diagnostic, SourceCache, Span, SpecError

Path = tuple  # a value's address: ("stages", 2, "stride")

_CORE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:map",
}
_MAX_NODES = 200_000  # a guard against alias bombs


@dataclass
class Located:
    """Plain data and where each piece of it came from."""

    data: Any
    spans: dict[Path, Span] = field(default_factory=dict)
    key_spans: dict[Path, Span] = field(default_factory=dict)

    def span(self, path: Path, fallback: Span | None = None) -> Span:
        """The span of the value at ``path``, or of its nearest located ancestor."""
        p = tuple(path)
        while True:
            if p in self.spans:
                return self.spans[p]
            if not p:
                return fallback or Span("<unknown>")
            p = p[:-1]

    def key_span(self, path: Path) -> Span:
        return self.key_spans.get(tuple(path)) or self.span(path)


def _span(node: yaml.Node, name: str) -> Span:
    start, end = node.start_mark, node.end_mark
    length = end.column - start.column if end.line == start.line else 1
    col = start.column + 1
    buf = start.buffer
    if (isinstance(node, yaml.ScalarNode) and node.style in ("'", '"') and length >= 2 and buf is not None
            and buf[start.pointer] == node.style):
        col, length = col + 1, length - 2  # point at the text inside the quotes
    return Span(name, start.line + 1, col, max(1, length))


class _Builder:
    def __init__(self, name: str):
        self.name = name
        self.loader = yaml.SafeLoader("")
        self.diags: list[Diagnostic] = []
        self.doc = Located(None)
        self.count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise RecursionError
        self.doc.spans[path] = _span(node, self.name)
        if node.tag not in _CORE_TAGS:
            self.diags.append(Diagnostic(
                "E003", f"YAML tag '{node.tag}' is not allowed in a spec", _span(node, self.name),
                "specs are plain data: use only maps, lists, strings, numbers, booleans and null"))
            return None
        if isinstance(node, yaml.MappingNode):
            own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            try:
                self.loader.flatten_mapping(node)  # resolves '<<' merge keys, placing them first
            except yaml.constructor.ConstructorError as e:
                self.diags.append(Diagnostic("E001", str(e.problem), _span(node, self.name)))
                return {}
            merged = len(node.value) - own
            out: dict = {}
            from_merge: set = set()
            for i, (key_node, value_node) in enumerate(node.value):
                key = self.build_scalar_key(key_node)
                if key is None:
                    continue
                if i < merged:
                    from_merge.add(key)
                elif key in from_merge:  # an explicit key overrides a merged one
                    from_merge.discard(key)
                    out.pop(key)
                if key in out:
                    first = self.doc.key_spans.get(path + (key,))
                    self.diags.append(Diagnostic(
                        "E002", f"duplicate key '{key}'", _span(key_node, self.name),
                        f"'{key}' is already set at line {first.line}" if first else None))
                    continue
                self.doc.key_spans[path + (key,)] = _span(key_node, self.name)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def build_scalar_key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _CORE_TAGS:
            self.diags.append(Diagnostic("E011", "mapping keys must be plain strings or numbers",
                                         _span(node, self.name)))
            return None
        return self.loader.construct_object(node)


def parse_yaml(text: str, name: str, sources: SourceCache | None = None) -> Located:
    """Parse one YAML document into a :class:`Located`; raise :class:`SpecError` on bad YAML."""
    if sources is not None:
        sources.add(name, text)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        hint = None
        line_text = text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else ""
        if "\t" in line_text[: (mark.column + 1 if mark else 0)] or "'\\t'" in problem:
            problem = "tab character used for indentation"
            hint = "YAML indents with spaces only: replace the tab with spaces"
        span = Span(name, mark.line + 1, mark.column + 1) if mark else Span(name)
        raise SpecError([Diagnostic("E001", f"invalid YAML: {problem}", span, hint)], sources)
    except yaml.YAMLError as e:  # composer errors without marks (e.g. several documents)
        raise SpecError([Diagnostic("E001", f"invalid YAML: {e}", Span(name, 1, 1))], sources)
    if node is None:
        return Located({}, {(): Span(name, 1, 1)})
    builder = _Builder(name)
    try:
        builder.doc.data = builder.build(node, ())
    except RecursionError:
        raise SpecError([Diagnostic("E001", "the document is too large or too deeply nested (alias expansion?)",
                                    Span(name, 1, 1))], sources)
    if builder.diags:
        raise SpecError(builder.diags, sources)
    return builder.doc


def read_yaml(path: str | FsPath, sources: SourceCache | None = None, display: str | None = None) -> Located:
    """Read and parse a spec file; a missing or unreadable file is a located error too."""
    name = display or str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SpecError([Diagnostic("E004", f"cannot read '{name}': {reason}", Span(name))], sources)
    return parse_yaml(text, name, sources)
