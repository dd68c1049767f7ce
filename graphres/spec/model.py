"""Parse stage, part 5: the explicit spec form, read and checked into a typed :class:`Spec`.

Everything that can be checked from the spec text alone is checked here and reported with the
span of the value at fault: keys, types, ranges, lengths, out_indices, frozen_stages, norm and
conv options, block names and block arguments. Checks that need channels or spatial sizes run
after lowering (:mod:`graphres.lower`, :mod:`graphres.passes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import DiagnosticBag, SourceCache, did_you_mean
from ..ops import ACT_TYPES, CONV_TYPES, NORM_TYPES
from ..zoo import is_zoo_name, known_names, zoo_url
from .blocks import BlockDef, ParamDef, builtin_blocks, check_block_uses, parse_blocks
from .plugins import parse_stage_plugins
from .expr import ExprError, evaluate
from .reader import MISSING, Reader, describe
from .source import Located, Path

FORMAT_VERSION = 1
TOP_KEYS = ("graphres", "name", "input", "norm", "conv", "act", "stem", "stages", "block_args", "output_stride",
            "out_indices", "frozen_stages", "norm_eval", "zero_init_residual", "with_cp", "init", "head", "blocks")
OUTPUT_STRIDES = (8, 16, 32)
STAGE_FIELDS = ("block", "blocks", "planes", "stride", "dilation", "frozen", "plugins", "plugin_mode")
NORM_KEYS = ("type", "requires_grad", "eps", "momentum", "num_groups", "affine")
INPUT_KEYS = ("channels", "size")
CONV_KEYS = ("type", "eps")
ACT_KEYS = ("type",)
HEAD_KEYS = ("num_classes",)
MAX_CLASSES = 1 << 20
INIT_KEYS = ("type", "checkpoint", "prefix")
INIT_TYPES = ("default", "pretrained")
# an init list's initialisers (mmengine's, lowercased) and the keys each takes
_INIT_COMMON = ("type", "layer", "bias", "bias_prob")
INIT_ITEM_KEYS = {
    "pretrained": ("type", "checkpoint", "prefix", "map_location"),
    "kaiming": _INIT_COMMON + ("a", "mode", "nonlinearity", "distribution"),
    "constant": _INIT_COMMON + ("val",),
    "normal": _INIT_COMMON + ("mean", "std"),
    "xavier": _INIT_COMMON + ("gain", "distribution"),
    "uniform": _INIT_COMMON + ("a", "b"),
}
# the class names (and base-class names) of the layers graphres builds, which init layer: may name
INIT_LAYER_NAMES = ("Conv2d", "_ConvNd", "ConvWS2d", "Linear", "_BatchNorm", "BatchNorm2d", "SyncBatchNorm",
                    "SyncBatchNorm2d", "FrozenBatchNorm2d", "GroupNorm", "_InstanceNorm", "InstanceNorm2d",
                    "_NormBase")
INIT_NONLINEARITIES = ("relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu", "conv2d")
MAX_BLOCKS = 1000  # per stage; far beyond any real network, and a guard against typos like 3000000
MAX_STAGES = 64  # docs/limits.md: they bound the work of lowering and analysis (seconds, not minutes)
MAX_TOTAL_BLOCKS = 10000  # issue 12 measures 5,000-block specs; lowering stays linear
MAX_SIZE = 1 << 16
NOT_YET_CONV = {"DCN": "deformable conv", "DCNv2": "deformable conv v2"}


@dataclass
class Arg:
    """A block argument with the path of the value that set it (for located errors)."""

    value: Any
    path: Path


@dataclass
class Stage:
    index: int  # 0-based; the module is layer{index + 1}
    block: str
    blocks: int
    dilations: list[int]  # one per block
    args: dict[str, Arg]  # planes, stride (first block), and every other block argument
    path: Path
    per_block: dict[str, list[Arg]] = field(default_factory=dict)  # arguments given block by block
    types: list[str] = field(default_factory=list)  # the block type of each block (a stage may mix them)
    frozen: bool = False  # this stage's parameters get no gradients (besides frozen_stages' prefix)
    plugins: list = field(default_factory=list)  # [StagePlugin] (graphres.spec.plugins)
    plugin_mode: str = "chain"

    def block_type(self, b: int) -> str:
        return self.types[b] if self.types else self.block

    @property
    def block_types(self) -> list[str]:
        """The distinct block types of the stage, in order."""
        return list(dict.fromkeys(self.types or [self.block]))

    def block_args(self, b: int) -> dict[str, Arg]:
        """The arguments of block ``b``: the stage's, with the per-block lists' ``b``-th values."""
        return {**self.args, **{k: values[b] for k, values in self.per_block.items()}}

    @property
    def name(self) -> str:
        return f"layer{self.index + 1}"


@dataclass
class Spec:
    name: str
    input_channels: int
    input_size: tuple[int, int]
    norm: dict[str, Any]
    stem_block: str
    stem_args: dict[str, Arg]
    stages: list[Stage]
    out_indices: list[int]
    frozen_stages: int
    norm_eval: bool
    zero_init_residual: bool
    with_cp: bool
    init: dict[str, Any] | None
    blocks: dict[str, BlockDef]
    doc: Located
    sources: SourceCache = field(default_factory=SourceCache)
    file: str = "<spec>"
    warnings: list = field(default_factory=list)
    conv: dict[str, Any] = field(default_factory=lambda: {"type": "Conv2d"})
    act: str = "relu"
    head: dict[str, Any] | None = None
    output_stride: int | None = None
    out_index_paths: dict[int, tuple] = field(default_factory=dict)  # index -> where it is written

    @property
    def num_stages(self) -> int:
        return len(self.stages)


def parse_explicit(doc: Located, diags: DiagnosticBag, sources: SourceCache, file: str) -> Spec | None:
    """Read an explicit-form document; every mistake goes to ``diags``."""
    r = Reader(doc, diags)
    if not isinstance(doc.data, dict):
        diags.add("E011", f"a spec must be a mapping, found {describe(doc.data)}", doc.span(()))
        return None
    r.mapping((), TOP_KEYS, "the spec", required=("stages",))
    r.value(("graphres",), int, FORMAT_VERSION, what="graphres (format version)", choices=(FORMAT_VERSION,))
    name = r.value(("name",), str, "model", what="name")

    r.mapping(("input",), INPUT_KEYS, "input")
    in_ch = r.value(("input", "channels"), int, 3, what="input.channels", min=1)
    size = r.get(("input", "size"), [224, 224])
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    in_size = (224, 224)
    if not (isinstance(size, list) and len(size) == 2):
        diags.add("E011", f"input.size must be [height, width] or one integer, found {describe(size)}",
                  r.span(("input", "size")))
    else:
        checked = [r.check(v, ("input", "size", i), int, None, label=f"input.size[{i}]", min=1, max=MAX_SIZE)
                   for i, v in enumerate(size)]
        if None not in checked:
            in_size = (checked[0], checked[1])

    norm = _parse_norm(r)
    conv = _parse_conv(r)
    act = _parse_act(r)

    blocks = dict(builtin_blocks(sources))
    user_blocks = parse_blocks(doc, ("blocks",), diags)
    for bname in user_blocks:
        if bname in blocks:
            diags.add("E013", f"block '{bname}' is already a built-in block type; choose another name",
                      doc.key_span(("blocks", bname)))
    blocks.update(user_blocks)
    check_block_uses(blocks, diags)

    block_args = r.get(("block_args",), {})
    if not isinstance(block_args, dict):
        diags.add("E011", f"block_args must be a mapping, found {describe(block_args)}", r.span(("block_args",)))
        block_args = {}

    stem_block, stem_args = _parse_stem(r, blocks, in_ch)
    stages = _parse_stages(r, blocks, block_args) or []
    declared = r.get(("stages",))
    n = len(declared) if isinstance(declared, list) else len(stages or [])
    output_stride = None
    if r.has(("output_stride",)):
        # the stride-for-dilation trade is made when lowering, on the network's actual strides
        output_stride = r.value(("output_stride",), int, what="output_stride", choices=OUTPUT_STRIDES)
    head = _parse_head(r)

    out_index_paths: dict[int, tuple] = {}
    out_indices = _parse_out_indices(r, n, out_index_paths) if n else []
    frozen = r.value(("frozen_stages",), int, -1, what="frozen_stages")
    if frozen is not None and not -1 <= frozen <= n:
        diags.add("E034", f"frozen_stages = {frozen} is out of range for {_stages(n)} (-1..{n})",
                  r.span(("frozen_stages",)),
                  "-1 freezes nothing, 0 freezes the stem, k freezes the stem and layer1..layerk")
        frozen = -1
    norm_eval = r.value(("norm_eval",), bool, False, what="norm_eval")
    zero_init = r.value(("zero_init_residual",), bool, True, what="zero_init_residual")
    with_cp = r.value(("with_cp",), bool, False, what="with_cp")
    init = _parse_init(r)
    if diags.has_errors:
        return None
    return Spec(name=name or "model", input_channels=in_ch or 3, input_size=in_size, norm=norm,
                stem_block=stem_block or "conv7x7", stem_args=stem_args, stages=stages,
                out_indices=out_indices, frozen_stages=frozen if frozen is not None else -1,
                norm_eval=bool(norm_eval), zero_init_residual=bool(zero_init), with_cp=bool(with_cp),
                init=init, blocks=blocks, doc=doc, sources=sources, file=file, conv=conv, act=act or "relu",
                head=head, output_stride=output_stride, out_index_paths=out_index_paths)


_NORM_ALIASES = {"batchnorm": "BN", "batchnorm2d": "BN", "bn2d": "BN", "syncbatchnorm": "SyncBN", "syncbn2d": "SyncBN",
                 "groupnorm": "GN", "instancenorm": "IN", "instancenorm2d": "IN", "in2d": "IN",
                 "frozenbatchnorm2d": "FrozenBN", "frozenbatchnorm": "FrozenBN", "frozenbn2d": "FrozenBN"}


def _norm_alias(name: str) -> str | None:
    return _NORM_ALIASES.get(name.lower().replace("_", ""))


def _parse_norm(r: Reader) -> dict[str, Any]:
    path = ("norm",)
    r.mapping(path, NORM_KEYS, "norm")
    norm_type = r.get(path + ("type",), "BN")
    if norm_type in ("LN", "LayerNorm"):
        r.diags.add("E013", f"norm type {norm_type!r} is not supported: it normalises the last dimension "
                            "and fails on NCHW feature maps", r.span(path + ("type",)),
                    "use GN with num_groups: 1 for a layer-norm over (C, H, W), or BN/SyncBN/IN")
        norm_type = "BN"
    elif norm_type in ("BN2d", "IN2d"):  # mmcv registers these names too: the same layers
        norm_type = norm_type[:2]
    elif isinstance(norm_type, str) and norm_type not in NORM_TYPES and _norm_alias(norm_type):
        # PyTorch class names and mmcv registry aliases (BatchNorm2d, BN2d, GroupNorm, ...)
        r.diags.add("E013", f"norm.type = {norm_type!r} is not one of {', '.join(map(repr, NORM_TYPES))}",
                    r.span(path + ("type",)), f"did you mean '{_norm_alias(norm_type)}'? graphres uses the short "
                                              "names of mmcv's norm_cfg")
        norm_type = "BN"
    else:
        norm_type = r.value(path + ("type",), str, "BN", what="norm.type", choices=NORM_TYPES)
    frozen = norm_type == "FrozenBN"
    norm = {"type": norm_type or "BN",
            "requires_grad": r.value(path + ("requires_grad",), bool, not frozen, what="norm.requires_grad"),
            "eps": r.value(path + ("eps",), float, 1e-5, what="norm.eps", min=0)}
    if frozen and norm["requires_grad"]:
        r.diags.add("E017", "FrozenBN never trains its parameters, but norm.requires_grad is true",
                    r.span(path + ("requires_grad",)), "remove requires_grad, or use type: BN")
    momentum = r.get(path + ("momentum",))
    if momentum is not MISSING:
        norm["momentum"] = r.value(path + ("momentum",), (float, type(None)), 0.1, what="norm.momentum", min=0, max=1,
                                   hint="the running statistics move by this fraction per step, from 0 to 1")
    if isinstance(r.get(path), dict) and "affine" in r.get(path):
        norm["affine"] = r.value(path + ("affine",), bool, True, what="norm.affine")
    if norm["type"] == "GN":
        if r.has(path + ("num_groups",)):
            norm["num_groups"] = r.value(path + ("num_groups",), int, what="norm.num_groups", min=1)
        else:
            r.diags.add("E012", "missing required key 'norm.num_groups'", r.span(path),
                        "GN needs num_groups, e.g. norm: {type: GN, num_groups: 32}")
    elif r.has(path + ("num_groups",)):
        r.diags.add("E017", f"num_groups only applies to GN, not {norm['type']}",
                    r.doc.key_span(path + ("num_groups",)))
    return norm


def _parse_conv(r: Reader) -> dict[str, Any]:
    path = ("conv",)
    if r.get(path, None) is None:
        return {"type": "Conv2d"}
    r.mapping(path, CONV_KEYS, "conv")
    conv_type = r.get(path + ("type",), "Conv2d")
    if isinstance(conv_type, str) and conv_type in NOT_YET_CONV:
        r.diags.add("E016", f"conv type {conv_type!r} ({NOT_YET_CONV[conv_type]}) is not supported yet",
                    r.span(path + ("type",)), "use Conv2d or ConvWS; for deformable convs as conv2 of the "
                    "bottlenecks write dcn: {type: DCN} and stage_with_dcn")
        return {"type": "Conv2d"}
    conv_type = r.value(path + ("type",), str, "Conv2d", what="conv.type", choices=CONV_TYPES) or "Conv2d"
    conv = {"type": conv_type}
    if conv_type == "ConvWS":
        conv["eps"] = r.value(path + ("eps",), float, 1e-5, what="conv.eps", min=0)
    elif r.has(path + ("eps",)):
        r.diags.add("E017", "conv.eps only applies to ConvWS (weight standardisation)",
                    r.doc.key_span(path + ("eps",)), "remove eps, or set type: ConvWS")
    return conv


def _parse_act(r: Reader) -> str | None:
    """``act: {type: silu}``: the activation of every ``act`` layer that does not name its own."""
    path = ("act",)
    if not r.has(path):
        return "relu"
    if isinstance(r.get(path), str):  # act: silu
        return r.value(path, str, "relu", what="act", choices=ACT_TYPES)
    r.mapping(path, ACT_KEYS, "act", required=("type",))
    return r.value(path + ("type",), str, "relu", what="act.type", choices=ACT_TYPES)


def _parse_head(r: Reader) -> dict[str, Any] | None:
    """``head: {num_classes: 1000}``: global average pool (``avgpool``) and a linear layer (``fc``)."""
    path = ("head",)
    if r.get(path, None) is None:
        return None
    head = r.mapping(path, HEAD_KEYS, "head", required=("num_classes",))
    if not isinstance(head, dict) or "num_classes" not in head:
        return None  # already reported
    classes = r.value(path + ("num_classes",), int, what="head.num_classes", min=1, max=MAX_CLASSES)
    return {"num_classes": classes} if classes is not None else None


def _parse_stem(r: Reader, blocks: dict[str, BlockDef], in_ch: int) -> tuple[str | None, dict[str, Arg]]:
    path = ("stem",)
    stem = r.get(path, {"type": "conv7x7", "channels": 64})
    if not isinstance(stem, dict):
        r.diags.add("E011", f"stem must be a mapping such as {{type: conv7x7, channels: 64}}, found {describe(stem)}",
                    r.span(path))
        return None, {}
    stem_type = stem.get("type", "conv7x7")
    if not isinstance(stem_type, str):
        r.diags.add("E011", f"stem.type must be a string, found {describe(stem_type)}", r.span(path + ("type",)))
        return None, {}
    stems = [n for n, b in blocks.items() if b.kind == "stem"]
    if stem_type not in stems:
        hint = did_you_mean(str(stem_type), stems) or f"stems: {', '.join(stems)}"
        code = "E013" if stem_type in blocks else "E020"
        what = "is a block, not a stem" if stem_type in blocks else "is not a known stem"
        r.diags.add(code, f"stem type {stem_type!r} {what}", r.span(path + ("type",)), hint)
        return None, {}
    block = blocks[stem_type]
    args = {k: Arg(v, path + (k,)) for k, v in stem.items() if k != "type"}
    if "channels" not in args and "channels" in block.params:
        args["channels"] = Arg(64, path)
    _check_args(r, block, args, f"stem '{stem_type}'", path, label="stem.")
    return stem_type, args


def _parse_stages(r: Reader, blocks: dict[str, BlockDef], block_args: dict) -> list[Stage] | None:
    path = ("stages",)
    items = r.get(path)
    if items is MISSING:
        return None
    if not isinstance(items, list) or not items:
        r.diags.add("E011", f"stages must be a non-empty list of stage mappings, found {describe(items)}", r.span(path))
        return None
    if len(items) > MAX_STAGES:
        r.diags.add("E014", f"stages lists {len(items):,} stages; at most {MAX_STAGES} are allowed", r.span(path),
                    "a backbone has 4 or 5 stages; see docs/limits.md")
        return None
    block_names = [n for n, b in blocks.items() if b.kind == "block"]
    used_block_args: set[str] = set()
    stages = []
    for i, item in enumerate(items):
        spath = path + (i,)
        if not isinstance(item, dict):
            r.diags.add("E011", f"stage {i} must be a mapping, found {describe(item)}", r.span(spath))
            continue
        nblocks = r.value(spath + ("blocks",), int, what=f"stages[{i}].blocks", min=1, max=MAX_BLOCKS)
        raw = item.get("block")
        if isinstance(raw, list):  # a block type per block
            if nblocks is not None and len(raw) != nblocks:
                r.diags.add("E015", f"stages[{i}].block lists {len(raw)} block types for {nblocks} blocks",
                            r.span(spath + ("block",)), "give one block type per block, or a single one for all")
                continue
            types = [r.check(t, spath + ("block", j), str, None, label=f"stages[{i}].block[{j}]")
                     for j, t in enumerate(raw)]
            tpaths = [spath + ("block", j) for j in range(len(raw))]
        else:
            types = [r.value(spath + ("block",), str, what=f"stages[{i}].block")]
            tpaths = [spath + ("block",)]
        if None in types or nblocks is None or not types:
            continue
        unknown = False
        for t, tpath in zip(types, tpaths):
            if t not in block_names:
                hint = did_you_mean(t, block_names) or f"block types: {', '.join(block_names)}"
                what = "is a stem, not a block" if t in blocks else "is not a known block type"
                r.diags.add("E020", f"block type {t!r} {what}", r.span(tpath), hint)
                unknown = True
        if unknown:
            continue
        bname = types[0]
        distinct = list(dict.fromkeys(types))
        block = _merged(blocks, distinct)
        bname_text = f"block '{bname}'" if len(distinct) == 1 else f"blocks {', '.join(map(repr, distinct))}"
        args: dict[str, Arg] = {}
        for k, v in block_args.items():
            if k in block.params:  # global block arguments apply where the block declares them
                args[k] = Arg(v, ("block_args", k))
                used_block_args.add(k)
        dilation = item.get("dilation", 1)
        dpath = spath + ("dilation",)
        if isinstance(dilation, list):
            if len(dilation) != nblocks:
                r.diags.add("E015", f"stages[{i}].dilation lists {len(dilation)} values for {nblocks} blocks",
                            r.span(dpath), "give one dilation per block, or a single integer for all")
                dilations = [1] * nblocks
            else:
                dilations = [r.check(d, dpath + (j,), int, 1, label=f"stages[{i}].dilation[{j}]", min=1)
                             for j, d in enumerate(dilation)]
        else:
            d = r.check(dilation, dpath, int, 1, label=f"stages[{i}].dilation", min=1)
            dilations = [d] * nblocks
        frozen = bool(r.value(spath + ("frozen",), bool, False, what=f"stages[{i}].frozen"))
        per_block: dict[str, list[Arg]] = {}
        plugins, plugin_mode = parse_stage_plugins(r, item, spath, blocks, distinct)
        for k, v in item.items():
            if k in ("block", "blocks", "dilation", "frozen", "plugins", "plugin_mode"):
                continue
            if isinstance(v, list) and k in block.params:  # one value per block
                if len(v) != nblocks:
                    r.diags.add("E015", f"stages[{i}].{k} lists {len(v)} values for {nblocks} blocks",
                                r.span(spath + (k,)), f"give one {k} per block, or a single value for all")
                    continue
                per_block[k] = [Arg(x, spath + (k, j)) for j, x in enumerate(v)]
                v = v[0]
                for j, x in enumerate(item[k][1:], 1):
                    p = block.params[k]
                    r.check(x, spath + (k, j), p.type, None, label=f"stages[{i}].{k}[{j}]", choices=p.choices,
                            min=p.min)
                args[k] = Arg(v, spath + (k, 0))
                continue
            args[k] = Arg(v, spath + (k,))
        if "dilation" in item and "dilation" not in block.params:
            r.diags.add("E010", f"{bname_text} {'has' if len(distinct) == 1 else 'have'} no parameter 'dilation'",
                        r.doc.key_span(dpath))
        _check_args(r, block, args, bname_text, spath, exclude=("dilation",), label=f"stages[{i}].")
        for k in per_block:
            if k in args:
                args[k] = Arg(item[k], spath + (k,))
            else:
                per_block[k] = []
        stride = max(args["stride"].value) if "stride" in args and "stride" in per_block else \
            args["stride"].value if "stride" in args else 1
        stride_span = r.span(args["stride"].path) if "stride" in args else r.span(spath)
        for k in [k for k, values in per_block.items() if not values]:
            del per_block[k]
            args.pop(k, None)
        for k in per_block:
            del args[k]
        if stride > 1 and max(dilations) > 1:
            r.diags.add("W001", f"stages[{i}] (layer{i + 1}) has stride {stride} and dilation {max(dilations)}: "
                                "it both downsamples and dilates", stride_span,
                        "to keep resolution (output stride 8 or 16) set stride 1 where the dilation rises")
        stated_dilation = item.get("dilation", 1)
        if (i > 0 and item.get("stride", 1) == 1 and stride == 1 and "stride" not in per_block
                and max(dilations) == 1 and stated_dilation in (1, [1] * nblocks)
                and "dilation" in block.params and "stride" in block.params):
            r.diags.add("W010", f"stages[{i}] (layer{i + 1}) keeps the resolution (stride 1) without dilation: "
                                "its 3x3 convs see half the context they would with stride 2",
                        stride_span,
                        "for output stride 16 or 8 raise this stage's dilation (stride 2 -> dilation 2), "
                        "or declare output_stride and leave strides and dilations to it")
        stages.append(Stage(i, bname, nblocks, dilations, args, spath, per_block,
                            types if len(distinct) > 1 else [], frozen, plugins, plugin_mode))
    total = sum(st.blocks for st in stages)
    if total > MAX_TOTAL_BLOCKS:
        r.diags.add("E014", f"the stages have {total:,} blocks in all; at most {MAX_TOTAL_BLOCKS:,} are allowed",
                    r.span(path), "ResNet-1202, the deepest published, has 600; see docs/limits.md")
        return None
    if stages:
        declared = sorted({p for st in stages for t in st.block_types for p in blocks[t].params})
        for k in block_args:
            if k not in used_block_args:
                r.diags.add("E010", f"block_args sets '{k}', a parameter of none of the stages' blocks",
                            r.doc.key_span(("block_args", k)),
                            did_you_mean(k, declared) or f"their parameters: {', '.join(declared)}")
    return stages


@dataclass
class _Params:
    params: dict[str, ParamDef]


def _merged(blocks: dict[str, BlockDef], names: list[str]) -> BlockDef | _Params:
    """The block itself, or for a stage that mixes block types the union of their parameters
    (an argument goes to every type that declares it; each type's required ones must be given)."""
    if len(names) == 1:
        return blocks[names[0]]
    params: dict[str, ParamDef] = {}
    for name in names:
        for k, p in blocks[name].params.items():
            params.setdefault(k, p)
    return _Params(params)


def _check_args(r: Reader, block: BlockDef, args: dict[str, Arg], what: str, owner: Path, exclude: tuple = (),
                label: str = "") -> None:
    params = block.params
    for k, arg in list(args.items()):
        if k not in params:
            r.diags.add("E010", f"{what} {'have' if what.startswith('blocks ') else 'has'} no parameter '{k}'",
                        r.doc.key_span(arg.path),
                        did_you_mean(k, list(params) + list(STAGE_FIELDS)) or
                        (f"its parameters: {', '.join(params)}" if params else None))
            del args[k]
            continue
        p: ParamDef = params[k]
        where = "block_args." if arg.path[:1] == ("block_args",) else label
        index = f"[{arg.path[-1]}]" if isinstance(arg.path[-1], int) else ""  # a per-block list's first value
        checked = r.check(arg.value, arg.path, p.type, None, label=where + k + index, choices=p.choices, min=p.min)
        if checked is None:
            del args[k]
            exclude += (k,)  # already reported as given but wrong; not also as missing
    for k, p in params.items():
        if p.default is MISSING and k not in args and k not in exclude:
            r.diags.add("E012", f"{what} needs the parameter '{k}'", r.span(owner))


def _parse_out_indices(r: Reader, n: int, paths: dict[int, tuple]) -> list[int]:
    """The stage indices to return, in stage order; ``paths`` gets where each was written."""
    path = ("out_indices",)
    default = list(range(n))
    values = r.int_list(path, default, what="out_indices", allow_scalar=True)
    if values is None:
        return default
    if not values:
        r.diags.add("E033", "out_indices is empty: the backbone would return nothing", r.span(path),
                    f"list the stages to return, e.g. {default}")
        return default
    seen: dict[int, int] = {}
    ok = []
    src = r.get(path)
    for i, v in enumerate(values):
        vpath = path + (i,) if isinstance(src, list) else path
        if v < 0:
            r.diags.add("E033", f"out_indices[{i}] = {v} is negative", r.span(vpath),
                        f"indices count stages from 0: use {v + n} for stage {v + n} (layer{v + n + 1})"
                        if v + n >= 0 else f"valid indices are 0..{n - 1}")
        elif v >= n:
            r.diags.add("E033", f"out_indices[{i}] = {v} is out of range for {_stages(n)} (0..{n - 1})", r.span(vpath),
                        f"out_indices count stages from 0 (0 is layer1): the last stage is {n - 1} (layer{n})")
        elif v in seen:
            r.diags.add("E033", f"out_indices[{i}] = {v} repeats out_indices[{seen[v]}]", r.span(vpath),
                        "list each stage once")
        else:
            seen[v] = i
            ok.append(v)
            paths[v] = vpath
    return sorted(ok) if ok else default


def _stages(n: int) -> str:
    return f"{n} stage{'' if n == 1 else 's'}"


def _check_zoo_name(r: Reader, path: Path, ckpt: str | None) -> None:
    """E090 for a torchvision:// or open-mmlab:// name graphres does not know."""
    if ckpt is not None and is_zoo_name(ckpt) and zoo_url(ckpt) is None:
        names = known_names(ckpt)
        r.diags.add("E090", f"'{ckpt}' is not a model-zoo name graphres knows ({ckpt.split('://')[0]}:// "
                            f"has {len(names)} ResNet-family names)", r.span(path),
                    did_you_mean(ckpt, names) or "give the checkpoint's file path instead")


def _parse_init(r: Reader) -> dict[str, Any] | None:
    path = ("init",)
    init = r.get(path)
    if init is MISSING or init is None:
        return None
    if isinstance(init, list) or (isinstance(init, dict) and isinstance(init.get("type"), str)
                                  and init.get("type") in INIT_ITEM_KEYS
                                  and init.get("type") != "pretrained"):
        return _parse_init_list(r, path, init)
    r.mapping(path, INIT_KEYS, "init")
    default_kind = "pretrained" if isinstance(init, dict) and "checkpoint" in init else "default"
    kind = r.value(path + ("type",), str, default_kind, what="init.type", choices=INIT_TYPES)
    if kind == "default" and isinstance(init, dict) and "checkpoint" in init:
        r.diags.add("E017", "init.checkpoint is set but init.type is 'default', which loads nothing",
                    r.doc.key_span(path + ("checkpoint",)), "use init: {type: pretrained, checkpoint: PATH}")
    if kind == "pretrained":
        ckpt = r.value(path + ("checkpoint",), str, what="init.checkpoint")
        _check_zoo_name(r, path + ("checkpoint",), ckpt)
        prefix = r.value(path + ("prefix",), str, None, what="init.prefix")
        if prefix == "":
            r.diags.add("E014", "init.prefix is empty", r.span(path + ("prefix",)),
                        "give the key prefix to load, such as 'backbone.', or leave prefix out")
            prefix = None
        out = {"type": "pretrained", "checkpoint": ckpt, "span": r.span(path + ("checkpoint",))}
        if prefix is not None:
            out["prefix"] = prefix
        return out
    if isinstance(init, dict) and "prefix" in init:
        r.diags.add("E017", "init.prefix is set but init.type is 'default', which loads nothing",
                    r.doc.key_span(path + ("prefix",)), "use init: {type: pretrained, checkpoint: PATH, prefix: ...}")
    return None


def _parse_init_list(r: Reader, path: Path, init: Any) -> dict[str, Any] | None:
    """``init: [{type: kaiming, layer: Conv2d}, {type: constant, val: 1, layer: _BatchNorm}, ...]``:
    mmengine's initialisers, applied in order (a pretrained entry last), as ``init_cfg`` lists."""
    entries = [(path + (i,), item) for i, item in enumerate(init)] if isinstance(init, list) else [(path, init)]
    if not entries:
        r.diags.add("E014", "init is an empty list", r.span(path), "leave init out for OpenMMLab's default "
                                                                  "initialisation")
        return None
    items = []
    for ipath, item in entries:
        if not isinstance(item, dict):
            r.diags.add("E011", f"an init entry must be a mapping such as {{type: kaiming, layer: Conv2d}}, "
                                f"found {describe(item)}", r.span(ipath))
            continue
        kind = item.get("type", MISSING)
        if not isinstance(kind, str) or kind not in INIT_ITEM_KEYS:
            shown = "no type" if kind is MISSING else f"type {kind!r}"
            r.diags.add("E130", f"init entry has {shown}: an init list takes "
                                f"{', '.join(INIT_ITEM_KEYS)}", r.span(ipath + (("type",) if kind is not MISSING else ())),
                        did_you_mean(str(kind), list(INIT_ITEM_KEYS)) if isinstance(kind, str) else None)
            continue
        if "override" in item:
            r.diags.add("E131", "init override (an initialiser for named submodules) is not supported",
                        r.doc.key_span(ipath + ("override",)),
                        "name the layer classes with layer:, e.g. layer: [_BatchNorm, GroupNorm]")
            item = {k: v for k, v in item.items() if k != "override"}
        r.mapping(ipath, INIT_ITEM_KEYS[kind] + ("override",), f"a {kind} init entry")
        out: dict[str, Any] = {"type": kind}
        if kind == "pretrained":
            ckpt = r.value(ipath + ("checkpoint",), str, what="init checkpoint")
            _check_zoo_name(r, ipath + ("checkpoint",), ckpt)
            out["checkpoint"] = ckpt
            prefix = r.value(ipath + ("prefix",), str, None, what="init prefix")
            if prefix == "":
                r.diags.add("E014", "init prefix is empty", r.span(ipath + ("prefix",)),
                            "give the key prefix to load, such as 'backbone.', or leave prefix out")
            elif prefix is not None:
                out["prefix"] = prefix
            r.value(ipath + ("map_location",), str, None, what="init map_location")  # graphres reads on the CPU
            out["span"] = r.span(ipath + ("checkpoint",))
            items.append(out)
            continue
        layer = item.get("layer", MISSING)
        if layer is MISSING or layer == []:
            r.diags.add("W131", f"this {kind} init entry names no layer, so it initialises nothing "
                                f"(mmengine matches modules by layer class name)", r.span(ipath),
                        "add layer: Conv2d, or layer: [_BatchNorm, GroupNorm]")
            layers: list[str] = []
        else:
            raw = [layer] if isinstance(layer, str) else layer
            lpath = ipath + ("layer",)
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                r.diags.add("E011", f"init layer must be a class name or a list of them, found {describe(layer)}",
                            r.span(lpath))
                raw = []
            layers = []
            for j, name in enumerate(raw):
                if name in INIT_LAYER_NAMES:
                    layers.append(name)
                else:
                    r.diags.add("E132", f"init layer {name!r} names no layer class graphres builds",
                                r.span(lpath + ((j,) if isinstance(layer, list) else ())),
                                did_you_mean(name, list(INIT_LAYER_NAMES))
                                or f"layer classes: {', '.join(INIT_LAYER_NAMES)}")
        out["layer"] = layers
        number = (int, float)
        if kind == "constant":
            out["val"] = r.value(ipath + ("val",), number, what="init val")
            if out["val"] is None:
                continue
        for key, default in (("bias", 0), ("a", 0), ("mean", 0), ("std", 1), ("gain", 1), ("b", 1)):
            if key in INIT_ITEM_KEYS[kind] and r.has(ipath + (key,)):
                out[key] = r.value(ipath + (key,), number, default, what=f"init {key}")
        if r.has(ipath + ("bias_prob",)):
            out["bias_prob"] = r.value(ipath + ("bias_prob",), float, 0.01, what="init bias_prob", min=1e-12,
                                       max=1 - 1e-12)
        if r.has(ipath + ("mode",)):
            out["mode"] = r.value(ipath + ("mode",), str, "fan_out", what="init mode", choices=("fan_in", "fan_out"))
        if r.has(ipath + ("nonlinearity",)):
            out["nonlinearity"] = r.value(ipath + ("nonlinearity",), str, "relu", what="init nonlinearity",
                                          choices=INIT_NONLINEARITIES)
        if r.has(ipath + ("distribution",)):
            out["distribution"] = r.value(ipath + ("distribution",), str, "normal", what="init distribution",
                                          choices=("normal", "uniform"))
        items.append({k: v for k, v in out.items() if v is not None})
    return {"type": "list", "items": items}
