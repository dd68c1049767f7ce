"""Parse stage, part 6b: the OpenMMLab shorthand's ``plugins`` key -> the stages' ``plugins``.

mmdetection's semantics (``ResNet.make_stage_plugins`` and ``Bottleneck.make_block_plugins``): each
plugin is ``dict(cfg=dict(type=..., postfix=..., **args), position='after_conv1|2|3',
stages=(bool, ...))``; a plugin without ``stages`` goes into every stage; its module is named
after the type's abbreviation plus the cfg's ``postfix`` (``context_block``, ``nonlocal_block1``);
in every block the plugins of one position run in order. mmsegmentation's Bottleneck applies
each plugin of a position to the same input and keeps the last result (``plugin_mode: last``).
mmdetection's and mmcv's asserts become located errors; where mmdetection would build the model
and fail later, a warning says so.
"""
from __future__ import annotations

from typing import Any, Callable

from ..diagnostics import did_you_mean
from .reader import MISSING, Reader, describe
from .source import Path

POSITIONS = ("after_conv1", "after_conv2", "after_conv3")
PLUGIN_KEYS = ("cfg", "position", "stages", "postfix")
# mmcv type -> (graphres block, module name (mmcv's _abbr_), cfg keys -> block parameters)
PLUGIN_TYPES = {
    "ContextBlock": ("context_block", "context_block", ("ratio", "pooling_type", "fusion_types")),
    "NonLocal2d": ("nonlocal_block", "nonlocal_block", ("reduction", "use_scale", "mode", "sub_sample")),
    "GeneralizedAttention": ("gen_attention_block", "gen_attention_block",
                             ("spatial_range", "num_heads", "position_embedding_dim", "position_magnitude",
                              "kv_stride", "q_stride", "attention_type")),
}
UNSUPPORTED_TYPES: dict[str, str] = {}
# attention_type's four bits -> the block parameters (mmcv's attention_type[0..3])
GA_BITS = ("appr_appr", "appr_position", "bias_appr", "bias_position")
NONLOCAL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
FUSION_TYPES = ("channel_add", "channel_mul")


def expand_plugins(r: Reader, at: Callable[[str], Path], block: str, num_stages: int, mmseg: bool,
                   stages: list[dict], mark: Callable[[Path, Path], None]) -> None:
    """Add the plugins of ``backbone.plugins`` to the explicit ``stages`` (dicts); ``mark(path,
    src)`` gives the explicit value at ``path`` the span of the shorthand's ``src``."""
    ppath = at("plugins")
    raw = r.get(ppath, None)
    if raw in (None, MISSING):
        return
    if not isinstance(raw, list):
        r.diags.add("E011", f"plugins must be a list of dict(cfg=..., position=...), found {describe(raw)}",
                    r.span(ppath))
        return
    if not raw:
        return
    if block != "bottleneck":
        r.diags.add("E125", "plugins need Bottleneck blocks, but ResNet-18 and ResNet-34 use BasicBlock "
                            "(mmdetection: 'Not implemented yet')", r.span(ppath),
                    "use depth 50, 101 or 152, or remove plugins")
        return
    names: list[dict[str, Path]] = [{} for _ in range(num_stages)]
    for j, entry in enumerate(raw):
        epath = ppath + (j,)
        if not isinstance(entry, dict):
            r.diags.add("E011", f"plugins[{j}] must be a mapping dict(cfg=..., position=...), found {describe(entry)}",
                        r.span(epath))
            continue
        r.mapping(epath, PLUGIN_KEYS, f"plugins[{j}]", required=("cfg", "position"))
        if "cfg" not in entry or "position" not in entry:
            continue
        position = r.value(epath + ("position",), str, what=f"plugins[{j}].position")
        if position is None:
            continue
        if position not in POSITIONS:
            r.diags.add("E121", f"plugins[{j}].position = {position!r} is not one of "
                                f"{', '.join(map(repr, POSITIONS))}", r.span(epath + ("position",)),
                        did_you_mean(position, POSITIONS))
            continue
        mask = _stages_mask(r, entry, epath, j, num_stages)
        if mask is None:
            continue
        if "postfix" in entry:
            r.diags.add("W122", f"plugins[{j}].postfix is ignored: mmdetection reads the postfix inside cfg",
                        r.doc.key_span(epath + ("postfix",)), "write it as cfg=dict(type=..., postfix=...)")
        made = _plugin_entry(r, entry["cfg"], epath + ("cfg",), j, position)
        if made is None:
            continue
        plugin, name_path = made
        sources = plugin.pop("_spans")
        if plugin.get("spatial_range", -1) >= 0:
            if not _mask_widths_ok(r, at, stages, mask, position, plugin, sources["spatial_range"]):
                continue
            r.diags.add("W124", f"GeneralizedAttention spatial_range = {plugin['spatial_range']} builds in "
                                "mmdetection, but its init_weights() fails on the uint8 local_constraint_map "
                                "parameter (mmengine takes the mean of every parameter: 'mean(): could not infer "
                                "output dtype ... Byte')", r.span(sources["spatial_range"]),
                        "graphres builds and initialises it (the map as mmcv computes it); mmdetection can only "
                        "load a checkpoint")
        clash = next((i for i in range(num_stages) if mask[i] and plugin["name"] in names[i]), None)
        if clash is not None:
            r.diags.add("E124", f"two plugins of layer{clash + 1} are named '{plugin['name']}' (plugins[{j}] and an "
                                f"earlier one): mmdetection asserts 'duplicate plugin {plugin['name']}'",
                        r.span(name_path),
                        "give each plugin of one type a distinct postfix in its cfg: postfix=1, postfix=2")
            continue
        for i in range(num_stages):
            if not mask[i]:
                continue
            names[i][plugin["name"]] = epath
            k = len(stages[i].setdefault("plugins", []))
            stages[i]["plugins"].append(dict(plugin))
            mark(("stages", i, "plugins"), ppath)
            mark(("stages", i, "plugins", k), epath)
            for key, src in sources.items():
                mark(("stages", i, "plugins", k, key), src)
            if mmseg:
                stages[i]["plugin_mode"] = "last"
                mark(("stages", i, "plugin_mode"), ppath)


