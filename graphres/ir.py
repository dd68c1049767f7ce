"""The graph IR: a networkx DiGraph with one node per layer (shared by lowering, passes, backends).

Schema
------
Node ids are torch state-dict paths (``layer2.0.conv1``); a parameterless module called more
than once (a block's ``relu``) gets ``:1``, ``:2`` ... on its later calls. Every node carries the
attributes named by the constants below: :data:`OP` (``"input"`` or a key of
:data:`graphres.ops.OPS`), :data:`ATTRS`, :data:`MODULE`, :data:`INPUTS` (operands in port order;
edges carry the same as :data:`PORT`), :data:`IN_CH`, :data:`OUT_CH`, :data:`SCOPE`,
:data:`STAGE`, :data:`BLOCK_TYPE`, :data:`SPAN`, :data:`DEF_SPAN`, :data:`ORDER`, and :data:`META`,
the open dict where passes write their results:

==================  ==========================================  ============================
meta key            meaning                                     written by
==================  ==========================================  ============================
``shape``           (C, H, W) of the output                     passes.shapes
``stride``          reduction w.r.t. the input                  passes.shapes
``params``          parameters of the node's module             passes.shapes
``macs``            multiply-accumulates                        passes.shapes
``rf``              receptive field (size, jump, center, ...)   passes.analysis
``formula``         output size rule (B, S) or None             passes.analysis
``dilation``        the dilation the node runs at               passes.analysis
``trainable``       whether its parameters get gradients        passes.analysis
``in_place``        computed in place over its first operand    passes.analysis
``bytes``           activation bytes of its output (0 in place) passes.analysis
``scratch``         bytes held only while it runs               passes.analysis
==================  ==========================================  ============================

The graph's own attributes (``g.graph[KEY]``) are the constants ``G_*`` below; lowering writes
the spec's settings and structure, the passes add the figures (``G_PARAMS``, ``G_MACS``,
``G_PEAK_BYTES``, ...) and the decisions the backends read (``G_FROZEN_MODULES``). Stage entries
(``G_STAGES``) are dicts with ``index``, ``name``, ``block``, ``blocks``, ``input``, ``output``,
``channels``, ``dilations``, ``spans`` and, after the passes, ``shape``, ``stride``, ``params``,
``macs``, ``rf``, ``frozen`` ...; output entries (``G_OUTPUTS``) have ``index``, ``name``,
``node``, ``channels``, ``span`` (where out_indices names it) and, after the passes, ``stride``,
``shape``, ``rf``.

The IR never imports the spec package: spans are copied onto nodes when lowering.

The passes read node attributes through ``g._node[n]``, networkx's own node -> attribute dict
(what ``g.nodes[n]`` returns, without the view's method call): a 5,000-block spec makes about a
million such look-ups (benchmarks/scaling.py).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import networkx as nx

# node attribute keys
OP = "op"  # "input" or a key of graphres.ops.OPS
# evaluated op attributes; read-only: the copies of a repeated block share their twin's dict (to
# change a node's attributes, give it a new dict, as passes.fold does)
ATTRS = "attrs"
MODULE = "module"  # state-dict path of the module this node calls, None for functional ops
INPUTS = "inputs"  # operand node ids in input-port order
IN_CH = "in_channels"
OUT_CH = "out_channels"
SCOPE = "scope"  # block instance: "stem", "layer1.0", ...
STAGE = "stage"  # stage index (0 = layer1), -1 for the stem, None for the input and the head (scope "head")
BLOCK_TYPE = "block_type"
SPAN = "span"  # where the user asked for this node (the stage or stem entry)
DEF_SPAN = "def_span"  # where the layer is defined (block definition)
ORDER = "order"  # insertion index, for deterministic topological order
META = "meta"  # open dict where passes put their results (shape, params, macs, ...)
DECL = "decl"  # sort key of the module's declaration (plugins after the block's own modules; see lowering)
PLUGIN = "plugin"  # the plugin (module name, ``context_block``) a node belongs to, for diagrams
# a layer that uses a block type (``{name: conv2, block: split_attn}``, ``{name: se, block: se}``)
# inside a block instance: (its name, the block type) on each node it made, the outermost use's;
# absent elsewhere (diagrams draw the use as a cluster)
USE = "use"
# the evaluated arguments of that plugin (in_channels and its block's parameters), on each of its
# nodes: mmcv's plugin modules carry them as attributes (``block.context_block.in_channels``)
PLUGIN_ARGS = "plugin_args"
DISCARDED = "discarded"  # computed and dropped: an mmsegmentation plugin before the last of its position
INIT = "init"  # the module's own initialisation after the network's ("default", "zeros", ...)
# a repeated block's node copied from the first instance of its stage with the same lowering
# (lowering's templates): the id of that instance's node, also on the node itself; absent
# elsewhere. Twins have the same op, attributes and channels, so a pass may compute an op rule
# once per twin and input shape (a 5,000-block spec has a few dozen distinct nodes)
TWIN = "twin"
# edge attribute keys
PORT = "port"

INPUT = "input"
STEM_SCOPE = "stem"
HEAD_SCOPE = "head"

# graph attribute keys: the spec's settings (written by lowering)
G_NAME = "name"
G_INPUT_CHANNELS = "input_channels"
G_INPUT_SIZE = "input_size"  # the spec's input.size (H, W)
G_NORM = "norm"  # the norm section: type, eps, momentum, requires_grad, num_groups, affine
G_CONV = "conv"  # the conv section: type (Conv2d | ConvWS), eps
G_ACT = "act"
G_FROZEN_STAGES = "frozen_stages"
G_FROZEN = "frozen"  # stage index -> True for stages frozen on their own (frozen: true)
G_NORM_EVAL = "norm_eval"
G_ZERO_INIT_RESIDUAL = "zero_init_residual"
G_WITH_CP = "with_cp"
G_INIT = "init"
G_OUT_INDICES = "out_indices"
G_OUTPUT_STRIDE = "output_stride"
# structure (written by lowering)
G_STEM = "stem"  # {"block": stem block type, ...summaries}
G_STAGES = "stages"
G_OUTPUTS = "outputs"
G_HEAD = "head"  # None, or {"num_classes", "input", "nodes", "output"}
# figures and decisions (written by the passes)
G_ANALYSED_SIZE = "analysed_size"  # (H, W) the figures are for (the spec's or compile_spec's input_size)
G_PARAMS = "params"
G_MACS = "macs"
G_TRAINABLE_PARAMS = "trainable_params"
G_FROZEN_PARAMS = "frozen_params"
G_PEAK_BYTES = "peak_bytes"
G_FROZEN_SCOPES = "frozen_scopes"  # stage index (-1 = the stem) -> whether it is frozen
G_FROZEN_MODULES = "frozen_modules"  # top-level module names frozen_stages / frozen: true freeze
G_ZERO_INIT_MODULES = "zero_init_modules"  # norms that zero_init_residual zeroes
G_MODULE_INITS = "module_inits"  # (module, init) for modules initialised their own way (plugins)
# scope ("stem", "layer1.0") -> its evaluated parameters and lets (lowering); read-only: copied
# blocks share their twin block's dict
G_BLOCK_PARAMS = "block_params"
G_OPENMMLAB = "openmmlab"  # mmdetection's attributes and init_cfg (passes.openmmlab)


_ORDER_KEY = "graphres_topological_order"  # topological_order's entry in __networkx_cache__


def new_graph(name: str, **attrs: Any) -> nx.DiGraph:
    g = nx.DiGraph(name=name)
    g.graph.update(attrs)
    g.__networkx_cache__[_ORDER_KEY] = []  # add_nodes_data extends it: no sort after lowering
    return g


def add_node(g: nx.DiGraph, node_id: str, op: str, inputs: Iterable[str] = (), **attrs: Any) -> str:
    """Add a node and its operand edges (port = position in ``inputs``)."""
    inputs = tuple(inputs)
    attrs.setdefault(ATTRS, {})
    attrs.setdefault(META, {})
    return add_node_data(g, node_id, {OP: op, ORDER: len(g._node), INPUTS: inputs, **attrs})


def add_node_data(g: nx.DiGraph, node_id: str, data: dict) -> str:
    """Add a node whose attribute dict ``data`` is complete (:data:`OP`, :data:`INPUTS` as a tuple,
    :data:`ATTRS`, :data:`META`, ...; :data:`ORDER` is written here), and its operand edges;
    ``data`` becomes the node's own dict."""
    add_nodes_data(g, [(node_id, data)])
    return node_id


