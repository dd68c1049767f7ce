"""compile's export formats: .pt2 (its dynamic range), .onnx (run in onnxruntime), .ts (loaded in a
process where graphres cannot be imported), with a checkpoint baked in, at two batch/height/width values."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphres
from graphres.backends.export import (ONNX_OPSET, dynamic_shapes, example_input, export_module,
                                      torchscript_bytes)
from graphres.passes.export_range import dynamic_range
from conftest import run_cli

TOL = dict(rtol=1e-4, atol=1e-4)
# (batch, height, width): two values of each dynamic axis, the smallest height and width among them
SIZES = [(1, 33, 33), (3, 64, 48)]


def _checkpoint(spec: str, path: Path) -> Path:
    """A state dict with non-trivial weights and BatchNorm statistics (fixed seed)."""
    torch.manual_seed(0)
    m = graphres.build(spec)
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1 if "running_var" in name or "weight" in name else
                       torch.randn_like(t) * 0.05)
    torch.save(m.state_dict(), path)
    return path


def _inputs(sizes=SIZES):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, h, w, generator=g) for b, h, w in sizes]


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """resnet18 with a checkpoint, compiled through the CLI to each format, and its eval module."""
    d = tmp_path_factory.mktemp("r18")
    ckpt = _checkpoint("specs/resnet18.yaml", d / "w.pth")
    files = {}
    for ext in (".pt2", ".onnx", ".ts"):
        out = d / f"resnet18{ext}"
        r = run_cli("compile", "specs/resnet18.yaml", "--checkpoint", ckpt, "-o", out)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1].startswith(f"wrote {out} (")
        files[ext] = out
    model = graphres.build("specs/resnet18.yaml", checkpoint=ckpt).eval()
    return model, files


def _onnx_matches(path: Path, model, sizes):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in _inputs(sizes):
        with torch.no_grad():
            ref = model(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        outs = sess.run(None, {"input": x.numpy()})
        assert len(outs) == len(ref)
        for o, r in zip(outs, ref):
            assert o.shape == tuple(r.shape)
            np.testing.assert_allclose(o, r.numpy(), **TOL)


def test_onnx_resnet18_runs_in_onnxruntime_at_two_sizes(r18):
    model, files = r18
    _onnx_matches(files[".onnx"], model, SIZES)


def test_onnx_file_states_opset_axes_and_output_names(r18):
    proto = onnx.load(str(r18[1][".onnx"]))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [ONNX_OPSET] == [18]
    (inp,) = proto.graph.input
    assert inp.name == "input"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["layer1", "layer2", "layer3", "layer4"]


def test_onnx_resnet50_runs_in_onnxruntime_at_two_sizes(tmp_path):
    ckpt = _checkpoint("specs/resnet50.yaml", tmp_path / "w.pth")
    out = tmp_path / "r50.onnx"
    r = run_cli("compile", "specs/resnet50.yaml", "--checkpoint", ckpt, "-o", out)
    assert r.returncode == 0, r.stderr
    model = graphres.build("specs/resnet50.yaml", checkpoint=ckpt).eval()
    _onnx_matches(out, model, [(1, 40, 40), (2, 64, 96)])


CLEAN = """
import sys
sys.path.append({site!r})  # torch's site-packages, without running its .pth files (graphres' editable install)
try:
    import graphres
except ImportError:
    pass
else:
    raise SystemExit("graphres is importable: " + graphres.__file__)
import torch
m = torch.jit.load({ts!r})
xs = torch.load({inputs!r})
with torch.no_grad():
    outs = [m(x) for x in xs]
