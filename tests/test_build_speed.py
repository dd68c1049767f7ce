"""Instant builds and linear compiles (issue 12): the mechanisms, counted, never timed.

A build constructs the network on the meta device and writes every tensor once (init_weights, a
layer's own default, or the checkpoint); the expression parser parses each distinct text once; the
topological order is insertion order; the garbage collector is off while compiling and building.
The timings themselves are in benchmarks/build.py and benchmarks/scaling.py.
"""
import gc
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import graphres
from graphres import ir
from graphres.backends.materialise import materialise
from graphres.backends.torch_module import build_module
from graphres.spec import expr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from scaling import spec_text  # noqa: E402

class WriteCounter(TorchDispatchMode):
    """Counts the in-place writes (``normal_``, ``uniform_``, ``fill_``, ``zero_``, ...) torch really
    executes on each real tensor: writes a build skips never reach a mode entered before it."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()
        self.keep: list = []  # the tensors counted, alive so that their ids stay theirs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func._schema.is_mutable and args and isinstance(args[0], torch.Tensor) and not args[0].is_meta
                and func.__name__.split(".")[0] not in ("set_", "detach_", "requires_grad_")):  # values untouched
            self.calls[id(args[0])] += 1
            self.keep.append(args[0])
        return func(*args, **(kwargs or {}))

    def per_tensor(self, model) -> dict[str, int]:
        return {name: self.calls[id(t)] for name, t in model.state_dict(keep_vars=True).items()}

    def per_parameter(self, model) -> dict[str, int]:
        return {name: self.calls[id(p)] for name, p in model.named_parameters()}


def test_each_parameter_is_initialised_exactly_once():
    with WriteCounter() as counter:
        model = graphres.build("resnet50", ["zero_init_residual=false"])
    counts = counter.per_parameter(model)
    assert len(counts) == 159 and set(counts.values()) == {1}  # one normal_ (convs) or fill_/zero_ (norms)
    buffers = {k: v for k, v in counter.per_tensor(model).items() if k not in counts}
    assert len(buffers) == 159 and set(buffers.values()) == {1}  # running_mean, running_var, step: reset once


def test_zero_init_norms_are_the_only_second_writes():
    """init_weights' own rule: the zero-init norms are set to 1/0, then to 0 (OpenMMLab's order)."""
    with WriteCounter() as counter:
        model = graphres.build("resnet50")
    counts = counter.per_parameter(model)
    twice = {k for k, v in counts.items() if v == 2}
    assert twice == {f"{m}.{p}" for m in type(model).zero_init_modules for p in ("weight", "bias")}
    assert len(twice) == 32 and set(counts.values()) == {1, 2}


def test_the_classifier_fc_gets_torch_default_once():
    torch.manual_seed(0)
    with WriteCounter() as counter:
        model = graphres.build("resnet50_classifier", ["zero_init_residual=false"])
    assert set(counter.per_tensor(model).values()) == {1}
    bound = 1 / 2048 ** 0.5  # torch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)), as torchvision's fc
    fc = model.fc.weight.detach(), model.fc.bias.detach()
    assert float(fc[0].abs().max()) <= bound and float(fc[1].abs().max()) <= bound and float(fc[0].std()) > bound / 2


def test_no_initialisation_when_a_checkpoint_provides_every_tensor(tmp_path):
    torch.manual_seed(3)
    ref = graphres.build("resnet50_classifier")
    with torch.no_grad():
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    with WriteCounter() as counter:
        model = graphres.build("resnet50_classifier", checkpoint=tmp_path / "w.pth")
    assert set(counter.per_tensor(model).values()) == {0}
    own = model.state_dict()
    assert own.keys() == sd.keys() and all(torch.equal(own[k], v) and own[k].dtype == v.dtype for k, v in sd.items())
    assert str(model.load_report) == "loaded 320 tensors"
    plain = graphres.build("resnet50_classifier")
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in plain.parameters()]
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert [m.training for m in model.train().modules()] == [m.training for m in plain.train().modules()]


def test_a_checkpoint_without_step_counters_gets_zero_counters(tmp_path):
    torch.manual_seed(0)
    sd = {k: v for k, v in graphres.build("resnet18").state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    model = graphres.build("resnet18", checkpoint=tmp_path / "old.pth")
    assert model.bn1.num_batches_tracked.dtype == torch.long and int(model.bn1.num_batches_tracked) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_a_float16_checkpoint_is_cast_and_views_are_not_tied(tmp_path):
    torch.manual_seed(0)
    sd = graphres.build("resnet18").state_dict()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    flat = torch.zeros(2, 64)
    half["bn1.weight"], half["bn1.bias"] = flat[0], flat[1]  # two views of one storage
    torch.save(half, tmp_path / "h.pth")
    with pytest.warns(graphres.CheckpointWarning, match="cast from float16 to float32"):
        model = graphres.build("resnet18", checkpoint=tmp_path / "h.pth")
    assert model.conv1.weight.dtype == torch.float32 and isinstance(model.conv1.weight, nn.Parameter)
    with torch.no_grad():
        model.bn1.weight.fill_(2.0)
    assert torch.equal(model.bn1.bias, torch.zeros(64))


def test_tensors_the_state_does_not_provide_get_the_spec_initialisation():
    """A partial state (the prefix and partial paths): the rest is initialised as without a
    checkpoint, in the same order, so the first conv's draw is the same."""
    g = graphres.compile_spec("resnet18").graph
    torch.manual_seed(7)
    full = graphres.build("resnet18").state_dict()
    model = build_module(g, init=False, device="meta")
    state = {k: torch.full(v.shape, 0.5) for k, v in model.state_dict().items()
             if k.endswith("weight") and k != "conv1.weight" and "bn" not in k and "downsample.1" not in k}
    torch.manual_seed(7)
    assert materialise(model, "cpu", state)
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], full["conv1.weight"])  # initialised: the first draw
    assert torch.equal(own["layer1.0.conv1.weight"], torch.full((64, 64, 3, 3), 0.5))  # provided
    assert torch.equal(own["layer1.0.bn2.weight"], torch.zeros(64))  # zero_init_residual
    assert torch.equal(own["layer2.0.bn1.running_var"], torch.ones(128))


