"""Inference pass: which normalisation layers fold into the convolution before them (no torch).

:func:`fold_for_inference` takes the analysed IR and returns a rewritten **copy** for an
eval-only network; the training graph is left as it is. The decisions it writes:

- a norm whose normalisation is an affine map per channel in eval mode (``BN``, ``SyncBN`` and
  ``FrozenBN``: running statistics) folds into the conv that feeds it, when nothing but the norm
  reads that conv's output. The norm node is removed, its readers read the conv instead, and the
  conv gains a bias. GroupNorm and InstanceNorm normalise with statistics of the input itself:
  they cannot fold and stay as they are.
- with ``conv: {type: ConvWS}``, every conv's weight standardisation is a function of the weights
  alone, so the standardised weight is computed once: the copy's convs are plain ``Conv2d``.

Then :func:`_fuse` fuses residual sums and activations into the convs; a conv that takes the
residual sum and is the residual's last reader (:func:`_last_use`) is marked ``reuse_residual``,
so that a compiled build may compute its output in the residual's buffer.

Each conv node of the copy carries ``meta['fold']``: ``{"norm": <module path of the folded norm>
or None, "standardize_eps": <ConvWS eps> or None, "bias": <whether the conv had a bias>}``.
The torch backend (``graphres.backends.inference``) reads these and does the arithmetic on real
tensors; it decides nothing. On the graph: ``G_INFERENCE`` (True), ``G_FOLDED`` (conv path ->
norm path, in topological order) and the training-only decisions cleared: no frozen modules, no
zero-initialised norms, ``norm_eval`` and ``with_cp`` off (an inference build does not train).
"""
from __future__ import annotations

import copy

import networkx as nx

from .. import ir
from ..ops import OPS

G_INFERENCE = "inference"  # the graph is an eval-only copy made by fold_for_inference
G_FOLDED = "folded"  # conv module path -> the norm module path folded into it
G_FUSED = "fused"  # the convs carry fused_act / fused_residual (codegen emits FusedConv2d)
G_RENAMED = "renamed"  # module path in the copy -> its path in the analysed graph, where they differ


def foldable_norm(g: nx.DiGraph, n: str) -> str | None:
    """The conv node that norm node ``n`` folds into, or None (the rule, stated once)."""
    op = OPS.get(g.nodes[n][ir.OP])
    if op is None or not op.folds(g.graph):
        return None
    (src,) = ir.inputs_of(g, n)
    s = g.nodes[src]
    target = OPS.get(s[ir.OP])
    if target is None or not target.fold_target or g.out_degree(src) != 1 or s[ir.MODULE] is None:
        return None
    return src


def fold_for_inference(g: nx.DiGraph) -> nx.DiGraph:
    """The eval-only copy of the analysed graph ``g`` (see the module docstring)."""
    h = copy.deepcopy(g)
    conv_settings = h.graph.get(ir.G_CONV) or {}
    ws_eps = conv_settings.get("eps", 1e-5) if conv_settings.get("type") == "ConvWS" else None
    folded: dict[str, str] = {}
    for n in ir.topological_order(g):
        d = h.nodes[n]
        if d[ir.OP] in OPS and OPS[d[ir.OP]].fold_target:
            d[ir.META]["fold"] = {"norm": None, "standardize_eps": ws_eps, "bias": bool(d[ir.ATTRS]["bias"])}
            continue
        conv = foldable_norm(g, n)
        if conv is None:
            continue
        c = h.nodes[conv]
        c[ir.META]["fold"]["norm"] = d[ir.MODULE]
        c[ir.ATTRS] = {**c[ir.ATTRS], "bias": True}
        folded[c[ir.MODULE]] = d[ir.MODULE]
        _bypass(h, n, conv)
    _fuse(h)
    renamed = _renumber(h)
    folded = {renamed.get(c, c): n for c, n in folded.items()}
    if ws_eps is not None:
        h.graph[ir.G_CONV] = {**conv_settings, "type": "Conv2d"}
    h.graph[G_INFERENCE] = True
    h.graph[G_FUSED] = True
    h.graph[G_FOLDED] = folded
    h.graph[G_RENAMED] = {new: old for old, new in renamed.items()}
    h.graph[ir.G_FROZEN_MODULES] = ()
    h.graph[ir.G_ZERO_INIT_MODULES] = ()
    h.graph[ir.G_NORM_EVAL] = False
    h.graph[ir.G_WITH_CP] = False
    return h


def _fuse(h: nx.DiGraph) -> None:
    """Fuse into each conv (a ``fuse_target`` op with a module) the two-operand residual sum it
    alone feeds, then the activation that alone reads the result (the op table says which ops:
    ``fused_sum``, ``fused_act``): ``relu(bn3(conv3(y)) + identity)`` becomes one layer,
    ``conv3(y, identity)``. The conv's attributes record it (``fused_act``: the activation or
    ``"none"``; ``fused_residual``; ``reuse_residual`` when the conv is the residual's last
    reader, :func:`_last_use`); the sum and activation nodes are removed and their readers read
    the conv."""
    for n in list(ir.topological_order(h)):
        if n not in h or h.nodes[n][ir.OP] not in OPS:
            continue
        d = h.nodes[n]
        if not OPS[d[ir.OP]].fuse_target or d[ir.MODULE] is None:
            continue
        fused = {"fused_act": "none", "fused_residual": False}
        reader = _only_reader(h, n)
        if reader is not None and _op(h, reader).fused_sum and len(h.nodes[reader][ir.INPUTS]) == 2:
            (other,) = [x for x in h.nodes[reader][ir.INPUTS] if x != n] or [None]
            if other is not None and other not in d[ir.INPUTS]:
                d[ir.INPUTS] = tuple(d[ir.INPUTS]) + (other,)
                h.add_edge(other, n, **{ir.PORT: len(d[ir.INPUTS]) - 1})
                _bypass(h, reader, n)
                fused["fused_residual"] = True
                if _last_use(h, other, n):
                    fused["reuse_residual"] = True
                reader = _only_reader(h, n)
        act = _op(h, reader).fused_act(h.nodes[reader][ir.ATTRS]) if reader is not None else None
        if act is not None:
            fused["fused_act"] = act
            _bypass(h, reader, n)
        d[ir.ATTRS] = {**d[ir.ATTRS], **fused}


