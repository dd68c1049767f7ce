"""Backend: two analysed IRs -> the ``graphres diff`` report, as 80-column text or JSON.

Per stage (stem, layer1.., head) it compares what the passes wrote (blocks, block type,
channels, output shape, stride, dilations, receptive field, parameters, MACs, frozen); per layer
it compares the modules by state-dict name and the names and shapes of their tensors, and says
whether a checkpoint of A loads into B. No torch: the tensors of each module come from its IR
node by :func:`module_tensors`, the rule the torch backend follows when it creates the module
(``tests/test_diff.py`` checks it against ``state_dict()`` for every shipped spec). The JSON form
has stable keys, documented in docs/cli.md; ``schema`` changes when a key changes meaning.
"""
from __future__ import annotations

import textwrap
from typing import Any, Iterable

import networkx as nx

from .. import ir
from ..ops import OPS
from .info import layer_text

SCHEMA = 1
WIDTH = 80
LEVELS = ("stage", "layer")

# stage fields in report order: JSON key, text label
STAGE_FIELDS = (("block", "block"), ("blocks", "blocks"), ("channels", "channels"), ("shape", "output"),
                ("stride", "stride"), ("dilations", "dilation"), ("receptive_field", "RF"),
                ("params", "params"), ("trainable_params", "trainable"), ("macs", "MACs"), ("frozen", "frozen"))
# spec-wide settings that change what the network computes or trains
SETTINGS = ("input", "norm", "conv", "act", "out_indices", "frozen_stages", "norm_eval", "zero_init_residual",
            "with_cp")
_LIST_MAX = 4
_SUMMARY_FIELDS = ("block", "blocks", "shape", "params", "macs")


# -- state-dict tensors, statically ---------------------------------------------------------------

