"""_base_ inheritance (deep merge) and --set overrides, with spans that name the right origin."""
import pytest

import graphres
from graphres import SpecError
from graphres.spec.emit import to_explicit

from conftest import ROOT


def test_base_deep_merge_and_override(write_spec):
    write_spec("""
        graphres: 1
        name: base
        norm: {type: BN, requires_grad: true}
        stages:
          - {block: basic, blocks: 2, planes: 64}
          - {block: basic, blocks: 2, planes: 128, stride: 2}
        frozen_stages: 1
    """, "base.yaml")
    child = write_spec("""
        _base_: base.yaml
        name: child
        norm: {requires_grad: false}
    """, "child.yaml")
    spec = graphres.load_spec(child)
    assert spec.name == "child"
    assert spec.norm == {"type": "BN", "requires_grad": False, "eps": 1e-5}
    assert spec.frozen_stages == 1 and len(spec.stages) == 2


def test_delete_replaces_instead_of_merging(write_spec):
    write_spec("graphres: 1\nnorm: {type: GN, num_groups: 32}\nstages: [{block: basic, blocks: 1, planes: 64}]\n",
               "base.yaml")
    child = write_spec("_base_: [base.yaml]\nnorm: {_delete_: true, type: BN}\n", "child.yaml")
    assert graphres.load_spec(child).norm["type"] == "BN"


def test_errors_point_at_the_file_that_set_the_value(write_spec, tmp_path):
    write_spec("graphres: 1\nstages:\n  - {block: basic, blocks: 2, planes: 64, stride: 0}\n", "base.yaml")
    child = write_spec("_base_: base.yaml\nfrozen_stages: 7\n", "child.yaml")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(child)
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{tmp_path / 'base.yaml'}:3:51: error[E014]: stages[0].stride = 0 must be >= 1",  # named beside child
        f"{child}:2:16: error[E034]: frozen_stages = 7 is out of range for 1 stage (-1..1)"]


def test_base_cycle_and_missing(write_spec):
    write_spec("_base_: b.yaml\n", "a.yaml")
    b = write_spec("_base_: a.yaml\n", "b.yaml")
    with pytest.raises(SpecError, match=r"error\[E005\]: _base_ 'b.yaml' includes itself \(cycle: b.yaml -> a.yaml -> b.yaml\)"):
        graphres.load_spec(b)
    c = write_spec("_base_: [nope.yaml]\n", "c.yaml")
    with pytest.raises(SpecError, match=r"c.yaml:1:10: error\[E005\]: _base_ file 'nope.yaml' not found"):
        graphres.load_spec(c)


def test_set_overrides_every_kind_of_value():
    spec = graphres.load_spec(ROOT / "specs/resnet50.yaml",
                              ["stages.3.dilation=2", "stages.3.stride=1", "name=r50-d16", "norm.eps=0.001",
                               "out_indices=[1, 3]"])
    d = to_explicit(spec)
    assert d["stages"][3]["dilation"] == 2 and d["stages"][3]["stride"] == 1
    assert d["name"] == "r50-d16" and d["norm"]["eps"] == 0.001 and d["out_indices"] == [1, 3]


def test_set_on_shorthand_keys():
    spec = graphres.load_spec(ROOT / "specs/mmdet_faster_rcnn_r50.yaml", ["backbone.depth=101"])
    assert [s.blocks for s in spec.stages] == [3, 4, 23, 3]


def test_set_errors_say_they_came_from_the_command_line():
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(ROOT / "specs/resnet50.yaml", ["frozen_stages=9"])
    [d] = e.value.diagnostics
    assert d.headline() == "--set frozen_stages=9: error[E034]: frozen_stages = 9 is out of range for 4 stages (-1..4)"
    assert d.span.origin == "set on the command line"


@pytest.mark.parametrize("override,message", [
    ("frozen_stages", "E006]: override 'frozen_stages' must look like key.path=value"),
    ("stages.9.stride=1", "E006]: 'stages.9' does not index the 4-item list at 'stages'"),
    ("name.x=1", "E006]: 'name' is 'resnet50' (a string), so 'x' cannot be set inside it"),
    ("a..b=1", "E006]: override key 'a..b' is empty or has an empty part"),
    ("name=[1", "E001]: invalid YAML"),
])
def test_bad_overrides(override, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        graphres.load_spec(ROOT / "specs/resnet50.yaml", [override])


def test_delete_markers_without_anything_to_replace_are_dropped(write_spec):
    write_spec("graphres: 1\nstages: [{block: basic, blocks: 1, planes: 64}]\n", "base.yaml")
    child = write_spec("_base_: base.yaml\nnorm: {_delete_: true, type: GN, num_groups: 8}\n", "child.yaml")
    assert graphres.load_spec(child).norm["type"] == "GN"
    alone = write_spec("graphres: 1\nnorm: {_delete_: true, type: BN}\n"
                       "stages: [{block: basic, blocks: 1, planes: 64}]\n", "alone.yaml")
    assert graphres.load_spec(alone).norm["type"] == "BN"


def test_set_creating_a_mapping_is_located_at_the_override():
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(ROOT / "specs/resnet50.yaml", ["init.type=pretrained"])
    assert [d.headline() for d in e.value.diagnostics] == [
        "--set init.type=pretrained: error[E012]: missing required key 'init.checkpoint'"]


def test_base_files_are_named_relative_to_the_spec(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("graphres: 1\nstages: [{block: basic, blocks: 1, planes: 0}]\n")
    (tmp_path / "configs" / "child.yaml").write_text("_base_: base.yaml\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec("configs/child.yaml")
    assert [d.headline() for d in e.value.diagnostics] == [
        "configs/base.yaml:2:44: error[E014]: stages[0].planes = 0 must be >= 1"]
