"""Lowering stage: a checked :class:`~graphres.spec.model.Spec` -> the graph IR.

Each stage instantiates its block type ``blocks`` times (the stride on the first block, the
dilation on every block), evaluating the block's parameters, ``let`` values and layer attributes
with the safe expression evaluator. Channels are tracked while lowering, so a channel mismatch
inside a block, a group count that does not divide the channels, or a GN whose num_groups does not
divide them is reported here, located.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from . import ir
from .diagnostics import Diagnostic, DiagnosticBag, Span, did_you_mean
from .ops import GN_MISFIT, NORM_ABBR, OPS, REQUIRED, _no_check
from .spec.blocks import BlockDef, LayerDef, expr_span
from .spec.expr import ExprError, evaluate
from .spec.model import Arg, Spec
from .spec.reader import MISSING

MAX_CHANNELS = 1 << 20


class _Abort(Exception):
    """Stops lowering one block instance after an error has been recorded."""


@dataclass
class _Ctx:
    spec: Spec
    g: nx.DiGraph
    diags: DiagnosticBag
    gn_misfits: dict  # channels -> first norm layer whose channels GN's num_groups does not divide
    norm_channels: list  # the channels of every layer of the spec's norm type
    added: list = field(default_factory=list)  # node ids in the order _emit adds them
    # a block instance's lowering, by everything it depends on: the repeated blocks of a stage are
    # lowered once and the rest copied (see _Template)
    templates: dict = field(default_factory=dict)


@dataclass
class _Instance:
    block: BlockDef
    scope: str  # "stem" or "layer1.0"
    prefix: str  # module path prefix: "" for the stem, "layer1.0." for blocks
    stage: int
    span: Span  # the user's spec entry that asked for this block
    env: dict[str, Any]
    where: str  # for notes: "layer1.0 (block 'bottleneck', stages[0])"
    plugins: dict = field(default_factory=dict)  # slot -> [StagePlugin] (graphres.spec.plugins)
    plugin_mode: str = "chain"  # chain (mmdetection) | last (mmsegmentation: each on the slot's input)
    # the declaration order key of its modules: a plugin's come after the block's own (mmdetection
    # adds them last in Bottleneck.__init__), each plugin's together
    decl: tuple = ()
    plugin_count: list = field(default_factory=lambda: [0])


def lower(spec: Spec, diags: DiagnosticBag) -> nx.DiGraph:
    """Build the IR for ``spec``; errors go to ``diags`` (the graph may then be partial)."""
    g = ir.new_graph(
        spec.name, input_channels=spec.input_channels, input_size=spec.input_size, norm=dict(spec.norm),
        frozen_stages=spec.frozen_stages, norm_eval=spec.norm_eval, zero_init_residual=spec.zero_init_residual,
        with_cp=spec.with_cp, init=spec.init, out_indices=list(spec.out_indices), stages=[], outputs=[],
        stem={"block": spec.stem_block}, conv=dict(spec.conv), act=spec.act, head=None,
        output_stride=spec.output_stride, frozen={st.index: True for st in spec.stages if st.frozen},
    )
    ctx = _Ctx(spec, g, diags, {}, [])
    ir.add_node(g, ir.INPUT, "input", **{ir.MODULE: None, ir.IN_CH: spec.input_channels,
                                        ir.OUT_CH: spec.input_channels, ir.STAGE: None, ir.SCOPE: "",
                                        ir.SPAN: spec.doc.span(("input",)), ir.DEF_SPAN: None})
    try:
        _lower_all(ctx)
    finally:
        _report_gn(ctx)
    return g


def _lower_all(ctx: _Ctx) -> None:
    spec, g = ctx.spec, ctx.g
    try:
        x, ch = _lower_instance(ctx, spec.blocks[spec.stem_block], "stem", "", -1, spec.stem_args,
                                {}, ir.INPUT, spec.input_channels, spec.doc.span(("stem",)), "stem")
    except _Abort:
        return
    trade = _OutputStride(ctx, _path_stride(g, x)) if spec.output_stride is not None else None
    for stage in spec.stages:
        stage_in = x
        first_stride, dilations = trade.stage(stage) if trade else (None, list(stage.dilations))
        # a stage of one block type without per-block arguments: every block's arguments are the
        # stage's, so a template key depends only on the extra arguments and the input channels
        same_args = not stage.per_block and not stage.types
        keys: dict[tuple, tuple | None] = {}
        stamps: dict[tuple, _Template] = {}  # the same, straight to the template once there is one
        for b in range(stage.blocks):
            block = spec.blocks[stage.block_type(b)]
            args = stage.args if same_args else stage.block_args(b)
            extra = {}
            if "stride" in block.params and b > 0 and "stride" not in stage.per_block:
                extra["stride"] = 1
            if "stride" in block.params and b == 0 and first_stride is not None:
                extra["stride"] = first_stride  # traded for dilation by output_stride
            if "dilation" in block.params:
                extra["dilation"] = dilations[b]
            scope = f"{stage.name}.{b}"
            plugins, mode = getattr(stage, "plugins", ()), getattr(stage, "plugin_mode", "chain")
            if same_args:
                known = (tuple(extra.items()), ch)
                tpl = stamps.get(known)
                if tpl is not None:
                    x, ch = tpl.stamp(ctx, scope, x)
                    continue
                key = keys[known] if known in keys else keys.setdefault(
                    known, _template_key(block, stage.index, args, extra, ch, plugins, mode))
            else:
                key = _template_key(block, stage.index, args, extra, ch, plugins, mode)
            tpl = ctx.templates.get(key) if key is not None else None
            if tpl is not None:
                if same_args:
                    stamps[known] = tpl
                x, ch = tpl.stamp(ctx, scope, x)
                continue
            start, errors = len(ctx.added), len(ctx.diags.items)
            try:
                x_in = x
                x, ch = _lower_instance(ctx, block, scope, scope + ".", stage.index, args, extra, x, ch,
                                        spec.doc.span(stage.path), f"stages[{stage.index}]", plugins, mode)
            except _Abort:
                return
            if key is not None and len(ctx.diags.items) == errors:
                ctx.templates[key] = _Template.record(ctx, scope, x_in, ctx.added[start:], x, ch)
        g.graph["stages"].append({"index": stage.index, "name": stage.name, "block": "/".join(stage.block_types),
                                  "blocks": stage.blocks, "input": stage_in, "output": x, "channels": ch,
                                  "dilations": dilations, "traded": first_stride is not None,
                                  "spans": {k: spec.doc.span(stage.path + (k,)) for k in ("dilation", "frozen")}})
    if trade:
        trade.finish()
    for i in spec.out_indices:
        st = g.graph["stages"][i]
        g.graph[ir.G_OUTPUTS].append({"index": i, "name": st["name"], "node": st["output"], "channels": st["channels"],
                                      "span": spec.doc.span(spec.out_index_paths.get(i, ("out_indices",)))})
    if spec.head is not None:
        _lower_head(ctx, x, ch)


def _template_key(block: BlockDef, stage: int, args: dict[str, Arg], extra: dict, in_ch: int, plugins,
                  mode: str) -> tuple | None:
    """What a block instance's lowering depends on, or None when a value is not hashable."""
    try:
        key = (id(block), stage, tuple((k, _frozen(a.value)) for k, a in args.items()),
               tuple((k, _frozen(v)) for k, v in extra.items()), in_ch, id(plugins), mode)
        hash(key)
    except TypeError:
        return None
    return key


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return ("list",) + tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple((k, _frozen(v)) for k, v in value.items())
    return value


