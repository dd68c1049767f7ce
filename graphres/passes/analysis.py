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
    A pointwise node's dict is its operand's own (one object): read it, never write it.
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

import itertools
import math
import operator
from typing import Any

import networkx as nx

from .. import ir
from ..ir import format_formula  # noqa: F401  (re-exported: the formula's text form)
from ..ops import BYTES_PER_ELEMENT, OPS



_VIEWS = frozenset(name for name, op in OPS.items() if op.view)  # ops whose output is a view of their operand
_OVERWRITABLE = frozenset(name for name, op in OPS.items() if op.overwritable)


def analyse(g: nx.DiGraph) -> None:
    """Write every figure above. Two walks over the nodes in order: the first follows the fields,
    size formulas and dilations forward and sums the trainable parameters; the second, once the
    in-place decisions and each block's dilation are known, the memory and the summaries. The op
    table's rules are applied once per twin (ir.TWIN): twins have the same op and attributes."""
    order = ir.topological_order(g)
    in_place, by_scope = _forward(g, order)
    _memory(g, order, in_place, by_scope)


# -- receptive field, size formula, dilation, trainable parameters --------------------------------

def _forward(g: nx.DiGraph, order: list[str]) -> tuple[set[str], dict[str, int]]:
    """``rf``, ``formula``, a conv's own ``dilation`` and ``trainable`` of each node, the trainable
    and frozen counts and the freezing decisions; returns the nodes computed in place and the
    largest dilation of a window wider than one pixel in each block instance (its dilation).

    A field is (lo, hi): the input coordinates output pixel 0 can see, ``jump`` apart. ``full``
    is None (unbounded) downstream of a global pool; ``local`` ignores the paths through global
    pools (for an SE block: the field of its convolutions), and is None on a global pool itself;
    ``deformable``: a data-dependent field (a deformable conv) on some path to it. The size
    formula follows the first operand of each node."""
    nodes, succ = g._node, g._succ
    norm_grad = g.graph[ir.G_NORM].get("requires_grad", True)
    facts: dict[str, tuple] = {}  # twin -> (op, window, may run in place by the op table)
    state: dict[str, tuple] = {}  # node -> (full, local, jump, deformable, formula)
    by_scope: dict[str, int] = {}
    rules: dict[tuple, tuple[bool, bool]] = {}  # (stage, op) -> (stage frozen, trainable)
    trainable = frozen = 0
    frozen_modules: dict[str, None] = {}
    zero_init: list[str] = []
    inits: list[tuple] = []
    calls: dict[str, list[str] | None] = {}  # module -> its calls that may run in place, None once one may not
    # a recorded block (its nodes their own twins) -> [trainable params, frozen params, zero-init
    # modules, (module, init) of modules initialised their own way], the modules relative to it
    blocks: dict[str, list] = {}
    members: dict[str, list[str]] = {}  # a recorded block -> its nodes, in order
    plans: dict[str, list] = {}  # a recorded block -> _copy_plan
    scope = shift = None  # the block being walked; for a copy, how its fields differ from its twin's
    i, end = 0, len(order)
    while i < end:
        n = order[i]
        i += 1
        d = nodes[n]
        meta = d[ir.META]
        twin = d.get(ir.TWIN)
        if twin is not None and twin != n:  # a copied block: see _copy_shift
            if d[ir.SCOPE] != scope:
                scope = d[ir.SCOPE]
                shift = _copy_shift(nodes, state, n, twin)
                source = nodes[twin][ir.SCOPE]
                if shift is not None:
                    if source in by_scope:
                        by_scope[scope] = by_scope[source]
                    # the twin block's sums and initialised modules, once for the whole copy
                    t_train, t_frozen, t_zero, t_inits = blocks.get(source) or (0, 0, [], [])
                    trainable += t_train
                    frozen += t_frozen
                    zero_init.extend(f"{scope}.{rel}" for rel in t_zero)
                    inits.extend((f"{scope}.{rel}", kind) for rel, kind in t_inits)
                    plan = plans.get(source)
                    if plan is None and source in members:
                        plan = plans[source] = _copy_plan(nodes, state, members[source])
                    if plan is not None and ir.copied_block(nodes, order, i - 1, plan[0][0], plan[-1][0], len(plan)):
                        _shift_block(nodes, state, order, i - 1, plan, shift)
                        i += len(plan) - 1
                        continue
            if shift is not None:
                df, dl, db = shift
                tf, tloc, jump, dfm, tform, trf = state[twin]
                f = None if tf is None else (tf[0] + df[0], tf[1] + df[1])
                loc = None if tloc is None else (tloc[0] + dl[0], tloc[1] + dl[1])
                form = None if tform is None else (tform[0] + db, tform[1])
                if trf is state[nodes[twin][ir.INPUTS][0]][5]:  # the twin shares its operand's dict
                    rf = state[d[ir.INPUTS][0]][5]
                else:
                    rf = {"size": None if f is None else f[1] - f[0] + 1, "jump": jump,
                          "center": None if f is None else (f[0] + f[1]) / 2,
                          "local_size": None if loc is None else loc[1] - loc[0] + 1, "deformable": dfm}
                state[n] = (f, loc, jump, dfm, form, rf)
                tm = nodes[twin][ir.META]
                meta["rf"] = rf
                meta["formula"] = form
                meta["dilation"] = tm["dilation"]
                meta["trainable"] = tm["trainable"]
                continue
        elif twin is not None:
            members.setdefault(d[ir.SCOPE], []).append(n)
        rf = None
        op = d[ir.OP]
        if op == "input":
            f = loc = (0, 0)
            jump, dfm, form, w = 1, False, (0, 1), None
        else:
            fact = facts.get(twin) if twin is not None else None
            if fact is None:
                opdef = OPS[op]
                fact = (opdef, opdef.window(d[ir.ATTRS]), opdef.in_place(d[ir.ATTRS]))
                if twin is not None:
                    facts[twin] = fact
            opdef, w, able = fact
            srcs = d[ir.INPUTS]
            first = srcs[0]
            f, loc, jump, dfm, form, rf = state[first]
            if len(srcs) > 1:
                operands = [state[x] for x in srcs]
                dfm = dfm or any([o[3] for o in operands])
            if opdef.data_dependent_rf:
                dfm = True
            if len(srcs) > 1 or w is not None or opdef.global_pool or dfm != rf["deformable"]:
                rf = None  # not a pointwise op's: the operand's field dict does not hold
            if opdef.global_pool:
                f = loc = form = None
            elif w is not None:
                lo, hi = w.padding * jump, (w.dilation * (w.kernel - 1) - w.padding) * jump
                if f is not None:
                    f = (f[0] - lo, f[1] + hi)
                if loc is not None:
                    loc = (loc[0] - lo, loc[1] + hi)
                jump *= w.stride
                if form is not None:
                    if w.ceil_mode:
                        form = None
                    else:
                        # floor((h + c) / s) + 1 with c = 2p - d(k-1) - 1, and h = floor((H + B) / S)
                        #   = floor((H + B + (c + s) S) / (S s))
                        b, big_s = form
                        c = 2 * w.padding - w.dilation * (w.kernel - 1) - 1
                        form = (b + (c + w.stride) * big_s, big_s * w.stride)
            elif len(srcs) > 1:  # a merge (add, mul, ...): the union over the operands
                f = _union([o[0] for o in operands], unbounded=True)
                loc = _union([o[1] for o in operands], unbounded=False)
            # else pointwise (norm, act): the operand's field
            # in place: the op may, and its first operand is made in the same block by an op whose
            # backward does not need its output, and nothing else reads it; a module called several
            # times (a block's shared ReLU) only when every call may
            if able:
                o = nodes[first]
                able = o[ir.OP] in _OVERWRITABLE and o[ir.SCOPE] == d[ir.SCOPE] and len(succ[first]) == 1
            key = d[ir.MODULE] or n
            if twin is not None and twin != n:
                pass  # a copy runs in place where its twin does (_memory): the same block structure
            elif not able:
                calls[key] = None
            else:
                same = calls.get(key, ())
                if same is not None:
                    if not same:
                        same = calls[key] = []
                    same.append(n)
        if rf is None:  # a pointwise op shares its operand's dict (rf dicts are read, never written)
            rf = {"size": None if f is None else f[1] - f[0] + 1, "jump": jump,
                  "center": None if f is None else (f[0] + f[1]) / 2,
                  "local_size": None if loc is None else loc[1] - loc[0] + 1, "deformable": dfm}
        state[n] = (f, loc, jump, dfm, form, rf)
        meta["rf"] = rf
        meta["formula"] = form
        # dilation: a conv's own; the others' is their block's, written by _memory (0 until then)
        if w is not None and w.kernel > 1:
            scope = d[ir.SCOPE]
            if w.dilation > by_scope.get(scope, 1):
                by_scope[scope] = w.dilation
        meta["dilation"] = w.dilation if w is not None and "dilation" in d[ir.ATTRS] else 0
        # trainable: not in a frozen stage, and for norms norm.requires_grad
        rule = rules.get((d[ir.STAGE], op))
        if rule is None:
            stage_is_frozen = stage_frozen(g, d[ir.STAGE])
            rule = rules[(d[ir.STAGE], op)] = (
                stage_is_frozen, not stage_is_frozen and (norm_grad or not (op in OPS and OPS[op].uses_norm)))
        stage_is_frozen, ok = rule
        meta["trainable"] = ok
        own = blocks.setdefault(d[ir.SCOPE], [0, 0, [], []]) if twin == n else None
        if ok:
            trainable += meta["params"]
        else:
            frozen += meta["params"]
        if own is not None:
            own[0 if ok else 1] += meta["params"]
        module = d[ir.MODULE]
        if module:
            if stage_is_frozen:
                frozen_modules[module.split(".", 1)[0]] = None
            cut = len(d[ir.SCOPE]) + 1
            if d[ir.ATTRS].get("zero_init"):
                zero_init.append(module)
                if own is not None:
                    own[2].append(module[cut:])
            if d.get(ir.INIT, "default") != "default":
                inits.append((module, d[ir.INIT]))
                if own is not None:
                    own[3].append((module[cut:], d[ir.INIT]))
    g.graph[ir.G_FROZEN_SCOPES] = {i: stage_frozen(g, i) for i in [-1] + [st["index"] for st in g.graph[ir.G_STAGES]]}
    for st in g.graph[ir.G_STAGES]:
        st["frozen"] = stage_frozen(g, st["index"])
    g.graph[ir.G_TRAINABLE_PARAMS] = trainable
    g.graph[ir.G_FROZEN_PARAMS] = frozen
    g.graph[ir.G_FROZEN_MODULES] = list(frozen_modules)
    g.graph[ir.G_ZERO_INIT_MODULES] = zero_init
    g.graph[ir.G_MODULE_INITS] = inits
    in_place: set[str] = set()
    for same in calls.values():
        if same:
            in_place.update(same)
    return in_place, by_scope