def _mask_widths_ok(r: Reader, at: Callable[[str], Path], stages: list[dict], mask: list[bool], position: str,
                    plugin: dict, spath: Path) -> bool:
    """mmcv's GeneralizedAttention builds its local_constraint_map only for 256 or 512 input
    channels (max_len 84 or 42; any other width fails with an undefined max_len): E129 at spatial_range."""
    groups, base_width = r.get(at("groups"), 1), r.get(at("base_width"), 4)
    base = r.get(at("base_channels"), 64)
    for i, on in enumerate(mask):
        if not on:
            continue
        planes = stages[i].get("planes")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (planes, groups, base_width, base)) \
                or not base:
            return True  # reported elsewhere; the op rechecks
        width = planes if groups == 1 else planes * base_width // base * groups
        in_ch = planes * 4 if position == "after_conv3" else width
        if in_ch not in (256, 512):
            r.diags.add("E129", f"GeneralizedAttention spatial_range = {plugin['spatial_range']} in layer{i + 1} "
                                f"{position}, where it has {in_ch} input channels: mmcv builds its local_constraint_map "
                                f"only for 256 or 512 (max_len 84 or 42) and fails on others (max_len is undefined)",
                        r.span(spath), "use spatial_range=-1, or stages where the plugin has 256 or 512 channels "
                                       "(after_conv2 in layer3 and layer4 of ResNet-50)")
            return False
    return True


def _stages_mask(r: Reader, entry: dict, epath: Path, j: int, num_stages: int) -> list[bool] | None:
    mask = entry.get("stages")
    if mask is None:
        return [True] * num_stages
    if not isinstance(mask, list) or not all(isinstance(b, bool) for b in mask):
        r.diags.add("E011", f"plugins[{j}].stages must be a list of booleans, one per stage, found {describe(mask)}",
                    r.span(epath + ("stages",)))
        return None
    if len(mask) != num_stages:
        r.diags.add("E122", f"plugins[{j}].stages has {len(mask)} values but num_stages = {num_stages}",
                    r.span(epath + ("stages",)), f"give one boolean per stage: {num_stages} values")
        return None
    return mask


