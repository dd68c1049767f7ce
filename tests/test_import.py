"""graphres import (spec/pyconfig.py and the command): OpenMMLab Python configs are read with ast and
never run; the _base_ chain follows mmengine's merge rules; values the backbone needs must be
literals, and every other construct is a located diagnostic with an exact message."""
import ast
import re
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphres
from graphres import SpecError
from graphres.diagnostics import format_diagnostic
from graphres.spec.pyconfig import emit_spec, read_config

from conftest import ROOT, run_cli

BASE = """\
# model settings
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='FasterRCNN',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], bgr_to_rgb=True),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=norm_cfg,
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5))
"""


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """Write dedented config files under tmp_path (names may have folders) and chdir there."""
    monkeypatch.chdir(tmp_path)

    def write(**files: str):
        for name, text in files.items():
            path = tmp_path / name.replace("__", "/").replace("_DOT_", ".")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return tmp_path
    return write


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _backbone(path):
    imported = read_config(path)
    return imported.doc.data["backbone"], imported


def _diags(path):
    with pytest.raises(SpecError) as e:
        read_config(path)
    return [format_diagnostic(d, e.value.sources) for d in e.value.diagnostics]


def test_two_file_config_that_tries_to_run_a_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    _write(tmp_path, "configs/_base_/models/faster-rcnn_r50_fpn.py", BASE)
    _write(tmp_path, "configs/faster_rcnn/r50.py", """\
        import os; os.system("touch pwned")
        _base_ = '../_base_/models/faster-rcnn_r50_fpn.py'
        model = dict(backbone=dict(frozen_stages={{_base_.model.backbone.frozen_stages}}))
        """)
    r = run_cli("import", "configs/faster_rcnn/r50.py", "-o", "out/r50.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert r.stdout == "wrote out/r50.yaml (r50: 23,508,032 parameters, 4,087,136,256 MACs at 3x224x224)\n"
    assert r.stderr == """\
configs/faster_rcnn/r50.py:1:1: warning[W030]: an import was not run: `import os`
  |
1 | import os; os.system("touch pwned")
  | ^^^^^^^^^
  = hint: graphres reads configs without running them; the backbone cannot use what it would bind

configs/faster_rcnn/r50.py:1:12: warning[W030]: a call was not run: `os.system('touch pwned')`
  |
1 | import os; os.system("touch pwned")
  |            ^^^^^^^^^^^^^^^^^^^^^^^^
  = hint: graphres reads configs without running them; the backbone cannot use what it would bind

2 warnings found
"""
    text = (tmp_path / "out/r50.yaml").read_text()
    assert text == """\
# imported by graphres from configs/faster_rcnn/r50.py (model.backbone)
# the config was read with Python's ast, never run; each key says where it was set
# base files: configs/_base_/models/faster-rcnn_r50_fpn.py
# r50: 23,508,032 parameters, 4,087,136,256 MACs at 3x224x224
graphres: 1
name: r50
backbone:
  type: ResNet  # configs/_base_/models/faster-rcnn_r50_fpn.py:7
  depth: 50  # configs/_base_/models/faster-rcnn_r50_fpn.py:8
  num_stages: 4  # configs/_base_/models/faster-rcnn_r50_fpn.py:9
  out_indices: [0, 1, 2, 3]  # configs/_base_/models/faster-rcnn_r50_fpn.py:10
  style: pytorch  # configs/_base_/models/faster-rcnn_r50_fpn.py:14
  frozen_stages: 1  # configs/_base_/models/faster-rcnn_r50_fpn.py:11
  norm_cfg: {type: BN, requires_grad: true}  # configs/_base_/models/faster-rcnn_r50_fpn.py:2
  norm_eval: true  # configs/_base_/models/faster-rcnn_r50_fpn.py:13
  init_cfg: {type: Pretrained, checkpoint: 'torchvision://resnet50'}  # configs/_base_/models/faster-rcnn_r50_fpn.py:15
"""
    compiled = graphres.compile_spec(tmp_path / "out/r50.yaml")
    assert compiled.graph.graph["params"] == 23_508_032
    reference = graphres.compile_spec(ROOT / "specs/mmdet_faster_rcnn_r50.yaml").graph
    assert compiled.graph.graph["macs"] == reference.graph["macs"]


def test_delete_replaces_and_plain_dicts_merge(tmp_path):
    _write(tmp_path, "base.py", """\
        model = dict(backbone=dict(type='ResNet', depth=50, norm_cfg=dict(type='BN', requires_grad=False,
                                                                          momentum=0.03)))
        """)
    _write(tmp_path, "merge.py", """\
        _base_ = 'base.py'
        model = dict(backbone=dict(norm_cfg=dict(type='SyncBN')))
        """)
    _write(tmp_path, "delete.py", """\
        _base_ = ['./base.py']
        gn = dict(type='GN', num_groups=32)
        model = dict(backbone=dict(norm_cfg=dict(_delete_=True, **gn)))
        """)
    assert _backbone(tmp_path / "merge.py")[0]["norm_cfg"] == {"type": "SyncBN", "requires_grad": False,
                                                               "momentum": 0.03}
    assert _backbone(tmp_path / "delete.py")[0]["norm_cfg"] == {"type": "GN", "num_groups": 32}


def test_lists_are_replaced_whole(tmp_path):
    _write(tmp_path, "base.py", """\
        model = dict(backbone=dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3), strides=[1, 2, 2, 2]))
        """)
    _write(tmp_path, "child.py", """\
        _base_ = 'base.py'
        model = dict(backbone=dict(out_indices=[3], strides=(1, 2)))
        """)
    backbone, _ = _backbone(tmp_path / "child.py")
    assert backbone["out_indices"] == [3]
    assert backbone["strides"] == [1, 2]


def test_base_references_and_names_bound_earlier(tmp_path):
    _write(tmp_path, "base.py", """\
        norm_cfg = dict(type='SyncBN', requires_grad=True)
        depth = 101
        model = dict(backbone=dict(type='ResNetV1c', depth=50, norm_cfg=norm_cfg, style='pytorch'))
        default_scope = 'mmseg'
        """)
    _write(tmp_path, "child.py", """\
        _base_ = 'base.py'
        \"\"\"A docstring is fine.\"\"\"
        stages = 4
        frozen = -1
        indices = (0, 1, 2, 3)[:stages] if False else (0, 1, 2, 3)
        model = dict(backbone=dict(depth={{_base_.depth}}, norm_cfg=_base_.norm_cfg, num_stages=stages,
                                   frozen_stages=frozen, style=_base_['model']['backbone']['style']))
        """)
    backbone, imported = _backbone(tmp_path / "child.py")
    assert backbone == {"type": "ResNetV1c", "depth": 101, "num_stages": 4, "style": "pytorch", "frozen_stages": -1,
                        "norm_cfg": {"type": "SyncBN", "requires_grad": True}}
    assert imported.doc.data["default_scope"] == "mmseg"
    assert imported.warnings == []  # `indices` is not a literal, but nothing needs it
    assert str(imported.doc.span(("backbone", "depth"))) == f"{tmp_path / 'base.py'}:2:9"  # the value's own place
    assert str(imported.doc.span(("backbone", "num_stages"))) == f"{tmp_path / 'child.py'}:3:10"
    assert str(imported.doc.span(("backbone", "norm_cfg", "type"))) == f"{tmp_path / 'base.py'}:1:22"


@pytest.mark.parametrize("line,message", [
    ("depth=int('50')",
     "model.backbone.depth needs `int('50')`, a function call, which graphres does not run"),
    ("depth=f'{50}'",
     "model.backbone.depth needs `f'{50}'`, an f-string, which graphres does not run"),
    ("out_indices=[i for i in range(4)]",
     "model.backbone.out_indices needs `[i for i in range(4)]`, a list comprehension, which graphres does not run"),
    ("depth=25 * 2",
     "model.backbone.depth needs `25 * 2`, an arithmetic expression, which graphres does not run"),
    ("norm_cfg=norm_cfg",
     "model.backbone.norm_cfg needs `norm_cfg`: name 'norm_cfg' is not bound earlier in cfg.py"),
    ("depth={{_base_.depth}}",
     "model.backbone.depth needs `{{_base_.depth}}`: _base_.depth is not in the base files"),
    ("style='{{_base_.style}}'",
     "model.backbone.style needs `'{{_base_.style}}'`: a {{_base_.x}} reference inside a string"),
    ("depth=math.floor(50.5)",
     "model.backbone.depth needs `math.floor(50.5)`, a function call, which graphres does not run"),
])
def test_non_literals_the_backbone_needs_are_located_errors(tmp_path, monkeypatch, line, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "cfg.py", f"import math\nmodel = dict(backbone=dict(type='ResNet', {line}))\n")
    with pytest.raises(SpecError) as e:
        read_config("cfg.py")
    errors = [d for d in e.value.diagnostics if d.is_error]
    assert [d.message for d in errors] == [message]
    assert (errors[0].span.file, errors[0].span.line, errors[0].span.col) == ("cfg.py", 2, 43 + line.index("=") + 1)


def test_error_texts_are_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "cfg.py", """\
        from mmdet.models import ResNet
        depth = int('50')
        model = dict(backbone=dict(type=ResNet, depth=depth))
        """)
    assert _diags("cfg.py") == ["""\
cfg.py:1:1: error[E081]: model.backbone.type needs `from mmdet.models import ResNet`, an imported name at line 1, \
which graphres does not run
  |
1 | from mmdet.models import ResNet
  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = hint: write the value as a literal (dict(...), {...}, lists, tuples, numbers, strings, True/False/None) or a \
name bound to one earlier in the file""", """\
cfg.py:2:9: error[E081]: model.backbone.depth needs `int('50')`, a function call, which graphres does not run
  |
2 | depth = int('50')
  |         ^^^^^^^^^
  = hint: write the value as a literal (dict(...), {...}, lists, tuples, numbers, strings, True/False/None) or a \
name bound to one earlier in the file""", """\
cfg.py:1:1: warning[W030]: an import was not run: `from mmdet.models import ResNet`
  |
1 | from mmdet.models import ResNet
  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = hint: graphres reads configs without running them; the backbone cannot use what it would bind"""]


