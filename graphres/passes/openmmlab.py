"""Analysis pass: what code written against mmdetection's ResNet reads, decided on the IR.

mmdetection's ``ResNet`` and its blocks expose their construction arguments as attributes
(``model.depth``, ``model.strides``, ``block.inplanes``, ``block.conv2_stride``, ...) and mmengine
initialises them from ``init_cfg``, a list of initialisers. This pass derives both from the
lowered graph (the stage entries and each block's evaluated parameters, written by lowering) and
writes them under ``g.graph[G_OPENMMLAB]``: ``network`` (the backbone's attributes), ``blocks``
(block scope -> attributes), ``init_cfg`` (mmengine's list), ``zero_init_blocks`` (whether
mmdetection's block zero-init applies: its default init_cfg only) and ``checkpoint_style``. The
torch backend writes them into the generated classes; it decides nothing.
"""
from __future__ import annotations

import re
from typing import Any

import networkx as nx

from .. import ir
from ..ops import OPS
from ..spec.shorthand import ARCH

# mmdetection's default init_cfg of ResNet (with no init_cfg and no pretrained)
DEFAULT_INIT_CFG = [{"type": "Kaiming", "layer": "Conv2d"},
                    {"type": "Constant", "val": 1, "layer": ["_BatchNorm", "GroupNorm"]}]
# graphres' explicit init types -> mmengine's initialiser names
INIT_TYPE_NAMES = {"kaiming": "Kaiming", "constant": "Constant", "normal": "Normal", "xavier": "Xavier",
                   "uniform": "Uniform", "pretrained": "Pretrained"}
_NORM_NAME = re.compile(r"^(bn|gn|in)(\d+)$")
_SKIP_PARAMS = {"in_channels", "out_channels"}
_NORMS = frozenset(name for name, op in OPS.items() if op.uses_norm)


def describe_openmmlab(g: nx.DiGraph, style: str | None = None) -> None:
    """Write mmdetection's attributes and init_cfg for ``g`` (``style``: the spec's one bottleneck
    style, for the checkpoint loader's style check)."""
    params = g.graph.get(ir.G_BLOCK_PARAMS, {})
    stages = g.graph[ir.G_STAGES]
    nodes = g._node
    by_scope: dict[str, list[str]] = {}
    plugins: list[tuple] = []  # (scope, plugin name, its arguments) of each plugin node
    # a recorded block (its nodes their own twins) -> [its first node, last node, node count,
    # its plugin nodes' (plugin, arguments)]: a block copied from it is passed over at once
    recorded: dict[str, list] = {}
    order = ir.topological_order(g)
    i, end = -1, len(order)
    while i + 1 < end:
        i += 1
        n = order[i]
        if n == ir.INPUT:
            continue
        d = nodes[n]
        scope = d[ir.SCOPE]
        twin = d.get(ir.TWIN)
        same = by_scope.get(scope)
        if same is None:
            by_scope[scope] = [n]
            if twin is not None and twin != n:  # a copied block needs its first node only (below)
                rec = recorded.get(nodes[twin][ir.SCOPE])
                if rec is not None and ir.copied_block(nodes, order, i, rec[0], rec[1], rec[2]):
                    plugins.extend((scope, name, args) for name, args in rec[3])
                    i += rec[2] - 1
                    continue
        elif twin is None or twin == n:
            same.append(n)
        if d.get(ir.PLUGIN_ARGS) is not None:
            plugins.append((scope, d[ir.PLUGIN], d[ir.PLUGIN_ARGS]))
        if twin == n:
            rec = recorded.get(scope)
            if rec is None:
                rec = recorded[scope] = [n, n, 0, []]
            rec[1] = n
            rec[2] += 1
            if d.get(ir.PLUGIN_ARGS) is not None:
                rec[3].append((d[ir.PLUGIN], d[ir.PLUGIN_ARGS]))
    blocks: dict[str, dict[str, Any]] = {}
    for st in stages:
        for b in range(st["blocks"]):
            scope = f"{st['name']}.{b}"
            scope_nodes = by_scope.get(scope, [])
            # a block copied by lowering (its nodes twins of an earlier block's) has that block's
            # attributes: the same parameters, modules and norms
            twin = nodes[scope_nodes[0]].get(ir.TWIN) if scope_nodes else None
            source = nodes[twin][ir.SCOPE] if twin is not None else None
            if source is not None and source != scope and source in blocks and \
                    params.get(scope, {}) == params.get(source, {}):
                blocks[scope] = dict(blocks[source])
            else:
                if source is not None and source != scope:  # a copy's nodes were not all listed
                    scope_nodes = [n for n in order if n != ir.INPUT and nodes[n][ir.SCOPE] == scope]
                blocks[scope] = _block_attrs(g, scope, scope_nodes, params.get(scope, {}))
    for scope, name, args in plugins:  # mmcv's plugin modules carry their arguments: block.context_block.in_channels
        blocks.setdefault(f"{scope}.{name}", dict(args))
    stem_nodes = by_scope.get(ir.STEM_SCOPE, [])
    stem_params = params.get(ir.STEM_SCOPE, {})
    first = [blocks.get(f"{st['name']}.0", {}) for st in stages]
    styles = {a["style"] for a in blocks.values() if "style" in a}
    conv = g.graph[ir.G_CONV]
    norm = {k: v for k, v in g.graph[ir.G_NORM].items() if v is not None}
    network: dict[str, Any] = {
        "depth": _depth(stages),
        "stem_channels": stem_params.get("channels", g.nodes[stem_nodes[-1]][ir.OUT_CH] if stem_nodes else None),
        "base_channels": first[0].get("planes") if first else None,
        "num_stages": len(stages),
        "strides": tuple(a.get("stride", 1) for a in first),
        "dilations": tuple(st["dilations"][1] if len(st["dilations"]) > 1 else st["dilations"][0]
                           for st in stages),
        "style": styles.pop() if len(styles) == 1 else "pytorch",
        "deep_stem": g.graph[ir.G_STEM]["block"] == "deep",
        "avg_down": any(a.get("avg_down") for a in blocks.values()),
        "with_cp": bool(g.graph.get(ir.G_WITH_CP)),
        "stage_blocks": tuple(st["blocks"] for st in stages),
        "feat_dim": stages[-1]["channels"] if stages else None,
        "inplanes": stages[-1]["channels"] if stages else None,
        "norm_cfg": norm,
        "conv_cfg": None if conv.get("type", "Conv2d") == "Conv2d" else dict(conv),
    }
    stem_norms = [g.nodes[n][ir.MODULE] for n in stem_nodes
                  if OPS[g.nodes[n][ir.OP]].uses_norm and g.nodes[n][ir.MODULE] and
                  _NORM_NAME.match(g.nodes[n][ir.MODULE])]
    if stem_norms:
        network["norm1_name"] = stem_norms[0]
    init_cfg, zero = init_plan(g.graph.get(ir.G_INIT))
    g.graph[ir.G_OPENMMLAB] = {"network": network, "blocks": blocks, "init_cfg": init_cfg,
                               "zero_init_blocks": zero, "checkpoint_style": style}


