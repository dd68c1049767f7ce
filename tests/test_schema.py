"""graphres schema: the JSON Schema of the spec language, generated from the reader's tables."""
import json
import textwrap

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

from conftest import ROOT, SPECS, run_cli  # noqa: E402
from graphres.diagnostics import SpecError  # noqa: E402
from graphres.ops import ACT_TYPES, CONV_TYPES, NORM_TYPES, OPS  # noqa: E402
from graphres.spec import blocks, model, shorthand  # noqa: E402
from graphres.spec.load import load_spec  # noqa: E402
from graphres.spec.schema import schema_json, spec_schema  # noqa: E402

SCHEMA = spec_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DEFS = SCHEMA["$defs"]
BUILTINS = blocks.builtin_blocks()


def errors(text: str, validator=VALIDATOR) -> list[tuple[str, str]]:
    """(path, keyword) of every schema error of a YAML text, sorted."""
    data = yaml.safe_load(textwrap.dedent(text))
    return sorted(("/".join(map(str, e.absolute_path)), str(e.validator)) for e in validator.iter_errors(data))


def props(schema: dict) -> list[str]:
    return [k for k in schema["properties"] if k not in ("_base_", "_delete_")]


def obj(schema: dict) -> dict:
    """The mapping branch of a nullable or shorthand-or-mapping definition."""
    return next(s for s in schema["anyOf"] if s.get("type") == "object") if "anyOf" in schema else schema


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert spec_schema() == SCHEMA  # deterministic


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_shipped_spec_validates(spec):
    assert errors(spec.read_text()) == []


R18 = "stages:\n  - {block: basic, blocks: 2, planes: 64}\n"


@pytest.mark.parametrize("text, expected", [
    ("stages: [{block: basic, blocks: 2, planes: 64}]\nfrozen_stage: 1\n", [("", "additionalProperties")]),
    ("stages: [{block: basic, blocks: 2, plnes: 64}]\n",
     [("stages/0", "additionalProperties"), ("stages/0", "required")]),
    ("stages: [{block: basic, blocks: 2, planes: 64, stride: two}]\n",
     [("stages/0/stride", "anyOf"), ("stages/0/stride", "anyOf")]),
    ("stages: [{block: basic, blocks: 0, planes: 64}]\n", [("stages/0/blocks", "minimum")]),
    ("stages: [{block: bottlenek, blocks: 2, planes: 64}]\n", [("stages/0/block", "anyOf")]),
    ("stages: [{block: basic, blocks: 2, planes: 64, style: cafe}]\n",
     [("stages/0/style", "anyOf")]),
    ("stages: []\n", [("stages", "minItems")]),
    ("name: r18\n", [("", "required")]),
    ("graphres: 2\n" + R18, [("graphres", "const")]),
    ("input: {size: [224]}\n" + R18, [("input/size", "anyOf")]),
    ("input: {channels: three}\n" + R18, [("input/channels", "type")]),
    ("norm: {type: BatchNorm2d}\n" + R18, [("norm/type", "enum")]),
    ("norm: {type: GN}\n" + R18, [("norm", "required")]),
    ("norm: {type: BN, num_groups: 2}\n" + R18, [("norm", "None")]),  # a false schema: the key is refused
    ("norm: {type: BN, eps: -1}\n" + R18, [("norm/eps", "minimum")]),
    ("conv: {type: DCN}\n" + R18, [("conv", "anyOf")]),
    ("act: swish\n" + R18, [("act", "anyOf")]),
    ("stem: {type: conv7x8}\n" + R18, [("stem/type", "enum")]),
    ("stem: {type: conv7x7, channel: 32}\n" + R18, [("stem", "additionalProperties")]),
    ("output_stride: 4\n" + R18, [("output_stride", "enum")]),
    ("out_indices: [0, 0]\n" + R18, [("out_indices", "anyOf")]),
    ("frozen_stages: -2\n" + R18, [("frozen_stages", "minimum")]),
    ("norm_eval: yes please\n" + R18, [("norm_eval", "type")]),
    ("head: {num_classes: 0}\n" + R18, [("head", "anyOf")]),
    ("block_args: {stlye: caffe}\n" + R18, [("block_args", "additionalProperties")]),
    ("blocks: {basic: {out_channels: 1, layers: [{op: norm}]}}\n" + R18, [("blocks", "not")]),
    ("""
     blocks:
       mine:
         out_channels: in_channels
         layers:
           - {op: conv, out: 3, kernl: 3}
           - {op: convv}
           - {seq: x, layers: [{op: norm}], foo: 1}
           - {op: act, type: swish}
     stages: [{block: mine, blocks: 1}]
     """, [("blocks/mine/layers/0", "additionalProperties"), ("blocks/mine/layers/0", "required"),
           ("blocks/mine/layers/1/op", "enum"), ("blocks/mine/layers/2", "additionalProperties"),
           ("blocks/mine/layers/3/type", "enum")]),
    ("blocks: {mine: {kind: neck, params: {in_channels: int, p: list}, layers: [{op: norm}]}}\n"
     "stages: [{block: mine, blocks: 1}]\n",
     [("blocks/mine", "required"), ("blocks/mine/kind", "enum"), ("blocks/mine/params", "not"),
      ("blocks/mine/params/p", "anyOf")]),
    ("backbone: {type: ResNet, depth: 51}\n", [("backbone/depth", "enum")]),
    ("backbone: {type: ResNeXt, depth: 18}\n", [("backbone/depth", "enum")]),
    ("backbone: {type: ResNet, depth: 50, grops: 32}\n", [("backbone", "additionalProperties")]),
    ("backbone: {type: ResNet, depth: 50, groups: 32}\n", [("backbone", "None")]),
    ("backbone: {type: ResNet, depth: 50, contract_dilation: true}\n", [("backbone", "None")]),
    ("backbone: {type: ResNet, depth: 50, num_stages: 5}\n", [("backbone/num_stages", "maximum")]),
    ("backbone: {type: ResNet, depth: 50, dcn: {type: DCNv3}}\n", [("backbone/dcn", "anyOf")]),
    # init_cfg.prefix is supported (issue 11); a non-string prefix is not
    ("backbone: {type: ResNet, depth: 50, init_cfg: {type: Pretrained, checkpoint: x, prefix: 3}}\n",
     [("backbone/init_cfg", "anyOf")]),
    ("backbone: {type: ResNet, depth: 50}\nnorm: {type: BN}\n", [("", "additionalProperties")]),
    ("backbone: {depth: 50}\n", [("backbone", "required")]),
])
def test_unknown_keys_and_wrong_values_fail(text, expected):
    assert errors(text) == sorted(expected)