torch.save(outs, {out!r})
print("ran", [tuple(o.shape) for o in outs[-1]])
"""


def test_torchscript_runs_in_a_process_without_graphres(r18, tmp_path):
    model, files = r18
    xs = _inputs()
    torch.save(xs, tmp_path / "inputs.pt")
    site = str(Path(torch.__file__).resolve().parent.parent)
    script = CLEAN.format(site=site, ts=str(files[".ts"]), inputs=str(tmp_path / "inputs.pt"),
                          out=str(tmp_path / "outs.pt"))
    # -I: no PYTHONPATH, no user site, no script directory; -S: no site-packages (no .pth files)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran [(3, 64, 16, 12), (3, 128, 8, 6), (3, 256, 4, 3), (3, 512, 2, 2)]"
    outs = torch.load(tmp_path / "outs.pt")
    for x, got in zip(xs, outs):
        with torch.no_grad():
            ref = model(x)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("spec,overrides,note", [
    ("specs/se_resnet18.yaml", [], None),
    ("specs/resnet18.yaml", ["with_cp=true"],
     "with_cp: the 8 blocks run without activation checkpointing (it only saves memory in training)"),
    ("specs/resnet18.yaml", ["norm.type=SyncBN"],
     "SyncBN: the 20 SyncBatchNorm layers are saved as BatchNorm2d (what they compute in eval mode)"),
])
def test_torchscript_of_se_with_cp_and_syncbn_specs(spec, overrides, note):
    model = graphres.build(spec, overrides).eval()
    data, notes = torchscript_bytes(model)
    assert notes == ([note] if note else [])
    loaded = torch.jit.load(io.BytesIO(data))
    for x in _inputs():
        with torch.no_grad():
            for a, b in zip(loaded(x), model(x)):
                torch.testing.assert_close(a, b, **TOL)
    # the module itself is untouched: still checkpointing, still SyncBN
    assert any(type(m).__name__ == "SyncBatchNorm2d" for m in model.modules()) == ("norm.type=SyncBN" in overrides)


def test_torchscript_syncbn_file_keeps_the_state_dict_keys():
    model = graphres.build("specs/resnet18.yaml", ["norm.type=SyncBN"]).eval()
    loaded = torch.jit.load(io.BytesIO(torchscript_bytes(model)[0]))
    assert list(loaded.state_dict()) == list(model.state_dict())


def test_pt2_runs_at_two_sizes_and_states_its_range(r18):
    model, files = r18
    program = torch.export.load(files[".pt2"])
    ranges = sorted((int(r.lower), str(r.upper)) for r in program.range_constraints.values())
    assert ranges == [(1, "int_oo"), (33, "int_oo"), (33, "int_oo")]
    for x in _inputs():
        with torch.no_grad():
            for a, b in zip(program.module()(x), model(x)):
                torch.testing.assert_close(a, b, **TOL)


def test_pt2_below_its_range_fails_naming_the_bound(r18):
    program = torch.export.load(r18[1][".pt2"]).module()
    with pytest.raises(AssertionError) as err:
        program(torch.randn(1, 3, 16, 16))
    assert str(err.value) == "Guard failed: x.size()[2] >= 33"
    with pytest.raises(AssertionError) as err:
        program(torch.randn(1, 3, 64, 32))
    assert str(err.value) == "Guard failed: x.size()[3] >= 33"


@pytest.mark.parametrize("spec,side", [("resnet18", 33), ("resnet50", 33), ("resnet50_v1d", 33),
                                       ("resnet50_caffe", 33), ("se_resnet50", 33), ("resnet50_classifier", 33),
                                       ("resnet50_os8", 9), ("deeplabv3_r50_d8", 9)])
def test_dynamic_range_of_shipped_specs(spec, side):
    g = graphres.compile_spec(spec).graph
    assert dynamic_range(g) == (side, side) and g.graph["dynamic_min_size"] == (side, side)


def test_dynamic_range_is_what_torch_export_needs():
    """The analysis' minimum is tight: torch.export refuses a range that starts one pixel lower."""
    compiled = graphres.compile_spec("specs/resnet18.yaml")
    model = graphres.build(compiled).eval()
    (side, _) = dynamic_range(compiled.graph)
    for low, fails in ((side, False), (side - 1, True)):
        example = example_input(3, (64, 64), (low, low))
        shapes = dynamic_shapes((low, low))  # Dim("height", min=low): torch proves every guard or refuses
        if not fails:
            torch.export.export(model, example, dynamic_shapes=shapes)
    with pytest.raises(torch._dynamo.exc.UserError) as err:
        torch.export.export(model, example, dynamic_shapes=shapes)
    assert "Constraints violated (height, width)!" in str(err.value)


def test_inference_option_exports_what_the_eval_module_computes(tmp_path):
    # the file holds the folded network (no BatchNorm left), which matches the eval module
    out = tmp_path / "r18.ts"
    r = run_cli("compile", "specs/resnet18.yaml", "--inference", "-o", out)
    assert r.returncode == 0, r.stderr
    with graphres.backends.export.seeded():
        model = graphres.build("specs/resnet18.yaml").eval()
    loaded = torch.jit.load(str(out))
    kinds = {m.original_name for m in loaded.modules()}
    # norms folded, the ReLUs and residual sums fused into the convs
    assert kinds == {"Basic", "BasicDownsample", "FusedConv2d", "MaxPool2d", "Resnet18", "Sequential"}, kinds
    for x in _inputs():
        with torch.no_grad():
            for a, b in zip(loaded(x), model(x)):
                torch.testing.assert_close(a, b, **TOL)


def test_unknown_extension_names_every_format(tmp_path):
    r = run_cli("compile", "specs/resnet18.yaml", "-o", tmp_path / "m.zip")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"graphres: error: cannot tell the output format of '{tmp_path / 'm.zip'}': use one of .pt2 (a "
        f"torch.export program), .onnx (an ONNX model), .ts (a TorchScript module), .py (standalone Python source "
        f"that needs torch alone)")
    assert not (tmp_path / "m.zip").exists()


def test_pt2_of_a_ceil_mode_pool_spec_states_its_range():
    """resnet50_v1d's avg_down AvgPool2d(ceil_mode=True) leaves a guard torch cannot prove (it holds
    for every size): the program checks it at run time and still states and checks the range."""
    compiled = graphres.compile_spec("specs/resnet50_v1d.yaml")
    model = graphres.build(compiled).eval()
    program = export_module(model, 3, (64, 64), dynamic_range(compiled.graph))
    ranges = sorted((int(r.lower), str(r.upper)) for r in program.range_constraints.values())
    assert ranges == [(1, "int_oo"), (33, "int_oo"), (33, "int_oo")]
    for x in _inputs([(1, 33, 35), (2, 50, 64)]):
        with torch.no_grad():
            for a, b in zip(program.module()(x), model(x)):
                torch.testing.assert_close(a, b, **TOL)
    with pytest.raises(AssertionError) as err:
        program.module()(torch.randn(1, 3, 32, 40))
    assert str(err.value) == "Guard failed: x.size()[2] >= 33"
