"""Analysis pass: what torch would refuse or get wrong later, and what is too large to build.

Reads the shapes pass's results (``meta['shape']``, ``meta['params']``) and reports, located at the
layer that causes them (the op table's check_run rules, and a layer whose output nothing reads, E016): a pool padded by more than half its kernel (E063, torch refuses it), an
instance norm over a 1x1 map (E064, torch fails in forward), a weight-standardised conv with one
weight per output channel (E065, its standard deviation is undefined: every output is NaN), a
model over the parameter limit (E066), and one whose build needs more memory than this machine
has (W020). :func:`check_memory` is the refusal that ``graphres.build`` and ``graphres compile``
make before allocating anything (E067). The limits and their overrides are in docs/limits.md.
"""
from __future__ import annotations

import math
import os
import re

import networkx as nx

from .. import ir
from ..ops import OPS
from ..diagnostics import Diagnostic, DiagnosticBag, GraphresError, SpecError, Span

MAX_PARAMS = 10_000_000_000  # GRAPHRES_MAX_PARAMS overrides it
_FLOAT = 4  # bytes of a float32 parameter or buffer
# Peak memory as a multiple of the model's state (parameters and buffers): building holds the state;
# compiling also holds the serialised program and the export's own copy of the constants.
STATE_FACTOR = {"build": 1, "compile": 3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


class LimitError(GraphresError, ValueError):
    """A memory limit (``max_memory``, ``GRAPHRES_MAX_MEMORY``) that cannot be read."""


def check_limits(g: nx.DiGraph, diags: DiagnosticBag) -> None:
    warned: set[str] = set()
    nodes, succ, settings = g._node, g._succ, g.graph
    ends = {st.get("output") for st in g.graph.get("stages", [])} | {(g.graph.get("head") or {}).get("output")}
    fine: set[tuple] = set()  # (twin, operand shape) whose op rule found nothing (ir.TWIN)
    scope = same = None  # the copied block being walked; whether its input has its twin block's shape
    recorded: dict[str, list] = {}  # a recorded block -> [its first node, last node, node count]
    order = ir.topological_order(g)
    i, end = -1, len(order)
    while i + 1 < end:
        i += 1
        n = order[i]
        d = nodes[n]
        twin = d.get(ir.TWIN)
        if twin is not None and twin != n:
            # a block lowering copied, its input as its twin block's: every node reads what
            # its twin reads (and is read as it is: a block's output always has a reader or ends
            # its stage), so the twin's findings are its findings, reported once at the twin
            if d[ir.SCOPE] != scope:
                scope = d[ir.SCOPE]
                same = ir.input_as_twins(nodes, n)
                rec = recorded.get(nodes[twin][ir.SCOPE]) if same else None
                if rec is not None and ir.copied_block(nodes, order, i, *rec):
                    i += rec[2] - 1  # the whole block
                    continue
            if same:
                continue
        elif twin is not None:
            rec = recorded.setdefault(d[ir.SCOPE], [n, n, 0])
            rec[1] = n
            rec[2] += 1
        if not succ[n] and n not in ends and n != ir.INPUT and not d.get(ir.DISCARDED):
            # the torch backend cannot plan a dead end (except a plugin result mmsegmentation drops)
            diags.add("E016", f"the output of {n} is never used, which graphres does not support yet",
                      _span_of(d), "remove the layer, or feed it into the block's result")
        op = OPS.get(d[ir.OP])
        if op is None:
            continue
        srcs = d[ir.INPUTS]
        in_shape = nodes[srcs[0]][ir.META].get("shape") if srcs else None
        if twin is not None:
            key = (twin, in_shape)
            if key in fine:
                continue
        problem = op.check_run(d[ir.ATTRS], d[ir.IN_CH], in_shape, settings)
        if problem is None and twin is not None:
            fine.add(key)
        if problem is not None and problem[0].startswith("W") and problem[0] in warned:
            problem = None  # a warning of the op table: at its first node only
        if problem is not None:
            code, message, hint = problem
            warned.add(code)
            diags.add(code, message.format(node=n), _span_of(d), hint)
    params = g.graph.get("params", 0)
    limit = _env_count("GRAPHRES_MAX_PARAMS", MAX_PARAMS)
    if params > limit:
        node, size = _largest(g)
        diags.add("E066", f"the model has {params:,} parameters ({format_bytes(params * _FLOAT)} as float32), "
                          f"over the limit of {limit:,}; the largest layer, {node}, has {size:,}",
                  _size_span(g, node),
                  "check the channels, kernels and block counts; to analyse larger models, set GRAPHRES_MAX_PARAMS")
        return
    need, budget = estimate_bytes(g, "build"), memory_budget()
    if budget is not None and need > budget:
        node, _ = _largest(g)
        diags.add("W020", f"building the model needs about {format_bytes(need)}, more than the "
                          f"{format_bytes(budget)} of {_budget_source(None)}; build and compile will refuse it",
                  _span_of(g._node[node]),
                  "set GRAPHRES_MAX_MEMORY=unlimited (or a size such as 64G) to build it anyway")


def state_bytes(g: nx.DiGraph) -> int:
    """Bytes of the built module's state: float32 parameters, and a BN's running mean and variance."""
    seen: set = set()
    elements = 0
    by_twin: dict[str, int] = {}  # twins (ir.TWIN) have the same tensors
    by_block: dict[str, int] = {}  # a recorded block's elements: a block copied from it has as many
    nodes = g._node
    skip = None  # the copied block being passed over
    for n, d in nodes.items():
        scope = d[ir.SCOPE]
        if scope == skip:
            continue
        twin = d.get(ir.TWIN)
        if twin is not None and twin != n:
            source = nodes[twin][ir.SCOPE]
            if source in by_block:  # its modules are its own (lowering copies only such blocks)
                elements += by_block[source]
                skip = scope
                continue
        module = d[ir.MODULE]
        if not module or module in seen or d[ir.OP] not in OPS:
            continue
        seen.add(module)
        count = by_twin.get(twin) if twin is not None else None
        if count is None:
            count = sum(math.prod(shape) if shape else 0  # () is a BN's int64 step counter
                        for shape in OPS[d[ir.OP]].tensors(d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], g.graph).values())
            if twin is not None:
                by_twin[twin] = count
        elements += count
        if twin == n:
            by_block[scope] = by_block.get(scope, 0) + count
    return _FLOAT * elements