@pytest.mark.parametrize("text", [
    "backbone: {type: mmseg.ResNetV1c, depth: 50, contract_dilation: true, multi_grid: [1, 2, 4]}\n",
    "default_scope: mmseg\nbackbone: {type: ResNet, depth: 50, contract_dilation: true}\n",
    "backbone: {type: mmdet.ResNeXt, depth: 101, groups: 64, base_width: 4}\n",
    "backbone: {type: ResNet, depth: 50, dcn: {type: DCNv2, deform_groups: 4, fallback_on_stride: false},\n"
    "           stage_with_dcn: [false, true, true, true]}\n",
    "norm: {type: GN, num_groups: 32}\nconv: {type: ConvWS, eps: 1.0e-5}\nact: {type: silu}\n" + R18,
    "stages:\n  - {block: [basic, basic], blocks: 2, planes: [64, 32], dilation: [1, 2]}\n",
    "init: {type: pretrained, checkpoint: r.pth}\nhead: {num_classes: 10}\nout_indices: 0\n" + R18,
])
def test_valid_variants_pass(text):
    assert errors(text) == []


def test_a_base_child_may_be_partial_but_not_wrong():
    """A file with _base_ is checked key by key, but requires nothing: its bases may give it."""
    assert errors("_base_: r50.yaml\nnorm: {type: GN}\n") == []
    assert errors("_base_: [a.yaml, b.yaml]\nbackbone: {depth: 101}\n") == []
    assert errors("_base_: r50.yaml\nnorm: {type: GN, _delete_: true}\nfrozen_stage: 1\n") == [
        ("", "additionalProperties")]
    assert errors("_base_: r50.yaml\nstages: [{block: basic, blocks: two}]\n") == [
        ("stages/0", "required"), ("stages/0/blocks", "type")]  # a list replaces: its items are whole
    assert errors("norm: {type: GN}\n") == [("", "required"), ("norm", "required")]
    fragment = jsonschema.Draft202012Validator(spec_schema(partial=True))
    assert errors("norm: {type: GN}\n", fragment) == []
    assert errors("norm: {type: LN}\n", fragment) == [("norm/type", "enum")]


def test_every_key_has_a_description_with_its_type():
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and not sub.get("description") and not where.endswith("if"):
                    missing.append(f"{where}/{key}")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")
    walk(SCHEMA, "")
    # keys refined under a condition (if/then/else) are described where they are defined
    assert [m for m in missing if not any(c in m for c in ("/if/", "/then/", "/else/"))] == []
    for rule in DEFS["stage"]["allOf"] + DEFS["stem"]["allOf"]:
        assert all(v is True or v["description"] for v in rule["then"]["properties"].values())
    stride = DEFS["stage"]["properties"]["stride"]["description"]
    assert stride == ("Given to the first block of the stage only (a list: one per block).\n\n"
                      "integer >= 1 or array of integer >= 1")
    assert DEFS["norm"]["properties"]["type"]["description"].endswith(
        '\n\none of "BN", "SyncBN", "FrozenBN", "GN", "IN", "BN2d", "IN2d"; default "BN"')


