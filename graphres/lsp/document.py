"""Language server, part 1: what an editor asks about a spec buffer, answered without any protocol.

Positions are 0-based (line, character), as in LSP. The compiled spec comes from
:func:`graphres.pipeline.compile_spec` on the buffer's text, so diagnostics, hovers and the stage
table are exactly what ``graphres validate`` and ``graphres info`` compute. Keys, their meanings
and the allowed values come from the JSON Schema (:mod:`graphres.spec.schema`), itself generated
from the reader's tables. No torch.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .. import ir
from ..diagnostics import Diagnostic, SpecError
from ..pipeline import Compiled, compile_spec
from ..spec.blocks import builtin_blocks
from ..spec.names import resolve_name
from ..spec.source import parse_yaml
from ..spec.schema import spec_schema

# -- compiling a buffer -------------------------------------------------------------------------------


@dataclass
class Result:
    """One compile of one buffer: the diagnostics, and the analysed graph when there are no errors."""

    diagnostics: list[Diagnostic]
    compiled: Compiled | None = None


def compile_buffer(path: str, text: str) -> Result:
    """Compile ``text`` as the file ``path`` (its ``_base_`` paths resolve next to it)."""
    try:
        compiled = compile_spec(path, text=text)
    except SpecError as e:
        return Result(list(e.diagnostics))
    return Result(list(compiled.warnings), compiled)


# -- where the cursor is ------------------------------------------------------------------------------


@dataclass
class Spot:
    """The value (or key) under the cursor: its path in the document and its text."""

    path: tuple
    on_key: bool
    value: Any = None
    start: tuple[int, int] = (0, 0)
    end: tuple[int, int] = (0, 0)


def _inside(node: yaml.Node, pos: tuple[int, int]) -> bool:
    return (node.start_mark.line, node.start_mark.column) <= pos <= (node.end_mark.line, node.end_mark.column)


def spot_at(text: str, line: int, char: int) -> Spot | None:
    """The deepest key or value at (line, char), or None when the text does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if root is None:
        return None
    pos = (line, char)
    node, path = root, ()
    for _ in range(256):  # the depth of any real spec; a guard against alias loops
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if _inside(key, pos) and isinstance(key, yaml.ScalarNode):
                    return Spot(path + (key.value,), True, key.value, _mark(key.start_mark), _mark(key.end_mark))
                if _inside(value, pos) and isinstance(key, yaml.ScalarNode):
                    node, path = value, path + (key.value,)
                    break
            else:
                return Spot(path, False, None, _mark(node.start_mark), _mark(node.end_mark))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if _inside(item, pos):
                    node, path = item, path + (i,)
                    break
            else:
                # before or after an item on its line (the '- ' of a stage entry): that item
                same = [i for i, item in enumerate(node.value) if item.start_mark.line == line]
                if not same:
                    return Spot(path, False, None, _mark(node.start_mark), _mark(node.end_mark))
                item = node.value[same[0]]
                return Spot(path + (same[0],), False, None, _mark(item.start_mark), _mark(item.end_mark))
        else:
            return Spot(path, False, node.value, _mark(node.start_mark), _mark(node.end_mark))
    return None