@pytest.mark.parametrize("files,message", [
    ({"cfg.py": "from mmengine.config import read_base\nwith read_base():\n    from .base import *\n"},
     "cfg.py:1:1: error[E085]: new-style mmengine config (read_base()) is not supported"),
    ({"cfg.py": "x = 1\n"}, "cfg.py: error[E084]: no 'model' in cfg.py or its bases"),
    ({"cfg.py": "model = dict(type='FasterRCNN')\n"},
     "cfg.py:1:1: error[E084]: 'model' has no 'backbone' in cfg.py or its bases"),
    ({"cfg.py": "model = dict(backbone=dict(type='ResNet'\n"},
     "cfg.py:1:27: error[E080]: Python syntax error: '(' was never closed"),
    ({"cfg.py": "_base_ = 'nope.py'\n"},
     "cfg.py:1:10: error[E082]: _base_ file 'nope.py' not found (paths are relative to cfg.py)"),
    ({"cfg.py": "_base_ = 'mmdet::_base_/models/r50.py'\n"},
     "cfg.py:1:10: error[E082]: _base_ 'mmdet::_base_/models/r50.py' names a file inside an installed package"),
    ({"cfg.py": "_base_ = ['a.py', 'b.py']\n", "a.py": "model = dict(backbone=dict(type='ResNet', depth=50))\n",
      "b.py": "model = dict(neck=None)\n"},
     "cfg.py:1:19: error[E082]: base files a.py and b.py both define 'model'"),
    ({"cfg.py": "_base_ = 'a.py'\nmodel = dict(backbone=dict(norm_cfg=dict(type='GN')))\n",
      "a.py": "model = dict(backbone=dict(type='ResNet', depth=50, norm_cfg=['BN']))\n"},
     "cfg.py:2:28: error[E082]: model.backbone.norm_cfg is a dict here but a list in the base files, so mmengine "
     "cannot merge them"),
    ({"cfg.py": "_base_ = 'a.py'\n", "a.py": "_base_ = 'cfg.py'\n"},
     "a.py:1:10: error[E082]: _base_ 'cfg.py' includes itself (cycle: cfg.py -> a.py -> cfg.py)"),
    ({"cfg.py": "_base_ = dict(a=1)\n"},
     "cfg.py:1:10: error[E082]: _base_ must be a file name or a list of file names, found `dict(a=1)`"),
])
def test_config_problems(tmp_path, monkeypatch, files, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        _write(tmp_path, name, text)
    assert _diags("cfg.py")[0].splitlines()[0] == message


def test_statements_that_bind_nothing_are_skipped_with_located_warnings(tmp_path):
    _write(tmp_path, "cfg.py", """\
        import os
        print('hello')
        if True:
            depth = 101
        def f():
            return 1
        custom_hooks = [dict(type=f'x{1}')]
        model = dict(backbone=dict(type='ResNet', depth=50))
        """)
    imported = read_config(tmp_path / "cfg.py")
    assert [(d.code, d.span.line, d.span.col, d.message) for d in imported.warnings] == [
        ("W030", 1, 1, "an import was not run: `import os`"),
        ("W030", 2, 1, "a call was not run: `print('hello')`"),
        ("W030", 3, 1, "an if statement was not run: `if True: depth = 101`"),
        ("W030", 5, 1, "a function definition was not run: `def f(): return 1`"),
    ]
    assert imported.doc.data["backbone"] == {"type": "ResNet", "depth": 50}


def test_a_name_bound_only_in_a_skipped_statement_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "cfg.py", "if True:\n    depth = 101\nmodel = dict(backbone=dict(type='ResNet', depth=depth))\n")
    with pytest.raises(SpecError) as e:
        read_config("cfg.py")
    assert e.value.diagnostics[0].message == ("model.backbone.depth needs `if True: depth = 101`, a name bound by an "
                                              "if statement at line 1, which graphres does not run")


