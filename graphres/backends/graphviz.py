"""Backend: the graph IR -> a Graphviz diagram (DOT source; SVG, PNG or PDF through the ``dot`` program).

The drawing is built as a separate :class:`graphviz.Digraph` and never mutates the IR. Two levels:
``stage`` draws the input, the stem, one box per stage and the feature outputs; ``block`` draws one
cluster per stage with one box per block instance, runs of identical consecutive blocks folded into
one box (``bottleneck x5``). Every piece of text goes through :func:`_label`, so spec names with
quotes, ``<``, ``&``, backslashes or newlines stay text. The same graph gives byte-identical DOT:
everything is walked in :func:`graphres.ir.topological_order` or list order, never set order.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import graphviz
import networkx as nx

from .. import ir
from ..diagnostics import DotNotFoundError
from ..fileio import write_atomic

LEVELS = ("stage", "block")
RANKDIRS = ("TB", "LR", "BT", "RL")
SOURCE_FORMATS = ("dot", "gv")  # written as DOT source, no Graphviz program needed
FONT = "Helvetica"  # a PostScript name every renderer maps to an installed sans (Liberation/DejaVu/Arial)

INSTALL_HINT = ("Graphviz's 'dot' program was not found on PATH; install Graphviz "
                "(Debian/Ubuntu: apt-get install -y graphviz, macOS: brew install graphviz) "
                "or use --format dot to write the DOT source, which needs no Graphviz program")

# colours: frozen parts are gray, trainable stages light blue, outputs light green
_FROZEN_FILL = "#d9d9d9"
_FROZEN_CLUSTER = "#efefef"
_STAGE_FILL = "#dbe8f6"
_BLOCK_FILL = "#ffffff"
_CLUSTER_FILL = "#f5f9fd"
_OUTPUT_FILL = "#d6eed5"
_INPUT_FILL = "#fff2cc"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass
class _Unit:
    """One drawn box: a set of IR nodes (the input, the stem, a stage, or a run of equal blocks)."""

    id: str
    kind: str  # "input", "stem", "stage", "block"
    nodes: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)  # block instances, in order
    stage: int | None = None


def to_dot(graph: nx.DiGraph, level: str = "block", rankdir: str = "TB") -> str:
    """Return Graphviz DOT source for the IR at level 'stage' or 'block'."""
    return _build(graph, level, rankdir).source


def render(graph: nx.DiGraph, output: str | Path, level: str = "block", fmt: str | None = None,
           rankdir: str = "TB") -> Path:
    """Write the diagram to ``output`` and return its path.

    ``fmt`` defaults to the file's extension (svg, png, pdf, dot). ``dot`` writes the DOT source and
    needs no Graphviz program; the others run ``dot`` and raise :class:`DotNotFoundError` when it is
    missing. The file is written atomically: on any error no partial file is left behind.
    """
    output = Path(output)
    fmt = _format_of(output, fmt)
    digraph = _build(graph, level, rankdir)
    if fmt in SOURCE_FORMATS:
        data = digraph.source.encode("utf-8")
    else:
        if shutil.which("dot") is None:
            raise DotNotFoundError(INSTALL_HINT)
        try:
            data = digraph.pipe(format=fmt, engine="dot")
        except graphviz.ExecutableNotFound:
            raise DotNotFoundError(INSTALL_HINT) from None
    write_atomic(output, data)
    return output


def _format_of(output: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = output.suffix
        if not fmt:
            raise ValueError(f"cannot tell the diagram format from '{output}' (no extension); "
                             f"give one of svg, png, pdf, dot")
    fmt = fmt.lower().lstrip(".")
    if fmt not in SOURCE_FORMATS and fmt not in graphviz.FORMATS:
        raise ValueError(f"unknown diagram format '{fmt}'; use svg, png, pdf or dot")
    return fmt


# ---------------------------------------------------------------------------------------------
# building the drawing


def _build(g: nx.DiGraph, level: str, rankdir: str) -> graphviz.Digraph:
    if level not in LEVELS:
        raise ValueError(f"unknown diagram level '{level}'; use 'stage' or 'block'")
    if rankdir not in RANKDIRS:
        raise ValueError(f"unknown rankdir '{rankdir}'; use one of {', '.join(RANKDIRS)}")
    order = ir.topological_order(g)
    units, unit_of = _units(g, order, level)
    stages = g.graph.get("stages", [])
    frozen = g.graph.get("frozen_stages", -1)
    if frozen is None:
        frozen = -1

    name = str(g.graph.get("name") or "")
    dg = graphviz.Digraph(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "graphres",
        graph_attr={"rankdir": rankdir, "label": _label(*_title_lines(g, name)), "labelloc": "t",
                    "fontname": FONT, "fontsize": "16", "nodesep": "0.4", "ranksep": "0.45",
                    **({"compound": "true"} if level == "block" else {})},
        node_attr={"fontname": FONT, "fontsize": "11", "shape": "box", "style": "rounded,filled",
                   "fillcolor": _BLOCK_FILL, "color": "#4d4d4d", "margin": "0.15,0.06"},
        edge_attr={"fontname": FONT, "fontsize": "9", "color": "#4d4d4d", "fontcolor": "#333333"},
    )

    for unit in units:
        if unit.kind == "input":
            dg.node(unit.id, _label("input", _shape(g, unit.nodes[-1])), shape="oval", fillcolor=_INPUT_FILL)
        elif unit.kind == "stem":
            dg.node(unit.id, _label(*_stem_lines(g, unit, level)),
                    fillcolor=_FROZEN_FILL if frozen >= 0 else _STAGE_FILL)
        elif unit.kind == "stage":
            st = stages[unit.stage]
            dg.node(unit.id, _label(*_stage_lines(g, st, unit.stage < frozen)),
                    fillcolor=_FROZEN_FILL if unit.stage < frozen else _STAGE_FILL)
    if level == "block":
        for st in stages:
            is_frozen = st["index"] < frozen
            with dg.subgraph(name=f"cluster_s{st['index']}") as sub:
                sub.attr(label=_label(*_stage_lines(g, st, is_frozen)), style="rounded,filled",
                         fillcolor=_FROZEN_CLUSTER if is_frozen else _CLUSTER_FILL,
                         color="#7f7f7f", fontname=FONT, fontsize="12", labeljust="l")
                for unit in units:
                    if unit.kind == "block" and unit.stage == st["index"]:
                        sub.node(unit.id, _label(*_block_lines(g, st, unit)),
                                 fillcolor=_FROZEN_FILL if is_frozen else _BLOCK_FILL)

    by_id = {u.id: u for u in units}
    for tail, head, label in _edges(g, order, unit_of):
        attrs = {"weight": "10"}  # keep the main path straight; the output marks go to the side
        if level == "block":
            # an edge between stages ends at the cluster's border, clear of the cluster's label
            t, h = by_id[tail], by_id[head]
            if t.kind == "block" and t.stage != h.stage:
                attrs["ltail"] = f"cluster_s{t.stage}"
            if h.kind == "block" and h.stage != t.stage:
                attrs["lhead"] = f"cluster_s{h.stage}"
        dg.edge(tail, head, label=_label(label), **attrs)

    for k, out in enumerate(g.graph.get("outputs", [])):
        node = out["node"]
        stride = g.nodes[node][ir.META].get("stride")
        text = f"out[{k}]: C{out['channels']}" + (f" /{stride}" if stride is not None else "")
        mark = f"out{k}"
        dg.node(mark, _label(text), shape="cds", style="filled", fillcolor=_OUTPUT_FILL)
        dg.edge(unit_of[node], mark, label=_label(_shape(g, node)), style="dashed")
        if level == "stage":
            with dg.subgraph() as row:  # the mark beside its stage
                row.attr(rank="same")
                row.node(unit_of[node])
                row.node(mark)
    return dg


def _units(g: nx.DiGraph, order: list[str], level: str) -> tuple[list[_Unit], dict[str, str]]:
    """Group the IR nodes into drawn boxes; returns the boxes in drawing order and node -> box id."""
    units: list[_Unit] = []
    by_id: dict[str, _Unit] = {}
    unit_of: dict[str, str] = {}

    def unit(uid: str, kind: str, stage: int | None) -> _Unit:
        if uid not in by_id:
            by_id[uid] = _Unit(uid, kind, stage=stage)
            units.append(by_id[uid])
        return by_id[uid]

    # block instances per stage, in order, with their nodes
    scopes: dict[int, list[str]] = {}
    scope_nodes: dict[str, list[str]] = {}
    for n in order:
        d = g.nodes[n]
        stage = d.get(ir.STAGE)
        if d[ir.OP] == "input" or stage is None:
            u = unit("input", "input", None)
        elif stage < 0:
            u = unit("stem", "stem", -1)
        elif level == "stage":
            u = unit(f"s{stage}", "stage", stage)
        else:
            scope = d[ir.SCOPE]
            if scope not in scope_nodes:
                scope_nodes[scope] = []
                scopes.setdefault(stage, []).append(scope)
            scope_nodes[scope].append(n)
            continue
        u.nodes.append(n)
        unit_of[n] = u.id
    if level == "block":
        for stage in sorted(scopes):
            run: list[str] = []
            start = 0
            for k, scope in enumerate(scopes[stage] + [None]):
                if run and (scope is None or
                            _signature(g, scope_nodes[scope]) != _signature(g, scope_nodes[run[0]])):
                    u = unit(f"s{stage}_{start}", "block", stage)
                    u.scopes = run
                    for s in run:
                        u.nodes.extend(scope_nodes[s])
                        for n in scope_nodes[s]:
                            unit_of[n] = u.id
                    run = []
                if scope is not None:
                    if not run:
                        start = k
                    run.append(scope)
    return units, unit_of


def _signature(g: nx.DiGraph, nodes: list[str]) -> tuple:
    """What makes two block instances the same box: their layers with the scope prefix stripped."""
    scope = g.nodes[nodes[0]][ir.SCOPE]
    local = {n: n[len(scope) + 1:] if n.startswith(scope + ".") else n for n in nodes}
    sig = []
    for n in nodes:
        d = g.nodes[n]
        inputs = tuple(local.get(s, "<in>") for s in ir.inputs_of(g, n))
        attrs = tuple(sorted((k, repr(v)) for k, v in d[ir.ATTRS].items()))
        sig.append((local[n], d[ir.OP], attrs, d.get(ir.IN_CH), d.get(ir.OUT_CH), d.get(ir.BLOCK_TYPE), inputs))
    return tuple(sig)


def _edges(g: nx.DiGraph, order: list[str], unit_of: dict[str, str]) -> list[tuple[str, str, str]]:
    """One edge per pair of boxes that an IR edge joins, labelled with the tensor's shape."""
    seen: set[tuple[str, str]] = set()
    out = []
    for n in order:
        for src in ir.inputs_of(g, n):
            key = (unit_of[src], unit_of[n])
            if key[0] != key[1] and key not in seen:
                seen.add(key)
                out.append((key[0], key[1], _shape(g, src)))
    return out


