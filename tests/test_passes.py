"""Each pass on a small hand-built IR: the invariant before, run the pass, the invariant after
(torch.fx's test_dce_pass pattern)."""
import networkx as nx

from graphres import ir
from graphres.diagnostics import DiagnosticBag
from graphres.passes.analysis import analyse
from graphres.passes.shapes import infer_shapes


def tiny(act="relu", reread=False, frozen_stages=-1) -> nx.DiGraph:
    """input -> conv -> norm -> act -> (add with the conv's output when ``reread``), one block."""
    g = ir.new_graph("tiny", input_channels=3, input_size=(8, 8), norm={"type": "BN"}, conv={"type": "Conv2d"},
                     frozen_stages=frozen_stages, frozen={}, stages=[], outputs=[], stem={"block": "t"}, head=None)
    common = {ir.SCOPE: "stem", ir.STAGE: -1, ir.BLOCK_TYPE: "t", ir.SPAN: None, ir.DEF_SPAN: None}
    ir.add_node(g, ir.INPUT, "input", **{ir.MODULE: None, ir.IN_CH: 3, ir.OUT_CH: 3, ir.STAGE: None, ir.SCOPE: ""})
    ir.add_node(g, "conv1", "conv", [ir.INPUT], **{ir.ATTRS: {"out": 4, "kernel": 3, "stride": 2, "padding": 1,
                                                              "dilation": 1, "groups": 1, "bias": False},
                                                   ir.MODULE: "conv1", ir.IN_CH: 3, ir.OUT_CH: 4, **common})
    ir.add_node(g, "bn1", "norm", ["conv1"], **{ir.ATTRS: {"zero_init": True}, ir.MODULE: "bn1", ir.IN_CH: 4,
                                                ir.OUT_CH: 4, **common})
    ir.add_node(g, "act", "act", ["bn1"], **{ir.ATTRS: {"type": act}, ir.MODULE: "act", ir.IN_CH: 4, ir.OUT_CH: 4,
                                             **common})
    if reread:
        ir.add_node(g, "add", "add", ["act", "bn1"], **{ir.MODULE: None, ir.IN_CH: 4, ir.OUT_CH: 4, **common})
    return g


def test_shapes_pass_writes_every_figure():
    g = tiny()
    assert all("shape" not in g.nodes[n][ir.META] for n in g)
    infer_shapes(g, DiagnosticBag())
    assert [g.nodes[n][ir.META]["shape"] for n in ir.topological_order(g)] == [(3, 8, 8), (4, 4, 4), (4, 4, 4),
                                                                               (4, 4, 4)]
    assert g.nodes["conv1"][ir.META]["params"] == 4 * 3 * 9 and g.nodes["bn1"][ir.META]["params"] == 8
    assert g.graph[ir.G_MACS] == 4 * 16 * 3 * 9 and g.graph[ir.G_ANALYSED_SIZE] == (8, 8)


def test_shapes_pass_analyses_the_size_it_is_given():
    g = tiny()
    infer_shapes(g, DiagnosticBag(), (16, 16))
    assert g.nodes["act"][ir.META]["shape"] == (4, 8, 8) and g.graph[ir.G_ANALYSED_SIZE] == (16, 16)


def test_in_place_decision():
    g = tiny("silu")
    infer_shapes(g, DiagnosticBag())
    assert "in_place" not in g.nodes["act"][ir.META]
    analyse(g)
    assert g.nodes["act"][ir.META]["in_place"] and g.nodes["act"][ir.META]["bytes"] == 0


def test_no_in_place_when_the_operand_is_read_again():
    g = tiny("silu", reread=True)
    infer_shapes(g, DiagnosticBag())
    analyse(g)
    assert not g.nodes["act"][ir.META]["in_place"]  # the add reads bn1 after the act
    assert not g.nodes["add"][ir.META]["in_place"]  # an act's output is needed by its backward


def test_no_in_place_for_an_op_that_cannot():
    g = tiny("gelu")
    infer_shapes(g, DiagnosticBag())
    analyse(g)
    assert not g.nodes["act"][ir.META]["in_place"]


def test_frozen_and_zero_init_decisions():
    g = tiny(frozen_stages=0)
    infer_shapes(g, DiagnosticBag())
    analyse(g)
    assert g.graph[ir.G_FROZEN_MODULES] == ["conv1", "bn1", "act"]
    assert g.graph[ir.G_ZERO_INIT_MODULES] == ["bn1"]
    assert ir.is_frozen(g, -1) and g.graph[ir.G_TRAINABLE_PARAMS] == 0
    g = tiny(frozen_stages=-1)
    infer_shapes(g, DiagnosticBag())
    analyse(g)
    assert g.graph[ir.G_FROZEN_MODULES] == [] and not ir.is_frozen(g, -1)