def test_the_schema_says_what_the_readers_tables_say():
    explicit = DEFS["explicit"]
    assert props(explicit) == list(model.TOP_KEYS)
    assert props(DEFS["input"]) == list(model.INPUT_KEYS)
    assert props(DEFS["norm"]) == list(model.NORM_KEYS)
    assert props(obj(DEFS["conv"])) == list(model.CONV_KEYS)
    assert props(obj(DEFS["act"])) == list(model.ACT_KEYS)
    assert props(obj(DEFS["head"])) == list(model.HEAD_KEYS)
    assert props(obj(DEFS["init"])) == list(model.INIT_KEYS)
    assert props(DEFS["stage"]) == list(model.STAGE_FIELDS)
    assert props(DEFS["shorthand"]) == list(shorthand.OUTER_KEYS)
    extra = [k for t in shorthand.TYPES.values() for k in t[3]]
    assert props(DEFS["backbone"]) == list(shorthand.COMMON_KEYS) + extra + list(shorthand.MMSEG_KEYS)
    assert props(obj(DEFS["init_cfg"])) == list(shorthand.INIT_CFG_KEYS)
    assert props(DEFS["block_def"]) == list(blocks.BLOCK_KEYS)
    assert props(obj(DEFS["param_decl"])) == list(blocks.PARAM_KEYS)
    assert props(DEFS["seq_layer"]) == list(blocks.SEQ_KEYS)
    assert props(DEFS["use_layer"]) == list(blocks.USE_KEYS)
    assert props(DEFS["op_layer"])[:len(blocks.LAYER_KEYS)] == list(blocks.LAYER_KEYS)
    # enums
    assert DEFS["norm"]["properties"]["type"]["enum"] == list(NORM_TYPES) + ["BN2d", "IN2d"]
    assert obj(DEFS["conv"])["properties"]["type"]["enum"] == list(CONV_TYPES)
    assert DEFS["act"]["anyOf"][0]["enum"] == list(ACT_TYPES)
    assert DEFS["op_layer"]["properties"]["op"]["enum"] == list(OPS)
    assert explicit["properties"]["output_stride"]["enum"] == list(model.OUTPUT_STRIDES)
    assert explicit["properties"]["graphres"]["const"] == model.FORMAT_VERSION
    assert obj(DEFS["init"])["properties"]["type"]["enum"] == list(model.INIT_TYPES)
    assert DEFS["shorthand"]["properties"]["default_scope"]["enum"] == list(shorthand.SCOPES)
    assert DEFS["backbone"]["properties"]["type"]["enum"] == (
        list(shorthand.TYPES) + [f"mmdet.{t}" for t in shorthand.TYPES] + [f"mmseg.{t}" for t in shorthand.MMSEG_TYPES])
    assert DEFS["backbone"]["properties"]["depth"]["enum"] == list(shorthand.ARCH)
    assert DEFS["block_def"]["properties"]["kind"]["enum"] == list(blocks.BLOCK_KINDS)
    assert obj(DEFS["param_decl"])["properties"]["type"]["enum"] == list(blocks.PARAM_TYPES)
    # the built-in block and stem types, read from graphres/blocks/*.yaml
    assert DEFS["block_type"]["enum"] == [n for n, b in BUILTINS.items() if b.kind == "block"] == ["basic", "bottleneck"]
    assert DEFS["stem_type"]["enum"] == [n for n, b in BUILTINS.items() if b.kind == "stem"] == ["conv7x7", "deep"]
    # what each built-in block accepts in a stage, and each op in a layer
    for rule in DEFS["stage"]["allOf"]:
        block = BUILTINS[rule["if"]["properties"]["block"]["const"]]
        assert [k for k in rule["then"]["properties"] if k != "_delete_"] == \
            ["block", "blocks", "frozen", "plugins", "plugin_mode"] + list(block.params)
    for rule in DEFS["op_layer"]["allOf"]:
        op = OPS[rule["if"]["properties"]["op"]["const"]]
        assert [k for k in rule["then"]["properties"] if k != "_delete_"] == list(blocks.LAYER_KEYS) + list(op.attrs)