# ---------------------------------------------------------------------------------------------
# label text


def _title_lines(g: nx.DiGraph, name: str) -> list[str]:
    size = g.graph.get("input_size")
    facts = []
    if "params" in g.graph:
        facts.append(f"{_count(g.graph['params'])} params")
    if "macs" in g.graph:
        size_text = f" at {size[0]}x{size[1]}" if size else ""
        facts.append(f"{_count(g.graph['macs'])} MACs{size_text}")
    frozen = g.graph.get("frozen_stages", -1)
    if frozen is not None and frozen >= 0:
        names = ["stem"] + [st["name"] for st in g.graph.get("stages", []) if st["index"] < frozen]
        facts.append(f"frozen: {', '.join(names)}")
    return [name or "graphres", ", ".join(facts)] if facts else [name or "graphres"]


def _stem_lines(g: nx.DiGraph, unit: _Unit, level: str) -> list[str]:
    block = g.graph.get("stem", {}).get("block") or g.nodes[unit.nodes[0]].get(ir.BLOCK_TYPE)
    frozen = g.graph.get("frozen_stages", -1)
    last = unit.nodes[-1]
    lines = [f"stem: {block}" + (" (frozen)" if frozen is not None and frozen >= 0 else "")]
    if level == "block":
        layers = [_layer_text(g, n) for n in unit.nodes if g.nodes[n][ir.OP] in ("conv", "maxpool", "avgpool")]
        lines.extend(_wrap(layers, 3))
    lines.append(_join(_shape(g, last), _stride_text(g, last)))
    lines.append(f"{_count(_params(g, unit.nodes))} params")
    return lines