def _plugin_entry(r: Reader, cfg: Any, cpath: Path, j: int, position: str) -> tuple[dict, Path] | None:
    """The explicit stage-plugin entry of one cfg (with a ``_spans`` map), and where its name comes from."""
    if not isinstance(cfg, dict):
        r.diags.add("E011", f"plugins[{j}].cfg must be a mapping dict(type=..., ...), found {describe(cfg)}",
                    r.span(cpath))
        return None
    ptype = cfg.get("type", MISSING)
    if ptype is MISSING:
        r.diags.add("E012", f"plugins[{j}].cfg needs 'type' (one of {', '.join(PLUGIN_TYPES)})", r.span(cpath))
        return None
    if isinstance(ptype, str) and ptype in UNSUPPORTED_TYPES:
        r.diags.add("E016", f"plugin type {ptype!r} is not supported yet", r.span(cpath + ("type",)),
                    "remove this plugin")
        return None
    if not isinstance(ptype, str) or ptype not in PLUGIN_TYPES:
        known = list(PLUGIN_TYPES) + list(UNSUPPORTED_TYPES)
        r.diags.add("E123", f"plugin type {ptype!r} is not one of {', '.join(map(repr, known))}",
                    r.span(cpath + ("type",)), did_you_mean(str(ptype), known))
        return None
    block, abbr, keys = PLUGIN_TYPES[ptype]
    r.mapping(cpath, ("type", "postfix") + keys, f"a {ptype} cfg")
    postfix = cfg.get("postfix", "")
    if not isinstance(postfix, (int, str)) or isinstance(postfix, bool):
        r.diags.add("E011", f"plugins[{j}].cfg.postfix must be an integer or a string, found {describe(postfix)}",
                    r.span(cpath + ("postfix",)))
        return None
    name = abbr + str(postfix)
    if not name.isidentifier():
        r.diags.add("E011", f"plugins[{j}].cfg.postfix {postfix!r} makes the module name {name!r}, which is not "
                            "a Python identifier", r.span(cpath + ("postfix",)))
        return None
    out: dict[str, Any] = {"position": position, "block": block, "name": name}
    spans: dict[str, Path] = {"position": cpath[:-1] + ("position",), "block": cpath + ("type",),
                              "name": cpath + ("postfix",) if "postfix" in cfg else cpath + ("type",)}
    parse = {"ContextBlock": _context_block, "NonLocal2d": _nonlocal, "GeneralizedAttention": _gen_attention}[ptype]
    ok = parse(r, cfg, cpath, out, spans, ptype)
    if not ok:
        return None
    out["_spans"] = spans
    return out, spans["name"]


def _context_block(r: Reader, cfg: dict, cpath: Path, out: dict, spans: dict, ptype: str) -> bool:
    if "ratio" not in cfg:
        r.diags.add("E012", "ContextBlock needs 'ratio' (its bottleneck has int(in_channels * ratio) channels)",
                    r.span(cpath), "mmdetection's GCNet configs use ratio=1./16 (or 1./4)")
        return False
    ratio = r.value(cpath + ("ratio",), float, what="ContextBlock ratio")
    if ratio is None:
        return False
    if ratio <= 0:
        r.diags.add("E014", f"ContextBlock ratio = {ratio!r} must be > 0", r.span(cpath + ("ratio",)))
        return False
    out["ratio"], spans["ratio"] = ratio, cpath + ("ratio",)
    if "pooling_type" in cfg:
        pooling = r.value(cpath + ("pooling_type",), str, what="ContextBlock pooling_type", choices=("att", "avg"))
        if pooling is None:
            return False
        out["pooling_type"], spans["pooling_type"] = pooling, cpath + ("pooling_type",)
    fusion = cfg.get("fusion_types", ["channel_add"])
    fpath = cpath + ("fusion_types",)
    if not isinstance(fusion, list) or not all(isinstance(f, str) for f in fusion):
        r.diags.add("E011", f"ContextBlock fusion_types must be a list of names, found {describe(fusion)}",
                    r.span(fpath))
        return False
    if not fusion:
        r.diags.add("E126", "ContextBlock fusion_types is empty: mmcv asserts 'at least one fusion should be used'",
                    r.span(fpath), "use ('channel_add',), ('channel_mul',) or both")
        return False
    for k, f in enumerate(fusion):
        if f not in FUSION_TYPES:
            r.diags.add("E126", f"ContextBlock fusion type {f!r} is not one of 'channel_add', 'channel_mul'",
                        r.span(fpath + (k,)), did_you_mean(f, FUSION_TYPES))
            return False
    out["channel_add"], out["channel_mul"] = "channel_add" in fusion, "channel_mul" in fusion
    spans["channel_add"] = spans["channel_mul"] = fpath if "fusion_types" in cfg else cpath
    return True