def module_tensors(op: str, attrs: dict, in_ch: int, out_ch: int, norm: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict entries (parameters and buffers) of one node's module, name -> shape (the op
    table's rule)."""
    return OPS[op].tensors(attrs, in_ch, out_ch, {"norm": norm}) if op in OPS else {}


def modules(g: nx.DiGraph) -> dict[str, str]:
    """State-dict path -> the node that first calls it, in the order torch's state dict lists them
    (a module called again is one module): the generated code declares a block's modules in
    lowering's declaration order (a plugin's after the block's own), then first use, and a
    container's children follow the container's first child (``convs.0, convs.1, bns.0``)."""
    order = ir.topological_order(g)
    scope_rank: dict[str, int] = {}
    for n in order:
        scope_rank.setdefault(g.nodes[n][ir.SCOPE], len(scope_rank))
    ranked = sorted(order, key=lambda n: (scope_rank[g.nodes[n][ir.SCOPE]], g.nodes[n].get(ir.DECL) or (0,)))
    first: dict[str, str] = {}
    tree: dict = {}
    for n in ranked:
        module = g.nodes[n][ir.MODULE]
        if module is None or module in first:
            continue
        first[module] = n
        node = tree
        for part in module.split("."):
            node = node.setdefault(part, {})
    out: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for part, child in node.items():
            path = f"{prefix}{part}"
            if path in first:
                out[path] = first[path]
            walk(child, path + ".")
    walk(tree, "")
    return out


def state_dict_shapes(g: nx.DiGraph) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the module built from ``g`` with its tensor shape, without torch."""
    out = {}
    for module, n in modules(g).items():
        d = g.nodes[n]
        for key, shape in module_tensors(d[ir.OP], d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], g.graph["norm"]).items():
            out[f"{module}.{key}" if key else module] = shape  # "": the module is a bare parameter (a gamma)
    return _torch_order(out)


def _torch_order(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The keys in nn.Module.state_dict's order: each module's own tensors (a bare parameter such as
    GeneralizedAttention's appr_bias, geom_bias, gamma included) before its children's, the children
    in the order they first appear."""
    own: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for key in shapes:
        owner = key.rpartition(".")[0]
        own.setdefault(owner, []).append(key)
        parts = owner.split(".") if owner else []
        for i in range(len(parts)):
            parent, child = ".".join(parts[:i]), ".".join(parts[:i + 1])
            listed = children.setdefault(parent, [])
            if child not in listed:
                listed.append(child)
    out: dict[str, tuple[int, ...]] = {}
    stack = [""]
    while stack:
        path = stack.pop()
        for key in own.get(path, []):
            out[key] = shapes[key]
        stack.extend(reversed(children.get(path, [])))
    return out


# -- the comparison -------------------------------------------------------------------------------

def _rf(rf: dict):
    """The receptive field compared: its size, or after a deformable conv the lower-bound text."""
    return ir.format_rf(rf) if rf.get("deformable") else rf["size"]


def _stage_records(g: nx.DiGraph) -> dict[str, dict[str, Any]]:
    def record(entry: dict, block: str, blocks: int | None, dilations: list[int], frozen: bool) -> dict:
        shape = list(entry["shape"])
        return {"block": block, "blocks": blocks, "channels": shape[0], "shape": shape, "stride": entry["stride"],
                "dilations": dilations, "receptive_field": _rf(entry["rf"]), "params": entry["params"],
                "trainable_params": entry["trainable_params"], "macs": entry["macs"], "frozen": frozen}

    stem = g.graph["stem"]
    out = {"stem": record(stem, stem["block"], None, [stem["dilation"]], ir.is_frozen(g, -1))}
    for st in g.graph["stages"]:
        out[st["name"]] = record(st, st["block"], st["blocks"], list(st["dilations"]), ir.is_frozen(g, st["index"]))
    head = g.graph.get("head")
    if head:
        metas = [g.nodes[n][ir.META] for n in head["nodes"]]
        last = metas[-1]
        out["head"] = {"block": " + ".join(head["nodes"]), "blocks": None, "channels": last["shape"][0],
                       "shape": list(last["shape"]), "stride": last["stride"], "dilations": [last["dilation"]],
                       "receptive_field": _rf(last["rf"]), "params": sum(m["params"] for m in metas),
                       "trainable_params": sum(m["params"] for m in metas if m["trainable"]),
                       "macs": sum(m["macs"] for m in metas), "frozen": False}
    return out


def _settings(g: nx.DiGraph) -> dict[str, Any]:
    out = {key: g.graph.get(key) for key in SETTINGS if key != "input"}
    out["input"] = list(g.nodes[ir.INPUT][ir.META]["shape"])
    return {key: out[key] for key in SETTINGS}


def _layer_records(g: nx.DiGraph) -> dict[str, dict[str, Any]]:
    out = {}
    for module, n in modules(g).items():
        d = g.nodes[n]
        tensors = module_tensors(d[ir.OP], d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], g.graph["norm"])
        out[module] = {"name": module, "op": d[ir.OP], "type": layer_text(g, n), "attrs": dict(d[ir.ATTRS]),
                       "in_channels": d[ir.IN_CH], "out_channels": d[ir.OUT_CH],
                       "tensors": {k: list(v) for k, v in tensors.items()}}
    return out


def _layer_changes(a: dict, b: dict) -> list[str]:
    """What differs between two records of the same module, as short phrases."""
    out = []
    if a["op"] != b["op"]:
        out.append(f"op {a['op']} -> {b['op']}")
    else:
        for key in sorted(set(a["attrs"]) | set(b["attrs"])):
            if a["attrs"].get(key) != b["attrs"].get(key):
                out.append(f"{key} {a['attrs'].get(key)} -> {b['attrs'].get(key)}")
    if a["in_channels"] != b["in_channels"]:
        out.append(f"in {a['in_channels']} -> {b['in_channels']}")
    if a["out_channels"] != b["out_channels"] and "out" not in a["attrs"]:  # else said by attrs' out
        out.append(f"out {a['out_channels']} -> {b['out_channels']}")
    for key in list(a["tensors"]) + [k for k in b["tensors"] if k not in a["tensors"]]:
        sa, sb = a["tensors"].get(key), b["tensors"].get(key)
        if sa is None:
            out.append(f"+{key} {_shape(sb)}")
        elif sb is None:
            out.append(f"-{key} {_shape(sa)}")
        elif sa != sb:
            out.append(f"{key} {_shape(sa)} -> {_shape(sb)}")
    return out


def _same_form(key: str, value: Any) -> Any:
    """Dilations compare as one number when every block has the same (six 1s and 23 1s agree)."""
    if key == "dilations" and value and len(set(value)) == 1:
        return value[0]
    return value