def add_nodes_data(g: nx.DiGraph, items: Iterable[tuple[str, dict]]) -> None:
    """:func:`add_node_data` for each (node id, data) in order (a repeated block's copies are
    added in one call).

    Lowering adds every node of the IR through here, so a plain ``nx.DiGraph`` is filled through
    its dicts directly (what ``add_node`` and ``add_edge`` do, less their per-call overhead, a third
    of lowering a 5,000-block spec); any other graph class goes through networkx's methods."""
    nodes = g._node
    plain = type(g) is nx.DiGraph
    succ, pred = g._succ, g._pred
    cache = getattr(g, "__networkx_cache__", None)
    kept = cache.get(_ORDER_KEY) if cache is not None else None
    before = len(nodes)
    if kept is not None and (len(kept) != before or (kept and nodes.get(kept[-1], {ORDER: before})[ORDER] >= before)):
        kept = None  # stale, or the new ORDERs would not all come after the old ones (nodes removed)
    if not plain:
        for node_id, data in items:
            assert node_id not in nodes, f"duplicate node {node_id}"
            data[ORDER] = len(nodes)
            g.add_node(node_id, **data)
            for port, src in enumerate(data[INPUTS]):
                assert src in g, f"unknown input {src} of {node_id}"
                g.add_edge(src, node_id, **{PORT: port})
        return
    k = before
    for node_id, data in items:
        data[ORDER] = k
        k += 1
        nodes[node_id] = data
        succ[node_id] = {}
        inputs = data[INPUTS]
        if len(inputs) == 1:  # most nodes
            edge = {PORT: 0}
            pred[node_id] = {inputs[0]: edge}
            succ[inputs[0]][node_id] = edge  # KeyError: an unknown operand
            continue
        into = pred[node_id] = {}
        for port, src in enumerate(inputs):
            edge = into.get(src)
            if edge is None:
                edge = into[src] = succ[src][node_id] = {}  # KeyError: an unknown operand
            edge[PORT] = port
    assert len(nodes) == k, "duplicate node id"  # a dict keeps one entry per id
    if cache:
        cache.clear()
    if kept is not None:
        # each node's operands exist before it, and its ORDER is above every earlier one: the
        # insertion order extended stays topological_order's order
        kept.extend(reversed(list(itertools.islice(reversed(nodes), len(nodes) - before))))
        cache[_ORDER_KEY] = kept


