"""Backend: the graph IR -> a Graphviz diagram (DOT source; SVG, PNG or PDF through the ``dot`` program).

The drawing is built as a separate :class:`graphviz.Digraph` and never mutates the IR. Three levels
of detail:

``stage``
    the input, the stem, one box per stage and the feature outputs;
``block``
    one cluster per stage with one box per block instance;
``layer``
    one cluster per stage, one cluster per block instance inside it, one node per layer (conv, norm,
    activation, pool, add), with the identity and downsample shortcuts drawn as such.

At every level, runs of identical consecutive blocks are folded into one (``layer3.1-5: bottleneck
x5``: one box at block level, one cluster drawn once at layer level); ``expand`` names the stages
to unfold (``all`` for every stage; at stage level an expanded stage shows its blocks).

Every piece of user text goes through :func:`_label`, so spec names with quotes, ``<``, ``&``,
backslashes or newlines stay text; the one HTML-like label, the legend, holds only fixed text. The
same graph gives byte-identical DOT: everything is walked in :func:`graphres.ir.topological_order`
or list order, never set order.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import graphviz
import networkx as nx

from .. import ir
from ..ops import OPS
from ..diagnostics import DotNotFoundError, did_you_mean
from ..fileio import write_atomic

LEVELS = ("stage", "block", "layer")
RANKDIRS = ("TB", "LR", "BT", "RL")
THEMES = ("light", "dark")
SOURCE_FORMATS = ("dot", "gv")  # written as DOT source, no Graphviz program needed
# A PostScript name: Graphviz writes it to SVG as "Helvetica,sans-Serif", which every viewer can
# show (Helvetica, Arial or its sans default); for PNG and PDF, Pango maps it to the default sans,
# DejaVu Sans on Debian and Ubuntu (fonts-dejavu-core comes with fontconfig, which Graphviz needs;
# `dot -v` says "Helvetica resolved to DejaVu Sans"), and the layout is measured with that font,
# which is wider than Helvetica, so text in an SVG viewer never overflows its box.
FONT = "Helvetica"

INSTALL_HINT = ("Graphviz's 'dot' program was not found on PATH; install Graphviz "
                "(Debian/Ubuntu: apt-get install -y graphviz, macOS: brew install graphviz) "
                "or use --format dot to write the DOT source, which needs no Graphviz program")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:\-]+")


def _windowed(g: nx.DiGraph, n: str) -> bool:
    """A conv or pool: an op with a sliding window (it can change the shape)."""
    op = OPS.get(g.nodes[n][ir.OP])
    return op is not None and op.window(g.nodes[n][ir.ATTRS]) is not None


def _shape_changing(g: nx.DiGraph, n: str) -> bool:
    op = OPS.get(g.nodes[n][ir.OP])
    return n == ir.INPUT or _windowed(g, n) or (op is not None and op.global_pool)


@dataclass(frozen=True)
class Theme:
    """The colours of one theme. Fills: trainable parts, frozen parts, outputs; edges: the main
    path, the identity shortcut, the downsample shortcut and the output marks."""

    background: str
    text: str
    muted: str  # edge labels
    line: str  # node borders, main-path edges
    cluster_line: str
    input: str
    stage: str  # stem and stage boxes
    block: str  # block boxes and layer nodes
    cluster: str  # stage clusters
    run: str  # block clusters inside a stage cluster (layer level)
    frozen: str
    frozen_cluster: str
    frozen_run: str
    output: str
    output_line: str
    shortcut: str
    downsample: str


THEME = {
    "light": Theme(background="#ffffff", text="#000000", muted="#333333", line="#4d4d4d", cluster_line="#7f7f7f",
                   input="#fff2cc", stage="#dbe8f6", block="#ffffff", cluster="#f5f9fd", run="#ffffff",
                   frozen="#d9d9d9", frozen_cluster="#efefef", frozen_run="#e4e4e4",
                   output="#d6eed5", output_line="#3b7d3a", shortcut="#1f6fb2", downsample="#c45a00"),
    "dark": Theme(background="#1b1f24", text="#e6e6e6", muted="#c2c2c2", line="#a6adb4", cluster_line="#6e7681",
                  input="#5c4b16", stage="#1f3b5c", block="#2d333b", cluster="#22272e", run="#2a3038",
                  frozen="#4a4a4a", frozen_cluster="#303030", frozen_run="#3a3a3a",
                  output="#245238", output_line="#7bc88f", shortcut="#6cb6ff", downsample="#f0a050"),
}


def to_dot(graph: nx.DiGraph, level: str = "block", rankdir: str = "TB", expand: Iterable[str] = (),
           theme: str = "light", legend: bool = True) -> str:
    """Return Graphviz DOT source for the IR at level 'stage', 'block' or 'layer'.

    ``expand`` lists stage names (``layer3``) whose identical blocks are not folded, or ``all``.
    """
    return _build(graph, level, rankdir, expand, theme, legend).source


def render(graph: nx.DiGraph, output: str | Path, level: str = "block", fmt: str | None = None,
           rankdir: str = "TB", expand: Iterable[str] = (), theme: str = "light", legend: bool = True) -> Path:
    """Write the diagram to ``output`` and return its path.

    ``fmt`` defaults to the file's extension (svg, png, pdf, dot). ``dot`` writes the DOT source and
    needs no Graphviz program; the others run ``dot`` and raise :class:`DotNotFoundError` when it is
    missing. The file is written atomically: on any error no partial file is left behind. A bad
    level, rankdir, theme, format or stage name raises :class:`ValueError` before anything runs.
    """
    output = Path(output)
    fmt = _format_of(output, fmt)
    digraph = _build(graph, level, rankdir, expand, theme, legend)
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


def expanded_stages(graph: nx.DiGraph, expand: Iterable[str]) -> set[int]:
    """The indices of the stages named in ``expand`` (``all`` names every stage).

    Raises :class:`ValueError` with a did-you-mean hint for a name that is not a stage."""
    stages = graph.graph.get("stages", [])
    names = {st["name"]: st["index"] for st in stages}
    out: set[int] = set()
    for item in expand:
        for name in (part.strip() for part in str(item).split(",")):
            if not name:
                continue
            if name == "all":
                out.update(names.values())
            elif name in names:
                out.add(names[name])
            else:
                hint = did_you_mean(name, list(names) + ["all"])
                raise ValueError(f"cannot expand '{name}': no such stage" + (f"; {hint}" if hint else "") +
                                 f" (stages: {', '.join(names) or 'none'}, or all)")
    return out


# ---------------------------------------------------------------------------------------------
# planning: which IR nodes each drawn node stands for


@dataclass
class _Run:
    """Consecutive block instances of one stage drawn as one (folded when it has several)."""

    id: str  # "s2_1": stage 2, starting at its block 1
    stage: int
    scopes: list[str]  # block instances, in order
    nodes: list[str]  # the IR nodes of every instance, in topological order


@dataclass
class _Plan:
    level: str
    box: dict[str, str]  # IR node -> drawn node id
    runs: dict[int, list[_Run]]  # stage index -> its runs
    detail: dict[int, str]  # stage index -> "stage", "block" or "layer"
    run_of: dict[str, _Run]  # IR node -> its run (stage nodes only)
    scope_nodes: dict[str, list[str]]  # block instance -> its IR nodes
    stem: list[str]
    inputs: list[str]
    head: list[str]  # a classification head's layers (scope "head")


def _plan(g: nx.DiGraph, order: list[str], level: str, unfolded: set[int]) -> _Plan:
    stages = g.graph.get("stages", [])
    scope_nodes: dict[str, list[str]] = {}
    scopes: dict[int, list[str]] = {st["index"]: [] for st in stages}
    stem: list[str] = []
    inputs: list[str] = []
    head: list[str] = []
    for n in order:
        d = g.nodes[n]
        stage = d.get(ir.STAGE)
        if d[ir.OP] != "input" and d.get(ir.SCOPE) == "head":
            head.append(n)
        elif d[ir.OP] == "input" or stage is None:
            inputs.append(n)
        elif stage < 0:
            stem.append(n)
        else:
            scope = d[ir.SCOPE]
            if scope not in scope_nodes:
                scope_nodes[scope] = []
                scopes.setdefault(stage, []).append(scope)
            scope_nodes[scope].append(n)

    detail = {i: level for i in scopes}
    if level == "stage":
        detail.update({i: "block" for i in unfolded})
    reserved = {"input", "stem", "head", "legend"} | {f"out{k}" for k in range(len(g.graph.get("outputs", [])))}
    box: dict[str, str] = {n: "input" for n in inputs}
    for n in stem:
        box[n] = "stem" if level != "layer" else _node_id(g, n, reserved)
    for n in head:
        box[n] = "head" if level != "layer" else _node_id(g, n, reserved)
    runs: dict[int, list[_Run]] = {}
    run_of: dict[str, _Run] = {}
    for stage, stage_scopes in scopes.items():
        runs[stage] = []
        start = 0
        for k in range(1, len(stage_scopes) + 1):
            if (k < len(stage_scopes) and stage not in unfolded and
                    _signature(g, scope_nodes[stage_scopes[k]]) == _signature(g, scope_nodes[stage_scopes[start]])):
                continue
            members = stage_scopes[start:k]
            run = _Run(f"s{stage}_{start}", stage, members, [n for s in members for n in scope_nodes[s]])
            runs[stage].append(run)
            for n in run.nodes:
                run_of[n] = run
            start = k
        for run in runs[stage]:
            if detail[stage] == "stage":
                box.update({n: f"s{stage}" for n in run.nodes})
            elif detail[stage] == "block":
                box.update({n: run.id for n in run.nodes})
            else:  # one drawn node per layer of the run's first instance
                first = scope_nodes[run.scopes[0]]
                by_local = {_local(g, n): _node_id(g, n, reserved) for n in first}
                box.update({n: by_local[_local(g, n)] for n in run.nodes})
    return _Plan(level, box, runs, detail, run_of, scope_nodes, stem, inputs, head)


def _node_id(g: nx.DiGraph, n: str, reserved: set[str]) -> str:
    """A layer's drawn id: its state-dict path (``:`` is Graphviz's port separator, so ``#``
    stands for it), or ``node~<order>`` for a name that is not plain or would collide (a drawn
    plain name never contains ``~``, so the two forms cannot meet)."""
    if _SAFE_ID.fullmatch(n) and n not in reserved and not n.startswith("cluster"):
        return n.replace(":", "#")
    return f"node~{g.nodes[n][ir.ORDER]}"


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


@dataclass
class _Edge:
    tail: str
    head: str
    label: str
    kind: str  # "main", "shortcut" (identity), "downsample"


def _edges(g: nx.DiGraph, order: list[str], plan: _Plan) -> list[_Edge]:
    """One edge per pair of drawn nodes that an IR edge joins. Between boxes an edge is labelled
    with the tensor's shape; between layers only where the shape may change (after the input, a
    conv or a pool) or where the edge enters a block, so that a long chain of norms and
    activations does not repeat one shape on every edge."""
    seen: set[tuple[str, str]] = set()
    out = []
    box = plan.box
    for n in order:
        for port, src in enumerate(ir.inputs_of(g, n)):
            tail, head = box[src], box[n]
            if tail == head or (tail, head) in seen:
                continue
            run = plan.run_of.get(n)
            if run is not None and plan.run_of.get(src) is run and g.nodes[src][ir.SCOPE] != g.nodes[n][ir.SCOPE]:
                continue  # from one folded instance into the next: the run is drawn once
            seen.add((tail, head))
            kind, label = "main", _shape(g, src)
            if plan.level == "layer":
                kind = _edge_kind(g, src, n, port)
                crosses = g.nodes[src][ir.SCOPE] != g.nodes[n][ir.SCOPE]
                if kind == "shortcut":
                    label = "identity"
                elif kind == "downsample" and crosses:
                    label = "downsample"
                elif not _shape_changing(g, src) and not crosses:
                    label = ""
            out.append(_Edge(tail, head, label, kind))
    return out


def _edge_kind(g: nx.DiGraph, src: str, dst: str, port: int) -> str:
    """A residual add's later operands that enter the block (the previous block's output) are
    identity shortcuts, not a sum inside the block (ResNeSt's radix splits, a plugin's residual);
    layers named ``downsample.*`` are the projection shortcut (OpenMMLab's and torchvision's name
    for it)."""
    in_downsample = _local(g, src).startswith("downsample.") and g.nodes[src][ir.SCOPE] == g.nodes[dst][ir.SCOPE]
    if _local(g, dst).startswith("downsample.") or in_downsample:
        return "downsample"
    if port > 0 and OPS.get(g.nodes[dst][ir.OP]) is not None and OPS[g.nodes[dst][ir.OP]].symbol == "+" \
            and g.nodes[src][ir.SCOPE] != g.nodes[dst][ir.SCOPE]:
        return "shortcut"
    return "main"


# ---------------------------------------------------------------------------------------------
# building the drawing


def _build(g: nx.DiGraph, level: str, rankdir: str, expand: Iterable[str], theme: str,
           legend: bool) -> graphviz.Digraph:
    if level not in LEVELS:
        raise ValueError(f"unknown diagram level '{level}'; use 'stage', 'block' or 'layer'")
    if rankdir not in RANKDIRS:
        raise ValueError(f"unknown rankdir '{rankdir}'; use one of {', '.join(RANKDIRS)}")
    if theme not in THEME:
        raise ValueError(f"unknown theme '{theme}'; use one of {', '.join(THEMES)}")
    t = THEME[theme]
    unfolded = expanded_stages(g, expand)
    order = ir.topological_order(g)
    plan = _plan(g, order, level, unfolded)
    stages = g.graph.get("stages", [])
    outputs = g.graph.get("outputs", [])

    name = str(g.graph.get("name") or "")
    fontsizes = {"graph": "16", "node": "11", "edge": "9"} if level != "layer" else \
        {"graph": "16", "node": "10", "edge": "8"}
    dg = graphviz.Digraph(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "graphres",
        graph_attr={"rankdir": rankdir, "label": _label(*_title_lines(g, name)), "labelloc": "t",
                    "fontname": FONT, "fontsize": fontsizes["graph"], "fontcolor": t.text, "bgcolor": t.background,
                    "nodesep": "0.4" if level != "layer" else "0.25",
                    "ranksep": "0.45" if level != "layer" else "0.3",
                    **({"compound": "true"} if level != "stage" or unfolded else {})},
        node_attr={"fontname": FONT, "fontsize": fontsizes["node"], "fontcolor": t.text, "shape": "box",
                   "style": "rounded,filled", "fillcolor": t.block, "color": t.line,
                   "margin": "0.15,0.06" if level != "layer" else "0.1,0.03",
                   **({"height": "0.3"} if level == "layer" else {})},
        edge_attr={"fontname": FONT, "fontsize": fontsizes["edge"], "color": t.line, "fontcolor": t.muted,
                   "arrowsize": "0.7" if level == "layer" else "1"},
    )

    if plan.inputs:
        dg.node("input", _label("input", _shape(g, plan.inputs[-1])), shape="oval", fillcolor=t.input,
                **({"group": "main"} if level == "layer" else {}))
    stem_frozen = ir.is_frozen(g, -1)
    main_path = _main_path(g, plan) if level == "layer" else set()
    if plan.stem:
        if level == "layer":
            with dg.subgraph(name="cluster_stem") as sub:
                lines = _stem_lines(g, plan.stem, level)
                _cluster_attrs(sub, t, lines, stem_frozen, outer=True)
                _pad_label(sub, "cluster_stem", plan.box[plan.stem[0]], _text_width(lines, 12), rankdir)
                for n in plan.stem:
                    _layer_node(sub, g, n, plan.box[n], t, stem_frozen, n in main_path)
        else:
            dg.node("stem", _label(*_stem_lines(g, plan.stem, level)), fillcolor=t.frozen if stem_frozen else t.stage)

    for st in stages:
        i = st["index"]
        frozen = ir.is_frozen(g, i)
        runs = plan.runs.get(i, [])
        if plan.detail.get(i) == "stage":
            dg.node(f"s{i}", _label(*_stage_lines(g, st, frozen)), fillcolor=t.frozen if frozen else t.stage)
            continue
        with dg.subgraph(name=f"cluster_s{i}") as sub:
            stage_lines = _stage_lines(g, st, frozen)
            _cluster_attrs(sub, t, stage_lines, frozen, outer=True)
            for k, run in enumerate(runs):
                if plan.detail[i] == "block":
                    sub.node(run.id, _label(*_block_lines(g, st, run, plan, shortcut=True)),
                             fillcolor=t.frozen if frozen else t.block,
                             **_deformable_style([n for sc in run.scopes for n in plan.scope_nodes[sc]], g))
                    continue
                with sub.subgraph(name=f"cluster_{run.id}") as inner:
                    lines = _block_lines(g, st, run, plan, shortcut=False)
                    _cluster_attrs(inner, t, lines, frozen, outer=False, rankdir=rankdir)
                    width = _text_width(lines, 10)
                    if k == 0:  # the edge into the stage passes its header too
                        width = max(width, _text_width(stage_lines, 12))
                    first = plan.scope_nodes[run.scopes[0]]
                    _pad_label(inner, f"cluster_{run.id}", plan.box[first[0]], width, rankdir)
                    # plugins and layers using a block type, each a cluster: name -> (type, nodes)
                    plugins: dict[str, tuple[str, list[str]]] = {}
                    for n in first:
                        d = g.nodes[n]
                        if d.get(ir.PLUGIN):  # the plugin's type: its first node's
                            plugins.setdefault(d[ir.PLUGIN], (d[ir.BLOCK_TYPE], []))[1].append(n)
                        elif d.get(ir.USE):
                            plugins.setdefault(d[ir.USE][0], (d[ir.USE][1], []))[1].append(n)
                        else:
                            _layer_node(inner, g, n, plan.box[n], t, frozen, n in main_path)
                    for j, (name, (block, members)) in enumerate(plugins.items()):
                        _plugin_cluster(inner, g, f"cluster_{run.id}_p{j}", name, block, members, plan, t, frozen,
                                        main_path, rankdir)

    if plan.head:
        if level == "layer":
            with dg.subgraph(name="cluster_head") as sub:
                lines = _head_lines(g, plan.head)
                _cluster_attrs(sub, t, lines, False, outer=True)
                for n in plan.head:
                    _layer_node(sub, g, n, plan.box[n], t, False, n in main_path)
        else:
            dg.node("head", _label(*_head_lines(g, plan.head)), fillcolor=t.stage)

    # block boxes -> their stage's cluster, for edges that end at a cluster's border
    clusters = {run.id: f"cluster_s{i}" for i, runs in plan.runs.items() if plan.detail[i] == "block" for run in runs}
    edges = _edges(g, order, plan)
    for e in edges:
        attrs = {"weight": "10"}  # keep the main path straight; the output marks go to the side
        if e.kind == "shortcut":
            attrs = {"weight": "1", "style": "dashed", "color": t.shortcut, "fontcolor": t.shortcut}
        elif e.kind == "downsample":
            attrs = {"weight": "2", "color": t.downsample, "fontcolor": t.downsample}
        # an edge between stages drawn as block boxes ends at the cluster's border, clear of its label
        tail_cluster, head_cluster = clusters.get(e.tail), clusters.get(e.head)
        if tail_cluster and tail_cluster != head_cluster:
            attrs["ltail"] = tail_cluster
        if head_cluster and head_cluster != tail_cluster:
            attrs["lhead"] = head_cluster
        dg.edge(e.tail, e.head, label=_label(e.label) if e.label else None, **attrs)

    _draw_outputs(dg, g, plan, edges, clusters, t)

    if legend:
        frozen_any = stem_frozen or any(ir.is_frozen(g, st["index"]) for st in stages)
        kinds = {e.kind for e in edges}
        dg.node("legend", _legend(t, t.stage if level == "stage" else t.block, frozen_any, bool(outputs),
                                  "shortcut" in kinds, "downsample" in kinds,
                                  level != "stage" and bool(_deformable_style(order, g))),
                shape="plaintext", style="", margin="0")
    return dg


def _plugin_cluster(parent, g: nx.DiGraph, cid: str, name: str, block: str, members: list[str], plan, t: Theme,
                    frozen: bool, main_path: set, rankdir: str) -> None:
    """A plugin (an attention block at a slot of the block) or a layer using a block type (ResNeSt's
    ``conv2: split_attn``, an SE block) as its own cluster inside the block's: its module name and
    block type, parameters and MACs."""
    params = sum(g.nodes[n][ir.META].get("params", 0) for n in members)
    macs = sum(g.nodes[n][ir.META].get("macs", 0) for n in members)
    lines = [f"{name}: {block}", f"params {_si(params)}, MACs {_si(macs)}"]
    with parent.subgraph(name=cid) as sub:
        _cluster_attrs(sub, t, lines, frozen, outer=False, rankdir=rankdir)
        for n in members:
            _layer_node(sub, g, n, plan.box[n], t, frozen, n in main_path)


def _si(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _draw_outputs(dg: graphviz.Digraph, g: nx.DiGraph, plan: _Plan, edges: list[_Edge], clusters: dict[str, str],
                  t: Theme) -> None:
    """One green mark per ``out_indices`` output, beside the box or layer that produces it."""
    for k, out in enumerate(g.graph.get("outputs", [])):
        node = out["node"]
        mark = f"out{k}"
        dg.node(mark, _label(*_output_lines(g, k, out)), shape="cds", style="filled", fillcolor=t.output,
                color=t.output_line)
        box = plan.box[node]
        if plan.detail.get(g.nodes[node].get(ir.STAGE)) == "stage":
            dg.edge(box, mark, style="dotted", color=t.output_line)
            with dg.subgraph() as row:  # the mark beside its stage box
                row.attr(rank="same")
                row.node(box)
                row.node(mark)
            continue
        # inside a cluster, a rank=same would pull the box out of it: an invisible edge from the box's
        # predecessor puts the mark in the box's rank instead, beside it rather than one rank below
        feeder = next((e.tail for e in edges if e.head == box and e.kind == "main"), None)
        dg.edge(box, mark, style="dotted", color=t.output_line,
                **({"constraint": "false"} if feeder else {}),
                **({"ltail": clusters[box]} if box in clusters else {}))
        if feeder:
            dg.edge(feeder, mark, style="invis")


def _cluster_attrs(sub: graphviz.Digraph, t: Theme, lines: list[str], frozen: bool, outer: bool,
                   rankdir: str = "TB") -> None:
    if outer:
        fill = t.frozen_cluster if frozen else t.cluster
    else:
        fill = t.frozen_run if frozen else t.run
    # left to right, identity shortcuts arc over the blocks: a block's header goes below, out of their way
    below = {"labelloc": "b"} if not outer and rankdir in ("LR", "RL") else {}
    sub.attr(label=_label(*lines, align="l"), style="rounded,filled", fillcolor=fill, color=t.cluster_line,
             fontname=FONT, fontcolor=t.text, fontsize="12" if outer else "10", labeljust="l", **below)


def _pad_label(sub: graphviz.Digraph, cluster: str, first: str, width: float, rankdir: str) -> None:
    """Keep edges clear of a cluster's header at layer level.

    Graphviz draws an edge that enters a cluster straight through the cluster's label. An invisible
    node as large as the header, beside the cluster's first node in the same rank, moves that node
    (and, through ``group``, the whole main path) away from the header, which sits at the
    cluster's top left. Left to right, edges run below the header and need no pad."""
    if rankdir not in ("TB", "BT"):
        return
    pad = f"{cluster}_pad"
    sub.node(pad, "", style="invis", shape="box", fixedsize="true", width=f"{width:.2f}", height="0.1")
    with sub.subgraph() as row:
        row.attr(rank="same")
        row.edge(pad, first, style="invis")


