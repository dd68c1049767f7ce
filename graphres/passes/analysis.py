"""Analysis pass: receptive fields, dilation, trainable parameters, activation memory and the
spatial-size formula of every node, and per-stage / per-output summaries (no torch).

Runs after :func:`graphres.passes.shapes.infer_shapes`. It writes, on each node's ``meta``:

``rf``
    The receptive field of the node's output pixel 0 along one axis (every op in the table is
    square, so the same numbers hold for rows and columns), as a dict: ``size`` (pixels of the
    input that can reach the pixel), ``jump`` (input pixels between neighbouring output pixels)
    and ``center`` (the input coordinate of the field's centre; pixel ``i`` is centred at
    ``center + i * jump``; negative or beyond the image where padding is counted). Residual
    branches are joined exactly: the field of an ``add`` is the union of its operands' fields.
    Anything downstream of a global pool has ``size`` ``None`` ("global"); ``local_size`` is then
    the field of the paths that avoid global pools (an SE block's convolutions). ``deformable`` is
    true downstream of a deformable conv: its learned offsets move the taps anywhere, so ``size``
    (the field of the regular, zero-offset grid) is only a lower bound (shown "RF >= N, deformable"). Normalisation layers
    are treated as pointwise (BatchNorm in eval mode is; GN and IN statistics are not counted).
``dilation``
    A conv's own dilation; for other nodes, the largest dilation of a conv with kernel > 1 in the
    same block instance (what the block runs at).
``trainable``
    Whether the node's parameters receive gradients: not in a frozen stage (``frozen_stages``
    freezes the stem and the first stages) and, for norms, ``norm.requires_grad``.
``bytes``
    Activation memory of the node's output for one image, in bytes (float32), or 0 when the torch
    backend computes it in place (a ReLU or residual add whose operand has no other reader).
``formula``
    ``(B, S)`` such that the output height is ``floor((H + B) / S)`` for an input height ``H``
    (the same for widths), following the first operand of each node; ``None`` where a
    ``ceil_mode`` pool makes the rule piecewise.

and on the graph: ``trainable_params``, ``frozen_params``, ``peak_bytes`` (the largest total of
live activations during one forward, see :func:`peak_activation_bytes`), and per stage entry
(``g.graph['stages']``) and for the stem (``g.graph['stem']``): ``params``, ``trainable_params``,
``macs``, ``rf``, ``formula``, ``out_bytes``, ``dilation``.
"""
from __future__ import annotations

import math

import networkx as nx

from .. import ir
from ..ir import format_formula  # noqa: F401  (re-exported: the formula's text form)
from ..ops import BYTES_PER_ELEMENT, OPS



def analyse(g: nx.DiGraph) -> None:
    order = ir.topological_order(g)
    _receptive_fields(g, order)
    _formulas(g, order)
    _dilations(g, order)
    _trainable(g, order)
    _memory(g, order)
    _summaries(g, order)


# -- receptive field ----------------------------------------------------------------------------

def _receptive_fields(g: nx.DiGraph, order: list[str]) -> None:
    # A field is (lo, hi, jump): the input coordinates output pixel 0 can see. ``full`` is None
    # (unbounded) downstream of a global pool; ``local`` ignores the paths through global pools
    # (for an SE block: the field of its convolutions), and is None on a global pool itself.
    full: dict[str, tuple | None] = {}
    local: dict[str, tuple | None] = {}
    jumps: dict[str, int] = {}
    deformable: dict[str, bool] = {}  # a data-dependent field (a deformable conv) on some path to it
    for n in order:
        d = g._node[n]
        op, a = d[ir.OP], d[ir.ATTRS]
        if op == "input":
            full[n] = local[n] = (0, 0)
            jumps[n] = 1
            deformable[n] = False
        else:
            srcs = d[ir.INPUTS]
            opdef = OPS[op]
            first = srcs[0]
            deformable[n] = opdef.data_dependent_rf or (deformable[first] if len(srcs) == 1
                                                        else any(deformable[x] for x in srcs))
            jump = jumps[first]
            w = opdef.window(a)
            if opdef.global_pool:
                full[n] = local[n] = None
            elif w is not None:
                k, s, p, dil = w.kernel, w.stride, w.padding, w.dilation

                def grow(box):
                    return None if box is None else (box[0] - p * jump, box[1] + (dil * (k - 1) - p) * jump)
                full[n], local[n] = grow(full[srcs[0]]), grow(local[srcs[0]])
                jump *= s
            elif len(srcs) == 1:  # pointwise (norm, act): the operand's field
                full[n], local[n] = full[first], local[first]
            else:  # a merge (add, mul, ...): the union over the operands
                full[n] = _union([full[x] for x in srcs], unbounded=True)
                local[n] = _union([local[x] for x in srcs], unbounded=False)
            jumps[n] = jump
        f, loc = full[n], local[n]
        d[ir.META]["rf"] = {"size": None if f is None else f[1] - f[0] + 1, "jump": jumps[n],
                            "center": None if f is None else (f[0] + f[1]) / 2,
                            "local_size": None if loc is None else loc[1] - loc[0] + 1,
                            "deformable": deformable[n]}


