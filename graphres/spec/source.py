"""Parse stage, part 1: YAML text -> plain data plus the span of every value.

Only PyYAML's composer is used (safe: it builds nodes, never objects); scalars are then resolved
with the safe constructor, and any tag outside YAML's core schema is refused. The result is a
:class:`Located` document: plain dicts/lists/scalars, and two maps from a value's path
(a tuple of keys and indices) to the span of the value and of its key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Mapping

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
_SCALAR_TAGS = _CORE_TAGS - {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
_INT_TAG = "tag:yaml.org,2002:int"
_INT_LIMIT = 2 ** 63  # no spec value is near this; it keeps Python's 4,300-digit int limit out of reach
_INT_TEXT = 100  # characters of an integer's text read at most (YAML 1.1 sexagesimal ints multiply up)


def _env_int(name: str, default: int) -> int:
    """A limit from the environment (docs/limits.md), or its default when unset or not a positive integer."""
    text = os.environ.get(name, "").strip().replace("_", "")
    return int(text) if text.isdigit() and 0 < len(text) < 20 and int(text) > 0 else default


@dataclass(frozen=True)
class Limits:
    """How large a spec file may be; checked while reading, so a hostile file stops early."""

    bytes: int = 1 << 20  # one file or --set value, in UTF-8
    nodes: int = 50_000  # YAML values in one document, aliases counted once per use
    depth: int = 32  # nesting of lists and mappings

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(_env_int("GRAPHRES_MAX_SPEC_BYTES", cls.bytes), _env_int("GRAPHRES_MAX_SPEC_NODES", cls.nodes),
                   _env_int("GRAPHRES_MAX_SPEC_DEPTH", cls.depth))


class _TooLarge(Exception):
    """Raised from deep inside composition; becomes one E062 at ``mark``."""

    def __init__(self, message: str, mark: Any, hint: str):
        super().__init__(message)
        self.message, self.mark, self.hint = message, mark, hint


def _limit_hint(env: str, value: int) -> str:
    return f"a spec is never this large; if yours really is, raise the limit with {env} (now {value:,})"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer with the depth and node count checked at every node, as it builds it."""

    def __init__(self, stream: str, limits: Limits):
        super().__init__(stream)
        self.limits = limits
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent, index):
        self.nodes += 1
        if self.nodes > self.limits.nodes:
            raise _TooLarge(f"the document is too large: more than {self.limits.nodes:,} values", self.peek_event().start_mark,
                            _limit_hint("GRAPHRES_MAX_SPEC_NODES", self.limits.nodes))
        if self.depth >= self.limits.depth:
            raise _TooLarge(f"the document is too deeply nested: more than {self.limits.depth} levels",
                            self.peek_event().start_mark, _limit_hint("GRAPHRES_MAX_SPEC_DEPTH", self.limits.depth))
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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


def _span(node: yaml.Node, name: str, text: str | None = None) -> Span:
    start, end = node.start_mark, node.end_mark
    length = end.column - start.column if end.line == start.line else 1
    col = start.column + 1
    buf = start.buffer if start.buffer is not None else text  # libyaml's marks carry no buffer
    if (isinstance(node, yaml.ScalarNode) and node.style in ("'", '"') and length >= 2 and buf is not None
            and buf[start.index if start.pointer is None else start.pointer] == node.style):
        col, length = col + 1, length - 2  # point at the text inside the quotes
    return Span(name, start.line + 1, col, max(1, length))


_TAG_NAMES = {"tag:yaml.org,2002:" + k: "!!" + k for k in ("str", "int", "float", "bool", "null", "seq", "map")}