def _text_width(lines: list[str], fontsize: int) -> float:
    """About how wide the lines are in inches (Helvetica's average advance is ~0.55 em)."""
    return max((len(line) for line in lines), default=0) * fontsize * 0.55 / 72 + 0.15


def _layer_node(sub: graphviz.Digraph, g: nx.DiGraph, n: str, node_id: str, t: Theme, stage_frozen: bool,
                main: bool) -> None:
    d = g.nodes[n]
    meta = d[ir.META]
    frozen = stage_frozen or (bool(meta.get("params")) and meta.get("trainable") is False)
    fill = t.frozen if frozen else t.block
    # the main path in one group: Graphviz keeps its edges straight, side branches go beside it
    group = {"group": "main"} if main else {}
    symbol = OPS[d[ir.OP]].symbol if d[ir.OP] in OPS else None
    if symbol:
        sub.node(node_id, _label(symbol), shape="circle", width="0.3", height="0.3",
                 fixedsize="true", fillcolor=fill, fontsize="12", **group)
    else:
        sub.node(node_id, _label(*_layer_lines(g, n)), fillcolor=fill, **group, **_deformable_style([n], g))


def _deformable_style(nodes: list[str], g: nx.DiGraph) -> dict[str, str]:
    """A deformable conv (its receptive field depends on the data) is drawn with a double border,
    at layer level on the conv itself and at block level on the blocks that hold one."""
    if any(g.nodes[n][ir.OP] in OPS and OPS[g.nodes[n][ir.OP]].data_dependent_rf for n in nodes):
        return {"peripheries": "2"}
    return {}