def checkpoint_fit(a: dict[str, tuple], b: dict[str, tuple]) -> dict[str, Any]:
    """Whether a state dict with ``a``'s keys and shapes loads into a module with ``b``'s."""
    missing = [k for k in b if k not in a]
    unexpected = [k for k in a if k not in b]
    mismatched = [{"key": k, "a": list(a[k]), "b": list(b[k])} for k in a if k in b and a[k] != b[k]]
    left = missing + unexpected + [m["key"] for m in mismatched]
    return {"strict": not left, "except_fc": all(k.startswith("fc.") for k in left),
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def diff_dict(ga: nx.DiGraph, gb: nx.DiGraph, a_file: str = "A", b_file: str = "B",
              overrides: tuple[list[str], list[str]] = ([], [])) -> dict[str, Any]:
    """The whole comparison as plain data (the ``--json`` output); ``overrides`` are each side's
    ``--set`` values, shown in the report."""
    sa, sb = _stage_records(ga), _stage_records(gb)
    stages = []
    for name in list(sa) + [n for n in sb if n not in sa]:
        ra, rb = sa.get(name), sb.get(name)
        if ra is None or rb is None:
            stages.append({"name": name, "status": "added" if ra is None else "removed",
                           "changed": [key for key, _ in STAGE_FIELDS], "a": ra, "b": rb})
            continue
        changed = [key for key, _ in STAGE_FIELDS if _same_form(key, ra[key]) != _same_form(key, rb[key])]
        stages.append({"name": name, "status": "changed" if changed else "same", "changed": changed,
                       "a": ra, "b": rb})
    seta, setb = _settings(ga), _settings(gb)
    settings = {k: {"a": seta[k], "b": setb[k]} for k in SETTINGS if seta[k] != setb[k]}
    la, lb = _layer_records(ga), _layer_records(gb)
    changed_layers = []
    for name in la:
        if name in lb and (la[name] != lb[name]):
            changed_layers.append({"name": name, "a": la[name], "b": lb[name],
                                   "changes": _layer_changes(la[name], lb[name])})
    layers = {"added": [lb[n] for n in lb if n not in la], "removed": [la[n] for n in la if n not in lb],
              "changed": changed_layers,
              "unchanged": sum(1 for n in la if n in lb and la[n] == lb[n])}
    dict_a, dict_b = state_dict_shapes(ga), state_dict_shapes(gb)

    def totals(g: nx.DiGraph, sd: dict) -> dict[str, int]:
        return {"params": g.graph["params"], "trainable_params": g.graph["trainable_params"],
                "macs": g.graph["macs"], "modules": len(modules(g)), "tensors": len(sd)}

    data = {
        "schema": SCHEMA,
        "identical": False,
        "a": {"file": a_file, "name": ga.graph["name"], "input": seta["input"], "overrides": list(overrides[0])},
        "b": {"file": b_file, "name": gb.graph["name"], "input": setb["input"], "overrides": list(overrides[1])},
        "stages": stages,
        "settings": settings,
        "totals": {"a": totals(ga, dict_a), "b": totals(gb, dict_b)},
        "layers": layers,
        "checkpoint": checkpoint_fit(dict_a, dict_b),
    }
    data["identical"] = (all(s["status"] == "same" for s in stages) and not settings
                         and not (layers["added"] or layers["removed"] or layers["changed"])
                         and data["totals"]["a"] == data["totals"]["b"])
    return data


# -- text -----------------------------------------------------------------------------------------

def _shape(shape: Iterable[int]) -> str:
    shape = list(shape)
    return "x".join(map(str, shape)) if shape else "scalar"


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "shape":
        return _shape(v)
    if key == "dilations":
        return str(v[0]) if len(set(v)) == 1 else ",".join(map(str, v))
    if key == "frozen" or isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_value(k, x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def _delta(a: Any, b: Any, percent: bool = False) -> str:
    if not (isinstance(a, int) and isinstance(b, int)) or isinstance(a, bool) or isinstance(b, bool):
        return ""
    d = b - a
    text = f"{d:+,}"
    if percent and a:
        text += f" ({100 * d / a:+.1f}%)"
    return text


def _list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_MAX])
    return shown + (f", ... ({len(items) - _LIST_MAX} more)" if len(items) > _LIST_MAX else "")


