"""Parse stage, the spec language as data: a JSON Schema (draft 2020-12) for editors and CI.

Generated from the reader's own tables (the key tuples of :mod:`.model`, :mod:`.shorthand` and
:mod:`.blocks`, the op table and the norm/act/conv types of :mod:`graphres.ops`, and the built-in
block and stem types read from ``graphres/blocks/*.yaml`` by the block parser), so a key the reader
learns appears here too; the descriptions below are keyed by those tables, and a key without one
stops the generator (``tests/test_schema.py`` holds the two in step).

The schema says what can be checked key by key: names, types, ranges and choices, and which keys
a built-in block or stem accepts. What needs the whole network (channels, spatial sizes,
out_indices against the number of stages) stays with ``graphres validate``.

A file with ``_base_`` may be partial: it is checked key by key, but no key is required, since the
base files may give it. ``graphres schema --partial`` writes that relaxed form for files that are
only ever used as a ``_base_`` (fragments).
"""
from __future__ import annotations

import json
from typing import Any

from ..ops import ACT_TYPES, CONV_TYPES, NORM_TYPES, OPS, REQUIRED
from . import model, shorthand
from .blocks import (INIT_CHOICES, BLOCK_KEYS, BLOCK_KINDS, IMPLICIT_NAMES, LAYER_KEYS, PARAM_KEYS, PARAM_TYPES, SEQ_KEYS,
                     STR_ATTRS, USE_KEYS, BlockDef, ParamDef, builtin_blocks)
from .reader import MISSING

DRAFTS = {"2020-12": "https://json-schema.org/draft/2020-12/schema",
          "7": "http://json-schema.org/draft-07/schema#"}
DRAFT = DRAFTS["2020-12"]
NORM_MMCV_NAMES = ("BN2d", "IN2d")  # accepted by the reader as BN and IN (mmcv registers them)

# -- what each key means (keyed by the reader's tables; the types come from the same tables) --------

TOP_DOCS = {
    "graphres": "Format version of the spec language.",
    "name": "The model's name: used in messages, as the diagram title and as model.spec_name.",
    "input": "The input the static analysis assumes: channels and size.",
    "norm": "The normalisation layer of every 'norm' layer of every block.",
    "conv": "The convolution type of every 'conv' layer (null means Conv2d).",
    "act": "The activation of every 'act' layer that does not name its own type.",
    "stem": "The stem (the layers before layer1): its type and that type's parameters.",
    "stages": "One entry per stage, named layer1, layer2, ... in order.",
    "block_args": "Block parameters given to every stage whose block type declares them.",
    "output_stride": "Trade the strides that would reduce the resolution further for dilation "
                     "(torchvision's replace_stride_with_dilation), and check the result.",
    "out_indices": "Which stage outputs forward returns, counted from 0 (0 is layer1); default every stage.",
    "frozen_stages": "-1 freezes nothing, 0 the stem, k the stem and layer1..layerk.",
    "norm_eval": "Keep every BatchNorm/SyncBN in eval mode while training.",
    "zero_init_residual": "Start the last norm of each residual branch at weight 0, bias 0.",
    "with_cp": "Run each block under activation checkpointing (when its input requires a gradient).",
    "init": "{type: pretrained, checkpoint: PATH} loads weights after initialisation; null: "
            "OpenMMLab's default initialisation.",
    "head": "{num_classes: N} adds torchvision's classifier (avgpool + fc); null: a backbone.",
    "blocks": "Block and stem types declared in this spec, by name (see docs/blocks.md).",
}
BASE_DOC = ("Files this one inherits from (paths relative to this file), merged under it in order: "
            "mappings merge key by key, anything else replaces. This file may then be partial.")