def _main_path(g: nx.DiGraph, plan: _Plan) -> set[str]:
    """The layers on each block's main path: from the block's output back along first operands.
    The rest (a downsample projection, a squeeze-and-excitation gate) are side branches."""
    main: set[str] = set()
    for nodes in [plan.stem] + list(plan.scope_nodes.values()):
        inside = set(nodes)
        n = nodes[-1] if nodes else None
        while n in inside and n not in main:
            main.add(n)
            operands = ir.inputs_of(g, n)
            n = operands[0] if operands else None
    return main




def _legend(t: Theme, trainable: str, frozen: bool, outputs: bool, shortcut: bool, downsample: bool,
            deformable: bool = False) -> str:
    """An HTML-like table of fixed text (nothing from the spec): fills, then edge styles."""
    def swatch(fill: str, text: str) -> str:
        return (f'<tr><td bgcolor="{fill}" color="{t.line}" border="1" width="22" height="12" fixedsize="true"></td>'
                f'<td align="left">{text}</td></tr>')

    def stroke(color: str, glyphs: str, text: str) -> str:
        return f'<tr><td><font color="{color}">{glyphs}</font></td><td align="left">{text}</td></tr>'

    rows = ['<tr><td colspan="2" align="left"><b>legend</b></td></tr>', swatch(trainable, "trainable")]
    if frozen:
        rows.append(swatch(t.frozen, "frozen (no gradients)"))
    if outputs:
        rows.append(swatch(t.output, "output (out_indices)"))
    rows.append(stroke(t.line, "&#8212;&#8212;&#8212;", "tensor, CxHxW"))
    if shortcut:
        rows.append(stroke(t.shortcut, "- - - -", "identity shortcut"))
    if downsample:
        rows.append(stroke(t.downsample, "&#8212;&#8212;&#8212;", "downsample shortcut"))
    if outputs:
        rows.append(stroke(t.output_line, "&#183; &#183; &#183; &#183;", "feature output"))
    if deformable:
        rows.append(stroke(t.line, "&#9552;&#9552;&#9552;", "deformable conv (double border)"))
    return ('<<table border="1" cellborder="0" cellspacing="2" cellpadding="2" '
            f'color="{t.cluster_line}" bgcolor="{t.background}">' + "".join(rows) + "</table>>")