def _stage_lines(g: nx.DiGraph, st: dict, frozen: bool) -> list[str]:
    nodes = [n for n in g if g.nodes[n].get(ir.STAGE) == st["index"]]
    dil = list(dict.fromkeys(st.get("dilations") or []))
    dil_text = (f"dilation {dil[0]}" if len(dil) == 1 else
                f"dilations {','.join(map(str, st['dilations']))}" if dil else "")
    stride = st.get("stride", g.nodes[st["output"]][ir.META].get("stride"))
    return [f"{st['name']}: {st['block']} x{st['blocks']}" + (" (frozen)" if frozen else ""),
            _join(f"{st['channels']} ch", f"output stride {stride}" if stride is not None else "", dil_text),
            f"{_count(_params(g, nodes))} params"]


def _block_lines(g: nx.DiGraph, st: dict, unit: _Unit) -> list[str]:
    first, last, count = unit.scopes[0], unit.scopes[-1], len(unit.scopes)
    if count == 1:
        title = f"{first}: {st['block']}"
    else:
        stage_name = st["name"]
        tail = last[len(stage_name) + 1:] if last.startswith(stage_name + ".") else last
        title = f"{first}-{tail}: {st['block']} x{count}"
    out_node = _scope_nodes(g, unit, last)[-1]
    in_nodes = _scope_inputs(g, unit, first)
    extras = []
    if in_nodes:
        in_stride = g.nodes[in_nodes[0]][ir.META].get("stride")
        out_stride = g.nodes[_scope_nodes(g, unit, first)[-1]][ir.META].get("stride")
        if in_stride and out_stride and out_stride != in_stride:
            extras.append(f"stride {out_stride // in_stride}")
    blocks = [int(s.rsplit(".", 1)[1]) for s in unit.scopes if s.rsplit(".", 1)[-1].isdigit()]
    dilations = st.get("dilations") or []
    dils = list(dict.fromkeys(dilations[b] for b in blocks if b < len(dilations)))
    if dils and dils != [1]:
        extras.append(f"dilation {','.join(map(str, dils))}")
    lines = [title, _join(_shape(g, out_node), *extras)]
    shortcut = [_layer_text(g, n) for n in _scope_nodes(g, unit, first)
                if _local(g, n).startswith("downsample.") and g.nodes[n][ir.OP] in ("conv", "avgpool", "maxpool")]
    if shortcut:
        lines.append("downsample: " + ", ".join(shortcut))
    params = _params(g, unit.nodes)
    if count > 1:
        lines.append(f"{_count(params)} params ({_count(params // count)} each)")
    else:
        lines.append(f"{_count(params)} params")
    return lines


