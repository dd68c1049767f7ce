"""graphres diff (backends/diff.py and the command): the static state-dict keys agree with torch for
every shipped spec, the stage and layer comparisons give exact figures, and the exit codes follow
diff(1)."""
import json
import re
import subprocess
import sys

import pytest

import graphres
from graphres.backends.diff import diff_dict, format_diff, state_dict_shapes

from conftest import ROOT, SPECS, run_cli

R50, R101 = "specs/resnet50.yaml", "specs/resnet101.yaml"
NORM_VARIANTS = [
    ["norm.type=GN", "norm.num_groups=32"],
    ["norm.type=IN"],
    ["norm.type=IN", "norm.affine=true"],
    ["norm.type=FrozenBN", "norm.requires_grad=false"],
    ["norm.type=BN", "norm.affine=false"],
    ["conv.type=ConvWS"],
]


def _torch_shapes(compiled) -> dict:
    model = graphres.build(compiled)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_static_state_dict_is_torchs(spec):
    compiled = graphres.compile_spec(spec)
    static = state_dict_shapes(compiled.graph)
    torch_shapes = _torch_shapes(compiled)
    assert list(static.items()) == list(torch_shapes.items())  # same keys, shapes and order


@pytest.mark.parametrize("overrides", NORM_VARIANTS, ids=lambda o: " ".join(o))
def test_static_state_dict_for_each_norm_and_conv(overrides):
    compiled = graphres.compile_spec("specs/resnet18.yaml", overrides)
    assert list(state_dict_shapes(compiled.graph).items()) == list(_torch_shapes(compiled).items())


def _diff(a, b, overrides_a=(), overrides_b=()):
    ga = graphres.compile_spec(a, overrides_a).graph
    gb = graphres.compile_spec(b, overrides_b).graph
    return diff_dict(ga, gb, str(a), str(b))


