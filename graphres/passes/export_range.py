"""Analysis pass: the input sizes an exported program with dynamic height and width accepts (no torch).

torch.export (and so the ``.pt2`` and ``.onnx`` exports) traces the network with symbolic sizes and
assumes that a dynamic size is never 0 or 1: a size of 1 would change what a residual add or a
broadcast means, so the trace records a guard against it (today's raw ``Guard failed: 1 + (-1 +
x.size()[3]) // 32 != 1`` for a 16x16 input to a ResNet-18). The program is therefore valid for the
input sides at which every spatial size that depends on the input is at least 2; the sizes downstream
of a global pool (an SE block's excitation, a classifier's head) are 1 whatever the input and do not
count. Every op's size rule is monotone in its input's size, so that set of sides is a half-line
``[min, oo)``, found here by a doubling then a bisecting search over the op table's size rules.

:func:`dynamic_range` writes ``g.graph['dynamic_min_size']`` (H, W: the smallest height and width;
every op in the table is square, so the two are equal) and returns it, or ``None`` when no input side
up to ``2**24`` satisfies the rule. It is run on demand (by ``graphres compile`` before an export),
not by ``compile_spec``, so validating a large spec does not pay for it.
"""
from __future__ import annotations

import networkx as nx

from .. import ir
from ..ops import OPS

G_DYNAMIC_MIN_SIZE = "dynamic_min_size"
MIN_DYNAMIC = 2  # torch.export specialises the sizes 0 and 1
_LIMIT = 1 << 24


def dynamic_range(g: nx.DiGraph) -> tuple[int, int] | None:
    order = ir.topological_order(g)
    plan = [(n, g.nodes[n], ir.inputs_of(g, n)) for n in order]
    dynamic = _dynamic_nodes(plan)
    hi = MIN_DYNAMIC
    while not _accepts(plan, dynamic, hi):
        hi *= 2
        if hi > _LIMIT:
            g.graph[G_DYNAMIC_MIN_SIZE] = None
            return None
    lo = hi // 2  # refused (or below the input's own minimum)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _accepts(plan, dynamic, mid):
            hi = mid
        else:
            lo = mid
    hi = max(hi, MIN_DYNAMIC)
    g.graph[G_DYNAMIC_MIN_SIZE] = (hi, hi)
    return hi, hi


def _dynamic_nodes(plan: list) -> set[str]:
    """The nodes whose spatial size depends on the input's: not a global pool, and reading one."""
    dynamic: set[str] = set()
    for n, d, srcs in plan:
        if d[ir.OP] == "input":
            dynamic.add(n)
        elif not OPS[d[ir.OP]].global_pool and any(s in dynamic for s in srcs):
            dynamic.add(n)
    return dynamic


def _accepts(plan: list, dynamic: set[str], side: int) -> bool:
    """Whether every input-dependent spatial size is at least 2 for a ``side`` x ``side`` input."""
    if side < MIN_DYNAMIC:
        return False
    sizes: dict[str, tuple[int, int]] = {}
    for n, d, srcs in plan:
        if d[ir.OP] == "input":
            hw = (side, side)
        else:
            hw = tuple(OPS[d[ir.OP]].spatial(d[ir.ATTRS], [sizes[s] for s in srcs]))
        if n in dynamic and min(hw) < MIN_DYNAMIC:
            return False
        sizes[n] = hw
    return True
