"""Parse stage, part 6: the OpenMMLab shorthand (``backbone: {type: ResNet, depth: 50, ...}``).

A backbone dict pasted from an mmdetection config is expanded to the explicit form. Each value of
the expansion keeps the span of the shorthand key it came from, so later errors still point at
what the user wrote.
"""
from __future__ import annotations

from typing import Any

from ..diagnostics import DiagnosticBag, did_you_mean
from .reader import MISSING, Reader, describe
from .shorthand_plugins import expand_plugins
from .source import Located, Path

ARCH = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
TYPES = {
    # type: (deep_stem, avg_down, allowed depths, extra keys)
    "ResNet": (False, False, tuple(ARCH), ()),
    "ResNetV1c": (True, False, tuple(ARCH), ()),
    "ResNetV1d": (True, True, tuple(ARCH), ()),
    "ResNeXt": (False, False, (50, 101, 152), ("groups", "base_width")),
}
MMSEG_KEYS = ("contract_dilation", "multi_grid")
MMSEG_TYPES = ("ResNet", "ResNetV1c", "ResNetV1d")
SCOPES = ("mmdet", "mmseg")
COMMON_KEYS = ("type", "depth", "in_channels", "stem_channels", "base_channels", "num_stages", "strides",
               "dilations", "out_indices", "style", "deep_stem", "avg_down", "frozen_stages", "conv_cfg",
               "norm_cfg", "norm_eval", "dcn", "stage_with_dcn", "plugins", "with_cp", "zero_init_residual",
               "init_cfg", "pretrained")
OUTER_KEYS = ("graphres", "name", "input", "default_scope", "backbone")
INIT_CFG_KEYS = ("type", "checkpoint", "prefix", "map_location")
# mmengine's initialiser names -> the explicit form's init types
INIT_CFG_TYPES = {"Pretrained": "pretrained", "Kaiming": "kaiming", "Constant": "constant", "Normal": "normal",
                  "Xavier": "xavier", "Uniform": "uniform"}


def is_shorthand(doc: Located) -> bool:
    return isinstance(doc.data, dict) and "backbone" in doc.data