def _last_use(h: nx.DiGraph, src: str, n: str) -> bool:
    """Whether ``n`` is the last node to read ``src``'s storage, so that ``n``'s output may be
    written over it: ``src`` is neither the input image (the caller's) nor an output, shares no
    storage (not a view, not in place), and every other reader comes before ``n`` and keeps
    nothing of it (no view, no in-place reader)."""
    if src == ir.INPUT or any(o.get("node") == src for o in h.graph[ir.G_OUTPUTS]):
        return False
    s = h.nodes[src]
    if s[ir.META].get("in_place") or _op(h, src).view:
        return False
    at = h.nodes[n][ir.ORDER]
    for r in h.successors(src):
        if r != n:
            d = h.nodes[r]
            if d[ir.ORDER] > at or d[ir.META].get("in_place") or _op(h, r).view:
                return False
    return True


def _op(h: nx.DiGraph, n: str):
    """The op table's entry for node ``n`` (a reader: every node but the input has one)."""
    return OPS[h.nodes[n][ir.OP]]


def _only_reader(h: nx.DiGraph, n: str) -> str | None:
    """The one node that reads ``n``, or None (no reader, several, or ``n`` is also an output)."""
    if h.out_degree(n) != 1:
        return None
    (reader,) = h.successors(n)
    return reader


def _renumber(h: nx.DiGraph) -> dict[str, str]:
    """Close the gaps a removed norm leaves in a numbered container (a deep stem's ``stem.0``,
    ``stem.2``, ``stem.3`` ... become ``stem.0``, ``stem.1``, ``stem.2``), so that it stays an
    ``nn.Sequential``: node ids, module paths and the graph's references follow. Returns old
    module path -> new, for the paths that changed."""
    modules = {h.nodes[n][ir.MODULE] for n in h.nodes if h.nodes[n].get(ir.MODULE)}
    children: dict[str, set[int]] = {}
    for path in modules:
        parts = path.split(".")
        for i in range(1, len(parts)):
            if parts[i].isdigit():
                children.setdefault(".".join(parts[:i]), set()).add(int(parts[i]))
    index = {c: {old: new for new, old in enumerate(sorted(nums))} for c, nums in children.items()
             if sorted(nums) != list(range(len(nums)))}
    if not index:
        return {}

    def rename(path: str) -> str:
        parts = path.split(".")
        out = list(parts)
        for i in range(1, len(parts)):
            container = ".".join(parts[:i])
            if parts[i].isdigit() and container in index:
                out[i] = str(index[container][int(parts[i])])
        return ".".join(out)

    renamed = {m: rename(m) for m in modules if rename(m) != m}
    mapping = {}
    for n in h.nodes:
        module = h.nodes[n].get(ir.MODULE)
        if module in renamed:
            h.nodes[n][ir.MODULE] = renamed[module]
            if n == module or n.startswith(module + ":"):
                mapping[n] = renamed[module] + n[len(module):]
    nx.relabel_nodes(h, mapping, copy=False)
    for n in h.nodes:
        h.nodes[n][ir.INPUTS] = tuple(mapping.get(x, x) for x in h.nodes[n][ir.INPUTS])
    for entry in list(h.graph[ir.G_STAGES]) + list(h.graph[ir.G_OUTPUTS]) + [h.graph.get(ir.G_STEM) or {},
                                                                             h.graph.get(ir.G_HEAD) or {}]:
        for key in ("input", "output", "node"):
            if isinstance(entry, dict) and entry.get(key) in mapping:
                entry[key] = mapping[entry[key]]
        if isinstance(entry, dict) and "nodes" in entry:
            entry["nodes"] = [mapping.get(x, x) for x in entry["nodes"]]
    return renamed


def _bypass(h: nx.DiGraph, n: str, src: str) -> None:
    """Remove node ``n`` (one operand, ``src``): its readers read ``src`` on the same ports, and
    the graph's references to ``n`` (stage, output and head entries) name ``src``."""
    for reader in list(h.successors(n)):
        port = h.edges[n, reader][ir.PORT]
        r = h.nodes[reader]
        r[ir.INPUTS] = tuple(src if x == n else x for x in r[ir.INPUTS])
        h.add_edge(src, reader, **{ir.PORT: port})
    h.remove_node(n)
    for st in h.graph[ir.G_STAGES]:
        for key in ("input", "output"):
            if st.get(key) == n:
                st[key] = src
    for out in h.graph[ir.G_OUTPUTS]:
        if out.get("node") == n:
            out["node"] = src
    head = h.graph.get(ir.G_HEAD)
    if head:
        if head.get("input") == n:
            head["input"] = src
        if head.get("output") == n:
            head["output"] = src
        head["nodes"] = [x for x in head["nodes"] if x != n]
    stem = h.graph.get(ir.G_STEM)
    if isinstance(stem, dict):
        for key in ("input", "output"):
            if stem.get(key) == n:
                stem[key] = src
