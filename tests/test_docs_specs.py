"""docs/specs.md lists every shipped spec with the numbers graphres computes for it."""
import re

import graphres

from conftest import ROOT, SPECS

ROWS = re.findall(r"^\| (specs/\S+\.yaml) \| .*? \| (explicit|shorthand) \| ([\d,]+) \| ([\d,]+) \| (\d+) \|$",
                  (ROOT / "docs" / "specs.md").read_text(), flags=re.M)


def test_the_table_lists_every_spec_once():
    assert sorted(r[0] for r in ROWS) == sorted(f"specs/{p.name}" for p in SPECS)


def test_the_table_numbers_are_the_computed_ones():
    for path, form, params, macs, stride in ROWS:
        compiled = graphres.compile_spec(ROOT / path, input_size=(224, 224))
        g = compiled.graph.graph
        assert (form == "shorthand") == ("\nbackbone:" in (ROOT / path).read_text()), path
        assert f"{g['params']:,}" == params, path
        assert f"{g['macs']:,}" == macs, path
        assert g["stages"][-1]["stride"] == int(stride), path
