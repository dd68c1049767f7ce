"""Parse stage, part 7: a stage's plugins (attention blocks inserted at a block's plugin slots).

A stage entry may list ``plugins``: each is ``{position: SLOT, block: TYPE, name: NAME, ...args}``
where SLOT is a ``{slot: ...}`` layer of the stage's block type (the bottleneck has
``after_conv1``, ``after_conv2`` and ``after_conv3``), TYPE a block type (``context_block``,
``nonlocal_block``, ``gen_attention_block`` or the user's own) and NAME the module name its layers
nest under (default: the block type's name). Every block of the stage gets them. ``plugin_mode``
says how several plugins of one slot combine: ``chain`` (mmdetection: each takes the previous
one's output) or ``last`` (mmsegmentation: each takes the slot's input, the last result is kept).

The arguments are literal values (the stage has no names in scope), checked here against the
plugin block's parameters; the values that depend on channels are computed when lowering.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..diagnostics import did_you_mean
from .blocks import BlockDef, LayerDef
from .reader import MISSING, Reader, describe
from .source import Path

PLUGIN_KEYS = ("position", "block", "name")
PLUGIN_MODES = ("chain", "last")


@dataclass
class StagePlugin:
    position: str  # the slot
    layer: LayerDef  # a use of the plugin's block type, named after the module it makes
    path: Path


def block_slots(block: BlockDef) -> list[str]:
    """The plugin slots of a block type, in layer order."""
    out, stack = [], list(block.layers)
    while stack:
        layer = stack.pop(0)
        stack[:0] = layer.layers
        if layer.slot is not None:
            out.append(layer.slot)
    return out


def parse_stage_plugins(r: Reader, item: dict, spath: Path, blocks: dict[str, BlockDef],
                        block_types: list[str]) -> tuple[list[StagePlugin], str]:
    """The plugins of the stage entry ``item`` at ``spath`` and its plugin_mode; errors go to r.diags."""
    mode = r.value(spath + ("plugin_mode",), str, "chain", what="plugin_mode", choices=PLUGIN_MODES) or "chain"
    raw = item.get("plugins", MISSING)
    if raw is MISSING or raw is None:
        return [], mode
    ppath = spath + ("plugins",)
    if not isinstance(raw, list):
        r.diags.add("E011", f"plugins must be a list of {{position, block, ...}} mappings, found {describe(raw)}",
                    r.span(ppath))
        return [], mode
    slots = {t: block_slots(blocks[t]) for t in block_types}
    without = [t for t, s in slots.items() if not s]
    if raw and without:
        with_slots = [n for n, b in blocks.items() if b.kind == "block" and block_slots(b)]
        r.diags.add("E125", f"block type '{without[0]}' has no plugin positions, so its stage takes no plugins",
                    r.span(ppath), "plugins go into blocks with {slot: ...} layers"
                    + (f": {', '.join(with_slots)}" if with_slots else ""))
        return [], mode
    known_slots = list(dict.fromkeys(s for t in block_types for s in slots[t]))
    out: list[StagePlugin] = []
    seen: dict[str, Path] = {}
    for j, entry in enumerate(raw):
        epath = ppath + (j,)
        if not isinstance(entry, dict):
            r.diags.add("E011", f"plugin {j} must be a mapping such as {{position: after_conv3, block: context_block, "
                                f"ratio: 0.0625}}, found {describe(entry)}", r.span(epath))
            continue
        position = r.value(epath + ("position",), str, what=f"plugins[{j}].position")
        btype = r.value(epath + ("block",), str, what=f"plugins[{j}].block")
        if position is None or btype is None:
            if "position" not in entry or "block" not in entry:
                r.diags.add("E012", f"plugin {j} needs 'position' and 'block'", r.span(epath))
            continue
        if any(position not in slots[t] for t in block_types):
            r.diags.add("E121", f"plugin position {position!r} is not one of the block's positions "
                                f"({', '.join(known_slots)})", r.span(epath + ("position",)),
                        did_you_mean(position, known_slots))
            continue
        target = blocks.get(btype)
        if target is None or target.kind not in ("block", "plugin"):
            names = [n for n, b in blocks.items() if b.kind == "plugin"]
            r.diags.add("E123", f"plugin block type {btype!r} is not a known block type", r.span(epath + ("block",)),
                        did_you_mean(btype, names) or f"block types: {', '.join(names)}")
            continue
        name = r.value(epath + ("name",), str, btype, what=f"plugins[{j}].name") or btype
        if not name.isidentifier():
            r.diags.add("E011", f"plugin name {name!r} must be a module name (letters, digits, _)",
                        r.span(epath + ("name",)))
            continue
        if name in seen:
            r.diags.add("E124", f"two plugins of {_stage(spath)} are named '{name}'",
                        r.span(epath + (("name",) if "name" in entry else ("block",))),
                        "each plugin's modules nest under its name: give them distinct names (mmdetection: a "
                        "distinct postfix in cfg)")
            continue
        seen[name] = epath
        layer = LayerDef(epath, name=name, block=btype)
        bad = False
        for key, value in entry.items():
            if key in PLUGIN_KEYS:
                continue
            p = target.params.get(key)
            if p is None:
                r.diags.add("E010", f"plugin block '{btype}' has no parameter '{key}'", r.doc.key_span(epath + (key,)),
                            did_you_mean(str(key), target.params) or
                            (f"its parameters: {', '.join(target.params)}" if target.params else None))
                bad = True
                continue
            checked = r.check(value, epath + (key,), p.type, MISSING, label=f"{btype}.{key}", choices=p.choices,
                              min=p.min)
            if checked is MISSING:
                bad = True
                continue
            layer.attrs[str(key)] = repr(checked) if isinstance(checked, str) else checked  # a literal
        for key, p in target.params.items():
            if p.default is MISSING and key not in entry:
                r.diags.add("E012", f"plugin block '{btype}' needs its parameter '{key}'", r.span(epath))
                bad = True
        if not bad:
            out.append(StagePlugin(position, layer, epath))
    return out, mode


def _stage(spath: Path) -> str:
    return f"stages[{spath[-1]}]" if spath and isinstance(spath[-1], int) else "the stage"