def test_invalid_backbones_are_refused_and_nothing_is_written(tmp_path):
    _write(tmp_path, "cfg.py", "model = dict(backbone=dict(type='ResNet', depth=42))\n")
    r = run_cli("import", "cfg.py", "-o", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == """\
cfg.py:1:49: error[E013]: depth = 42 is not a ResNet depth (18, 34, 50, 101, 152)
  |
1 | model = dict(backbone=dict(type='ResNet', depth=42))
  |                                                 ^^

1 error found
"""
    assert not (tmp_path / "spec.yaml").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "cfg.py"]  # no temporary file left either


def test_usage_errors_exit_2(tmp_path):
    r = run_cli("import", "missing.py", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.endswith("graphres: error: config file 'missing.py' not found\n")


def test_stdout_and_mmseg_scope(tmp_path):
    _write(tmp_path, "base.py", "default_scope = 'mmseg'\nnorm_cfg = dict(type='SyncBN', requires_grad=True)\n")
    _write(tmp_path, "cfg.py", """\
        _base_ = ['./base.py']
        model = dict(backbone=dict(type='ResNetV1c', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
                                   dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg={{_base_.norm_cfg}},
                                   norm_eval=False, style='pytorch', contract_dilation=True))
        """)
    r = run_cli("import", "cfg.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    spec = yaml.safe_load(r.stdout)
    assert spec["default_scope"] == "mmseg"
    compiled = graphres.compile_spec(spec)
    assert compiled.graph.graph["params"] == 23_527_264  # mmsegmentation's DeepLabV3 R50-D8 backbone
    assert [st["stride"] for st in compiled.graph.graph["stages"]] == [4, 8, 8, 8]


def test_dict_keywords_follow_pythons_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "ok.py", """\
        x = dict(depth=50, type='ResNet')
        model = dict(backbone=dict(x, depth=18, style='caffe'))
        """)
    assert read_config("ok.py").doc.data["backbone"] == {"type": "ResNet", "depth": 18, "style": "caffe"}
    _write(tmp_path, "twice.py", """\
        x = dict(depth=50, type='ResNet')
        model = dict(backbone=dict(**x, depth=18))
        """)
    assert _diags("twice.py") == ["""\
twice.py:2:23: error[E083]: model.backbone needs `dict(**x, depth=18)`: dict() gets 'depth' twice, which Python refuses
  |
2 | model = dict(backbone=dict(**x, depth=18))
  |                       ^^^^^^^^^^^^^^^^^^^
  = hint: write {**x, 'key': value} to override a key of x"""]


def test_the_example_in_docs_cli_md_is_current(tmp_path):
    doc = (ROOT / "docs" / "cli.md").read_text()
    section = doc[doc.index("\n## import\n"):doc.index("\n## Exit codes\n")]
    files = re.findall(r"`(\S+\.py)`:\n\n```python\n(.*?)```", section, re.S)
    assert len(files) == 2
    for name, text in files:
        _write(tmp_path, name, text)
    shown = re.search(r"```text\n\$ graphres import (\S+) -o (\S+)\n(.*?)\n\$ ls /tmp/pwned\n.*?\n\$ cat \S+\n(.*?)\n```",
                      section, re.S)
    config, output, printed, written = shown.groups()
    r = run_cli("import", config, "-o", output, cwd=tmp_path)
    assert r.returncode == 0
    assert (r.stderr + r.stdout).rstrip("\n") == printed
    assert (tmp_path / output).read_text().rstrip("\n") == written


def test_names_that_double_a_value_per_line_are_bounded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = ["a0 = dict(x=1)"] + [f"a{i} = dict(p=a{i - 1}, q=a{i - 1})" for i in range(1, 40)]
    _write(tmp_path, "bomb.py", "\n".join(lines + ["model = dict(backbone=dict(type='ResNet', depth=50))"]) + "\n")
    assert _diags("bomb.py")[0].splitlines()[0] == \
        "bomb.py:17:14: error[E080]: config expands to more than 262,144 values through names that refer to names"


def test_imports_and_functions_are_not_config_keys(tmp_path):
    # mmengine drops modules and functions from each file's names, so two bases may both import os
    _write(tmp_path, "a.py", "import os\nmodel = dict(backbone=dict(type='ResNet', depth=18))\n")
    _write(tmp_path, "b.py", "import os\ndef helper():\n    pass\noptimizer = dict(lr=0.1)\n")
    _write(tmp_path, "cfg.py", "_base_ = ['a.py', 'b.py']\nimport os\n")
    imported = read_config(tmp_path / "cfg.py")
    assert imported.doc.data["backbone"] == {"type": "ResNet", "depth": 18}
    assert [(d.span.file.rsplit("/", 1)[-1], d.span.line) for d in imported.warnings] == \
        [("a.py", 1), ("b.py", 1), ("b.py", 2), ("cfg.py", 2)]


def test_a_dict_over_a_computed_base_value_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "a.py", "model = build_model()\n")
    _write(tmp_path, "cfg.py", "_base_ = 'a.py'\nmodel = dict(backbone=dict(type='ResNet', depth=18))\n")
    assert _diags("cfg.py")[0].splitlines()[0] == \
        "a.py:1:9: error[E081]: model needs `build_model()`, a function call, which graphres does not run"