@dataclass
class _Template:
    """The lowering of one block instance, relative to its scope: the nodes (ids and module paths
    without the scope's prefix, operands as the block's input or a relative id) with their
    attributes. A later instance with the same key gets copies, in the same order, exactly what
    lowering it again would give, without evaluating a single expression."""

    # per node: (relative id, the data every copy shares: its op, its attributes (the dict itself,
    # read-only: ir.ATTRS) and the fields that are not the copy's own, relative module path,
    # relative operands with None for the input)
    nodes: list
    params: dict  # the block's evaluated parameters (G_BLOCK_PARAMS)
    out: str  # relative id of the block's output
    out_ch: int

    PER_INSTANCE = (ir.ORDER, ir.INPUTS, ir.META, ir.SCOPE, ir.MODULE)  # ATTRS is shared (read-only)

    @classmethod
    def record(cls, ctx: _Ctx, scope: str, x: str, added: list[str], out: str, out_ch: int) -> "_Template | None":
        prefix = scope + "."
        nodes = []
        for n in added:
            d = ctx.g._node[n]
            if not n.startswith(prefix) or d[ir.META] or d[ir.SCOPE] != scope:
                return None
            module = d[ir.MODULE]
            if module is not None and not module.startswith(prefix):
                return None
            ins = []
            for i in d[ir.INPUTS]:
                if i != x and not i.startswith(prefix):
                    return None
                ins.append(None if i == x else i[len(prefix):])
            fixed = {k: v for k, v in d.items() if k not in cls.PER_INSTANCE}
            fixed[ir.TWIN] = n
            nodes.append((n[len(prefix):], fixed, None if module is None else module[len(prefix):], tuple(ins)))
        if not out.startswith(prefix):
            return None
        for n in added:
            ctx.g._node[n][ir.TWIN] = n
        return cls(nodes, ctx.g.graph[ir.G_BLOCK_PARAMS][scope], out[len(prefix):], out_ch)

    def stamp(self, ctx: _Ctx, scope: str, x: str) -> tuple[str, int]:
        g, prefix = ctx.g, scope + "."
        items = []
        INPUTS, META, SCOPE, MODULE = ir.INPUTS, ir.META, ir.SCOPE, ir.MODULE
        for rel, fixed, module, ins in self.nodes:
            if len(ins) == 1:
                ins = (x,) if ins[0] is None else (prefix + ins[0],)
            else:
                ins = tuple([x if i is None else prefix + i for i in ins])
            # the fields every copy shares, then the copy's own
            items.append((prefix + rel, {**fixed, INPUTS: ins, META: {}, SCOPE: scope,
                                         MODULE: None if module is None else prefix + module}))
        ir.add_nodes_data(g, items)
        g.graph[ir.G_BLOCK_PARAMS][scope] = self.params  # read-only, as attrs (ir.ATTRS)
        return prefix + self.out, self.out_ch