@pytest.mark.parametrize("spec,sets", [("resnet50", []), ("resnet50_classifier", []), ("se_resnet18", []),
                                       ("resnet18", ["norm={type: GN, num_groups: 32}"]),
                                       ("resnet18", ["norm={type: FrozenBN}", "conv={type: ConvWS}"])])
def test_meta_build_then_materialise_equals_build(spec, sets):
    torch.manual_seed(11)
    built = graphres.build(spec, sets)
    torch.manual_seed(11)
    meta = graphres.build(spec, sets, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values())
    later = graphres.materialise(meta)
    a, b = built.state_dict(), later.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.requires_grad for p in built.parameters()] == [p.requires_grad for p in later.parameters()]


def test_the_draws_are_init_weights_own_in_module_order():
    """An eagerly constructed network (torch's default init first), reseeded, then init_weights:
    the same tensors as a build with that seed, so the build's only draws are init_weights'."""
    g = graphres.compile_spec("resnet50").graph
    eager = build_module(g, init=False)
    torch.manual_seed(5)
    with torch.no_grad():
        eager.init_weights()
    torch.manual_seed(5)
    built = graphres.build("resnet50")
    a, b = eager.state_dict(), built.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_meta_device_refuses_a_checkpoint():
    with pytest.raises(ValueError) as e:
        graphres.build("resnet18", checkpoint="w.pth", device="meta")
    assert str(e.value) == ("a checkpoint cannot be loaded onto the meta device: build on a real device, or build "
                            "on meta and load it after graphres.materialise(model)")


