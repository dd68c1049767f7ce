"""Backend: the analysed IR -> the ``graphres info`` report (an 80-column text table, or JSON).

Everything here is read from what the passes wrote (``meta`` on the nodes, the stage entries on
the graph); nothing is computed from torch. Three levels of rows: ``stage`` (the input, the stem,
one row per stage), ``block`` (one row per block instance) and ``layer`` (one row per IR node).
The JSON form has stable keys, documented in docs/cli.md; its ``schema`` number changes when a key
changes meaning.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import networkx as nx

from .. import ir
from ..ir import format_formula
from ..ops import BYTES_PER_ELEMENT, OPS, OpDef

LEVELS = ("stage", "block", "layer")
SCHEMA = 1
WIDTH = 80


def _counted_ops(g: nx.DiGraph) -> list[str]:
    """The ops of this graph whose multiply-accumulates the analysis counts (those with a MACs rule
    in the op table: conv, linear, deform_conv, matmul), in the table's order."""
    zero = next(f.default for f in dataclasses.fields(OpDef) if f.name == "macs")
    present = {g.nodes[n][ir.OP] for n in g}
    return [name for name, op in OPS.items()
            if name in present and (op.macs is not zero or op.macs_shape is not None)]


# -- rows -----------------------------------------------------------------------------------------

def _rf(rf: dict) -> dict:
    out = {"size": rf["size"], "jump": rf["jump"], "center": rf["center"], "local_size": rf["local_size"]}
    if rf.get("deformable"):  # size is then a lower bound: the field depends on the offsets
        out["deformable"] = True
    return out


def _row(g: nx.DiGraph, name: str, kind: str, what: str, nodes: list[str], frozen: bool) -> dict[str, Any]:
    out = g.nodes[nodes[-1]][ir.META]
    metas = [g.nodes[n][ir.META] for n in nodes]
    return {
        "name": name, "kind": kind, "type": what,
        "shape": list(out["shape"]), "stride": out["stride"],
        "dilation": out["dilation"] if kind == "layer" else _dilation_of(g, nodes),
        "receptive_field": _rf(out["rf"]),
        "params": sum(m["params"] for m in metas),
        "trainable_params": sum(m["params"] for m in metas if m["trainable"]),
        "macs": sum(m["macs"] for m in metas),
        "output_bytes": out["bytes"] if kind == "layer" else math.prod(out["shape"]) * BYTES_PER_ELEMENT,
        "frozen": frozen,
    }


def _dilation_of(g: nx.DiGraph, nodes: list[str]) -> int:
    windows = [OPS[g.nodes[n][ir.OP]].window(g.nodes[n][ir.ATTRS]) for n in nodes if g.nodes[n][ir.OP] in OPS]
    return max((w.dilation for w in windows if w is not None and w.kernel > 1), default=1)


def layer_text(g: nx.DiGraph, n: str) -> str:
    """A short description of one node: ``conv 3x3/2 d2 g32``, ``BatchNorm``, ``relu``."""
    d = g.nodes[n]
    return OPS[d[ir.OP]].label(d[ir.ATTRS], g.graph, True) if d[ir.OP] in OPS else d[ir.OP]


def rows(g: nx.DiGraph, level: str) -> list[dict[str, Any]]:
    order = ir.topological_order(g)
    by_scope: dict[str, list[str]] = {}
    for n in order:
        if n != ir.INPUT:
            by_scope.setdefault(g.nodes[n][ir.SCOPE], []).append(n)
    out = [_row(g, "input", "input", "", [ir.INPUT], False)]
    if level == "layer":
        for n in order[1:]:
            stage = g.nodes[n][ir.STAGE]
            row = _row(g, n, "layer", layer_text(g, n), [n], ir.is_frozen(g, stage))
            row["in_place"] = bool(g.nodes[n][ir.META].get("in_place"))
            out.append(row)
        return out
    out.append(_row(g, "stem", "stem", g.graph["stem"]["block"], by_scope["stem"], ir.is_frozen(g, -1)))
    for st in g.graph["stages"]:
        scopes = [f"{st['name']}.{b}" for b in range(st["blocks"])]
        frozen = ir.is_frozen(g, st["index"])
        if level == "stage":
            nodes = [n for s in scopes for n in by_scope[s]]
            row = _row(g, st["name"], "stage", f"{st['block']} x{st['blocks']}", nodes, frozen)
            row["dilations"] = list(st["dilations"])
            row["blocks"] = st["blocks"]
            out.append(row)
        else:
            for s in scopes:
                out.append(_row(g, s, "block", g.nodes[by_scope[s][-1]][ir.BLOCK_TYPE] or st["block"],
                                by_scope[s], frozen))
    head = g.graph.get("head")
    if head:
        out.append(_row(g, "head", "head", " + ".join(head["nodes"]), head["nodes"],
                        False))
    return out