DELETE_DOC = "true: this mapping replaces the base's mapping instead of merging into it."
INPUT_DOCS = {
    "channels": "Channels of the image the stem reads.",
    "size": "[height, width], or one integer for a square; used by the static analysis, the diagrams "
            "and as the example input of graphres compile.",
}
NORM_DOCS = {
    "type": "BN: BatchNorm2d, SyncBN: SyncBatchNorm, FrozenBN: a BatchNorm2d that never trains, "
            "GN: GroupNorm, IN: InstanceNorm2d (mmcv's BN2d and IN2d mean BN and IN).",
    "requires_grad": "false makes every norm's weight and bias non-trainable (default true; false for FrozenBN).",
    "eps": "Added to the variance.",
    "momentum": "Running-statistics momentum of BN and SyncBN; null: a cumulative average (default 0.1).",
    "num_groups": "Number of groups of GN (required for GN, refused for the other types); must divide "
                  "the channels of every norm layer.",
    "affine": "Whether the norm has a learnable weight and bias (default true; false for IN).",
}
CONV_DOCS = {
    "type": "Conv2d, or ConvWS (weight standardisation, mmcv's ConvWS2d).",
    "eps": "ConvWS only: added to the weight's standard deviation.",
}
ACT_DOCS = {"type": "The activation function."}
STAGE_DOCS = {
    "block": "The block type: a built-in one or one declared under 'blocks:'; a list gives one type "
             "per block.",
    "blocks": "How many instances of the block the stage chains.",
    "planes": "The built-in blocks' width: basic outputs planes channels, bottleneck planes * expansion.",
    "stride": "Given to the first block of the stage only (a list: one per block).",
    "dilation": "Given to every block of the stage: one integer, or a list with one per block.",
    "frozen": "true freezes this stage (eval mode, no gradients), besides frozen_stages' prefix.",
    "plugins": "Attention blocks inserted into every block of the stage: {position: after_conv3, block: "
               "context_block, ratio: 0.0625}; position is a {slot: ...} layer of the block type.",
    "plugin_mode": "chain (mmdetection): a slot's plugins run one after another; last (mmsegmentation): each "
                   "takes the slot's input and the last result is kept.",
}
PLUGIN_DOCS = {
    "position": "A plugin slot of the stage's block type (bottleneck: after_conv1, after_conv2, after_conv3).",
    "block": "The plugin's block type (context_block, nonlocal_block, or one of yours); its other keys are "
             "the block's parameters.",
    "name": "The module name its layers nest under (default: the block type's name).",
}
HEAD_DOCS = {"num_classes": "Output classes of the fc layer."}
INIT_DOCS = {
    "type": "pretrained loads a checkpoint; default is OpenMMLab's initialisation.",
    "checkpoint": "Path of a checkpoint (torchvision, OpenMMLab, timm, detectron2 layout; .pth, .safetensors, .pkl), "
                  "or a model-zoo name (torchvision://resnet50, open-mmlab://resnext101_32x4d) read from "
                  "$TORCH_HOME/hub/checkpoints.",
    "prefix": "Load only the keys under this prefix (such as 'backbone.'), with the prefix removed.",
}
SHORTHAND_DOCS = {
    "graphres": TOP_DOCS["graphres"],
    "name": TOP_DOCS["name"],
    "input": TOP_DOCS["input"],
    "default_scope": "mmdet (default) or mmseg: whose defaults the backbone type has.",
    "backbone": "An OpenMMLab backbone dict (model.backbone of an mmdetection/mmsegmentation config), as YAML.",
}
BACKBONE_DOCS = {
    "type": "The backbone class; mmdet. or mmseg. names the library (default: default_scope).",
    "depth": "ResNet depth: picks the block type and the blocks per stage.",
    "in_channels": "Input channels (input.channels).",
    "stem_channels": "Stem output channels; null: base_channels (mmsegmentation: 64).",
    "base_channels": "Planes of layer1; stage i has base_channels * 2**i.",
    "num_stages": "How many stages (1 to 4).",
    "strides": "The stride of each stage (one per stage; default [1, 2, 2, 2]).",
    "dilations": "The dilation of each stage (one per stage; default [1, 1, 1, 1]).",
    "out_indices": TOP_DOCS["out_indices"],
    "style": "pytorch: stride on the 3x3 conv; caffe: stride on the first 1x1 conv.",
    "deep_stem": "Three 3x3 convs instead of the 7x7 conv (default from type).",
    "avg_down": "Average-pool before the shortcut conv (default from type).",
    "frozen_stages": TOP_DOCS["frozen_stages"],
    "conv_cfg": "null, {type: Conv2d} (or mmcv's alias {type: Conv}) or {type: ConvWS}; deformable convs: dcn.",
    "norm_cfg": "The norm, as the explicit form's 'norm'.",
    "norm_eval": "Keep BatchNorms in eval mode while training (default true; mmseg: false).",
    "dcn": "Deformable conv2 of the bottlenecks: {type: DCN | DCNv2, deform_groups: 1, fallback_on_stride: false}.",
    "stage_with_dcn": "Which stages get the deformable conv2: one boolean per stage.",
    "plugins": "Not supported yet: null or [].",
    "with_cp": TOP_DOCS["with_cp"],
    "zero_init_residual": TOP_DOCS["zero_init_residual"],
    "init_cfg": "{type: Pretrained, checkpoint: PATH}, or null.",
    "pretrained": "A checkpoint path (deprecated upstream; not together with init_cfg).",
    "groups": "ResNeXt only: groups of the 3x3 convs.",
    "base_width": "ResNeXt only: width per group.",
    "contract_dilation": "mmsegmentation only: the first block of a dilated stage gets half the dilation.",
    "multi_grid": "mmsegmentation only: the last stage's dilations, one per block.",
}
INIT_CFG_DOCS = {
    "type": "Only Pretrained is supported.",
    "checkpoint": INIT_DOCS["checkpoint"],
    "prefix": INIT_DOCS["prefix"],
    "map_location": "Accepted and not needed: checkpoints are always read onto the CPU.",
}
BLOCK_DOCS = {
    "doc": "A one-line description.",
    "kind": "block (default): usable in stages; stem: usable as stem: {type: NAME}; plugin: usable in a "
            "stage's plugins or a layer's block: (attention blocks).",
    "params": "Parameter declarations: name -> type name, or {type, default, choices, min, doc}.",
    "let": "Derived values, in order: name -> expression.",
    "out_channels": "An expression: the channels of the block's output.",
    "layers": "The layers: op layers, seq groups and uses of other block types.",
    "modules": "The order its modules are declared in (state-dict order), as a reference implementation's "
               "__init__; unlisted modules follow in use order.",
}
PARAM_DOCS = {
    "type": "int, bool, str or float.",
    "default": "The value when nobody gives one; without a default the parameter is required.",
    "choices": "The allowed values.",
    "min": "The smallest allowed value (integers).",
    "doc": "A description.",
}
LAYER_DOCS = {
    "name": "The layer's name (its state-dict name; {norm} becomes bn, gn or in).",
    "op": "A primitive op.",
    "from": "The input: a layer name or a list of names (default: the previous layer).",
    "when": "A boolean or an expression; when false the layer is skipped.",
    "init": "The module's own initialisation after the network's: default, zeros, normal_0.01, kaiming_fan_in, "
            "kaiming_uniform_fan_in_a1 (the attention plugins' mmcv init).",
}
SEQ_DOCS = {
    "seq": "The group's name; its layers are numbered NAME.0, NAME.1, ...",
    "from": LAYER_DOCS["from"],
    "when": "A boolean or an expression; when false the whole group is skipped.",
    "layers": "The group's layers (no names, no groups).",
}
USE_DOCS = {
    "name": "The name its modules nest under (default: the block type's name).",
    "block": "The block type this layer instantiates.",
    "from": LAYER_DOCS["from"],
    "when": LAYER_DOCS["when"],
}
ATTR_DOCS = {
    "out": "Output channels.",
    "kernel": "Kernel size (square).",
    "stride": "Stride (pools: default the kernel size).",
    "padding": "Padding (conv: default dilation * (kernel - 1) // 2).",
    "dilation": "Dilation.",
    "groups": "Groups.",
    "bias": "Whether the layer has a bias.",
    "zero_init": "Start at weight 0, bias 0 when the spec's zero_init_residual is true.",
    "type": "The activation function (default: the spec's act).",
    "ceil_mode": "Round the output size up.",
    "count_include_pad": "Count the padding in the average.",
    "deform_groups": "deform_conv: groups of input channels that share one set of offsets (must divide the input "
                     "channels).",
    "modulated": "deform_conv: false = mmcv's DCN (v1), true = DCNv2 (offsets and a sigmoid mask).",
    "start": "slice: first channel taken; flatten: the first axis merged (axes count from 0 after the batch; "
             "negative from the end).",
    "stop": "slice: channel after the last one taken; -1 = to the end.",
    "chunks": "slice: split the channels into this many equal parts (0 = use start and stop).",
    "index": "slice: which of the chunks to take (0-based).",
    "end": "The last axis merged.",
    "dims": "A list: reshape's sizes (one -1), permute's axis order, layernorm's trailing sizes.",
    "axis": "The axis (0 = the first after the batch; -1 = the last).",
    "size": "How many values the learned parameter has.",
    "value": "The learned parameter's initial value.",
    "sqrt": "Divide by the square root of the axis size.",
    "alone": "bias: give the learned tensor itself (repeated over the batch) instead of adding it to the input.",
    "fan": "bias: start uniform in +-1/sqrt(fan) (0: zeros).",
    "vertical": "position_energy: the y (height) term instead of the x (width) term.",
    "heads": "position_energy: attention heads.",
    "dim": "position_energy: channels per head of the query.",
    "feat": "position_energy: the sine embedding's size (a multiple of 4); its Linear takes feat // 2.",
    "magnitude": "position_energy: a factor on the coordinate differences (mmcv's position_magnitude).",
    "q_stride": "position_energy: the query map's stride with respect to the block input.",
    "kv_stride": "position_energy, local_mask: the key/value map's stride with respect to the block input.",
    "wave_length": "position_energy: the sine embedding's wave length (mmcv: 1000).",
    "transposed": "position_energy: mmcv's y term without geom_bias, the query read with H and W swapped (square maps).",
    "max_len": "local_mask: the largest map side the mask covers (mmcv: 84 for 256 channels, 42 for 512; 0: none).",
    "spatial_range": "local_mask: keys farther than this from the query (in key positions) are masked.",
    "channels": "local_mask: the plugin's input channels (for the message when mmcv has no mask for them).",
}
BLOCK_PARAM_DOCS = {  # the built-in blocks' parameters (their YAML declares no doc)
    "planes": STAGE_DOCS["planes"],
    "channels": "Output channels of the stem (default 64).",
    "stride": STAGE_DOCS["stride"],
    "dilation": STAGE_DOCS["dilation"],
    "style": BACKBONE_DOCS["style"],
    "groups": "Groups of the 3x3 conv (ResNeXt).",
    "base_width": "Width per group (ResNeXt).",
    "base_channels": "The planes of layer1, for ResNeXt's width rule.",
    "width": "The inner width; 0: OpenMMLab's rule from planes, groups and base_width.",
    "expansion": "Output channels = planes * expansion.",
    "avg_down": "Average-pool before the shortcut conv (ResNetV1d).",
    "dcn": "Deformable conv2: none, DCN (v1) or DCNv2 (modulated).",
    "deform_groups": "Deform groups of the deformable conv2.",
    "fallback_on_stride": "Keep the plain conv2 where it strides (with dcn).",
}