class _Builder:
    def __init__(self, name: str, limits: Limits, text: str | None = None):
        self.name = name
        self.text = text
        self.limits = limits
        self.loader = yaml.SafeLoader("")
        self.diags: list[Diagnostic] = []
        self.doc = Located(None)
        self.count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        # Aliases make a DAG of the composed nodes; walking it expands them, so count and depth
        # are checked again here, against what the document expands to.
        self.count += 1
        if self.count > self.limits.nodes:
            raise _TooLarge(f"the document is too large: it expands to more than {self.limits.nodes:,} values (through aliases)",
                            node.start_mark, _limit_hint("GRAPHRES_MAX_SPEC_NODES", self.limits.nodes))
        if len(path) > self.limits.depth:
            raise _TooLarge(f"the document is too deeply nested: more than {self.limits.depth} levels (through aliases)",
                            node.start_mark, _limit_hint("GRAPHRES_MAX_SPEC_DEPTH", self.limits.depth))
        self.doc.spans[path] = _span(node, self.name, self.text)
        if node.tag not in _CORE_TAGS:
            self.diags.append(Diagnostic(
                "E003", f"YAML tag '{node.tag}' is not allowed in a spec", _span(node, self.name, self.text),
                "specs are plain data: use only maps, lists, strings, numbers, booleans and null"))
            return None
        if not self.fits_tag(node):
            return None
        if isinstance(node, yaml.MappingNode):
            own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            try:
                self.loader.flatten_mapping(node)  # resolves '<<' merge keys, placing them first
            except yaml.constructor.ConstructorError as e:
                self.diags.append(Diagnostic("E001", str(e.problem), _span(node, self.name, self.text)))
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
                        "E002", f"duplicate key '{key}'", _span(key_node, self.name, self.text),
                        f"'{key}' is already set at line {first.line}" if first else None))
                    continue
                self.doc.key_spans[path + (key,)] = _span(key_node, self.name, self.text)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def fits_tag(self, node: yaml.Node) -> bool:
        """A core tag on the wrong kind of node (``!!map BN``, ``!!int [1]``) is E060."""
        kind = ("tag:yaml.org,2002:map" if isinstance(node, yaml.MappingNode) else
                "tag:yaml.org,2002:seq" if isinstance(node, yaml.SequenceNode) else None)
        if kind == node.tag or (kind is None and node.tag in _SCALAR_TAGS):
            return True
        found = "a mapping" if isinstance(node, yaml.MappingNode) else "a list" if kind else "a single value"
        expected = {"tag:yaml.org,2002:map": "a mapping", "tag:yaml.org,2002:seq": "a list"}.get(node.tag,
                                                                                                 "a single value")
        self.diags.append(Diagnostic("E060", f"YAML tag '{_TAG_NAMES[node.tag]}' needs {expected}, found {found}",
                                     _span(node, self.name, self.text), "remove the tag: graphres reads plain values untagged"))
        return False

    def scalar(self, node: yaml.ScalarNode) -> Any:
        """Construct a scalar; a tag that its text does not fit (``!!int abc``) is E060, a huge integer E061."""
        tag = _TAG_NAMES.get(node.tag, node.tag)
        if node.tag == _INT_TAG and len(node.value) > _INT_TEXT:
            self.diags.append(Diagnostic("E061", f"integer with {len(node.value):,} characters is too large",
                                         _span(node, self.name, self.text), f"integers in a spec are below 2**63"))
            return None
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError):
            text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            self.diags.append(Diagnostic("E060", f"{text!r} is not a valid {tag} value", _span(node, self.name, self.text),
                                         "remove the tag, or write a value of that kind"))
            return None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
            self.diags.append(Diagnostic("E061", f"integer {_short_int(value)} is too large", _span(node, self.name, self.text),
                                         "integers in a spec are below 2**63"))
            return None
        return value

    def build_scalar_key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            self.diags.append(Diagnostic("E011", "mapping keys must be plain strings or numbers",
                                         _span(node, self.name, self.text)))
            return None
        return self.scalar(node)


def _short_int(value: int) -> str:
    if value.bit_length() > 14_000:  # str() refuses more than 4,300 digits
        return f"of about {int(value.bit_length() * 0.30103):,} digits"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def parse_yaml(text: str, name: str, sources: SourceCache | None = None, limits: Limits | None = None,
               trusted: bool = False) -> Located:
    """Parse one YAML document into a :class:`Located`; raise :class:`SpecError` on bad YAML.

    ``limits`` (default: :meth:`Limits.from_env`) bound the text's size, the number of values and
    their nesting; they are checked while the document is read, so a hostile one stops early.

    ``trusted``: graphres' own ASCII files (the built-in blocks), composed by libyaml's C composer
    where PyYAML has it (25x faster; it checks no bound while composing, so never for user input).
    The result is the same, spans included."""
    if trusted and getattr(yaml, "CSafeLoader", None) is not None and text.isascii():
        loader = yaml.CSafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
        builder = _Builder(name, limits or Limits(), text)
        builder.doc.data = builder.build(node, ()) if node is not None else {}
        if builder.diags:
            raise SpecError(builder.diags)
        return builder.doc
    limits = limits or Limits.from_env()
    if len(text) > limits.bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > limits.bytes:
        raise SpecError([_too_many_bytes(name, limits)], sources)
    if sources is not None:
        sources.add(name, text)
    loader = None
    try:
        loader = _BoundedLoader(text, limits)  # PyYAML's reader checks the characters here already
        node = loader.get_single_node()
    except _TooLarge as e:
        raise SpecError([_too_large(e, name)], sources)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        hint = None
        line_text = _line_at(text, mark.pointer) if mark else ""
        if "\t" in line_text[: (mark.column + 1 if mark else 0)] or "'\\t'" in problem:
            problem = "tab character used for indentation"
            hint = "YAML indents with spaces only: replace the tab with spaces"
        span = Span(name, mark.line + 1, mark.column + 1) if mark else Span(name)
        raise SpecError([Diagnostic("E001", f"invalid YAML: {problem}", span, hint)], sources)
    except yaml.YAMLError as e:  # composer errors without marks (e.g. several documents)
        raise SpecError([Diagnostic("E001", f"invalid YAML: {e}", Span(name, 1, 1))], sources)
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return Located({}, {(): Span(name, 1, 1)})
    builder = _Builder(name, limits)
    try:
        builder.doc.data = builder.build(node, ())
    except _TooLarge as e:
        raise SpecError([_too_large(e, name)], sources)
    if builder.diags:
        raise SpecError(builder.diags, sources)
    return builder.doc