# ---------------------------------------------------------------------------------------------
# label text


def _title_lines(g: nx.DiGraph, name: str) -> list[str]:
    size = g.graph.get(ir.G_ANALYSED_SIZE) or g.graph.get(ir.G_INPUT_SIZE)  # the size the figures are for
    facts = []
    if "params" in g.graph:
        facts.append(f"{_count(g.graph['params'])} params")
    if "macs" in g.graph:
        size_text = f" at {size[0]}x{size[1]}" if size else ""
        facts.append(f"{_count(g.graph['macs'])} MACs{size_text}")
    names = (["stem"] if ir.is_frozen(g, -1) else []) + [st["name"] for st in g.graph.get("stages", [])
                                                        if ir.is_frozen(g, st["index"])]
    if names:
        facts.append(f"frozen: {', '.join(names)}")
    return [name or "graphres", ", ".join(facts)] if facts else [name or "graphres"]


def _stem_lines(g: nx.DiGraph, nodes: list[str], level: str) -> list[str]:
    stem = g.graph.get("stem", {})
    block = stem.get("block") or g.nodes[nodes[0]].get(ir.BLOCK_TYPE)
    last = nodes[-1]
    lines = [f"stem: {block}" + (" (frozen)" if ir.is_frozen(g, -1) else "")]
    if level == "block":
        layers = [_layer_text(g, n) for n in nodes if _windowed(g, n)]
        lines.extend(_wrap(layers, 3))
    lines.append(_join(_shape(g, last), _stride_text(g, last)))
    lines.append(_join(_rf_text(stem.get("rf") or g.nodes[last][ir.META].get("rf")),
                       f"{_count(_params(g, nodes))} params"))
    return lines