# -- JSON -----------------------------------------------------------------------------------------

def info_dict(g: nx.DiGraph, level: str = "stage") -> dict[str, Any]:
    """The whole report as plain data (the ``--json`` output)."""
    stages = []
    for st in g.graph["stages"]:
        stages.append({
            "index": st["index"], "name": st["name"], "block": st["block"], "blocks": st["blocks"],
            "shape": list(st["shape"]), "stride": st["stride"], "dilations": list(st["dilations"]),
            "receptive_field": _rf(st["rf"]), "params": st["params"], "trainable_params": st["trainable_params"],
            "macs": st["macs"], "flops": 2 * st["macs"], "output_bytes": st["out_bytes"],
            "size_formula": _formula_hw(st["formula"]), "frozen": ir.is_frozen(g, st["index"]),
        })
    outputs = [{"index": o["index"], "name": o["name"], "channels": o["channels"], "stride": o["stride"],
                "shape": list(o["shape"]), "receptive_field": _rf(o["rf"]),
                "size_formula": _formula_hw(g.nodes[o["node"]][ir.META]["formula"])}
               for o in g.graph["outputs"]]
    size = list(g.nodes[ir.INPUT][ir.META]["shape"])
    return {
        "schema": SCHEMA,
        "name": g.graph["name"],
        "input": {"channels": size[0], "size": size[1:]},
        "totals": {
            "params": g.graph["params"], "trainable_params": g.graph["trainable_params"],
            "frozen_params": g.graph["frozen_params"], "macs": g.graph["macs"], "flops": 2 * g.graph["macs"],
            "peak_activation_bytes": g.graph["peak_bytes"],
        },
        "stages": stages,
        "outputs": outputs,
        "fpn_in_channels": [o["channels"] for o in g.graph["outputs"]],
        "level": level,
        "rows": rows(g, level),
    }


def _formula_hw(f) -> str:
    if f is None:
        return "-"
    return f"{format_formula(f, 'H')} x {format_formula(f, 'W')}"


# -- text -----------------------------------------------------------------------------------------

def _commas(n: int) -> str:
    return f"{n:,}"


