"""Parse stage, part 4: block types, written in YAML, read into :class:`BlockDef` objects.

The built-in blocks (``graphres/blocks/*.yaml``) are read by exactly the code that reads a user's
``blocks:`` section. A block has typed parameters with defaults, derived values (``let``), an
output channel expression and a list of layers made of primitive ops (see :mod:`graphres.ops`).
Structure, op names, attribute names and expression syntax are checked here; values are computed
when a stage instantiates the block (:mod:`graphres.lower`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from ..diagnostics import DiagnosticBag, SourceCache, Span, did_you_mean
from ..ops import OPS, REQUIRED
from .expr import ExprError, names_in
from .reader import MISSING, Reader, describe, is_kind
from .source import Located, Path, parse_yaml

PARAM_TYPES = {"int": int, "bool": bool, "str": str, "float": float}
STR_ATTRS = {("act", "type")}
BLOCK_KEYS = ("doc", "kind", "params", "let", "out_channels", "layers", "modules")
LAYER_KEYS = ("name", "op", "from", "when", "init")
SLOT_KEYS = ("slot",)  # a plugin position: {slot: after_conv1} (graphres.spec.plugins)
INIT_CHOICES = ("default", "zeros", "normal_0.01", "kaiming_fan_in", "kaiming_uniform_fan_in_a1", "torch_bias")
SEQ_KEYS = ("seq", "from", "when", "layers")
USE_KEYS = ("name", "block", "from", "when")  # plus the used block's parameters
IMPLICIT_NAMES = ("in_channels", "out_channels")
PARAM_KEYS = ("type", "default", "choices", "min", "doc")
BLOCK_KINDS = ("block", "stem", "plugin")  # a plugin goes into a stage's plugins or a block's layers


@dataclass
class ParamDef:
    name: str
    type: type
    default: Any  # MISSING when required
    choices: tuple | None = None
    min: int | None = None
    path: Path = ()


@dataclass
class LayerDef:
    """One layer (``op`` set), a numbered group of layers (``seq`` set) or a use of another block
    type (``block`` set; ``attrs`` then holds its arguments as expressions)."""

    path: Path
    name: str | None = None
    op: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] | None = None  # ``from``; None = the previous layer
    when: Any = True  # bool or expression text
    seq: str | None = None
    layers: list["LayerDef"] = field(default_factory=list)
    block: str | None = None
    bare: dict[str, Any] = field(default_factory=dict)  # used-block arguments written as a bare word -> names in scope
    slot: str | None = None  # a plugin position: the stage's plugins for it run here (else a pass-through)
    init: str = "default"  # the module's own initialisation after the network's (INIT_CHOICES)


@dataclass
class BlockDef:
    name: str
    kind: str  # "block" or "stem"
    doc: Located
    path: Path
    params: dict[str, ParamDef]
    lets: list[tuple[str, Any, Path]]
    out_channels: Any
    layers: list[LayerDef]
    description: str = ""
    builtin: bool = False
    # the order its modules are declared in the built module (a reference implementation's
    # __init__ order, so state-dict keys come in the same order); unlisted ones follow in use order
    modules: tuple = ()

    def reads(self, name: str) -> bool:
        """Whether any expression of the block uses ``name`` (a parameter can be accepted and ignored)."""
        exprs = [e for _, e, _ in self.lets] + [self.out_channels]
        stack = list(self.layers)
        while stack:
            layer = stack.pop()
            exprs += [layer.when, *layer.attrs.values()]
            stack += layer.layers
        return any(isinstance(e, str) and name in names_in(e) for e in exprs if e is not True)


def expr_span(doc: Located, path: Path, text: str, col: int, length: int = 1) -> Span:
    """The span of a column inside an expression stored at ``path``."""
    base = doc.span(path)
    lead = len(text) - len(text.lstrip())
    if base.line <= 0:
        return base
    return Span(base.file, base.line, base.col + lead + col, max(1, length), base.origin)


def parse_blocks(doc: Located, root: Path, diags: DiagnosticBag, builtin: bool = False) -> dict[str, BlockDef]:
    """Read the mapping at ``root`` (block name -> definition)."""
    r = Reader(doc, diags)
    section = r.get(root)
    if section is MISSING or section is None:
        return {}
    if not isinstance(section, dict):
        diags.add("E011", f"blocks must be a mapping of block name to definition, found {describe(section)}",
                  r.span(root))
        return {}
    out = {}
    for name, body in section.items():
        block = _parse_block(r, str(name), root + (name,), builtin)
        if block is not None:
            out[str(name)] = block
    return out


def _parse_block(r: Reader, name: str, path: Path, builtin: bool) -> BlockDef | None:
    body = r.mapping(path, BLOCK_KEYS, f"block '{name}'", required=("layers",))
    if body is None:
        return None
    kind = r.value(path + ("kind",), str, "block", what=f"block '{name}' kind", choices=BLOCK_KINDS)
    params: dict[str, ParamDef] = {}
    p_section = r.get(path + ("params",), {})
    if not isinstance(p_section, dict):
        r.diags.add("E011", f"params of block '{name}' must be a mapping, found {describe(p_section)}",
                    r.span(path + ("params",)))
        p_section = {}
    for pname, pdecl in p_section.items():
        ppath = path + ("params", pname)
        if pname in IMPLICIT_NAMES:
            r.diags.add("E013", f"'{pname}' is set by graphres for every block and cannot be a parameter",
                        r.doc.key_span(ppath), "read it in expressions without declaring it")
            continue
        param = _parse_param(r, str(pname), pdecl, ppath)
        if param is not None:
            params[str(pname)] = param
    known = set(params) | {"in_channels"}  # out_channels is computed after the lets
    lets = []
    let_section = r.get(path + ("let",), {})
    if not isinstance(let_section, dict):
        r.diags.add("E011", f"let of block '{name}' must be a mapping of name to expression", r.span(path + ("let",)))
        let_section = {}
    for lname, lvalue in let_section.items():
        lpath = path + ("let", lname)
        if lname in params or lname in IMPLICIT_NAMES:
            r.diags.add("E013", f"let '{lname}' shadows a parameter of block '{name}'", r.doc.key_span(lpath))
            continue
        _check_expr(r, lvalue, lpath, known, f"let '{lname}'")
        known.add(str(lname))
        lets.append((str(lname), lvalue, lpath))
    out_channels = body.get("out_channels", MISSING)
    if out_channels is MISSING:
        r.diags.add("E012", f"block '{name}' needs 'out_channels' (an expression such as 'planes * 4')",
                    r.doc.key_span(path))
    else:
        _check_expr(r, out_channels, path + ("out_channels",), known, "out_channels")
    layers = _parse_layers(r, path + ("layers",), known | {"out_channels"}, f"block '{name}'")
    description = body.get("doc", "") if isinstance(body.get("doc", ""), str) else ""
    modules = body.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        r.diags.add("E011", f"modules of block '{name}' must be a list of module names", r.span(path + ("modules",)))
        modules = []
    return BlockDef(name, kind or "block", r.doc, path, params, lets, out_channels, layers, description, builtin,
                    tuple(modules))


def _parse_param(r: Reader, name: str, decl: Any, path: Path) -> ParamDef | None:
    if isinstance(decl, str):
        decl = {"type": decl}
        type_path = path
    elif isinstance(decl, dict):
        r.mapping(path, PARAM_KEYS, f"parameter '{name}'", required=("type",))
        type_path = path + ("type",)
    else:
        r.diags.add("E011", f"parameter '{name}' must be a type name (int, bool, str) or a mapping, "
                            f"found {describe(decl)}", r.span(path))
        return None
    tname = decl.get("type")
    if not isinstance(tname, str) or tname not in PARAM_TYPES:
        if tname is not None:
            r.diags.add("E013", f"parameter type {tname!r} is not one of 'int', 'bool', 'str', 'float'", r.span(type_path),
                        did_you_mean(str(tname), PARAM_TYPES))
        return None
    ptype = PARAM_TYPES[tname]
    default = decl.get("default", MISSING)
    choices = decl.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(is_kind(c, ptype) for c in choices)):
        r.diags.add("E011", f"choices of parameter '{name}' must be a list of {tname} values",
                    r.span(path + ("choices",)))
        choices = None
    minimum = decl.get("min")
    if minimum is not None and (ptype is not int or not is_kind(minimum, int)):
        r.diags.add("E011", f"min of parameter '{name}' must be an integer (and the parameter an int)",
                    r.span(path + ("min",)))
        minimum = None
    if default is not MISSING:
        r.check(default, path + ("default",), ptype, label=f"default of parameter '{name}'",
                choices=choices, min=minimum)
    return ParamDef(name, ptype, default, tuple(choices) if choices else None, minimum, path)


def _check_expr(r: Reader, value: Any, path: Path, known: set[str], label: str) -> None:
    if not isinstance(value, str):
        if not isinstance(value, (int, bool, float)):  # a float is a float parameter's value (a ratio)
            r.diags.add("E011", f"{label} must be an integer, a boolean or an expression string, "
                                f"found {describe(value)}", r.span(path))
        return
    try:
        unknown = sorted(names_in(value) - known)
    except ExprError as e:
        r.diags.add("E022", f"bad expression in {label}: {e.message}", expr_span(r.doc, path, value, e.col), e.hint)
        return
    for n in unknown:
        col = _find_name(value, n)
        r.diags.add("E022", f"unknown name '{n}' in {label}", expr_span(r.doc, path, value, col, len(n)),
                    did_you_mean(n, known) or f"names in scope: {', '.join(sorted(known))}")


def _find_name(text: str, name: str) -> int:
    import re
    m = re.search(rf"\b{re.escape(name)}\b", text.lstrip())
    return m.start() if m else 0


def _parse_layers(r: Reader, path: Path, known: set[str], where: str) -> list[LayerDef]:
    items = r.get(path)
    if items is MISSING:
        return []
    if not isinstance(items, list) or not items:
        r.diags.add("E011", f"layers of {where} must be a non-empty list", r.span(path))
        return []
    out = []
    for i, item in enumerate(items):
        lpath = path + (i,)
        if not isinstance(item, dict):
            r.diags.add("E011", f"layer {i} of {where} must be a mapping, found {describe(item)}", r.span(lpath))
            continue
        if "slot" in item:
            r.mapping(lpath, SLOT_KEYS, "a plugin slot")
            slot = item.get("slot")
            if not isinstance(slot, str) or not slot.isidentifier():
                r.diags.add("E011", f"slot must be a position name such as after_conv1, found {describe(slot)}",
                            r.span(lpath + ("slot",)))
                continue
            layer = LayerDef(lpath, name=slot, slot=slot)
        elif "seq" in item:
            layer = _parse_seq(r, item, lpath, known, where)
        elif "block" in item and "op" not in item:
            layer = _parse_use(r, item, lpath, known, where)
        else:
            layer = _parse_layer(r, item, lpath, known, where)
        if layer is not None and layer.name == "input":  # 'from: input' means the block's input
            key = "seq" if layer.seq is not None else "name" if "name" in item else "block"
            r.diags.add("E013", f"layer name 'input' in {where} is reserved: 'from: input' names the block's input",
                        r.span(lpath + (key,)), "give the layer another name")
            continue
        if layer is not None:
            out.append(layer)
    return out


def _parse_common(r: Reader, item: dict, path: Path, known: set[str], layer: LayerDef) -> None:
    if "from" in item:
        src = item["from"]
        names = [src] if isinstance(src, str) else src
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            r.diags.add("E011", f"'from' must be a layer name or a list of names, found {describe(src)}",
                        r.span(path + ("from",)))
        else:
            layer.inputs = names
    if "when" in item:
        layer.when = item["when"]
        _check_expr(r, item["when"], path + ("when",), known, "when")


def _parse_seq(r: Reader, item: dict, path: Path, known: set[str], where: str) -> LayerDef | None:
    r.mapping(path, SEQ_KEYS, "a seq group", required=("layers",))
    name = item.get("seq")
    if not isinstance(name, str) or not name:
        r.diags.add("E011", f"seq must be a module name, found {describe(name)}", r.span(path + ("seq",)))
        return None
    layer = LayerDef(path, name=name, seq=name)
    _parse_common(r, item, path, known, layer)
    layer.layers = _parse_layers(r, path + ("layers",), known, f"seq '{name}'")
    for sub in layer.layers:
        if sub.seq is not None or sub.name is not None:
            r.diags.add("E013", f"layers inside seq '{name}' are numbered 0, 1, ...: drop their names and groups",
                        r.doc.key_span(sub.path + (("seq",) if sub.seq else ("name",))))
    return layer


def _parse_use(r: Reader, item: dict, path: Path, known: set[str], where: str) -> LayerDef | None:
    """A layer that instantiates another block type: ``{name: se, block: se, reduction: 16}``.

    Whether the block exists, its arguments and cycles are checked by :func:`check_block_uses`
    once every block type is known."""
    bname = item.get("block")
    if not isinstance(bname, str) or not bname:
        r.diags.add("E011", f"block must be a block type name, found {describe(bname)}", r.span(path + ("block",)))
        return None
    name = item.get("name", bname)  # by default the modules are named after the block type
    if not isinstance(name, str) or not name:
        r.diags.add("E011", f"layer name must be a string, found {describe(name)}", r.span(path + ("name",)))
        return None
    layer = LayerDef(path, name=name, block=bname)
    _parse_common(r, item, path, known, layer)
    for key, value in item.items():
        if key in USE_KEYS:
            continue
        if isinstance(value, str) and value.strip().isidentifier() and value.strip() not in known:
            layer.bare[str(key)] = known  # a bare word: a string argument, or an unknown name (check_block_uses)
        else:
            _check_expr(r, value, path + (key,), known, f"{bname}.{key}")
        layer.attrs[str(key)] = value
    return layer


def check_block_uses(blocks: dict[str, BlockDef], diags: DiagnosticBag) -> None:
    """Check the layers that use other block types: the type exists and is a block, the arguments
    are its parameters, the required ones are given, and no block uses itself (directly or not)."""
    uses: dict[str, list[tuple[str, LayerDef]]] = {}
    for bname, block in blocks.items():
        if block.builtin:
            continue
        r = Reader(block.doc, diags)
        stack = list(block.layers)
        while stack:
            layer = stack.pop(0)
            stack[:0] = layer.layers
            if layer.block is None:
                continue
            target = blocks.get(layer.block)
            names = [n for n, b in blocks.items() if b.kind == "block"]
            if target is None or target.kind not in ("block", "plugin"):
                what = "is a stem, not a block" if target is not None else "is not a known block type"
                diags.add("E020", f"block type {layer.block!r} {what}", r.span(layer.path + ("block",)),
                          did_you_mean(layer.block, names) or f"block types: {', '.join(names)}")
                continue
            uses.setdefault(bname, []).append((layer.block, layer))
            for key in layer.attrs:
                if key not in target.params:
                    diags.add("E010", f"block '{layer.block}' has no parameter '{key}'",
                              r.doc.key_span(layer.path + (key,)),
                              did_you_mean(key, target.params) or
                              (f"its parameters: {', '.join(target.params)}" if target.params else None))
            for key, known in layer.bare.items():
                p = target.params.get(key)
                if p is not None and p.type is not str:  # only a string parameter takes a bare word
                    _check_expr(r, layer.attrs[key], layer.path + (key,), known, f"{layer.block}.{key}")
            for key, p in target.params.items():
                if p.default is MISSING and key not in layer.attrs:
                    diags.add("E012", f"layer '{layer.name}' uses block '{layer.block}' without its parameter "
                                      f"'{key}'", r.span(layer.path))
    done: set[str] = set()  # blocks whose uses have all been followed (each is walked once)

    def visit(name: str, trail: list[str]) -> None:
        for target, layer in uses.get(name, []):
            if target in trail:
                cycle = trail[trail.index(target):] + [target]
                at = next(lay for t, lay in uses[cycle[0]] if t == cycle[1])
                diags.add("E050", f"block '{cycle[0]}' uses itself: {' -> '.join(cycle)}",
                          blocks[cycle[0]].doc.span(at.path + ("block",)),
                          "a block may use other blocks, but not itself, directly or through others")
            elif target not in done:
                visit(target, trail + [target])
        done.add(name)

    for name in uses:
        if name not in done:
            visit(name, [name])


def _parse_layer(r: Reader, item: dict, path: Path, known: set[str], where: str) -> LayerDef | None:
    op = item.get("op")
    if op is not None and not isinstance(op, str):
        r.diags.add("E011", f"op must be an op name, found {describe(op)}", r.span(path + ("op",)))
        return None
    if op is None:
        r.diags.add("E012", f"a layer of {where} needs 'op' (one of {', '.join(OPS)}) or 'seq'", r.span(path))
        return None
    if op not in OPS:
        r.diags.add("E021", f"unknown op {op!r}", r.span(path + ("op",)),
                    did_you_mean(str(op), OPS) or f"ops: {', '.join(OPS)}")
        return None
    opdef = OPS[op]
    r.mapping(path, LAYER_KEYS + tuple(opdef.attrs), f"'{op}' layer")
    name = item.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        r.diags.add("E011", f"layer name must be a string, found {describe(name)}", r.span(path + ("name",)))
        name = None
    layer = LayerDef(path, name=name, op=op)
    _parse_common(r, item, path, known, layer)
    if "init" in item:
        layer.init = r.check(item["init"], path + ("init",), str, "default", label="init", choices=INIT_CHOICES) \
            or "default"
    for attr, default in opdef.attrs.items():
        if attr in item:
            value = item[attr]
            apath = path + (attr,)
            if attr in opdef.list_attrs:
                if not isinstance(value, list) or not value:
                    r.diags.add("E011", f"{op}.{attr} must be a non-empty list of integers or expressions, "
                                        f"found {describe(value)}", r.span(apath))
                    continue
                for j, v in enumerate(value):
                    _check_expr(r, v, apath + (j,), known, f"{op}.{attr}[{j}]")
            elif (op, attr) in STR_ATTRS:
                choices = opdef.choices.get(attr)
                r.check(value, apath, str, label=f"{op}.{attr}", choices=choices)
            else:
                _check_expr(r, value, apath, known, f"{op}.{attr}")
            layer.attrs[attr] = value
        elif default is REQUIRED:
            r.diags.add("E012", f"'{op}' layer needs '{attr}'", r.span(path))
    return layer


@lru_cache(maxsize=None)
def _builtin_text() -> tuple[tuple[str, str], ...]:
    files = resources.files("graphres") / "blocks"
    return tuple(sorted((f"<graphres>/blocks/{f.name}", f.read_text(encoding="utf-8"))
                        for f in files.iterdir() if f.name.endswith(".yaml")))


def builtin_blocks(sources: SourceCache | None = None) -> dict[str, BlockDef]:
    """The block types that ship with graphres, read by the same parser as user blocks (once per
    process: the files are part of the package; ``sources`` still gets their text, for messages)."""
    if sources is not None:
        for name, text in _builtin_text():
            sources.add(name, text)
    return dict(_parsed_builtins())


@lru_cache(maxsize=None)
def _parsed_builtins() -> tuple[tuple[str, BlockDef], ...]:
    out: dict[str, BlockDef] = {}
    for name, text in _builtin_text():
        diags = DiagnosticBag()
        doc = parse_yaml(text, name, trusted=True)
        out.update(parse_blocks(doc, ("blocks",), diags, builtin=True))
        assert not diags.has_errors, [d.headline() for d in diags]  # shipped files are tested
    return tuple(out.items())
