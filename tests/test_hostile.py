"""Hostile specs through the command line: each reproducer of issue 13 ends in one located error
(exit 1), with no traceback and a small output, read without building what it describes."""
import json
import os

import pytest

from conftest import run_cli

STAGE = "stages: [{block: basic, blocks: 2, planes: 64}]\n"
OUTPUT_LIMIT = 1_000_000


def validate(tmp_path, body: str, *args: str, name: str = "spec.yaml"):
    (tmp_path / name).write_text(body)
    r = run_cli("validate", name, *args, cwd=tmp_path)
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr) + len(r.stdout) < OUTPUT_LIMIT
    return r


REPRODUCERS = [
    # core-schema tags on the wrong kind of value
    ("name: !!int abc", "spec.yaml:2:7: error[E060]: 'abc' is not a valid !!int value"),
    ("norm_eval: !!bool 1", "spec.yaml:2:12: error[E060]: '1' is not a valid !!bool value"),
    ("norm: {eps: !!float x}", "spec.yaml:2:13: error[E060]: 'x' is not a valid !!float value"),
    ("norm: !!map BN", "spec.yaml:2:7: error[E060]: YAML tag '!!map' needs a mapping, found a single value"),
    ("name: !!seq x", "spec.yaml:2:7: error[E060]: YAML tag '!!seq' needs a list, found a single value"),
    ("!!int x: 1", "spec.yaml:2:1: error[E060]: 'x' is not a valid !!int value"),
    ("name: !!int []", "spec.yaml:2:7: error[E060]: YAML tag '!!int' needs a single value, found a list"),
    ("name: !!int ''", "spec.yaml:2:7: error[E060]: '' is not a valid !!int value"),
    # depth and size
    ("name: " + "[" * 500, "spec.yaml:2:38: error[E062]: the document is too deeply nested: more than 32 levels"),
    ("name: " + "9" * 4301, "spec.yaml:2:7: error[E061]: integer with 4,301 characters is too large"),
    ("name: 1:2:3:4:5:6:7:8:9:10:11:12:13:14:15:16:17:18:19:20:21:22:23:24:25:26:27:28:29:30:31:32:33",
     "spec.yaml:2:7: error[E061]: integer 823073254691...(57 digits) is too large"),
    # values torch rejects later
    ("norm: {eps: .nan}", "spec.yaml:2:13: error[E014]: norm.eps = nan must be a finite number"),
    ("norm: {eps: 1.0e+400}", "spec.yaml:2:13: error[E014]: norm.eps = inf must be a finite number"),
    ("norm: {momentum: -5}", "spec.yaml:2:18: error[E014]: norm.momentum = -5 must be >= 0"),
    ("norm: {momentum: 1.5}", "spec.yaml:2:18: error[E014]: norm.momentum = 1.5 must be <= 1"),
    ("norm: {momentum: .nan}", "spec.yaml:2:18: error[E014]: norm.momentum = nan must be a finite number"),
    ("conv: {type: ConvWS, eps: .inf}", "spec.yaml:2:27: error[E014]: conv.eps = inf must be a finite number"),
    ("conv: {type: []}", "spec.yaml:2:14: error[E011]: conv.type must be a string, found a list"),
    ("conv: {type: {a: 1}}", "spec.yaml:2:14: error[E011]: conv.type must be a string, found a mapping"),
    # models too large to build
    ("input: {channels: 100000000}",
     "spec.yaml:2:8: error[E066]: the model has 313,600,148,096 parameters (1.1 TiB as float32), over the limit "
     "of 10,000,000,000; the largest layer, conv1, has 313,600,000,000"),
]


@pytest.mark.parametrize("line,headline", REPRODUCERS, ids=[r[0][:30] for r in REPRODUCERS])
def test_reproducer_is_one_located_error(tmp_path, line, headline):
    r = validate(tmp_path, f"graphres: 1\n{line}\n{STAGE}")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines()[0] == headline
    assert r.stderr.endswith("1 error found\n")


def test_reproducers_in_json_too(tmp_path):
    r = validate(tmp_path, f"graphres: 1\nname: !!int abc\n{STAGE}", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["diagnostics"][0]["code"] == "E060"


def test_deep_set_value(tmp_path):
    r = validate(tmp_path, f"graphres: 1\n{STAGE}", "--set", "name=" + "[" * 500)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "--set name=" + "[" * 500 + ":1:33: error[E062]: the document is too deeply nested: more than 32 levels")


def test_alias_expanding_to_a_600_deep_document(tmp_path):
    lines = ["graphres: 1", "a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 600)]
    r = validate(tmp_path, "\n".join(lines) + "\n" + STAGE)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "spec.yaml:2:10: error[E062]: the document is too deeply nested: more than 32 levels (through aliases)")