def _path_stride(g: nx.DiGraph, node: str) -> int:
    """The stride of ``node`` w.r.t. the input, along first operands (the shapes pass's rule)."""
    stride = 1
    while node != ir.INPUT:
        d = g.nodes[node]
        window = OPS[d[ir.OP]].window(d[ir.ATTRS])
        stride *= window.stride if window is not None else 1
        node = ir.inputs_of(g, node)[0]
    return stride


class _OutputStride:
    """``output_stride``: trade the strides that would take the network past the target for
    dilation, as torchvision's ``replace_stride_with_dilation``: such a stage's first block gets
    stride 1, the running dilation is multiplied by the stride given up, and the stage's first
    block keeps the previous dilation. Decided here, on the stem's actual stride, and written on
    the stage entries (``dilations``, ``traded``)."""

    def __init__(self, ctx: _Ctx, stem_stride: int) -> None:
        self.ctx, self.spec = ctx, ctx.spec
        self.target = ctx.spec.output_stride
        self.stem = self.current = stem_stride
        self.dilation = 1
        self.strides: list[int] = []
        self.failed = False

    def stage(self, st) -> tuple[int | None, list[int]]:
        """(the first block's stride when traded, else None; the dilation of each block)."""
        spec, diags = self.spec, self.ctx.diags
        params = spec.blocks[st.block_type(0)].params
        stride = st.args["stride"].value if "stride" in st.args else (
            params["stride"].default if "stride" in params else 1)
        if self.failed:
            return None, list(st.dilations)
        if "stride" in st.per_block:
            diags.add("E052", f"output_stride cannot be combined with the block-by-block strides of {st.name}",
                      spec.doc.span(st.path + ("stride",)), "give the stage one stride, or drop output_stride")
            self.failed = True
            return None, list(st.dilations)
        if self.current * stride <= self.target:
            self.current *= stride
            self.dilation = max(self.dilation, st.dilations[-1])
            self.strides.append(stride)
            return None, list(st.dilations)
        if any(d != 1 for d in st.dilations):
            stated = st.dilations[0] if len(set(st.dilations)) == 1 else list(st.dilations)
            diags.add("E052", f"stages[{st.index}] ({st.name}) sets dilation {stated} but output_stride "
                              f"{self.target} trades its stride {stride} for dilation",
                      spec.doc.span(st.path + ("dilation",)),
                      "leave the dilation to output_stride, or write stride and dilation yourself "
                      "and drop output_stride")
            self.failed = True
            return None, list(st.dilations)
        lacking = [t for t in st.block_types
                   if "dilation" not in spec.blocks[t].params or "stride" not in spec.blocks[t].params]
        if lacking:
            missing = "dilation" if "dilation" not in spec.blocks[lacking[0]].params else "stride"
            diags.add("E052", f"output_stride {self.target} needs {st.name} to trade its stride {stride} for "
                              f"dilation, but block '{lacking[0]}' has no parameter '{missing}'",
                      spec.doc.span(("output_stride",)))
            self.failed = True
            return None, list(st.dilations)
        previous, self.dilation = self.dilation, self.dilation * stride
        self.strides.append(1)
        return 1, [previous] + [self.dilation] * (st.blocks - 1)

    def finish(self) -> None:
        if not self.failed and self.current != self.target:
            strides = ", ".join(map(str, self.strides))
            self.ctx.diags.add("E051", f"output_stride is declared {self.target} but the network reaches "
                                       f"{self.current} (stem {self.stem}, stage strides {strides})",
                               self.spec.doc.span(("output_stride",)),
                               f"declare output_stride: {self.current}, or raise stage strides to reach "
                               f"{self.target}")