def _nonlocal(r: Reader, cfg: dict, cpath: Path, out: dict, spans: dict, ptype: str) -> bool:
    if "reduction" in cfg:
        reduction = r.value(cpath + ("reduction",), int, what="NonLocal2d reduction")
        if reduction is None:
            return False
        if reduction < 1:
            r.diags.add("E126", f"NonLocal2d reduction = {reduction} must be >= 1 (inner channels are "
                                "max(in_channels // reduction, 1))", r.span(cpath + ("reduction",)),
                        "mmdetection's non-local configs use reduction=4")
            return False
        out["reduction"], spans["reduction"] = reduction, cpath + ("reduction",)
    if "mode" in cfg:
        mode = r.get(cpath + ("mode",))
        if mode not in NONLOCAL_MODES:
            r.diags.add("E126", f"NonLocal2d mode {mode!r} is not one of {', '.join(map(repr, NONLOCAL_MODES))} "
                                "(mmcv raises ValueError)", r.span(cpath + ("mode",)),
                        did_you_mean(str(mode), NONLOCAL_MODES))
            return False
        out["mode"], spans["mode"] = mode, cpath + ("mode",)
        if mode == "concatenation":
            r.diags.add("W121", "NonLocal2d mode 'concatenation' builds and runs forward, but mmcv's in-place "
                                "division of its pairwise weights fails in backward: it cannot be trained in mmcv",
                        r.span(cpath + ("mode",)), "graphres trains it (no in-place division); mmcv does not")
    for key in ("use_scale", "sub_sample"):
        if key in cfg:
            value = r.value(cpath + (key,), bool, what=f"NonLocal2d {key}")
            if value is None:
                return False
            out[key], spans[key] = value, cpath + (key,)
    if out.get("sub_sample"):
        r.diags.add("W120", "NonLocal2d sub_sample=True builds in mmdetection, but its init_weights() fails "
                            "(AttributeError: 'Sequential' object has no attribute 'conv')",
                    r.span(cpath + ("sub_sample",)), "graphres builds and initialises it; mmdetection cannot")
    return True


def _gen_attention(r: Reader, cfg: dict, cpath: Path, out: dict, spans: dict, ptype: str) -> bool:
    """mmcv's GeneralizedAttention arguments: its failures are located errors (E127, E128, E129)."""
    atype = cfg.get("attention_type", "1111")
    apath = cpath + ("attention_type",)
    if not isinstance(atype, str) or len(atype) != 4 or set(atype) - {"0", "1"}:
        r.diags.add("E127", f"GeneralizedAttention attention_type {atype!r} is not a string of four 0/1 bits",
                    r.span(apath if "attention_type" in cfg else cpath),
                    "bit 1: query-key content, 2: query-position, 3: key content (appr_bias), 4: position "
                    "(geom_bias); mmdetection's configs use '1111' and '0010'")
        return False
    if atype == "0000":
        r.diags.add("E127", "GeneralizedAttention attention_type '0000' uses no term: mmcv attends uniformly (the "
                            "mean of the values at every position), which graphres does not build",
                    r.span(apath), "set at least one bit ('0010': key content only)")
        return False
    bits = [c == "1" for c in atype]
    for name, bit in zip(GA_BITS, bits):
        out[name] = bit
        spans[name] = apath if "attention_type" in cfg else cpath
    ints = {}
    for key, low in (("num_heads", 1), ("kv_stride", 1), ("q_stride", 1), ("position_embedding_dim", None),
                     ("position_magnitude", None), ("spatial_range", None)):
        if key not in cfg:
            continue
        value = r.value(cpath + (key,), int, what=f"GeneralizedAttention {key}")
        if value is None:
            return False
        if low is not None and value < low:
            r.diags.add("E128", f"GeneralizedAttention {key} = {value} must be >= {low}", r.span(cpath + (key,)),
                        {"num_heads": "mmcv splits the channels into num_heads heads of in_channels // num_heads",
                         "kv_stride": "mmcv subsamples keys and values by kv_stride (1: none)",
                         "q_stride": "mmcv subsamples the queries by q_stride (1: none)"}[key])
            return False
        ints[key] = value
    pos_dim = ints.get("position_embedding_dim", -1)
    if (bits[1] or bits[3]) and pos_dim > 0 and pos_dim % 4:
        r.diags.add("E128", f"GeneralizedAttention position_embedding_dim = {pos_dim} is not a multiple of 4: mmcv's "
                            f"sine embedding has {2 * -(-pos_dim // 4)} values but its appr_geom_fc Linear takes "
                            f"{pos_dim // 2} (a shape error in forward)", r.span(cpath + ("position_embedding_dim",)),
                    "mmdetection's configs use position_embedding_dim: -1 (in_channels) or a multiple of 4")
        return False
    for key in ("spatial_range", "num_heads", "position_embedding_dim", "position_magnitude", "kv_stride", "q_stride"):
        if key in ints:
            out[key], spans[key] = ints[key], cpath + (key,)
    if "num_heads" not in ints:
        out["num_heads"], spans["num_heads"] = 9, cpath  # mmcv's default (the block's too)
    if not (bits[0] or bits[2]):
        out["block"] = "gen_attention_position_block"

    if bits[1] and not bits[3]:
        r.diags.add("W123", f"GeneralizedAttention attention_type {atype!r}: without its fourth bit, mmcv's "
                            "query-position term reads the query with height and width swapped in its y part, and "
                            "fails on maps that are not square", r.span(apath),
                    "graphres computes it as mmcv does (square maps only, E120 otherwise); '1111' or '0101' "
                    "add geom_bias and take the regular branch")
    return True