def _copy_plan(nodes: dict, state: dict, block: list[str]) -> list[tuple]:
    """For the nodes of a recorded block, in order: (node, the index in the block of its first
    operand, or -1 for the block's input, when it has its operand's field, formula and rf dict (a
    pointwise op), else None; its dilation, trainable); what :func:`_shift_block` needs of each."""
    index = {n: k for k, n in enumerate(block)}
    plan = []
    for n in block:
        src = nodes[n][ir.INPUTS][0]
        shares = state[n][5] is state[src][5] and state[n][:5] == state[src][:5]  # pointwise
        plan.append((n, (index.get(src, -1) if shares else None), nodes[n][ir.META]["dilation"],
                     nodes[n][ir.META]["trainable"]))
    return plan


def _shift_block(nodes: dict, state: dict, order: list[str], start: int, plan: list, shift: tuple) -> None:
    """The fields, formulas, dilations and trainable flags of a copied block from its twin
    block's, moved by ``shift`` (:func:`_copy_shift`)."""
    (df0, df1), (dl0, dl1), db = shift
    x = state[nodes[order[start]][ir.INPUTS][0]]  # the block input's
    states = []
    for n, (twin, shares, dilation, trainable) in zip(order[start:start + len(plan)], plan):
        if shares is not None:  # a pointwise node: its operand's field, formula and dict
            st = x if shares < 0 else states[shares]
        else:
            tf, tloc, jump, dfm, tform, _ = state[twin]
            f = None if tf is None else (tf[0] + df0, tf[1] + df1)
            loc = None if tloc is None else (tloc[0] + dl0, tloc[1] + dl1)
            st = (f, loc, jump, dfm, None if tform is None else (tform[0] + db, tform[1]),
                  {"size": None if f is None else f[1] - f[0] + 1, "jump": jump,
                   "center": None if f is None else (f[0] + f[1]) / 2,
                   "local_size": None if loc is None else loc[1] - loc[0] + 1, "deformable": dfm})
        states.append(st)
        state[n] = st
        meta = nodes[n][ir.META]
        meta["rf"] = st[5]
        meta["formula"] = st[4]
        meta["dilation"] = dilation
        meta["trainable"] = trainable


