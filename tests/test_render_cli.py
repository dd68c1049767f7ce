"""`graphres render` on the command line: --level layer, --expand, --input, --theme, --no-legend."""
import xml.etree.ElementTree as ET

import pytest

from conftest import run_cli
from graphres.cli import main, parse_input_size

SVG = "{http://www.w3.org/2000/svg}"


def texts(path):
    return [t.text for t in ET.parse(path).getroot().iter(f"{SVG}text")]


@pytest.mark.parametrize("text, overrides", [
    ("3x512x512", ["input.channels=3", "input.size=[512, 512]"]),
    ("512x640", ["input.size=[512, 640]"]),
    (" 1X96x128 ", ["input.channels=1", "input.size=[96, 128]"]),
])
def test_parse_input_size(text, overrides):
    assert parse_input_size(text) == overrides


@pytest.mark.parametrize("text", ["512", "3x512x512x1", "ax512", "512x", "-3x5x5", "5.5x5", "３x5"])
def test_parse_input_size_rejects(text):
    with pytest.raises(ValueError, match=r"--input expects CxHxW or HxW in pixels, e\.g\. 3x512x512 or 512x512; got"):
        parse_input_size(text)


def test_render_input_size_changes_the_shapes(tmp_path):
    out = tmp_path / "r50.svg"
    r = run_cli("render", "specs/resnet50.yaml", "-o", out, "--input", "3x512x512", "--level", "stage")
    assert r.returncode == 0, r.stderr
    lines = texts(out)
    assert "3x512x512" in lines and "256x128x128" in lines and "1024x32x32" in lines
    assert any(line.endswith("MACs at 512x512, frozen: stem, layer1") for line in lines)
    r = run_cli("render", "specs/mmdet_faster_rcnn_r50.yaml", "-o", tmp_path / "g.dot", "--input", "1x320x256")
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert 'input [label="input\\n1x320x256"' in dot and '"2048x10x8"' in dot


def test_render_input_errors(tmp_path):
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--input", "big")
    assert r.returncode == 2
    assert r.stderr == ("graphres: error: --input expects CxHxW or HxW in pixels, e.g. 3x512x512 or 512x512; "
                        "got 'big'\n")
    # a value of the right form that the spec rejects is a located spec error, pointing at the command line
    r = run_cli("render", "specs/resnet50.yaml", "-o", tmp_path / "x.svg", "--input", "0x0")
    assert r.returncode == 1
    assert "input.size[0] = 0 must be >= 1" in r.stderr and "set on the command line" in r.stderr
    assert list(tmp_path.iterdir()) == []


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
    assert "subgraph cluster_s3_1 {" in dot and 'label="layer4.1: basic\\l' in dot
    assert 'label="layer1.0-1: basic x2\\l' in dot  # layer1 was not expanded
    assert main(["render", "specs/resnet18.yaml", "-o", str(out), "--level", "layer", "--expand", "all"]) == 0
    assert 'label="layer1.1: basic\\l' in out.read_text()


def test_render_help_lists_the_options():
    r = run_cli("render", "--help")
    for option in ("--level {stage,block,layer}", "--expand STAGE", "--input CxHxW", "--theme {light,dark}",
                   "--no-legend", "--rankdir {TB,LR}"):
        assert option in " ".join(r.stdout.split()), option
