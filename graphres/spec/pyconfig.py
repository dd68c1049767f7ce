"""Parse stage, for ``graphres import``: an OpenMMLab (mmengine) Python config -> a shorthand spec
document, read with Python's ``ast`` and never executed.

What is understood is what an old-style mmdetection/mmsegmentation config is made of: literal
``dict(...)``, ``{...}``, lists, tuples, numbers, strings, ``True``/``False``/``None``, names bound
earlier in the same file, ``{{_base_.x}}`` references and ``_base_.x`` / ``_base_['x']`` reads.
The ``_base_`` chain is followed with mmengine's rules: each file is read on its own, bases must
not share top-level keys, the file is merged over its bases (dicts key by key, ``_delete_=True``
replaces, anything else, lists included, replaces whole; a dict cannot merge into a non-dict).

Nothing else is evaluated. A statement that binds nothing (an import, a bare call such as
``os.system(...)``) is skipped with a located warning (W030); a value that is not a literal (a call,
an f-string, a comprehension, an import) becomes an :class:`Unknown` that is an error (E081, E083)
only if the backbone uses it. New-style configs (``with read_base():``) are refused (E085).
"""
from __future__ import annotations

import ast
import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from ..diagnostics import Diagnostic, SourceCache, Span, SpecError
from .load import merge_into
from ..zoo import zoo_url
from .shorthand import COMMON_KEYS, MMSEG_KEYS
from .source import Located, Path

MAX_BASE_DEPTH = 16
# syntax-tree levels a config may nest (OpenMMLab's deepest configs use about 20); checked before
# anything walks the tree, so the result never depends on the interpreter's recursion limit (which
# torch.compile raises)
MAX_SYNTAX_DEPTH = 100
MAX_BYTES = 1 << 20
MAX_VALUES = 1 << 18  # names that refer to names can double a value per line: a guard, as YAML's alias limit
# init_cfg / pretrained checkpoints that name a model zoo rather than a file: left out of the spec
ZOO_PREFIXES = ("torchvision://", "open-mmlab://", "openmmlab://", "mmcls://", "mmpretrain://", "modelzoo://",
                "http://", "https://")
_BASE_IN_STRING = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")
_LITERALS = "dict(...), {...}, lists, tuples, numbers, strings, True/False/None"


@dataclass
class Unknown:
    """A value graphres did not compute; an error only where the backbone uses it."""

    code: str  # E081 (not a literal) or E083 (a name or reference that does not resolve)
    construct: str  # "a function call", "name 'x' is not bound earlier in a.py"
    snippet: str
    span: Span
    hint: str | None = None
    exported: bool = True  # False for modules and functions, which mmengine leaves out of the config

    def __deepcopy__(self, memo):
        return self


@dataclass
class ImportedConfig:
    """The spec document made from a config, with what was left out and why."""

    doc: Located  # {graphres: 1, name, [default_scope], backbone: {...}}, spans in the config files
    sources: SourceCache
    files: list[str]  # the config chain, the top file first
    warnings: list[Diagnostic] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # comments for keys left out


def _span(node: ast.AST, file: str) -> Span:
    line = getattr(node, "lineno", 0)
    col = getattr(node, "col_offset", -1) + 1
    end_line = getattr(node, "end_lineno", line)
    length = (node.end_col_offset - node.col_offset) if end_line == line and node.end_col_offset else 1
    return Span(file, line, col, max(1, length))


def _snippet(node: ast.AST, limit: int = 48) -> str:
    text = re.sub(r"\s*\n\s*", " ", ast.unparse(node))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_CONSTRUCTS = {
    ast.Call: "a function call", ast.JoinedStr: "an f-string", ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension", ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression", ast.Lambda: "a lambda", ast.BinOp: "an arithmetic expression",
    ast.BoolOp: "a boolean expression", ast.Compare: "a comparison", ast.IfExp: "a conditional expression",
    ast.Set: "a set", ast.Starred: "a starred expression", ast.NamedExpr: "an assignment expression",
    ast.Await: "an await expression", ast.Yield: "a yield expression", ast.Attribute: "an attribute access",
    ast.Subscript: "a subscript", ast.UnaryOp: "a unary operation",
}
_STATEMENTS = {
    ast.Import: "an import", ast.ImportFrom: "an import", ast.Expr: "an expression statement",
    ast.If: "an if statement", ast.For: "a for loop", ast.While: "a while loop", ast.With: "a with statement",
    ast.Try: "a try statement", ast.FunctionDef: "a function definition", ast.AsyncFunctionDef: "a function definition",
    ast.ClassDef: "a class definition", ast.Delete: "a del statement", ast.Assert: "an assert statement",
    ast.Raise: "a raise statement", ast.Global: "a global statement", ast.AugAssign: "an augmented assignment",
    ast.AsyncFor: "a for loop", ast.AsyncWith: "a with statement", ast.Match: "a match statement",
}