def expand_shorthand(doc: Located, diags: DiagnosticBag) -> Located:
    """Return the explicit form of a shorthand document (spans point at the shorthand keys)."""
    r = Reader(doc, diags)
    out = Located({})
    r.mapping((), OUTER_KEYS, "a shorthand spec (explicit keys go in an explicit spec, without 'backbone')")
    bb: Path = ("backbone",)
    data = r.get(bb)
    if not isinstance(data, dict):
        diags.add("E011", f"backbone must be a mapping such as {{type: ResNet, depth: 50}}, found {describe(data)}",
                  r.span(bb))
        return out

    def put(path: Path, value: Any, src: Path) -> None:
        node = out.data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        span = doc.span(src)
        out.spans[path] = span
        out.key_spans[path] = doc.key_span(src) if src in doc.key_spans else span

    def copy(path: Path, src: Path) -> None:
        """Copy a subtree, keeping every span inside it."""
        put(path, doc.data if not src else r.get(src), src)
        for p, s in doc.spans.items():
            if p[: len(src)] == src and len(p) > len(src):
                out.spans[path + p[len(src):]] = s
        for p, s in doc.key_spans.items():
            if p[: len(src)] == src and len(p) > len(src):
                out.key_spans[path + p[len(src):]] = s

    out.spans[()] = doc.span(())
    for key in ("graphres", "name", "input"):
        if key in doc.data:
            copy((key,), (key,))

    scope = r.value(("default_scope",), str, "mmdet", what="default_scope", choices=SCOPES) or "mmdet"
    btype = data.get("type", MISSING)
    if btype is MISSING:
        diags.add("E012", "backbone needs 'type' (one of ResNet, ResNetV1c, ResNetV1d, ResNeXt)", r.span(bb))
        return out
    known = list(TYPES) + [f"mmdet.{t}" for t in TYPES] + [f"mmseg.{t}" for t in MMSEG_TYPES]
    if not isinstance(btype, str) or btype not in known:
        hint = did_you_mean(str(btype), known)
        if isinstance(btype, str) and btype.startswith("mmseg.") and btype[6:] in TYPES:
            hint = f"mmsegmentation has {', '.join(MMSEG_TYPES)}; ResNeXt is mmdetection's (mmdet.ResNeXt)"
        diags.add("E013", f"backbone type {btype!r} is not one of {', '.join(repr(t) for t in TYPES)} "
                          f"(optionally prefixed mmdet. or mmseg.)", r.span(bb + ("type",)), hint)
        return out
    if "." in btype:
        scope, btype = btype.split(".", 1)
    mmseg = scope == "mmseg"
    if mmseg and btype not in MMSEG_TYPES:
        diags.add("E013", f"backbone type {btype!r} is not an mmsegmentation type (default_scope is mmseg)",
                  r.span(bb + ("type",)), f"mmsegmentation has {', '.join(MMSEG_TYPES)}; write mmdet.{btype}")
        return out
    deep_default, avg_default, depths, extra = TYPES[btype]
    extra = extra + (MMSEG_KEYS if mmseg else ())
    r.mapping(bb, COMMON_KEYS + extra + (() if mmseg else MMSEG_KEYS), f"a {btype} backbone")
    at = lambda k: bb + (k,)  # noqa: E731
    if not mmseg:
        for key in MMSEG_KEYS:
            if r.has(at(key)):
                diags.add("E010", f"{key} is an option of mmsegmentation's {btype}, not mmdetection's",
                          r.doc.key_span(at(key)),
                          f"write type: mmseg.{btype if btype in MMSEG_TYPES else 'ResNetV1c'}, or add "
                          f"default_scope: mmseg beside backbone (mmsegmentation's defaults then apply: "
                          f"norm_eval false, stem_channels 64)")

    depth = r.value(at("depth"), int, what="depth")
    if depth is not None and depth not in depths:
        diags.add("E013", f"depth = {depth} is not a {btype} depth ({', '.join(map(str, depths))})",
                  r.span(at("depth")), "ResNeXt has no 18/34: those use basic blocks" if btype == "ResNeXt" else None)
        depth = None
    if depth is None:
        return out
    block, counts = ARCH[depth]

    num_stages = r.value(at("num_stages"), int, 4, what="num_stages", min=1, max=4)
    if num_stages is None:
        num_stages = 4
    strides = r.int_list(at("strides"), [1, 2, 2, 2], what="strides", min=1)
    dilations = r.int_list(at("dilations"), [1, 1, 1, 1], what="dilations", min=1)
    for key, values in (("strides", strides), ("dilations", dilations)):
        # upstream asserts the defaults' length too; graphres cuts the defaults to num_stages
        if r.has(at(key)) and values is not None and len(values) != num_stages:
            diags.add("E015", f"{key} has {len(values)} values but num_stages = {num_stages}",
                      r.span(at(key)), f"give exactly one {key[:-1]} per stage: {num_stages} values")
    if strides is None or len(strides) != num_stages:
        strides = [1, 2, 2, 2][:num_stages]
    if dilations is None or len(dilations) != num_stages:
        dilations = [1] * num_stages

    base = r.value(at("base_channels"), int, 64, what="base_channels", min=1) or 64
    stem_ch = r.get(at("stem_channels"), None)
    if stem_ch is None and mmseg:
        stem_ch, stem_src = 64, bb  # mmsegmentation's default, whatever base_channels is
    elif stem_ch is None:
        stem_ch, stem_src = base, at("base_channels") if r.has(at("base_channels")) else bb
    else:
        stem_ch = r.check(stem_ch, at("stem_channels"), int, base, label="stem_channels", min=1)
        stem_src = at("stem_channels")
    in_ch = r.get(at("in_channels"), MISSING)
    if in_ch is not MISSING:
        put(("input", "channels"), in_ch, at("in_channels"))
    deep = r.value(at("deep_stem"), bool, deep_default, what="deep_stem")
    put(("stem",), {"type": "deep" if deep else "conv7x7", "channels": stem_ch},
        at("deep_stem") if r.has(at("deep_stem")) else bb)
    put(("stem", "channels"), stem_ch, stem_src)
    put(("stem", "type"), "deep" if deep else "conv7x7", at("deep_stem") if r.has(at("deep_stem")) else at("type"))

    block_args: dict[str, Any] = {}
    put(("block_args",), block_args, bb)
    style = r.get(at("style"), MISSING)
    if style is not MISSING:
        put(("block_args", "style"), style, at("style"))
    avg = r.value(at("avg_down"), bool, avg_default, what="avg_down")
    if avg:
        put(("block_args", "avg_down"), True, at("avg_down") if r.has(at("avg_down")) else at("type"))
    if block == "bottleneck" and base != 64:
        put(("block_args", "base_channels"), base, at("base_channels"))
    for key in TYPES[btype][3]:
        if r.has(at(key)):
            put(("block_args", key), r.get(at(key)), at(key))

    per_block = _mmseg_dilations(r, at, counts, dilations, num_stages) if mmseg else {}
    stages = []
    put(("stages",), stages, at("depth"))
    for i in range(num_stages):
        stages.append({"block": block, "blocks": counts[i], "planes": base * 2 ** i,
                       "stride": strides[i], "dilation": per_block.get(i, dilations[i])})
        for k in ("block", "blocks", "planes"):
            out.spans[("stages", i, k)] = doc.span(at("depth"))
        out.spans[("stages", i, "stride")] = doc.span(at("strides") + ((i,) if r.has(at("strides")) else ()))
        out.spans[("stages", i, "dilation")] = doc.span(at("dilations") + ((i,) if r.has(at("dilations")) else ()))
        if i in per_block and r.has(at("multi_grid")) and i == num_stages - 1:
            out.spans[("stages", i, "dilation")] = doc.span(at("multi_grid"))
        out.spans[("stages", i)] = doc.span(at("depth"))

    for key in ("out_indices", "frozen_stages", "norm_eval", "with_cp", "zero_init_residual"):
        if r.has(at(key)):
            copy((key,), at(key))
    if btype == "ResNeXt":
        # mmdetection's ResNeXt never zero-initialises a block's last norm: ResNet's init_cfg
        # override tests `block is Bottleneck`, and ResNeXt's Bottleneck is a subclass
        put(("zero_init_residual",), False, at("zero_init_residual") if r.has(at("zero_init_residual")) else bb)
    if not r.has(at("norm_eval")):
        put(("norm_eval",), not mmseg, bb)  # mmdetection's default is true, mmsegmentation's false
    if r.has(at("norm_cfg")):
        copy(("norm",), at("norm_cfg"))
    conv_cfg = r.get(at("conv_cfg"), None)
    if conv_cfg is not None:
        copy(("conv",), at("conv_cfg"))
        if isinstance(conv_cfg, dict) and conv_cfg.get("type") == "Conv":  # mmcv's alias of Conv2d
            out.data["conv"] = {**conv_cfg, "type": "Conv2d"}

    dcn = r.get(at("dcn"), None)
    swd = r.get(at("stage_with_dcn"), None)
    if dcn is not None:
        _expand_dcn(r, at, out, stages, block, btype, TYPES[btype][3], base, num_stages)
    elif swd is not None and isinstance(swd, (list, tuple)) and any(swd):
        diags.add("E017", "stage_with_dcn enables stages but dcn is null", r.span(at("stage_with_dcn")),
                  "set dcn, or make every entry false")

    def mark(path: Path, src: Path) -> None:
        out.spans[path] = doc.span(src)
        out.key_spans[path] = doc.key_span(src) if src in doc.key_spans else out.spans[path]

    expand_plugins(r, at, block, num_stages, mmseg, stages, mark)

    init_cfg = r.get(at("init_cfg"), None)
    pretrained = r.get(at("pretrained"), None)
    if init_cfg is not None and pretrained is not None:
        diags.add("E017", "init_cfg and pretrained are both set", r.span(at("pretrained")),
                  "pretrained is deprecated: keep only init_cfg: {type: Pretrained, checkpoint: PATH}")
    elif pretrained is not None:
        if isinstance(pretrained, str):
            put(("init",), {"type": "pretrained", "checkpoint": pretrained}, at("pretrained"))
            out.spans[("init", "checkpoint")] = doc.span(at("pretrained"))
            diags.add("W130", "pretrained is deprecated (mmdetection warns and converts it to init_cfg)",
                      r.doc.key_span(at("pretrained")),
                      f"write init_cfg=dict(type='Pretrained', checkpoint={pretrained!r})")
        else:
            diags.add("E011", f"pretrained must be a checkpoint path, found {describe(pretrained)}",
                      r.span(at("pretrained")))
    elif init_cfg is not None:
        if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
            r.mapping(at("init_cfg"), INIT_CFG_KEYS, "init_cfg")
            put(("init",), {"type": "pretrained", "checkpoint": init_cfg.get("checkpoint")}, at("init_cfg"))
            out.spans[("init", "checkpoint")] = doc.span(at("init_cfg") + ("checkpoint",))
            if "prefix" in init_cfg:
                put(("init", "prefix"), init_cfg["prefix"], at("init_cfg") + ("prefix",))
        elif isinstance(init_cfg, (dict, list)):
            # mmengine's initialiser list: the explicit form's init list, types lowercased
            copy(("init",), at("init_cfg"))
            items = out.data["init"] if isinstance(init_cfg, list) else [out.data["init"]]
            converted = [{**item, "type": INIT_CFG_TYPES.get(item["type"], item["type"]) if isinstance(item.get("type"), str) else item.get("type")}
                         if isinstance(item, dict) else item for item in items]
            out.data["init"] = converted if isinstance(init_cfg, list) else converted[0]
            if isinstance(init_cfg, dict):
                out.data["init"] = [out.data["init"]]
                for p in [p for p in out.spans if p[:1] == ("init",) and len(p) > 1]:
                    out.spans[("init", 0) + p[1:]] = out.spans[p]
                for p in [p for p in out.key_spans if p[:1] == ("init",) and len(p) > 1]:
                    out.key_spans[("init", 0) + p[1:]] = out.key_spans[p]
                out.spans[("init", 0)] = doc.span(at("init_cfg"))
        else:
            diags.add("E011", f"init_cfg must be a mapping, found {describe(init_cfg)}", r.span(at("init_cfg")))
    return out