def _doc(table: dict[str, str], key: str, where: str) -> str:
    try:
        return table[key]
    except KeyError:
        raise KeyError(f"graphres.spec.schema has no description of {where} key '{key}': add it") from None


# -- small schema builders ----------------------------------------------------------------------------

def _int(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return {**out, **extra}


def _enum(values, **extra: Any) -> dict:
    return {"enum": list(values), **extra}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [{"type": "null"}, schema]}


_BOOL = {"type": "boolean"}
_STR = {"type": "string"}
_EXPR = {"type": ["integer", "boolean", "string"]}  # a literal or an expression string
_SCALAR = {"type": ["integer", "boolean", "string", "number", "null"]}
_NAMES = {"anyOf": [{"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1}]}


def _obj(props: dict[str, dict], docs: dict[str, str], where: str, required=(), closed: bool = True,
         **extra: Any) -> dict:
    """A mapping whose every key has a description from ``docs``."""
    properties = {k: {**v, "description": _doc(docs, k, where)} for k, v in props.items()}
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if closed:
        out["additionalProperties"] = False
    if required:
        out["required"] = list(required)
    return {**out, **extra}


def _param_schema(p: ParamDef) -> dict:
    out: dict[str, Any] = {"type": {int: "integer", bool: "boolean", str: "string", float: "number"}[p.type]}
    if p.choices:
        out["enum"] = list(p.choices)
    if p.min is not None:
        out["minimum"] = p.min
    if p.default is not MISSING:
        out["default"] = p.default
    return out


def _alternatives(schema: dict) -> list:
    """The alternatives of an anyOf schema (the schema itself when it has none)."""
    return list(schema["anyOf"]) if set(schema) == {"anyOf"} else [schema]


def _per_block(schema: dict) -> dict:
    """A stage argument: one value for every block, or a list with one value per block."""
    return {"anyOf": [schema, {"type": "array", "items": schema, "minItems": 1}]}


def _summary(schema: dict) -> str:
    """The type, range and choices of a schema in words, for editors that show only descriptions."""
    if schema is False:
        return "not allowed"
    if "anyOf" in schema:
        return " or ".join(_summary(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return ""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and isinstance(schema.get("items"), dict):
        text = f"array of {_summary(schema['items'])}"
    if "minimum" in schema and "maximum" in schema:
        text += f" {schema['minimum']}..{schema['maximum']}"
    elif "minimum" in schema:
        text += f" >= {schema['minimum']}"
    elif "maximum" in schema:
        text += f" <= {schema['maximum']}"
    return text


def _annotate(node: Any) -> None:
    """Append each key's type, range, choices and default to its description."""
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "description" in sub and "\n" not in sub["description"]:
                tail = _summary({k: v for k, v in sub.items() if k != "description"})
                if "default" in sub:
                    tail += f"; default {json.dumps(sub['default'])}"
                if tail:
                    sub["description"] += f"\n\n{tail}"
        for value in node.values():
            _annotate(value)
    elif isinstance(node, list):
        for value in node:
            _annotate(value)


def _allow_delete(node: Any) -> None:
    """Every closed mapping also accepts ``_delete_`` (the reader strips it everywhere)."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False and "properties" in node:
            node["properties"].setdefault("_delete_", {"type": "boolean", "description": DELETE_DOC})
        for value in node.values():
            _allow_delete(value)
    elif isinstance(node, list):
        for value in node:
            _allow_delete(value)


# -- the definitions ----------------------------------------------------------------------------------

class _Defs:
    """Builds ``$defs``; ``partial`` drops required keys of mappings (a ``_base_`` child)."""

    def __init__(self, partial: bool, prefix: str):
        self.partial = partial
        self.prefix = prefix
        builtins = builtin_blocks()
        self.blocks = {n: b for n, b in builtins.items() if b.kind == "block"}
        self.stems = {n: b for n, b in builtins.items() if b.kind == "stem"}

    def ref(self, name: str) -> dict:
        return {"$ref": f"#/$defs/{self.prefix}{name}"}

    def req(self, *keys: str) -> tuple:
        return () if self.partial else keys

    def build(self) -> dict[str, dict]:
        defs = {
            "explicit": self.explicit(), "shorthand": self.shorthand(), "input": self.input(),
            "norm": self.norm(), "conv": self.conv(), "conv_cfg": self.conv(("Conv",)), "act": self.act(), "stem": self.stem(),
            "stage": self.stage(), "out_indices": self.out_indices(), "init": self.init(), "head": self.head(),
            "backbone": self.backbone(), "init_cfg": self.init_cfg(), "block_def": self.block_def(),
            "param_decl": self.param_decl(), "layer": self.layer(), "op_layer": self.op_layer(),
            "seq_layer": self.seq_layer(), "use_layer": self.use_layer(),
            "block_type": _enum(self.blocks, description="A built-in block type."),
            "stem_type": _enum(self.stems, description="A built-in stem type."),
        }
        return {self.prefix + k: v for k, v in defs.items()}

    def explicit(self) -> dict:
        props = {
            "graphres": {"const": model.FORMAT_VERSION, "default": model.FORMAT_VERSION},
            "name": {"type": "string", "default": "model"},
            "input": self.ref("input"), "norm": self.ref("norm"), "conv": self.ref("conv"), "act": self.ref("act"),
            "stem": self.ref("stem"),
            "stages": {"type": "array", "items": self.ref("stage"), "minItems": 1},
            "block_args": {"type": "object", "additionalProperties": _SCALAR},
            "output_stride": _enum(model.OUTPUT_STRIDES),
            "out_indices": self.ref("out_indices"),
            "frozen_stages": _int(-1, default=-1),
            "norm_eval": {**_BOOL, "default": False},
            "zero_init_residual": {**_BOOL, "default": True},
            "with_cp": {**_BOOL, "default": False},
            "init": self.ref("init"), "head": self.ref("head"),
            "blocks": {"type": "object", "additionalProperties": self.ref("block_def"),
                       "propertyNames": {"not": _enum(list(self.blocks) + list(self.stems))}},
        }
        assert tuple(props) == model.TOP_KEYS, "explicit keys out of step with model.TOP_KEYS"
        out = _obj(props, TOP_DOCS, "spec", required=self.req("stages"))
        out["properties"]["_base_"] = {**_NAMES, "description": BASE_DOC}
        # Without a 'blocks' section every block and stem type must be a built-in one, and every
        # block_args key a parameter of a built-in block.
        params: dict[str, dict] = {}
        for b in self.blocks.values():
            for k, p in b.params.items():
                params.setdefault(k, {**_param_schema(p), "description": BLOCK_PARAM_DOCS.get(k, "")})
        out["if"] = {"required": ["blocks"]}
        out["else"] = {"properties": {
            "stem": {"properties": {"type": self.ref("stem_type")}},
            "stages": {"items": {"properties": {"block": _per_block(self.ref("block_type"))}}},
            "block_args": {"properties": params, "additionalProperties": False},
        }}
        out["description"] = "A graphres spec in the explicit form."
        return out

    def input(self) -> dict:
        return _obj({"channels": _int(1, default=3),
                     "size": {"anyOf": [_int(1, model.MAX_SIZE),
                                        {"type": "array", "items": _int(1, model.MAX_SIZE),
                                         "minItems": 2, "maxItems": 2}],
                              "default": [224, 224]}},
                    INPUT_DOCS, "input")

    def norm(self) -> dict:
        props = {"type": _enum(NORM_TYPES + NORM_MMCV_NAMES, default="BN"), "requires_grad": _BOOL,
                 "eps": {"type": "number", "minimum": 0, "default": 1e-5},
                 "momentum": {"type": ["number", "null"], "default": 0.1},
                 "num_groups": _int(1), "affine": _BOOL}
        assert tuple(props) == model.NORM_KEYS
        out = _obj(props, NORM_DOCS, "norm")
        if not self.partial:  # in a _base_ child the type may come from the base
            out["allOf"] = [
                {"if": {"properties": {"type": {"const": "GN"}}, "required": ["type"]},
                 "then": {"required": ["num_groups"]}, "else": {"properties": {"num_groups": False}}},
                {"if": {"properties": {"type": {"const": "FrozenBN"}}, "required": ["type"]},
                 "then": {"properties": {"requires_grad": {"const": False}}}},
            ]
        return out

    def conv(self, aliases: tuple[str, ...] = ()) -> dict:
        """``conv``; the shorthand's ``conv_cfg`` also takes mmcv's alias ``Conv`` (Conv2d)."""
        props = {"type": _enum(CONV_TYPES + aliases, default="Conv2d"), "eps": {"type": "number", "minimum": 0}}
        assert tuple(props) == model.CONV_KEYS
        out = _obj(props, CONV_DOCS, "conv")
        if not self.partial:
            out["if"] = {"properties": {"type": {"const": "ConvWS"}}, "required": ["type"]}
            out["else"] = {"properties": {"eps": False}}
        return _nullable(out)

    def act(self) -> dict:
        obj = _obj({"type": _enum(ACT_TYPES, default="relu")}, ACT_DOCS, "act", required=self.req("type"))
        return {"anyOf": [_enum(ACT_TYPES), obj]}

    def stem(self) -> dict:
        out = _obj({"type": {"type": "string", "examples": list(self.stems), "default": "conv7x7"}},
                   {"type": "The stem type: a built-in one or one declared under 'blocks:'."}, "stem", closed=False)
        out["additionalProperties"] = _SCALAR  # a parameter of a stem declared in the spec
        out["allOf"] = []
        for name, block in self.stems.items():
            cond: dict[str, Any] = {"properties": {"type": {"const": name}}}
            if name != "conv7x7":  # the default type
                cond["required"] = ["type"]
            out["allOf"].append({"if": cond, "then": self._args(block, {"type": True}, stem=True)})
        return out

    def _args(self, block: BlockDef, fixed: dict, stem: bool = False) -> dict:
        """The keys a stage (or the stem) may give a built-in block: its parameters, typed."""
        props = dict(fixed)
        for k, p in block.params.items():
            s = _param_schema(p)
            props[k] = {**(s if stem else _per_block(s)),
                        "description": BLOCK_PARAM_DOCS.get(k, f"Parameter of '{block.name}'.")}
        required = [k for k, p in block.params.items() if p.default is MISSING and not (stem and k == "channels")]
        out = {"properties": props, "additionalProperties": False}
        if required:
            out["required"] = required
        return out

    def stage(self) -> dict:
        props = {"block": {"anyOf": [{"type": "string", "examples": list(self.blocks)},
                                     {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
                 "blocks": _int(1, model.MAX_BLOCKS),
                 "planes": _per_block(_int(1)),
                 "stride": _per_block(_int(1)),
                 "dilation": _per_block(_int(1)),
                 "frozen": {**_BOOL, "default": False},
                 "plugins": {"type": "array",
                             "items": {**_obj({"position": _STR, "block": _STR, "name": _STR}, PLUGIN_DOCS,
                                              "plugin", required=("position", "block"), closed=False),
                                       "additionalProperties": _SCALAR}},
                 "plugin_mode": _enum(("chain", "last"))}
        assert tuple(props) == model.STAGE_FIELDS
        out = _obj(props, STAGE_DOCS, "stage", required=("block", "blocks"), closed=False)
        out["additionalProperties"] = _per_block(_SCALAR)  # a parameter of a block declared in the spec
        out["allOf"] = [{"if": {"properties": {"block": {"const": name}}, "required": ["block"]},
                         "then": self._args(block, {"block": True, "blocks": True, "frozen": True,
                                                    "plugins": True, "plugin_mode": True})}
                        for name, block in self.blocks.items()]
        return out

    def out_indices(self) -> dict:
        return {"anyOf": [_int(0), {"type": "array", "items": _int(0), "minItems": 1, "uniqueItems": True}]}

    def init(self) -> dict:
        out = _obj({"type": _enum(model.INIT_TYPES), "checkpoint": _STR, "prefix": _STR}, INIT_DOCS, "init")
        if not self.partial:
            out["allOf"] = [
                {"if": {"properties": {"type": {"const": "pretrained"}}, "required": ["type"]},
                 "then": {"required": ["checkpoint"]}},
                {"if": {"properties": {"type": {"const": "default"}}, "required": ["type"]},
                 "then": {"properties": {"checkpoint": False, "prefix": False}}},
            ]
        assert tuple(out["properties"]) == model.INIT_KEYS
        return {"anyOf": _alternatives(_nullable(out)) + [
            self._init_item(tuple(t for t in model.INIT_ITEM_KEYS if t != "pretrained")),
                          {"type": "array", "items": self._init_item(tuple(model.INIT_ITEM_KEYS)), "minItems": 1}]}

    def _init_item(self, types: tuple) -> dict:
        """One of mmengine's initialisers (an init / init_cfg list entry); the reader checks its keys."""
        docs = {"type": "The initialiser: " + ", ".join(types) + " (docs/openmmlab.md)."}
        return _obj({"type": _enum(types)}, docs, "init entry", required=("type",), closed=False)

    def head(self) -> dict:
        out = _obj({"num_classes": _int(1, model.MAX_CLASSES)}, HEAD_DOCS, "head", required=self.req("num_classes"))
        assert tuple(out["properties"]) == model.HEAD_KEYS
        return _nullable(out)

    # -- the shorthand

    def shorthand(self) -> dict:
        props = {"graphres": {"const": model.FORMAT_VERSION}, "name": _STR, "input": self.ref("input"),
                 "default_scope": _enum(shorthand.SCOPES, default="mmdet"), "backbone": self.ref("backbone")}
        assert tuple(props) == shorthand.OUTER_KEYS
        out = _obj(props, SHORTHAND_DOCS, "shorthand spec", required=("backbone",))
        out["properties"]["_base_"] = {**_NAMES, "description": BASE_DOC}
        out["description"] = "A graphres spec in the OpenMMLab shorthand (backbone: {type: ResNet, ...})."
        # contract_dilation and multi_grid are mmsegmentation's
        mmseg = [{"properties": {"default_scope": {"const": "mmseg"}}, "required": ["default_scope"]},
                 {"properties": {"backbone": {"properties": {"type": {"pattern": r"^mmseg\."}},
                                              "required": ["type"]}}, "required": ["backbone"]}]
        out["if"] = {"anyOf": mmseg}
        out["else"] = {"properties": {"backbone": {"properties": {k: False for k in shorthand.MMSEG_KEYS}}}}
        return out

    def backbone(self) -> dict:
        types = (list(shorthand.TYPES) + [f"mmdet.{t}" for t in shorthand.TYPES]
                 + [f"mmseg.{t}" for t in shorthand.MMSEG_TYPES])
        extra = tuple(k for t in shorthand.TYPES.values() for k in t[3])
        style = self.blocks["bottleneck"].params["style"]
        props = {
            "type": _enum(types), "depth": _enum(shorthand.ARCH), "in_channels": _int(1, default=3),
            "stem_channels": {"anyOf": [{"type": "null"}, _int(1)]}, "base_channels": _int(1, default=64),
            "num_stages": _int(1, 4, default=4),
            "strides": {"type": "array", "items": _int(1), "minItems": 1, "maxItems": 4},
            "dilations": {"type": "array", "items": _int(1), "minItems": 1, "maxItems": 4},
            "out_indices": self.ref("out_indices"), "style": _param_schema(style),
            "deep_stem": _BOOL, "avg_down": _BOOL, "frozen_stages": _int(-1, default=-1),
            "conv_cfg": self.ref("conv_cfg"), "norm_cfg": self.ref("norm"), "norm_eval": {**_BOOL, "default": True},
            "dcn": {"anyOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": False, "required": ["type"],
                "properties": {
                    "type": {**_enum(shorthand.DCN_TYPES), "description": "DCN (v1) or DCNv2 (modulated)."},
                    "deform_groups": {**_int(1, default=1), "description": "Deform groups (divide the channels)."},
                    "fallback_on_stride": {**_BOOL, "default": False,
                                           "description": "Keep the plain conv2 where it strides."}}}]},
            "stage_with_dcn": _nullable({"type": "array", "items": _BOOL}),
            "plugins": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
            "with_cp": _BOOL, "zero_init_residual": _BOOL, "init_cfg": self.ref("init_cfg"),
            "pretrained": {"type": ["string", "null"]},
            "groups": _int(1, default=1), "base_width": _int(1, default=4),
            "contract_dilation": _BOOL, "multi_grid": {"type": "array", "items": _int(1), "minItems": 1},
        }
        assert tuple(props) == shorthand.COMMON_KEYS + extra + shorthand.MMSEG_KEYS
        out = _obj(props, BACKBONE_DOCS, "backbone", required=self.req("type", "depth"))
        resnext = [t for t in types if t.split(".")[-1] in ("ResNeXt",)]
        out["allOf"] = [
            {"if": {"properties": {"type": _enum(resnext)}, "required": ["type"]},
             "then": {"properties": {"depth": _enum(shorthand.TYPES["ResNeXt"][2])}},
             "else": {"properties": {k: False for k in extra}}},
        ]
        return out

    def init_cfg(self) -> dict:
        props = {"type": {"const": "Pretrained"}, "checkpoint": _STR, "prefix": _STR, "map_location": {}}
        assert tuple(props) == shorthand.INIT_CFG_KEYS
        out = _obj({k: v for k, v in props.items() if v is not False}, INIT_CFG_DOCS, "init_cfg",
                   required=self.req("type"))
        out["properties"] = {k: out["properties"].get(k, False) for k in props}
        names = tuple(shorthand.INIT_CFG_TYPES)
        return {"anyOf": _alternatives(_nullable(out)) + [self._init_item(tuple(t for t in names if t != "Pretrained")),
                          {"type": "array", "items": self._init_item(names), "minItems": 1}]}

    # -- the block language

    def block_def(self) -> dict:
        props = {"doc": _STR, "kind": _enum(BLOCK_KINDS, default="block"),
                 "params": {"type": "object", "additionalProperties": self.ref("param_decl"),
                            "propertyNames": {"not": _enum(IMPLICIT_NAMES)}},
                 "let": {"type": "object", "additionalProperties": _EXPR,
                         "propertyNames": {"not": _enum(IMPLICIT_NAMES)}},
                 "out_channels": _EXPR,
                 "layers": {"type": "array", "items": self.ref("layer"), "minItems": 1},
                 "modules": {"type": "array", "items": _STR}}
        assert tuple(props) == BLOCK_KEYS
        out = _obj(props, BLOCK_DOCS, "block", required=self.req("out_channels", "layers"))
        out["description"] = "A block or stem type, written in the block language (docs/blocks.md)."
        return out

    def param_decl(self) -> dict:
        props = {"type": _enum(PARAM_TYPES), "default": {"type": ["integer", "boolean", "string", "number"]},
                 "choices": {"type": "array", "items": {"type": ["integer", "boolean", "string"]}},
                 "min": _int(), "doc": _STR}
        assert tuple(props) == PARAM_KEYS
        return {"anyOf": [_enum(PARAM_TYPES), _obj(props, PARAM_DOCS, "parameter", required=self.req("type"))]}

    def layer(self) -> dict:
        """An item of 'layers': the reader tells the three kinds by their keys, and so does this."""
        return {"type": "object",
                "description": "An op layer (op), a seq group (seq) or a use of another block type (block).",
                "if": {"required": ["slot"]}, "then": {"type": "object", "properties": {"slot": _STR},
                                                       "additionalProperties": False, "required": ["slot"],
                                                       "description": "A plugin position: a stage's plugins "
                                                                      "for it run here."},
                "else": {"if": {"required": ["seq"]}, "then": self.ref("seq_layer"),
                "else": {"if": {"required": ["block"], "not": {"required": ["op"]}},
                         "then": self.ref("use_layer"), "else": self.ref("op_layer")}}}

    def _common(self) -> dict:
        return {"name": {"type": "string", "minLength": 1}, "from": _NAMES, "when": _EXPR}

    def op_layer(self) -> dict:
        common = self._common()
        props = {"name": common["name"], "op": _enum(OPS), "from": common["from"], "when": common["when"],
                 "init": _enum(INIT_CHOICES, default="default")}
        assert tuple(props) == LAYER_KEYS
        attrs = {a: {"anyOf": [_EXPR, {"type": "array", "items": _EXPR}]} if a in op.list_attrs else _EXPR
                 for op in OPS.values() for a in op.attrs}
        out = _obj(props, LAYER_DOCS, "layer", required=("op",), closed=False)
        out["properties"].update({a: {**s, "description": ATTR_DOCS[a]} for a, s in attrs.items()})
        out["allOf"] = []
        for name, op in OPS.items():
            then_props: dict[str, Any] = {k: True for k in LAYER_KEYS}
            for a, default in op.attrs.items():
                s = _enum(op.choices[a]) if (name, a) in STR_ATTRS else \
                    {"type": "array", "items": _EXPR, "minItems": 1} if a in op.list_attrs else dict(_EXPR)
                if default is not REQUIRED and default is not None:
                    s["default"] = default
                then_props[a] = {**s, "description": _doc(ATTR_DOCS, a, "op attribute")}
            then: dict[str, Any] = {"properties": then_props, "additionalProperties": False}
            required = [a for a, d in op.attrs.items() if d is REQUIRED]
            if required:
                then["required"] = required
            out["allOf"].append({"if": {"properties": {"op": {"const": name}}, "required": ["op"]},
                                 "then": then, "description": op.doc})
        return out

    def seq_layer(self) -> dict:
        common = self._common()
        props = {"seq": {"type": "string", "minLength": 1}, "from": common["from"], "when": common["when"],
                 "layers": {"type": "array", "items": self.ref("layer"), "minItems": 1}}
        assert tuple(props) == SEQ_KEYS
        return _obj(props, SEQ_DOCS, "seq group", required=("seq", "layers"))

    def use_layer(self) -> dict:
        common = self._common()
        props = {"name": common["name"], "block": {"type": "string", "minLength": 1, "examples": list(self.blocks)},
                 "from": common["from"], "when": common["when"]}
        assert tuple(props) == USE_KEYS
        out = _obj(props, USE_DOCS, "block use", required=("block",), closed=False)
        out["additionalProperties"] = _EXPR  # the used block's parameters
        return out


def _as_draft7(node: Any) -> Any:
    """Draft 7 ignores the siblings of ``$ref``: move a reference with siblings into ``allOf``.
    Nothing else differs: the schema uses no keyword newer than draft 7 (``$defs`` is only the
    place the references point to)."""
    if isinstance(node, dict):
        out = {k: _as_draft7(v) for k, v in node.items()}
        if "$ref" in out and len(out) > 1:
            out["allOf"] = [{"$ref": out.pop("$ref")}] + out.get("allOf", [])
        return out
    if isinstance(node, list):
        return [_as_draft7(v) for v in node]
    return node


def spec_schema(partial: bool = False, draft: str = "2020-12") -> dict[str, Any]:
    """The JSON Schema of a spec. ``partial``: every file is treated as a ``_base_`` fragment.
    ``draft``: "2020-12" (the default), or "7" for tools that support only draft 7 (older
    versions of the YAML language server behind VS Code and Neovim)."""
    full, part = _Defs(False, ""), _Defs(True, "partial_")
    defs = {**full.build(), **part.build()}

    def pick(d: _Defs) -> dict:
        return {"if": {"required": ["backbone"]}, "then": d.ref("shorthand"), "else": d.ref("explicit")}

    root: dict[str, Any] = {
        "$schema": DRAFTS[draft],
        "title": "graphres spec",
        "description": "A graphres spec: the explicit form, or the OpenMMLab shorthand (backbone: ...). A file "
                       "with _base_ may be partial. Generated by `graphres schema`; the whole network is "
                       "checked by `graphres validate`.",
        "type": "object",
    }
    if partial:
        root.update(pick(part))
    else:
        root.update({"if": {"required": ["_base_"]}, "then": pick(part), "else": pick(full)})
    root["$defs"] = defs
    _allow_delete(root)
    _annotate(root)
    return _as_draft7(root) if draft == "7" else root


def schema_json(partial: bool = False, draft: str = "2020-12") -> str:
    return json.dumps(spec_schema(partial, draft), indent=2) + "\n"