class _Reader:
    """Reads one config file into a Located mapping of its top-level names (nothing is run)."""

    def __init__(self, tree: ast.Module, file: str, base: Located, warnings: list[Diagnostic]):
        self.tree, self.file, self.base, self.warnings = tree, file, base, warnings
        self.env: dict[str, Located] = {}
        self.key_spans: dict[str, Span] = {}
        self.copied = 0  # values copied through names and _base_ references, against MAX_VALUES
        self.placeholders: set[str] = set()  # names bound to {{_base_.x}}: a string until the file has run

    # -- statements --------------------------------------------------------------------------------

    def read(self) -> Located:
        for stmt in self.tree.body:
            self.statement(stmt)
        out = Located({}, {(): Span(self.file, 1, 1)})
        for name, value in self.env.items():
            if name.startswith("__") or isinstance(value.data, Unknown) and not value.data.exported:
                continue
            out.data[name] = value.data
            for p, s in value.spans.items():
                out.spans[(name,) + p] = s
            for p, s in value.key_spans.items():
                out.key_spans[(name,) + p] = s
            out.key_spans[(name,)] = self.key_spans[name]
        return out

    def bind(self, target: ast.expr, value: Located, stmt: ast.stmt) -> None:
        if isinstance(target, ast.Name):
            if target.id == "_base_":
                return  # read before the file (mmengine removes the assignment too)
            self.env[target.id] = value
            self.key_spans[target.id] = _span(target, self.file)
            if self.placeholder(getattr(stmt, "value", None)):
                self.placeholders.add(target.id)
            else:
                self.placeholders.discard(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            items = value.data if isinstance(value.data, (list, tuple)) else None
            for i, t in enumerate(target.elts):
                if items is not None and len(items) == len(target.elts) and not isinstance(t, ast.Starred):
                    self.bind(t, _sub(value, i), stmt)
                else:
                    for name in _names_in(t):
                        self.bind_unknown(name, "a tuple assignment", stmt)
        else:  # x.a = ..., x['a'] = ...: mutation of an earlier value
            root = target
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if isinstance(root, ast.Name) and root.id in self.env:
                self.bind_unknown(root, "an item or attribute assignment", stmt)
            else:
                self.skip(stmt, "an item or attribute assignment")

    def bind_unknown(self, target: ast.Name, construct: str, stmt: ast.stmt) -> None:
        line = getattr(stmt, "lineno", 0)
        exported = not isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef))
        self.env[target.id] = Located(Unknown("E081", construct + (f" at line {line}" if line else ""),
                                              _snippet(stmt), _span(stmt, self.file), exported=exported),
                                      {(): _span(stmt, self.file)})
        self.key_spans[target.id] = _span(target, self.file)

    def skip(self, stmt: ast.stmt, kind: str) -> None:
        self.warnings.append(Diagnostic(
            "W030", f"{kind} was not run: `{_snippet(stmt)}`", _span(stmt, self.file),
            "graphres reads configs without running them; the backbone cannot use what it would bind"))

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Assign):
            value = self.expr(stmt.value)
            for target in stmt.targets:
                self.bind(target, value, stmt)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self.bind(stmt.target, self.expr(stmt.value), stmt)
        elif isinstance(stmt, ast.Pass):
            pass
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            pass  # a docstring
        else:
            kind = _STATEMENTS.get(type(stmt), "a statement")
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                kind = "a call"
            self.skip(stmt, kind)
            for name in _bound_names(stmt):
                what = "an imported name" if isinstance(stmt, (ast.Import, ast.ImportFrom)) else \
                    f"a name bound by {kind}"
                self.bind_unknown(name, what, stmt)

    # -- expressions -------------------------------------------------------------------------------

    def unknown(self, node: ast.AST, construct: str | None = None, code: str = "E081",
                hint: str | None = None) -> Located:
        span = _span(node, self.file)
        what = construct or _CONSTRUCTS.get(type(node), f"a {type(node).__name__} expression")
        return Located(Unknown(code, what, _snippet(node), span, hint), {(): span})

    def expr(self, node: ast.expr) -> Located:
        span = _span(node, self.file)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and _BASE_IN_STRING.search(v):
                return self.unknown(node, "a {{_base_.x}} reference inside a string", "E083",
                                    "mmengine substitutes {{_base_.x}} only outside quotes: write "
                                    "x = {{_base_.x}}, or x = _base_.x")
            if v is None or isinstance(v, (bool, int, float, str)):
                return Located(v, {(): span})
            return self.unknown(node, f"a {type(v).__name__} literal")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            v = node.operand.value
            return Located(-v if isinstance(node.op, ast.USub) else v, {(): span})
        if isinstance(node, (ast.List, ast.Tuple)):
            out = Located([], {(): span})
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    _put(out, len(out.data), self.unknown(elt), None)
                else:
                    _put(out, len(out.data), self.expr(elt), None)
            if isinstance(node, ast.Tuple):
                out.data = tuple(out.data)
            return out
        if isinstance(node, ast.Dict):
            out = Located({}, {(): span})
            for k, v in zip(node.keys, node.values):
                if k is None:  # {**x}
                    self.spread(out, v)
                elif isinstance(k, ast.Constant) and isinstance(k.value, (str, int, bool)) or \
                        (isinstance(k, ast.Constant) and k.value is None):
                    _put(out, k.value, self.expr(v), _span(k, self.file))
                else:
                    return self.unknown(k, "a computed dict key")
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and "dict" not in self.env and len(node.args) <= 1:
            out = Located({}, {(): span})
            for arg in node.args:
                self.spread(out, arg)
            given: set = set()  # keyword keys: a positional mapping's may be overridden, these may not
            for kw in node.keywords:
                value = self.expr(kw.value)
                keys = [kw.arg] if kw.arg is not None else list(value.data) if isinstance(value.data, dict) else []
                twice = [k for k in keys if k in given]
                given.update(keys)
                if twice:  # Python's dict() refuses a keyword given twice (dict(**bb, depth=1) with bb['depth'])
                    return self.unknown(node, f"dict() gets '{twice[0]}' twice, which Python refuses", "E083",
                                        "write {**x, 'key': value} to override a key of x")
                if kw.arg is None:
                    self.spread(out, kw.value, value)
                else:
                    _put(out, kw.arg, value, Span(self.file, kw.lineno, kw.col_offset + 1, len(kw.arg)))
            return out
        if isinstance(node, ast.Set) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Set) \
                and len(node.elts[0].elts) == 1:
            inner = node.elts[0].elts[0]
            chain = _dotted(inner)
            if chain and chain[0] == "_base_":  # {{_base_.a.b}}, before mmengine substitutes it
                return self.from_base(chain[1:], node)
        if isinstance(node, ast.Name):
            if node.id == "_base_":
                return self.from_base([], node)
            if node.id in self.env:
                value = self.env[node.id]
                self.count(len(value.spans), node)
                return Located(copy.deepcopy(value.data), dict(value.spans), dict(value.key_spans))
            return self.unknown(node, f"name '{node.id}' is not bound earlier in {self.file}", "E083",
                                f"mmengine runs each file on its own: a name from a base file is reached as "
                                f"{{{{_base_.{node.id}}}}} or _base_.{node.id}")
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            chain = _dotted(node)
            if chain and chain[0] == "_base_":
                return self.from_base(chain[1:], node)
            if isinstance(node, ast.Subscript) and self.placeholder(node.value):
                return self.too_early(node, "indexed")
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                value = self.expr(node.value)
                key = node.slice.value
                if isinstance(value.data, dict) and key in value.data or \
                        isinstance(value.data, (list, tuple)) and isinstance(key, int) and -len(value.data) <= key < len(value.data):
                    return _sub(value, key if not isinstance(value.data, (list, tuple)) else key % len(value.data))
                if isinstance(value.data, Unknown):
                    return value
                return self.unknown(node, f"a subscript [{key!r}] that the value at line {node.lineno} does not have",
                                    "E083")
        return self.unknown(node)

    def placeholder(self, node: ast.AST | None) -> bool:
        """Whether ``node`` is ``{{_base_.x}}`` or a name bound to one: mmengine replaces it by a
        placeholder string before the file runs and by the base's value only afterwards."""
        if isinstance(node, ast.Name):
            return node.id in self.placeholders
        return isinstance(node, ast.Set) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Set) \
            and len(node.elts[0].elts) == 1 and (_dotted(node.elts[0].elts[0]) or [""])[0] == "_base_"

    def too_early(self, node: ast.AST, use: str) -> Located:
        return self.unknown(node, f"a {{{{_base_.x}}}} value {use} in the file, where mmengine still has it "
                                  f"as a placeholder string", "E083",
                            "mmengine substitutes {{_base_.x}} only after the file has run: read the value as "
                            "_base_.x instead")

    def spread(self, out: Located, node: ast.expr, value: Located | None = None) -> None:
        """``dict(x, **y)`` and ``{**y}``: the keys of an earlier mapping."""
        if self.placeholder(node):
            value = self.too_early(node, "expanded with **")
        value = self.expr(node) if value is None else value
        if not isinstance(value.data, dict):
            _put(out, f"**{_snippet(node)}", self.unknown(node, "a ** expansion of a value that is not a literal dict")
                 if not isinstance(value.data, Unknown) else value, None)
            return
        for key in value.data:
            _put(out, key, _sub(value, key), value.key_spans.get((key,)))

    def count(self, n: int, node: ast.AST) -> None:
        self.copied += n
        if self.copied > MAX_VALUES:
            raise SpecError([Diagnostic("E080", f"config expands to more than {MAX_VALUES:,} values through names "
                                                f"that refer to names", _span(node, self.file))])

    def from_base(self, keys: list[str], node: ast.AST) -> Located:
        self.count(len(self.base.spans), node)
        at: Path = ()
        data: Any = self.base.data
        for key in keys:
            if isinstance(data, dict) and key in data:
                data = data[key]
                at += (key,)
            else:
                where = "_base_." + ".".join(keys[: len(at) + 1])
                return self.unknown(node, f"{where} is not in the base files", "E083",
                                    "the base files define: " + ", ".join(sorted(map(str, data)))
                                    if isinstance(data, dict) and data else None)
        return _sub(self.base, at) if at else Located(copy.deepcopy(data), dict(self.base.spans),
                                                         dict(self.base.key_spans))