def input_as_twins(nodes: dict, node_id: str) -> bool:
    """For the first node of a block lowering copied (:data:`TWIN`), whether the block's input has
    the shape and stride of its twin block's input: then, every node of a block being a function
    of the block's input alone, each node's shape figures are its twin's (the passes rely on it)."""
    x = nodes[nodes[node_id][INPUTS][0]][META]
    tx = nodes[nodes[nodes[node_id][TWIN]][INPUTS][0]][META]
    return x["shape"] == tx["shape"] and x["stride"] == tx["stride"]


def copied_block(nodes: dict, order: list[str], start: int, first: str, last: str, size: int) -> bool:
    """Whether ``order[start:start + size]`` is one block lowering copied from the block whose
    nodes, in order, go from ``first`` to ``last`` (``size`` of them), node for node. Lowering
    stamps a copy's nodes together, in its twin block's order, so the ends tell: the first and the
    last have those twins and the scope of the first, and the next node is in another scope."""
    stop = start + size - 1
    if stop >= len(order):
        return False
    head, tail = nodes[order[start]], nodes[order[stop]]
    scope = head[SCOPE]
    return head.get(TWIN) == first and tail.get(TWIN) == last and tail[SCOPE] == scope and \
        (stop + 1 == len(order) or nodes[order[stop + 1]][SCOPE] != scope)


def inputs_of(g: nx.DiGraph, node_id: str) -> list[str]:
    """The node's operands in input-port order."""
    return list(g._node[node_id][INPUTS])


def topological_order(g: nx.DiGraph) -> list[str]:
    """A topological order that depends only on insertion order (deterministic).

    :func:`add_node` only adds edges from nodes that already exist, so insertion order is itself a
    topological order, and the lexicographic one by :data:`ORDER`: sorting is linear in practice,
    where networkx's lexicographic sort costs a heap operation and a view per node. A graph with an
    edge against insertion order (added by hand) takes networkx's sort.

    The order is kept in the graph's ``__networkx_cache__``, which networkx (and :func:`add_node`)
    clear on every change of nodes or edges, so the passes of one compile sort once."""
    cache = getattr(g, "__networkx_cache__", None)
    if cache is not None:
        kept = cache.get(_ORDER_KEY)
        if kept is not None and len(kept) == len(g._node):
            return list(kept)
    nodes = g._node
    order = {n: d[ORDER] for n, d in nodes.items()}
    if all(order[u] < order[v] for v, preds in g._pred.items() for u in preds):
        out = sorted(order, key=order.__getitem__)
    else:
        out = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
    if cache is not None:
        cache[_ORDER_KEY] = out
    return list(out)


def dump(g: nx.DiGraph) -> str:
    """A readable text listing of the IR, one node a line."""
    lines = [f"graph {g.graph.get(G_NAME, '')}"]
    for n in topological_order(g):
        d = g._node[n]
        args = ", ".join(inputs_of(g, n))
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(d[ATTRS].items()))
        shape = d[META].get("shape")
        tail = f"  -> {tuple(shape)}" if shape else ""
        lines.append(f"  {n} = {d[OP]}({args}){' {' + attrs + '}' if attrs else ''}{tail}")
    return "\n".join(lines)


def is_frozen(g: nx.DiGraph, stage: int | None) -> bool:
    """Whether stage ``stage`` (-1 = the stem, None = the input or the head) is frozen, as the
    analysis decided (``G_FROZEN_SCOPES``)."""
    return bool(g.graph.get(G_FROZEN_SCOPES, {}).get(stage, False))


def format_rf(rf: dict | None, compact: bool = False) -> str:
    """The text of a ``meta['rf']``: ``427``; ``global`` after a global pool; ``>= 427, deformable``
    downstream of a deformable conv, whose field depends on the data (the number is the regular
    grid's field, a lower bound, never presented as exact); ``compact``: ``>=427``."""
    if not rf:
        return ""
    if rf.get("size") is None:
        return "global"
    if rf.get("deformable"):
        return f">={rf['size']}" if compact else f">= {rf['size']}, deformable"
    return str(rf["size"])


def format_formula(f: tuple[int, int] | None, var: str = "H") -> str:
    """The text of a ``meta['formula']``: ``ceil(H/32)``, ``floor((H+1)/2)``, ``H``; ``-`` when
    piecewise or constant."""
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
