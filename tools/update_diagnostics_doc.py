"""Rewrite each ```text block of docs/diagnostics.md with its example's full diagnostic text.

    .venv/bin/python tools/update_diagnostics_doc.py [ROOT]

Review the diff afterwards; tests/test_diagnostics_doc.py checks the file against the code.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import graphres
from graphres import SpecError
from graphres.diagnostics import format_diagnostic
from graphres.spec.pyconfig import read_config


def section_text(body: str) -> str:
    """Compile a section's example (in a temporary folder) and format its first diagnostic."""
    spec = re.search(r"```yaml\n(.*?)```", body, re.S)
    overrides = json.loads(m.group(1)) if (m := re.search(r"<!-- set: (.*?) -->", body)) else []
    target = m.group(1) if (m := re.search(r"<!-- file: (.*?) -->", body)) else "spec.yaml"
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            if spec:
                Path("spec.yaml").write_text(spec.group(1))
            configs = re.findall(r"```python\n(.*?)```", body, re.S)  # graphres import examples
            for text in configs:
                name = m.group(1) if (m := re.match(r"# file: (\S+)\n", text)) else "config.py"
                Path(name).write_text(text)
            env = json.loads(m.group(1)) if (m := re.search(r"<!-- env: (.*?) -->", body)) else {}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                if configs:
                    imported = read_config("config.py")
                    diags, sources = imported.warnings, imported.sources
                else:
                    if "<!-- build -->" in body:
                        graphres.build(target, overrides)
                    compiled = graphres.compile_spec(target, overrides)
                    diags, sources = compiled.warnings, compiled.sources
            except SpecError as e:
                diags, sources = e.diagnostics, e.sources
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            return format_diagnostic(diags[0], sources, False).rstrip("\n")
        finally:
            os.chdir(cwd)


def main() -> int:
    doc = Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "docs" / "diagnostics.md"
    out = []
    for part in re.split(r"(?=^## )", doc.read_text(), flags=re.M):
        if re.match(r"## [EW]\d{3}: ", part) and "```text\n" in part:
            full = section_text(part)
            part = re.sub(r"```text\n.*?\n```", lambda _: "```text\n" + full + "\n```", part, count=1, flags=re.S)
        out.append(part)
    doc.write_text("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