def _sub(value: Located, key) -> Located:
    """The part of ``value`` at one key or index, with its spans."""
    path = key if isinstance(key, tuple) else (key,)
    data = value.data
    for k in path:
        data = data[k]
    n = len(path)
    return Located(copy.deepcopy(data), {p[n:]: s for p, s in value.spans.items() if p[:n] == path},
                   {p[n:]: s for p, s in value.key_spans.items() if p[:n] == path and len(p) > n})


def _put(out: Located, key, value: Located, key_span: Span | None) -> None:
    if isinstance(out.data, list):
        out.data.append(value.data)
    else:
        out.data[key] = value.data
    for p in [p for p in out.spans if p[:1] == (key,)] + [p for p in out.key_spans if p[:1] == (key,)]:
        out.spans.pop(p, None)
        out.key_spans.pop(p, None)
    for p, s in value.spans.items():
        out.spans[(key,) + p] = s
    for p, s in value.key_spans.items():
        out.key_spans[(key,) + p] = s
    if key_span is not None:
        out.key_spans[(key,)] = key_span


def _dotted(node: ast.AST) -> list | None:
    """``_base_.a.b`` or ``_base_['a']['b']`` as ['_base_', 'a', 'b']; None for anything else."""
    out = []
    while True:
        if isinstance(node, ast.Attribute):
            out.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                isinstance(node.slice.value, str):
            out.append(node.slice.value)
            node = node.value
        elif isinstance(node, ast.Name):
            out.append(node.id)
            return out[::-1]
        else:
            return None


