"""Analysis pass: output shape, stride, dilation, parameters and MACs of every node (no torch).

Writes ``meta['shape']`` (C, H, W), ``meta['stride']`` (reduction w.r.t. the input),
``meta['params']`` and ``meta['macs']`` on each node, per-stage summaries on the graph, and checks
that no spatial size reaches zero for the declared input size.
"""
from __future__ import annotations

import networkx as nx

from .. import ir
from ..diagnostics import Diagnostic, DiagnosticBag
from ..ops import OPS


def infer_shapes(g: nx.DiGraph, diags: DiagnosticBag, input_size: tuple[int, int] | None = None) -> None:
    size = tuple(input_size or g.graph[ir.G_INPUT_SIZE])
    g.graph[ir.G_ANALYSED_SIZE] = size
    reported = False
    nodes = g._node
    # (twin, operand shapes) -> (shape, the window's stride, params, macs): a repeated block's
    # nodes take the rules' results of their twin's (ir.TWIN) for the same operand shapes
    done: dict[tuple, tuple] = {}
    scope = same = None  # the copied block being walked; whether its input is its twin block's
    copied: dict[str, dict] = {}  # twin -> its figures, for its copies
    members: dict[str, list] = {}  # a recorded block -> [(node, its figures)], in order
    params = macs = 0
    order = ir.topological_order(g)
    i, end = -1, len(order)
    while i + 1 < end:
        i += 1
        n = order[i]
        d = nodes[n]
        meta = d[ir.META]
        twin = d.get(ir.TWIN)
        if twin is not None and twin != n:
            # a block lowering copied: every node a function of the block's input alone, so with an
            # input of its twin block's shape and stride, each node has its twin's figures
            if d[ir.SCOPE] != scope:
                scope = d[ir.SCOPE]
                same = ir.input_as_twins(nodes, n)
                block = members.get(nodes[twin][ir.SCOPE]) if same else None
                if block is not None and ir.copied_block(nodes, order, i, block[0][0], block[-1][0], len(block)):
                    for m, (_, figures) in zip(order[i:i + len(block)], block):  # the whole block at once
                        nodes[m][ir.META].update(figures)
                        params += figures["params"]
                        macs += figures["macs"]
                    i += len(block) - 1
                    continue
            if same:
                figures = copied.get(twin)
                if figures is None:
                    t = nodes[twin][ir.META]
                    figures = copied[twin] = {"shape": t["shape"], "stride": t["stride"], "params": t["params"],
                                              "macs": t["macs"]}
                meta.update(figures)
                params += figures["params"]
                macs += figures["macs"]
                continue
        reported = _node_shape(g, n, d, meta, twin, done, size, diags, reported)
        params += meta["params"]
        macs += meta["macs"]
        if twin == n:
            figures = copied[n] = {"shape": meta["shape"], "stride": meta["stride"], "params": meta["params"],
                                   "macs": meta["macs"]}
            members.setdefault(d[ir.SCOPE], []).append((n, figures))
    for st in g.graph[ir.G_STAGES]:
        meta = g._node[st["output"]][ir.META]
        st["shape"] = meta.get("shape")
        st["stride"] = meta.get("stride")
    g.graph[ir.G_PARAMS] = params
    g.graph[ir.G_MACS] = macs


