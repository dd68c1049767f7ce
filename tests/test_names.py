"""Specs by name, as timm.create_model: the shipped specs (graphres/specs/*.yaml, package data),
`graphres list`, names wherever a spec path goes, local files first; the package's data and exports."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import resources

import pytest

import graphres
from graphres import SpecError
from graphres.cli import list_specs
from graphres.spec.names import shipped_names

from conftest import ROOT, run_cli

NAMES = ["deeplabv3_r50_d8", "mmdet_faster_rcnn_r50", "mmdet_faster_rcnn_r50_dcn", "res2net50_26w_4s", "resnest50d", "resnet101", "resnet101_v1d", "resnet152", "resnet18",
         "resnet34", "resnet50", "resnet50_caffe", "resnet50_classifier", "resnet50_os8", "resnet50_v1c",
         "resnet50_v1d", "resnext101_32x8d", "resnext50_32x4d", "se_resnet18", "se_resnet50", "wide_resnet50_2"]
HINT = ("did you mean 'resnet50'? shipped specs: " + ", ".join(NAMES) + " (graphres list)")
R18 = """graphres: 1
name: mine
stages: [{block: basic, blocks: 1, planes: 64}]
"""


def env() -> dict:
    """The CLI run from another folder still imports this checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# --- package data -------------------------------------------------------------------------------

def test_shipped_specs_and_blocks_are_package_resources():
    specs = resources.files("graphres") / "specs"
    assert sorted(p.name for p in specs.iterdir() if p.name.endswith(".yaml")) == [n + ".yaml" for n in NAMES]
    assert (resources.files("graphres") / "blocks" / "resnet.yaml").is_file()
    assert (resources.files("graphres") / "py.typed").is_file()
    assert shipped_names() == NAMES


def test_pyproject_declares_the_package_data():
    text = (ROOT / "pyproject.toml").read_text()  # as text: tomllib is Python 3.11+, graphres runs on 3.10
    section = text.split("[tool.setuptools.package-data]\n", 1)[1].split("\n[", 1)[0]
    assert 'graphres = ["blocks/*.yaml", "specs/*.yaml", "py.typed"]' in section.splitlines()