def test_a_layer_that_cannot_start_on_meta_is_built_eagerly():
    class Scaled(nn.Module):  # a constant set in __init__: neither init_weights nor a reset writes it
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor(2.0))
    g = graphres.compile_spec("resnet18").graph
    model = build_module(g, init=False, device="meta")
    with torch.device("meta"):
        model.extra = Scaled()
    assert materialise(model, "cpu") is False  # the caller (graphres.build) then builds eagerly


# -- the expression parser's cache ----------------------------------------------------------------

def _compile_counting(blocks: int) -> dict[str, int]:
    from graphres.spec import blocks as block_defs
    block_defs._parsed_builtins.cache_clear()  # the built-in files are read once per process
    expr.clear_parse_cache()
    graphres.compile_spec(graphres.load_spec({"graphres": 1, **_mapping(blocks)}))
    return expr.parse_stats()


def _mapping(blocks: int) -> dict:
    import yaml
    return {k: v for k, v in yaml.safe_load(spec_text(blocks)).items() if k != "graphres"}


def test_each_expression_text_is_parsed_once_whatever_the_block_count():
    small, large = _compile_counting(10), _compile_counting(1010)  # 1010: two stages
    # the distinct texts of the stem and the basic block, and of the built-in blocks the spec loads
    # with them (the bottleneck's dcn and plugin slots, the plugin blocks; the two GeneralizedAttention
    # blocks add 35)
    assert small["parses"] == large["parses"] == 75
    # a stage's repeated blocks are copies of one lowered instance (lower.py, _Template): a stage
    # lowers its first block and its second (stride 1 on the stage's channels), 7 evaluations
    # each; 1010 blocks lower the two of the second stage besides, and 1,006 copies evaluate nothing
    assert large["hits"] - small["hits"] == 2 * 7


def test_built_in_blocks_are_read_once_per_process():
    from graphres.spec import blocks as block_defs
    from graphres.spec.source import SourceCache
    block_defs._parsed_builtins.cache_clear()
    expr.clear_parse_cache()
    first = block_defs.builtin_blocks()
    parses = expr.parse_stats()["parses"]
    sources = SourceCache()
    second = block_defs.builtin_blocks(sources)
    assert expr.parse_stats()["parses"] == parses  # nothing parsed again
    assert first == second and first is not second  # a fresh dict each time, the same definitions
    # messages about a built-in block still show its line
    assert sources.line("<graphres>/blocks/resnet.yaml", 1) is not None
    assert sources.line("<graphres>/blocks/plugins.yaml", 1) is not None


def test_built_in_block_files_read_by_libyaml_equal_the_bounded_reader():
    """graphres' own block files are composed by libyaml's C composer (trusted text): the data and
    every span (quoted scalars included) are the bounded pure-Python reader's."""
    import yaml
    from graphres.spec import blocks as block_defs
    from graphres.spec.source import parse_yaml
    assert yaml.__with_libyaml__  # PyYAML's wheels carry it; without it the trusted path is the plain one
    for name, text in block_defs._builtin_text():
        plain, fast = parse_yaml(text, name), parse_yaml(text, name, trusted=True)
        assert fast.data == plain.data and fast.spans == plain.spans and fast.key_spans == plain.key_spans
        assert len(plain.spans) > 200
    quoted = parse_yaml("a: 'x y'\nb: \"z\"\n", "q", trusted=True)
    assert (quoted.spans[("a",)].col, quoted.spans[("a",)].length) == (5, 3)  # inside the quotes
    assert parse_yaml("a: 'x y'\nb: \"z\"\n", "q").spans == quoted.spans


def test_parse_errors_are_not_cached():
    expr.clear_parse_cache()
    for _ in range(2):
        with pytest.raises(expr.ExprError):
            expr.parse_expr("planes +")
    assert expr.parse_stats() == {"parses": 2, "hits": 0, "cached": 0}
    assert expr.names_in("a + b") == {"a", "b"} and expr.names_in("a + b") == {"a", "b"}