def _union(boxes: list, unbounded: bool) -> tuple | None:
    """The union of fields; with ``unbounded``, None (global) absorbs everything, else it is skipped."""
    if unbounded and any(b is None for b in boxes):
        return None
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return min(b[0] for b in boxes), max(b[1] for b in boxes)


# -- size formula ---------------------------------------------------------------------------------

def _formulas(g: nx.DiGraph, order: list[str]) -> None:
    for n in order:
        d = g._node[n]
        op, a = d[ir.OP], d[ir.ATTRS]
        if op == "input":
            f = (0, 1)
        else:
            f = g._node[d[ir.INPUTS][0]][ir.META]["formula"]
            w = OPS[op].window(a)
            if OPS[op].global_pool:
                f = None
            elif f is not None and w is not None:
                if w.ceil_mode:
                    f = None
                else:
                    # floor((h + c) / s) + 1 with c = 2p - d(k-1) - 1, and h = floor((H + B) / S)
                    #   = floor((H + B + (c + s) S) / (S s))
                    b, big_s = f
                    c = 2 * w.padding - w.dilation * (w.kernel - 1) - 1
                    f = (b + (c + w.stride) * big_s, big_s * w.stride)
        d[ir.META]["formula"] = f


# -- dilation -------------------------------------------------------------------------------------

def _dilations(g: nx.DiGraph, order: list[str]) -> None:
    """The dilation of a node that has one (a conv); for the others, the largest dilation of a window
    wider than one pixel in the same block instance (what the block runs at)."""
    windows = {n: OPS[g._node[n][ir.OP]].window(g._node[n][ir.ATTRS]) for n in order if n != ir.INPUT}
    by_scope: dict[str, int] = {}
    for n, w in windows.items():
        if w is not None and w.kernel > 1:
            scope = g._node[n][ir.SCOPE]
            by_scope[scope] = max(by_scope.get(scope, 1), w.dilation)
    for n in order:
        d = g._node[n]
        w = windows.get(n)
        own = w is not None and "dilation" in d[ir.ATTRS]
        d[ir.META]["dilation"] = w.dilation if own else by_scope.get(d[ir.SCOPE], 1)


# -- trainable parameters -------------------------------------------------------------------------

def stage_frozen(g: nx.DiGraph, index: int | None) -> bool:
    """Whether stage ``index`` (-1 = the stem) is frozen: below ``frozen_stages``, or flagged
    ``frozen: true`` on its own. ``None`` (the input, a classification head) never is."""
    if index is None:
        return False
    frozen_stages = g.graph.get("frozen_stages", -1)
    return index < (-1 if frozen_stages is None else frozen_stages) or bool(g.graph.get("frozen", {}).get(index))