def _lower_head(ctx: _Ctx, x: str, ch: int) -> None:
    """torchvision's classifier: ``avgpool`` (global average) then ``fc`` (linear), in scope 'head'."""
    g, spec = ctx.g, ctx.spec
    span = spec.doc.span(("head",))
    classes = spec.head["num_classes"]
    common = {ir.SCOPE: "head", ir.STAGE: None, ir.BLOCK_TYPE: "head", ir.SPAN: span, ir.DEF_SPAN: span}
    ir.add_node(g, "avgpool", "global_avgpool", [x], **{ir.ATTRS: {}, ir.MODULE: "avgpool", ir.IN_CH: ch,
                                                         ir.OUT_CH: ch, **common})
    ir.add_node(g, "fc", "linear", ["avgpool"], **{ir.ATTRS: {"out": classes, "bias": True}, ir.MODULE: "fc",
                                                    ir.IN_CH: ch, ir.OUT_CH: classes, **common})
    g.graph["head"] = {"num_classes": classes, "input": x, "nodes": ["avgpool", "fc"], "output": "fc"}


def _report_gn(ctx: _Ctx) -> None:
    if not ctx.gn_misfits:
        return
    groups = ctx.spec.norm["num_groups"]
    sizes = ", ".join(f"{ch} ({name})" for ch, name in ctx.gn_misfits.items())
    channels = ctx.norm_channels + list(ctx.gn_misfits)
    common = math.gcd(*channels)
    fits = [k for k in range(1, groups + 1) if common % k == 0]
    ctx.diags.add("E031", f"GN num_groups = {groups} does not divide the channels of {len(ctx.gn_misfits)} norm "
                          f"layer size{'s' if len(ctx.gn_misfits) > 1 else ''}: {sizes}",
                  ctx.spec.doc.span(("norm", "num_groups")),
                  f"num_groups must divide every norm's channels; {fits[-1]} does" if fits else None)