def _head_lines(g: nx.DiGraph, nodes: list[str]) -> list[str]:
    """The classification head: its layers, the logits' size and its parameters."""
    head = g.graph.get("head") or {}
    classes = head.get("num_classes") or g.nodes[nodes[-1]][ir.OUT_CH]
    return [f"head: {' + '.join(_local(g, n) for n in nodes)}",
            f"{classes} classes, {_count(_params(g, nodes))} params"]


def _stage_lines(g: nx.DiGraph, st: dict, frozen: bool) -> list[str]:
    """A stage's box or cluster header: block type and count, output shape (channels first),
    output stride, dilation, receptive field and parameters."""
    nodes = [n for n in g if g.nodes[n].get(ir.STAGE) == st["index"]]
    dil = list(dict.fromkeys(st.get("dilations") or []))
    dil_text = (f"dilation {dil[0]}" if len(dil) == 1 else
                f"dilations {','.join(map(str, st['dilations']))}" if dil else "")
    stride = st.get("stride", g.nodes[st["output"]][ir.META].get("stride"))
    rf = st.get("rf") or g.nodes[st["output"]][ir.META].get("rf")
    params = st.get("params", _params(g, nodes))
    return [f"{st['name']}: {st['block']} x{st['blocks']}" + (" (frozen)" if frozen else ""),
            _join(_shape(g, st["output"]), f"output stride {stride}" if stride is not None else "", dil_text),
            _join(_rf_text(rf), f"{_count(params)} params")]