def _names_in(target: ast.AST) -> list[ast.Name]:
    return [n for n in ast.walk(target) if isinstance(n, ast.Name)]


def _bound_names(stmt: ast.stmt) -> list[ast.Name]:
    """The top-level names a skipped statement would bind (imports, defs, assignments inside)."""
    out: list[ast.Name] = []
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        for alias in stmt.names:
            name = alias.asname or alias.name.split(".")[0]
            if name != "*":
                out.append(ast.Name(name, lineno=stmt.lineno, col_offset=stmt.col_offset,
                                    end_lineno=stmt.end_lineno, end_col_offset=stmt.end_col_offset))
        return out
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [ast.Name(stmt.name, lineno=stmt.lineno, col_offset=stmt.col_offset, end_lineno=stmt.lineno,
                         end_col_offset=stmt.col_offset + 1)]
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) and node is not stmt:
            continue
    return out


# -- files and the _base_ chain ---------------------------------------------------------------------

def _error(code: str, message: str, span: Span, sources: SourceCache, hint: str | None = None) -> SpecError:
    return SpecError([Diagnostic(code, message, span, hint)], sources)


def _parse(path: FsPath, display: str, sources: SourceCache, span: Span) -> ast.Module:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _error("E080", f"cannot read config '{display}': {e.strerror or e}", span, sources) from None
    if len(raw) > MAX_BYTES:
        raise _error("E080", f"config '{display}' is {len(raw):,} bytes, more than graphres reads "
                             f"({MAX_BYTES:,})", span, sources)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error("E080", f"config '{display}' is not UTF-8 text (byte {e.start})", span, sources) from None
    sources.add(display, text)
    try:
        tree = ast.parse(text, filename=display)
    except SyntaxError as e:
        where = Span(display, e.lineno or 1, e.offset or 1)
        raise _error("E080", f"Python syntax error: {e.msg}", where, sources) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise _error("E080", f"config '{display}' cannot be parsed: {e}", span, sources) from None
    if _deeper_than(tree, MAX_SYNTAX_DEPTH):  # a bound of its own, not the interpreter's recursion limit
        raise SpecError([Diagnostic("E080", f"config '{display}' nests values too deeply to read", Span(display))],
                        sources)
    return tree