def _lower_instance(ctx: _Ctx, block: BlockDef, scope: str, prefix: str, stage: int, args: dict[str, Arg],
                    extra: dict[str, Any], x: str, in_ch: int, span: Span, entry: str, plugins=(),
                    plugin_mode: str = "chain") -> tuple[str, int]:
    where = f"{scope} (block '{block.name}', {entry})"
    env: dict[str, Any] = {"in_channels": in_ch}
    for name, p in block.params.items():
        if name in extra:
            env[name] = extra[name]
        elif name in args:
            env[name] = args[name].value
        elif p.default is not MISSING:
            env[name] = p.default
    inst = _Instance(block, scope, prefix, stage, span, env, where, plugin_mode=plugin_mode)
    for p in plugins:
        inst.plugins.setdefault(p.position, []).append(p)
    for name, expr, path in block.lets:
        env[name] = _eval(ctx, inst, expr, path, f"let '{name}'")
    out_ch = _eval(ctx, inst, block.out_channels, block.path + ("out_channels",), "out_channels", kind=int)
    env["out_channels"] = out_ch
    ctx.g.graph.setdefault(ir.G_BLOCK_PARAMS, {})[scope] = {
        k: v for k, v in env.items() if isinstance(v, (int, str, bool))}
    names: dict[str, tuple[str, int]] = {"input": (x, in_ch)}
    out = _lower_layers(ctx, inst, block.layers, names, (x, in_ch), seq=None)
    node, ch = out
    if ch != out_ch:
        _error(ctx, inst, "E030", f"block '{block.name}' declares out_channels = {out_ch} but its last layer "
                                  f"gives {ch} channels", block.doc.span(block.path + ("out_channels",)),
               block.layers[-1].path)
    return node, ch


def _lower_layers(ctx: _Ctx, inst: _Instance, layers: list[LayerDef], names: dict, prev: tuple[str, int],
                  seq: str | None) -> tuple[str, int]:
    index = 0
    for layer in layers:
        inputs = _resolve_inputs(ctx, inst, layer, names, prev)
        if not _eval(ctx, inst, layer.when, layer.path + ("when",), "when", kind=bool):
            # a skipped layer passes its (first) input through, like an identity
            if layer.name:
                names[_local_name(ctx, inst, layer)] = inputs[0]
            prev = inputs[0]
            continue
        if layer.slot is not None:
            prev = names[layer.slot] = _lower_slot(ctx, inst, layer.slot, inputs[0])
            continue
        if layer.seq is not None:
            out = _lower_layers(ctx, inst, layer.layers, names, inputs[0], seq=layer.seq)
            names[layer.seq] = out
            prev = out
            continue
        if layer.block is not None:
            local = _local_name(ctx, inst, layer)
            start = len(ctx.added)
            prev = _lower_use(ctx, inst, layer, local, inputs)
            use = (local, layer.block)
            for n in ctx.added[start:]:  # an inner use's nodes end up with the outermost use's
                ctx.g._node[n][ir.USE] = use
            names[local] = prev
            continue
        if seq is not None:
            local = f"{seq}.{index}"
            index += 1
        else:
            local = _local_name(ctx, inst, layer) if layer.name else layer.op
        prev = _emit(ctx, inst, layer, local, inputs)
        names[local] = prev
        if prev[0] != inst.prefix + local:  # a later call of a repeated layer: 'relu:2' names that call
            names[prev[0][len(inst.prefix):]] = prev
    return prev