def _block_lines(g: nx.DiGraph, st: dict, run: _Run, plan: _Plan, shortcut: bool) -> list[str]:
    first, last, count = run.scopes[0], run.scopes[-1], len(run.scopes)
    if count == 1:
        title = f"{first}: {st['block']}"
    else:
        stage_name = st["name"]
        tail = last[len(stage_name) + 1:] if last.startswith(stage_name + ".") else last
        title = f"{first}-{tail}: {st['block']} x{count}"
    first_nodes = plan.scope_nodes[first]
    out_node = plan.scope_nodes[last][-1]
    inside = set(first_nodes)
    in_nodes = [s for n in first_nodes for s in ir.inputs_of(g, n) if s not in inside]
    extras = []
    if in_nodes:
        in_stride = g.nodes[in_nodes[0]][ir.META].get("stride")
        out_stride = g.nodes[first_nodes[-1]][ir.META].get("stride")
        if in_stride and out_stride and out_stride != in_stride:
            extras.append(f"stride {out_stride // in_stride}")
    blocks = [int(s.rsplit(".", 1)[1]) for s in run.scopes if s.rsplit(".", 1)[-1].isdigit()]
    dilations = st.get("dilations") or []
    dils = list(dict.fromkeys(dilations[b] for b in blocks if b < len(dilations)))
    if dils and dils != [1]:
        extras.append(f"dilation {','.join(map(str, dils))}")
    groups = max((g.nodes[n][ir.ATTRS].get("groups", 1) for n in first_nodes), default=1)
    if groups != 1:  # ResNeXt
        extras.append(f"groups {groups}")
    lines = [title, _join(_shape(g, out_node), *extras)]
    if shortcut:
        layers = [_layer_text(g, n) for n in first_nodes
                  if _local(g, n).startswith("downsample.") and _windowed(g, n)]
        if layers:
            lines.append("downsample: " + ", ".join(layers))
    deformable = [f"{_local(g, n)}: {_layer_text(g, n)}" for n in first_nodes
                  if g.nodes[n][ir.OP] in OPS and OPS[g.nodes[n][ir.OP]].data_dependent_rf]
    if deformable:
        lines.append("deformable " + ", ".join(deformable))
    params = _params(g, run.nodes)
    if count > 1:
        lines.append(f"{_count(params)} params ({_count(params // count)} each)")
    else:
        lines.append(f"{_count(params)} params")
    return lines


