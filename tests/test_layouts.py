"""Checkpoints from the ecosystem (issue 11): model-zoo names read from torch.hub's cache, init prefix,
mmengine runner checkpoints, timm deep stems, safetensors, detectron2 .pth and .pkl layouts."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import graphres
from graphres import CheckpointError, SpecError
from graphres.backends.layouts import detect_layout, from_graphres, to_graphres
from reference_resnet import RefResNet, randomise


@pytest.fixture(scope="module")
def r18():
    ref = RefResNet(depth=18)
    randomise(ref, seed=11)
    return {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _same(model, sd):
    own = model.state_dict()
    return [k for k, v in sd.items() if not torch.equal(own[k], v)]


def _shorthand(write_spec, body: str):
    return write_spec("graphres: 1\nbackbone:\n  type: ResNet\n  depth: 18\n" + body)


# -- model-zoo names ---------------------------------------------------------------------------

def test_torchvision_name_reads_the_hub_cache(torch_home, r18, write_spec):
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(r18, torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    spec = _shorthand(write_spec, "  init_cfg: {type: Pretrained, checkpoint: 'torchvision://resnet18'}\n")
    model = graphres.build(spec)
    assert model.load_report.loaded == len(r18)
    assert _same(model, r18) == []


@pytest.mark.parametrize("name, file", [
    ("torchvision://resnet50", "resnet50-0676ba61.pth"),
    ("torchvision://ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
    ("torchvision://resnet50.default", "resnet50-11ad3fa6.pth"),
    ("modelzoo://resnet101", "resnet101-63fe2227.pth"),
    ("open-mmlab://resnext101_32x4d", "resnext101_32x4d-a5af3160.pth"),
    ("openmmlab://resnet50_v1c", "resnet50_v1c-2cccc1ad.pth"),
    ("open-mmlab://detectron2/resnet50_caffe", "resnet50_msra-5891d200.pth"),
    ("open-mmlab://resnet50_caffe", "resnet50_caffe-788b5fa3.pth"),  # mmengine's deprecated name
])
def test_zoo_names_resolve_as_mmengine(name, file, torch_home):
    from graphres import zoo
    assert zoo.cache_path(zoo.zoo_url(name)) == torch_home / "hub" / "checkpoints" / file


def test_missing_cached_file_says_where_and_how(torch_home, write_spec):
    spec = _shorthand(write_spec, "  init_cfg: {type: Pretrained, checkpoint: 'torchvision://resnet50'}\n")
    with pytest.raises(CheckpointError) as e:
        graphres.build(spec)
    url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    path = torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert str(e.value) == (
        f"checkpoint 'torchvision://resnet50' ({url}) is not in torch.hub's cache: expected {path}; graphres never "
        f"downloads: fetch it with: python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\" "
        f"(or: curl -L --create-dirs -o {path} {url})")
    assert "\n" not in str(e.value)


def test_torch_home_defaults_to_xdg_cache(monkeypatch, tmp_path):
    from graphres import zoo
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zoo.hub_dir() == tmp_path / "torch" / "hub"


def test_unknown_zoo_name_is_E090(write_spec):
    spec = _shorthand(write_spec, "  init_cfg: {type: Pretrained, checkpoint: 'torchvision://resnet5'}\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(spec)
    (d,) = e.value.diagnostics
    assert (d.code, d.message, d.hint) == (
        "E090", "'torchvision://resnet5' is not a model-zoo name graphres knows (torchvision:// has 36 "
                "ResNet-family names)", "did you mean 'torchvision://resnet50'?")
    assert (d.span.line, d.span.col) == (5, 45)


# -- prefix and pretrained ---------------------------------------------------------------------

def test_init_cfg_prefix_loads_the_backbone_of_a_detector(tmp_path, r18, write_spec):
    sd = {f"backbone.{k}": v for k, v in r18.items()}
    sd["neck.conv.weight"] = torch.zeros(4, 4)
    sd["roi_head.fc.weight"] = torch.zeros(2, 2)
    path = tmp_path / "epoch_12.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 12}}, path)
    spec = _shorthand(write_spec, f"  init_cfg: {{type: Pretrained, checkpoint: '{path}', prefix: backbone}}\n")
    model = graphres.build(spec)
    assert model.load_report.ignored == ["neck.conv.weight", "roi_head.fc.weight"]
    assert _same(model, r18) == []


def test_explicit_init_prefix_and_a_wrong_one(tmp_path, r18, write_spec):
    path = tmp_path / "student.pth"
    torch.save({f"student.{k}": v for k, v in r18.items()}, path)
    root = graphres_root()
    ok = write_spec(f"_base_: {root / 'specs/resnet18.yaml'}\ninit: {{type: pretrained, checkpoint: '{path}', "
                    f"prefix: student.}}\n")
    assert _same(graphres.build(ok), r18) == []
    bad = write_spec(f"_base_: {root / 'specs/resnet18.yaml'}\ninit: {{type: pretrained, checkpoint: '{path}', "
                     f"prefix: teacher}}\n", name="bad.yaml")
    with pytest.raises(CheckpointError) as e:
        graphres.build(bad)
    assert str(e.value) == f"checkpoint '{path}' has no key starting with 'teacher.' (init prefix); its keys start " \
                           f"with student."


def test_prefix_must_be_a_string(tmp_path, write_spec):
    spec = _shorthand(write_spec, "  init_cfg: {type: Pretrained, checkpoint: a.pth, prefix: 3}\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(spec)
    assert [(d.code, d.message) for d in e.value.diagnostics] == [
        ("E011", "init.prefix must be a string, found 3 (an integer)")]


def test_deprecated_pretrained_key_loads(tmp_path, r18, write_spec):
    path = tmp_path / "r18.pth"
    torch.save(r18, path)
    spec = _shorthand(write_spec, f"  pretrained: '{path}'\n")
    assert _same(graphres.build(spec), r18) == []


def graphres_root():
    from conftest import ROOT
    return ROOT


# -- mmengine runner checkpoints ---------------------------------------------------------------

def _fake_mmengine(monkeypatch):
    """Modules whose classes pickle under mmengine's names, as its runner writes them."""
    made = {}
    for module, cls in (("mmengine.logging.history_buffer", "HistoryBuffer"),
                        ("mmengine.config.config", "ConfigDict")):
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        klass = type(cls, (dict if cls == "ConfigDict" else object,), {"__module__": module})
        setattr(sys.modules[module], cls, klass)
        made[cls] = klass
    return made


