"""The command line: exit codes, output, atomic files, and that only `compile` imports torch."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, run_cli

BAD = "graphres: 1\nstages:\n  - {block: basic, blocks: 2, planes: 64, stride: 0}\nfrozen_stages: 3\n"


def test_validate_ok():
    r = run_cli("validate", "specs/resnet50.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("specs/resnet50.yaml: ok: resnet50: 4 stages, 16 blocks, 23,508,032 parameters; outputs "
                        "layer1 (256 ch, stride 4), layer2 (512 ch, stride 8), layer3 (1024 ch, stride 16), "
                        "layer4 (2048 ch, stride 32)\n")


def test_validate_errors_exit_1_with_located_report(tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    r = run_cli("validate", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (
        "bad.yaml:3:51: error[E014]: stages[0].stride = 0 must be >= 1\n"
        "  |\n"
        "3 |   - {block: basic, blocks: 2, planes: 64, stride: 0}\n"
        "  |                                                   ^\n"
        "\n"
        "bad.yaml:4:16: error[E034]: frozen_stages = 3 is out of range for 1 stage (-1..1)\n"
        "  |\n"
        "4 | frozen_stages: 3\n"
        "  |                ^\n"
        "  = hint: -1 freezes nothing, 0 freezes the stem, k freezes the stem and layer1..layerk\n"
        "\n"
        "2 errors found\n")


def test_validate_json(tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    r = run_cli("validate", "--json", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert [(d["code"], d["line"], d["col"]) for d in report["diagnostics"]] == [("E014", 3, 51), ("E034", 4, 16)]


def test_warnings_pass_unless_strict(tmp_path):
    spec = (ROOT / "specs/resnet50.yaml").read_text().replace("stride: 2, dilation: 1}", "stride: 2, dilation: 2}")
    (tmp_path / "w.yaml").write_text(spec)
    r = run_cli("validate", "w.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "warning[W001]" in r.stderr
    r = run_cli("validate", "--strict", "w.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "warning[W001]" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("validate", "missing.yaml").returncode == 2
    assert run_cli("frobnicate", "specs/resnet50.yaml").returncode == 2
    r = run_cli("render", "specs/resnet50.yaml")  # no -o
    assert r.returncode == 2 and "-o/--output" in r.stderr
    r = run_cli("validate", "missing.yaml")
    assert r.stderr == "graphres: error: spec file 'missing.yaml' not found\n"


def test_set_on_the_command_line():
    r = run_cli("validate", "specs/resnet50.yaml", "--set", "frozen_stages=8")
    assert r.returncode == 1
    assert r.stderr.startswith("--set frozen_stages=8: error[E034]: frozen_stages = 8 is out of range")
    assert "= note: set on the command line" in r.stderr


def test_expand_prints_the_explicit_form(tmp_path):
    r = run_cli("expand", "specs/mmdet_faster_rcnn_r50.yaml")
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["stages"][2] == {"block": "bottleneck", "blocks": 6, "planes": 256, "stride": 2, "dilation": 1}
    assert doc["frozen_stages"] == 1 and doc["norm_eval"] is True
    # the expansion is itself a valid explicit spec with the same meaning
    explicit = tmp_path / "expanded.yaml"
    explicit.write_text(r.stdout)
    again = run_cli("expand", str(explicit))
    assert yaml.safe_load(again.stdout) == doc


def test_render_writes_svg(tmp_path):
    out = tmp_path / "r18.svg"
    r = run_cli("render", "specs/resnet18.yaml", "-o", out, "--level", "stage")
    assert r.returncode == 0, r.stderr
    assert out.read_text().lstrip().startswith("<?xml")
    assert r.stdout == f"wrote {out}\n"


def test_render_without_dot_fails_cleanly(tmp_path):
    out = tmp_path / "r18.svg"
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "graphres", "render", "specs/resnet18.yaml", "-o", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith("graphres: error: Graphviz's 'dot' program was not found")
    assert "--format dot" in r.stderr and not out.exists()
    r = subprocess.run([sys.executable, "-m", "graphres", "render", "specs/resnet18.yaml", "-o", str(out),
                        "--format", "dot"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and out.read_text().startswith("digraph")


TORCH_FREE = """
import sys
from graphres.cli import main
code = main({args!r})
assert "torch" not in sys.modules, "torch was imported"
print("exit", code)
"""


@pytest.mark.parametrize("args", [["validate", "specs/resnet152.yaml"], ["expand", "specs/resnet50.yaml"],
                                  ["info", "specs/resnet152.yaml", "--level", "layer"],
                                  ["info", "specs/resnet50.yaml", "--json"],
                                  ["render", "specs/resnet50.yaml", "-o", "{tmp}/t.dot"],
                                  ["render", "specs/resnet50.yaml", "-o", "{tmp}/t.svg"]])
def test_commands_do_not_import_torch(args, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-c", TORCH_FREE.format(args=args)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("exit 0\n")


LOAD_WITHOUT_GRAPHRES = """
import sys
sys.modules["graphres"] = None  # any attempt to import graphres fails
import torch
program = torch.export.load(sys.argv[1])
outs = program.module()(torch.randn(3, 3, 64, 64))
print([tuple(o.shape) for o in outs])
"""


def test_compile_writes_a_program_that_runs_with_torch_alone(tmp_path):
    out = tmp_path / "r18.pt2"
    r = run_cli("compile", "specs/resnet18.yaml", "-o", out)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["r18.pt2"]  # no temporary file left
    r = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_GRAPHRES, str(out)], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[(3, 64, 16, 16), (3, 128, 8, 8), (3, 256, 4, 4), (3, 512, 2, 2)]\n"


def test_compile_exported_numerics_equal_module(tmp_path):
    import torch

    import graphres
    from graphres.backends.export import export_module, save_program
    model = graphres.build("specs/resnet18.yaml").eval()
    path = save_program(export_module(model, 3, (64, 64)), tmp_path / "m.pt2")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(torch.export.load(path).module()(x), model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_python_dash_m_and_version():
    r = subprocess.run([sys.executable, "-m", "graphres", "--version"], capture_output=True, text=True)
    assert r.stdout.strip() == "graphres 0.1.0"


def test_one_shot_commands_end_with_their_output_flushed_and_their_exit_status(tmp_path, capsys):
    """entry() ends validate, info, expand, ... with os._exit after flushing: the whole output
    arrives (the same as main() in-process), exit statuses hold, and a reader that leaves early
    gets no traceback."""
    from graphres import cli
    assert cli.main(["schema"]) == 0
    expected = capsys.readouterr().out
    r = run_cli("schema")
    assert r.returncode == 0 and r.stdout == expected and len(expected) > 200_000  # past any pipe buffer
    bad = tmp_path / "bad.yaml"
    bad.write_text("graphres: 1\nname: x\nstages: []\n")
    r = run_cli("validate", bad)
    assert r.returncode == 1 and "error[" in r.stderr and r.stdout == ""
    p = subprocess.Popen([sys.executable, "-m", "graphres", "schema"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # the reader leaves (`| head -c 10`)
    assert p.wait(timeout=60) == 0 and b"Traceback" not in p.stderr.read()


def test_render_output_name_errors_are_usage_errors(tmp_path):
    r = run_cli("render", "specs/resnet18.yaml", "-o", tmp_path / "noext")
    assert r.returncode == 2 and r.stderr.startswith("graphres: error: ")
    assert "Traceback" not in r.stderr


def test_outputs_go_into_new_directories_with_normal_permissions(tmp_path):
    import os
    import stat
    for cmd, name in (("render", "a/b/r.svg"), ("expand", "c/d/r.yaml")):
        out = tmp_path / name
        r = run_cli(cmd, "specs/resnet18.yaml", "-o", out)
        assert r.returncode == 0, r.stderr
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
        assert [p.name for p in out.parent.iterdir()] == [out.name]