def _mmseg_dilations(r: Reader, at, counts: list[int], dilations: list[int], num_stages: int) -> dict[int, list]:
    """mmsegmentation's per-block dilations: ``contract_dilation`` gives the first block of a dilated
    stage half the stage's dilation; ``multi_grid`` lists the last stage's dilations block by block
    (they replace the stage dilation, they are not multiplied by it)."""
    contract = r.value(at("contract_dilation"), bool, False, what="contract_dilation")
    out: dict[int, list] = {}
    if contract:
        for i in range(num_stages):
            if dilations[i] > 1:
                out[i] = [dilations[i] // 2] + [dilations[i]] * (counts[i] - 1)
    grid = r.get(at("multi_grid"), None)
    if grid is not None:
        last = num_stages - 1
        values = r.int_list(at("multi_grid"), None, what="multi_grid", min=1)
        if values is not None and len(values) != counts[last]:
            r.diags.add("E015", f"multi_grid has {len(values)} values but the last stage (layer{last + 1}) has "
                                f"{counts[last]} blocks", r.span(at("multi_grid")),
                        f"give one dilation per block of layer{last + 1}: {counts[last]} values")
        elif values is not None:
            out[last] = list(values)
    return out


DCN_KEYS = ("type", "deform_groups", "fallback_on_stride")
DCN_TYPES = ("DCN", "DCNv2")


def _expand_dcn(r: Reader, at, out: Located, stages: list, block: str, btype: str, extra: tuple, base: int,
                num_stages: int) -> None:
    """mmdetection's ``dcn`` / ``stage_with_dcn``: the bottlenecks of each marked stage get the
    deformable conv2 (block arguments dcn, deform_groups, fallback_on_stride on those stages).
    mmdet's and mmcv's asserts become located errors here."""
    diags, path = r.diags, at("dcn")
    dcn = r.get(path)
    if not isinstance(dcn, dict):
        diags.add("E011", f"dcn must be a mapping such as {{type: DCN, deform_groups: 1, fallback_on_stride: false}}, "
                          f"found {describe(dcn)}", r.span(path))
        return
    r.mapping(path, DCN_KEYS, "dcn")
    errors = sum(d.is_error for d in diags)  # this key's own mistakes are all reported, then nothing expands
    dtype = dcn.get("type", MISSING)
    if dtype is MISSING:
        diags.add("E012", "dcn needs the key 'type' (DCN or DCNv2)", r.span(path))
    elif dtype not in DCN_TYPES:
        diags.add("E110", f"dcn type {dtype!r} is not one of 'DCN' (deformable conv v1), 'DCNv2' (modulated)",
                  r.span(path + ("type",)), did_you_mean(str(dtype), DCN_TYPES) or "mmcv registers DCN and DCNv2")
    groups = r.value(path + ("deform_groups",), int, 1, what="dcn.deform_groups", min=1)
    fallback = r.value(path + ("fallback_on_stride",), bool, False, what="dcn.fallback_on_stride")
    swd_path = at("stage_with_dcn")
    swd = r.get(swd_path, MISSING)
    if swd is MISSING:
        marks = [False] * num_stages
    elif not isinstance(swd, (list, tuple)) or not all(isinstance(v, bool) for v in swd):
        diags.add("E011", f"stage_with_dcn must be a list of booleans, one per stage, found {describe(swd)}",
                  r.span(swd_path), f"e.g. {[False] + [True] * (num_stages - 1)}")
        return
    elif len(swd) != num_stages:
        diags.add("E114", f"stage_with_dcn has {len(swd)} values but num_stages = {num_stages}",
                  r.span(swd_path), f"give one boolean per stage: {num_stages} values")
        return
    else:
        marks = list(swd)
    if not any(marks):
        return
    first = marks.index(True)
    where = r.span(swd_path + (first,)) if swd is not MISSING else r.span(path)
    if block != "bottleneck":
        diags.add("E111", f"dcn on the basic blocks of a depth-{r.get(at('depth'))} {btype}: mmdetection's BasicBlock "
                          "has no deformable conv (it asserts 'Not implemented yet')", where,
                  "use depth 50, 101 or 152 (bottlenecks), or set dcn: null")
        return
    if r.get(at("conv_cfg"), None) is not None:
        diags.add("E112", "dcn and conv_cfg are both set: mmdetection builds the deformable conv2 only when "
                          "conv_cfg is None ('conv_cfg must be None for DCN')", r.span(path),
                  "remove conv_cfg, or set dcn: null")
    if groups is None or fallback is None:
        return
    groups_of = r.get(at("groups"), 1) if "groups" in extra else 1
    width_of = r.get(at("base_width"), 4) if "base_width" in extra else 4
    for i, marked in enumerate(marks):
        planes = base * 2 ** i
        mid = planes if groups_of == 1 else planes * width_of // base * groups_of
        if marked and isinstance(mid, int) and mid % groups:
            diags.add("E115", f"dcn.deform_groups = {groups} does not divide the {mid} channels of layer{i + 1}'s "
                              "deformable conv2", r.span(path + ("deform_groups",)),
                      f"mmcv's kernels split the input channels evenly among the deform groups; "
                      f"use a divisor of {mid}")
            return
    if sum(d.is_error for d in diags) > errors:
        return
    if fallback:
        diags.add("W110", "fallback_on_stride: graphres keeps the plain 3x3 conv2 where it strides (the first "
                          "block of each marked stage with stride 2, pytorch style); mmdetection instead pops the "
                          "key from the dcn dict it shares, so only the very first marked block falls back "
                          "(and in a ResNeXt none does)", r.span(path + ("fallback_on_stride",)),
                  "to load an mmdetection checkpoint trained with fallback_on_stride: true, write the "
                  "explicit spec's per-block dcn list instead")
    type_span = r.span(path + ("type",))
    for i, marked in enumerate(marks):
        if not marked or i >= len(stages):
            continue
        stages[i]["dcn"] = dtype
        out.spans[("stages", i, "dcn")] = type_span
        if groups != 1:
            stages[i]["deform_groups"] = groups
            out.spans[("stages", i, "deform_groups")] = r.span(path + ("deform_groups",))
        if fallback:
            stages[i]["fallback_on_stride"] = True
            out.spans[("stages", i, "fallback_on_stride")] = r.span(path + ("fallback_on_stride",))