def _deeper_than(tree: ast.AST, limit: int) -> bool:
    """Whether the syntax tree nests more than ``limit`` levels (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return False


def _refuse_new_style(tree: ast.Module, display: str, sources: SourceCache) -> None:
    for node in ast.walk(tree):
        found = None
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and _snippet(call.func).split(".")[-1] == "read_base":
                    found = node
        elif isinstance(node, ast.ImportFrom) and any(a.name == "read_base" for a in node.names):
            found = node
        if found is not None:
            raise _error("E085", "new-style mmengine config (read_base()) is not supported",
                         _span(found, display), sources,
                         "graphres import reads old-style configs (_base_ = [...] and dict(...)); paste the "
                         "backbone dict into a shorthand spec instead")


def _bases(tree: ast.Module, display: str, sources: SourceCache) -> list[tuple[str, Span]]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_base_" for t in stmt.targets):
            v = stmt.value
            items = [v] if isinstance(v, ast.Constant) else list(v.elts) if isinstance(v, (ast.List, ast.Tuple)) \
                else None
            if items is None or not all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                raise _error("E082", f"_base_ must be a file name or a list of file names, found `{_snippet(v)}`",
                             _span(v, display), sources)
            return [(i.value, _span(i, display)) for i in items]
    return []


def _load(path: FsPath, display: str, sources: SourceCache, warnings: list[Diagnostic], chain: tuple,
          span: Span, files: list[str]) -> Located:
    """One file merged over its bases, as mmengine's Config.fromfile does (without running it)."""
    tree = _parse(path, display, sources, span)
    files.append(display)
    _refuse_new_style(tree, display, sources)
    merged = Located({}, {(): Span(display, 1, 1)})
    owner: dict[str, str] = {}
    for base, bspan in _bases(tree, display, sources):
        if "::" in base:
            raise _error("E082", f"_base_ '{base}' names a file inside an installed package", bspan, sources,
                         "graphres does not look into installed packages: copy the base file beside the config "
                         "and name it by a relative path")
        if os.path.splitext(base)[1] != ".py":
            raise _error("E082", f"_base_ '{base}' is not a Python config (.py)", bspan, sources,
                         "graphres import follows Python bases only")
        base_path = (path.parent / base).resolve()
        if base_path in chain or base_path == path.resolve():
            names = " -> ".join(p.name for p in chain + (path.resolve(), base_path))
            raise _error("E082", f"_base_ '{base}' includes itself (cycle: {names})", bspan, sources)
        if len(chain) >= MAX_BASE_DEPTH:
            raise _error("E082", f"_base_ nesting deeper than {MAX_BASE_DEPTH} files", bspan, sources)
        if not base_path.is_file():
            raise _error("E082", f"_base_ file '{base}' not found (paths are relative to {path.name})", bspan,
                         sources)
        base_display = os.path.normpath(os.path.join(os.path.dirname(display), base))
        doc = _load(base_path, base_display, sources, warnings, chain + (path.resolve(),), bspan, files)
        for key in doc.data:
            if key in owner:
                raise _error("E082", f"base files {owner[key]} and {base_display} both define '{key}'", bspan,
                             sources, "mmengine refuses a key defined in two bases of one file; move it to one")
            owner[key] = base_display
        merge_into(merged, doc)
    own = _Reader(tree, display, merged, warnings).read()
    _check_mergeable(own, merged, (), sources)
    merge_into(merged, own)
    return merged