def _lower_slot(ctx: _Ctx, inst: _Instance, slot: str, x: tuple[str, int]) -> tuple[str, int]:
    """A plugin position: the stage's plugins for it, each a block use nested under its name
    (``layer2.0.context_block.conv_mask``). mmdetection chains them in order; mmsegmentation
    (plugin_mode last) applies each to the slot's input and keeps the last result."""
    out = x
    for p in inst.plugins.get(slot, []):
        # a plugin is written in the spec, not in the block: its errors point there
        inst.plugin_count[0] += 1
        at = replace(inst, block=replace(inst.block, doc=ctx.spec.doc, builtin=False),
                     decl=inst.decl + (1, inst.plugin_count[0]))
        if out is not x and inst.plugin_mode == "last":
            ctx.g.nodes[out[0]][ir.DISCARDED] = True  # mmsegmentation computes it and keeps the next one
        start = len(ctx.added)
        env: dict[str, Any] = {}
        out = _lower_use(ctx, at, p.layer, p.layer.name, [out if inst.plugin_mode == "chain" else x], env)
        params = ctx.spec.blocks[p.layer.block].params
        args = {k: v for k, v in env.items() if k == "in_channels" or k in params}
        for n in ctx.added[start:]:
            ctx.g.nodes[n][ir.PLUGIN] = p.layer.name
            ctx.g.nodes[n][ir.PLUGIN_ARGS] = args
    return out


def _lower_use(ctx: _Ctx, inst: _Instance, layer: LayerDef, local: str, inputs: list[tuple[str, int]],
               env_out: dict | None = None) -> tuple[str, int]:
    """Instantiate the block type a layer uses; its modules nest under the layer's name
    (``layer1.0.se.fc1``) and stay part of the enclosing block instance. ``env_out`` receives
    the used block's evaluated parameters (and in_channels)."""
    block = ctx.spec.blocks[layer.block]
    if len(inputs) != 1:
        _error(ctx, inst, "E023", f"a layer using block '{block.name}' takes 1 input, got {len(inputs)}",
               inst.block.doc.span(layer.path + ("from",)), layer.path)
    x, in_ch = inputs[0]
    env: dict[str, Any] = {"in_channels": in_ch}
    for name, p in block.params.items():
        raw = layer.attrs.get(name)
        if name in layer.attrs:
            if p.type is str and isinstance(raw, str) and raw.strip().isidentifier() and raw.strip() not in inst.env:
                value = raw.strip()  # a bare word that names nothing here is the string itself: style: caffe
            else:
                value = _eval(ctx, inst, raw, layer.path + (name,), f"{block.name}.{name}",
                              kind=p.type if p.type is not str else None)
            problem = (f"must be {_TYPE_NAMES[p.type]}, got {value!r}" if not _is_type(value, p.type) else
                       f"= {value} must be >= {p.min}" if p.min is not None and value < p.min else
                       f"= {value!r} is not one of {', '.join(map(repr, p.choices))}"
                       if p.choices and value not in p.choices else None)
            if problem:
                _error(ctx, inst, "E014" if "must be >=" in problem else "E013" if "one of" in problem else "E011",
                       f"argument {name} of block '{block.name}' {problem}",
                       inst.block.doc.span(layer.path + (name,)), layer.path,
                       did_you_mean(value, [str(c) for c in p.choices]) if p.choices and isinstance(value, str)
                       else None)
            env[name] = value
        elif p.default is not MISSING:
            env[name] = p.default
    inner = _Instance(block, inst.scope, inst.prefix + local + ".", inst.stage, inst.span, env,
                      f"{inst.where}, layer '{local}' (block '{block.name}')", decl=inst.decl)
    if inst.prefix.count(".") > 64:  # cycles are refused when parsing; this guards the recursion itself
        _error(ctx, inst, "E050", f"blocks nest more than 64 deep at '{local}'", inst.block.doc.span(layer.path),
               layer.path)
    for name, expr, path in block.lets:
        env[name] = _eval(ctx, inner, expr, path, f"let '{name}'")
    out_ch = _eval(ctx, inner, block.out_channels, block.path + ("out_channels",), "out_channels", kind=int)
    env["out_channels"] = out_ch
    if env_out is not None:
        env_out.update(env)
    node, ch = _lower_layers(ctx, inner, block.layers, {"input": (x, in_ch)}, (x, in_ch), seq=None)
    if ch != out_ch:
        _error(ctx, inner, "E030", f"block '{block.name}' declares out_channels = {out_ch} but its last layer "
                                   f"gives {ch} channels", block.doc.span(block.path + ("out_channels",)),
               block.layers[-1].path)
    return node, ch


