"""`graphres info`: the table's figures equal what torch reports for the built module, the layout
fits 80 columns, the JSON keys are stable, and --input re-analyses for another size."""
import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres.backends.info import format_info, info_dict

from conftest import ROOT, SPECS, run_cli

R50 = ROOT / "specs" / "resnet50.yaml"
GOLDEN = ROOT / "tests" / "golden" / "info_resnet50.txt"


def torch_stage_figures(path, size=224):
    """Per top-level part (stem, layer1..): parameters, MACs and output shape, measured on torch."""
    compiled = graphres.compile_spec(path, [f"input.size=[{size}, {size}]"])
    model = graphres.build(compiled).eval()
    params: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        params["stem" if not top.startswith("layer") else top] = params.get(
            "stem" if not top.startswith("layer") else top, 0) + p.numel()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    flops = counter.get_flop_counts()
    macs = {k: sum(v.values()) // 2 for k, v in flops.items() if k.startswith(type(model).__name__ + ".")}
    stage_macs = {k.split(".")[1]: v for k, v in macs.items() if k.count(".") == 1 and ".layer" in k}
    stage_macs["stem"] = sum(flops["Global"].values()) // 2 - sum(stage_macs.values())
    shapes = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, "x".join(map(str, o.shape[1:])))) for n in model.stage_names]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return params, stage_macs, shapes


def test_stage_rows_equal_torch():
    params, macs, shapes = torch_stage_figures(R50)
    out = format_info(graphres.compile_spec(R50).graph)
    rows = {line.split()[0].rstrip("*"): line.split() for line in out.splitlines()
            if line.split() and line.split()[0].rstrip("*") in ("stem", "layer1", "layer2", "layer3", "layer4")}
    # receptive fields counted by hand (7x7/2 conv and 3x3/2 pool: 11; each 3x3 conv adds 2 x jump)
    fields = {"stem": 11, "layer1": 35, "layer2": 91, "layer3": 267, "layer4": 427}
    blocks = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"]):
        stride = 4 * 2 ** i
        assert rows[name] == [name + ("*" if name == "layer1" else ""), str(i), "bottleneck", f"x{blocks[name]}",
                              shapes[name], str(stride), "1", str(fields[name]), f"{params[name]:,}",
                              f"{macs[name]:,}"]
    assert rows["stem"] == ["stem*", "conv7x7", "64x56x56", "4", "1", "11", f"{params['stem']:,}",
                            f"{macs['stem']:,}"]
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total == ["total", "23,508,032", "4,087,136,256"]  # the reference page's figures
    assert "FLOPs        8,174,272,512 = 2 x MACs" in out
    assert "parameters   23,508,032 (trainable 23,282,688, frozen 225,344)" in out
    assert "(FPN in_channels: [256, 512, 1024, 2048])" in out


def test_resnet50_report_golden():
    """The whole text (layout); its figures are checked against torch above."""
    out = format_info(graphres.compile_spec(R50).graph, source="specs/resnet50.yaml") + "\n"
    if os.environ.get("GRAPHRES_UPDATE_GOLDEN"):
        GOLDEN.write_text(out)
    assert out == GOLDEN.read_text()


@pytest.mark.parametrize("level", ["stage", "block", "layer"])
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_fits_80_columns(path, level):
    out = format_info(graphres.compile_spec(path).graph, level, source=str(path.relative_to(ROOT)))
    assert max(len(line) for line in out.splitlines()) <= 80


def test_block_and_layer_rows():
    g = graphres.compile_spec(ROOT / "specs" / "resnet101.yaml").graph
    blocks = [r for r in info_dict(g, "block")["rows"] if r["kind"] == "block"]
    assert len(blocks) == 3 + 4 + 23 + 3
    assert [r["name"] for r in blocks[7:9]] == ["layer3.0", "layer3.1"]
    layers = info_dict(g, "layer")["rows"]
    assert len(layers) == g.number_of_nodes()
    conv = next(r for r in layers if r["name"] == "layer3.0.conv2")
    assert (conv["type"], conv["shape"], conv["params"]) == ("conv 3x3/2", [256, 14, 14], 256 * 256 * 9)
    text = format_info(g, "layer")
    assert "layer3.22.relu:2" in text  # the last block of the 23