def _output_lines(g: nx.DiGraph, k: int, out: dict) -> list[str]:
    stride = out.get("stride", g.nodes[out["node"]][ir.META].get("stride"))
    name = out.get("name") or ""
    return [f"out[{k}]" + (f": {name}" if name else ""),
            _join(f"{out['channels']} ch", f"stride {stride}" if stride is not None else "")]


def _layer_lines(g: nx.DiGraph, n: str) -> list[str]:
    """A layer node: its name in the block, what it computes (kernel, stride, dilation, groups)
    and, for a conv, its output channels."""
    d = g.nodes[n]
    # in a block, the name inside it (conv1); in the stem, the state-dict path (conv1, stem.0)
    name = (n if (d.get(ir.STAGE) or 0) < 0 else _local(g, n)).split(":", 1)[0]  # relu:1: 2nd call of relu
    what = _layer_text(g, n)
    if OPS[d[ir.OP]].label_channels:
        return [f"{name}: {what}", f"{d.get(ir.OUT_CH)} ch"]
    return [what if name in ("", what) or what.startswith(name) else f"{name}: {what}"]


def _local(g: nx.DiGraph, n: str) -> str:
    scope = g.nodes[n][ir.SCOPE]
    return n[len(scope) + 1:] if scope and n.startswith(scope + ".") else n