def _scope_nodes(g: nx.DiGraph, unit: _Unit, scope: str) -> list[str]:
    return [n for n in unit.nodes if g.nodes[n][ir.SCOPE] == scope]


def _scope_inputs(g: nx.DiGraph, unit: _Unit, scope: str) -> list[str]:
    inside = set(_scope_nodes(g, unit, scope))
    return [s for n in _scope_nodes(g, unit, scope) for s in ir.inputs_of(g, n) if s not in inside]


def _local(g: nx.DiGraph, n: str) -> str:
    scope = g.nodes[n][ir.SCOPE]
    return n[len(scope) + 1:] if scope and n.startswith(scope + ".") else n


def _layer_text(g: nx.DiGraph, n: str) -> str:
    d = g.nodes[n]
    a = d[ir.ATTRS]
    if d[ir.OP] == "conv":
        text = f"conv{a['kernel']}x{a['kernel']}"
        text += f" s{a['stride']}" if a.get("stride", 1) != 1 else ""
        text += f" d{a['dilation']}" if a.get("dilation", 1) != 1 else ""
        text += f" g{a['groups']}" if a.get("groups", 1) != 1 else ""
        return text
    if d[ir.OP] in ("maxpool", "avgpool"):
        stride = a.get("stride") if a.get("stride") is not None else a["kernel"]
        return f"{d[ir.OP]}{a['kernel']}x{a['kernel']}" + (f" s{stride}" if stride != 1 else "")
    return str(d[ir.OP])


def _shape(g: nx.DiGraph, n: str) -> str:
    shape = g.nodes[n][ir.META].get("shape")
    if shape is None:
        return f"{g.nodes[n].get(ir.OUT_CH)} ch"
    return "x".join(str(v) for v in shape)


def _stride_text(g: nx.DiGraph, n: str) -> str:
    stride = g.nodes[n][ir.META].get("stride")
    return f"output stride {stride}" if stride is not None else ""


def _params(g: nx.DiGraph, nodes: list[str]) -> int:
    return sum(g.nodes[n][ir.META].get("params", 0) or 0 for n in nodes)


def _count(value: int) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.{2 if suffix != 'K' else 1}f}{suffix}"
    return str(value)


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _wrap(items: list[str], per_line: int) -> list[str]:
    return [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]


def _label(*lines: object) -> graphviz.quoting.NoHtml:
    """Plain label text for DOT: every character shows as itself.

    Backslashes are doubled (so ``\\N`` or ``\\l`` in a name are not Graphviz escapes), ``&`` becomes
    ``&amp;`` (so ``&lt;`` in a name is not an entity), newlines become centred line breaks and other
    control characters spaces. ``nohtml`` stops the graphviz package from treating ``<...>`` as an
    HTML-like label; it quotes the result and escapes the double quotes itself.
    """
    out = []
    for line in lines:
        for part in str(line).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            out.append(_CONTROL.sub(" ", part).replace("\\", "\\\\").replace("&", "&amp;"))
    return graphviz.nohtml("\\n".join(out))