def _trainable(g: nx.DiGraph, order: list[str]) -> None:
    """Trainable flags and counts, and the decision the torch backend applies: which top-level
    modules frozen_stages / frozen: true freeze (the stem's modules, then whole stages)."""
    norm_grad = g.graph[ir.G_NORM].get("requires_grad", True)
    trainable = frozen = 0
    frozen_modules: list[str] = []
    frozen_stage: dict = {}
    for n in order:
        d = g._node[n]
        stage_is_frozen = frozen_stage.get(d[ir.STAGE])
        if stage_is_frozen is None:
            stage_is_frozen = frozen_stage[d[ir.STAGE]] = stage_frozen(g, d[ir.STAGE])
        frozen_norm = d[ir.OP] in OPS and OPS[d[ir.OP]].uses_norm and not norm_grad
        ok = not stage_is_frozen and not frozen_norm
        d[ir.META]["trainable"] = ok
        if ok:
            trainable += d[ir.META].get("params", 0)
        else:
            frozen += d[ir.META].get("params", 0)
        if stage_is_frozen and d[ir.MODULE]:
            top = d[ir.MODULE].split(".")[0]
            if top not in frozen_modules:
                frozen_modules.append(top)
    g.graph[ir.G_FROZEN_SCOPES] = {i: stage_frozen(g, i) for i in [-1] + [st["index"] for st in g.graph[ir.G_STAGES]]}
    for st in g.graph[ir.G_STAGES]:
        st["frozen"] = stage_frozen(g, st["index"])
    g.graph[ir.G_TRAINABLE_PARAMS] = trainable
    g.graph[ir.G_FROZEN_PARAMS] = frozen
    g.graph[ir.G_FROZEN_MODULES] = frozen_modules
    g.graph[ir.G_ZERO_INIT_MODULES] = [g._node[n][ir.MODULE] for n in order
                                       if g._node[n][ir.ATTRS].get("zero_init") and g._node[n][ir.MODULE]]
    g.graph[ir.G_MODULE_INITS] = [(g._node[n][ir.MODULE], g._node[n][ir.INIT]) for n in order
                                  if g._node[n].get(ir.INIT, "default") != "default" and g._node[n][ir.MODULE]]


# -- in place and activation memory ---------------------------------------------------------------

def _may_overwrite(g: nx.DiGraph, n: str) -> bool:
    """Whether node ``n`` may overwrite its first operand: its op can, and the operand is made in
    the same block by an op whose backward does not need its output, and nothing else reads it."""
    d = g._node[n]
    if d[ir.OP] not in OPS or not OPS[d[ir.OP]].in_place(d[ir.ATTRS]):
        return False
    first = d[ir.INPUTS][0]
    f = g._node[first]
    return (f[ir.OP] in OPS and OPS[f[ir.OP]].overwritable and f[ir.SCOPE] == d[ir.SCOPE]
            and len(g._succ[first]) == 1)


def _in_place_nodes(g: nx.DiGraph, order: list[str]) -> set[str]:
    """The nodes computed in place (the torch backend reads this decision): those that may
    overwrite their operand; a module called several times (a block's shared ReLU) runs in place
    only when every call may."""
    calls: dict[str | None, list[str]] = {}
    for n in order:
        if n != ir.INPUT:
            calls.setdefault(g._node[n][ir.MODULE] or n, []).append(n)
    out: set[str] = set()
    for nodes in calls.values():
        if all(_may_overwrite(g, n) for n in nodes):
            out.update(nodes)
    return out


def _is_view(g: nx.DiGraph, n: str) -> bool:
    """A view of its operand (a slice): it shares the operand's storage, as an in-place node does."""
    op = OPS.get(g._node[n][ir.OP])
    return op is not None and op.view


def _memory(g: nx.DiGraph, order: list[str]) -> None:
    in_place = _in_place_nodes(g, order)
    for n in order:
        d = g._node[n]
        meta = d[ir.META]
        full = math.prod(meta["shape"]) * BYTES_PER_ELEMENT
        meta["in_place"] = n in in_place
        meta["bytes"] = 0 if n in in_place or _is_view(g, n) else full
        meta["scratch"] = (OPS[d[ir.OP]].scratch(d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], full, g.graph)
                           if d[ir.OP] in OPS else 0)
    g.graph[ir.G_PEAK_BYTES] = peak_activation_bytes(g, order)