def _known_keys(text: str, tmp_path) -> list[str]:
    """The keys the reader lists when it meets the unknown key 'zzqx' (its E010 hint)."""
    path = tmp_path / "probe.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    hints = [d.hint for d in e.value.diagnostics if d.code == "E010" and "zzqx" in d.message]
    assert len(hints) == 1, [d.headline() for d in e.value.diagnostics]
    return hints[0].split(": ", 1)[1].split(", ")


@pytest.mark.parametrize("text, schema_keys", [
    ("zzqx: 1\n" + R18, lambda: props(DEFS["explicit"])),
    ("input: {zzqx: 1}\n" + R18, lambda: props(DEFS["input"])),
    ("norm: {zzqx: 1}\n" + R18, lambda: props(DEFS["norm"])),
    ("conv: {zzqx: 1}\n" + R18, lambda: props(obj(DEFS["conv"]))),
    ("act: {type: relu, zzqx: 1}\n" + R18, lambda: props(obj(DEFS["act"]))),
    ("head: {num_classes: 2, zzqx: 1}\n" + R18, lambda: props(obj(DEFS["head"]))),
    ("init: {zzqx: 1}\n" + R18, lambda: props(obj(DEFS["init"]))),
    ("zzqx: 1\nbackbone: {type: ResNet, depth: 50}\n", lambda: props(DEFS["shorthand"])),
    ("backbone: {type: ResNeXt, depth: 50, zzqx: 1}\n", lambda: props(DEFS["backbone"])),
    ("backbone: {type: ResNet, depth: 50, init_cfg: {type: Pretrained, checkpoint: x, zzqx: 1}}\n",
     lambda: props(obj(DEFS["init_cfg"]))),
    ("blocks: {b: {zzqx: 1, out_channels: 1, layers: [{op: norm}]}}\n" + R18, lambda: props(DEFS["block_def"])),
    ("blocks: {b: {params: {p: {type: int, zzqx: 1}}, out_channels: 1, layers: [{op: norm}]}}\n" + R18,
     lambda: props(obj(DEFS["param_decl"]))),
    ("blocks: {b: {out_channels: 1, layers: [{seq: s, zzqx: 1, layers: [{op: norm}]}]}}\n" + R18,
     lambda: props(DEFS["seq_layer"])),
    ("blocks: {b: {out_channels: 1, layers: [{op: conv, out: 1, kernel: 1, zzqx: 1}]}}\n" + R18,
     lambda: [k for k in DEFS["op_layer"]["allOf"][0]["then"]["properties"] if k != "_delete_"]),
    ("stages: [{block: bottleneck, blocks: 1, planes: 4, zzqx: 1}]\n",
     lambda: [k for k in DEFS["stage"]["allOf"][1]["then"]["properties"]
              if k not in ("block", "blocks", "frozen", "plugins", "plugin_mode", "_delete_")]),
])
def test_the_reader_knows_the_same_keys(text, schema_keys, tmp_path):
    """Probed through the reader itself: the keys its 'unknown key' hint lists are the schema's."""
    assert sorted(_known_keys(text, tmp_path)) == sorted(schema_keys())


def test_the_draft_7_form_says_the_same(tmp_path):
    """The YAML language server of VS Code and Neovim reads draft 7: the same checks, written so."""
    seven = spec_schema(draft="7")
    jsonschema.Draft7Validator.check_schema(seven)
    assert seven["$schema"] == "http://json-schema.org/draft-07/schema#"
    validator = jsonschema.Draft7Validator(seven)
    for spec in SPECS:
        assert errors(spec.read_text(), validator) == [], spec.name
    assert errors("stages: [{block: basic, blocks: 2, plnes: 64}]\n", validator) == [
        ("stages/0", "additionalProperties"), ("stages/0", "required")]
    assert errors("norm: {type: GN}\n" + R18, validator) == [("norm", "required")]
    assert errors("_base_: x.yaml\nnorm: {type: GN}\n", validator) == []
    # a reference with a description: draft 7 ignores the siblings of $ref, so it is wrapped
    assert seven["$defs"]["explicit"]["properties"]["input"]["allOf"] == [{"$ref": "#/$defs/input"}]
    assert run_cli("schema", "--draft", "7").stdout == schema_json(draft="7")


def test_cli_prints_the_schema(tmp_path):
    out = run_cli("schema")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == schema_json() and json.loads(out.stdout) == SCHEMA
    out = run_cli("schema", "--partial", "-o", tmp_path / "s.json")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert json.loads((tmp_path / "s.json").read_text()) == spec_schema(partial=True)


def test_docs_explain_the_editor_setup():
    text = (ROOT / "docs" / "editor.md").read_text()
    assert "# yaml-language-server: $schema=" in text and "yaml.schemas" in text
