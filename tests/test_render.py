"""The Graphviz backend: diagram content, determinism, escaping and a missing ``dot`` program.

The SVG tests need Graphviz's ``dot`` program, which ``make test`` installs; they fail without it.
Regenerate the golden DOT files with ``GRAPHRES_UPDATE_GOLDEN=1 pytest tests/test_render.py``.
"""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest

from graphres import compile_spec, ir
from graphres.backends import graphviz as gv_backend
from graphres.backends.graphviz import INSTALL_HINT, LEVELS, render, to_dot
from graphres.diagnostics import DotNotFoundError

from conftest import SPECS

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
RESNET50 = ROOT / "specs" / "resnet50.yaml"
SVG = "{http://www.w3.org/2000/svg}"

def needs_dot(test):
    """Marks the tests that run Graphviz's dot (a declared requirement of ``make test``)."""
    return test

RESNET18 = {
    "graphres": 1,
    "name": "resnet18",
    "stages": [
        {"block": "basic", "blocks": 2, "planes": 64, "stride": 1},
        {"block": "basic", "blocks": 2, "planes": 128, "stride": 2},
        {"block": "basic", "blocks": 2, "planes": 256, "stride": 2},
        {"block": "basic", "blocks": 2, "planes": 512, "stride": 2},
    ],
    "out_indices": [0, 1, 2, 3],
}

NASTY = 'a"<b>&\nc <script>alert(1)</script> &lt;i&gt; &nbsp; \\N \\" --> \x01'


@pytest.fixture(scope="module")
def r50():
    return compile_spec(RESNET50).graph


def svg_nodes(path: Path) -> dict[str, list[str]]:
    """Parse an SVG written by dot: node title -> its text lines (ElementTree fails on bad XML)."""
    root = ET.parse(path).getroot()
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node":
            title = g.find(f"{SVG}title").text
            out[title] = [t.text for t in g.iter(f"{SVG}text")]
    return out