_TYPE_NAMES = {int: "an integer", bool: "a boolean", str: "a string", float: "a number"}


def _is_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _local_name(ctx: _Ctx, inst: _Instance, layer: LayerDef) -> str:
    abbr = NORM_ABBR[ctx.spec.norm["type"]]
    return (layer.name or layer.op).replace("{norm}", abbr)


def _resolve_inputs(ctx: _Ctx, inst: _Instance, layer: LayerDef, names: dict, prev: tuple[str, int]):
    if layer.inputs is None:
        return [prev]
    out = []
    abbr = NORM_ABBR[ctx.spec.norm["type"]]
    for i, raw in enumerate(layer.inputs):
        name = raw.replace("{norm}", abbr)
        if name not in names:
            _error(ctx, inst, "E023", f"layer input '{raw}' is not an earlier layer of block '{inst.block.name}'",
                   inst.block.doc.span(layer.path + ("from", i)), None,
                   did_you_mean(name, names) or f"earlier layers: {', '.join(names)}")
        out.append(names[name])
    return out


def _emit(ctx: _Ctx, inst: _Instance, layer: LayerDef, local: str, inputs: list[tuple[str, int]]) -> tuple[str, int]:
    g = ctx.g
    opdef = OPS[layer.op]
    attrs: dict[str, Any] = {}
    for attr, default in opdef.attrs.items():
        if attr in layer.attrs and attr in opdef.list_attrs:  # a list of integer expressions (reshape dims)
            attrs[attr] = tuple(_eval(ctx, inst, v, layer.path + (attr, j), f"{layer.op}.{attr}[{j}]", kind=int)
                                for j, v in enumerate(layer.attrs[attr]))
            continue
        if attr in layer.attrs:
            kind = bool if isinstance(default, bool) else (str if isinstance(default, str) else int)
            value = _eval(ctx, inst, layer.attrs[attr], layer.path + (attr,), f"{layer.op}.{attr}", kind=kind)
            low = opdef.int_min.get(attr, 0)
            if kind is int and value is not None and value < low:
                _error(ctx, inst, "E014", f"{layer.op}.{attr} = {value} must be >= {low}",
                       inst.block.doc.span(layer.path + (attr,)), layer.path)
            attrs[attr] = value
        elif default is not REQUIRED:
            attrs[attr] = default
    for attr, setting in opdef.spec_defaults.items():  # e.g. an act's type: the spec's act: section
        if attr not in layer.attrs:
            attrs[attr] = getattr(ctx.spec, setting)
    opdef.normalize(attrs)
    lo, hi = opdef.arity
    if not lo <= len(inputs) <= hi:
        _error(ctx, inst, "E023", f"'{layer.op}' takes {lo}{'' if lo == hi else f' to {hi}'} inputs, "
                                  f"got {len(inputs)}", inst.block.doc.span(layer.path), layer.path)
    in_ch = inputs[0][1]
    chs = [c for _, c in inputs]
    out_ch = opdef.channels(attrs, chs) if None not in chs or opdef.shape is not None else None
    def_span = inst.block.doc.span(layer.path)
    if in_ch is None and opdef.shape is None and (opdef.has_module or opdef.check_channels is not _no_check):
        _error(ctx, inst, "E120", f"'{layer.op}' layer '{local}' needs a C x H x W map, but its input's first axis "
                                  "is not its channels", def_span, layer.path,
               "reshape (dims [channels, ...]) or unflatten it back to a map first")
    if "out" in attrs and out_ch > MAX_CHANNELS:
        _error(ctx, inst, "E014", f"{layer.op}.out = {out_ch} channels is more than graphres builds ({MAX_CHANNELS})",
               inst.block.doc.span(layer.path + ("out",)), layer.path)
    if opdef.uses_norm:
        ctx.norm_channels.append(in_ch)
    problem = opdef.check_channels(attrs, inputs, ctx.g.graph)
    if problem is not None:
        message, attr, hint = problem
        if hint == GN_MISFIT:  # reported once for the whole spec, listing every size (E031)
            ctx.gn_misfits.setdefault(in_ch, inst.prefix + local)
        else:
            _error(ctx, inst, "E030", message, inst.block.doc.span(layer.path + (attr,)) if attr else def_span,
                   layer.path, hint)
    module = inst.prefix + local if opdef.has_module else None
    node_id = inst.prefix + local
    if node_id in g:
        if opdef.unique_name:
            _error(ctx, inst, "E013", f"layer name '{local}' is used twice in block '{inst.block.name}'",
                   inst.block.doc.span(layer.path + ("name",)), layer.path,
                   "layers with parameters need distinct names; parameterless ones (act, pools) may repeat")
        k = 1
        while f"{node_id}:{k}" in g:
            k += 1
        if opdef.has_module and g.nodes[node_id][ir.ATTRS] != attrs:
            _error(ctx, inst, "E013", f"layer name '{local}' is reused with different settings",
                   inst.block.doc.span(layer.path), layer.path, "give the second layer its own name")
        node_id = f"{node_id}:{k}"
    decl = inst.decl
    if inst.block.modules:
        top = local.split(".")[0]
        decl += (inst.block.modules.index(top) if top in inst.block.modules else len(inst.block.modules),)
    ctx.added.append(node_id)
    ir.add_node(g, node_id, layer.op, [n for n, _ in inputs], **{
        ir.INIT: layer.init, ir.DECL: decl,
        ir.ATTRS: attrs, ir.MODULE: module, ir.IN_CH: in_ch, ir.OUT_CH: out_ch, ir.SCOPE: inst.scope,
        ir.STAGE: inst.stage, ir.BLOCK_TYPE: inst.block.name, ir.SPAN: inst.span, ir.DEF_SPAN: def_span})
    return node_id, out_ch


