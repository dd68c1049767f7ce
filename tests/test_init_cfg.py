"""init lists (the explicit form) and mmengine's init_cfg (the shorthand): parsing, located
diagnostics with their exact text, the plan written on the IR, and the initialisation applied."""
import json

import jsonschema
import pytest
import torch
import yaml

import graphres
from graphres import SpecError
from graphres.diagnostics import format_diagnostic
from graphres.spec.schema import spec_schema

R18 = "stages: [{block: basic, blocks: 1, planes: 64}]\n"


def compile_text(tmp_path, text):
    (tmp_path / "spec.yaml").write_text(text)
    return graphres.compile_spec("spec.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def first_error(tmp_path, text):
    with pytest.raises(SpecError) as e:
        compile_text(tmp_path, text)
    return format_diagnostic(e.value.diagnostics[0], e.value.sources, False)


def test_explicit_init_list_is_the_ir_plan(tmp_path):
    c = compile_text(tmp_path, "init:\n  - {type: kaiming, layer: Conv2d, mode: fan_in}\n"
                               "  - {type: constant, val: 1, bias: 0.5, layer: [_BatchNorm]}\n" + R18)
    assert c.graph.graph["openmmlab"]["init_cfg"] == [
        {"type": "Kaiming", "layer": ["Conv2d"], "mode": "fan_in"},
        {"type": "Constant", "layer": ["_BatchNorm"], "val": 1, "bias": 0.5}]
    assert c.graph.graph["openmmlab"]["zero_init_blocks"] is False
    torch.manual_seed(0)
    m = graphres.build(c)
    assert m.layer1[0].bn2.weight.unique().tolist() == [1.0] and m.layer1[0].bn2.bias.unique().tolist() == [0.5]
    assert c.explicit()["init"] == [{"type": "kaiming", "layer": ["Conv2d"], "mode": "fan_in"},
                                    {"type": "constant", "layer": ["_BatchNorm"], "val": 1, "bias": 0.5}]


def test_unknown_initialiser_is_located(tmp_path):
    assert first_error(tmp_path, "init: [{type: kaiming, layer: Conv2d}, {type: trunc_normal}]\n" + R18) == """\
spec.yaml:1:47: error[E130]: init entry has type 'trunc_normal': an init list takes pretrained, kaiming, constant, \
normal, xavier, uniform
  |
1 | init: [{type: kaiming, layer: Conv2d}, {type: trunc_normal}]
  |                                               ^^^^^^^^^^^^
  = hint: did you mean 'normal'?"""


def test_bad_values_are_located(tmp_path):
    assert first_error(tmp_path, "init: [{type: kaiming, layer: Conv2d, mode: fan_inn}]\n" + R18).splitlines()[0] == \
        "spec.yaml:1:45: error[E013]: init mode = 'fan_inn' is not one of 'fan_in', 'fan_out'"
    assert first_error(tmp_path, "init: [{type: constant, layer: Conv2d}]\n" + R18).splitlines()[0] == \
        "spec.yaml:1:8: error[E012]: missing required key 'init val'"


def test_no_layer_warns_and_initialises_nothing(tmp_path):
    c = compile_text(tmp_path, "init: {type: normal, std: 0.5}\n" + R18)
    assert [d.code for d in c.warnings] == ["W131"]
    assert c.graph.graph["openmmlab"]["init_cfg"] == [{"type": "Normal", "layer": [], "std": 0.5}]


def test_the_schema_accepts_init_lists():
    schema = spec_schema()
    for text in ("init: [{type: kaiming, layer: Conv2d}, {type: pretrained, checkpoint: x.pth}]\n" + R18,
                 "init: {type: normal, std: 0.01, layer: Conv2d}\n" + R18,
                 "backbone: {type: ResNet, depth: 18, init_cfg: [{type: Kaiming, layer: Conv2d}]}\n"):
        jsonschema.validate(yaml.safe_load(text), schema)
    json.dumps(schema)


def test_registry_style_dict_init_cfg_through_the_shorthand():
    spec = {"graphres": 1, "backbone": {"type": "ResNet", "depth": 18,
                                        "init_cfg": {"type": "Xavier", "gain": 2, "layer": "Conv2d"}}}
    c = graphres.compile_spec(spec)
    assert c.graph.graph["openmmlab"]["init_cfg"] == [{"type": "Xavier", "layer": ["Conv2d"], "gain": 2}]
