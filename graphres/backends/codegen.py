"""Backend: the graph IR -> Python source of a torch network (read by the torch backend and
written as a standalone ``.py``).

The source reads like torchvision's resnet.py: one class per block type (a second class where
instances of the type differ in structure, e.g. ``BottleneckDownsample`` for the blocks with a
projection shortcut), each stage an ``nn.Sequential`` of blocks, and a network class whose
``forward`` calls every layer through the module tree (``self.conv1(x)``, ``self.downsample(x)``),
so replacing, wrapping or converting a submodule takes effect. Values get names from a fresh
name table, a value is reused or deleted after its last reader, and in-place operations are
exactly the ones the analysis decided (``meta['in_place']``). The op table says how each op is
emitted; this module only reads the IR. It does not import torch.
"""
from __future__ import annotations

import ast
import itertools
import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import networkx as nx

from .. import __version__, ir
from ..ops import OPS

RUNTIME_MODULE = "graphres.backends.runtime"
# runtime classes every network needs; the op table adds the layer classes it emits
BASE_RUNTIME = ("FeatureInfo", "FeatureInfoList", "GraphresBlock", "GraphresBackbone")
# runtime functions the generated network uses when module_inits is set
INIT_RUNTIME = ("init_module",)


# -- names ----------------------------------------------------------------------------------------

