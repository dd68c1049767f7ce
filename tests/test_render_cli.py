"""`graphres render` on the command line: --level layer, --expand, --input, --theme, --no-legend."""
import xml.etree.ElementTree as ET

from conftest import run_cli
from graphres.cli import main

SVG = "{http://www.w3.org/2000/svg}"


def texts(path):
    return [t.text for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def test_render_input_size_changes_the_shapes(tmp_path):
    out = tmp_path / "r50.svg"
    r = run_cli("render", "specs/resnet50.yaml", "-o", out, "--input", "512", "--level", "stage")
    assert r.returncode == 0, r.stderr
    lines = texts(out)
    assert "3x512x512" in lines and "256x128x128" in lines and "1024x32x32" in lines
    assert any(line.endswith("MACs at 512x512, frozen: stem, layer1") for line in lines)
    r = run_cli("render", "specs/mmdet_faster_rcnn_r50.yaml", "-o", tmp_path / "g.dot", "--input", "1x320x256")
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert 'input [label="input\\n1x320x256"' in dot and '"2048x10x8"' in dot


def test_render_input_errors(tmp_path):
    # --input goes through the helper shared with `info` (graphres.cli.parse_input_size)
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--input", "big")
    assert r.returncode == 2
    assert r.stderr == ("graphres: error: --input 'big' must look like CxHxW, HxW or S with positive integers, "
                        "e.g. 3x512x512\n")
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--input", "3x0x5")
    assert r.returncode == 2
    # another channel count and a small size: the shapes follow
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--input", "2x64x64")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "x.svg"]
    assert "2x64x64" in texts(tmp_path / "x.svg")


def test_render_expand_unknown_stage_is_a_usage_error(tmp_path):
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--level", "layer", "--expand", "layr3")
    assert r.returncode == 2
    assert r.stderr == ("graphres: error: cannot expand 'layr3': no such stage; did you mean 'layer3'? "
                        "(stages: layer1, layer2, layer3, layer4, or all)\n")
    assert list(tmp_path.iterdir()) == []


def test_render_layer_level_options(tmp_path):
    out = tmp_path / "r18.dot"
    assert main(["render", "specs/resnet18.yaml", "-o", str(out), "--level", "layer", "--expand", "layer2",
                 "--expand", "layer3,layer4", "--theme", "dark", "--rankdir", "LR", "--no-legend"]) == 0
    dot = out.read_text()
    assert "rankdir=LR" in dot and 'bgcolor="#1b1f24"' in dot and "legend" not in dot
    assert dot.count("labelloc=b") == 7 and "_pad" not in dot  # left to right: block headers below, no pads
    assert "subgraph cluster_s3_1 {" in dot and 'label="layer4.1: basic\\l' in dot
    assert 'label="layer1.0-1: basic x2\\l' in dot  # layer1 was not expanded
    assert main(["render", "specs/resnet18.yaml", "-o", str(out), "--level", "layer", "--expand", "all"]) == 0
    assert 'label="layer1.1: basic\\l' in out.read_text()


def test_render_help_lists_the_options():
    r = run_cli("render", "--help")
    for option in ("--level {stage,block,layer}", "--expand STAGE", "--input CxHxW", "--theme {light,dark}",
                   "--no-legend", "--rankdir {TB,LR}"):
        assert option in " ".join(r.stdout.split()), option
