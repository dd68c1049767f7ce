"""The generated network is ordinary PyTorch: forward goes through the module tree at call time,
so replacing, wrapping and converting submodules take effect; TorchScript, torch.compile and hooks
work; the standalone .py needs torch alone and matches graphres' module bit for bit."""
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

import graphres
from graphres.backends.codegen import generate
from conftest import ROOT, run_cli

SIZE = 64


def x(n=2, c=3, size=SIZE):
    torch.manual_seed(1)
    return torch.randn(n, c, size, size)


def test_replacing_the_stem_conv_takes_effect():
    m = graphres.build("specs/resnet18.yaml")
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    outs = m.eval()(x(c=1))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]


def test_a_wrapped_inner_conv_is_called():
    m = graphres.build("specs/resnet18.yaml", ["zero_init_residual=false"]).eval()
    calls = []

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            calls.append(t.shape)
            return self.inner(t) * 0  # the block's residual branch now contributes nothing

    before = m(x())
    m.layer2[1].conv2 = Wrap(m.layer2[1].conv2)
    after = m(x())
    assert calls == [torch.Size([2, 128, 8, 8])]
    assert torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])


def test_convert_sync_batchnorm_is_used_by_forward():
    m = nn.SyncBatchNorm.convert_sync_batchnorm(graphres.build("specs/resnet50.yaml")).eval()
    syncs = [mod for mod in m.modules() if isinstance(mod, nn.SyncBatchNorm)]
    assert len(syncs) == 53 and not any(type(mod) is nn.BatchNorm2d for mod in m.modules())
    seen = []
    for mod in syncs:
        mod.register_forward_hook(lambda mod, i, o: seen.append(mod))
    m(x(1))
    assert len(seen) == 53


def test_fuse_modules_takes_effect():
    m = graphres.build("specs/resnet18.yaml").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.rand_like(p) * 0.1)  # non-trivial norms
        ref = m(x())
        fused = torch.ao.quantization.fuse_modules(m, [["conv1", "bn1", "relu"], ["layer1.0.conv1", "layer1.0.bn1"]])
        assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.layer1[0].bn1, nn.Identity)
        out = fused(x())
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["specs/resnet50.yaml", "specs/se_resnet18.yaml", "specs/resnet50_v1d.yaml",
                                  "specs/resnet50_classifier.yaml", "specs/resnext50_32x4d.yaml"])
def test_torch_jit_script_matches_eager(spec):
    m = graphres.build(spec).eval()
    scripted = torch.jit.script(m)
    with torch.no_grad():
        a, b = m(x()), scripted(x())
    for p, q in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(p, q)


def test_torch_compile_traces_the_whole_forward():
    m = graphres.build("specs/resnet18.yaml").eval()
    compiled = torch.compile(m, backend="eager", fullgraph=True)  # dynamo capture, no graph break
    with torch.no_grad():
        for a, b in zip(m(x()), compiled(x())):
            assert torch.equal(a, b)


def test_hooks_and_double():
    m = graphres.build("specs/resnet18.yaml").eval().double()
    shapes = []
    m.layer3.register_forward_hook(lambda mod, i, o: shapes.append((o.dtype, tuple(o.shape))))
    outs = m(x().double())
    assert outs[0].dtype == torch.float64 and shapes == [(torch.float64, (2, 256, 4, 4))]


def test_traceback_shows_the_generated_line():
    m = graphres.build("specs/resnet18.yaml").eval()
    with pytest.raises(RuntimeError) as err:
        m(x(c=4))
    text = "".join(traceback.format_exception(err.value))
    assert "<graphres-generated Resnet18" in text and "x = self.conv1(x)" in text


def test_block_classes_and_stages():
    m = graphres.build("specs/resnet50.yaml")
    assert type(m.layer1).__name__ == "Sequential" and len(m.layer3) == 6
    assert [type(b).__name__ for b in m.layer2] == ["BottleneckDownsample", "Bottleneck", "Bottleneck", "Bottleneck"]
    assert m.layer1[1].downsample is None and isinstance(m.layer1[0].downsample, nn.Sequential)
    assert isinstance(m, graphres.backends.torch_module.GraphresBackbone)