def test_an_unwritable_output_is_an_error(tmp_path):
    _write(tmp_path, "cfg.py", "model = dict(backbone=dict(type='ResNet', depth=18))\n")
    (tmp_path / "out").mkdir()
    r = run_cli("import", "cfg.py", "-o", "out", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == "graphres: error: cannot write 'out': it is a directory\n"


def test_values_nested_too_deeply_are_an_error_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "deep.py", "x = " + "[" * 150 + "]" * 150 + "\ny = " + "-" * 450 + "1\n")
    assert _diags("deep.py") == ["deep.py: error[E080]: config 'deep.py' nests values too deeply to read"]


def test_nesting_bound_does_not_depend_on_the_recursion_limit(tmp_path, monkeypatch):
    """torch.compile raises the interpreter's recursion limit; the bound on a config's nesting is
    graphres' own (100 syntax levels), so the answer stays the same."""
    import sys
    monkeypatch.chdir(tmp_path)
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(100_000)
        _write(tmp_path, "deep.py", "x = " + "[" * 150 + "]" * 150 + "\n")
        assert _diags("deep.py") == ["deep.py: error[E080]: config 'deep.py' nests values too deeply to read"]
    finally:
        sys.setrecursionlimit(limit)


SNIPPETS = ["f'x{1}'", "int('3')", "[i for i in range(3)]", "norm_cfg", "{{_base_.depth}}", "_base_.model",
            "None", "dict(**norm_cfg)", "{**norm_cfg, 'x': 1}", "-1", "(1, 2)", "[]", "{}", "'ResNeXt'", "True",
            "10 ** 9", "lambda: 0", "_base_['x']", "norm_cfg['type']", "{1: 2}", "'{{_base_.x}}'", "1.5", "b'x'",
            "dict(norm_cfg, type='GN', num_groups=3)", "(", "model"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False), st.integers(1, 3))