def test_node_limit_stops_while_reading(tmp_path):
    r = validate(tmp_path, "graphres: 1\nname: [" + "0, " * 60_000 + "0]\n" + STAGE)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "spec.yaml:2:149993: error[E062]: the document is too large: more than 50,000 values"
    # the source line is clipped around the caret
    assert max(len(line) for line in r.stderr.splitlines()) < 200


def test_a_38_mb_list_is_refused_unread(tmp_path):
    with open(tmp_path / "spec.yaml", "w") as f:
        f.write("graphres: 1\nstages: [")
        f.write("0, " * 13_000_000)
        f.write("0]\n")
    r = run_cli("validate", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("spec.yaml: error[E062]: 'spec.yaml' is larger than 1,048,576 bytes\n"
                        "  = hint: a spec is never this large; if yours really is, raise the limit with "
                        "GRAPHRES_MAX_SPEC_BYTES (now 1,048,576)\n\n1 error found\n")


def test_limits_can_be_raised(tmp_path):
    body = "graphres: 1\nname: " + "[" * 40 + "1" + "]" * 40 + "\n" + STAGE
    assert validate(tmp_path, body).returncode == 1
    (tmp_path / "spec.yaml").write_text(body)
    r = run_cli("validate", "spec.yaml", cwd=tmp_path, env={**os.environ, "GRAPHRES_MAX_SPEC_DEPTH": "64"})
    assert r.stderr.splitlines()[0] == "spec.yaml:2:7: error[E011]: name must be a string, found a list"


def test_five_thousand_stages_is_one_error(tmp_path):
    r = validate(tmp_path, "graphres: 1\nstages: [" + ", ".join(map(str, range(5000))) + "]\n")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "spec.yaml:2:9: error[E014]: stages lists 5,000 stages; at most 64 are allowed"
    assert r.stderr.endswith("1 error found\n") and len(r.stderr) < 1000


def test_five_thousand_errors_are_capped(tmp_path):
    body = f"graphres: 1\n{STAGE}out_indices: [" + ", ".join(["x"] * 5000) + "]\n"
    r = validate(tmp_path, body)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == "spec.yaml:3:15: error[E011]: out_indices[0] must be an integer, found 'x' (a string)"
    assert lines[-3:] == ["... and 4950 more errors (not shown; --json lists up to 1,000)", "", "5000 errors found"]
    assert sum(line.startswith("spec.yaml:") for line in lines) == 50
    assert max(len(line) for line in lines) <= 130
    assert len(r.stderr) < 20_000
    data = json.loads(validate(tmp_path, body, "--json").stdout)
    assert len(data["diagnostics"]) == 1000 and data["omitted"] == 4000


def test_kernel_of_100001_and_a_thousand_wide_bottlenecks(tmp_path):
    body = """graphres: 1
input: {channels: 3, size: [32, 32]}
blocks:
  big:
    params: {planes: {type: int}, stride: {type: int, default: 1}}
    out_channels: planes
    layers:
      - {name: conv1, op: conv, out: planes, kernel: 100001}
stages: [{block: big, blocks: 1, planes: 64}]
"""
    r = validate(tmp_path, body)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "spec.yaml:8:9: error[E066]: the model has 40,960,819,213,632 parameters (149.0 TiB as float32), over the "
        "limit of 10,000,000,000; the largest layer, layer1.0.conv1, has 40,960,819,204,096")
    r = validate(tmp_path, "graphres: 1\nstages: [{block: bottleneck, blocks: 1000, planes: 65536}]\n")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "spec.yaml:2:10: error[E066]: the model has 72,998,072,100,160 parameters (265.6 TiB as float32), over the "
        "limit of 10,000,000,000; the largest layer, layer1.0.conv2, has 38,654,705,664")


def test_compile_refuses_a_huge_model_before_allocating(tmp_path):
    (tmp_path / "spec.yaml").write_text(f"graphres: 1\ninput: {{channels: 100000000}}\n{STAGE}")
    r = run_cli("compile", "spec.yaml", "-o", "out.pt2", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error[E066]" in r.stderr.splitlines()[0]
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


def test_compile_refuses_over_the_memory_budget(tmp_path):
    (tmp_path / "spec.yaml").write_text(f"graphres: 1\n{STAGE}")
    r = run_cli("compile", "spec.yaml", "-o", "out.pt2", cwd=tmp_path,
                env={**os.environ, "GRAPHRES_MAX_MEMORY": "1M"})
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "spec.yaml:2:10: error[E067]: refusing to compile the model: it needs about 1.8 MiB (157,504 parameters), "
        "over the 1.0 MiB of GRAPHRES_MAX_MEMORY")
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]
    r = run_cli("compile", "spec.yaml", "-o", "out.pt2", cwd=tmp_path, env={**os.environ, "GRAPHRES_MAX_MEMORY": "lots"})
    assert (r.returncode, r.stderr) == (
        1, "graphres: error: memory limit 'lots' must be a byte count, a size such as '64G', or 'unlimited'\n")