def estimate_bytes(g: nx.DiGraph, purpose: str = "build") -> int:
    """Peak memory of building (``"build"``) or compiling (``"compile"``) the module, roughly."""
    return STATE_FACTOR[purpose] * state_bytes(g)


def available_memory() -> int | None:
    """Bytes this process can allocate now (MemAvailable), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(max_memory: int | str | None = None) -> int | None:
    """The memory a build may use: ``max_memory`` (bytes, ``"64G"``, or ``"unlimited"``), else
    ``GRAPHRES_MAX_MEMORY``, else what the machine has available; None means no limit."""
    value = max_memory if max_memory is not None else os.environ.get("GRAPHRES_MAX_MEMORY") or None
    if value is None:
        return available_memory()
    if isinstance(value, bool):
        raise LimitError(f"max_memory must be a byte count, a size such as '64G', or 'unlimited', not {value!r}")
    if isinstance(value, (int, float)):
        return int(value) if value > 0 else None
    if str(value).strip().lower() in ("unlimited", "none", "off", "0"):
        return None
    m = _SIZE.match(str(value))
    if not m:
        raise LimitError(f"memory limit {value!r} must be a byte count, a size such as '64G', or 'unlimited'")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


def check_memory(compiled, purpose: str = "build", max_memory: int | str | None = None) -> None:
    """Refuse (E067) to build or compile a model whose estimated peak memory exceeds the budget."""
    g = compiled.graph
    budget = memory_budget(max_memory)
    need = estimate_bytes(g, purpose)
    if budget is None or need <= budget:
        return
    node, _ = _largest(g)
    source = _budget_source(max_memory)
    span = _span_of(g._node[node]) or Span(str(compiled.spec.file))
    raise SpecError([Diagnostic(
        "E067", f"refusing to {purpose} the model: it needs about {format_bytes(need)} "
                f"({g.graph.get('params', 0):,} parameters), over the {format_bytes(budget)} of {source}",
        span, "set GRAPHRES_MAX_MEMORY=unlimited (or a size such as 64G), or build(..., max_memory=...), "
              "to try anyway")], compiled.sources)


def _budget_source(max_memory: int | str | None) -> str:
    if max_memory is not None:
        return "max_memory"
    return "GRAPHRES_MAX_MEMORY" if os.environ.get("GRAPHRES_MAX_MEMORY") else "memory available on this machine"


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def _span_of(d: dict) -> Span | None:
    """A layer of the user's own block is located in its definition; one of a built-in block (whose
    file is not the user's) at the spec entry that uses the block."""
    def_span = d.get(ir.DEF_SPAN)
    if def_span is not None and not def_span.file.startswith("<graphres>"):
        return def_span
    return d.get(ir.SPAN) or def_span


def _size_span(g: nx.DiGraph, node: str) -> Span | None:
    """Where to point for the model's size: the largest layer, or for a stem the spec does not
    spell out (located at the document's start) the input, whose channels the stem reads."""
    span = _span_of(g._node[node])
    if g._node[node][ir.STAGE] == -1 and span is not None and (span.line, span.col) == (1, 1):
        return g._node[ir.INPUT].get(ir.SPAN) or span
    return span


def _largest(g: nx.DiGraph) -> tuple[str, int]:
    node = max((n for n in g if g._node[n][ir.OP] != "input"), key=lambda n: g._node[n][ir.META].get("params", 0),
               default=ir.INPUT)
    return node, g._node[node][ir.META].get("params", 0)


def _env_count(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip().replace("_", "").replace(",", "")
    return int(text) if text.isdigit() and 0 < len(text) < 20 else default