def _check_mergeable(child: Located, base: Located, at: Path, sources: SourceCache) -> None:
    """mmengine refuses a dict in a child over a non-dict in its base (unless ``_delete_=True``)."""
    c, b = _get(child.data, at), _get(base.data, at)
    if not isinstance(c, dict) or c.get("_delete_") is True:
        return
    if at and not isinstance(b, dict):
        if b is _ABSENT:
            return
        if isinstance(b, Unknown):  # what the base computes is not known, so neither is the merge
            raise SpecError([_unknown_diag(b, at)], sources)
        name = ".".join(map(str, at))
        raise _error("E082", f"{name} is a dict here but {_kind(b)} in the base files, so mmengine cannot merge "
                             f"them", child.key_span(at), sources, "add _delete_=True to the dict to replace it")
    for key in c:
        if key != "_delete_":
            _check_mergeable(child, base, at + (key,), sources)


_ABSENT = object()


def _get(data: Any, at: Path) -> Any:
    for k in at:
        if not isinstance(data, dict) or k not in data:
            return _ABSENT
        data = data[k]
    return data


def _kind(v: Any) -> str:
    return {list: "a list", tuple: "a tuple", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "None"}.get(type(v), "a value that is not a literal")


# -- the backbone -----------------------------------------------------------------------------------

def read_config(path: str | FsPath) -> ImportedConfig:
    """Read ``path`` and its bases; return the shorthand spec document of ``model.backbone``.

    Raises :class:`SpecError` with every problem in the values the backbone uses."""
    sources = SourceCache()
    warnings: list[Diagnostic] = []
    files: list[str] = []
    display = str(path)
    try:
        merged = _load(FsPath(path), display, sources, warnings, (), Span(display), files)
    except RecursionError:  # a value nested deeper than Python's own recursion allows to walk
        raise SpecError([Diagnostic("E080", f"config '{files[-1] if files else display}' nests values too deeply "
                                            f"to read", Span(files[-1] if files else display))], sources) from None
    diags: list[Diagnostic] = []
    model = merged.data.get("model", _ABSENT)
    hint = "graphres import takes model.backbone, as in model = dict(type=..., backbone=dict(type='ResNet', ...))"
    if model is _ABSENT or isinstance(model, dict) and "backbone" not in model:
        what = "no 'model'" if model is _ABSENT else "'model' has no 'backbone'"
        where = merged.key_span(("model",)) if model is not _ABSENT else Span(display)
        raise SpecError([Diagnostic("E084", f"{what} in {display} or its bases", where, hint)], sources)
    for p, u in _unknowns(merged.data["model"], ("model",)):
        if p == ("model",) or p[:2] == ("model", "backbone"):
            diags.append(_unknown_diag(u, p))
    if diags:
        raise SpecError(diags + warnings, sources)
    if not isinstance(model, dict) or not isinstance(model["backbone"], dict):
        at = ("model",) if not isinstance(model, dict) else ("model", "backbone")
        raise SpecError([Diagnostic("E084", f"{'.'.join(at)} is {_kind(_get(merged.data, at))}, not a dict",
                                    merged.span(at), hint)] + warnings, sources)

    doc = Located({"graphres": 1, "name": FsPath(display).stem}, {(): Span(display, 1, 1)})
    scope = merged.data.get("default_scope")
    if scope in ("mmdet", "mmseg"):
        doc.data["default_scope"] = scope
        doc.spans[("default_scope",)] = merged.span(("default_scope",))
    backbone = _strip(_sub(merged, ("model", "backbone")))
    dropped = []
    for key in ("init_cfg", "pretrained"):
        value = backbone.data.get(key)
        checkpoint = value.get("checkpoint") if isinstance(value, dict) else value
        # a model-zoo name graphres resolves (from torch.hub's cache) is kept; others are left out
        if isinstance(checkpoint, str) and checkpoint.startswith(ZOO_PREFIXES) and zoo_url(checkpoint) is None:
            span = backbone.key_span((key,))
            warnings.append(Diagnostic("W031", f"model.backbone.{key} names the model-zoo checkpoint "
                                               f"'{checkpoint}': left out of the spec", span,
                                       "load the weights with graphres compile --checkpoint FILE or "
                                       "graphres.build(spec, checkpoint=FILE)"))
            dropped.append(f"{key}: {_flow(value)}  (left out: a model-zoo name, not a file; {span})")
            del backbone.data[key]
    ordered = {k: backbone.data[k] for k in _ORDER if k in backbone.data}
    ordered.update((k, v) for k, v in backbone.data.items() if k not in ordered)
    backbone.data = ordered
    _put(doc, "backbone", backbone, merged.key_span(("model", "backbone")))
    return ImportedConfig(doc, sources, files, warnings, dropped)