@pytest.fixture
def without_mmengine():
    """The real mmengine (installed for tests/test_openmmlab.py, maybe imported by an earlier test)
    taken out of sys.modules for the test, and put back after."""
    real = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "mmengine" or k.startswith("mmengine.")}
    yield
    for k in [k for k in sys.modules if k == "mmengine" or k.startswith("mmengine.")]:
        del sys.modules[k]
    sys.modules.update(real)


def test_mmengine_runner_checkpoint_loads_safely(tmp_path, r18, write_spec, monkeypatch, without_mmengine):
    fake = _fake_mmengine(monkeypatch)
    buffer = fake["HistoryBuffer"]()
    buffer.max_length = 1000000
    buffer._log_history = np.array([0.5, 0.25])
    buffer._count_history = np.array([1, 1])
    cfg = fake["ConfigDict"](type="ResNet", depth=18)
    ckpt = {
        "meta": {"epoch": 12, "iter": 12000, "cfg": "model = dict(backbone=dict(style='pytorch'))", "seed": 0,
                 "dataset_meta": {"classes": ("person", "car")}},
        "state_dict": {f"backbone.{k}": v for k, v in r18.items()},
        "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {"cfg": cfg, "epoch": 12},
                        "resumed_keys": {"epoch": True}},
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.02}]},
        "param_schedulers": [{"last_epoch": 12}],
    }
    path = tmp_path / "epoch_12.pth"
    torch.save(ckpt, path)
    monkeypatch.undo()  # mmengine is gone again before loading
    assert "mmengine.logging.history_buffer" not in sys.modules
    spec = _shorthand(write_spec, f"  init_cfg: {{type: Pretrained, checkpoint: '{path}', prefix: backbone.}}\n")
    model = graphres.build(spec)
    assert model.load_report.loaded == len(r18)
    assert _same(model, r18) == []


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_other_classes_are_still_refused(tmp_path, r18, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": r18, "message_hub": Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert str(e.value).startswith(f"cannot read checkpoint '{path}' safely (weights_only=True): it holds Python "
                                   f"objects other than tensors and plain containers (")
    assert str(e.value).endswith("(refused: print)")
    assert "pwned" not in capsys.readouterr().out


# -- timm --------------------------------------------------------------------------------------

TIMM_DEEP_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
                  "conv1.6": "stem.6", "bn1": "stem.7"}


def _deep_r18(write_spec):
    return write_spec("graphres: 1\nbackbone: {type: ResNetV1d, depth: 18}\n", name="r18d.yaml")


def _timm_names(sd):
    """timm's resnet18d key names, written out from timm's layout (conv1 Sequential, bn1 after it)."""
    out = {}
    for k, v in sd.items():
        head, _, tail = k.partition(".")
        for timm_name, ours in TIMM_DEEP_STEM.items():
            if k.startswith(ours + "."):
                k = timm_name + k[len(ours):]
                break
        out[k] = v
    return out


