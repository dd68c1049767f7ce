"""graphres weights CHECKPOINT SPEC: the mapping preview, the hint of a fitting shipped spec, --convert-to."""
import json

import pytest
import torch

from conftest import ROOT, run_cli
from graphres.backends.layouts import TIMM_STEM
from reference_resnet import RefResNet, randomise


@pytest.fixture(scope="module")
def r18():
    ref = RefResNet(depth=18)
    randomise(ref, seed=5)
    return ref.state_dict()


def _deep_r18_spec(tmp_path):
    path = tmp_path / "r18d.yaml"
    path.write_text("graphres: 1\nbackbone: {type: ResNetV1d, depth: 18}\n")
    return path


def test_preview_of_a_fitting_checkpoint(tmp_path, r18):
    path = tmp_path / "r18.pth"
    torch.save(dict(r18, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}), path)
    done = run_cli("weights", path, "specs/resnet18.yaml")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"checkpoint: {path} (torchvision layout)\n"
                           f"mapped: 120 tensors\n"
                           f"ignored (fc.* and non-backbone keys): 2\n  fc.bias\n  fc.weight\n"
                           f"missing in checkpoint: 0\nunexpected in checkpoint: 0\nshape mismatch: 0\n"
                           f"result: loads into the spec\n")


def test_preview_of_a_mismatch_names_a_shipped_spec_that_fits(tmp_path, r18):
    path = tmp_path / "r18.pth"
    torch.save(r18, path)
    done = run_cli("weights", path, "specs/resnet34.yaml", "--json")
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert (out["layout"], out["fits"], out["fits_instead"]) == ("torchvision", False, ["specs/resnet18.yaml"])
    assert out["missing"][:2] == ["layer1.2.bn1.bias", "layer1.2.bn1.running_mean"]
    assert len(out["missing"]) == 80 and out["unexpected"] == [] and out["mismatched"] == []


def test_mismatched_shapes_are_listed(tmp_path, r18):
    sd = dict(r18)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    done = run_cli("weights", path, "specs/resnet18.yaml")
    assert done.returncode == 1
    assert "shape mismatch: 1\n  layer1.0.conv1.weight: checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3)\n" \
           in done.stdout
    assert done.stdout.endswith("result: does not load into the spec\n")


def test_convert_timm_deep_stem_to_mmdet_and_back(tmp_path):
    spec = _deep_r18_spec(tmp_path)
    torch.manual_seed(1)
    import graphres
    ours = {k: torch.rand_like(v) if v.is_floating_point() else v for k, v in graphres.build(spec).state_dict().items()}
    inverse = {v: k for k, v in TIMM_STEM.items()}
    timm_sd = {}
    for k, v in ours.items():
        head = ".".join(k.split(".")[:2])
        timm_sd[inverse[head] + k[len(head):] if head in inverse else k] = v
    src = tmp_path / "resnet18d.pth"
    torch.save(timm_sd, src)
    out = tmp_path / "mmdet.pth"
    done = run_cli("weights", src, spec, "--convert-to", "mmdet", "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [f"checkpoint: {src} (timm layout)",
                                            "mapped: 132 tensors (18 renamed from timm names)"]
    assert done.stdout.endswith(f"wrote {out} (mmdet layout)\n")
    mm = torch.load(out, weights_only=True)
    assert mm["state_dict"].keys() == ours.keys()
    assert all(torch.equal(mm["state_dict"][k], v) for k, v in ours.items())
    back = tmp_path / "timm.pth"
    assert run_cli("weights", out, spec, "--convert-to", "timm", "-o", back).returncode == 0
    again = torch.load(back, weights_only=True)
    assert again.keys() == timm_sd.keys() and all(torch.equal(again[k], v) for k, v in timm_sd.items())


def test_deep_stem_cannot_become_torchvision(tmp_path):
    spec = _deep_r18_spec(tmp_path)
    import graphres
    src = tmp_path / "mm.pth"
    torch.save(graphres.build(spec).state_dict(), src)
    done = run_cli("weights", src, spec, "--convert-to", "torchvision", "-o", tmp_path / "tv.pth")
    assert done.returncode == 1
    assert done.stderr == ("graphres: error: torchvision's ResNets have a 7x7 stem, and this spec a deep one: convert "
                           "to timm or mmdet instead\n")
    assert not (tmp_path / "tv.pth").exists()


def test_convert_to_detectron2(tmp_path, r18):
    src = tmp_path / "r18.pth"
    torch.save(r18, src)
    out = tmp_path / "d2.pth"
    assert run_cli("weights", src, "specs/resnet18.yaml", "--convert-to", "detectron2", "-o", out).returncode == 0
    d2 = torch.load(out, weights_only=True)["model"]
    assert torch.equal(d2["res3.0.shortcut.norm.running_var"], r18["layer2.0.downsample.1.running_var"])
    assert torch.equal(d2["stem.conv1.weight"], r18["conv1.weight"])
    done = run_cli("weights", out, "specs/resnet18.yaml")
    assert done.returncode == 0 and done.stdout.startswith(f"checkpoint: {out} (detectron2 layout)\n")
    assert done.stdout.endswith("result: loads into the spec\n")  # basic blocks: no stride_in_1x1 question


def test_detectron2_into_a_pytorch_style_bottleneck_spec_gets_a_note(tmp_path):
    import graphres
    from graphres.backends.layouts import from_graphres
    sd = graphres.build("specs/resnet50.yaml").state_dict()
    src = tmp_path / "d2.pth"
    torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in from_graphres(sd, "detectron2").items()}}, src)
    done = run_cli("weights", src, "specs/resnet50.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("result: loads into the spec\nnote: detectron2's ImageNet and COCO ResNets put the "
                                "stride in the 1x1 conv (stride_in_1x1, caffe style) and this spec does not: the keys "
                                "match, the numerics only if the checkpoint was trained with stride_in_1x1 false (else "
                                "set style: caffe)\n")


def test_usage_errors(tmp_path):
    done = run_cli("weights", tmp_path / "x.pth", "specs/resnet18.yaml", "--convert-to", "timm")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (2, "graphres: error: --convert-to and -o/--output go "
                                                                  "together")
    done = run_cli("weights", tmp_path / "x.pth", "specs/resnet18.yaml")
    assert (done.returncode, done.stderr) == (1, f"graphres: error: checkpoint '{tmp_path / 'x.pth'}' not found\n")


def test_zoo_name_from_the_cache(tmp_path, r18):
    import os
    home = tmp_path / "torch"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(r18, home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    done = run_cli("weights", "torchvision://resnet18", "specs/resnet18.yaml", env=dict(os.environ, TORCH_HOME=str(home)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"checkpoint: {home / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'} ")
    assert ROOT.is_dir()