def svg_texts(path: Path) -> list[str]:
    return [t.text for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def node_fill(path: Path, title: str) -> str:
    root = ET.parse(path).getroot()
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node" and g.find(f"{SVG}title").text == title:
            for tag in ("path", "polygon", "ellipse"):
                shape = g.find(f"{SVG}{tag}")
                if shape is not None:
                    return shape.get("fill")
    raise AssertionError(f"no node {title}")


# ---------------------------------------------------------------------------------------------
# content


def drawn_nodes(path: Path) -> dict[str, list[str]]:
    """The visible nodes: without the legend and the invisible spacers of cluster headers."""
    return {k: v for k, v in svg_nodes(path).items() if k != "legend" and not k.endswith("_pad")}


def clusters(path: Path) -> dict[str, list[str]]:
    """Cluster title -> the lines of its header."""
    root = ET.parse(path).getroot()
    return {g.find(f"{SVG}title").text: [t.text for t in g.iter(f"{SVG}text")]
            for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"}


def edges(path: Path) -> dict[str, dict]:
    """Edge title ("a->b") -> its stroke colour, dash pattern and label lines."""
    root = ET.parse(path).getroot()
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "edge":
            line = g.find(f"{SVG}path")
            out[g.find(f"{SVG}title").text] = {"stroke": line.get("stroke"), "dash": line.get("stroke-dasharray"),
                                               "label": [t.text for t in g.iter(f"{SVG}text")]}
    return out


OUTPUT_MARKS_R50 = [["out[0]: layer1", "256 ch, stride 4"], ["out[1]: layer2", "512 ch, stride 8"],
                    ["out[2]: layer3", "1024 ch, stride 16"], ["out[3]: layer4", "2048 ch, stride 32"]]


@needs_dot
def test_stage_level_svg(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg", level="stage")
    assert out == tmp_path / "r50.svg"
    nodes = drawn_nodes(out)
    # input, stem, four stages, four output marks
    assert len(nodes) == 10
    assert nodes["input"] == ["input", "3x224x224"]
    assert nodes["stem"] == ["stem: conv7x7 (frozen)", "64x56x56, output stride 4", "receptive field 11, 9.5K params"]
    assert nodes["s0"] == ["layer1: bottleneck x3 (frozen)", "256x56x56, output stride 4, dilation 1",
                           "receptive field 35, 215.8K params"]
    assert nodes["s2"] == ["layer3: bottleneck x6", "1024x14x14, output stride 16, dilation 1",
                           "receptive field 267, 7.10M params"]
    assert nodes["s3"][0] == "layer4: bottleneck x3"
    assert [nodes[f"out{k}"] for k in range(4)] == OUTPUT_MARKS_R50
    texts = svg_texts(out)
    for shape in ("3x224x224", "64x56x56", "256x56x56", "512x28x28", "1024x14x14"):
        assert shape in texts
    # frozen parts are gray, trainable stages are not
    assert node_fill(out, "stem") == node_fill(out, "s0") == "#d9d9d9"
    assert node_fill(out, "s1") != "#d9d9d9"
    assert clusters(out) == {}


@needs_dot
def test_block_level_svg(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg")  # block level is the default
    nodes = drawn_nodes(out)
    # input + stem + per stage (first block with its downsample shortcut + the folded rest) + 4 output marks
    assert len(nodes) == 1 + 1 + 4 * 2 + 4 == 14
    labels = {lines[0] for lines in nodes.values()}
    assert {"layer1.0: bottleneck", "layer1.1-2: bottleneck x2", "layer2.0: bottleneck", "layer2.1-3: bottleneck x3",
            "layer3.0: bottleneck", "layer3.1-5: bottleneck x5", "layer4.0: bottleneck",
            "layer4.1-2: bottleneck x2"} <= labels
    assert nodes["s2_0"] == ["layer3.0: bottleneck", "1024x14x14, stride 2", "downsample: conv1x1 s2", "1.51M params"]
    assert nodes["s2_1"] == ["layer3.1-5: bottleneck x5", "1024x14x14", "5.59M params (1.12M each)"]
    assert nodes["s0_0"][2] == "downsample: conv1x1"  # layer1 does not stride
    assert nodes["stem"][:2] == ["stem: conv7x7 (frozen)", "conv7x7 s2, maxpool3x3 s2"]
    assert [nodes[f"out{k}"] for k in range(4)] == OUTPUT_MARKS_R50
    heads = clusters(out)
    assert list(heads) == ["cluster_s0", "cluster_s1", "cluster_s2", "cluster_s3"]
    assert heads["cluster_s2"] == ["layer3: bottleneck x6", "1024x14x14, output stride 16, dilation 1",
                                   "receptive field 267, 7.10M params"]
    assert heads["cluster_s0"][0] == "layer1: bottleneck x3 (frozen)"
    assert heads["cluster_s1"][0] == "layer2: bottleneck x4"
    assert heads["cluster_s3"][2] == "receptive field 427, 14.96M params"
    texts = svg_texts(out)
    assert "2048x7x7" in texts and "3x224x224" in texts
    assert node_fill(out, "s0_0") == node_fill(out, "s0_1") == "#d9d9d9"
    assert node_fill(out, "s1_0") == "#ffffff"
    # the output marks hang off their stages with dotted green edges
    drawn = edges(out)
    assert drawn["s0_1->out0"]["dash"] == "1,5" and drawn["s0_1->out0"]["stroke"] == "#3b7d3a"
    assert drawn["s3_1->out3"]["dash"] == "1,5"
    assert drawn["s2_0->s2_1"] == {"stroke": "#4d4d4d", "dash": None, "label": ["1024x14x14"]}


@needs_dot
def test_layer_level_svg(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg", level="layer")
    nodes = drawn_nodes(out)
    heads = clusters(out)
    # stem, 4 stages, per stage the first block and the folded rest
    assert list(heads) == ["cluster_stem", "cluster_s0", "cluster_s0_0", "cluster_s0_1", "cluster_s1", "cluster_s1_0",
                           "cluster_s1_1", "cluster_s2", "cluster_s2_0", "cluster_s2_1", "cluster_s3", "cluster_s3_0",
                           "cluster_s3_1"]
    assert heads["cluster_s2_1"] == ["layer3.1-5: bottleneck x5", "1024x14x14", "5.59M params (1.12M each)"]
    assert heads["cluster_s2_0"] == ["layer3.0: bottleneck", "1024x14x14, stride 2", "1.51M params"]
    assert heads["cluster_s2"][0] == "layer3: bottleneck x6"
    assert heads["cluster_stem"] == ["stem: conv7x7 (frozen)", "64x56x56, output stride 4",
                                     "receptive field 11, 9.5K params"]
    # input, 4 stem layers, per stage 12 layers in the first block (with downsample) and 10 in the folded one, 4 marks
    assert len(nodes) == 1 + 4 + 4 * (12 + 10) + 4
    assert nodes["conv1"] == ["conv1: conv7x7 s2", "64 ch"]
    assert nodes["maxpool"] == ["maxpool3x3 s2"]
    assert nodes["layer3.0.conv2"] == ["conv2: conv3x3 s2", "256 ch"]
    assert nodes["layer3.0.downsample.0"] == ["downsample.0: conv1x1 s2", "1024 ch"]
    assert nodes["layer3.0.bn1"] == ["bn1: BN"]
    assert nodes["layer3.0.relu#1"] == ["relu"]
    assert nodes["layer3.1.add"] == ["+"]
    assert "layer3.2.conv1" not in nodes  # folded into layer3.1
    assert [nodes[f"out{k}"] for k in range(4)] == OUTPUT_MARKS_R50
    drawn = edges(out)
    # the downsample path is orange and labelled where it leaves the main path; identity shortcuts are dashed blue
    assert drawn["layer2.1.relu#2->layer3.0.downsample.0"] == {"stroke": "#c45a00", "dash": None,
                                                               "label": ["downsample"]}
    assert drawn["layer3.0.downsample.1->layer3.0.add"]["stroke"] == "#c45a00"
    assert drawn["layer3.0.relu#2->layer3.1.add"] == {"stroke": "#1f6fb2", "dash": "5,2", "label": ["identity"]}
    assert sum(e["label"] == ["identity"] for e in drawn.values()) == 4  # one per folded run
    assert sum(e["label"] == ["downsample"] for e in drawn.values()) == 4
    # shapes where they change and where a block starts, not on every norm and activation
    assert drawn["layer2.1.relu#2->layer3.0.conv1"]["label"] == ["512x28x28"]
    assert drawn["layer3.0.conv2->layer3.0.bn2"]["label"] == ["256x14x14"]
    assert drawn["layer3.0.bn2->layer3.0.relu#1"]["label"] == []
    # frozen layers are gray; in a trainable stage they are not
    assert node_fill(out, "layer1.0.conv1") == node_fill(out, "layer1.0.add") == "#d9d9d9"
    assert node_fill(out, "layer2.0.conv1") == "#ffffff"


@needs_dot
def test_layer_level_draws_a_layer_that_uses_a_block_type_as_its_cluster(tmp_path):
    """ResNeSt's conv2 (block split_attn) and an SE block are clusters inside their block's, as
    plugins are; ResNeSt layer1.0's split attention: conv 128x32x3x3 = 36,864, bn0 256, fc1
    32x64 + 32, bn1 64, fc2 128x32 + 128: 43,488 parameters; the grouped conv's 128 x 56 x 56 x
    288 MACs are 115.6M of it."""
    g = compile_spec(ROOT / "specs/resnest50d.yaml").graph
    assert g.nodes["layer1.0.conv2.fc1"][ir.USE] == ("conv2", "split_attn")
    assert ir.USE not in g.nodes["layer1.0.conv1"]
    heads = clusters(render(g, tmp_path / "rs.svg", level="layer"))
    uses = {k: v for k, v in heads.items() if v[0] == "conv2: split_attn"}
    assert [v[1] for v in uses.values()][0] == "params 43.5K, MACs 116M"
    assert len(uses) == 8  # per stage: the first block and the folded rest
    heads = clusters(render(compile_spec(ROOT / "specs/se_resnet50.yaml").graph, tmp_path / "se.svg", level="layer"))
    assert sum(v[0] == "se: se" for v in heads.values()) == 8


@needs_dot
def test_layer_level_expand(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg", level="layer", expand=["layer3"])
    heads = clusters(out)
    assert [k for k in heads if k.startswith("cluster_s2_")] == [f"cluster_s2_{k}" for k in range(6)]
    assert heads["cluster_s2_5"][0] == "layer3.5: bottleneck"
    assert "cluster_s1_1" in heads and "cluster_s1_2" not in heads  # layer2 stays folded
    nodes = drawn_nodes(out)
    assert nodes["layer3.5.conv3"] == ["conv3: conv1x1", "1024 ch"]
    assert sum(e["label"] == ["identity"] for e in edges(out).values()) == 3 + 5
    everything = render(r50, tmp_path / "all.svg", level="layer", expand=["all"])
    assert len(drawn_nodes(everything)) == 1 + 4 + 4 * 12 + 12 * 10 + 4


def test_expand_at_block_and_stage_level(r50):
    dot = to_dot(r50, "block", expand=["layer2,layer4"])
    assert "layer2.1-3: bottleneck x3" not in dot and "layer3.1-5: bottleneck x5" in dot
    for name in ("layer2.1: bottleneck\\n", "layer2.3: bottleneck\\n", "layer4.2: bottleneck\\n"):
        assert name in dot
    # at stage level an expanded stage shows its blocks, unfolded
    dot = to_dot(r50, "stage", expand=["layer3"])
    assert "subgraph cluster_s2 {" in dot and "layer3.5: bottleneck\\n" in dot
    assert 's1 [label="layer2: bottleneck x4' in dot
    assert to_dot(r50, "block", expand=["all"]) == to_dot(r50, "block", expand=["layer1", "layer2", "layer3", "layer4"])


def test_expand_unknown_stage_suggests(r50):
    with pytest.raises(ValueError, match=r"cannot expand 'layr3': no such stage; did you mean 'layer3'\? "
                                         r"\(stages: layer1, layer2, layer3, layer4, or all\)"):
        to_dot(r50, "layer", expand=["layr3"])
    with pytest.raises(ValueError, match="cannot expand 'conv1'"):
        to_dot(r50, "block", expand=["conv1"])


@needs_dot
@pytest.mark.parametrize("name, level, folded, nodes_expected", [
    ("resnet18", "stage", None, 1 + 1 + 4 + 4),
    ("resnet18", "block", "layer1.0-1: basic x2", 1 + 1 + 7 + 4),
    ("resnet18", "layer", "layer1.0-1: basic x2", 1 + 4 + 7 + 3 * 9 + 3 * 7 + 4),
    ("resnet101", "stage", None, 1 + 1 + 4 + 4),
    ("resnet101", "block", "layer3.1-22: bottleneck x22", 1 + 1 + 8 + 4),
    ("resnet101", "layer", "layer3.1-22: bottleneck x22", 1 + 4 + 4 * (12 + 10) + 4),
])
def test_family_at_each_level(name, level, folded, nodes_expected, tmp_path):
    g = compile_spec(ROOT / "specs" / f"{name}.yaml").graph
    out = render(g, tmp_path / f"{name}.svg", level=level)
    nodes = drawn_nodes(out)
    assert len(nodes) == nodes_expected
    lines = [line for group in list(nodes.values()) + list(clusters(out).values()) for line in group]
    if folded:
        assert folded in lines
    channels = (64, 128, 256, 512) if name == "resnet18" else (256, 512, 1024, 2048)
    assert [nodes[f"out{k}"] for k in range(4)] == [
        [f"out[{k}]: layer{k + 1}", f"{c} ch, stride {4 << k}"] for k, c in enumerate(channels)]
    texts = svg_texts(out)
    size = 56
    for k, c in enumerate(channels[:3]):  # shapes on the edges between stages
        assert f"{c}x{size >> k}x{size >> k}" in texts
    assert "frozen" not in " ".join(texts)


@needs_dot
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_renders_at_every_level(path, tmp_path):
    g = compile_spec(path).graph
    for level in LEVELS:
        out = render(g, tmp_path / f"{level}.svg", level=level)
        nodes = drawn_nodes(out)
        assert nodes["input"][0] == "input"
        assert sum(k.startswith("out") for k in nodes) == len(g.graph["outputs"])
        assert "legend" in svg_nodes(out)


@needs_dot
@pytest.mark.parametrize("name, level, theme", [("resnet50_block", "block", "light"),
                                                ("resnet50_layer", "layer", "light"),
                                                ("resnet50_stage_dark", "stage", "dark")])
def test_docs_diagrams_are_current(r50, tmp_path, name, level, theme):
    # the pictures in README.md and docs/cli.md say what the renderer draws today (text, not bytes:
    # another Graphviz version lays them out differently); regenerate them with the commands in docs/cli.md
    fresh = render(r50, tmp_path / "fresh.svg", level=level, theme=theme)
    assert svg_texts(ROOT / "docs" / f"{name}.svg") == svg_texts(fresh)


def test_stage_params_sum_to_graph_params(r50):
    # per-stage params (cluster labels) are the sums of node params with that stage index
    from graphres import ir
    per_stage = {}
    for n, d in r50.nodes(data=True):
        if d.get(ir.STAGE) is not None:
            per_stage[d[ir.STAGE]] = per_stage.get(d[ir.STAGE], 0) + d[ir.META]["params"]
    assert sum(per_stage.values()) == r50.graph["params"]
    assert gv_backend._count(per_stage[2]) == "7.10M"
    assert ("layer3: bottleneck x6\\n1024x14x14, output stride 16, dilation 1\\nreceptive field 267, 7.10M params"
            in to_dot(r50, "stage"))


def test_resnet18_folds_blocks_without_shortcut():
    g = compile_spec(RESNET18).graph
    dot = to_dot(g)
    # layer1.0 has no downsample (64 -> 64, stride 1), so it folds with layer1.1
    assert "layer1.0-1: basic x2" in dot
    assert "layer1.0: basic" not in dot
    for stage in (2, 3, 4):
        assert f"layer{stage}.0: basic\\n" in dot and f"layer{stage}.1: basic\\n" in dot
    assert dot.count("downsample: conv1x1 s2") == 3
    assert "frozen" not in dot  # frozen_stages defaults to -1


def test_dilation_and_frozen_stem_only():
    spec = dict(RESNET18, frozen_stages=0, stages=[
        {"block": "basic", "blocks": 2, "planes": 64},
        {"block": "basic", "blocks": 3, "planes": 128, "stride": 1, "dilation": [1, 2, 4]},
    ], out_indices=[1])
    g = compile_spec(spec).graph
    dot = to_dot(g)
    assert 'stem [label="stem: conv7x7 (frozen)' in dot
    assert "layer1: basic x2 (frozen)" not in dot and "layer1: basic x2\\l" in dot
    assert "dilations 1,2,4" in dot
    # different dilations make different blocks: none of layer2's blocks fold
    assert "layer2.1: basic\\n128x56x56, dilation 2" in dot and "layer2.2: basic\\n128x56x56, dilation 4" in dot
    assert "out[0]: layer2\\n128 ch, stride 4" in dot
    layer = to_dot(g, "layer")
    assert 'label="conv1: conv3x3 d4\\n128 ch"' in layer


@needs_dot
def test_dilated_resnet50(tmp_path):
    g = compile_spec(RESNET50, ["stages.2.stride=1", "stages.2.dilation=2", "stages.3.stride=1",
                                "stages.3.dilation=4"]).graph
    out = render(g, tmp_path / "d.svg", level="layer")
    heads = clusters(out)
    assert heads["cluster_s3"][:2] == ["layer4: bottleneck x3", "2048x28x28, output stride 8, dilation 4"]
    assert heads["cluster_s2_1"] == ["layer3.1-5: bottleneck x5", "1024x28x28, dilation 2", "5.59M params (1.12M each)"]
    assert drawn_nodes(out)["layer4.0.conv2"] == ["conv2: conv3x3 d4", "512 ch"]
    assert drawn_nodes(out)["out3"] == ["out[3]: layer4", "2048 ch, stride 8"]


def test_rankdir_level_and_theme_arguments(r50, tmp_path):
    assert "rankdir=LR" in to_dot(r50, rankdir="LR")
    with pytest.raises(ValueError, match="level"):
        to_dot(r50, level="module")
    with pytest.raises(ValueError, match="rankdir"):
        to_dot(r50, rankdir="sideways")
    with pytest.raises(ValueError, match="theme"):
        to_dot(r50, theme="solarized")
    with pytest.raises(ValueError, match="format"):
        render(r50, tmp_path / "r50.bogus")
    with pytest.raises(ValueError, match="extension"):
        render(r50, tmp_path / "r50")
    with pytest.raises(ValueError, match="no such stage"):
        render(r50, tmp_path / "r50.svg", expand=["layer9"])
    assert list(tmp_path.iterdir()) == []


@needs_dot
def test_dark_theme(r50, tmp_path):
    out = render(r50, tmp_path / "dark.svg", level="layer", theme="dark")
    root = ET.parse(out).getroot()
    background = next(p for p in root.iter(f"{SVG}polygon"))
    assert background.get("fill") == "#1b1f24"
    fills = {t.get("fill") for t in root.iter(f"{SVG}text")}
    assert fills == {"#e6e6e6", "#c2c2c2", "#6cb6ff", "#f0a050", "#a6adb4", "#7bc88f"}  # all light on dark
    assert node_fill(out, "layer2.0.conv1") == "#2d333b" and node_fill(out, "layer1.0.conv1") == "#4a4a4a"


@needs_dot
def test_legend_and_font(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg", level="layer")
    legend = svg_nodes(out)["legend"]
    assert legend == ["legend", "trainable", "frozen (no gradients)", "output (out_indices)", "———", "tensor, CxHxW",
                      "- - - -", "identity shortcut", "———", "downsample shortcut", "· · · ·", "feature output"]
    block_legend = svg_nodes(render(compile_spec(RESNET18).graph, tmp_path / "r18.svg"))["legend"]
    assert "frozen (no gradients)" not in block_legend and "identity shortcut" not in block_legend
    assert "legend" not in svg_nodes(render(r50, tmp_path / "bare.svg", legend=False))
    # a PostScript name with a generic fallback in SVG; fontconfig resolves it for PNG and PDF
    families = {t.get("font-family") for t in ET.parse(out).getroot().iter(f"{SVG}text")}
    assert families == {"Helvetica,sans-Serif"}
    # for PNG and PDF, dot resolves the name to a font file that is installed
    proc = subprocess.run(["dot", "-v", "-Tpng", "-o", os.devnull], capture_output=True, text=True, timeout=60,
                          input=f'digraph {{ a [fontname="{gv_backend.FONT}"] }}')
    resolved = [line for line in proc.stderr.splitlines() if "resolved to" in line]
    assert resolved, proc.stderr
    font_file = resolved[0].rsplit(" ", 1)[-1]
    assert Path(font_file).is_file() and font_file.endswith((".ttf", ".otf", ".pfb", ".t1")), resolved[0]


def test_layer_level_side_branches_and_deep_stem():
    se = to_dot(compile_spec(ROOT / "specs" / "se_resnet18.yaml").graph, "layer")
    # the main path (back from the block output along first operands) is one straight group;
    # the squeeze-and-excitation gate and the downsample projection are side branches
    assert '"layer1.0.bn2" [label="bn2: BN" fillcolor="#ffffff" group=main]' in se
    assert '"layer1.0.scale" [label="\u00d7" fillcolor="#ffffff" fixedsize=true fontsize=12 group=main height=0.3 ' \
           'shape=circle width=0.3]' in se
    assert '"layer1.0.se.pool" [label="se.pool: global avgpool" fillcolor="#ffffff"]' in se
    assert '"layer2.0.downsample.0" [label="downsample.0: conv1x1 s2\\n128 ch" fillcolor="#ffffff"]' in se
    assert '"layer1.0.se.gate" -> "layer1.0.scale" [weight=10]' in se
    deep = to_dot(compile_spec(RESNET50, ["stem.type=deep"]).graph, "layer")
    assert '"stem.0" [label="stem.0: conv3x3 s2\\n32 ch"' in deep  # stem layers by their state-dict path
    assert 'label="stem: deep (frozen)\\l64x56x56, output stride 4\\lreceptive field 15, 28.8K params\\l"' in deep


def test_resnext_groups():
    g = compile_spec(RESNET50, ["block_args.groups=32", "block_args.base_width=4"]).graph
    assert 'label="layer3.1-5: bottleneck x5\\n1024x14x14, groups 32\\n' in to_dot(g, "block")
    assert '"layer3.0.conv2" [label="conv2: conv3x3 s2 g32\\n512 ch"' in to_dot(g, "layer")


def test_layer_level_shades_norms_without_gradients():
    dot = to_dot(compile_spec(RESNET18, ["norm.requires_grad=false"]).graph, "layer")
    assert '"layer2.0.bn1" [label="bn1: BN" fillcolor="#d9d9d9" group=main]' in dot
    assert '"layer2.0.conv1" [label="conv1: conv3x3 s2\\n128 ch" fillcolor="#ffffff" group=main]' in dot
    assert '"layer2.0.relu" [label=relu fillcolor="#ffffff" group=main]' in dot


def test_per_stage_frozen_and_global_receptive_field():
    g = compile_spec(RESNET18, ["stages.2.frozen=true"]).graph
    dot = to_dot(g, "stage")
    assert 's2 [label="layer3: basic x2 (frozen)\\n256x14x14' in dot and 's2 [label="layer3' in dot
    assert 'fillcolor="#d9d9d9"' in dot.split("\n\ts2 [")[1].split("\n")[0]
    assert "layer2: basic x2\\n" in dot  # only that stage
    assert 'label="resnet18\\n11.18M params, 1.81G MACs at 224x224, frozen: layer3"' in dot
    se = to_dot(compile_spec(ROOT / "specs" / "se_resnet18.yaml").graph, "stage")
    assert "receptive field global (local 43), 150.2K params" in se


def test_layer_ids_never_collide():
    # a stem layer called like a drawn node of its own (out0, legend) gets a neutral id
    stem = {"kind": "stem", "params": {"channels": "int"}, "out_channels": "channels",
            "layers": [{"name": "out0", "op": "conv", "out": "channels", "kernel": 3, "stride": 2, "padding": 1},
                       {"name": "legend", "op": "norm"}]}
    g = compile_spec({"graphres": 1, "name": "odd", "blocks": {"odd_stem": stem},
                      "stem": {"type": "odd_stem", "channels": 64},
                      "stages": [{"block": "basic", "blocks": 1, "planes": 64}], "out_indices": [0]}).graph
    dot = to_dot(g, "layer")
    assert '"node~1" [label="out0: conv3x3 s2\\n64 ch"' in dot and '"node~2" [label="legend: BN"' in dot
    assert dot.count("\tout0 [") == 1 and dot.count("\tlegend [") == 1


# ---------------------------------------------------------------------------------------------
# determinism and golden files


GOLDEN_CASES = [("resnet18", "block"), ("resnet18", "layer"), ("resnet50", "stage"), ("resnet50", "block")]


@pytest.mark.parametrize("name, level", GOLDEN_CASES, ids=[f"{n}_{lv}" for n, lv in GOLDEN_CASES])
def test_dot_matches_golden(r50, name, level):
    path = GOLDEN / f"{name}_{level}.dot"
    g = r50 if name == "resnet50" else compile_spec(ROOT / "specs" / f"{name}.yaml").graph
    dot = to_dot(g, level)
    if os.environ.get("GRAPHRES_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(dot, encoding="utf-8")
    assert dot == path.read_text(encoding="utf-8"), \
        f"{path.name} differs; if the change is intended, rerun with GRAPHRES_UPDATE_GOLDEN=1"


def test_dot_is_deterministic(r50):
    assert to_dot(r50, "block") == to_dot(r50, "block")
    assert to_dot(compile_spec(RESNET50).graph, "stage") == to_dot(r50, "stage")
    assert to_dot(compile_spec(RESNET50).graph, "layer", expand=["layer2"]) == to_dot(r50, "layer", expand=["layer2"])


HASH_SEED_SCRIPT = """
import sys
from pathlib import Path
from graphres import compile_spec
from graphres.backends.graphviz import render, to_dot
g = compile_spec({spec!r}).graph
out = Path(sys.argv[1])
text = to_dot(g, "block") + to_dot(g, "stage") + to_dot(g, "block", "LR") + to_dot(g, "layer", expand=["layer3"])
text += to_dot(g, "layer", theme="dark")
svg = render(g, out / "layer.svg", level="layer", theme="dark").read_bytes()
sys.stdout.buffer.write(text.encode() + svg)
"""


def test_dot_and_svg_are_independent_of_hash_seed(tmp_path):
    outputs = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = tmp_path / seed
        out.mkdir()
        proc = subprocess.run([sys.executable, "-c", HASH_SEED_SCRIPT.format(spec=str(RESNET50)), str(out)],
                              capture_output=True, env=env, cwd=ROOT, timeout=120, check=True)
        outputs.append(proc.stdout)
    assert outputs[0] and outputs[0] == outputs[1]


def test_backend_does_not_import_torch():
    code = ("import sys; from graphres import compile_spec; from graphres.backends.graphviz import to_dot; "
            f"to_dot(compile_spec({str(RESNET50)!r}).graph); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], env=os.environ, cwd=ROOT, timeout=120, check=True)


@needs_dot
@pytest.mark.parametrize("level", LEVELS)
def test_svg_is_byte_identical(r50, tmp_path, level):
    a = render(r50, tmp_path / "a.svg", level=level).read_bytes()
    b = render(r50, tmp_path / "b.svg", level=level).read_bytes()
    assert a == b


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_binary_formats(r50, tmp_path, suffix, magic):
    out = render(r50, tmp_path / f"r50{suffix}", level="stage")
    assert out.read_bytes().startswith(magic)


def test_fmt_overrides_extension(r50, tmp_path):
    out = render(r50, str(tmp_path / "diagram.txt"), fmt="dot")
    assert out == tmp_path / "diagram.txt"
    assert out.read_text(encoding="utf-8") == to_dot(r50)


# ---------------------------------------------------------------------------------------------
# a missing dot program


def test_missing_dot_raises_with_install_hint(r50, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert shutil.which("dot") is None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DotNotFoundError) as err:
        render(r50, out_dir / "r50.svg")
    message = str(err.value)
    assert message == INSTALL_HINT and "\n" not in message
    assert "apt-get install -y graphviz" in message and "brew install graphviz" in message
    assert "--format dot" in message
    assert list(out_dir.iterdir()) == []
    # the DOT source needs no Graphviz program
    out = render(r50, out_dir / "r50.dot")
    assert out.read_text(encoding="utf-8") == to_dot(r50)
    assert render(r50, out_dir / "r50.gv", level="stage", fmt="dot").read_text(encoding="utf-8") == to_dot(r50, "stage")
    assert sorted(p.name for p in out_dir.iterdir()) == ["r50.dot", "r50.gv"]


def test_dot_vanishing_after_which_is_reported_too(r50, tmp_path, monkeypatch):
    # shutil.which finds a dot that the graphviz package cannot run: graphviz.ExecutableNotFound
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: "/usr/bin/dot")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    target = tmp_path / "r50.png"
    target.write_bytes(b"previous")
    with pytest.raises(DotNotFoundError, match="apt-get install -y graphviz"):
        render(r50, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["r50.png"]


def test_failed_render_leaves_no_partial_file(r50, tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise graphviz.CalledProcessError(1, ["dot"])
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: "/usr/bin/dot")
    monkeypatch.setattr(graphviz.Digraph, "pipe", explode)
    with pytest.raises(graphviz.CalledProcessError):
        render(r50, tmp_path / "r50.svg")
    assert list(tmp_path.iterdir()) == []

    def fail_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        render(r50, tmp_path / "r50.dot")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# escaping


def nasty_graph():
    block = {"params": {"planes": "int", "stride": {"type": "int", "default": 1}}, "out_channels": "planes",
             "layers": [{"name": 'c"<x>&y\\N', "op": "conv", "out": "planes", "kernel": 3, "stride": "stride"},
                        {"name": "bn1", "op": "norm"}]}
    return compile_spec({"graphres": 1, "name": NASTY, "blocks": {'<b>&"\\N': block},
                         "stages": [{"block": '<b>&"\\N', "blocks": 2, "planes": 64},
                                    {"block": "basic", "blocks": 1, "planes": 128, "stride": 2}]}).graph


def test_brief_escaping_example(tmp_path):
    g = compile_spec({"graphres": 1, "name": 'a"<b>&\nc',
                      "stages": [{"block": "basic", "blocks": 1, "planes": 64}]}).graph
    assert 'label="a\\"<b>&amp;\\nc\\n' in to_dot(g)
    if shutil.which("dot"):
        texts = svg_texts(render(g, tmp_path / "a.svg"))
        assert texts[:2] == ['a"<b>&', "c"]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_names_are_escaped(tmp_path, level, theme):
    g = nasty_graph()
    dot = to_dot(g, level, theme=theme)
    # the name is only a sanitised graph id; the labels hold it escaped
    assert dot.startswith('digraph "a_b_c_script_alert_1_script_lt_i_gt_nbsp_N_--_" {')
    assert "<script>alert(1)</script> &amp;lt;i&amp;gt; &amp;nbsp; \\\\N \\\\\\\" -->  " in dot
    assert "\x01" not in dot
    out = render(g, tmp_path / "nasty.svg", level=level, theme=theme)
    root = ET.parse(out).getroot()  # valid XML
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1].lower() == "script"]
    texts = svg_texts(out)
    assert texts[0] == 'a"<b>&'
    assert texts[1].startswith('c <script>alert(1)</script> &lt;i&gt; &nbsp; \\N \\" -->')
    assert any(t.startswith('layer1: <b>&"\\N x2') for t in texts)
    if level == "layer":  # a layer name that is no plain identifier: a neutral node id, the name as text
        assert 'c"<x>&y\\N: conv3x3' in texts
        assert '"node~5" [label="c\\"<x>&amp;y\\\\N: conv3x3\\n64 ch"' in dot


@pytest.mark.parametrize("level", LEVELS)
def test_classification_head_has_its_own_box(tmp_path, level):
    g = compile_spec(ROOT / "specs" / "resnet50_classifier.yaml").graph
    out = render(g, tmp_path / "cls.svg", level=level)
    nodes = svg_nodes(out)
    assert nodes["input"] == ["input", "3x224x224"]
    if level == "layer":
        assert nodes["avgpool"][0] == "avgpool: global avgpool" and nodes["fc"][0] == "fc: linear"
        assert "head: avgpool + fc" in svg_texts(out)
    else:
        assert nodes["head"] == ["head: avgpool + fc", "1000 classes, 2.05M params"]
    edges = [e.find(f"{SVG}title").text for e in ET.parse(out).getroot().iter(f"{SVG}g") if e.get("class") == "edge"]
    assert not any(e.endswith("->input") for e in edges)
