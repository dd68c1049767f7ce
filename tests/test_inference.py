"""The inference build: graphres.build(spec, inference=True), the fold pass, compile --inference."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import graphres
from graphres import ir
from graphres.backends.inference import build_inference
from graphres.backends.runtime import FusedConv2d, GraphresInference, InferenceBuildError
from graphres.passes.fold import G_FOLDED, fold_for_inference

from conftest import SPECS, run_cli

SIZE = 64  # small inputs: the numerics, not the speed


def randomise_norms(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics and affine parameters, GN/IN affine parameters (so no fold is
    the identity and no zero-initialised residual branch hides a wrong bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.75 + 0.75)


def calibrate_norms(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of every BN-like layer (FrozenBN included) set to its real input's,
    scaled by a random factor, in one forward pass: a network whose activations stay of order 1,
    as a trained one's do. (With ConvWS and identity statistics they grow by ~sqrt(fan_in) per
    conv, to 1e19 at layer4, where float32 rounding alone exceeds the tolerance.)"""
    g = torch.Generator().manual_seed(4)

    def pre(m, args):
        t = args[0].detach()
        m.running_mean.copy_(t.mean((0, 2, 3)))
        m.running_var.copy_(t.var((0, 2, 3)) * (torch.rand(t.shape[1], generator=g) * 0.5 + 0.75))

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()
             if getattr(m, "running_var", None) is not None]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()


def eval_and_inference(spec, overrides=(), calibrate=None, **kwargs):
    torch.manual_seed(0)
    compiled = graphres.compile_spec(spec, overrides)
    model = graphres.build(compiled).eval()
    randomise_norms(model)
    if calibrate is not None:
        calibrate_norms(model, calibrate)
    return compiled, model, build_inference(compiled.graph, model, **kwargs)


def outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


