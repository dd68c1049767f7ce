"""passes/limits.py: what torch refuses later, the parameter limit, the memory estimate and the
budget that build and compile check before allocating."""
import copy

import pytest
import torch

import graphres
from graphres import SpecError, ir
from graphres.diagnostics import DiagnosticBag, Span
from graphres.passes import limits
from graphres.passes.limits import LimitError, check_limits, estimate_bytes, memory_budget, state_bytes

from conftest import ROOT


def _graph(op: str, attrs: dict, in_shape=(8, 16, 16), conv=None, norm=None):
    """input -> one node, annotated as the shapes pass would."""
    g = ir.new_graph("t", norm=norm or {"type": "BN"}, conv=conv or {"type": "Conv2d"}, params=0,
                     stages=[{"output": "layer1.0.x"}])
    span = Span("t.yaml", 3, 5)
    ir.add_node(g, ir.INPUT, "input", **{ir.MODULE: None, ir.IN_CH: in_shape[0], ir.OUT_CH: in_shape[0],
                                        ir.STAGE: None, ir.SCOPE: "", ir.SPAN: span, ir.DEF_SPAN: None})
    g.nodes[ir.INPUT][ir.META]["shape"] = in_shape
    ir.add_node(g, "layer1.0.x", op, [ir.INPUT], **{ir.ATTRS: attrs, ir.MODULE: "layer1.0.x", ir.IN_CH: in_shape[0],
                                                    ir.OUT_CH: in_shape[0], ir.STAGE: 0, ir.SCOPE: "layer1.0",
                                                    ir.SPAN: span, ir.DEF_SPAN: Span("t.yaml", 9, 9)})
    g.nodes["layer1.0.x"][ir.META].update(shape=in_shape, params=0)
    return g


def _run(g):
    before = copy.deepcopy(dict(g.nodes(data=True)))
    diags = DiagnosticBag()
    check_limits(g, diags)
    assert dict(g.nodes(data=True)) == before  # the pass only reads the IR
    return [d.headline() for d in diags]


def test_pool_padding_over_half_the_kernel():
    pool = {"kernel": 3, "stride": 1, "padding": 2, "ceil_mode": False}
    assert _run(_graph("maxpool", pool)) == [
        "t.yaml:9:9: error[E063]: maxpool layer1.0.x pads by 2, more than half its kernel of 3"]
    assert _run(_graph("avgpool", {**pool, "count_include_pad": True, "kernel": 2, "padding": 1})) == []
    assert _run(_graph("maxpool", {**pool, "padding": 1})) == []
    with pytest.raises(RuntimeError, match="pad should be at most half of effective kernel size"):
        torch.nn.MaxPool2d(3, 1, 2)(torch.zeros(1, 1, 8, 8))  # what E063 saves the user from


def test_instance_norm_on_a_1x1_map():
    g = _graph("norm", {"zero_init": False}, in_shape=(8, 1, 1), norm={"type": "IN"})
    assert _run(g) == ["t.yaml:9:9: error[E064]: instance norm layer1.0.x normalises a 1x1 map: one value per "
                       "channel, which torch refuses"]
    assert _run(_graph("norm", {"zero_init": False}, in_shape=(8, 1, 2), norm={"type": "IN"})) == []
    assert _run(_graph("norm", {"zero_init": False}, in_shape=(8, 1, 1), norm={"type": "BN"})) == []
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        torch.nn.InstanceNorm2d(8)(torch.zeros(2, 8, 1, 1))


def test_weight_standardisation_over_one_weight():
    conv = {"out": 8, "kernel": 1, "stride": 1, "padding": 0, "dilation": 1, "groups": 8, "bias": False}
    assert _run(_graph("conv", conv, conv={"type": "ConvWS", "eps": 1e-5})) == [
        "t.yaml:9:9: error[E065]: weight-standardised conv layer1.0.x has one weight per output channel (1 input "
        "channel per group, kernel 1x1): its standard deviation is undefined and every output NaN"]
    assert _run(_graph("conv", {**conv, "groups": 4}, conv={"type": "ConvWS", "eps": 1e-5})) == []
    assert _run(_graph("conv", conv)) == []
    from graphres.backends.torch_module import ConvWS2d
    with pytest.warns(UserWarning, match="degrees of freedom"):  # what E065 saves the user from
        assert torch.isnan(ConvWS2d(8, 8, 1, groups=8)(torch.ones(1, 8, 2, 2))).all()


def test_parameter_limit_and_its_override(monkeypatch):
    spec = {"graphres": 1, "input": {"channels": 3}, "stages": [{"block": "basic", "blocks": 2, "planes": 64}]}
    monkeypatch.setenv("GRAPHRES_MAX_PARAMS", "100000")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(spec)
    assert [d.message for d in e.value.diagnostics] == [
        "the model has 157,504 parameters (615.2 KiB as float32), over the limit of 100,000; the largest layer, "
        "layer1.0.conv1, has 36,864"]
    monkeypatch.setenv("GRAPHRES_MAX_PARAMS", "200000")
    assert graphres.compile_spec(spec).graph.graph["params"] == 157_504