def test_resnet50_against_resnet101():
    d = _diff(R50, R101)
    assert d["identical"] is False
    stages = {s["name"]: s for s in d["stages"]}
    assert [s["name"] for s in d["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert stages["layer3"]["status"] == "changed"
    assert stages["layer3"]["changed"] == ["blocks", "receptive_field", "params", "trainable_params", "macs"]
    assert (stages["layer3"]["a"]["blocks"], stages["layer3"]["b"]["blocks"]) == (6, 23)
    assert (stages["layer3"]["a"]["params"], stages["layer3"]["b"]["params"]) == (7_098_368, 26_090_496)
    assert (stages["layer4"]["a"]["receptive_field"], stages["layer4"]["b"]["receptive_field"]) == (427, 971)
    assert stages["layer2"]["status"] == "same"
    assert d["totals"]["a"] == {"params": 23_508_032, "trainable_params": 23_282_688, "macs": 4_087_136_256,
                                "modules": 124, "tensors": 318}
    assert d["totals"]["b"] == {"params": 42_500_160, "trainable_params": 42_500_160, "macs": 7_799_357_440,
                                "modules": 243, "tensors": 624}
    assert d["settings"] == {"frozen_stages": {"a": 1, "b": -1}}
    layers = d["layers"]
    assert (len(layers["added"]), len(layers["removed"]), len(layers["changed"]), layers["unchanged"]) == \
        (119, 0, 0, 124)
    assert [r["name"] for r in layers["added"][:3]] == ["layer3.6.conv1", "layer3.6.bn1", "layer3.6.relu"]
    assert layers["added"][0]["tensors"] == {"weight": [256, 1024, 1, 1]}
    assert layers["added"][1]["tensors"] == {"weight": [256], "bias": [256], "running_mean": [256],
                                             "running_var": [256], "num_batches_tracked": []}
    fit = d["checkpoint"]
    assert (fit["strict"], fit["except_fc"], len(fit["missing"]), fit["unexpected"], fit["mismatched"]) == \
        (False, False, 306, [], [])
    # the reverse: a ResNet-101 checkpoint has 306 tensors ResNet-50 does not expect
    back = _diff(R101, R50)["checkpoint"]
    assert (len(back["unexpected"]), back["missing"]) == (306, [])


def test_shorthand_and_explicit_forms_are_identical():
    r = run_cli("diff", R50, "specs/mmdet_faster_rcnn_r50.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "--- A specs/resnet50.yaml (resnet50, input 3x224x224)\n"
        "+++ B specs/mmdet_faster_rcnn_r50.yaml (resnet50, input 3x224x224)\n\n"
        "identical architectures: every stage, layer, tensor and setting is the same\n"
        "checkpoint of A into B: loads strictly (318 tensors)\n")


def test_text_report_for_resnet50_against_resnet101():
    r = run_cli("diff", R50, R101)
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""
    assert r.stdout == """\
--- A specs/resnet50.yaml (resnet50, input 3x224x224)
+++ B specs/resnet101.yaml (resnet101, input 3x224x224)

stage   what       A               B               change
stem    trainable  0               9,536           +9,536
        frozen     yes             no
layer1  trainable  0               215,808         +215,808
        frozen     yes             no
layer3  blocks     6               23              +17
        RF         267             811             +544
        params     7,098,368       26,090,496      +18,992,128 (+267.6%)
        trainable  7,098,368       26,090,496      +18,992,128
        MACs       1,464,336,384   5,176,557,568   +3,712,221,184 (+253.5%)
layer4  RF         427             971             +544
unchanged: layer2

settings
frozen_stages      1               -1

total   params     23,508,032      42,500,160      +18,992,128 (+80.8%)
        trainable  23,282,688      42,500,160      +19,217,472
        MACs       4,087,136,256   7,799,357,440   +3,712,221,184 (+90.8%)
        modules    124             243             +119
        tensors    318             624             +306

layers: 119 added, 0 removed, 0 changed, 124 unchanged (see --level layer)
checkpoint of A into B: does not load strictly: 306 that B needs are missing
  from A (layer3.6.conv1.weight, layer3.6.bn1.weight, layer3.6.bn1.bias,
  layer3.6.bn1.running_mean, ... (302 more))
"""


def test_layer_level_lists_layers_and_the_json_has_stable_keys():
    r = run_cli("diff", R50, R101, "--level", "layer")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert "layers: 119 added, 0 removed, 0 changed, 124 unchanged (by state-dict name)" in lines
    assert "+ layer3.6.conv1             conv 1x1             weight 256x1024x1x1" in lines
    assert "+ layer3.6.bn1               BatchNorm            weight 256 +4 tensors" in lines
    assert sum(line.startswith("+ ") for line in lines) == 119
    j = run_cli("diff", R50, R101, "--json")
    assert j.returncode == 1
    data = json.loads(j.stdout)
    assert list(data) == ["schema", "identical", "a", "b", "stages", "settings", "totals", "layers", "checkpoint",
                          "diagnostics"]
    assert list(data["stages"][0]["a"]) == ["block", "blocks", "channels", "shape", "stride", "dilations",
                                            "receptive_field", "params", "trainable_params", "macs", "frozen"]
    assert list(data["layers"]) == ["added", "removed", "changed", "unchanged"]
    assert list(data["checkpoint"]) == ["strict", "except_fc", "missing", "unexpected", "mismatched"]
    assert data["schema"] == 1


def test_output_stride_8_changes_layers_but_not_the_checkpoint():
    d = _diff(R50, "specs/resnet50_os8.yaml")
    changed = {r["name"]: r["changes"] for r in d["layers"]["changed"]}
    assert len(changed) == 11
    assert changed["layer3.0.conv2"] == ["stride 2 -> 1"]
    assert changed["layer4.0.conv2"] == ["dilation 1 -> 2", "padding 1 -> 2", "stride 2 -> 1"]
    assert changed["layer4.2.conv2"] == ["dilation 1 -> 4", "padding 1 -> 4"]
    assert d["checkpoint"]["strict"] is True
    stages = {s["name"]: s for s in d["stages"]}
    assert stages["layer4"]["b"]["dilations"] == [2, 4, 4]
    assert (stages["layer4"]["a"]["stride"], stages["layer4"]["b"]["stride"]) == (32, 8)


def test_classifier_checkpoint_loads_with_only_fc_left_over():
    d = _diff("specs/resnet50_classifier.yaml", R50)
    assert d["checkpoint"] == {"strict": False, "except_fc": True, "missing": [],
                               "unexpected": ["fc.weight", "fc.bias"], "mismatched": []}
    assert [s["name"] for s in d["stages"] if s["status"] == "removed"] == ["head"]
    assert [r["name"] for r in d["layers"]["removed"]] == ["avgpool", "fc"]


def test_changed_shapes_are_named():
    d = _diff("specs/resnet18.yaml", "specs/resnet18.yaml", (), ["stem.channels=32"])
    fit = d["checkpoint"]
    assert fit["strict"] is False and fit["except_fc"] is False
    assert fit["mismatched"][:2] == [{"key": "conv1.weight", "a": [64, 3, 7, 7], "b": [32, 3, 7, 7]},
                                     {"key": "bn1.weight", "a": [64], "b": [32]}]
    changed = {r["name"]: r["changes"] for r in d["layers"]["changed"]}
    assert changed["conv1"] == ["out 64 -> 32", "weight 64x3x7x7 -> 32x3x7x7"]
    assert changed["bn1"] == ["in 64 -> 32", "out 64 -> 32", "weight 64 -> 32", "bias 64 -> 32",
                              "running_mean 64 -> 32", "running_var 64 -> 32"]


def test_set_applies_to_both_and_set_a_set_b_to_one_side():
    r = run_cli("diff", R50, R50, "--set", "stages.3.stride=1", "--set", "stages.3.dilation=2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("diff", R50, R50, "--set-b", "stages.3.stride=1", "--set-b", "stages.3.dilation=2")
    assert r.returncode == 1
    assert r.stdout.splitlines()[:4] == ["--- A specs/resnet50.yaml (resnet50, input 3x224x224)",
                                         "+++ B specs/resnet50.yaml (resnet50, input 3x224x224)",
                                         "      with --set stages.3.stride=1 --set stages.3.dilation=2", ""]
    r = run_cli("diff", R50, R50, "--set-b", "stages.3.stride=1", "--set-b", "stages.3.dilation=2", "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    layer4 = next(s for s in data["stages"] if s["name"] == "layer4")
    assert layer4["changed"] == ["shape", "stride", "dilations", "receptive_field", "macs"]
    assert (data["a"]["overrides"], data["b"]["overrides"]) == ([], ["stages.3.stride=1", "stages.3.dilation=2"])
    assert data["diagnostics"] == []
    r = run_cli("diff", R50, R50, "--set-a", "input.size=[512, 512]", "--set-b", "input.size=[512, 512]")
    assert r.returncode == 0
    r = run_cli("diff", R50, R101, "--input", "512")
    assert r.returncode == 1
    assert r.stdout.startswith("--- A specs/resnet50.yaml (resnet50, input 3x512x512)\n")


def test_spec_errors_on_either_side_exit_2_and_are_all_reported(write_spec):
    bad = write_spec("""
        graphres: 1
        stages:
          - {block: bottleneck, blocks: 3, planes: 64, stride: 0}
        """)
    r = run_cli("diff", bad, R50, "--set-b", "stages.9.stride=1")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "error[E014]: stages[0].stride = 0 must be >= 1" in r.stderr
    assert "error[E006]: 'stages.9' does not index the 4-item list at 'stages'" in r.stderr
    j = run_cli("diff", bad, R50, "--json")
    assert j.returncode == 2
    assert [d["code"] for d in json.loads(j.stdout)["diagnostics"]] == ["E014"]
    missing = run_cli("diff", R50, "specs/nope.yaml")
    assert missing.returncode == 2
    assert missing.stderr.endswith("graphres: error: spec file 'specs/nope.yaml' not found\n")


PAIRS = [(R50, R101), (R50, "specs/resnet50_os8.yaml"), ("specs/resnet18.yaml", "specs/se_resnet18.yaml"),
         ("specs/resnet50_classifier.yaml", "specs/resnext101_32x8d.yaml"),
         ("specs/deeplabv3_r50_d8.yaml", "specs/wide_resnet50_2.yaml"), ("specs/resnet34.yaml", R50)]


@pytest.mark.parametrize("a,b", PAIRS)
@pytest.mark.parametrize("level", ["stage", "layer"])
def test_text_fits_80_columns_and_has_no_colour_off_a_terminal(a, b, level):
    ga, gb = graphres.compile_spec(a).graph, graphres.compile_spec(b).graph
    text = format_diff(diff_dict(ga, gb, a, b), level)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\033[" not in text
    coloured = format_diff(diff_dict(ga, gb, a, b), level, color=True)
    assert "\033[" in coloured
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == text


def test_diff_does_not_import_torch():
    code = ("import sys; from graphres.cli import main; rc = main(['diff', 'specs/resnet50.yaml', "
            "'specs/resnet101.yaml', '--level', 'layer']); assert 'torch' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr


def test_the_examples_in_docs_cli_md_are_current():
    doc = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"```text\n(\$ graphres diff .*?)\n```", doc, re.S)
    checked = 0
    for block in blocks:
        for run in re.split(r"\n(?=\$ )", block):
            command, _, expected = run.partition("\n")
            if command.startswith("$ echo") or "--json" in command:
                continue
            r = run_cli(*command.split()[2:])
            assert r.stdout.rstrip("\n") == expected.removesuffix("\n$ echo $?\n0").rstrip("\n"), command
            checked += 1
    assert checked == 4
