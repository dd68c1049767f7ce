"""Rewrite each ```text block of docs/diagnostics.md with its example's full diagnostic text.

Usage: .venv/bin/python tools/update_diagnostics_doc.py .   (then review the diff; tests/test_diagnostics_doc.py
checks the file)."""
import json, os, re, sys, tempfile
from pathlib import Path
import graphres
from graphres import SpecError
from graphres.diagnostics import format_diagnostic
root = Path(sys.argv[1]); doc = root / "docs/diagnostics.md"
text = doc.read_text()
def section_text(code, body):
    spec = re.search(r"```yaml\n(.*?)```", body, re.S)
    overrides = json.loads(m.group(1)) if (m := re.search(r"<!-- set: (.*?) -->", body)) else []
    target = m.group(1) if (m := re.search(r"<!-- file: (.*?) -->", body)) else "spec.yaml"
    d = tempfile.mkdtemp(); cwd = os.getcwd(); os.chdir(d)
    try:
        if spec: Path("spec.yaml").write_text(spec.group(1))
        try:
            c = graphres.compile_spec(target, overrides); diags, src = c.warnings, c.sources
        except SpecError as e:
            diags, src = e.diagnostics, e.sources
        return format_diagnostic(diags[0], src, False).rstrip("\n")
    finally:
        os.chdir(cwd)
out = []
parts = re.split(r"(?=^## )", text, flags=re.M)
for part in parts:
    m = re.match(r"## ([EW]\d{3}): ", part)
    if m and "```text\n" in part:
        full = section_text(m.group(1), part)
        part = re.sub(r"```text\n.*?\n```", lambda _: "```text\n" + full + "\n```", part, count=1, flags=re.S)
    out.append(part)
doc.write_text("".join(out))