def test_state_bytes_is_what_torch_allocates():
    compiled = graphres.compile_spec(ROOT / "specs" / "resnet50.yaml")
    model = graphres.build(compiled)
    floats = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    assert state_bytes(compiled.graph) == floats == 4 * 23_561_152
    assert estimate_bytes(compiled.graph, "compile") == 3 * floats


@pytest.mark.parametrize("value,budget", [(None, "machine"), ("64G", 64 * 2 ** 30), ("512M", 512 * 2 ** 20),
                                          ("100K", 102_400), ("1.5G", int(1.5 * 2 ** 30)), ("2GiB", 2 * 2 ** 30),
                                          ("1000", 1000), (4096, 4096), ("unlimited", None), ("none", None),
                                          (0, None)])
def test_memory_budget(monkeypatch, value, budget):
    monkeypatch.delenv("GRAPHRES_MAX_MEMORY", raising=False)
    monkeypatch.setattr(limits, "available_memory", lambda: 12345)
    assert memory_budget(value) == (12345 if budget == "machine" else budget)
    if value is not None:
        monkeypatch.setenv("GRAPHRES_MAX_MEMORY", str(value))
        assert memory_budget() == (12345 if budget == "machine" else budget)


def test_bad_memory_budget():
    with pytest.raises(LimitError, match=r"memory limit 'lots' must be a byte count, a size such as '64G', "
                                         r"or 'unlimited'"):
        memory_budget("lots")


def test_build_refuses_before_allocating(monkeypatch):
    spec = {"graphres": 1, "stages": [{"block": "basic", "blocks": 2, "planes": 64}]}
    monkeypatch.delenv("GRAPHRES_MAX_MEMORY", raising=False)
    allocated = []
    import graphres.backends.torch_module as tm
    real_build_module = tm.build_module
    monkeypatch.setattr(tm, "build_module", lambda g, **kw: allocated.append(g) or real_build_module(g, **kw))
    with pytest.raises(SpecError) as e:
        graphres.build(spec, max_memory="100K")
    assert [d.message for d in e.value.diagnostics] == [
        "refusing to build the model: it needs about 617.8 KiB (157,504 parameters), over the 100.0 KiB of max_memory"]
    assert allocated == []
    monkeypatch.setattr(limits, "available_memory", lambda: 1000)
    with pytest.raises(SpecError, match="over the 1000 B of memory available on this machine"):
        graphres.build(spec)
    graphres.build(spec, max_memory="unlimited")
    assert len(allocated) == 1
    assert len(allocated) == 1


def test_validate_warns_what_build_will_refuse(monkeypatch):
    monkeypatch.setenv("GRAPHRES_MAX_MEMORY", "100K")
    compiled = graphres.compile_spec({"graphres": 1, "stages": [{"block": "basic", "blocks": 2, "planes": 64}]})
    assert [d.message for d in compiled.warnings] == [
        "building the model needs about 617.8 KiB, more than the 100.0 KiB of GRAPHRES_MAX_MEMORY; build and compile "
        "will refuse it"]


def test_a_join_of_one_input_with_itself_works():
    spec = {"graphres": 1, "blocks": {"sq": {
        "params": {"planes": {"type": "int"}, "stride": {"type": "int", "default": 1}}, "out_channels": "in_channels",
        "layers": [{"name": "c", "op": "conv", "out": "in_channels", "kernel": 1},
                   {"name": "square", "op": "mul", "from": ["c", "c"]}]}},
        "stages": [{"block": "sq", "blocks": 1, "planes": 64}]}
    spec["input"] = {"size": [32, 32]}
    compiled = graphres.compile_spec(spec)  # the IR keeps both operands (ports 0 and 1)
    assert ir.inputs_of(compiled.graph, "layer1.0.square") == ["layer1.0.c", "layer1.0.c"]
    model = graphres.build(compiled).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        c = model.layer1[0].c(stem)
        assert torch.equal(model(x)[0], c * c)


def test_a_layer_named_input_is_refused():
    spec = {"graphres": 1, "blocks": {"b": {
        "params": {"planes": {"type": "int"}, "stride": {"type": "int", "default": 1}}, "out_channels": "in_channels",
        "layers": [{"name": "input", "op": "global_avgpool"}, {"name": "c", "op": "conv", "out": "in_channels",
                                                               "kernel": 1}]}},
        "stages": [{"block": "b", "blocks": 2, "planes": 64}]}
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(spec)
    assert [d.headline() for d in e.value.diagnostics] == [
        "<dict>: error[E013]: layer name 'input' in block 'b' is reserved: 'from: input' names the block's input"]


def test_a_layer_whose_output_nothing_reads_is_refused_before_torch(write_spec):
    path = write_spec("""
        graphres: 1
        input: {channels: 4, size: [64, 64]}
        blocks:
          mine:
            params: {planes: {type: int}, stride: {default: 1, type: int}}
            out_channels: in_channels
            layers:
            - {name: pool, op: avgpool, kernel: 3, stride: stride, padding: 1}
            - {seq: down, from: input, when: stride != 1, layers: [{kernel: 1, op: conv, out: out_channels, stride: stride}, {op: norm}]}
        stages:
        - {block: mine, blocks: 1, planes: 16}
        - {block: mine, blocks: 3, planes: 64, stride: 2}
    """)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{path}:8:7: error[E016]: the output of layer2.{i}.pool is never used, which graphres does not support yet"
        for i in (0, 1)]