# _base_ hardening

def test_base_that_is_not_a_spec_is_never_quoted(tmp_path):
    (tmp_path / "secret.txt").write_text("root:hunter2:0:0\nadmin: hunter2\n")
    for args in ((), ("--json",)):
        r = validate(tmp_path, f"_base_: secret.txt\ngraphres: 1\n{STAGE}", *args)
        assert r.returncode == 1
        assert "hunter2" not in r.stdout + r.stderr
    r = validate(tmp_path, f"_base_: secret.txt\ngraphres: 1\n{STAGE}")
    assert r.stderr == ("spec.yaml:1:9: error[E005]: _base_ 'secret.txt' is not a graphres spec\n"
                        "  |\n1 | _base_: secret.txt\n  |         ^^^^^^^^^^\n"
                        "  = hint: a base must be a YAML mapping with 'graphres: 1' (or a _base_ of its own)\n"
                        "\n1 error found\n")


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/shadow", "/etc/hostname"])
def test_system_files_as_base(tmp_path, path):
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable here")
    r = validate(tmp_path, f"_base_: {path}\ngraphres: 1\n{STAGE}")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == f"spec.yaml:1:9: error[E005]: _base_ '{path}' is not a graphres spec"
    assert "unknown key" not in r.stderr


def test_base_with_a_yaml_error_is_located_when_it_is_a_spec(tmp_path):
    (tmp_path / "base.yaml").write_text("graphres: 1\nname: [x\n")
    r = validate(tmp_path, f"_base_: base.yaml\n{STAGE}")
    assert r.returncode == 1
    assert r.stderr == "base.yaml:3:1: error[E001]: invalid YAML: expected ',' or ']', but got '<stream end>'\n\n1 error found\n"


def test_base_symlink_loop(tmp_path):
    os.symlink("loop.yaml", tmp_path / "loop.yaml")
    r = validate(tmp_path, f"_base_: loop.yaml\ngraphres: 1\n{STAGE}")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "spec.yaml:1:9: error[E005]: _base_ 'loop.yaml' cannot be resolved: symbolic link loop"


def test_base_that_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    r = validate(tmp_path, f"_base_: d\ngraphres: 1\n{STAGE}")
    assert r.stderr.splitlines()[0] == "spec.yaml:1:9: error[E005]: _base_ 'd' is not a regular file"


def test_merging_a_large_base_is_linear(tmp_path):
    """8,000 keys overridden over a base of 8,000: the span bookkeeping was quadratic (minutes)."""
    n = 8000
    (tmp_path / "base.yaml").write_text(f"graphres: 1\n{STAGE}x:\n" + "".join(f"  k{i}: [1]\n" for i in range(n)))
    r = validate(tmp_path, "_base_: base.yaml\nx:\n" + "".join(f"  k{i}: 2\n" for i in range(n)))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "spec.yaml:2:1: error[E010]: unknown key 'x' in the spec"


def test_stage_and_block_counts_are_bounded(tmp_path):
    stage = "{block: basic, blocks: 1, planes: 8}"
    r = validate(tmp_path, "graphres: 1\nstages: [" + ", ".join([stage] * 65) + "]\n")
    assert r.stderr.splitlines()[0] == "spec.yaml:2:9: error[E014]: stages lists 65 stages; at most 64 are allowed"
    stage = "{block: basic, blocks: 1000, planes: 8, stride: 2}"
    r = validate(tmp_path, "graphres: 1\nstages: [" + ", ".join([stage] * 10) + ", {block: basic, blocks: 5, planes: 8, stride: 2}]\n")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == (
        "spec.yaml:2:9: error[E014]: the stages have 10,005 blocks in all; at most 10,000 are allowed")


def test_python_mappings_have_the_same_limits():
    import graphres
    from graphres import SpecError

    looped: list = []
    looped.append(looped)
    cases = [(10 ** 5000, "<dict>: error[E061]: integer of about 5,000 digits at stages.0.planes is too large"),
             (2 ** 70, "<dict>: error[E061]: integer 1180591620717411303424 at stages.0.planes is too large"),
             (looped, "<dict>: error[E062]: the mapping is too deeply nested: more than 32 levels (at stages.0.planes"
                      ".0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0)"),
             (list(range(60_000)), "<dict>: error[E062]: the mapping is too large: more than 50,000 values")]
    for value, headline in cases:
        with pytest.raises(SpecError) as e:
            graphres.compile_spec({"graphres": 1, "stages": [{"block": "basic", "blocks": 2, "planes": value}]})
        assert [d.headline() for d in e.value.diagnostics] == [headline]