def _copy_shift(nodes: dict, state: dict, n: str, twin: str) -> tuple | None:
    """For the first node ``n`` of a block that lowering copied from the block of ``twin``: every
    node of the block is a function of the block's input alone, as in the twin block, so when the
    two inputs have the same jump (stride), the same kinds of field (bounded or not, deformable or
    not) and the same formula stride, each field of the copy is its twin's moved by what moves the
    input's field: (lo, hi) shifts of the full and local fields, and the shift of the formula's B.
    None (walk the block node by node) otherwise."""
    x, tx = nodes[n][ir.INPUTS][0], nodes[twin][ir.INPUTS][0]
    f, loc, jump, dfm, form, _ = state[x]
    tf, tloc, tjump, tdfm, tform, _ = state[tx]
    if jump != tjump or dfm != tdfm or (f is None) != (tf is None) or (loc is None) != (tloc is None) \
            or (form is None) != (tform is None) or (form is not None and form[1] != tform[1]):
        return None
    return ((0, 0) if f is None else (f[0] - tf[0], f[1] - tf[1]),
            (0, 0) if loc is None else (loc[0] - tloc[0], loc[1] - tloc[1]),
            0 if form is None else form[0] - tform[0])


def _union(boxes: list, unbounded: bool) -> tuple | None:
    """The union of fields; with ``unbounded``, None (global) absorbs everything, else it is skipped."""
    if unbounded and any(b is None for b in boxes):
        return None
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return min(b[0] for b in boxes), max(b[1] for b in boxes)