def test_timm_deep_stem_loads(tmp_path, write_spec):
    spec = _deep_r18(write_spec)
    torch.manual_seed(0)
    ours = {k: torch.rand_like(v) if v.is_floating_point() else v for k, v in graphres.build(spec).state_dict().items()
            if not k.endswith("num_batches_tracked")}
    timm_sd = _timm_names(ours)
    assert "conv1.6.weight" in timm_sd and "bn1.running_var" in timm_sd and "layer2.0.downsample.1.weight" in timm_sd
    timm_sd["fc.weight"], timm_sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18d.pth"
    torch.save(timm_sd, path)
    model = graphres.build(spec, checkpoint=path)
    assert (model.load_report.layout, model.load_report.ignored) == ("timm", ["fc.bias", "fc.weight"])
    assert str(model.load_report) == "loaded 110 tensors (timm layout); ignored 2 (fc.bias, fc.weight)"
    assert _same(model, ours) == []


def test_timm_safetensors(tmp_path, r18):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in r18.items()}, str(path))
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert _same(model, r18) == []


def test_damaged_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError) as e:
        graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert str(e.value).startswith(f"cannot read checkpoint '{path}' as safetensors: ")


# -- detectron2 --------------------------------------------------------------------------------

def _d2_names(sd, prefix="backbone.bottom_up."):
    """detectron2's ResNet names for a graphres/torchvision state dict (FrozenBN: no num_batches_tracked)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("conv1."):
            name = "stem.conv1." + k[6:]
        elif k.startswith("bn1."):
            name = "stem.conv1.norm." + k[4:]
        else:
            layer, block, part, tail = k.split(".", 3)
            stage = f"res{int(layer[5:]) + 1}"
            if part == "downsample":
                index, tail = tail.split(".", 1)
                part = "shortcut" if index == "0" else "shortcut.norm"
            elif part.startswith("bn"):
                part = f"conv{part[2:]}.norm"
            name = f"{stage}.{block}.{part}.{tail}"
        out[prefix + name] = v
    return out


def test_detectron2_pth_layout(tmp_path, r18):
    d2 = _d2_names(r18)
    assert "backbone.bottom_up.res3.0.shortcut.norm.running_mean" in d2
    assert "backbone.bottom_up.res2.1.conv2.norm.weight" in d2
    d2["backbone.fpn_lateral2.weight"] = torch.zeros(256, 64, 1, 1)
    d2["proposal_generator.rpn_head.conv.weight"] = torch.zeros(1)
    path = tmp_path / "model_final.pth"
    torch.save({"model": d2, "iteration": 90000}, path)
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert model.load_report.layout == "detectron2"
    assert model.load_report.ignored == ["backbone.fpn_lateral2.weight", "proposal_generator.rpn_head.conv.weight"]
    assert _same(model, r18) == []


def test_detectron2_pkl_of_numpy_arrays(tmp_path, r18):
    d2 = {k: v.numpy() for k, v in _d2_names(r18).items()}
    path = tmp_path / "model_final_280758.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    model = graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert model.load_report.layout == "detectron2"
    assert _same(model, r18) == []


def test_pkl_with_other_globals_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError) as e:
        graphres.build("specs/resnet18.yaml", checkpoint=path)
    assert str(e.value) == (f"cannot read checkpoint '{path}' safely: global '__builtin__.print' is not allowed "
                            f"(only numpy arrays are read from a .pkl)")
    assert "pwned" not in capsys.readouterr().out


# -- the tables themselves ---------------------------------------------------------------------

def test_layout_detection():
    assert detect_layout(["conv1.weight", "bn1.weight", "layer1.0.conv1.weight"]) == "torchvision"
    assert detect_layout(["stem.0.weight", "stem.7.weight"]) == "torchvision"  # mmdet deep stem = graphres
    assert detect_layout(["conv1.0.weight", "bn1.weight"]) == "timm"
    assert detect_layout(["module.backbone.conv1.0.weight", "module.backbone.bn1.weight"]) == "timm"
    assert detect_layout(["stem.conv1.weight", "res2.0.conv1.weight"]) == "detectron2"
    assert detect_layout(["backbone.res2.0.conv1.norm.weight"]) == "detectron2"


@pytest.mark.parametrize("layout", ["timm", "detectron2", "torchvision"])
def test_conversion_round_trips(layout, r18):
    stem = {"stem.0.weight": torch.zeros(1), "stem.7.running_var": torch.ones(1)}
    sd = dict({k: v for k, v in r18.items() if not k.startswith(("conv1.", "bn1."))}, **stem) \
        if layout == "timm" else dict(r18)
    back, ignored, _ = to_graphres(from_graphres(sd, layout), layout)
    assert ignored == [] and back.keys() == sd.keys()


def test_a_url_is_looked_up_in_the_cache(torch_home, r18):
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(r18, torch_home / "hub" / "checkpoints" / "r18-abc.pth")
    model = graphres.build("specs/resnet18.yaml", checkpoint="https://example.org/weights/r18-abc.pth")
    assert _same(model, r18) == []