class _Paint:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color and text else text


_GREEN, _RED, _YELLOW, _BOLD = "32", "31", "33", "1"
# text columns: stage, what, A, B, change
_COLS = (8, 11, 15, 15)


def _row(paint: _Paint, stage: str, what: str, a: str, b: str, change: str) -> list[str]:
    """One table line; a value too wide for its column goes on lines of its own instead."""
    w0, w1, w2, w3 = _COLS
    colour = _GREEN if change.startswith("+") or change == "added" else \
        _RED if change.startswith("-") or change == "removed" else ""
    tail = paint(change, colour) if colour else change
    label = f"{stage:<{w0}}{what}" if len(stage) < w0 else f"{stage} {what}".rstrip()
    label = f"{label:<{w0 + w1}}" if len(label) < w0 + w1 else label + " "
    if len(a) <= w2 and len(b) <= w3:
        return [f"{label}{a:<{w2}} {b:<{w3}} {tail}".rstrip()]
    out = [f"{label}A: {a}", f"{'':<{len(label)}}B: {b}" + (f"  {tail}" if change else "")]
    return [line if len(line) <= WIDTH else textwrap.shorten(line, WIDTH, placeholder=" ...") for line in out]


def format_diff(data: dict[str, Any], level: str = "stage", color: bool = False) -> str:
    """The review report: the two specs, the stages that changed, totals, layers, checkpoint."""
    paint = _Paint(color)
    a, b = data["a"], data["b"]
    lines = []
    for mark, colour, side in (("--- A", _RED, a), ("+++ B", _GREEN, b)):
        lines.append(paint(mark, colour) + f" {side['file']} ({side['name']}, input {_shape(side['input'])})")
        if side["overrides"]:
            lines.extend(textwrap.wrap(" ".join(f"--set {o}" for o in side["overrides"]), WIDTH,
                                       initial_indent="      with ", subsequent_indent="      ",
                                       break_on_hyphens=False, break_long_words=False))
    lines.append("")
    if data["identical"]:
        lines.append("identical architectures: every stage, layer, tensor and setting is the same")
        lines.append(f"checkpoint of A into B: loads strictly ({data['totals']['a']['tensors']} tensors)")
        return "\n".join(lines)

    changed = [s for s in data["stages"] if s["status"] != "same"]
    if changed:
        lines.append(paint(f"{'stage':<{_COLS[0]}}{'what':<{_COLS[1]}}{'A':<{_COLS[2]}} {'B':<{_COLS[3]}} change",
                           _BOLD))
        for s in changed:
            first = True
            for key, label in STAGE_FIELDS:
                if key not in s["changed"]:
                    continue
                side = s["a"] or s["b"]
                if s["status"] != "changed" and (key not in _SUMMARY_FIELDS or side[key] is None):
                    continue  # an added or removed stage: what it is and what it costs
                va = _value(key, s["a"][key]) if s["a"] else "-"
                vb = _value(key, s["b"][key]) if s["b"] else "-"
                if s["status"] in ("added", "removed"):
                    change = s["status"] if first else ""
                else:
                    change = _delta(s["a"][key], s["b"][key], percent=key in ("params", "macs"))
                lines.extend(_row(paint, s["name"] if first else "", label, va, vb, change))
                first = False
        same = [s["name"] for s in data["stages"] if s["status"] == "same"]
        lines.append(f"unchanged: {', '.join(same)}" if same else "every stage changed")
    else:
        lines.append("stages: all the same (" + ", ".join(s["name"] for s in data["stages"]) + ")")

    if data["settings"]:
        lines.append("")
        lines.append(paint("settings", _BOLD))
        for key, v in data["settings"].items():
            lines.extend(_row(paint, key, "", _value(key, v["a"]), _value(key, v["b"]), ""))

    ta, tb = data["totals"]["a"], data["totals"]["b"]
    lines.append("")
    first = True
    for key, label in (("params", "params"), ("trainable_params", "trainable"), ("macs", "MACs"),
                       ("modules", "modules"), ("tensors", "tensors")):
        if ta[key] == tb[key] and key not in ("params", "macs"):
            continue
        lines.extend(_row(paint, "total" if first else "", label, f"{ta[key]:,}", f"{tb[key]:,}",
                          _delta(ta[key], tb[key], percent=key in ("params", "macs")) or "same"))
        first = False

    layers = data["layers"]
    lines.append("")
    counts = (f"layers: {len(layers['added'])} added, {len(layers['removed'])} removed, "
              f"{len(layers['changed'])} changed, {layers['unchanged']} unchanged")
    if level == "layer":
        lines.append(paint(counts + " (by state-dict name)", _BOLD))
        lines.extend(_layer_lines(paint, layers))
    else:
        lines.append(counts + (" (see --level layer)"
                               if layers["added"] or layers["removed"] or layers["changed"] else ""))
    lines.append(_checkpoint_line(data["checkpoint"], ta["tensors"]))
    return "\n".join(lines)