def stage_frozen(g: nx.DiGraph, index: int | None) -> bool:
    """Whether stage ``index`` (-1 = the stem) is frozen: below ``frozen_stages``, or flagged
    ``frozen: true`` on its own. ``None`` (the input, a classification head) never is."""
    if index is None:
        return False
    frozen_stages = g.graph.get("frozen_stages", -1)
    return index < (-1 if frozen_stages is None else frozen_stages) or bool(g.graph.get("frozen", {}).get(index))


# -- activation memory and summaries ---------------------------------------------------------------

def _memory(g: nx.DiGraph, order: list[str], in_place: set[str], by_scope: dict[str, int]) -> None:
    """``in_place``, ``bytes``, ``scratch`` and the block's ``dilation`` of each node; the peak
    and the per-stage summaries."""
    nodes, settings = g._node, g.graph
    sized: dict[tuple, tuple[int, int]] = {}  # (twin, shape) -> (output bytes, the op table's scratch bytes)
    groups: dict[int, list] = {}  # stage -> [params, trainable params, macs, dilation, last node]
    life = _Lifetimes()
    last, scope_of, scope_end, stage_end = life.last, life.scope_of, life.scope_end, life.stage_end
    crossing, shared, sizes, scratch = life.crossing, life.shared, life.sizes, life.scratch
    copied: dict[str, tuple] = {}  # twin -> (its memory figures, whether it shares its operand's storage)
    totals: dict[str, list] = {}  # a recorded block -> [params, trainable params, macs, dilation]
    members: dict[str, list] = {}  # a recorded block -> [(node, its figures, whether it shares), ...]
    plans: dict[str, tuple] = {}  # a recorded block -> _lifetime_plan
    current = whole = acc = None  # the block being walked; whether it is a copy shaped as its twin block
    i, end = -1, len(order)
    while i + 1 < end:
        i += 1
        n = order[i]
        d = nodes[n]
        meta = d[ir.META]
        scope = d[ir.SCOPE]
        stage = d[ir.STAGE]
        twin = d.get(ir.TWIN)
        if scope != current:
            current, whole = scope, False
            if twin is not None and twin != n and stage is not None:
                # the shapes pass's condition: then every node has its twin's figures (and shape)
                source_scope = nodes[twin][ir.SCOPE]
                source = totals.get(source_scope)
                whole = source is not None and stage in groups and ir.input_as_twins(nodes, n)
                if whole:  # the stage sums, once for the whole copy
                    acc = groups[stage]
                    _add(acc, *source)
                    plan = members.get(source_scope)
                    if plan is not None and ir.copied_block(nodes, order, i, plan[0][0], plan[-1][0], len(plan)):
                        # the whole block at once: its twin block's figures, and its lifetimes
                        lp = plans.get(source_scope)
                        if lp is None:
                            lp = plans[source_scope] = _lifetime_plan(nodes, plan)
                        figures_of, rel_last, shared_at, x_last, block_sizes, block_scratch = lp
                        k = len(plan)
                        block = order[i:i + k]
                        for n, figures, r in zip(block, figures_of, rel_last):
                            nodes[n][ir.META].update(figures)
                            last[n] = i + r
                            scope_of[n] = scope
                        x = nodes[block[0]][ir.INPUTS][0]  # the block's input, its only operand from outside
                        last[x] = i + x_last
                        crossing.append((x, scope))
                        shared.extend([(block[j], block[r] if r >= 0 else x) for j, r in shared_at])
                        sizes.extend(block_sizes)
                        scratch.extend(block_scratch)
                        i += k - 1
                        scope_end[scope] = stage_end[stage] = i
                        acc[4] = n
                        continue
        if whole:
            figures, shares = copied[twin]
            meta.update(figures)
        else:
            op = d[ir.OP]
            if not meta["dilation"]:
                meta["dilation"] = by_scope.get(scope, 1)
            key = (twin, meta["shape"]) if twin is not None else None
            size = sized.get(key) if key is not None else None
            if size is None:
                full = math.prod(meta["shape"]) * BYTES_PER_ELEMENT
                size = (full, OPS[op].scratch(d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], full, settings)
                        if op in OPS else 0)
                if key is not None:
                    sized[key] = size
            full, meta["scratch"] = size
            inp = meta["in_place"] = (twin if twin is not None else n) in in_place  # a copy as its twin
            shares = inp or op in _VIEWS
            meta["bytes"] = 0 if shares else full
            if twin == n:
                copied[n] = ({k: meta[k] for k in ("dilation", "scratch", "in_place", "bytes")}, shares)
                members.setdefault(scope, []).append((n, copied[n]))
        if shares:
            shared.append((n, d[ir.INPUTS][0]))
        # lifetimes (peak_activation_bytes)
        sizes.append(meta["bytes"])
        scratch.append(meta["scratch"])
        last[n] = i
        scope_of[n] = scope
        for src in d[ir.INPUTS]:
            last[src] = i  # readers come in order: the last one seen is the last
            if scope_of[src] != scope:
                crossing.append((src, scope))
        scope_end[scope] = i
        stage_end[stage] = i
        if stage is None:
            continue
        if not whole:
            acc = groups.get(stage)
            if acc is None:
                acc = groups[stage] = [0, 0, 0, 1, n]
            figures = (meta["params"], meta["params"] if meta["trainable"] else 0, meta["macs"], meta["dilation"])
            _add(acc, *figures)
            if twin == n:  # a recorded block's own sums, for its copies
                _add(totals.setdefault(scope, [0, 0, 0, 1]), *figures)
        acc[4] = n
    g.graph[ir.G_PEAK_BYTES] = life.peak(g, order)
    _summaries(g, groups)