def test_damaged_configs_import_or_raise_spec_error(tmp_path, rng, edits):
    """Randomly replaced values never become tracebacks: the config imports, or SpecError says why."""
    from graphres.spec.load import parse_document
    text = BASE
    for _ in range(edits):
        nodes = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.expr) and n.lineno == n.end_lineno]
        node = rng.choice(nodes)
        lines = text.splitlines(keepends=True)
        line = lines[node.lineno - 1]
        lines[node.lineno - 1] = line[:node.col_offset] + rng.choice(SNIPPETS) + line[node.end_col_offset:]
        text = "".join(lines)
        try:
            ast.parse(text)
        except SyntaxError:
            break
    path = tmp_path / f"cfg{rng.randrange(10 ** 9)}.py"
    path.write_text(text)
    try:
        imported = read_config(path)
        spec, diags = parse_document(imported.doc, imported.sources, str(path))
        if not diags.has_errors:
            graphres.compile_spec(spec)
            assert yaml.safe_load(emit_spec(imported)) == imported.doc.data
    except SpecError as e:
        assert e.diagnostics and all(d.code and d.message for d in e.diagnostics)


def test_base_placeholders_cannot_be_used_inside_the_file(tmp_path, monkeypatch):
    # mmengine replaces {{_base_.x}} by a placeholder string before the file runs and by the value after
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "base.py", "model = dict(backbone=dict(type='ResNet', depth=50, style='caffe'))\n")
    _write(tmp_path, "late.py", "_base_ = 'base.py'\nbb = {{_base_.model.backbone}}\nmodel = dict(backbone=bb)\n")
    assert read_config("late.py").doc.data["backbone"] == {"type": "ResNet", "depth": 50, "style": "caffe"}
    _write(tmp_path, "early.py", """\
        _base_ = 'base.py'
        bb = {{_base_.model.backbone}}
        model = dict(backbone=dict(_delete_=True, type='ResNet', depth=18, style=bb['style']))
        """)
    assert [d.message for d in read_error("early.py")] == [
        "model.backbone.style needs `bb['style']`: a {{_base_.x}} value indexed in the file, where mmengine still "
        "has it as a placeholder string"]
    _write(tmp_path, "spread.py", "_base_ = 'base.py'\nmodel = dict(backbone=dict(**{{_base_.model.backbone}}))\n")
    assert [d.message for d in read_error("spread.py")] == [
        "model.backbone.**{{_base_.model.backbone}} needs `{{_base_.model.backbone}}`: a {{_base_.x}} value "
        "expanded with ** in the file, where mmengine still has it as a placeholder string"]


def read_error(path):
    with pytest.raises(SpecError) as e:
        read_config(path)
    return e.value.diagnostics