# -- the topological order ------------------------------------------------------------------------

def test_topological_order_is_insertion_order_without_networkx_sort(monkeypatch):
    import networkx as nx
    g = graphres.compile_spec("resnet50").graph
    expected = list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n][ir.ORDER]))
    monkeypatch.setattr(nx, "lexicographical_topological_sort", lambda *a, **k: pytest.fail("sorted by networkx"))
    assert ir.topological_order(g) == expected


def test_lowering_keeps_the_order_as_it_adds_nodes_so_no_pass_sorts():
    g = graphres.compile_spec("resnet50").graph
    kept = g.__networkx_cache__["graphres_topological_order"]
    assert kept == sorted(g, key=lambda n: g.nodes[n][ir.ORDER]) and len(kept) == len(g)


def test_the_kept_order_follows_removals_and_later_additions():
    g = ir.new_graph("t")
    ir.add_node(g, "a", "input")
    ir.add_node(g, "b", "act", ["a"])
    ir.add_node(g, "c", "act", ["a"])
    assert ir.topological_order(g) == ["a", "b", "c"]
    g.remove_node("b")  # networkx clears its cache
    ir.add_node(g, "d", "act", ["c"])
    ir.add_node(g, "e", "add", ["d", "a"])
    assert ir.topological_order(g) == ["a", "c", "d", "e"]
    ir.add_nodes_data(g, [("f", {ir.OP: "act", ir.INPUTS: ("e",), ir.ATTRS: {}, ir.META: {}})])
    assert ir.topological_order(g) == ["a", "c", "d", "e", "f"]
    with pytest.raises(AssertionError, match="duplicate node"):
        ir.add_nodes_data(g, [("f", {ir.OP: "act", ir.INPUTS: ("e",), ir.ATTRS: {}, ir.META: {}})])


def test_an_edge_against_insertion_order_takes_networkx_sort():
    g = ir.new_graph("t")
    ir.add_node(g, "a", "input")
    ir.add_node(g, "b", "act", ["a"])
    ir.add_node(g, "c", "act", ["a"])
    g.add_edge("c", "b")  # by hand, against insertion order
    assert ir.topological_order(g) == ["a", "c", "b"]


# -- the garbage collector ------------------------------------------------------------------------

def test_the_collector_is_off_while_compiling_and_restored(monkeypatch):
    from graphres import pipeline
    seen = []
    original = pipeline.infer_shapes
    monkeypatch.setattr(pipeline, "infer_shapes", lambda *a: (seen.append(gc.isenabled()), original(*a)))
    assert gc.isenabled()
    graphres.compile_spec("resnet18")
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        graphres.compile_spec("resnet18")
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
    with pytest.raises(graphres.SpecError):
        graphres.compile_spec("resnet18", ["stages.0.blocks=0"])
    assert gc.isenabled()


def test_small_layers_are_constructed_for_real_with_the_same_tensors():
    """A spec of small layers is constructed eagerly (the default draws from a copy of the random
    state), a large one on meta; both initialise from the same random state."""
    from scaling import spec_text
    import yaml
    small = {k: v for k, v in yaml.safe_load(spec_text(3)).items()}
    c = graphres.compile_spec(small)
    assert c.graph.graph["params"] / sum(1 for _, d in c.graph.nodes(data=True) if d["meta"].get("params")) < \
        graphres.META_MIN_PARAMS_PER_LAYER
    torch.manual_seed(2)
    built = graphres.build(c)
    torch.manual_seed(2)
    later = graphres.materialise(graphres.build(c, device="meta"))
    a, b = built.state_dict(), later.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with WriteCounter() as counter:
        graphres.build(c)
    assert counter.calls  # constructed for real: the default writes happened (on the copied random state)