def spec_style(spec: Any) -> str | None:
    """The one bottleneck style the spec's stages use, counting only blocks whose layers read it."""
    styles = set()
    for stage in spec.stages:
        if any("style" in spec.blocks[t].params and spec.blocks[t].reads("style") for t in stage.block_types):
            if "style" in stage.per_block:
                styles.update(a.value for a in stage.per_block["style"])
            else:
                block = spec.blocks[next(t for t in stage.block_types if "style" in spec.blocks[t].params)]
                styles.add(stage.args["style"].value if "style" in stage.args else block.params["style"].default)
    return styles.pop() if len(styles) == 1 else None


def init_plan(init: dict[str, Any] | None) -> tuple[list[dict[str, Any]], bool]:
    """The spec's ``init`` in mmengine's form, and whether mmdetection's block zero init applies
    (only with its default init_cfg, as in mmdetection)."""
    if not init or init.get("type") == "default":
        return [dict(c) for c in DEFAULT_INIT_CFG], True
    items = init["items"] if init.get("type") == "list" else [init]
    out = []
    for item in items:
        cfg = {"type": INIT_TYPE_NAMES[item["type"]]}
        cfg.update((k, v) for k, v in item.items() if k not in ("type", "span"))
        out.append(cfg)
    return out, False


def _block_attrs(g: nx.DiGraph, scope: str, scope_nodes: list[str], params: dict[str, Any]) -> dict[str, Any]:
    nodes = g._node
    cut = len(scope) + 1
    children = set()
    norm_names = []
    for n in scope_nodes:
        d = nodes[n]
        module = d[ir.MODULE]
        if module:
            rel = module[cut:]
            children.add(rel.split(".", 1)[0])
            if d[ir.OP] in _NORMS:
                m = _NORM_NAME.match(rel)
                if m:
                    norm_names.append(m)
    attrs: dict[str, Any] = {k: v for k, v in params.items() if k not in _SKIP_PARAMS and k not in children}
    if "in_channels" in params:
        attrs["inplanes"] = params["in_channels"]
    if "planes" in params and params["planes"] and "out_channels" in params:
        attrs.setdefault("expansion", params["out_channels"] // params["planes"])
    for m in norm_names:
        attrs[f"norm{m.group(2)}_name"] = m.group(0)
    if "downsample" not in children:
        attrs["downsample"] = None
    return attrs


def _depth(stages: list[dict[str, Any]]) -> int | None:
    """mmdetection's depth: the ARCH entry whose block type and (leading) block counts these
    stages have; None for other networks."""
    kinds = {st["block"] for st in stages}
    counts = [st["blocks"] for st in stages]
    if len(kinds) != 1 or not counts:
        return None
    kind = kinds.pop()
    for depth, (block, arch_counts) in ARCH.items():
        if block == kind and arch_counts[:len(counts)] == counts and len(counts) <= len(arch_counts):
            return depth
    return None