_ORDER = COMMON_KEYS + ("groups", "base_width") + MMSEG_KEYS


def _unknowns(data: Any, at: Path):
    if isinstance(data, Unknown):
        yield at, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _unknowns(v, at + (k,))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            yield from _unknowns(v, at + (i,))


def _unknown_diag(u: Unknown, at: Path) -> Diagnostic:
    name = ".".join(map(str, at))
    if u.code == "E081":
        return Diagnostic("E081", f"{name} needs `{u.snippet}`, {u.construct}, which graphres does not run",
                          u.span, u.hint or f"write the value as a literal ({_LITERALS}) or a name bound to one "
                                            "earlier in the file")
    return Diagnostic("E083", f"{name} needs `{u.snippet}`: {u.construct}", u.span, u.hint)


def _strip(value: Located) -> Located:
    """Tuples as lists, leftover ``_delete_`` markers dropped: plain YAML data."""
    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items() if k != "_delete_"}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v
    return Located(walk(value.data), value.spans, value.key_spans)


# -- the spec text ----------------------------------------------------------------------------------

def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10 ** 6).strip() \
        .removesuffix("\n...").removesuffix(" ...")


def _comment(text: str) -> str:
    return " ".join(str(text).splitlines())  # a file name with a line break must not end the comment


def emit_spec(imported: ImportedConfig, summary: list[str] = ()) -> str:
    """The commented shorthand spec: a header, then one backbone key a line with where it was set.

    Keys and values are written by PyYAML (quoted where YAML needs it), so no config string can
    change the structure of the spec; ``yaml.safe_load`` of the text gives ``imported.doc.data``."""
    doc = imported.doc
    lines = [f"# imported by graphres from {_comment(imported.files[0])} (model.backbone)",
             "# the config was read with Python's ast, never run; each key says where it was set"]
    if len(imported.files) > 1:
        lines.append(f"# base files: {_comment(', '.join(imported.files[1:]))}")
    lines.extend(f"# {_comment(s)}" for s in summary)
    lines.append("graphres: 1")
    lines.append(f"name: {_flow(doc.data['name'])}")
    if "default_scope" in doc.data:
        lines.append(f"default_scope: {_flow(doc.data['default_scope'])}  # {_comment(doc.span(('default_scope',)))}")
    lines.append("backbone:")
    for key, value in doc.data["backbone"].items():
        span = doc.span(("backbone", key))
        lines.append(f"  {_flow(key)}: {_flow(value)}  # {_comment(span.file)}:{span.line}")
    for text in imported.dropped:
        lines.append(f"  # {_comment(text)}")
    return "\n".join(lines) + "\n"
