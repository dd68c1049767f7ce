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
    the field of the paths that avoid global pools (an SE block's convolutions). Normalisation layers
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

BYTES_PER_ELEMENT = 4  # float32
_INPLACE_ACTS = frozenset({"relu", "relu6", "silu", "leaky_relu", "hardswish", "hardsigmoid"})
_INPLACE_AFTER = frozenset({"conv", "norm", "add"})


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
    for n in order:
        d = g.nodes[n]
        op, a = d[ir.OP], d[ir.ATTRS]
        if op == "input":
            full[n] = local[n] = (0, 0)
            jumps[n] = 1
        else:
            srcs = ir.inputs_of(g, n)
            jump = jumps[srcs[0]]
            if op == "global_avgpool":
                full[n] = local[n] = None
            elif op in ("conv", "maxpool", "avgpool"):
                k, s, p, dil = a["kernel"], a["stride"], a["padding"], a.get("dilation", 1)

                def grow(box):
                    return None if box is None else (box[0] - p * jump, box[1] + (dil * (k - 1) - p) * jump)
                full[n], local[n] = grow(full[srcs[0]]), grow(local[srcs[0]])
                jump *= s
            else:  # pointwise (norm, act) or a merge (add, mul, ...): the union over the operands
                full[n] = _union([full[x] for x in srcs], unbounded=True)
                local[n] = _union([local[x] for x in srcs], unbounded=False)
            jumps[n] = jump
        f, loc = full[n], local[n]
        d[ir.META]["rf"] = {"size": None if f is None else f[1] - f[0] + 1, "jump": jumps[n],
                            "center": None if f is None else (f[0] + f[1]) / 2,
                            "local_size": None if loc is None else loc[1] - loc[0] + 1}


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
        d = g.nodes[n]
        op, a = d[ir.OP], d[ir.ATTRS]
        if op == "input":
            f = (0, 1)
        else:
            f = g.nodes[ir.inputs_of(g, n)[0]][ir.META]["formula"]
            if f is not None and op in ("conv", "maxpool", "avgpool"):
                if op != "conv" and a["ceil_mode"]:
                    f = None
                else:
                    # floor((h + c) / s) + 1 with c = 2p - d(k-1) - 1, and h = floor((H + B) / S)
                    #   = floor((H + B + (c + s) S) / (S s))
                    b, big_s = f
                    c = 2 * a["padding"] - a.get("dilation", 1) * (a["kernel"] - 1) - 1
                    f = (b + (c + a["stride"]) * big_s, big_s * a["stride"])
            elif op == "global_avgpool":
                f = None
        d[ir.META]["formula"] = f


def format_formula(f: tuple[int, int] | None, var: str = "H") -> str:
    """``ceil(H/32)``, ``floor((H+1)/2)``, ``H``; ``-`` when piecewise or constant."""
    if f is None:
        return "-"
    b, s = f
    if s == 1:
        return var if b == 0 else f"{var}{b:+d}"
    if b == s - 1:
        return f"ceil({var}/{s})"
    if b == 0:
        return f"floor({var}/{s})"
    return f"floor(({var}{b:+d})/{s})"


# -- dilation -------------------------------------------------------------------------------------

def _dilations(g: nx.DiGraph, order: list[str]) -> None:
    by_scope: dict[str, int] = {}
    for n in order:
        d = g.nodes[n]
        if d[ir.OP] == "conv" and d[ir.ATTRS]["kernel"] > 1:
            by_scope[d[ir.SCOPE]] = max(by_scope.get(d[ir.SCOPE], 1), d[ir.ATTRS]["dilation"])
    for n in order:
        d = g.nodes[n]
        if d[ir.OP] == "conv":
            d[ir.META]["dilation"] = d[ir.ATTRS]["dilation"]
        else:
            d[ir.META]["dilation"] = by_scope.get(d[ir.SCOPE], 1)


# -- trainable parameters -------------------------------------------------------------------------

def stage_frozen(g: nx.DiGraph, index: int | None) -> bool:
    """Whether stage ``index`` (-1 = the stem) is frozen: below ``frozen_stages``, or flagged
    ``frozen: true`` on its own. ``None`` (the input, a classification head) never is."""
    if index is None:
        return False
    frozen_stages = g.graph.get("frozen_stages", -1)
    return index < (-1 if frozen_stages is None else frozen_stages) or bool(g.graph.get("frozen", {}).get(index))


def _trainable(g: nx.DiGraph, order: list[str]) -> None:
    norm_grad = g.graph["norm"].get("requires_grad", True)
    trainable = frozen = 0
    for n in order:
        d = g.nodes[n]
        ok = not stage_frozen(g, d[ir.STAGE]) and (d[ir.OP] != "norm" or norm_grad)
        d[ir.META]["trainable"] = ok
        if ok:
            trainable += d[ir.META].get("params", 0)
        else:
            frozen += d[ir.META].get("params", 0)
    g.graph["trainable_params"] = trainable
    g.graph["frozen_params"] = frozen


# -- activation memory ----------------------------------------------------------------------------

def _sole_operand(g: nx.DiGraph, n: str) -> bool:
    d = g.nodes[n]
    first = ir.inputs_of(g, n)[0]
    f = g.nodes[first]
    return f[ir.OP] in _INPLACE_AFTER and f[ir.SCOPE] == d[ir.SCOPE] and g.out_degree(first) == 1


def _in_place_nodes(g: nx.DiGraph, order: list[str]) -> set[str]:
    """The nodes the torch backend computes in place (mirrors its rule): an add, or an act of an
    in-place-capable type, whose first operand is made in the same block by a conv, norm or add
    and read by nothing else. An act module shared by several calls runs in place only when every
    call qualifies."""
    calls: dict[str, list[str]] = {}
    for n in order:
        d = g.nodes[n]
        if d[ir.OP] == "act" and d[ir.ATTRS].get("type") in _INPLACE_ACTS:
            calls.setdefault(d[ir.MODULE], []).append(n)
    out = {n for n in order if g.nodes[n][ir.OP] == "add" and _sole_operand(g, n)}
    for nodes in calls.values():
        if all(_sole_operand(g, n) for n in nodes):
            out.update(nodes)
    return out


def _memory(g: nx.DiGraph, order: list[str]) -> None:
    in_place = _in_place_nodes(g, order)
    for n in order:
        meta = g.nodes[n][ir.META]
        meta["in_place"] = n in in_place
        meta["bytes"] = 0 if n in in_place else math.prod(meta["shape"]) * BYTES_PER_ELEMENT
    g.graph["peak_bytes"] = peak_activation_bytes(g, order)


def peak_activation_bytes(g: nx.DiGraph, order: list[str] | None = None) -> int:
    """The largest total of live activation bytes for one image during an inference forward of
    the torch backend.

    A tensor lives from the node that makes it until the last node that reads it; a block's input
    also lives until the block's last node, and a stage's input until the stage's last node (the
    callers still hold them), and the outputs named by
    out_indices live to the end (they are returned), as does the input image (the caller holds
    it). In-place nodes allocate nothing; a max pool also holds its int64 indices while it runs
    (torch computes them even without autograd). Parameters, buffers and the allocator's own
    overheads are not counted."""
    order = order or ir.topological_order(g)
    pos = {n: i for i, n in enumerate(order)}
    end = len(order)
    last = {n: pos[n] for n in order}
    for n in order:
        for s in ir.inputs_of(g, n):
            last[s] = max(last[s], pos[n])
    # the caller holds a block's input until the block returns
    scope_end: dict[str, int] = {}
    stage_end: dict[int, int] = {}
    for n in order:
        scope_end[g.nodes[n][ir.SCOPE]] = pos[n]
        stage_end[g.nodes[n][ir.STAGE]] = pos[n]
    for n in order:
        for succ in g.successors(n):
            sc = g.nodes[succ][ir.SCOPE]
            if sc != g.nodes[n][ir.SCOPE]:
                last[n] = max(last[n], scope_end[sc])
    # and forward() holds a stage's input until the stage (an nn.Sequential of blocks) returns
    for st in g.graph.get("stages", []):
        if st["index"] in stage_end and st["input"] in last:
            last[st["input"]] = max(last[st["input"]], stage_end[st["index"]])
    last[ir.INPUT] = end  # the caller holds the image
    for o in g.graph.get("outputs", []):
        last[o["node"]] = end
    # an in-place node shares its operand's storage: the storage lives as long as either
    owner = {}
    for n in order:
        owner[n] = owner[ir.inputs_of(g, n)[0]] if g.nodes[n][ir.META].get("in_place") else n
    free_at: dict[str, int] = {}
    for n in order:
        o = owner[n]
        free_at[o] = max(free_at.get(o, 0), last[n])
    live = peak = 0
    releases: dict[int, int] = {}
    for i, n in enumerate(order):
        live += g.nodes[n][ir.META]["bytes"]
        # torch's max pooling also returns int64 indices (twice the output's float32 bytes), freed
        # as soon as the op returns
        scratch = 2 * g.nodes[n][ir.META]["bytes"] if g.nodes[n][ir.OP] == "maxpool" else 0
        peak = max(peak, live + scratch)
        if owner[n] == n:
            step = free_at[n]
            releases[step] = releases.get(step, 0) + g.nodes[n][ir.META]["bytes"]
        live -= releases.pop(i, 0)
    return peak


# -- summaries ------------------------------------------------------------------------------------

def _summaries(g: nx.DiGraph, order: list[str]) -> None:
    groups: dict[int, list[str]] = {}
    for n in order:
        st = g.nodes[n][ir.STAGE]
        if st is not None:
            groups.setdefault(st, []).append(n)
    entries = [(-1, g.graph["stem"])] + [(st["index"], st) for st in g.graph["stages"]]
    for index, entry in entries:
        nodes = groups.get(index, [])
        if not nodes:
            continue
        out = g.nodes[nodes[-1]][ir.META]
        entry["params"] = sum(g.nodes[n][ir.META]["params"] for n in nodes)
        entry["trainable_params"] = sum(g.nodes[n][ir.META]["params"] for n in nodes
                                        if g.nodes[n][ir.META]["trainable"])
        entry["macs"] = sum(g.nodes[n][ir.META]["macs"] for n in nodes)
        entry["rf"] = dict(out["rf"])
        entry["formula"] = out["formula"]
        entry["out_bytes"] = math.prod(out["shape"]) * BYTES_PER_ELEMENT
        entry["shape"] = tuple(out["shape"])
        entry["stride"] = out["stride"]
        entry["output"] = nodes[-1]
        entry["dilation"] = max(g.nodes[n][ir.META]["dilation"] for n in nodes)
    for o in g.graph.get("outputs", []):
        meta = g.nodes[o["node"]][ir.META]
        o.update(stride=meta["stride"], shape=tuple(meta["shape"]), rf=dict(meta["rf"]))