def _too_many_bytes(name: str, limits: Limits) -> Diagnostic:
    return Diagnostic("E062", f"'{name}' is larger than {limits.bytes:,} bytes", Span(name),
                      _limit_hint("GRAPHRES_MAX_SPEC_BYTES", limits.bytes))


def _line_at(text: str, pointer: int) -> str:
    start = text.rfind("\n", 0, pointer) + 1
    end = text.find("\n", pointer)
    return text[start:end if end >= 0 else len(text)]


def _too_large(e: _TooLarge, name: str) -> Diagnostic:
    mark = e.mark
    span = Span(name, mark.line + 1, mark.column + 1) if mark is not None else Span(name, 1, 1)
    return Diagnostic("E062", e.message, span, e.hint)


def plain_data(data: Any, name: str, limits: Limits | None = None) -> tuple[Any, list[Diagnostic]]:
    """A spec given as Python data, as the plain dicts and lists a YAML document gives, with the limits
    of a YAML document checked: nesting, number of values (a shared or self-containing container
    counted at every use) and integer size.

    Configs loaded by ``mmengine.Config.fromfile`` hold ConfigDicts and tuples
    (``out_indices=(0, 1, 2, 3)``): any Mapping becomes a dict, an object with ``.to_dict()`` the
    dict that gives, and a tuple a list. Walked without recursion, so a self-containing list is an
    error, not a RecursionError."""
    limits = limits or Limits.from_env()
    root: list[Any] = [None]
    stack: list[tuple[Any, tuple, Any, Any]] = [(data, (), root, 0)]  # (value, path, parent, key in parent)
    count = 0
    while stack:
        value, path, parent, slot = stack.pop()
        count += 1
        where = ".".join(map(str, path)) or "the top level"
        if count > limits.nodes:
            return None, [Diagnostic("E062", f"the mapping is too large: more than {limits.nodes:,} values",
                                     Span(name), _limit_hint("GRAPHRES_MAX_SPEC_NODES", limits.nodes))]
        if len(path) > limits.depth:
            return None, [Diagnostic("E062", f"the mapping is too deeply nested: more than {limits.depth} levels "
                                             f"(at {where[:80]})", Span(name),
                                     _limit_hint("GRAPHRES_MAX_SPEC_DEPTH", limits.depth))]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
            return None, [Diagnostic("E061", f"integer {_short_int(value)} at {where[:80]} is too large",
                                     Span(name), "integers in a spec are below 2**63")]
        if not isinstance(value, Mapping) and callable(getattr(type(value), "to_dict", None)):
            try:
                value = value.to_dict()
            except Exception as e:  # the caller's object: its failure is a located error, not a traceback
                return None, [Diagnostic("E011", f"{where[:80]}: {type(value).__name__}.to_dict() failed: "
                                                 f"{type(e).__name__}", Span(name),
                                         "pass plain dicts and lists, or a Mapping")]
            if not isinstance(value, Mapping):
                return None, [Diagnostic("E011", f"{where[:80]}: to_dict() gave {type(value).__name__}, "
                                                 f"not a mapping", Span(name), "pass plain dicts and lists")]
        if isinstance(value, Mapping):
            out: Any = {}
            stack.extend((v, path + (k,), out, k) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            out = [None] * len(value)
            stack.extend((v, path + (i,), out, i) for i, v in reversed(list(enumerate(value))))
        else:
            out = value
        parent[slot] = out
    return root[0], []


def read_yaml(path: str | FsPath, sources: SourceCache | None = None, display: str | None = None,
              limits: Limits | None = None) -> Located:
    """Read and parse a spec file; a missing, unreadable or oversized file is a located error too."""
    name = display or str(path)
    limits = limits or Limits.from_env()
    text = read_text(path, name, sources, limits)
    return parse_yaml(text, name, sources, limits)


def read_text(path: str | FsPath, name: str, sources: SourceCache | None, limits: Limits) -> str:
    """A file's text, reading no more than the byte limit allows (a 40 MB file is refused unread)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.bytes + 1)
        if len(data) > limits.bytes:
            raise SpecError([_too_many_bytes(name, limits)], sources)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SpecError([Diagnostic("E004", f"cannot read '{name}': {reason}", Span(name))], sources)
    return text.replace("\r\n", "\n")
