"""docs/diagnostics.md and the code agree: every code has a section, and every example there
produces exactly the text shown (golden: headline, source line, caret, notes and hint)."""
import json
import re

import pytest

import graphres
from graphres import SpecError
from graphres.diagnostics import CODES, format_diagnostic
from graphres.spec.pyconfig import read_config

from conftest import ROOT

DOC = (ROOT / "docs" / "diagnostics.md").read_text()
SECTIONS = dict(re.findall(r"^## ([EW]\d{3}): .*?\n(.*?)(?=^## |\Z)", DOC, flags=re.S | re.M))


def test_every_code_is_documented_and_every_section_is_a_code():
    assert sorted(SECTIONS) == sorted(CODES)


def test_section_titles_match_the_catalogue():
    titles = dict(re.findall(r"^## ([EW]\d{3}): (.*)$", DOC, flags=re.M))
    assert {c: t.replace("`", "") for c, t in titles.items()} == CODES


@pytest.mark.parametrize("code", sorted(CODES))
def test_example_gives_the_documented_message(code, tmp_path, monkeypatch):
    body = SECTIONS[code]
    expected = re.search(r"```text\n(.*?)\n```", body, re.S).group(1)
    spec = re.search(r"```yaml\n(.*?)```", body, re.S)
    overrides = json.loads(m.group(1)) if (m := re.search(r"<!-- set: (.*?) -->", body)) else []
    target = m.group(1) if (m := re.search(r"<!-- file: (.*?) -->", body)) else "spec.yaml"
    monkeypatch.chdir(tmp_path)
    for name, value in (json.loads(m.group(1)) if (m := re.search(r"<!-- env: (.*?) -->", body)) else {}).items():
        monkeypatch.setenv(name, value)
    if spec:
        (tmp_path / "spec.yaml").write_text(spec.group(1))
    configs = re.findall(r"```python\n(.*?)```", body, re.S)  # graphres import: config.py (+ # file: NAME)
    for text in configs:
        name = m.group(1) if (m := re.match(r"# file: (\S+)\n", text)) else "config.py"
        (tmp_path / name).write_text(text)
    try:
        if configs:
            imported = read_config("config.py")
            diags, sources = imported.warnings, imported.sources
        else:
            if "<!-- build -->" in body:  # a refusal of graphres.build, after the spec compiled
                graphres.build(target, overrides)
            compiled = graphres.compile_spec(target, overrides)
            diags, sources = compiled.warnings, compiled.sources
    except SpecError as e:
        diags, sources = e.diagnostics, e.sources
    assert diags, "the example compiled cleanly"
    assert diags[0].code == code
    assert format_diagnostic(diags[0], sources, False).rstrip("\n") == expected
