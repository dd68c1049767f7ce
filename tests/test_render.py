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

from graphres import compile_spec
from graphres.backends import graphviz as gv_backend
from graphres.backends.graphviz import INSTALL_HINT, render, to_dot
from graphres.diagnostics import DotNotFoundError

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
            shape = g.find(f"{SVG}path")
            if shape is None:
                shape = g.find(f"{SVG}polygon")
            return shape.get("fill")
    raise AssertionError(f"no node {title}")


# ---------------------------------------------------------------------------------------------
# content


@needs_dot
def test_stage_level_svg(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg", level="stage")
    assert out == tmp_path / "r50.svg"
    nodes = svg_nodes(out)
    # input, stem, four stages, four output marks
    assert len(nodes) == 10
    assert nodes["input"] == ["input", "3x224x224"]
    assert nodes["stem"] == ["stem: conv7x7 (frozen)", "64x56x56, output stride 4", "9.5K params"]
    assert nodes["s0"] == ["layer1: bottleneck x3 (frozen)", "256 ch, output stride 4, dilation 1", "215.8K params"]
    assert nodes["s2"] == ["layer3: bottleneck x6", "1024 ch, output stride 16, dilation 1", "7.10M params"]
    assert nodes["s3"][0] == "layer4: bottleneck x3"
    marks = [nodes[f"out{k}"] for k in range(4)]
    assert marks == [["out[0]: C256 /4"], ["out[1]: C512 /8"], ["out[2]: C1024 /16"], ["out[3]: C2048 /32"]]
    texts = svg_texts(out)
    for shape in ("3x224x224", "64x56x56", "256x56x56", "512x28x28", "1024x14x14", "2048x7x7"):
        assert shape in texts
    # frozen parts are gray, trainable stages are not
    assert node_fill(out, "stem") == node_fill(out, "s0") == "#d9d9d9"
    assert node_fill(out, "s1") != "#d9d9d9"


@needs_dot
def test_block_level_svg(r50, tmp_path):
    out = render(r50, tmp_path / "r50.svg")  # block level is the default
    nodes = svg_nodes(out)
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
    assert [nodes[f"out{k}"] for k in range(4)] == [
        ["out[0]: C256 /4"], ["out[1]: C512 /8"], ["out[2]: C1024 /16"], ["out[3]: C2048 /32"]]
    root = ET.parse(out).getroot()
    clusters = [g for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"]
    assert len(clusters) == 4
    texts = svg_texts(out)
    assert "layer3: bottleneck x6" in texts and "1024 ch, output stride 16, dilation 1" in texts
    assert "layer1: bottleneck x3 (frozen)" in texts and "layer2: bottleneck x4" in texts
    assert "2048x7x7" in texts and "3x224x224" in texts
    assert node_fill(out, "s0_0") == node_fill(out, "s0_1") == "#d9d9d9"
    assert node_fill(out, "s1_0") == "#ffffff"


def test_stage_params_sum_to_graph_params(r50):
    # per-stage params (cluster labels) are the sums of node params with that stage index
    from graphres import ir
    per_stage = {}
    for n, d in r50.nodes(data=True):
        if d.get(ir.STAGE) is not None:
            per_stage[d[ir.STAGE]] = per_stage.get(d[ir.STAGE], 0) + d[ir.META]["params"]
    assert sum(per_stage.values()) == r50.graph["params"]
    assert gv_backend._count(per_stage[2]) == "7.10M"
    assert "layer3: bottleneck x6\\n1024 ch, output stride 16, dilation 1\\n7.10M params" in to_dot(r50, "stage")


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
    assert "layer1: basic x2 (frozen)" not in dot and "layer1: basic x2\\n" in dot
    assert "dilations 1,2,4" in dot
    # different dilations make different blocks: none of layer2's blocks fold
    assert "layer2.1: basic\\n128x56x56, dilation 2" in dot and "layer2.2: basic\\n128x56x56, dilation 4" in dot
    assert 'out[0]: C128 /4' in dot


def test_rankdir_and_level_arguments(r50, tmp_path):
    assert "rankdir=LR" in to_dot(r50, rankdir="LR")
    with pytest.raises(ValueError, match="level"):
        to_dot(r50, level="layer")
    with pytest.raises(ValueError, match="rankdir"):
        to_dot(r50, rankdir="sideways")
    with pytest.raises(ValueError, match="format"):
        render(r50, tmp_path / "r50.bogus")
    with pytest.raises(ValueError, match="extension"):
        render(r50, tmp_path / "r50")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# determinism and golden files


@pytest.mark.parametrize("level", ["stage", "block"])
def test_dot_matches_golden(r50, level):
    path = GOLDEN / f"resnet50_{level}.dot"
    dot = to_dot(r50, level)
    if os.environ.get("GRAPHRES_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(dot, encoding="utf-8")
    assert dot == path.read_text(encoding="utf-8"), \
        f"{path.name} differs; if the change is intended, rerun with GRAPHRES_UPDATE_GOLDEN=1"


def test_dot_is_deterministic(r50):
    assert to_dot(r50, "block") == to_dot(r50, "block")
    assert to_dot(compile_spec(RESNET50).graph, "stage") == to_dot(r50, "stage")


def test_dot_is_independent_of_hash_seed():
    code = ("import sys; from graphres import compile_spec; from graphres.backends.graphviz import to_dot; "
            f"g = compile_spec({str(RESNET50)!r}).graph; "
            "sys.stdout.buffer.write((to_dot(g, 'block') + to_dot(g, 'stage') + to_dot(g, 'block', 'LR')).encode())")
    outputs = []
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=ROOT, timeout=120,
                              check=True)
        outputs.append(proc.stdout)
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2]


def test_backend_does_not_import_torch():
    code = ("import sys; from graphres import compile_spec; from graphres.backends.graphviz import to_dot; "
            f"to_dot(compile_spec({str(RESNET50)!r}).graph); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], env=os.environ, cwd=ROOT, timeout=120, check=True)


@needs_dot
def test_svg_is_byte_identical(r50, tmp_path):
    a = render(r50, tmp_path / "a.svg").read_bytes()
    b = render(r50, tmp_path / "b.svg").read_bytes()
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
             "layers": [{"name": "conv1", "op": "conv", "out": "planes", "kernel": 3, "stride": "stride"},
                        {"name": "bn1", "op": "norm"}]}
    return compile_spec({"graphres": 1, "name": NASTY, "blocks": {'<b>&"\\N': block},
                         "stages": [{"block": '<b>&"\\N', "blocks": 2, "planes": 64},
                                    {"block": "basic", "blocks": 1, "planes": 128, "stride": 2}]}).graph


def test_brief_escaping_example(tmp_path):
    g = compile_spec({"graphres": 1, "name": 'a"<b>&\nc', "stages": [{"block": "basic", "blocks": 1, "planes": 64}]}).graph
    assert 'label="a\\"<b>&amp;\\nc\\n' in to_dot(g)
    if shutil.which("dot"):
        texts = svg_texts(render(g, tmp_path / "a.svg"))
        assert texts[:2] == ['a"<b>&', "c"]


@pytest.mark.parametrize("level", ["stage", "block"])
def test_names_are_escaped(tmp_path, level):
    g = nasty_graph()
    dot = to_dot(g, level)
    # the name is only a sanitised graph id; the labels hold it escaped
    assert dot.startswith('digraph "a_b_c_script_alert_1_script_lt_i_gt_nbsp_N_--_" {')
    assert "<script>alert(1)</script> &amp;lt;i&amp;gt; &amp;nbsp; \\\\N \\\\\\\" -->  " in dot
    assert "\x01" not in dot
    out = render(g, tmp_path / "nasty.svg", level=level)
    root = ET.parse(out).getroot()  # valid XML
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1].lower() == "script"]
    texts = svg_texts(out)
    assert texts[0] == 'a"<b>&'
    assert texts[1].startswith('c <script>alert(1)</script> &lt;i&gt; &nbsp; \\N \\" -->')
    assert any(t.startswith('layer1: <b>&"\\N x2') for t in texts)