def _mark(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line, mark.column


# -- the schema, walked by path -----------------------------------------------------------------------

@lru_cache(maxsize=1)
def _schema() -> dict:
    return spec_schema()


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _matches(cond: dict, siblings: dict) -> bool:
    """Whether an ``if`` of the schema holds for the keys known so far (consts, enums, required)."""
    if "anyOf" in cond:
        return any(_matches(c, siblings) for c in cond["anyOf"])
    for key in cond.get("required", ()):
        if key not in siblings:
            return False
    if "not" in cond and _matches(cond["not"], siblings):
        return False
    for key, sub in cond.get("properties", {}).items():
        if key not in siblings or not isinstance(sub, dict):
            continue
        value = siblings[key]
        if "const" in sub and value != sub["const"]:
            return False
        if "enum" in sub and value not in sub["enum"]:
            return False
        if "pattern" in sub and not (isinstance(value, str) and re.search(sub["pattern"], value)):
            return False
        if ("properties" in sub or "required" in sub) and not (isinstance(value, dict) and _matches(sub, value)):
            return False
    return True


def _branches(node: Any, siblings: dict) -> list[dict]:
    """The object schemas that apply at ``node``, following $ref, anyOf and if/then/else."""
    node = _deref(node)
    if not isinstance(node, dict):
        return []
    out = [node]
    for sub in node.get("anyOf", []) + node.get("allOf", []):
        out += _branches(sub, siblings)
    if "if" in node:
        out += _branches(node.get("then" if _matches(node["if"], siblings) else "else", {}), siblings)
    return out


def _root(text: str) -> dict:
    ref = "shorthand" if re.search(r"^backbone\s*:", text, re.M) else "explicit"
    if re.search(r"^_base_\s*:", text, re.M):
        ref = "partial_" + ref
    return _schema()["$defs"][ref]


def schema_at(text: str, path: tuple, siblings_at: dict[tuple, dict] | None = None) -> list[dict]:
    """The schemas of the value at ``path`` (an int or '[]' steps into a list)."""
    siblings_at = siblings_at or {}
    nodes = [_root(text)]
    for depth, step in enumerate(path):
        here = siblings_at.get(tuple(path[:depth]), {})
        nxt: list = []
        for node in nodes:
            for b in _branches(node, here):
                if isinstance(step, int) or step == "[]":
                    if isinstance(b.get("items"), dict):
                        nxt.append(b["items"])
                else:
                    props = b.get("properties", {})
                    if step in props and props[step] is not False:
                        nxt.append(props[step])
                    elif isinstance(b.get("additionalProperties"), dict) and "properties" not in b:
                        nxt.append(b["additionalProperties"])
        nodes = nxt
    return nodes


def keys_at(text: str, path: tuple, siblings: dict, siblings_at: dict | None = None) -> dict[str, str]:
    """Key -> description of the mapping at ``path``, given the keys it already has."""
    out: dict[str, str] = {}
    banned: set[str] = set()
    closed: list[set[str]] = []  # a branch that allows only its own keys narrows the choice
    for node in schema_at(text, path, siblings_at):
        for b in _branches(node, siblings):
            props = b.get("properties", {})
            if b.get("additionalProperties") is False and props:
                closed.append(set(props))
            for key, sub in props.items():
                if sub is False:
                    banned.add(key)
                elif key != "_delete_":
                    out.setdefault(key, sub.get("description", "") if isinstance(sub, dict) else "")
                    if not out[key] and isinstance(sub, dict):
                        out[key] = sub.get("description", "")
    return {k: v for k, v in out.items() if k not in banned and all(k in c for c in closed)}


def values_at(text: str, path: tuple, siblings_at: dict | None = None) -> list[Any]:
    """The values the schema names for the key at ``path`` (enums, consts, examples, booleans)."""
    out: list[Any] = []

    def collect(node: Any) -> None:
        node = _deref(node)
        if not isinstance(node, dict):
            return
        for v in node.get("enum", []) + node.get("examples", []) + ([node["const"]] if "const" in node else []):
            if v not in out:
                out.append(v)
        if node.get("type") == "boolean":
            out.extend(v for v in (True, False) if v not in out)
        for sub in node.get("anyOf", []):
            collect(sub)
        if isinstance(node.get("items"), dict):
            collect(node["items"])

    for node in schema_at(text, path, siblings_at):
        collect(node)
    return out


def describe_key(text: str, path: tuple) -> str | None:
    """The schema's description of the key at ``path``."""
    if not path or isinstance(path[-1], int):
        return None
    parent = path[:-1]
    for node in schema_at(text, parent, {}):
        for b in _branches(node, {}):
            sub = b.get("properties", {}).get(path[-1])
            if isinstance(sub, dict) and sub.get("description"):
                return sub["description"]
    return None


# -- completion context from raw (possibly broken) text -----------------------------------------------

_KEY = re.compile(r"^(\s*)(-\s+)?([A-Za-z_][\w.]*)\s*:(.*)$")


@dataclass
class Context:
    """Where a completion is asked for: the path of the mapping, and the key whose value is typed."""

    path: tuple
    key: str | None  # None: a key is being typed
    siblings: dict = field(default_factory=dict)
    prefix: str = ""
    siblings_at: dict = field(default_factory=dict)


def _line_info(line: str) -> tuple[int, bool, str | None, str]:
    """(column of the line's key or content, whether it starts a list item, its key, the rest)."""
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    dash = False
    while stripped.startswith("- ") or stripped == "-":
        dash = True
        rest = stripped[1:].lstrip(" ")
        indent += len(stripped) - len(rest)
        stripped = rest
    m = re.match(r"([A-Za-z_][\w.]*)\s*:(\s|$)(.*)", stripped)
    if m:
        return indent, dash, m.group(1), m.group(3)
    return indent, dash, None, stripped


def _flow_pairs(segment: str) -> dict:
    """``key: value`` pairs of a flow mapping's text, at its top level."""
    out: dict = {}
    depth, part, parts = 0, "", []
    for ch in segment:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += ch
    parts.append(part)
    for p in parts:
        if ":" in p:
            k, v = p.split(":", 1)
            k, v = k.strip(), v.strip()
            if re.fullmatch(r"[A-Za-z_][\w.]*", k):
                try:
                    out[k] = yaml.safe_load(v) if v and not v.startswith(("{", "[")) else v
                except yaml.YAMLError:
                    out[k] = v
    return out


def _block_siblings(lines: list[str], row: int, col: int) -> dict:
    """The keys (with scalar values) of the block mapping whose keys start at ``col`` around ``row``."""
    out: dict = {}

    def scan(rng) -> None:
        for r in rng:
            text = lines[r]
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            indent, dash, key, rest = _line_info(text)
            if indent < col or (indent == col and dash and r != row and rng.step > 0):
                return
            if indent == col and key is not None:
                try:
                    value = yaml.safe_load(rest) if rest.strip() else None
                except yaml.YAMLError:
                    value = rest.strip()
                out.setdefault(key, value)
                if dash:  # the first key of this list item
                    return

    scan(range(row, -1, -1))
    scan(range(row + 1, len(lines)))
    return out


def context_at(text: str, line: int, char: int) -> Context:
    """The completion context at (line, char), from indentation and flow brackets on the line."""
    lines = text.split("\n")
    if line >= len(lines):
        lines += [""] * (line - len(lines) + 1)
    current = lines[line][:char]
    # flow brackets opened on this line and not closed before the cursor
    stack: list[tuple[str, int, str | None]] = []  # (bracket, column, key it is the value of)
    quote = None
    for i, ch in enumerate(current):
        if quote:
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "{[":
            m = re.search(r"([A-Za-z_][\w.]*)\s*:\s*$", current[:i])
            stack.append((ch, i, m.group(1) if m else None))
        elif ch in "}]" and stack:
            stack.pop()
    indent, dash, key, rest = _line_info(lines[line])
    col = indent if (key is not None or dash) else len(current) - len(current.lstrip(" "))
    if key is None and not dash and not current.strip():
        col = len(current)
    path: list = []
    siblings_at: dict = {}
    # walk up to the parents of the mapping that holds column `col`
    in_item = dash
    row = line
    target = col
    while True:
        parent = None
        for r in range(row - 1, -1, -1):
            t = lines[r]
            if not t.strip() or t.lstrip().startswith("#"):
                continue
            pi, pdash, pkey, _ = _line_info(t)
            if pi == target and pdash and not in_item:
                in_item = True
                continue
            if pi < target:
                parent = (r, pi, pdash, pkey)
                break
        if in_item:
            path.insert(0, "[]")
        if parent is None or parent[3] is None:
            break
        r, pi, pdash, pkey = parent
        path.insert(0, pkey)
        row, target, in_item = r, pi, pdash
    block_path = tuple(path)
    flow_path = list(block_path)
    if stack:
        if key is not None and stack[0][2] == key:
            flow_path.append(key)
        for _, _, k in stack[1:]:
            if k:
                flow_path.append(k)
        for bracket, _, _ in stack:
            if bracket == "[":
                flow_path.append("[]")
        inner_bracket, inner_col, _ = stack[-1]
        segment = current[inner_col + 1:]
        depth, last_sep = 0, -1
        for i, ch in enumerate(segment):
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            elif ch == "," and depth == 0:
                last_sep = i
        piece = segment[last_sep + 1:]
        whole = lines[line][inner_col + 1:]
        siblings = _flow_pairs(whole.split("}")[0]) if inner_bracket == "{" else {}
        if inner_bracket == "[":
            # a list value: the key is the one the list belongs to
            list_key = stack[-1][2]
            owner = flow_path[:-2] if list_key and flow_path[-2:-1] == [list_key] else flow_path[:-1]
            outer = stack[-2] if len(stack) > 1 else None
            owner_siblings = _flow_pairs(current[outer[1] + 1:]) if outer and outer[0] == "{" else {}
            return Context(tuple(owner), list_key, owner_siblings, piece.strip(), siblings_at)
        if ":" in piece:
            k = piece.split(":", 1)[0].strip()
            return Context(tuple(flow_path), k, siblings, piece.split(":", 1)[1].strip(), siblings_at)
        return Context(tuple(flow_path), None, siblings, piece.strip(), siblings_at)
    siblings = _block_siblings(lines, line, col)
    if key is not None and char > lines[line].index(":", indent):
        siblings.pop(key, None)
        return Context(block_path, key, siblings, rest.strip(), siblings_at)
    typed = current.strip()
    typed = typed[2:].strip() if typed.startswith("- ") or typed == "-" else typed
    if key is not None:
        siblings.pop(key, None)
    return Context(block_path, None, siblings, typed, siblings_at)


def _siblings_of_parents(text: str, ctx: Context) -> dict:
    """The known keys of each mapping on the path, where the document parses (for if/then)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    out: dict = {}
    node = data
    at: tuple = ()
    for step in ctx.path:
        if isinstance(node, dict):
            out[at] = node
        if step == "[]" or isinstance(step, int) or not isinstance(node, dict):
            break
        node = node.get(step)
        at += (step,)
    return out


def local_block_names(text: str, kind: str | None = None) -> list[str]:
    """Block (or stem) types declared under ``blocks:`` in the text (the parts that parse)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("blocks"), dict):
        return [str(n) for n, b in data["blocks"].items()
                if kind is None or (isinstance(b, dict) and b.get("kind", "block") == kind)]
    names, inside = [], False
    for t in text.split("\n"):
        if re.match(r"^blocks\s*:", t):
            inside = True
            continue
        if inside and t and not t[0].isspace() and not t.startswith("#"):
            inside = False
        m = re.match(r"^  ([A-Za-z_]\w*)\s*:", t) if inside else None
        if m:
            names.append(m.group(1))
    return names