JSON_KEYS = {"schema", "name", "input", "totals", "stages", "outputs", "fpn_in_channels", "level", "rows",
             "diagnostics"}
STAGE_KEYS = {"index", "name", "block", "blocks", "shape", "stride", "dilations", "receptive_field", "params",
              "trainable_params", "macs", "flops", "output_bytes", "size_formula", "frozen"}


def test_json_is_stable_and_uses_another_input_size():
    r = run_cli("info", R50, "--json", "--input", "3x512x512", "--level", "block")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == JSON_KEYS
    assert data["schema"] == 1
    assert set(data["stages"][0]) == STAGE_KEYS
    assert set(data["totals"]) == {"params", "trainable_params", "frozen_params", "macs", "flops",
                                   "peak_activation_bytes"}
    assert set(data["outputs"][0]) == {"index", "name", "channels", "stride", "shape", "receptive_field",
                                       "size_formula"}
    assert data["input"] == {"channels": 3, "size": [512, 512]}
    assert [s["shape"] for s in data["stages"]] == [[256, 128, 128], [512, 64, 64], [1024, 32, 32], [2048, 16, 16]]
    assert data["outputs"][3]["size_formula"] == "ceil(H/32) x ceil(W/32)"
    assert data["outputs"][3]["receptive_field"] == {"size": 427, "jump": 32, "center": 0.0, "local_size": 427}
    assert data["fpn_in_channels"] == [256, 512, 1024, 2048]
    assert data["totals"]["flops"] == 2 * data["totals"]["macs"]
    assert len(data["rows"]) == 2 + 16  # input, stem, 16 blocks
    # one input channel: conv1 has 64 x 1 x 7 x 7 weights instead of 64 x 3 x 7 x 7
    gray = json.loads(run_cli("info", R50, "--json", "--input", "1x224x224").stdout)
    assert gray["totals"]["params"] == 23_508_032 - 64 * 2 * 49


def test_input_errors():
    r = run_cli("info", R50, "--input", "3x0x5")
    assert r.returncode == 2
    assert "--input '3x0x5' must look like CxHxW, HxW or S with positive integers" in r.stderr
    r = run_cli("info", R50, "--input", "16")  # ResNet sizes round up: never empty, but 1x1
    assert r.returncode == 0
    assert "warning[W002]: feature output 2 (layer3) is only 1x1 for the input size 16x16 (stride 16)" in r.stderr
    assert "2 warnings found" in r.stderr


def test_colour_only_when_asked():
    g = graphres.compile_spec(R50).graph
    assert "\033[1m" in format_info(g, color=True)
    r = run_cli("info", R50)  # a pipe, not a terminal
    assert r.returncode == 0 and "\033[" not in r.stdout


def test_warnings_from_the_analysis_reach_info(write_spec):
    path = write_spec("""
        graphres: 1
        input: {size: [32, 32]}
        stages:
          - {block: basic, blocks: 1, planes: 8}
          - {block: basic, blocks: 1, planes: 8, stride: 2}
          - {block: basic, blocks: 1, planes: 8, stride: 2}
          - {block: basic, blocks: 1, planes: 8, stride: 2}
        out_indices: [3]
    """)
    r = run_cli("info", path)
    assert r.returncode == 0
    assert "warning[W002]: feature output 3 (layer4) is only 1x1 for the input size 32x32 (stride 32)" in r.stderr
    assert run_cli("info", path, "--strict").returncode == 1
    assert run_cli("info", path, "--input", "64").stderr == ""