def peak_activation_bytes(g: nx.DiGraph, order: list[str] | None = None) -> int:
    """The largest total of live activation bytes for one image during an inference forward of
    the torch backend.

    A tensor lives from the node that makes it until the last node that reads it; a block's input
    also lives until the block's last node, and a stage's input until the stage's last node (the
    callers still hold them), and the outputs named by
    out_indices live to the end (they are returned), as does the input image (the caller holds
    it). In-place nodes and views (a slice) allocate nothing; an op's scratch bytes (a max pool's int64 indices, a
    weight-standardised conv's standardised weight) are held only while it runs. Parameters, buffers and the allocator's own
    overheads are not counted."""
    order = order or ir.topological_order(g)
    nodes = g._node
    end = len(order)
    last: dict[str, int] = {}
    scope_end: dict[str, int] = {}
    stage_end: dict[int, int] = {}
    for i, n in enumerate(order):
        d = nodes[n]
        last[n] = i
        for s in d[ir.INPUTS]:
            last[s] = i  # readers come in order: the last one seen is the last
        scope_end[d[ir.SCOPE]] = i
        stage_end[d[ir.STAGE]] = i
    # the caller holds a block's input until the block returns
    for n in order:
        d = nodes[n]
        sc = d[ir.SCOPE]
        for s in d[ir.INPUTS]:
            if nodes[s][ir.SCOPE] != sc and last[s] < scope_end[sc]:
                last[s] = scope_end[sc]
    # and forward() holds a stage's input until the stage (an nn.Sequential of blocks) returns
    for st in g.graph.get("stages", []):
        if st["index"] in stage_end and st["input"] in last:
            last[st["input"]] = max(last[st["input"]], stage_end[st["index"]])
    last[ir.INPUT] = end  # the caller holds the image
    for o in g.graph.get("outputs", []):
        last[o["node"]] = end
    # an in-place node shares its operand's storage: the storage lives as long as either
    owner: dict[str, str] = {}
    free_at: dict[str, int] = {}
    for n in order:
        d = nodes[n]
        o = owner[n] = owner[d[ir.INPUTS][0]] if d[ir.META].get("in_place") or _is_view(g, n) else n
        if free_at.get(o, 0) < last[n]:
            free_at[o] = last[n]
    live = peak = 0
    releases: dict[int, int] = {}
    for i, n in enumerate(order):
        meta = nodes[n][ir.META]
        size = meta["bytes"]
        live += size
        held = live + meta.get("scratch", 0)  # scratch is held only while the op runs
        if held > peak:
            peak = held
        if owner[n] == n:
            step = free_at[n]
            releases[step] = releases.get(step, 0) + size
        live -= releases.pop(i, 0)
    return peak


# -- summaries ------------------------------------------------------------------------------------

def _summaries(g: nx.DiGraph, order: list[str]) -> None:
    groups: dict[int, list[str]] = {}
    for n in order:
        st = g._node[n][ir.STAGE]
        if st is not None:
            groups.setdefault(st, []).append(n)
    entries = [(-1, g.graph["stem"])] + [(st["index"], st) for st in g.graph["stages"]]
    for index, entry in entries:
        nodes = groups.get(index, [])
        if not nodes:
            continue
        out = g._node[nodes[-1]][ir.META]
        entry["params"] = sum(g._node[n][ir.META]["params"] for n in nodes)
        entry["trainable_params"] = sum(g._node[n][ir.META]["params"] for n in nodes
                                        if g._node[n][ir.META]["trainable"])
        entry["macs"] = sum(g._node[n][ir.META]["macs"] for n in nodes)
        entry["rf"] = dict(out["rf"])
        entry["formula"] = out["formula"]
        entry["out_bytes"] = math.prod(out["shape"]) * BYTES_PER_ELEMENT
        entry["shape"] = tuple(out["shape"])
        entry["stride"] = out["stride"]
        entry["output"] = nodes[-1]
        entry["dilation"] = max(g._node[n][ir.META]["dilation"] for n in nodes)
    for o in g.graph.get("outputs", []):
        meta = g._node[o["node"]][ir.META]
        o.update(stride=meta["stride"], shape=tuple(meta["shape"]), rf=dict(meta["rf"]))