@dataclass
class Candidate:
    label: str
    is_key: bool
    detail: str = ""


def complete(text: str, line: int, char: int, base_blocks: list[str] = ()) -> list[Candidate]:
    """Keys of the mapping at the cursor, or the values of the key being typed."""
    ctx = context_at(text, line, char)
    parents = _siblings_of_parents(text, ctx)
    if ctx.key is None:
        keys = keys_at(text, ctx.path, ctx.siblings, parents)
        return [Candidate(k, True, d) for k, d in keys.items() if k not in ctx.siblings]
    path = ctx.path + (ctx.key,)
    values = values_at(text, path, parents)
    inside_layers = "layers" in ctx.path
    if ctx.key == "block" or (ctx.key == "type" and ctx.path[-1:] == ("stem",)):
        kind = "stem" if ctx.key == "type" else "block"
        for name in local_block_names(text, kind) + list(base_blocks):
            if name not in values:
                values.append(name)
        if inside_layers and ctx.key == "block":
            values = [v for v in values if v not in ("conv7x7", "deep")]
    about = describe_key(text, path) or ""
    docs = _block_docs(text) if ctx.key == "block" or (ctx.key == "type" and ctx.path[-1:] == ("stem",)) else {}
    out = []
    for v in values:
        label = "true" if v is True else "false" if v is False else str(v)
        out.append(Candidate(label, False, docs.get(label) or about))
    return out