class Namespace:
    """A fresh name table: every name it hands out is a valid identifier, not a keyword or a
    builtin the generated code uses, and unique in its scope (torch.fx's rule)."""

    RESERVED = frozenset({"self", "torch", "nn", "Tensor", "Tuple", "List", "Optional", "checkpoint", "x"})

    def __init__(self, taken: Sequence[str] = ()) -> None:
        self._used = set(taken)

    def make(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint).strip("_") or "v"
        if base[0].isdigit():
            base = "v" + base
        name, k = base, 1
        while name in self._used or name in self.RESERVED or keyword.iskeyword(name):
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Mark a name handed out elsewhere (a body's default value name) as taken."""
        self._used.add(name)


def camel(name: str) -> str:
    parts = [p for p in re.split(r"[^0-9a-zA-Z]+", name) if p]
    text = "".join(p[0].upper() + p[1:] for p in parts) or "Net"
    return text if text[0].isalpha() else "Net" + text


def _attr_ref(path: str) -> str:
    """``downsample.0`` -> ``self.downsample[0]``."""
    out = "self"
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


# -- module constructors --------------------------------------------------------------------------

@dataclass
class _Ctor:
    """One module constructor: the callee and its arguments (values kept apart from the text, so
    the arguments that vary between the instances of a block class become its parameters)."""

    callee: str
    args: list  # values, positional
    kwargs: list  # (keyword, value)
    defaults: dict = field(default_factory=dict)  # keywords that may be left out at these values

    def shape(self) -> tuple:
        return (self.callee, len(self.args), tuple(k for k, _ in self.kwargs))

    def values(self) -> list:
        return list(self.args) + [v for _, v in self.kwargs]

    def text(self, exprs: Sequence[str]) -> str:
        """The call with these argument expressions; a keyword left at its default is left out."""
        n = len(self.args)
        parts = list(exprs[:n]) + [f"{k}={e}" for (k, _), e in zip(self.kwargs, exprs[n:])
                                   if not (k in self.defaults and e == repr(self.defaults[k]))]
        return f"{self.callee}({', '.join(parts)})"


_CALL = re.compile(r"^([\w.]+)\((.*)\)$", re.S)


def _parse_ctor(source: str, defaults: dict | None = None) -> _Ctor:
    """Split the op table's constructor source (``nn.Conv2d(64, 64, 3, padding=1, bias=False)``)
    into values; the op table writes literals only."""
    m = _CALL.match(source)
    assert m, source
    callee, inner = m.groups()
    args, kwargs = [], []
    for part in _split_args(inner):
        key, eq, val = part.partition("=")
        if eq and key.strip().isidentifier():
            kwargs.append((key.strip(), _literal(val.strip())))
        else:
            args.append(_literal(part.strip()))
    return _Ctor(callee, args, kwargs, dict(defaults or {}))


def _split_args(inner: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def _literal(text: str) -> Any:
    return ast.literal_eval(text)


def _ctor(g: nx.DiGraph, n: str) -> _Ctor:
    d = g.nodes[n]
    op = OPS[d[ir.OP]]
    source = op.torch.module(d[ir.ATTRS], d[ir.IN_CH], d[ir.OUT_CH], g.graph, d[ir.META]["in_place"])
    key = (source, tuple(sorted((op.torch.defaults or {}).items())))
    parsed = _PARSED.get(key)
    if parsed is None:  # the blocks of a stage repeat the same constructors: parse each text once
        if len(_PARSED) > 10_000:  # a long-lived process (the language server) stays bounded
            _PARSED.clear()
        parsed = _PARSED[key] = _parse_ctor(source, op.torch.defaults)
    return _Ctor(parsed.callee, list(parsed.args), list(parsed.kwargs), dict(parsed.defaults))


_PARSED: dict[tuple, _Ctor] = {}  # (constructor source, defaults) -> its parse (copied on use)


# -- function bodies ------------------------------------------------------------------------------

@dataclass
class _Step:
    """One line of a forward: ``result = call(operands)``; a Sequential chain is one step."""

    node: str  # the node whose value it makes
    operands: list[str]
    module: str | None  # path relative to the owner, for module calls
    op: str
    in_place: bool


def _steps(g: nx.DiGraph, nodes: list[str], prefix: str) -> list[_Step]:
    """The steps of ``nodes`` (one block instance, the stem or the head): module calls relative to
    ``prefix``; a chain through every numbered child of a container (``downsample.0``,
    ``downsample.1``) becomes one call of the ``nn.Sequential``."""
    steps: list[_Step] = []
    chains = _chains(g, nodes, prefix)
    skip: set[str] = set()
    for n in nodes:
        if n in skip:
            continue
        d = g.nodes[n]
        if n in chains:
            container, members = chains[n]
            skip.update(members)
            steps.append(_Step(members[-1], ir.inputs_of(g, members[0]), container, "<sequential>", False))
            continue
        module = d[ir.MODULE][len(prefix):] if d[ir.MODULE] else None
        steps.append(_Step(n, ir.inputs_of(g, n), module, d[ir.OP], bool(d[ir.META].get("in_place"))))
    return steps


def _chains(g: nx.DiGraph, nodes: list[str], prefix: str) -> dict[str, tuple[str, list[str]]]:
    """Containers whose numbered children are called once each, in order, as a chain whose inner
    values nothing else reads: first node -> (container path, chain nodes)."""
    by_container: dict[str, list[str]] = {}
    for n in nodes:
        module = g.nodes[n][ir.MODULE]
        if module:
            rel = module[len(prefix):]
            head, _, last = rel.rpartition(".")
            if head and last.isdigit():
                by_container.setdefault(head, []).append(n)
    out = {}
    for container, members in by_container.items():
        numbers = [int(g.nodes[m][ir.MODULE].rsplit(".", 1)[1]) for m in members]
        if numbers != list(range(len(members))):
            continue
        chained = len(ir.inputs_of(g, members[0])) == 1 and all(
            ir.inputs_of(g, b) == [a] and g.out_degree(a) == 1 for a, b in zip(members, members[1:]))
        if chained:
            out[members[0]] = (container, members)
    return out


def _body(g: nx.DiGraph, steps: list[_Step], input_node: str, input_name: str, returns: list[str],
          names: Namespace, hints: dict[str, str] | None = None, default: str | None = None,
          reuse_input: bool = True) -> tuple[list[str], dict[str, str]]:
    """The lines of a forward body: each step on one line, a value's name reused by the step that
    reads it last (as ``out = self.bn1(out)``), other values deleted after their last reader.
    ``returns`` are the nodes returned (they live to the end); ``hints`` name chosen values;
    ``default`` is the name a new value takes when no live value holds it (``x`` in a trunk)."""
    last: dict[str, int] = {}
    for i, st in enumerate(steps):
        for o in st.operands:
            last[o] = i
    for r in returns:
        last[r] = len(steps)
    var = {input_node: input_name}
    holder = {input_name: input_node}  # name -> the value it holds now
    if default is not None:
        names.reserve(default)  # a functional op's fresh name must not be the default while it is live
    lines = []
    for i, st in enumerate(steps):
        args = [var[o] for o in st.operands]
        first = st.operands[0]
        if st.in_place:
            assert last.get(first) == i, f"in-place {st.node} but its operand is read later"
        hint = (hints or {}).get(st.node)
        reuse = (last.get(first) == i and first not in returns and hint is None
                 and (reuse_input or first != input_node))
        if reuse or st.in_place:
            name = var[first]
        elif hint is None and default is not None and last.get(holder.get(default), -1) <= i \
                and holder.get(default) not in returns:
            name = default
            names._used.add(default)  # a later fresh name never takes it while it holds a live value
        else:
            name = names.make(hint or _hint(g, st))
        var[st.node] = name
        holder[name] = st.node
        op = OPS.get(st.op)
        if op is not None and op.torch.call_attrs is not None:
            call = op.torch.call_attrs(g.nodes[st.node][ir.ATTRS], _attr_ref(st.module) if st.module else None,
                                       args, st.in_place)
        elif st.module is not None:
            ref = _attr_ref(st.module)
            call = op.torch.call(ref, args, st.in_place) if op is not None else f"{ref}({args[0]})"
        else:
            call = op.torch.call(None, args, st.in_place)
        if st.in_place and st.module is None and op.symbol == "+":
            lines.append(f"{name} += {' + '.join(args[1:])}")
        else:
            lines.append(f"{name} = {call}")
        dead = [var[o] for o in dict.fromkeys(st.operands)
                if last.get(o) == i and var[o] != name and o != input_node]
        if dead:
            lines.append(f"del {', '.join(dead)}")
    return lines, var


def _hint(g: nx.DiGraph, st: _Step) -> str:
    if st.module is not None:
        return st.module.split(".")[0]
    return "out"


# -- blocks ---------------------------------------------------------------------------------------

@dataclass
class _Instance:
    scope: str
    nodes: list[str]
    input_node: str
    forward: list[str]
    modules: list[tuple[str, _Ctor]]  # (path relative to the block, constructor), in first-use order
    in_ch: int
    out_ch: int


@dataclass
class BlockClass:
    name: str
    block_type: str
    instances: list[_Instance]
    params: list[str] = field(default_factory=list)
    args: dict[str, list] = field(default_factory=dict)  # scope -> argument values
    source: str = ""


def _instance(g: nx.DiGraph, scope: str, nodes: list[str], input_node: str) -> _Instance:
    prefix = scope + "."
    steps = _steps(g, nodes, prefix)
    # a block keeps ``x`` for its input (the caller holds it anyway): ``identity = self.downsample(x)``
    lines, var = _body(g, steps, input_node, "x", [nodes[-1]], Namespace(["x"]), default="out", reuse_input=False)
    lines.append(f"return {var[nodes[-1]]}")
    modules = _module_list(g, nodes, prefix)
    return _Instance(scope, nodes, input_node, lines, modules, g.nodes[input_node][ir.OUT_CH],
                     g.nodes[nodes[-1]][ir.OUT_CH])


def _twin_instance(g: nx.DiGraph, scope: str, nodes: list[str], input_node: str,
                   made: dict[str, _Instance]) -> _Instance | None:
    """A block instance copied by lowering from an earlier one (every node a twin of that
    instance's, ir.TWIN) has its forward and constructors: the earlier instance's, sharing its
    lists (the class planning below counts such instances once)."""
    first, last = g._node[nodes[0]].get(ir.TWIN), g._node[nodes[-1]].get(ir.TWIN)
    if first is None or last is None:
        return None
    source = made.get(g._node[first][ir.SCOPE])
    if source is None or source.scope == scope or len(source.nodes) != len(nodes) or source.nodes[-1] != last:
        return None
    return _Instance(scope, nodes, input_node, source.forward, source.modules, source.in_ch, source.out_ch)


def _module_list(g: nx.DiGraph, nodes: list[str], prefix: str) -> list[tuple[str, _Ctor]]:
    seen: dict[str, _Ctor] = {}
    # declaration order: lowering's key (a plugin's modules after the block's own), then first use
    for n in sorted(nodes, key=lambda n: g.nodes[n].get(ir.DECL) or (0,)):
        module = g.nodes[n][ir.MODULE]
        if module and module[len(prefix):] not in seen:
            seen[module[len(prefix):]] = _ctor(g, n)
    return list(seen.items())


def _signature(inst: _Instance, block_type: str) -> tuple:
    return (block_type, tuple(inst.forward), tuple((p, c.shape()) for p, c in inst.modules))


def _plan_classes(g: nx.DiGraph, instances: list[tuple[str, _Instance]], taken: Namespace) -> list[BlockClass]:
    """Group block instances into classes (one per block type and structure) and name them."""
    groups: dict[tuple, BlockClass] = {}
    signatures: dict[tuple, tuple] = {}  # (block type, id of a modules list twins share) -> signature
    for block_type, inst in instances:
        shared = (block_type, id(inst.modules))
        key = signatures.get(shared)
        if key is None:
            key = signatures[shared] = _signature(inst, block_type)
        if key not in groups:
            groups[key] = BlockClass("", block_type, [])
        groups[key].instances.append(inst)
    by_type: dict[str, list[BlockClass]] = {}
    for cls in groups.values():
        by_type.setdefault(cls.block_type, []).append(cls)
    for block_type, classes in by_type.items():
        base = camel(block_type)
        main = max(classes, key=lambda c: len(c.instances))
        main_tops = {p.split(".")[0] for p, _ in main.instances[0].modules}
        for cls in sorted(classes, key=lambda c: c is not main):
            tops = [p.split(".")[0] for p, _ in cls.instances[0].modules]
            extra = [t for t in dict.fromkeys(tops) if t not in main_tops]
            hint = base if cls is main else base + "".join(camel(t) for t in extra) if extra else base
            cls.name = taken.make(hint)
        for cls in classes:
            _parameterise(cls)
    return list(groups.values())


_CHANNEL_ROLES = {("nn.Conv2d", 0), ("nn.Conv2d", 1), ("ConvWS2d", 0), ("ConvWS2d", 1), ("nn.Linear", 0),
                  ("nn.Linear", 1), ("nn.BatchNorm2d", 0), ("SyncBatchNorm2d", 0), ("FrozenBatchNorm2d", 0),
                  ("nn.InstanceNorm2d", 0), ("nn.GroupNorm", 1), ("DeformConv2dPack", 0), ("DeformConv2dPack", 1),
                  ("ModulatedDeformConv2dPack", 0), ("ModulatedDeformConv2dPack", 1)}
_POSITIONAL_ROLES = {("nn.Conv2d", 2): "kernel_size", ("ConvWS2d", 2): "kernel_size", ("nn.GroupNorm", 0): "num_groups",
                     ("nn.MaxPool2d", 0): "kernel_size", ("nn.MaxPool2d", 1): "pool_stride",
                     ("nn.AvgPool2d", 0): "kernel_size", ("nn.AvgPool2d", 1): "pool_stride",
                     ("DeformConv2dPack", 2): "kernel_size", ("ModulatedDeformConv2dPack", 2): "kernel_size"}


def _parameterise(cls: BlockClass) -> None:
    """The constructor values that differ between the class's instances become ``__init__``
    parameters; equal value columns share one (``in_channels``, ``width``, ``stride`` ...)."""
    every = cls.instances
    insts = list({id(inst.modules): inst for inst in reversed(every)}.values())[::-1]  # twins once
    columns: dict[tuple, list] = {}  # (module index, value index) -> values across instances
    values_of = [[ctor.values() for _, ctor in inst.modules] for inst in insts]
    for mi, (path, ctor) in enumerate(insts[0].modules):
        for vi in range(len(ctor.values())):
            columns[(mi, vi)] = [values[mi][vi] for values in values_of]
    in_col = [inst.in_ch for inst in insts]
    out_col = [inst.out_ch for inst in insts]
    names = Namespace()
    by_values: dict[tuple, str] = {}
    exprs: dict[tuple, str] = {}
    for key, values in columns.items():
        if len(set(map(repr, values))) == 1 and len(insts) >= 1:
            exprs[key] = repr(values[0])
            continue
        vkey = tuple(values)
        if vkey not in by_values:
            mi, vi = key
            ctor = insts[0].modules[mi][1]
            if (ctor.callee, vi) in _CHANNEL_ROLES:
                hint = "in_channels" if list(values) == in_col else "out_channels" if list(values) == out_col \
                    else "width"
            elif vi < len(ctor.args):
                hint = _POSITIONAL_ROLES.get((ctor.callee, vi), "value")
            else:
                hint = ctor.kwargs[vi - len(ctor.args)][0]
            by_values[vkey] = names.make(hint)
            cls.params.append(by_values[vkey])
        exprs[key] = by_values[vkey]
    by_modules = {id(inst.modules): values for inst, values in zip(insts, values_of)}
    for p in cls.params:
        mi, vi = next(k for k, v in exprs.items() if v == p)
        for inst in every:
            cls.args.setdefault(inst.scope, []).append(by_modules[id(inst.modules)][mi][vi])
    init = [f"    def __init__(self{''.join(', ' + p + ': ' + _type_name(cls, p) for p in cls.params)}) -> None:",
            "        super().__init__()"]
    init += _module_lines(insts[0].modules, lambda mi, n: [exprs[(mi, vi)] for vi in range(n)], "        ")
    scopes = ", ".join(i.scope for i in every)
    doc = f'    """Block type \'{cls.block_type}\': {_clip(scopes, 64)}"""'
    fwd = ["    def forward(self, x: Tensor) -> Tensor:"] + ["        " + line for line in insts[0].forward]
    cls.source = "\n".join([f"class {cls.name}(GraphresBlock):", doc, "", "    with_cp = False", ""] + init + [""] + fwd) + "\n"


def _type_name(cls: BlockClass, param: str) -> str:
    values = next(iter(cls.args.values()))[cls.params.index(param)] if cls.args else 0
    return type(values).__name__


def _clip(text: str, width: int) -> str:
    return text + "." if len(text) <= width else text[:width - 4].rsplit(",", 1)[0] + ", ..."


def _module_lines(modules: list[tuple[str, _Ctor]], exprs_of, indent: str) -> list[str]:
    """``self.path = Ctor(...)`` lines; containers first as ``nn.Sequential`` (numbered children)
    or ``nn.Module``."""
    lines: list[str] = []
    tree: dict[str, list[int]] = {}
    for mi, (path, _) in enumerate(modules):
        head, _, _ = path.rpartition(".")
        tree.setdefault(head, []).append(mi)
    made: set[str] = set()

    def container(path: str) -> None:
        if not path or path in made:
            return
        container(path.rpartition(".")[0])
        if path in made:  # an nn.Module item of the parent's Sequential
            return
        made.add(path)
        children = tree.get(path, [])
        names = [modules[mi][0].rpartition(".")[2] for mi in children]
        # numbered children that are containers themselves (mmcv's nn.Sequential(ConvModule, pool):
        # ``g.0.conv``, ``g.1``): the Sequential holds an nn.Module there, filled in below
        inner = sorted({p[len(path) + 1:].split(".", 1)[0] for p, _ in modules
                        if p.startswith(path + ".") and p.count(".") > path.count(".") + 1} - set(names),
                       key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        if inner and all(s.isdigit() for s in inner + names) and \
                sorted(int(s) for s in inner + names) == list(range(len(inner) + len(names))):
            by_name = dict(zip(names, children))
            items = [modules[by_name[str(i)]][1].text(exprs_of(by_name[str(i)], len(modules[by_name[str(i)]][1].values())))
                     if str(i) in by_name else "nn.Module()" for i in range(len(inner) + len(names))]
            lines.append(f"{indent}{_attr_ref(path)} = nn.Sequential(")
            lines.extend(f"{indent}    {item}," for item in items)
            lines.append(f"{indent})")
            made.update(modules[mi][0] for mi in children)
            made.update(f"{path}.{s}" for s in inner)
            return
        if children and names == [str(i) for i in range(len(names))]:
            items = [modules[mi][1].text(exprs_of(mi, len(modules[mi][1].values()))) for mi in children]
            if len(items) == 1:
                lines.append(f"{indent}{_attr_ref(path)} = nn.Sequential({items[0]})")
            else:
                lines.append(f"{indent}{_attr_ref(path)} = nn.Sequential(")
                lines.extend(f"{indent}    {item}," for item in items)
                lines.append(f"{indent})")
            made.update(modules[mi][0] for mi in children)
        else:
            lines.append(f"{indent}{_attr_ref(path)} = nn.Module()")

    for mi, (path, ctor) in enumerate(modules):
        if path in made:
            continue
        container(path.rpartition(".")[0])
        if path in made:
            continue
        made.add(path)
        lines.append(f"{indent}{_attr_ref(path)} = {ctor.text(exprs_of(mi, len(ctor.values())))}")
    return lines


# -- the network ----------------------------------------------------------------------------------

@dataclass
class Generated:
    """The generated source and what it defines."""

    source: str
    network: str  # the network class's name
    blocks: list[str]  # the block classes' names
    runtime: tuple[str, ...]  # the runtime classes it uses


def generate(g: nx.DiGraph, standalone: bool = False) -> Generated:
    """Python source for the analysed graph ``g``. ``standalone`` inlines the runtime classes and
    adds ``build_model()``, so the file needs torch alone; otherwise the source imports them from
    :mod:`graphres.backends.runtime`."""
    order = ir.topological_order(g)
    by_scope: dict[str, list[str]] = {}
    for n in order:
        if n != ir.INPUT:
            by_scope.setdefault(g.nodes[n][ir.SCOPE], []).append(n)
    class_names = Namespace(BASE_RUNTIME + ("RepeatedBlocks", "FrozenBatchNorm2d", "SyncBatchNorm2d", "SyncBNError", "ConvWS2d",
                                            "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack",
                                            "RelativePosition", INFERENCE_BASE, "InferenceBuildError"))
    net_name = class_names.make(camel(g.graph[ir.G_NAME]))
    instances: list[tuple[str, _Instance]] = []
    made: dict[str, _Instance] = {}
    for st in g.graph[ir.G_STAGES]:
        x = st["input"]
        for b in range(st["blocks"]):
            scope = f"{st['name']}.{b}"
            nodes = by_scope[scope]
            block_type = g.nodes[nodes[0]][ir.BLOCK_TYPE]
            inst = made[scope] = _twin_instance(g, scope, nodes, x, made) or _instance(g, scope, nodes, x)
            instances.append((block_type, inst))
            x = nodes[-1]
    classes = _plan_classes(g, instances, class_names)
    class_of = {inst.scope: cls for cls in classes for inst in cls.instances}
    runtime = _runtime_needs(g)
    with_cp = bool(g.graph.get(ir.G_WITH_CP))

    out: list[str] = [f'"""{g.graph[ir.G_NAME]}: generated by graphres {__version__} from its spec.',
                      "",
                      "Do not edit: change the spec and compile again. State-dict keys are graphres' (OpenMMLab's",
                      'and torchvision\'s ResNet layout)."""']
    out += ["import collections" if standalone else None, "import contextlib" if standalone else None,
            "import contextvars" if standalone else None,
            "import dataclasses" if standalone else None, "import importlib" if standalone else None,
            "import math" if standalone else None, "from typing import List, Optional, Tuple", "",
            "import torch"]
    if standalone:
        out += ["import torch.distributed as dist"] if "SyncBatchNorm2d" in runtime else []
        out += ["from torch import Tensor, nn"]
        out += ["from torch.nn.modules.batchnorm import _BatchNorm"]
        if with_cp:
            out += ["import torch.utils.checkpoint"]
        out += ["", ""]
        # GraphresBlock's metaclass (graphres.build's copies of repeated blocks) comes with it
        out += [_runtime_source(name) for name in runtime for name in
                (("RepeatedBlocks", name) if name == "GraphresBlock" else (name,))]
    else:
        out += ["from torch import Tensor, nn"]
        if with_cp:
            out += ["import torch.utils.checkpoint"]
        out += [f"from {RUNTIME_MODULE} import {', '.join(runtime)}", "", ""]
    out = [line for line in out if line is not None]
    for cls in classes:
        src = cls.source
        if with_cp:
            src = src.replace("    with_cp = False", "    with_cp = True  # activation checkpointing (when the input needs grad)")
            src = src.replace("    def forward(self, x: Tensor) -> Tensor:",
                              "    def forward(self, x: Tensor) -> Tensor:\n"
                              "        if self.with_cp and x.requires_grad:  # recompute the block in the backward\n"
                              "            return torch.utils.checkpoint.checkpoint(self._body, x, use_reentrant=False)\n"
                              "        return self._body(x)\n\n"
                              "    def _body(self, x: Tensor) -> Tensor:", 1)
        out.append(src)
        out.append("")
    out.append(_network_source(g, net_name, by_scope, class_of))
    if standalone:
        out += ["", _build_model_source(net_name, g)]
    text = "\n".join(out).rstrip() + "\n"
    return Generated(text, net_name, [c.name for c in classes], runtime)


def _runtime_needs(g: nx.DiGraph) -> tuple[str, ...]:
    needs: list[str] = []
    for name in dict.fromkeys(d[ir.OP] for d in g._node.values()):  # each op once, in node order
        op = OPS.get(name)
        if op is not None:
            needs.extend(op.torch.needs(g.graph))
    if g.graph.get(ir.G_MODULE_INITS):
        needs.extend(INIT_RUNTIME)
    extra = tuple(dict.fromkeys(needs))
    if "SyncBatchNorm2d" in extra:
        extra = ("SyncBNError",) + extra
    return extra + BASE_RUNTIME + (("InferenceBuildError", INFERENCE_BASE) if _base_class(g) == INFERENCE_BASE else ())


INFERENCE_BASE = "GraphresInference"  # the network's base class in a graph the inference pass made


def _base_class(g: nx.DiGraph) -> str:
    """The network's base class: the eval-only one for a graph from ``passes.fold`` (its
    ``inference`` graph attribute), else :class:`GraphresBackbone`."""
    return INFERENCE_BASE if g.graph.get("inference") else "GraphresBackbone"


def _runtime_source(name: str) -> str:
    """The source of one class of the runtime module, read from its file (without importing it,
    so that writing a ``.py`` needs no torch)."""
    path = Path(__file__).with_name("runtime.py")
    text = path.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            return "\n".join(text.splitlines()[start - 1:node.end_lineno]) + "\n\n"
    raise AssertionError(f"runtime class {name} not found")


def _network_source(g: nx.DiGraph, name: str, by_scope: dict[str, list[str]], class_of: dict) -> str:
    gr = g.graph
    stages = gr[ir.G_STAGES]
    head = gr.get(ir.G_HEAD)
    outputs = gr[ir.G_OUTPUTS]
    stem_nodes = by_scope.get(ir.STEM_SCOPE, [])
    lines = [f"class {name}({_base_class(g)}):",
             f'    """The \'{gr[ir.G_NAME]}\' network: {_describe(g)}."""', ""]
    feats = ",\n        ".join(f"FeatureInfo({o['index']}, {o['name']!r}, {o['channels']}, {o.get('stride', 0)})"
                      for o in outputs)
    attrs = [("spec_name", repr(gr[ir.G_NAME])), ("out_indices", repr(tuple(gr[ir.G_OUT_INDICES]))),
             ("frozen_stages", repr(gr[ir.G_FROZEN_STAGES])), ("norm_eval", repr(bool(gr[ir.G_NORM_EVAL]))),
             ("zero_init_residual", repr(bool(gr[ir.G_ZERO_INIT_RESIDUAL]))),
             ("stage_names", repr(tuple(st["name"] for st in stages))),
             ("frozen_modules", repr(tuple(gr.get(ir.G_FROZEN_MODULES, ())))),
             ("zero_init_modules", _tuple_lines(gr.get(ir.G_ZERO_INIT_MODULES, ()), "    ")),
             *([("module_inits", repr(tuple(tuple(x) for x in gr[ir.G_MODULE_INITS])))]
               if gr.get(ir.G_MODULE_INITS) else []),
             ("requires_grad_norms", repr(bool(gr[ir.G_NORM].get("requires_grad", True)))),
             ("num_classes", repr(head["num_classes"] if head else None)),
             ("feature_info", f"FeatureInfoList([\n        {feats},\n    ])" if len(feats) > 60
              else f"FeatureInfoList([{feats}])")]
    lines += [f"    {k} = {v}" for k, v in attrs]
    lines += _openmmlab_lines(gr.get(ir.G_OPENMMLAB))
    lines += ["", "    def __init__(self, init: bool = True) -> None:", "        super().__init__()"]
    stem_mods = _module_list(g, stem_nodes, "")
    lines += _module_lines(stem_mods, lambda mi, n: [repr(v) for v in stem_mods[mi][1].values()], "        ")
    for st in stages:
        calls = []
        for b in range(st["blocks"]):
            scope = f"{st['name']}.{b}"
            cls = class_of[scope]
            calls.append(f"{cls.name}({', '.join(repr(v) for v in cls.args.get(scope, []))})")
        blocks = []  # a run of RUN or more equal calls as one starred generator
        for call, run in itertools.groupby(calls):
            count = len(list(run))
            blocks += [f"*({call} for _ in range({count}))"] if count >= RUN else [call] * count
        if len(blocks) == 1 and not blocks[0].startswith("*"):
            lines.append(f"        self.{st['name']} = nn.Sequential({blocks[0]})")
        else:
            lines.append(f"        self.{st['name']} = nn.Sequential(")
            lines += [f"            {b}," for b in blocks]
            lines.append("        )")
    if head:
        head_mods = _module_list(g, head["nodes"], "")
        lines += _module_lines(head_mods, lambda mi, n: [repr(v) for v in head_mods[mi][1].values()], "        ")
    lines.append("        self._finish(init)")

    out_nodes = [o["node"] for o in outputs]
    ret_type = f"Tuple[{', '.join(['Tensor'] * len(out_nodes))}]"

    def trunk(returns: list[str], names: Namespace, hints: dict | None) -> tuple[list[str], dict[str, str]]:
        steps = _steps(g, stem_nodes, "")
        for st in stages:
            steps.append(_Step(st["output"], [st["input"]], st["name"], "<stage>", False))
        return _body(g, steps, ir.INPUT, "x", returns, names, hints, default="x")

    body, var = trunk(out_nodes, Namespace(["x"]), {o["node"]: o["name"] for o in outputs})
    lines += ["", f"    def forward_features(self, x: Tensor) -> {ret_type}:",
              '        """The out_indices stage outputs, in stage order."""']
    lines += ["        " + line for line in body]
    lines.append(f"        return {', '.join(var[n] for n in out_nodes)}{',' if len(out_nodes) == 1 else ''}")
    lines.append("")
    if head:
        last = stages[-1]["output"] if stages else stem_nodes[-1]
        names = Namespace(["x"])
        body, var = trunk([last], names, None)
        steps = _steps(g, head["nodes"], "")
        head_lines, hvar = _body(g, steps, last, var[last], [head["output"]], names, default="x")
        lines += ["    def forward(self, x: Tensor) -> Tensor:", '        """The logits (N, num_classes)."""']
        lines += ["        " + line for line in body + head_lines]
        lines.append(f"        return {hvar[head['output']]}")
    else:
        lines += [f"    def forward(self, x: Tensor) -> {ret_type}:",
                  '        """The out_indices stage outputs, in stage order."""',
                  "        return self.forward_features(x)"]
    return "\n".join(lines) + "\n"


def _openmmlab_lines(mm: dict | None) -> list[str]:
    """The class attributes mmdetection code reads (``passes.openmmlab`` decided them)."""
    if not mm:
        return []
    lines = ["    # mmdetection's ResNet attributes and mmengine's init_cfg (graphres.passes.openmmlab)"]
    lines.append(f"    init_cfg = {mm['init_cfg']!r}")
    lines.append(f"    zero_init_blocks = {mm['zero_init_blocks']!r}")
    lines.append(f"    checkpoint_style = {mm['checkpoint_style']!r}")
    lines += [f"    {k} = {v!r}" for k, v in mm["network"].items()]
    lines.append("    block_attrs = {")
    scopes = list(mm["blocks"])
    for item in _numbered_runs(scopes):  # runs of blocks with the same attributes as one comprehension
        if isinstance(item, str):
            lines.append(f"        {item!r}: {mm['blocks'][item]!r},")
            continue
        before, after, first, stop = item
        names = [f"{before}{i}{after}" for i in range(first, stop)]
        start = first
        for k in range(first, stop + 1):
            if k < stop and mm["blocks"][names[k - first]] == mm["blocks"][names[start - first]]:
                continue
            run = names[start - first:k - first]
            if len(run) >= RUN:
                lines.append(f"        **{{f'{before}{{i}}{after}': {mm['blocks'][run[0]]!r} "
                             f"for i in {_range(start, k)}}},")
            else:
                lines += [f"        {name!r}: {mm['blocks'][name]!r}," for name in run]
            start = k
    lines.append("    }")
    return lines


RUN = 4  # this many consecutive repeated blocks (or names, or attributes) or more are written as a loop


def _numbered_runs(names: Sequence[str]) -> list[tuple[str, str, int, int] | str]:
    """``names`` with each run of RUN or more that differ only in one consecutive number
    (``layer1.3.bn2``, ``layer1.4.bn2``, ...) as (before, after, first, stop); the others as they are."""
    out: list = []
    i = 0
    while i < len(names):
        m = _NUMBERED.match(names[i])
        j = i + 1
        if m:
            before, number, after = m.group(1), int(m.group(2)), m.group(3)
            while j < len(names) and names[j] == f"{before}{number + j - i}{after}":
                j += 1
        if j - i >= RUN:
            out.append((before, after, number, number + j - i))
        else:
            out.extend(names[i:j])
        i = j
    return out


_NUMBERED = re.compile(r"^([A-Za-z_][\w.]*\.)(\d+)((?:\.[\w]+)*)$")


def _range(first: int, stop: int) -> str:
    return f"range({stop})" if first == 0 else f"range({first}, {stop})"


def _tuple_lines(items: Sequence[str], indent: str) -> str:
    if not items:
        return "()"
    text = repr(tuple(items))
    if len(text) + 24 <= 100:
        return text
    parts = [f"*(f'{item[0]}{{i}}{item[1]}' for i in {_range(item[2], item[3])})" if isinstance(item, tuple)
             else repr(item) for item in _numbered_runs(list(items))]
    return "(\n" + "".join(f"{indent}    {part},\n" for part in parts) + f"{indent})"


def _describe(g: nx.DiGraph) -> str:
    stages = g.graph[ir.G_STAGES]
    blocks = "/".join(str(st["blocks"]) for st in stages)
    return f"{len(stages)} stages of {blocks} blocks, {g.graph.get(ir.G_PARAMS, 0):,} parameters"


def _build_model_source(net: str, g: nx.DiGraph) -> str:
    shape = (1, g.graph[ir.G_INPUT_CHANNELS]) + tuple(g.graph[ir.G_INPUT_SIZE])
    show = "tuple(out.shape)" if g.graph.get(ir.G_HEAD) else "[tuple(t.shape) for t in out]"
    return f'''def build_model(checkpoint: Optional[str] = None, init: bool = True) -> {net}:
    """The network with the spec's initialisation, frozen stages and norm_eval behaviour; with
    ``checkpoint``, a state dict (graphres' keys) loaded strictly on top (torch.load with
    weights_only=True)."""
    model = {net}(init=init)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model.load_state_dict(state, strict=True)
    return model


if __name__ == "__main__":
    net = build_model().eval()
    with torch.no_grad():
        out = net(torch.randn{shape})
    print({show})
'''