def test_generated_source_is_golden():
    """The generated source for resnet18 (review a change of tests/golden/resnet18.py as code)."""
    golden = ROOT / "tests" / "golden" / "resnet18.py"
    text = generate(graphres.compile_spec("specs/resnet18.yaml").graph, standalone=True).source
    if os.environ.get("GRAPHRES_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_generation_is_deterministic():
    g1 = graphres.compile_spec("specs/se_resnet50.yaml").graph
    g2 = graphres.compile_spec("specs/se_resnet50.yaml").graph
    assert generate(g1, True).source == generate(g2, True).source


STANDALONE = r'''
import sys
sys.modules["graphres"] = None  # graphres cannot be imported here
import importlib.util, torch
spec = importlib.util.spec_from_file_location("net", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
net = mod.build_model(checkpoint=sys.argv[2]).eval()
x = torch.load(sys.argv[3], weights_only=True)
with torch.no_grad():
    out = net(x)
out = out if isinstance(out, tuple) else (out,)
torch.save({"outs": list(out), "keys": list(net.state_dict()), "train_frozen": [
    n for n, p in net.train().named_parameters() if not p.requires_grad]}, sys.argv[4])
'''


@pytest.mark.parametrize("spec,sets", [
    ("specs/resnet50.yaml", []), ("specs/se_resnet18.yaml", []), ("specs/resnet50_v1d.yaml", []),
    ("specs/resnet50_classifier.yaml", []), ("specs/deeplabv3_r50_d8.yaml", []),
    ("specs/resnet18.yaml", ["--set", "norm={type: GN, num_groups: 32}"]),
    ("specs/resnet18.yaml", ["--set", "norm={type: FrozenBN}", "--set", "conv={type: ConvWS}"]),
    ("specs/resnet18.yaml", ["--set", "with_cp=true", "--set", "act={type: silu}"]),
])
def test_standalone_py_runs_without_graphres_and_matches(tmp_path, spec, sets):
    out = tmp_path / "net.py"
    r = run_cli("compile", spec, "-o", out, *sets)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {out} (standalone Python source that needs torch alone; build_model() returns " \
                       "the network)\n"
    overrides = [s for s in sets if s != "--set"]
    model = graphres.build(spec, overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # every weight non-trivial, activations stay finite
    torch.save(model.state_dict(), tmp_path / "w.pth")
    c = graphres.compile_spec(spec, overrides).graph.graph
    inp = x(2, c["input_channels"], SIZE)
    torch.save(inp, tmp_path / "x.pt")
    r = subprocess.run([sys.executable, "-c", STANDALONE, str(out), str(tmp_path / "w.pth"), str(tmp_path / "x.pt"),
                        str(tmp_path / "res.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = torch.load(tmp_path / "res.pt", weights_only=True)
    assert res["keys"] == list(model.state_dict())
    with torch.no_grad():
        ours = model(inp)
    ours = ours if isinstance(ours, tuple) else (ours,)
    assert len(ours) == len(res["outs"])
    for a, b in zip(ours, res["outs"]):
        assert torch.equal(a, b)  # bitwise
    assert res["train_frozen"] == [n for n, p in model.train().named_parameters() if not p.requires_grad]


def test_compile_format_follows_the_extension(tmp_path):
    r = run_cli("compile", "specs/resnet18.yaml", "-o", tmp_path / "model.zip")
    assert r.returncode == 2
    assert r.stderr.endswith("graphres: error: cannot tell the output format of "
                             f"'{tmp_path / 'model.zip'}': use one of .pt2 (a torch.export program), "
                             ".onnx (an ONNX model), .ts (a TorchScript module), "
                             ".py (standalone Python source that needs torch alone)\n")
    assert not (tmp_path / "model.zip").exists()
    r = run_cli("compile", "specs/resnet18.yaml", "-o", tmp_path / "m.py", "--checkpoint", "w.pth")
    assert r.returncode == 2 and "a .py file holds the network, not its weights" in r.stderr


def test_compile_py_does_not_import_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from graphres.cli import main\n"
            f"sys.exit(main(['compile', 'specs/resnet18.yaml', '-o', {str(tmp_path / 'm.py')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.py").read_text().startswith('"""resnet18: generated by graphres')
