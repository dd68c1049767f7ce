"""Consistency checks that need the analysis (shapes, dilations, freezing); they run last.

Each finding is a located :class:`~graphres.diagnostics.Diagnostic`. ``spec`` is the checked
:class:`~graphres.spec.model.Spec` (used only for the spans of its values; this module does not
import the spec package).
"""
from __future__ import annotations

from typing import Any

import networkx as nx

from .. import ir
from ..ops import OPS
from ..diagnostics import Diagnostic, DiagnosticBag
from .analysis import stage_frozen


def check(g: nx.DiGraph, spec: Any, diags: DiagnosticBag) -> None:
    """Add the findings for the analysed graph ``g`` of ``spec`` to ``diags``."""
    _tiny_outputs(g, spec, diags)
    _dilated_beyond_input(g, spec, diags)
    _dilation_schedule(g, spec, diags)
    _frozen_order(g, spec, diags)


def _hw(shape) -> str:
    return f"{shape[1]}x{shape[2]}"


def _tiny_outputs(g: nx.DiGraph, spec: Any, diags: DiagnosticBag) -> None:
    """W002: a feature output of 1x1 (or 1 pixel on one side) has no spatial layout left for a
    detection or segmentation head."""
    size = g._node[ir.INPUT][ir.META]["shape"][1:]
    for o in g.graph["outputs"]:
        shape = g._node[o["node"]][ir.META]["shape"]
        if min(shape[1:]) <= 1:
            diags.extend([Diagnostic(
                "W002", f"feature output {o['index']} ({o['name']}) is only {_hw(shape)} for the input size "
                        f"{size[0]}x{size[1]} (stride {g._node[o['node']][ir.META]['stride']})",
                o["span"],
                "a dense head needs a spatial map: use a larger input.size, or drop this stage from out_indices")])


def _dilated_beyond_input(g: nx.DiGraph, spec: Any, diags: DiagnosticBag) -> None:
    """W003: a dilated conv whose kernel spans more than its (unpadded) input: its outer taps only
    ever read zero padding. Reported once per stage, at the first such conv."""
    seen: set = set()
    # the analysis' largest dilation of each stage (and the stem): only those above 1 have any
    dilated = {index for index, entry in [(-1, g.graph["stem"])] + [(st["index"], st) for st in g.graph["stages"]]
               if entry.get("dilation", 2) != 1}
    if not dilated:
        return
    for n in ir.topological_order(g):
        d = g._node[n]
        if d[ir.STAGE] not in dilated or d[ir.META].get("dilation", 1) == 1:
            continue  # neither its own dilation nor its block's: no dilated window (the analysis)
        w = OPS[d[ir.OP]].window(d[ir.ATTRS]) if d[ir.OP] in OPS else None
        if w is None or w.dilation == 1 or d[ir.STAGE] in seen:
            continue
        a = {"kernel": w.kernel, "dilation": w.dilation}
        extent = a["dilation"] * (a["kernel"] - 1) + 1
        src = g._node[ir.inputs_of(g, n)[0]][ir.META]["shape"]
        if extent > max(src[1:]):
            seen.add(d[ir.STAGE])
            where = f"layer{d[ir.STAGE] + 1}" if d[ir.STAGE] >= 0 else "the stem"
            diags.extend([Diagnostic(
                "W003", f"dilated conv {n} in {where}: its {a['kernel']}x{a['kernel']} kernel with dilation "
                        f"{a['dilation']} spans {extent} pixels but its input is only {_hw(src)}, so the outer "
                        "taps read nothing but zero padding",
                _stage_span(spec, d[ir.STAGE], "dilation"),
                "lower this stage's dilation (or multi_grid), or analyse a larger input (--input)")])


def _dilation_schedule(g: nx.DiGraph, spec: Any, diags: DiagnosticBag) -> None:
    """W004: once a stride has been traded for dilation, a later stage runs at a lower dilation."""
    stages = g.graph["stages"]
    for prev, st in zip(stages, stages[1:]):
        before, now = max(prev["dilations"]), max(st["dilations"])
        if before > 1 and now < before:
            diags.extend([Diagnostic(
                "W004", f"the dilation schedule decreases: {prev['name']} runs at dilation {before} but "
                        f"{st['name']}, after it, at {now}",
                _stage_span(spec, st["index"], "dilation"),
                "a stage after one that traded its stride for dilation needs at least the same dilation "
                f"(torchvision doubles it for each traded stride: 2 then 4 at output stride 8); "
                f"set {st['name']}'s dilation to {before} or more")])


def _frozen_order(g: nx.DiGraph, spec: Any, diags: DiagnosticBag) -> None:
    """W005: a frozen stage after a trainable one (gradients still flow through the frozen stage,
    so freezing it saves no backward work; usually the freezing was meant for a prefix)."""
    trainable_before = None
    for st in [{"index": -1, "name": "the stem"}] + g.graph["stages"]:
        i = st["index"]
        frozen = stage_frozen(g, i)
        if frozen and trainable_before is not None:
            diags.extend([Diagnostic(
                "W005", f"{st['name']} is frozen but {trainable_before}, before it, is trainable",
                _stage_span(spec, i, "frozen"),
                "gradients for the earlier stage still pass through the frozen one; freeze a prefix "
                "(frozen_stages: k freezes the stem and layer1..layerk) or unfreeze this stage")])
            return
        if not frozen:
            trainable_before = st["name"]


def _stage_span(spec: Any, index: int, key: str):
    if index is None or index < 0:
        return spec.doc.span(("stem",))
    return spec.doc.span(("stages", index, key))  # or the stage entry, where the key is not written
