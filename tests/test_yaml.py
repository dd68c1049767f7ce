"""Bad YAML never becomes a traceback: syntax, tabs, duplicate keys, tags, all located."""
import pytest

from graphres import SpecError
from graphres.diagnostics import SourceCache
from graphres.spec.source import parse_yaml


def headlines(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_yaml(text, "s.yaml")
    return [d.headline() for d in e.value.diagnostics]


def test_syntax_error():
    assert headlines("stages: [1, 2\nname: x\n") == [
        "s.yaml:2:5: error[E001]: invalid YAML: expected ',' or ']', but got ':'"]


def test_tab_indentation():
    assert headlines("stages:\n\t- 1\n") == ["s.yaml:2:1: error[E001]: invalid YAML: tab character used for indentation"]


def test_duplicate_keys_all_reported():
    assert headlines("a: 1\nb: 2\na: 3\nc: {x: 1, x: 2}\n") == [
        "s.yaml:3:1: error[E002]: duplicate key 'a'",
        "s.yaml:4:11: error[E002]: duplicate key 'x'"]


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['echo hi']", "!!python/name:os.system ''",
                                 "!custom 3", "!!binary aGk="])
def test_tags_refused(tag):
    [line] = headlines(f"stages: {tag}\n")
    assert line.startswith("s.yaml:1:9: error[E003]: YAML tag ")


def test_non_scalar_key():
    assert headlines("? [a, b]\n: 1\n") == ["s.yaml:1:3: error[E011]: mapping keys must be plain strings or numbers"]


def test_alias_bomb_is_bounded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    [line] = headlines("\n".join(lines) + "\n")
    assert "too large" in line


def test_spans_point_inside_quotes_and_caret_printer():
    from graphres.diagnostics import Diagnostic, format_diagnostic
    sources = SourceCache()
    doc = parse_yaml("name: 'abc'\nsize: [1, 22]\n", "s.yaml", sources)
    assert doc.spans[("name",)].col == 8 and doc.spans[("name",)].length == 3
    span = doc.spans[("size", 1)]
    assert (span.line, span.col, span.length) == (2, 11, 2)
    d = Diagnostic("E014", "too big", span, "make it smaller")
    assert format_diagnostic(d, sources) == (
        "s.yaml:2:11: error[E014]: too big\n"
        "  |\n"
        "2 | size: [1, 22]\n"
        "  |           ^^\n"
        "  = hint: make it smaller")


def test_merge_keys_and_anchors_resolve():
    doc = parse_yaml("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n", "s.yaml")
    assert doc.data["mine"] == {"x": 1, "y": 3}


def test_empty_document_is_empty_mapping():
    assert parse_yaml("# nothing\n", "s.yaml").data == {}