def _lifetime_plan(nodes: dict, members: list) -> tuple:
    """What a copy of a recorded block takes from it in :func:`_memory`, for ``members``, the
    block's (node, (memory figures, shares its operand's storage)) in order: each node's figures;
    the position in the block of each node's last reader (its own when none; a reader in a later
    block moves it on, as node by node); the positions of the nodes that share storage, each with
    its operand's (-1: the block's input); that of the block input's last reader; and each node's
    bytes and scratch bytes."""
    index = {n: k for k, (n, _) in enumerate(members)}
    rel_last = list(range(len(members)))
    x_last = 0
    for k, (n, _) in enumerate(members):
        for src in nodes[n][ir.INPUTS]:
            r = index.get(src)
            if r is None:
                x_last = k
            else:
                rel_last[r] = k  # readers come in order: the last one seen is the last
    return ([figures for _, (figures, _) in members], rel_last,
            [(k, index.get(nodes[n][ir.INPUTS][0], -1)) for k, (n, (_, shares)) in enumerate(members) if shares],
            x_last,
            [figures["bytes"] for _, (figures, _) in members], [figures["scratch"] for _, (figures, _) in members])


def _add(acc: list, params: int, trainable: int, macs: int, dilation: int) -> None:
    """Add a node's (or a block's) figures to a stage's or a block's sums."""
    acc[0] += params
    acc[1] += trainable
    acc[2] += macs
    if dilation > acc[3]:
        acc[3] = dilation


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
    life = _Lifetimes()
    for i, n in enumerate(order):
        d = nodes[n]
        life.add(i, n, d, d[ir.SCOPE], d[ir.META].get("in_place") or d[ir.OP] in _VIEWS)
    return life.peak(g, order)