def test_the_wheel_holds_the_shipped_specs_blocks_and_py_typed(tmp_path):
    """What `pip install .` installs: built from a copy, so that the checkout gets no build/ folder."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "graphres", src / "graphres", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        str(src), "-w", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "out").glob("graphres-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("graphres/specs/")} == {f"graphres/specs/{n}.yaml" for n in NAMES}
    assert {"graphres/blocks/resnet.yaml", "graphres/py.typed", "graphres/spec/names.py"} <= names


def test_root_specs_folder_is_the_shipped_one():
    """specs/ (the README's commands, the tests) is graphres/specs: one copy, never two that drift."""
    assert sorted(p.name for p in (ROOT / "specs").glob("*.yaml")) == [n + ".yaml" for n in NAMES]
    for name in NAMES:
        assert (ROOT / "specs" / f"{name}.yaml").read_bytes() == (ROOT / "graphres" / "specs" / f"{name}.yaml").read_bytes()


def test_import_graphres_does_not_import_torch_and_exports_the_module_class():
    code = ("import sys, graphres; print('torch' in sys.modules); B = graphres.GraphresBackbone; "
            "print(B.__module__, B.__name__, 'torch' in sys.modules); "
            "print(isinstance(graphres.build('resnet18'), B)); print('GraphresBackbone' in graphres.__all__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300)
    assert r.stdout.splitlines() == ["False", "graphres.backends.runtime GraphresBackbone True", "True", "True"]
    with pytest.raises(AttributeError, match="^module 'graphres' has no attribute 'nope'$"):
        graphres.nope  # noqa: B018


# --- names in Python ----------------------------------------------------------------------------

def test_compile_spec_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = graphres.compile_spec("resnet50")
    assert compiled.spec.file == "graphres/specs/resnet50.yaml"
    assert (compiled.graph.graph["params"], compiled.graph.graph["macs"]) == (23_508_032, 4_087_136_256)
    assert graphres.compile_spec("resnext50_32x4d").graph.graph["params"] == 22_979_904


def test_build_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = graphres.build("resnext50_32x4d")
    assert isinstance(model, graphres.GraphresBackbone)
    assert sum(p.numel() for p in model.parameters()) == 22_979_904
    assert model.feature_info.channels() == [256, 512, 1024, 2048]


def test_overrides_apply_to_a_named_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = graphres.compile_spec("resnet50", ["stages.3.stride=1", "stages.3.dilation=2"]).graph
    assert g.graph["stages"][-1]["stride"] == 16


def test_local_file_wins_over_the_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet50.yaml").write_text(R18)
    compiled = graphres.compile_spec("resnet50")
    assert (compiled.graph.graph["name"], compiled.spec.file) == ("mine", "resnet50.yaml")
    (tmp_path / "resnet50").write_text(R18.replace("mine", "exact"))  # the exact name wins over NAME.yaml
    assert graphres.compile_spec("resnet50").graph.graph["name"] == "exact"


def test_a_path_is_never_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec("resnet50.yaml")
    assert [(d.code, d.message) for d in e.value.diagnostics] == [
        ("E004", "cannot read 'resnet50.yaml': No such file or directory")]


def test_unknown_name_says_did_you_mean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as e:
        graphres.build("resnt50")
    assert e.value.render() == (f"resnt50: error[E100]: 'resnt50' is neither a file nor a shipped spec\n"
                                f"  = hint: {HINT}\n\n1 error found")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec("zzz")
    assert e.value.diagnostics[0].hint == "shipped specs: " + ", ".join(NAMES) + " (graphres list)"


# --- _base_ by name -----------------------------------------------------------------------------

def test_base_by_name(tmp_path):
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("_base_: resnet50\nname: r50_unfrozen\nfrozen_stages: -1\nnorm_eval: false\n")
    compiled = graphres.compile_spec(child)
    g = compiled.graph
    assert (g.graph["name"], g.graph["params"], g.graph["frozen_stages"], g.graph["trainable_params"]) == (
        "r50_unfrozen", 23_508_032, -1, 23_508_032)
    first = (ROOT / "specs" / "resnet50.yaml").read_text().splitlines()[0]
    assert compiled.sources.line("sub/graphres/specs/resnet50.yaml", 1) is None
    assert compiled.sources.line("graphres/specs/resnet50.yaml", 1) == first  # how messages name the base


def test_base_by_name_prefers_a_local_file(tmp_path):
    (tmp_path / "resnet50.yaml").write_text(R18)
    child = tmp_path / "child.yaml"
    child.write_text("_base_: resnet50\nfrozen_stages: -1\n")
    assert graphres.compile_spec(child).graph.graph["name"] == "mine"


def test_base_located_errors_point_into_the_shipped_spec(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_base_: resnet18\nstages: 7\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(child)
    d = e.value.diagnostics[0]
    assert (d.code, d.span.file, d.span.line) == ("E011", str(child), 2)


def test_unknown_base_name_says_did_you_mean(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_base_: resnt50\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(child)
    (d,) = e.value.diagnostics
    assert (d.code, d.message, d.hint) == ("E005", "_base_ file 'resnt50' not found (paths are relative to "
                                                   "child.yaml)", HINT)


def test_shipped_spec_cannot_inherit_itself_by_name(tmp_path):
    child = tmp_path / "resnet50.yaml"  # a local file that names the shipped spec it shadows
    child.write_text("_base_: resnet50\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(child)
    assert e.value.diagnostics[0].code == "E005"


# --- the command line ---------------------------------------------------------------------------

def test_cli_validate_and_info_by_name_from_another_folder(tmp_path):
    r = run_cli("validate", "resnet50", cwd=tmp_path, env=env())
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == ("resnet50: ok: resnet50: 4 stages, 16 blocks, 23,508,032 parameters; outputs layer1 (256 ch, "
                        "stride 4), layer2 (512 ch, stride 8), layer3 (1024 ch, stride 16), layer4 (2048 ch, "
                        "stride 32)\n")
    r = run_cli("info", "resnext50_32x4d", cwd=tmp_path, env=env())
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "resnext50_32x4d: input 3x224x224 (graphres/specs/resnext50_32x4d.yaml)"


def test_cli_unknown_name_is_a_usage_error_with_the_names(tmp_path):
    r = run_cli("validate", "resnt50", cwd=tmp_path, env=env())
    assert r.returncode == 2
    assert r.stderr == f"graphres: error: spec file 'resnt50' not found, and no shipped spec has that name; {HINT}\n"
    r = run_cli("info", "resnet50.yaml", cwd=tmp_path, env=env())
    assert r.returncode == 2
    assert r.stderr == ("graphres: error: spec file 'resnet50.yaml' not found; the shipped spec is named without "
                        "folder or .yaml: resnet50\n")


def test_cli_list(tmp_path):
    r = run_cli("list", cwd=tmp_path, env=env())
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0] == "spec                       parameters MACs at 224x224 stride  outputs"
    assert [line.split()[0] for line in lines[1:1 + len(NAMES)]] == NAMES
    assert "resnet50                   23,508,032   4,087,136,256     32  256, 512, 1024, 2048 ch" in lines
    assert "resnet50_os8               23,508,032  19,077,316,608      8  256, 512, 1024, 2048 ch" in lines
    assert "resnet50_classifier        25,557,032   4,089,184,256     32  logits" in lines
    assert "resnet18                   11,176,512   1,813,561,344     32  64, 128, 256, 512 ch" in lines
    assert lines[1 + len(NAMES):] == [
        "", "21 shipped specs (graphres/specs/): name one where a SPEC path goes, e.g. graphres info resnet50;",
        "a local file of that name wins. MACs: multiply-accumulates at 224x224."]


def test_cli_list_does_not_import_torch():
    code = "import sys; from graphres.cli import main; main(['list']); assert 'torch' not in sys.modules, 'torch'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env(), timeout=300)
    assert (r.returncode, r.stderr) == (0, "")


def test_cli_list_json_matches_compile_spec():
    r = run_cli("list", "--json", env=env())
    assert r.returncode == 0
    rows = json.loads(r.stdout)["specs"]
    assert rows == list_specs()
    by_name = {row["name"]: row for row in rows}
    assert by_name["resnext101_32x8d"] == {
        "name": "resnext101_32x8d", "file": "graphres/specs/resnext101_32x8d.yaml", "params": 86_742_336,
        "macs": 16_411_967_488, "input": [224, 224], "output_stride": 32, "out_channels": [256, 512, 1024, 2048],
        "head": False}
    assert by_name["deeplabv3_r50_d8"]["output_stride"] == 8
    for row in rows:
        g = graphres.compile_spec(ROOT / "specs" / f"{row['name']}.yaml", input_size=(224, 224)).graph
        assert (row["params"], row["macs"]) == (g.graph["params"], g.graph["macs"])


def test_editor_goes_to_a_base_named_by_name(tmp_path):
    from graphres.lsp.document import base_chain, definition
    child = tmp_path / "child.yaml"
    text = "_base_: resnet50\nfrozen_stages: -1\n"
    shipped = (ROOT / "graphres" / "specs" / "resnet50.yaml").resolve()
    assert definition(str(child), text, 0, 10).path == str(shipped)
    assert base_chain(str(child), text) == [shipped]