def assert_close(a, b, rtol=1e-5):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape
        rel = float((p - q).abs().max() / p.abs().max())
        assert rel <= rtol, rel


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_shipped_spec_matches_its_eval_module(spec):
    compiled, model, net = eval_and_inference(spec)
    x = torch.randn(2, compiled.spec.input_channels, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert_close(outputs(model, x), outputs(net, x))
    assert isinstance(net, GraphresInference) and isinstance(net, graphres.GraphresBackbone)
    left = sorted(n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    # a norm after a deformable conv is not folded (mmcv's DCN has no bias to take it): it stays
    g = compiled.graph
    after_dcn = sorted(g.nodes[n][ir.MODULE] for n in g.nodes if g.nodes[n].get(ir.OP) == "norm"
                       and g.nodes[ir.inputs_of(g, n)[0]].get(ir.OP) == "deform_conv")
    assert left == after_dcn
    assert net.feature_info == model.feature_info


VARIANTS = {  # name -> spec, overrides, input size
    "gn_convws": ("resnet18", ["norm={type: GN, num_groups: 16}", "conv={type: ConvWS}"], SIZE),
    "frozenbn_convws_se": ("se_resnet18", ["norm={type: FrozenBN}", "conv={type: ConvWS}"], SIZE),
    "syncbn": ("resnet50", ["norm={type: SyncBN}"], SIZE),
    # instance norm over layer4's 2x2 maps at 64x64 magnifies the rounding of a channels_last conv
    # (3e-5): 4x4 maps
    "in": ("resnet18", ["norm={type: IN, affine: true}"], 128),
    "se_gn": ("se_resnet50", ["norm={type: GN, num_groups: 32}"], SIZE),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_match_their_eval_module(name):
    spec, overrides, size = VARIANTS[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    compiled, model, net = eval_and_inference(spec, overrides, calibrate=x)
    # against the float64 truth: the inference build is within 1e-5 of it, or within twice the
    # float32 eval module's own rounding error (ConvWS + SE at layer4 is ill-conditioned: the eval module
    # itself is 4e-4 from float64 there, and the fold, done in float64, is closer)
    truth = outputs(copy.deepcopy(model).double(), x.double())
    for ev, inf, t in zip(outputs(model, x), outputs(net, x), truth):
        err = lambda y: float((y.double() - t).abs().max() / t.abs().max())  # noqa: E731
        assert err(inf) <= max(1e-5, 2 * err(ev)), (err(inf), err(ev))
    # weight standardisation is computed once: plain convs remain
    assert not any(type(m).__name__ == "ConvWS2d" for m in net.modules())


def test_folds_every_bn_into_its_conv_and_keeps_gn():
    compiled = graphres.compile_spec("resnet50")
    g = compiled.graph
    folded = fold_for_inference(g)
    norms = [n for n in g if g.nodes[n][ir.OP] == "norm"]
    assert len(norms) == 53
    assert [n for n in folded if folded.nodes[n][ir.OP] == "norm"] == []
    assert len(folded.graph[G_FOLDED]) == 53
    assert folded.graph[G_FOLDED]["conv1"] == "bn1"
    assert folded.graph[G_FOLDED]["layer1.0.downsample.0"] == "layer1.0.downsample.1"
    assert folded.nodes["layer1.0.conv1"][ir.META]["fold"] == {"norm": "layer1.0.bn1", "standardize_eps": None,
                                                               "bias": False}
    assert folded.nodes["layer1.0.conv1"][ir.ATTRS]["bias"] is True
    # the ReLU after each conv, and the residual sum with the ReLU after it, fuse into the conv:
    # no act and no add node is left; conv3 reads the shortcut on port 1
    assert [n for n in folded if folded.nodes[n][ir.OP] in ("act", "add")] == []
    assert {k: folded.nodes["layer1.0.conv1"][ir.ATTRS][k] for k in ("fused_act", "fused_residual")} == {
        "fused_act": "relu", "fused_residual": False}
    assert {k: folded.nodes["layer1.0.conv3"][ir.ATTRS][k] for k in ("fused_act", "fused_residual")} == {
        "fused_act": "relu", "fused_residual": True}
    assert {k: folded.nodes["layer1.0.downsample.0"][ir.ATTRS][k] for k in ("fused_act", "fused_residual")} == {
        "fused_act": "none", "fused_residual": False}
    assert ir.inputs_of(folded, "layer1.0.conv2") == ["layer1.0.conv1"]
    assert ir.inputs_of(folded, "layer1.0.conv3") == ["layer1.0.conv2", "layer1.0.downsample.0"]
    assert folded.edges["layer1.0.downsample.0", "layer1.0.conv3"][ir.PORT] == 1
    assert ir.inputs_of(folded, "layer1.1.conv3") == ["layer1.1.conv2", "layer1.0.conv3"]
    for n in folded:
        assert [s for s, _ in sorted(folded.in_edges(n), key=lambda e: folded.edges[e][ir.PORT])] == \
            ir.inputs_of(folded, n)
    # the training graph is untouched
    assert len([n for n in g if g.nodes[n][ir.OP] == "norm"]) == 53
    assert g.nodes["layer1.0.conv1"][ir.ATTRS]["bias"] is False and "fold" not in g.nodes["layer1.0.conv1"][ir.META]
    assert folded.graph[ir.G_FROZEN_MODULES] == () and g.graph[ir.G_FROZEN_MODULES] != ()

    gn = fold_for_inference(graphres.compile_spec("resnet18", ["norm={type: GN, num_groups: 16}"]).graph)
    assert gn.graph[G_FOLDED] == {}
    assert len([n for n in gn if gn.nodes[n][ir.OP] == "norm"]) == 20


def test_deep_stem_stays_a_sequential():
    folded = fold_for_inference(graphres.compile_spec("resnet50_v1d").graph)
    # conv, bn, relu x 3: the norms fold and the ReLUs fuse, so three convs close the gaps
    assert folded.graph["renamed"] == {"stem.1": "stem.3", "stem.2": "stem.6"}
    assert {k: v for k, v in folded.graph[G_FOLDED].items() if k.startswith("stem")} == {
        "stem.0": "stem.1", "stem.1": "stem.4", "stem.2": "stem.7"}
    net = graphres.build("resnet50_v1d", inference=True)
    assert isinstance(net.stem, nn.Sequential)
    assert [(type(m).__name__, m.act) for m in net.stem] == [("FusedConv2d", "relu")] * 3
    assert [k for k in net.state_dict() if k.startswith(("stem.", "layer1.0.downsample."))] == [
        "stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias", "stem.2.weight", "stem.2.bias",
        "layer1.0.downsample.1.weight", "layer1.0.downsample.1.bias"]


def test_inference_module_structure():
    net = graphres.build("resnet50", inference=True)
    assert type(net).__mro__[1] is GraphresInference
    state = net.state_dict()
    assert "layer1.0.bn1.weight" not in state and "bn1.running_mean" not in state
    assert state["layer1.0.conv1.bias"].shape == (64,)
    assert state["layer1.0.downsample.0.bias"].shape == (256,)
    assert len(state) == 53 * 2
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training and not any(m.training for m in net.modules())
    assert net.memory_format == "channels_last"
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_train_is_refused():
    net = graphres.build("resnet18", inference=True)
    with pytest.raises(InferenceBuildError) as err:
        net.train()
    assert str(err.value) == ("'resnet18' is an inference build: its norms are folded into the convolutions, so it "
                              "cannot train; build it without inference=True to train, and fold again afterwards")
    assert net.eval() is net and net.train(False) is net and not net.training


def test_memory_format_option():
    net = graphres.build("resnet18", inference=True, memory_format="contiguous")
    assert net.memory_format == "contiguous" and net.conv1.weight.is_contiguous()
    with pytest.raises(ValueError) as err:
        graphres.build("resnet18", inference=True, memory_format="nhwc")
    assert str(err.value) == "memory_format='nhwc' is not one of 'channels_last', 'contiguous'"
    with pytest.raises(ValueError) as err:
        graphres.build("resnet18", memory_format="contiguous")
    assert str(err.value) == "memory_format, compile and cache_dir apply to the inference build: pass inference=True"


def test_checkpoint_is_folded(tmp_path):
    torch.manual_seed(0)
    model = graphres.build("resnet18").eval()
    randomise_norms(model, seed=5)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    net = graphres.build("resnet18", checkpoint=path, inference=True)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    assert_close(outputs(model, x), outputs(net, x))
    assert net.load_report is not None


def test_compile_py_runs_without_graphres(tmp_path):
    out = tmp_path / "r18_inference.py"
    r = run_cli("compile", "resnet18", "--inference", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {out} (standalone Python source that needs torch alone; build_model() returns the network)\n"
    source = out.read_text()
    assert "class GraphresInference(GraphresBackbone):" in source and "BatchNorm2d(" not in source
    assert "import graphres" not in source and "from graphres" not in source
    # the same network, with the inference build's state dict, in a process where graphres cannot be imported
    torch.manual_seed(0)
    compiled, model, net = eval_and_inference("resnet18")  # the default build: oneDNN kernels on both sides
    torch.save(net.state_dict(), tmp_path / "folded.pth")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    torch.save(x, tmp_path / "x.pt")
    expected = outputs(net, x)
    code = ("import sys, runpy, torch\n"
            "sys.modules['graphres'] = None\n"
            f"ns = runpy.run_path({str(out)!r})\n"
            f"net = ns['build_model'](checkpoint={str(tmp_path / 'folded.pth')!r}).eval()\n"
            f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
            "with torch.no_grad():\n"
            "    out = net(x)\n"
            f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
            "try:\n    net.train()\nexcept RuntimeError as e:\n    print(type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "InferenceBuildError\n"
    got = torch.load(tmp_path / "out.pt")
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_compile_pt2_inference(tmp_path):
    out = tmp_path / "r18.pt2"
    r = run_cli("compile", "resnet18", "--inference", "--set", "input.size=[64, 64]", "-o", out)
    assert r.returncode == 0, r.stderr
    program = torch.export.load(out)
    assert not any("bn" in k for k in program.state_dict)
    assert program.state_dict["conv1.bias"].shape == (64,)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    got = program.module()(x)
    assert [tuple(t.shape) for t in got] == [(2, 64, 24, 24), (2, 128, 12, 12), (2, 256, 6, 6), (2, 512, 3, 3)]


TINY = """
graphres: 1
name: tiny
input: {channels: 3, size: [32, 32]}
norm: {type: BN}
stem: {type: conv7x7, channels: 8}
stages:
  - {block: basic, blocks: 1, planes: 8, stride: 1}
  - {block: basic, blocks: 1, planes: 16, stride: 2}
out_indices: [0, 1]
"""


def test_compiled_build_runs_and_matches(write_spec, tmp_path):
    spec = write_spec(TINY)
    compiled, model, _ = eval_and_inference(spec)
    net = build_inference(compiled.graph, model, compile=True, cache_dir=tmp_path / "inductor")
    assert isinstance(net.compile_seconds, float) and net.compile_seconds > 0
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8)).contiguous(
        memory_format=torch.channels_last)
    assert_close(outputs(model, x), outputs(net, x), rtol=1e-4)
    assert (tmp_path / "inductor").is_dir()


WARM_START = """
import json, sys
import torch
import graphres
torch.manual_seed(int(sys.argv[3]))
eager = graphres.build(sys.argv[1], inference=True)
torch.manual_seed(int(sys.argv[3]))
net = graphres.build(sys.argv[1], inference=True, compile=True, cache_dir=sys.argv[2])
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
with torch.no_grad():
    equal = all(torch.equal(a, b) for a, b in zip(net(x), eager(x)))
c = torch._dynamo.utils.counters["inductor"]
print(json.dumps({"hit": c["fxgraph_cache_hit"], "miss": c["fxgraph_cache_miss"], "equal": equal}))
"""


def test_cache_dir_gives_a_new_process_a_warm_start(write_spec, tmp_path):
    """cache_dir is a warm start across processes: a second process that builds the spec with
    the same folder compiles no inductor graph (each comes from the FX graph cache), and this
    holds for new weights (a new checkpoint of the same spec): the frozen weights are not in the
    cache key, and the warm build computes exactly what its eager inference build does.
    benchmarks/compile_cache.py times it."""
    spec = write_spec(TINY)
    cache = tmp_path / "inductor"

    def run(seed):
        r = subprocess.run([sys.executable, "-c", WARM_START, str(spec), str(cache), str(seed)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    cold = run(0)
    assert cold["hit"] == 0 and cold["miss"] >= 1 and cold["equal"]
    assert [p for p in (cache / "fxgraph").rglob("*") if p.is_file()]  # the graphs are in cache_dir
    assert run(1) == {"hit": cold["miss"], "miss": 0, "equal": True}


def test_compiled_build_calls_onednn_fused_kernel_and_equals_the_eager_build(write_spec):
    """compile=True keeps the eager build's oneDNN kernels (graphres::fused_conv2d, opaque to
    inductor): the compiled outputs are the eager inference build's, bit for bit, at the compiled
    batch and another, with no graph break or recompilation past the new batch size."""
    from graphres.backends import inference
    spec = write_spec(TINY)
    compiled, model, eager = eval_and_inference(spec)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    net = build_inference(compiled.graph, model, compile=True)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is FusedConv2d for m in convs)
    assert FusedConv2d.compiled_call is inference._compiled_call
    with torch.inference_mode():
        for batch in (1, 3):
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            inference._PACKED.clear()
            got = outputs(net, x)
            assert len(inference._PACKED) == len(convs)  # each conv's weight packed by the operator
            for a, b in zip(got, outputs(eager, x)):
                assert torch.equal(a, b)
    assert not torch._dynamo.utils.counters["graph_break"]


def test_compiled_kernel_layers_export_as_plain_convolutions(write_spec):
    """The layers take the plain path under torch.export (torch.compile's operators aside): the
    exported program has aten convolutions and no graphres operator, and computes the same."""
    from graphres.backends import inference
    spec = write_spec(TINY)
    compiled, model, net = eval_and_inference(spec)
    assert FusedConv2d.compiled_call is inference._compiled_call
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    program = torch.export.export(net, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "graphres" in t]
    assert any("convolution" in t or "conv2d" in t for t in targets)
    with torch.no_grad():
        assert_close(outputs(net, x), tuple(program.module()(x)), rtol=1e-5)


# a stage output (out_indices 0) that the next stage's first block (no downsample) takes as its identity
SHARED_OUTPUT = """
graphres: 1
name: shared_output
input: {channels: 3, size: [32, 32]}
norm: {type: BN}
stem: {type: conv7x7, channels: 8}
stages:
  - {block: basic, blocks: 2, planes: 8, stride: 1}
  - {block: basic, blocks: 2, planes: 8, stride: 1}
out_indices: [0, 1]
"""


def test_reuse_residual_marks_the_residuals_last_reader_only():
    """The inference pass lets a conv write over its residual only where it is the residual's last
    reader: every conv3 of resnet50 (the identity is dead after the sum; the first block's
    residual is its downsample), but not the block that reads a returned stage output."""
    from graphres.passes.fold import _last_use
    h = fold_for_inference(graphres.compile_spec("resnet50").graph)
    marked = sorted(h.nodes[n][ir.MODULE] for n in h.nodes if h.nodes[n][ir.ATTRS].get("reuse_residual"))
    fused = sorted(h.nodes[n][ir.MODULE] for n in h.nodes if h.nodes[n][ir.ATTRS].get("fused_residual"))
    assert marked == fused and len(marked) == 16 and marked[0] == "layer1.0.conv3"
    net = graphres.build("resnet50", inference=True)
    assert "FusedConv2d(64, 256, kernel_size=(1, 1), stride=(1, 1), act='relu', residual=True, reuse_residual=True)" \
        == repr(net.layer1[1].conv3)
    assert not net.layer1[0].conv1.reuse_residual
    assert not _last_use(h, ir.INPUT, "conv1")  # the caller's image is never written over


def test_reuse_residual_spares_a_returned_stage_output(write_spec):
    spec = write_spec(SHARED_OUTPUT)
    h = fold_for_inference(graphres.compile_spec(spec).graph)
    reuse = {h.nodes[n][ir.MODULE]: bool(h.nodes[n][ir.ATTRS].get("reuse_residual"))
             for n in h.nodes if h.nodes[n][ir.ATTRS].get("fused_residual")}
    # layer2.0 adds layer1's output, which forward() also returns; everything else is dead after its sum
    assert reuse == {"layer1.0.conv2": True, "layer1.1.conv2": True, "layer2.0.conv2": False,
                     "layer2.1.conv2": True}


def test_compiled_build_writes_over_dead_residuals_and_returns_what_eager_does(write_spec):
    """A compiled build runs each reuse_residual layer as graphres::fused_conv2d_into_residual in
    the residual's own buffer (inductor drops the clone the layer asks for): a forward allocates
    three block outputs fewer than with the flag off, and the returned stage outputs and the
    caller's image are what the eager inference build gives, bit for bit, with no graph break.
    With a forward hook that keeps a block's output, that output is copied first and the hook's
    tensor stays the block's output."""
    spec = write_spec(SHARED_OUTPUT)
    compiled, model, eager = eval_and_inference(spec)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    net = build_inference(compiled.graph, model, compile=True)

    def run(batch):
        """Outputs checked; (graphres operators called, bytes allocated) in one forward."""
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)).contiguous(
            memory_format=torch.channels_last)
        before = x.clone()
        with torch.inference_mode():
            for _ in range(2):  # compiles for this batch size, mode and hook state, if it must
                outputs(net, x)
            with torch.profiler.profile(profile_memory=True) as prof:
                got = outputs(net, x)
            for a, b in zip(got, outputs(eager, x)):
                assert torch.equal(a, b)
        assert torch.equal(x, before)
        events = prof.events()
        names = [e.name for e in events if e.name.startswith("graphres::")]
        return names, sum(e.self_cpu_memory_usage for e in events if e.self_cpu_memory_usage > 0)

    # layer1.0, layer1.1 and layer2.1 write over their residual (layer2.0's, layer1's output, is returned)
    reusing = {"graphres::fused_conv2d_into_residual": 3, "graphres::fused_conv2d": 6}
    names, reused = run(2)
    assert {k: names.count(k) for k in reusing} == reusing
    kept = {}
    for m in (eager, net):
        m.layer1[0].register_forward_hook(lambda mod, args, out, m=m: kept.__setitem__(m, out))
    torch._dynamo.reset()  # hooks added after a compile are not seen until it recompiles
    names, _ = run(2)
    assert {k: names.count(k) for k in reusing} == reusing
    assert torch.equal(kept[net], kept[eager])  # layer1.1 wrote over a copy: the hook's tensor is intact
    for m in (eager, net):
        m.layer1[0]._forward_hooks.clear()
    for m in net.modules():
        if getattr(m, "reuse_residual", False):
            m.reuse_residual = False
    torch._dynamo.reset()
    names, allocated = run(2)
    assert names.count("graphres::fused_conv2d") == 9 and "graphres::fused_conv2d_into_residual" not in names
    assert allocated - reused == 3 * 2 * 8 * 8 * 8 * 4  # three (2, 8, 8, 8) float32 block outputs
    assert not torch._dynamo.utils.counters["graph_break"]


def test_a_torch_compile_of_your_own_takes_onednn_operators_too(write_spec):
    """torch.compile(net) on the eager inference build (no freezing, fullgraph) runs the same
    operators as compile=True and gives the eager build's outputs bit for bit."""
    spec = write_spec(SHARED_OUTPUT)
    compiled, model, eager = eval_and_inference(spec)
    torch._dynamo.reset()
    mine = torch.compile(copy.deepcopy(eager), fullgraph=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        mine(x)
        with torch.profiler.profile() as prof:
            got = outputs(mine, x)
        for a, b in zip(got, outputs(eager, x)):
            assert torch.equal(a, b)
    names = [e.name for e in prof.events()]
    assert names.count("graphres::fused_conv2d_into_residual") == 3
    assert names.count("graphres::fused_conv2d") == 6


@pytest.mark.parametrize("layout,act", [("channels_last", "relu"), ("channels_last", "gelu"),
                                        ("contiguous", "none"), ("channels_last", "silu")])
def test_fused_conv_into_residual_operator_passes_torch_opcheck(layout, act):
    """graphres::fused_conv2d_into_residual: schema (it mutates the residual alone), fake
    implementation and real one agree; the residual ends as act(conv(x) + residual)."""
    from graphres.backends.inference import fused_conv2d_into_residual
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 8, 9, 11, generator=g)
    w = torch.randn(16, 8, 3, 3, generator=g) * 0.1
    b = torch.randn(16, generator=g)
    r = torch.randn(2, 16, 9, 11, generator=g)
    if layout == "channels_last":
        r = r.contiguous(memory_format=torch.channels_last)
    y = nn.functional.conv2d(x, w, b, 1, 1) + r
    y = {"relu": torch.relu, "silu": nn.functional.silu, "gelu": nn.functional.gelu, "none": lambda t: t}[act](y)
    args = (x, w, b, r.clone(), [1, 1], [1, 1], [1, 1], 1, act)
    torch.library.opcheck(fused_conv2d_into_residual, args, test_utils=("test_schema", "test_faketensor"))
    mine = r.clone()
    assert fused_conv2d_into_residual(x, w, b, mine, [1, 1], [1, 1], [1, 1], 1, act) is None
    assert float((mine - y).abs().max() / y.abs().max()) <= 1e-6


@pytest.mark.parametrize("groups,dilation,stride,residual,act", [(1, 1, 1, False, "relu"), (4, 2, 2, True, "relu"),
                                                                  (1, 1, 2, True, "silu"), (2, 1, 1, False, "none")])
def test_fused_conv_operator_passes_torch_opcheck(groups, dilation, stride, residual, act):
    """graphres::fused_conv2d's schema, fake (meta) implementation and real one agree
    (torch.library.opcheck: shapes, strides, dtypes, no aliasing), and it computes the reference."""
    from graphres.backends.inference import fused_conv2d
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 9, 11, generator=g)
    w = torch.randn(16, 8 // groups, 3, 3, generator=g) * 0.1
    b = torch.randn(16, generator=g)
    out_hw = ((9 - 1) // stride + 1, (11 - 1) // stride + 1)
    r = torch.randn(2, 16, *out_hw, generator=g).contiguous(memory_format=torch.channels_last) if residual else None
    args = (x, w, b, r, [stride] * 2, [dilation] * 2, [dilation] * 2, groups, act)
    torch.library.opcheck(fused_conv2d, args, test_utils=("test_schema", "test_faketensor"))
    y = nn.functional.conv2d(x, w, b, stride, dilation, dilation, groups)
    y = y + r if residual else y
    y = {"relu": torch.relu, "silu": nn.functional.silu, "none": lambda t: t}[act](y)
    got = fused_conv2d(*args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert float((got - y).abs().max() / y.abs().max()) <= 1e-6


# -- the fused conv (FusedConv2d): oneDNN's kernel on the CPU, torch's conv elsewhere ------------------

def _reference(conv, x, residual, act):
    y = nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        y = y + residual
    return {"none": lambda t: t, "relu": torch.relu, "silu": nn.functional.silu,
            "hardswish": nn.functional.hardswish, "gelu": nn.functional.gelu}[act](y)


@pytest.mark.parametrize("act", ["none", "relu", "silu", "hardswish", "gelu"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("groups,dilation,stride", [(1, 1, 1), (4, 1, 2), (1, 2, 1)])
def test_fused_conv_matches_conv_sum_and_activation(act, residual, groups, dilation, stride):
    from graphres.backends.runtime import FusedConv2d
    g = torch.Generator().manual_seed(11)
    conv = FusedConv2d(16, 32, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=True,
                       act=act, residual=residual).requires_grad_(False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
        conv.bias.copy_(torch.randn(32, generator=g))
    x = torch.randn(2, 16, 15, 17, generator=g)
    r = torch.randn(2, 32, (15 - 1) // stride + 1, (17 - 1) // stride + 1, generator=g) if residual else None
    expected = _reference(conv, x, r, act)
    with torch.inference_mode():
        fast = conv(x, r) if residual else conv(x)
    assert conv._packed is not None  # the oneDNN path ran, with the reordered weight kept
    conv.prepack = False
    slow = conv(x, r) if residual else conv(x)
    for got in (fast, slow):
        assert got.shape == expected.shape
        assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-6


def test_fused_conv_follows_weight_changes_and_autograd():
    from graphres.backends.runtime import FusedConv2d
    conv = FusedConv2d(8, 8, 1, bias=True, act="relu").requires_grad_(False)
    x = torch.randn(1, 8, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(-1)  # in place: the kept oneDNN weight is stale and re-made
        after = conv(x)
    assert float((after - _reference(conv, x, None, "relu")).abs().max()) <= 1e-6
    assert not torch.allclose(before, after)
    conv.load_state_dict({"weight": torch.ones(8, 8, 1, 1), "bias": torch.zeros(8)})
    with torch.no_grad():
        assert torch.allclose(conv(x), torch.relu(x.sum(1, keepdim=True)).expand(1, 8, 5, 5))
    # an input that needs its gradient takes torch's conv (oneDNN's fused op has no backward)
    xg = x.clone().requires_grad_(True)
    conv(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape
    # float64 takes torch's conv as well
    d = copy.deepcopy(conv).double()
    assert d._packed is None and d(x.double()).dtype == torch.float64


def test_inference_build_copies_pickles_and_scripts(tmp_path):
    net = graphres.build("resnet18", inference=True)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    expected = outputs(net, x)  # the oneDNN weights now kept in every conv
    twin = copy.deepcopy(net)
    assert all(m._packed is None for m in twin.modules() if hasattr(m, "_packed"))
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    scripted = torch.jit.script(net)
    for other in (twin, loaded, scripted):
        for a, b in zip(expected, outputs(other, x)):
            assert float((a - b).abs().max() / a.abs().max()) <= 1e-6


def test_contiguous_build_gives_contiguous_outputs():
    net = graphres.build("resnet18", inference=True, memory_format="contiguous")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(10))
    assert all(t.is_contiguous() for t in outputs(net, x))
    assert all(not m.prepack for m in net.modules() if hasattr(m, "prepack"))


def test_activations_oneDNN_cannot_fuse_stay_layers():
    folded = fold_for_inference(graphres.compile_spec("resnet18", ["act=leaky_relu"]).graph)
    acts = [n for n in folded if folded.nodes[n][ir.OP] == "act"]
    assert len(acts) == 17  # the stem's and two per block: none fused
    assert folded.nodes["layer1.0.conv2"][ir.ATTRS]["fused_act"] == "none"
    assert folded.nodes["layer1.0.conv2"][ir.ATTRS]["fused_residual"] is True  # the sum still fuses
    _, model, net = eval_and_inference("resnet18", ["act=leaky_relu"])
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(12))
    assert_close(outputs(model, x), outputs(net, x))


def test_fused_conv_remakes_its_onednn_weight_for_another_thread_count():
    """oneDNN chooses the blocked layout for the thread count and the batch (one made for 1 thread
    ran ~3x slower on 2): a layout is kept per (threads, batch), the outputs agree."""
    from graphres.backends.runtime import FusedConv2d
    conv = FusedConv2d(8, 16, 3, padding=1, bias=True, act="relu").requires_grad_(False)
    x = torch.randn(1, 8, 9, 9, generator=torch.Generator().manual_seed(13))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = conv(x)
        torch.set_num_threads(2)
        with torch.no_grad():
            two = conv(x)
            conv(torch.cat([x] * 3))
        # one layout per (threads, batch) for the current weight
        assert [k[3:] for k in conv._packed] == [(1, 1), (2, 1), (2, 3)]
        with torch.no_grad():
            conv.weight.mul_(2)  # a new weight: the old layouts go
            conv(x)
        assert [k[3:] for k in conv._packed] == [(2, 1)]
        with torch.no_grad():
            for batch in range(2, 8):
                conv(torch.cat([x] * batch))
        assert [k[3:] for k in conv._packed] == [(2, 4), (2, 5), (2, 6), (2, 7)]  # the last four made
    finally:
        torch.set_num_threads(threads)
    assert float((one - two).abs().max()) <= 1e-6