class _Lifetimes:
    """The bookkeeping of :func:`peak_activation_bytes`, filled node by node in order."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.scope_of: dict[str, str] = {}
        self.scope_end: dict[str, int] = {}
        self.stage_end: dict[int, int] = {}
        self.crossing: list[tuple[str, str]] = []  # (operand, reader's scope) for operands made in another block
        # (in-place node or view, its operand), in order: the node shares its operand's storage
        self.shared: list[tuple[str, str]] = []
        self.sizes: list[int] = []  # each node's bytes (meta), in order
        self.scratch: list[int] = []  # and its scratch bytes

    def add(self, i: int, n: str, d: dict, scope: str, shares: bool) -> None:
        last, scope_of = self.last, self.scope_of
        last[n] = i
        scope_of[n] = scope
        for s in d[ir.INPUTS]:
            last[s] = i  # readers come in order: the last one seen is the last
            if scope_of[s] != scope:
                self.crossing.append((s, scope))
        self.scope_end[scope] = i
        self.stage_end[d[ir.STAGE]] = i
        if shares:
            self.shared.append((n, d[ir.INPUTS][0]))
        self.sizes.append(d[ir.META]["bytes"])
        self.scratch.append(d[ir.META].get("scratch", 0))

    def peak(self, g: nx.DiGraph, order: list[str]) -> int:
        last, scope_end, stage_end = self.last, self.scope_end, self.stage_end
        end = len(order)
        # the caller holds a block's input until the block returns
        for s, sc in self.crossing:
            if last[s] < scope_end[sc]:
                last[s] = scope_end[sc]
        # and forward() holds a stage's input until the stage (an nn.Sequential of blocks) returns
        for st in g.graph.get("stages", []):
            if st["index"] in stage_end and st["input"] in last:
                last[st["input"]] = max(last[st["input"]], stage_end[st["index"]])
        last[ir.INPUT] = end  # the caller holds the image
        for o in g.graph.get("outputs", []):
            last[o["node"]] = end
        # an in-place node shares its operand's storage (and has no bytes of its own): the storage
        # lives as long as either
        owner: dict[str, str] = {}
        free_at = last
        for n, src in self.shared:
            o = owner[n] = owner.get(src, src)
            if free_at[o] < last[n]:
                free_at[o] = last[n]
        releases = [0] * (end + 1)  # step -> bytes freed after it
        for n, size in zip(order, self.sizes):
            if size:
                releases[free_at[n]] += size
        # live bytes after step i (made up to it, less freed up to it): a running sum, in C
        after = itertools.accumulate(map(operator.sub, self.sizes, releases))
        # held while step i runs: what was live before it, its output and its scratch bytes
        #   = after[i] + releases[i] + scratch[i]
        return max(map(operator.add, after, map(operator.add, releases, self.scratch)), default=0)


def _summaries(g: nx.DiGraph, groups: dict[int, list]) -> None:
    nodes = g._node
    entries = [(-1, g.graph["stem"])] + [(st["index"], st) for st in g.graph["stages"]]
    for index, entry in entries:
        acc = groups.get(index)
        if acc is None:
            continue
        params, trainable, macs, dilation, last = acc
        out = nodes[last][ir.META]
        entry["params"] = params
        entry["trainable_params"] = trainable
        entry["macs"] = macs
        entry["rf"] = dict(out["rf"])
        entry["formula"] = out["formula"]
        entry["out_bytes"] = math.prod(out["shape"]) * BYTES_PER_ELEMENT
        entry["shape"] = tuple(out["shape"])
        entry["stride"] = out["stride"]
        entry["output"] = last
        entry["dilation"] = dilation
    for o in g.graph.get("outputs", []):
        meta = nodes[o["node"]][ir.META]
        o.update(stride=meta["stride"], shape=tuple(meta["shape"]), rf=dict(meta["rf"]))