def _compact(n: int) -> str:
    """Three significant digits with a K/M/G suffix: ``9.54K``, ``118M``, ``1.46G``."""
    for unit, scale in (("G", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _rf_text(rf: dict) -> str:
    return ir.format_rf(rf, compact=True)


def _dil_text(row: dict) -> str:
    dils = row.get("dilations")
    if dils and min(dils) != max(dils):
        return f"{min(dils)}-{max(dils)}"
    return str(row["dilation"])


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


class _Style:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and text else text


def format_info(g: nx.DiGraph, level: str = "stage", color: bool = False, source: str | None = None) -> str:
    """The human report: a header, the table of ``level`` rows with totals, then the outputs."""
    style = _Style(color)
    data = info_dict(g, level)
    table = data["rows"]
    first = {"stage": "stage", "block": "block", "layer": "layer"}[level]
    heads = [first, "out", "type", "output", "stride", "dil", "RF", "params", "MACs"]
    right = [False, True, False, False, True, True, True, True, True]
    # the row that produces each feature output
    marks = {o["name"]: o["index"] for o in data["outputs"]} if level == "stage" else \
        {o["node"]: o["index"] for o in g.graph["outputs"]} if level == "layer" else \
        {f"{o['name']}.{g.graph['stages'][o['index']]['blocks'] - 1}": o["index"] for o in g.graph["outputs"]}

    # a layer's type already shows its dilation ("conv 3x3 d2"): no dil column at layer level
    keep = [i for i, h in enumerate(heads) if not (level == "layer" and h == "dil")]

    def cells(number) -> list[list[str]]:
        out = []
        for r in table:
            name = r["name"] + ("*" if r["frozen"] else "")
            row = [name, str(marks.get(r["name"], "")), r["type"], _shape_text(r["shape"]), str(r["stride"]),
                   _dil_text(r), _rf_text(r["receptive_field"]),
                   number(r["params"]) if r["kind"] != "input" else "",
                   number(r["macs"]) if r["kind"] != "input" else ""]
            out.append([row[i] for i in keep])
        return out

    heads, right = [heads[i] for i in keep], [right[i] for i in keep]
    totals = ["total"] + [""] * (len(keep) - 3) + [_commas(data["totals"]["params"]), _commas(data["totals"]["macs"])]
    body = cells(_commas)
    widths = _widths(heads, body + [totals])
    if sum(widths) + len(widths) - 1 > WIDTH:  # long layer names: abbreviate the per-row counts
        body = cells(_compact)
        totals[-2:] = [_compact(data["totals"]["params"]), _compact(data["totals"]["macs"])]
        widths = _widths(heads, body + [totals])

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return " ".join(parts).rstrip()

    t = data["totals"]
    inp = data["input"]
    lines = [style(f"{data['name']}", "1") + f": input {inp['channels']}x{inp['size'][0]}x{inp['size'][1]}"
             + (f" ({source})" if source else ""), ""]
    lines.append(style(line(heads), "1"))
    for r, c in zip(table, body):
        text = line(c)
        lines.append(style(text, "2") if r["frozen"] else text)
    lines.append(line(totals))
    lines.append("")
    notes = []
    if any(r["frozen"] for r in table):
        notes.append("* frozen")
    if marks:
        notes.append("out: feature output index")
    notes.append("RF: receptive field in pixels")
    lines.append("; ".join(notes))
    if any(r["receptive_field"].get("deformable") for r in table):
        lines.append("RF >=N: deformable; after a deformable conv the field depends on its offsets,")
        lines.append("and N, its field at zero offsets, is a lower bound")
    lines.append("")
    frozen_txt = f" (trainable {_commas(t['trainable_params'])}, frozen {_commas(t['frozen_params'])})" \
        if t["frozen_params"] else " (all trainable)"
    lines.append(f"parameters   {_commas(t['params'])}{frozen_txt}")
    macs = f"MACs         {_commas(t['macs'])} = {t['macs'] / 1e9:.2f} G multiply-accumulates"
    counted = f"({' + '.join(_counted_ops(g))})"
    # the ops counted: a second line where they do not fit the first
    lines.extend([f"{macs} {counted}"] if len(macs) + 1 + len(counted) <= WIDTH else [macs, " " * 13 + counted])
    lines.append(f"FLOPs        {_commas(t['flops'])} = 2 x MACs")
    lines.append(f"activations  peak {_bytes(t['peak_activation_bytes'])} per image during the forward "
                 "(float32)")
    lines.append("")
    lines.append(style("outputs", "1") + f"  (FPN in_channels: {data['fpn_in_channels']})")
    oheads = ["index", "stage", "channels", "stride", "RF", "size", "size rule"]
    orows = [[str(o["index"]), o["name"], str(o["channels"]), str(o["stride"]), _rf_text(o["receptive_field"]),
              _shape_text(o["shape"][1:]), o["size_formula"]] for o in data["outputs"]]
    ow = _widths(oheads, orows)
    oright = [True, False, True, True, True, False, False]

    def oline(values: list[str]) -> str:
        return "  " + " ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, ow, oright)).rstrip()

    lines.append(oline(oheads))
    lines.extend(oline(r) for r in orows)
    return "\n".join(lines)


def _widths(heads: list[str], body: list[list[str]]) -> list[int]:
    return [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(heads)]
