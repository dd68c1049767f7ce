"""The one place that lists the compiler's stages in order: parse -> lower -> passes.

Backends (torch module, export, Graphviz) take the :class:`Compiled` result; this module never
imports torch.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import networkx as nx

from .diagnostics import Diagnostic, DiagnosticBag, SourceCache, SpecError
from .lower import lower
from .passes.analysis import analyse
from .passes.checks import check
from .passes.limits import check_limits
from .passes.openmmlab import describe_openmmlab, spec_style
from .passes.shapes import infer_shapes
from .spec.load import load_spec
from .spec.model import Spec

@dataclass
class Compiled:
    spec: Spec
    graph: nx.DiGraph
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def sources(self) -> SourceCache:
        return self.spec.sources

    def explicit(self) -> dict[str, Any]:
        """The fully resolved explicit form (what ``graphres expand`` prints), with the strides and
        dilations lowering chose (an ``output_stride`` trade included)."""
        from .spec.emit import to_explicit
        resolved = [{"stride": 1 if st.get("traded") else None, "dilations": st["dilations"]}
                    for st in self.graph.graph["stages"]]
        return to_explicit(self.spec, resolved)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector out of a compile or a build, and restore it after.

    Compiling allocates hundreds of thousands of objects that all stay alive (the IR's dicts, the
    modules), so each of the collector's passes over them finds nothing and costs more the larger
    the spec; at 5,000 blocks they took a third of the build. Nesting is fine: only the outermost
    use turns the collector back on (and only if it was on).

    On the way out the objects made meanwhile, still in the youngest generation, are moved to the
    oldest (``gc.freeze()`` then ``gc.unfreeze()``, no traversal): otherwise the first collection
    after it would walk them all at once, only to find them alive."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def compile_spec(source: str | Path | Mapping[str, Any] | Spec, overrides: Sequence[str] = (),
                 input_size: tuple[int, int] | None = None, *, text: str | None = None) -> Compiled:
    """Parse, lower and analyse a spec; raise :class:`SpecError` listing every problem found.

    ``text``: the spec's content when it is not (yet) what is on disk, ``source`` then its file name."""
    with gc_paused():
        return _compile(source, overrides, input_size, text)


def _compile(source, overrides, input_size, text) -> Compiled:
    spec = source if isinstance(source, Spec) else load_spec(source, overrides, text=text)
    diags = DiagnosticBag()
    diags.extend(spec.warnings)
    graph = lower(spec, diags)                             # spec -> IR (channels checked)
    if not diags.has_errors:
        infer_shapes(graph, diags, input_size)             # shapes, strides, params, MACs
    if not diags.has_errors:
        analyse(graph)                                     # receptive fields, memory, trainable, ...
        check(graph, spec, diags)                          # findings that need the analysis
        check_limits(graph, diags)                         # what torch refuses later; models too large
        describe_openmmlab(graph, spec_style(spec))        # mmdetection's attributes and init_cfg
    if diags.has_errors:
        raise SpecError(diags.items, spec.sources)
    return Compiled(spec, graph, [d for d in diags if not d.is_error])