# -- copies of repeated blocks --------------------------------------------------------------------

def _init_calls(monkeypatch, cls) -> list:
    calls = []
    real = cls.__init__

    def spy(self, *a, **k):
        calls.append(type(self).__name__)
        real(self, *a, **k)
    monkeypatch.setattr(cls, "__init__", spy)
    return calls


def test_repeated_blocks_are_copied_in_a_build_and_constructed_elsewhere(monkeypatch):
    from graphres.backends.runtime import GraphresBlock
    g = graphres.compile_spec("resnet50").graph
    cls = build_module(g, init=False).layer1[1].__class__  # the generated Bottleneck class
    calls = _init_calls(monkeypatch, cls)
    graphres.build("resnet50")
    assert calls == ["Bottleneck"] * 4  # one per stage: blocks 2.. of a stage are copies of block 1
    calls.clear()
    build_module(g, init=False)
    assert calls == ["Bottleneck"] * 12  # constructed: every block that is not a stage's first
    assert issubclass(cls, GraphresBlock)


def test_copied_blocks_equal_constructed_ones_and_are_independent(monkeypatch):
    from graphres.backends import runtime
    torch.manual_seed(3)
    copied = graphres.build("resnet50")
    with monkeypatch.context() as m:
        m.setattr(runtime.RepeatedBlocks, "copies", classmethod(lambda mcs: __import__("contextlib").nullcontext()))
        torch.manual_seed(3)
        constructed = graphres.build("resnet50")
    a, b = copied.state_dict(), constructed.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    for (na, ma), (nb, mb) in zip(copied.named_modules(), constructed.named_modules()):
        assert na == nb and type(ma) is type(mb)
        plain = {k: v for k, v in vars(ma).items() if k not in ("_parameters", "_buffers", "_modules")}
        assert plain == {k: v for k, v in vars(mb).items() if k not in ("_parameters", "_buffers", "_modules")}, na
    one, other = copied.layer3[2], copied.layer3[3]
    assert one.conv1.weight.data_ptr() != other.conv1.weight.data_ptr()
    assert one.bn1.running_mean.data_ptr() != other.bn1.running_mean.data_ptr()
    assert one.conv1._forward_hooks is not other.conv1._forward_hooks
    assert one.bn1._non_persistent_buffers_set is not other.bn1._non_persistent_buffers_set
    torch.jit.script(copied)
    seen = []
    one.conv1.register_forward_hook(lambda mod, i, o: seen.append(mod))
    one.inplanes = 7
    with torch.no_grad():
        copied.eval()(torch.randn(1, 3, 32, 32))
    assert seen == [one.conv1] and other.inplanes == 1024


def test_a_block_holding_anything_but_plain_values_is_constructed_each_time(monkeypatch):
    from graphres.backends.runtime import RepeatedBlocks
    g = graphres.compile_spec("resnet18").graph
    cls = build_module(g, init=False).layer1[1].__class__  # Basic(64), Basic(64), ..., Basic(128), ...
    assert RepeatedBlocks._copyable(cls(64))
    shared = cls(64)
    shared.again = shared.conv1  # one module under two names: a copy would untie them
    assert not RepeatedBlocks._copyable(shared)
    calls = _init_calls(monkeypatch, cls)
    graphres.build("resnet18")
    assert len(calls) == 4  # layer1.1 is a copy of layer1.0: the same class and arguments
    real = cls.__init__

    def with_a_list_of_tensors(self, *a, **k):
        real(self, *a, **k)
        self.__dict__["cache"] = [torch.zeros(1)]  # not a plain value: a copy would share it
    monkeypatch.setattr(cls, "__init__", with_a_list_of_tensors)
    assert not RepeatedBlocks._copyable(cls(64))
    calls.clear()
    model = graphres.build("resnet18")
    assert len(calls) == 5 and model.layer1[0].cache is not model.layer1[1].cache