def _layer_text(g: nx.DiGraph, n: str) -> str:
    d = g.nodes[n]
    return OPS[d[ir.OP]].label(d[ir.ATTRS], g.graph, False)


def _shape(g: nx.DiGraph, n: str) -> str:
    shape = g.nodes[n][ir.META].get("shape")
    if shape is None:
        return f"{g.nodes[n].get(ir.OUT_CH)} ch"
    return "x".join(str(v) for v in shape)


def _stride_text(g: nx.DiGraph, n: str) -> str:
    stride = g.nodes[n][ir.META].get("stride")
    return f"output stride {stride}" if stride is not None else ""


def _rf_text(rf: dict | None) -> str:
    """``receptive field 427``; after a global pool (an SE gate) ``global``, with the field of the
    convolutions beside it when the analysis gives it: ``global (local 43)``."""
    if not rf:
        return ""
    if rf.get("size") is not None:
        return f"receptive field {ir.format_rf(rf)}"
    local = rf.get("local_size")
    return "receptive field global" + (f" (local {local})" if local is not None else "")


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


def _label(*lines: object, align: str = "n") -> graphviz.quoting.NoHtml:
    """Plain label text for DOT: every character shows as itself.

    Backslashes are doubled (so ``\\N`` or ``\\l`` in a name are not Graphviz escapes), ``&`` becomes
    ``&amp;`` (so ``&lt;`` in a name is not an entity), newlines become centred line breaks and other
    control characters spaces. ``align="l"`` ends every line with ``\\l`` instead (left-justified
    lines, for cluster headers). ``nohtml`` stops the graphviz package from treating ``<...>`` as an
    HTML-like label; it quotes the result and escapes the double quotes itself.
    """
    out = []
    for line in lines:
        for part in str(line).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            out.append(_CONTROL.sub(" ", part).replace("\\", "\\\\").replace("&", "&amp;"))
    if align == "l":
        return graphviz.nohtml("".join(part + "\\l" for part in out))
    return graphviz.nohtml("\\n".join(out))