def _eval(ctx: _Ctx, inst: _Instance, value: Any, path: tuple, label: str, kind: type | None = None) -> Any:
    if isinstance(value, str) and kind is not str:
        try:
            result = evaluate(value, inst.env)
        except ExprError as e:
            _error(ctx, inst, "E022", f"{label} = '{value.strip()}': {e.message}",
                   expr_span(inst.block.doc, path, value, e.col), path, e.hint)
    else:
        result = value
    if kind is int and (not isinstance(result, int) or isinstance(result, bool)):
        _error(ctx, inst, "E011", f"{label} must be an integer, got {result!r}", inst.block.doc.span(path), path)
    if kind is bool and not isinstance(result, bool):
        if isinstance(result, int):
            return bool(result)
        _error(ctx, inst, "E011", f"{label} must be a boolean, got {result!r}", inst.block.doc.span(path), path)
    return result


def _error(ctx: _Ctx, inst: _Instance, code: str, message: str, def_span: Span, path: tuple | None,
           hint: str | None = None) -> None:
    """Record an error found while building a block, then abort that block.

    Errors inside a user's own block point at the block definition; errors inside a built-in
    block point at the spec entry that instantiated it (the built-in file is not the user's)."""
    if inst.block.builtin:
        d = Diagnostic(code, message, inst.span, hint, [f"in {inst.where}, defined at {def_span}"])
    else:
        d = Diagnostic(code, message, def_span, hint, [f"while building {inst.where}"])
    ctx.diags.extend([d])
    raise _Abort