def _block_docs(text: str) -> dict[str, str]:
    """Block type -> its one-line doc: the built-in ones, and those the text declares."""
    out = {name: b.description for name, b in builtin_blocks().items()}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("blocks"), dict):
        for name, body in data["blocks"].items():
            if isinstance(body, dict) and isinstance(body.get("doc"), str):
                out[str(name)] = body["doc"]
    return out


# -- hover --------------------------------------------------------------------------------------------

def _human(n: int) -> str:
    for unit, size in (("G", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def shape_text(shape) -> str:
    return "x".join(map(str, shape)) if shape else "?"


_shape = shape_text


def _rf(rf: dict | None):
    """The receptive field shown: its size, or where a deformable conv makes it data-dependent
    the lower-bound text (``>= 427, deformable``), never the bare number."""
    rf = rf or {}
    return ir.format_rf(rf) if rf.get("deformable") else rf.get("size")


def stage_rows(compiled: Compiled) -> list[dict]:
    """The stem and every stage: name, type, output shape, stride, dilation, RF, params, MACs."""
    g = compiled.graph
    rows = []
    stem = g.graph["stem"]
    rows.append({"name": "stem", "index": -1, "type": stem["block"], "shape": stem["shape"], "stride": stem["stride"],
                 "dilation": stem["dilation"], "rf": _rf(stem["rf"]), "params": stem["params"], "macs": stem["macs"]})
    for st in g.graph["stages"]:
        rows.append({"name": st["name"], "index": st["index"], "type": f"{st['block']} x{st['blocks']}",
                     "shape": st["shape"], "stride": st["stride"], "dilation": st["dilation"],
                     "dilations": st["dilations"], "rf": _rf(st["rf"]), "params": st["params"], "macs": st["macs"]})
    return rows


def row_text(row: dict) -> str:
    """One line of the stage table: ``layer2 bottleneck x4: 512x28x28 /8 d1 RF 91, 1.22M params, 1.03G MACs``."""
    return (f"{row['name']} {row['type']}: {_shape(row['shape'])} /{row['stride']} d{row['dilation']} "
            f"RF {row['rf']}, {_human(row['params'])} params, {_human(row['macs'])} MACs")


def _table(rows: list[dict], first: str = "stage") -> str:
    out = [f"| {first} | type | output | stride | dilation | RF | params | MACs |",
           "|---|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['type']} | {_shape(r['shape'])} | {r['stride']} | {r['dilation']} | "
                   f"{r['rf']} | {r['params']:,} | {r['macs']:,} |")
    return "\n".join(out)


def _input_text(compiled: Compiled) -> str:
    return _shape(compiled.graph.nodes[ir.INPUT][ir.META]["shape"])


def _stage_hover(compiled: Compiled, row: dict) -> str:
    dil = row.get("dilations")
    lines = [f"**{row['name']}** ({row['type']}) at input {_input_text(compiled)}", "",
             f"- output shape: `{_shape(row['shape'])}`",
             f"- stride: {row['stride']}",
             f"- dilation: {row['dilation']}" + (f" (blocks: {', '.join(map(str, dil))})" if dil and len(set(dil)) > 1
                                                else ""),
             f"- receptive field: {row['rf']} px",
             f"- parameters: {row['params']:,}",
             f"- MACs: {row['macs']:,}"]
    return "\n".join(lines)


def _layer_rows(compiled: Compiled, nodes: list[str]) -> list[dict]:
    g = compiled.graph
    out = []
    for n in nodes:
        m = g.nodes[n][ir.META]
        out.append({"name": n, "type": g.nodes[n][ir.OP], "shape": m.get("shape"), "stride": m.get("stride"),
                    "dilation": m.get("dilation"), "rf": _rf(m.get("rf")),
                    "params": m.get("params", 0), "macs": m.get("macs", 0)})
    return out


def _limited(rows: list[dict], limit: int = 12) -> tuple[list[dict], str]:
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], f"\n\n... and {len(rows) - limit} more"


def hover(text: str, line: int, char: int, compiled: Compiled | None) -> str | None:
    """Markdown for the key or value at the cursor: what the key means, and for a stage, the stem,
    a block type or a layer of a block, its analysis at the spec's input size."""
    spot = spot_at(text, line, char)
    if spot is None:
        return None
    path = spot.path
    parts: list[str] = []
    if compiled is not None:
        analysis = _analysis(compiled, stage_rows(compiled), path, bool(re.search(r"^backbone\s*:", text, re.M)))
        if analysis:
            parts.append(analysis)
    about = describe_key(text, path) if path and isinstance(path[-1], str) else None
    if about:
        name = ".".join(str(p) for p in path if not isinstance(p, int))
        parts.append(f"`{name}`: {about}")
    return "\n\n---\n\n".join(parts) if parts else None


def _analysis(compiled: Compiled, rows: list[dict], path: tuple, shorthand: bool) -> str | None:
    g = compiled.graph
    spec = compiled.spec
    if path[:1] == ("stages",) and len(path) >= 2 and isinstance(path[1], int):
        i = path[1]
        if 0 <= i < len(g.graph["stages"]):
            return _stage_hover(compiled, rows[i + 1])
    if path[:1] == ("stem",):
        return _stage_hover(compiled, rows[0])
    if path[:1] in (("stages",), ("backbone",)) or (path == () and shorthand):
        title = f"**{g.graph['name']}** at input {_input_text(compiled)}: {g.graph['params']:,} parameters, " \
                f"{g.graph['macs']:,} MACs"
        return title + "\n\n" + _table(rows)
    if path[:1] == ("blocks",) and len(path) >= 2:
        name = str(path[1])
        block = spec.blocks.get(name)
        if block is None:
            return None
        layer_path = _layer_path(path)
        if layer_path is not None:
            span = block.doc.span(layer_path)
            nodes = [n for n in ir.topological_order(g) if g.nodes[n].get(ir.DEF_SPAN) == span]
            if not nodes:
                return f"layer of block '{name}': not used by any stage"
            shown, more = _limited(_layer_rows(compiled, nodes))
            return (f"**{name}** layer, {len(nodes)} instance{'s' if len(nodes) != 1 else ''} at input "
                    f"{_input_text(compiled)}\n\n" + _table(shown, "layer") + more)
        return _block_hover(compiled, name, block)
    return None


def _layer_path(path: tuple) -> tuple | None:
    """The path of the innermost layer item on ``path`` (``blocks.b.layers.3`` or a seq member)."""
    best = None
    for i in range(3, len(path)):
        if path[i - 1] == "layers" and isinstance(path[i], int):
            best = path[: i + 1]
    return best


def _block_hover(compiled: Compiled, name: str, block) -> str:
    g = compiled.graph
    by_scope: dict[str, list[str]] = {}
    for n in ir.topological_order(g):
        if n != ir.INPUT and g.nodes[n][ir.BLOCK_TYPE] == name:
            by_scope.setdefault(g.nodes[n][ir.SCOPE], []).append(n)
    rows = []
    for scope, nodes in by_scope.items():
        out = g.nodes[nodes[-1]][ir.META]
        rows.append({"name": scope, "type": name, "shape": out.get("shape"), "stride": out.get("stride"),
                     "dilation": max(g.nodes[n][ir.META].get("dilation", 1) for n in nodes),
                     "rf": _rf(out.get("rf")),
                     "params": sum(g.nodes[n][ir.META].get("params", 0) for n in nodes),
                     "macs": sum(g.nodes[n][ir.META].get("macs", 0) for n in nodes)})
    head = f"**{name}** ({block.kind}){': ' + block.description if block.description else ''}"
    params = ", ".join(f"{p.name}: {p.type.__name__}" for p in block.params.values())
    if params:
        head += f"\n\nparameters: {params}"
    if not rows:
        return head + "\n\nnot used by any stage"
    shown, more = _limited(rows)
    return head + f"\n\n{len(rows)} instance{'s' if len(rows) != 1 else ''} at input {_input_text(compiled)}\n\n" \
        + _table(shown, "block") + more


# -- go to definition ---------------------------------------------------------------------------------

@dataclass
class Target:
    path: str  # a file system path
    line: int = 0
    char: int = 0
    end_char: int = 0


def builtin_block_files() -> list[Path]:
    root = resources.files("graphres") / "blocks"
    return sorted(Path(str(f)) for f in root.iterdir() if f.name.endswith(".yaml"))


def is_builtin_block_file(path: str) -> bool:
    """Whether ``path`` is one of graphres' own ``blocks/*.yaml`` (block types, not a spec)."""
    return any(is_same_file(str(f), path) for f in builtin_block_files())


def _block_key(path: Path | str, text: str | None, name: str) -> Target | None:
    try:
        text = Path(path).read_text(encoding="utf-8") if text is None else text
        doc = parse_yaml(text, str(path))
    except (OSError, UnicodeDecodeError, SpecError):
        return None
    span = doc.key_spans.get(("blocks", name))
    if span is None:
        return None
    return Target(str(path), span.line - 1, span.col - 1, span.col - 1 + span.length)


def _bases(path: Path, text: str | None) -> list[Path]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8") if text is None else text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    bases = data.get("_base_") if isinstance(data, dict) else None
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        return []
    return [_base_file(path.parent, b) for b in bases if isinstance(b, str)]


def _base_file(folder: Path, base: str) -> Path:
    """The file a ``_base_`` entry names: a path next to the spec, or a spec name (``resnet50``)."""
    named = resolve_name(base, folder)
    return (named[0] if named else folder / base).resolve()


def base_chain(path: str, text: str) -> list[Path]:
    """Every ``_base_`` file this one inherits from, nearest first (cycles followed once)."""
    seen: list[Path] = []
    todo = _bases(Path(path), text)
    while todo and len(seen) < 64:
        p = todo.pop(0)
        if p in seen or not p.is_file():
            continue
        seen.append(p)
        todo += _bases(p, None)
    return seen


def base_block_names(path: str, text: str) -> list[str]:
    names: list[str] = []
    for base in base_chain(path, text):
        try:
            names += [n for n in local_block_names(base.read_text(encoding="utf-8")) if n not in names]
        except (OSError, UnicodeDecodeError):
            continue
    return names


def definition(path: str, text: str, line: int, char: int) -> Target | None:
    """Where the block type, stem type or ``_base_`` file under the cursor is defined."""
    spot = spot_at(text, line, char)
    if spot is None or spot.on_key or not isinstance(spot.value, str):
        return None
    p = spot.path
    if p[:1] == ("_base_",):
        target = _base_file(Path(path).parent, spot.value)
        return Target(str(target)) if target.is_file() else None
    is_block = (p[-1:] == ("block",) or (len(p) >= 2 and p[-2] == "block" and isinstance(p[-1], int))
                or p == ("stem", "type"))
    if not is_block:
        return None
    name = spot.value
    found = _block_key(path, text, name)  # in this file: the buffer's own text
    if found:
        return found
    for base in base_chain(path, text):
        found = _block_key(base, None, name)
        if found:
            return found
    for f in builtin_block_files():
        found = _block_key(f, None, name)
        if found:
            return found
    return None


# -- diagnostics in other files -----------------------------------------------------------------------

def is_same_file(span_file: str, path: str) -> bool:
    return os.path.normpath(os.path.abspath(span_file)) == os.path.normpath(os.path.abspath(path))
