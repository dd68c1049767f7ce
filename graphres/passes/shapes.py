"""Analysis pass: output shape, stride, dilation, parameters and MACs of every node (no torch).

Writes ``meta['shape']`` (C, H, W), ``meta['stride']`` (reduction w.r.t. the input),
``meta['params']`` and ``meta['macs']`` on each node, per-stage summaries on the graph, and checks
that no spatial size reaches zero for the declared input size.
"""
from __future__ import annotations

import networkx as nx

from .. import ir
from ..diagnostics import Diagnostic, DiagnosticBag
from ..ops import macs, out_hw, param_count


def infer_shapes(g: nx.DiGraph, diags: DiagnosticBag, input_size: tuple[int, int] | None = None) -> None:
    size = tuple(input_size or g.graph["input_size"])
    norm = g.graph["norm"]
    reported = False
    for n in ir.topological_order(g):
        d = g.nodes[n]
        meta = d[ir.META]
        if d[ir.OP] == "input":
            meta.update(shape=(d[ir.OUT_CH],) + size, stride=1, params=0, macs=0)
            continue
        srcs = ir.inputs_of(g, n)
        first = g.nodes[srcs[0]][ir.META]
        hw = out_hw(d[ir.OP], d[ir.ATTRS], first["shape"][1:])
        if d[ir.OP] == "linear" and tuple(first["shape"][1:]) != (1, 1) and not reported:
            diags.add("E053", f"'linear' at {n} needs a 1x1 input, got {'x'.join(map(str, first['shape'][1:]))}",
                      d[ir.DEF_SPAN] or d[ir.SPAN], "put a global_avgpool before it")
            reported = True
        if d[ir.OP] in ("add", "mul", "concat"):
            shapes = [g.nodes[s][ir.META]["shape"][1:] for s in srcs]
            bad = [s for s in shapes[1:] if s != shapes[0] and not (d[ir.OP] == "mul" and s == (1, 1))]
            if bad and not reported:
                diags.add("E030", f"'{d[ir.OP]}' at {n} joins tensors of spatial sizes "
                                  f"{' and '.join('x'.join(map(str, s)) for s in shapes)}", d[ir.SPAN],
                          "the branches must reduce the size by the same stride")
                reported = True
        in_stride = first["stride"]
        step = d[ir.ATTRS].get("stride") or (d[ir.ATTRS].get("kernel") if d[ir.OP] in ("maxpool", "avgpool") else 1)
        stride = in_stride * (step or 1) if d[ir.OP] != "global_avgpool" else in_stride
        out_ch = d[ir.OUT_CH]
        meta.update(
            shape=(out_ch,) + tuple(hw),
            stride=stride,
            params=param_count(d[ir.OP], d[ir.ATTRS], d[ir.IN_CH], out_ch, norm),
            macs=macs(d[ir.OP], d[ir.ATTRS], d[ir.IN_CH], out_ch, hw),
        )
        a = d[ir.ATTRS]
        if min(hw) <= 0 and not reported and d[ir.OP] == "conv" and a["dilation"] > 1:
            reported = True
            extent = a["dilation"] * (a["kernel"] - 1) + 1
            padded = "x".join(str(s + 2 * a["padding"]) for s in first["shape"][1:])
            diags.extend([Diagnostic(
                "E040", f"dilated conv {n}: its {a['kernel']}x{a['kernel']} kernel with dilation {a['dilation']} "
                        f"spans {extent} pixels, more than its {'x'.join(map(str, first['shape'][1:]))} input "
                        f"padded by {a['padding']} ({padded}), for the input size {size[0]}x{size[1]}",
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
    for st in g.graph["stages"]:
        meta = g.nodes[st["output"]][ir.META]
        st["shape"] = meta.get("shape")
        st["stride"] = meta.get("stride")
    g.graph["params"] = sum(g.nodes[n][ir.META].get("params", 0) for n in g)
    g.graph["macs"] = sum(g.nodes[n][ir.META].get("macs", 0) for n in g)



def _dilation_span(g: nx.DiGraph, d: dict):
    """Where the node's stage sets its dilation (the stage entry when it does not)."""
    stages = g.graph["stages"]
    if d[ir.STAGE] is not None and 0 <= d[ir.STAGE] < len(stages):
        return stages[d[ir.STAGE]]["spans"]["dilation"]
    return d[ir.SPAN]
