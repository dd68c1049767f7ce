"""The graph IR: a networkx DiGraph with one node per layer (shared by lowering, passes, backends).

Node ids are torch state-dict paths (``layer2.0.conv1``); a parameterless module called more
than once (a block's ``relu``) gets ``:1``, ``:2`` ... on its later calls. Attribute keys are the
constants below; edges carry the operand's input port. The IR never imports the spec package:
spans are copied onto nodes when lowering.
"""
from __future__ import annotations

from typing import Any, Iterable

import networkx as nx

# node attribute keys
OP = "op"  # "input" or a key of graphres.ops.OPS
ATTRS = "attrs"  # evaluated op attributes
MODULE = "module"  # state-dict path of the module this node calls, None for functional ops
IN_CH = "in_channels"
OUT_CH = "out_channels"
SCOPE = "scope"  # block instance: "stem", "layer1.0", ...
STAGE = "stage"  # stage index (0 = layer1), -1 for the stem, None for the input and the head (scope "head")
BLOCK_TYPE = "block_type"
SPAN = "span"  # where the user asked for this node (the stage or stem entry)
DEF_SPAN = "def_span"  # where the layer is defined (block definition)
ORDER = "order"  # insertion index, for deterministic topological order
META = "meta"  # open dict where passes put their results (shape, params, macs, ...)
# edge attribute keys
PORT = "port"

INPUT = "input"


def new_graph(name: str, **attrs: Any) -> nx.DiGraph:
    g = nx.DiGraph(name=name)
    g.graph.update(attrs)
    return g


def add_node(g: nx.DiGraph, node_id: str, op: str, inputs: Iterable[str] = (), **attrs: Any) -> str:
    assert node_id not in g, f"duplicate node {node_id}"
    attrs.setdefault(ATTRS, {})
    attrs.setdefault(META, {})
    g.add_node(node_id, **{OP: op, ORDER: g.number_of_nodes(), **attrs})
    for port, src in enumerate(inputs):
        assert src in g, f"unknown input {src} of {node_id}"
        g.add_edge(src, node_id, **{PORT: port})
    return node_id


def inputs_of(g: nx.DiGraph, node_id: str) -> list[str]:
    """The node's operands in input-port order."""
    preds = sorted(g.in_edges(node_id, data=PORT), key=lambda e: e[2])
    return [src for src, _, _ in preds]


def topological_order(g: nx.DiGraph) -> list[str]:
    """A topological order that depends only on insertion order (deterministic)."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n][ORDER]))


def dump(g: nx.DiGraph) -> str:
    """A readable text listing of the IR, one node a line."""
    lines = [f"graph {g.graph.get('name', '')}"]
    for n in topological_order(g):
        d = g.nodes[n]
        args = ", ".join(inputs_of(g, n))
        attrs = ", ".join(f"{k}={v}" for k, v in sorted(d[ATTRS].items()))
        shape = d[META].get("shape")
        tail = f"  -> {tuple(shape)}" if shape else ""
        lines.append(f"  {n} = {d[OP]}({args}){' {' + attrs + '}' if attrs else ''}{tail}")
    return "\n".join(lines)