def _layer_lines(paint: _Paint, layers: dict) -> list[str]:
    out = []

    def entry(mark: str, colour: str, name: str, what: str, detail: str) -> None:
        head = f"{mark} {name:<26} {what:<20} "
        if len(head) > 50:  # a long name: the rest on the next line
            out.append(paint(f"{mark} {name}", colour))
            head = f"  {'':<26} {what:<20} "
        phrases = detail.split("; ")
        indent = len(head)
        if max(map(len, phrases)) + 1 > WIDTH - indent:  # a long phrase: the details below, less indented
            out.append(paint(head.rstrip(), colour))
            indent = 4
            parts = _pack(phrases, WIDTH - indent)
            out.extend(paint(" " * indent + p, colour) for p in parts)
            return
        parts = _pack(phrases, WIDTH - indent)
        out.append(paint((head + parts[0]).rstrip(), colour))
        out.extend(paint(" " * indent + p, colour) for p in parts[1:])

    def tensors_text(rec: dict) -> str:
        t = rec["tensors"]
        if not t:
            return "no tensors"
        first = next(iter(t))
        return f"{first} {_shape(t[first])}" + (f" +{len(t) - 1} tensors" if len(t) > 2 else
                                                 f" +{len(t) - 1} tensor" if len(t) == 2 else "")

    for rec in layers["removed"]:
        entry("-", _RED, rec["name"], rec["type"], tensors_text(rec))
    for rec in layers["added"]:
        entry("+", _GREEN, rec["name"], rec["type"], tensors_text(rec))
    for rec in layers["changed"]:
        what = rec["a"]["type"] if rec["a"]["type"] == rec["b"]["type"] else f"{rec['a']['type']} -> {rec['b']['type']}"
        if len(what) > 20:
            what = rec["b"]["type"]
        same = rec["a"]["tensors"] == rec["b"]["tensors"]
        detail = "; ".join(rec["changes"]) + ("; same tensors" if same and rec["a"]["tensors"] else "")
        entry("~", _YELLOW, rec["name"], what, detail)
    return out


def _pack(phrases: list[str], width: int) -> list[str]:
    """Join phrases with '; ' into lines of at most ``width``, breaking only between phrases."""
    lines = [""]
    for p in phrases:
        candidate = f"{lines[-1]}; {p}" if lines[-1] else p
        if len(candidate) < width or not lines[-1]:  # room for the ';' that may follow
            lines[-1] = candidate
        else:
            lines[-1] += ";"
            lines.append(p)
    return lines


def _checkpoint_line(fit: dict, tensors_a: int) -> str:
    if fit["strict"]:
        return f"checkpoint of A into B: loads strictly ({tensors_a} tensors)"
    problems = []
    if fit["missing"]:
        problems.append(f"{len(fit['missing'])} that B needs are missing from A ({_list(fit['missing'])})")
    if fit["unexpected"]:
        problems.append(f"{len(fit['unexpected'])} in A that B does not have ({_list(fit['unexpected'])})")
    if fit["mismatched"]:
        problems.append(f"{len(fit['mismatched'])} with other shapes ("
                        + _list([f"{m['key']} {_shape(m['a'])} -> {_shape(m['b'])}" for m in fit["mismatched"]])
                        + ")")
    head = ("checkpoint of A into B: loads with only fc.* left over: " if fit["except_fc"] else
            "checkpoint of A into B: does not load strictly: ")
    return "\n".join(textwrap.wrap(head + "; ".join(problems), WIDTH, subsequent_indent="  ",
                                   break_on_hyphens=False))