def _node_shape(g: nx.DiGraph, n: str, d: dict, meta: dict, twin: str | None, done: dict, size: tuple,
                diags: DiagnosticBag, reported: bool) -> bool:
    """The figures of node ``n`` by its op's rules (or a twin's for the same operand shapes), and
    its errors (one at most, with ``reported``); returns whether an error is reported."""
    nodes, settings = g._node, g.graph
    if d[ir.OP] == "input":
        meta.update(shape=(d[ir.OUT_CH],) + size, stride=1, params=0, macs=0)
        return reported
    srcs = d[ir.INPUTS]
    first = nodes[srcs[0]][ir.META]
    full = tuple([nodes[s][ir.META]["shape"] for s in srcs])
    if twin is not None:
        hit = done.get((twin, full))
        if hit is not None:
            shape, wstride, params, macs = hit
            meta.update(shape=shape, stride=first["stride"] * wstride, params=params, macs=macs)
            return reported
    op, a = OPS[d[ir.OP]], d[ir.ATTRS]
    if op.shape is not None or any(len(s) != 3 for s in full):
        return _tensor_shape(g, n, op, list(full), diags, reported)
    shapes = [s[1:] for s in full]
    hw = op.spatial(a, shapes)
    problem = op.check_spatial(a, shapes)
    if problem is not None and not reported:
        code, message, hint = problem
        diags.add(code, message.format(node=n), d[ir.SPAN] if code == "E030" else d[ir.DEF_SPAN] or d[ir.SPAN],
                  hint)
        reported = True
    window = op.window(a)
    wstride = window.stride if window is not None else 1
    out_ch = d[ir.OUT_CH]
    shape = (out_ch,) + tuple(hw)
    params = op.params(a, d[ir.IN_CH], out_ch, settings)
    macs = op.macs(a, d[ir.IN_CH], out_ch, hw)
    meta.update(shape=shape, stride=first["stride"] * wstride, params=params, macs=macs)
    if twin is not None and problem is None and min(hw) > 0:
        done[(twin, full)] = (shape, wstride, params, macs)
    if min(hw) <= 0 and not reported and window is not None and window.dilation > 1:
        reported = True
        w = window
        extent = w.dilation * (w.kernel - 1) + 1
        padded = "x".join(str(s + 2 * w.padding) for s in first["shape"][1:])
        diags.extend([Diagnostic(
            "E040", f"dilated {d[ir.OP]} {n}: its {w.kernel}x{w.kernel} kernel with dilation {w.dilation} "
                    f"spans {extent} pixels, more than its {'x'.join(map(str, first['shape'][1:]))} input "
                    f"padded by {w.padding} ({padded}), for the input size {size[0]}x{size[1]}",
            _dilation_span(g, d), "lower the stage's dilation (or multi_grid), or use a larger input.size")])
    if min(hw) <= 0 and not reported:
        reported = True
        where = f"stage {d[ir.STAGE]} (layer{d[ir.STAGE] + 1})" if d[ir.STAGE] is not None and d[ir.STAGE] >= 0 \
            else "the stem"
        in_hw = "x".join(map(str, first["shape"][1:]))
        diags.extend([Diagnostic(
            "E032", f"spatial size reaches zero at {n} in {where}: a {in_hw} input becomes "
                    f"{'x'.join(map(str, hw))} for the input size {size[0]}x{size[1]}",
            d[ir.SPAN], "use a larger input.size, fewer stages, or stride 1 (with dilation) in late stages")])
    return reported


def _tensor_shape(g: nx.DiGraph, n: str, op, full: list[tuple], diags: DiagnosticBag, reported: bool) -> bool:
    """The shape rule of a rank-generic tensor op (attention's reshapes, matmuls, softmaxes), or
    E120 for a C x H x W op fed a tensor of another rank. Returns whether an error is reported."""
    d = g.nodes[n]
    meta = d[ir.META]
    first = g.nodes[ir.inputs_of(g, n)[0]][ir.META]
    problem = None
    if op.shape is None:
        bad = next(s for s in full if len(s) != 3)
        problem = (f"'{d[ir.OP]}' at {{node}} needs a C x H x W map, got a tensor of shape "
                   f"{'x'.join(map(str, bad))}", "reshape or unflatten it back to a map first")
    else:
        problem = op.check_shape(d[ir.ATTRS], full)
    shape = tuple(op.shape(d[ir.ATTRS], full)) if op.shape is not None and problem is None else tuple(full[0])
    in_ch = d[ir.IN_CH] if d[ir.IN_CH] is not None else full[0][0]
    out_ch = d[ir.OUT_CH] if d[ir.OUT_CH] is not None else (shape[0] if shape else 1)
    macs = op.macs_shape(d[ir.ATTRS], full, shape) if op.macs_shape is not None and problem is None else 0
    meta.update(shape=shape, stride=first["stride"], params=op.params(d[ir.ATTRS], in_ch, out_ch, g.graph), macs=macs)
    if problem is not None and not reported:
        message, hint = problem
        diags.add("E120", message.format(node=n), d[ir.DEF_SPAN] or d[ir.SPAN], hint)
        return True
    return reported


def _dilation_span(g: nx.DiGraph, d: dict):
    """Where the node's stage sets its dilation (the stage entry when it does not)."""
    stages = g.graph["stages"]
    if d[ir.STAGE] is not None and 0 <= d[ir.STAGE] < len(stages):
        return stages[d[ir.STAGE]]["spans"]["dilation"]
    return d[ir.SPAN]
