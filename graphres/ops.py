"""The closed table of primitive ops (used by lowering, passes and backends; no torch).

Each op is one :class:`OpDef` record that carries every rule about it, so adding an op touches
this file alone and no other file switches on op names:

- ``attrs`` (attribute -> default, :data:`REQUIRED` when it must be given), ``choices`` and
  ``int_min`` (the smallest value of each integer attribute), and ``normalize``, which fills the
  defaults that depend on other attributes (a conv's padding, a pool's stride);
- ``arity``, ``channels`` (output channels from the operands'), ``check_channels`` (a message
  when the operands' channels do not fit), ``spatial`` (output height and width) and
  ``check_spatial`` (a message when the operands' sizes do not fit);
- ``params`` and ``macs`` (multiply-accumulates, padding counted, torchvision's convention);
- ``window`` (the sliding window for receptive fields, strides and size formulas; ``None`` for a
  pointwise op), ``global_pool`` (its output sees the whole input);
- ``in_place`` (it may overwrite its first operand), ``overwritable`` (a later in-place op may
  overwrite its output: its backward does not need it) and ``scratch`` (bytes held while it runs);
- ``label`` (how reports and diagrams name it) and ``torch`` (how the torch backend emits it: the
  source text of the module constructor, or of the functional expression).

``settings`` below is the graph's settings mapping (its ``norm`` and ``conv`` entries).
Block definitions may only use the ops listed in :data:`OPS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

NORM_TYPES = ("BN", "SyncBN", "FrozenBN", "GN", "IN")
NORM_ABBR = {"BN": "bn", "SyncBN": "bn", "FrozenBN": "bn", "GN": "gn", "IN": "in"}
NORM_NAMES = {"BN": "BatchNorm", "SyncBN": "SyncBatchNorm", "GN": "GroupNorm", "IN": "InstanceNorm"}
CONV_TYPES = ("Conv2d", "ConvWS")
ACT_TYPES = ("relu", "relu6", "silu", "gelu", "leaky_relu", "hardswish", "sigmoid", "hardsigmoid")
# torch.nn class and whether it takes inplace=, per activation type
ACT_MODULES = {"relu": ("ReLU", True), "relu6": ("ReLU6", True), "silu": ("SiLU", True), "gelu": ("GELU", False),
               "leaky_relu": ("LeakyReLU", True), "hardswish": ("Hardswish", True), "sigmoid": ("Sigmoid", False),
               "hardsigmoid": ("Hardsigmoid", True)}
# activations an inference build computes inside the conv before them (oneDNN post-ops, within
# 1e-6 of torch's own); the others stay separate layers
FUSED_ACTS = ("relu", "silu", "hardswish", "gelu")
BYTES_PER_ELEMENT = 4  # float32

REQUIRED = object()

HW = tuple  # (height, width)


@dataclass(frozen=True)
class Window:
    """A square sliding window: what receptive fields, strides and size formulas need."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil_mode: bool = False


@dataclass(frozen=True)
class TorchEmit:
    """How the torch backend emits an op: ``module`` returns the source of its constructor
    (``nn.Conv2d(64, 64, 3, padding=1, bias=False)``) for ops with a module, from (attrs, in_ch,
    out_ch, settings, inplace); ``call`` returns the source of the call from the module reference
    (``self.conv1``, or None for a functional op), the operands' names and whether it runs in place."""

    module: Callable[..., str] | None = None
    call: Callable[[str | None, Sequence[str], bool], str] = lambda ref, xs, inplace: f"{ref}({', '.join(xs)})"
    # runtime classes (graphres.backends.runtime) the emitted source may name
    needs: Callable[[Mapping], tuple[str, ...]] = lambda settings: ()
    # keyword arguments the constructor writes out always, with torch's default: generated code
    # leaves such a keyword out where it has this value in every instance of a block class
    defaults: dict[str, Any] = field(default_factory=dict)
    # for functional ops whose call depends on their attributes (a slice's channel range):
    # (attrs, module reference or None, operands, in place) -> source; used instead of ``call``
    call_attrs: Callable[[dict, str | None, Sequence[str], bool], str] | None = None


def _no_check(*_: Any) -> None:
    return None


def _same(attrs: dict, shapes: Sequence[HW]) -> HW:
    return shapes[0]


def _zero(*_: Any) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    attrs: dict[str, Any]
    torch: TorchEmit
    label: Callable[[dict, Mapping, bool], str]  # (attrs, settings, compact) -> text
    has_module: bool = True
    arity: tuple[int, int] = (1, 1)  # min, max inputs
    choices: dict[str, tuple] = field(default_factory=dict)
    int_min: dict[str, int] = field(default_factory=dict)
    normalize: Callable[[dict], None] = _no_check
    channels: Callable[[dict, Sequence[int]], int] = lambda attrs, chs: chs[0]
    # (attrs, [(operand, channels)], settings) -> (message, attribute at fault or None, hint) or None
    check_channels: Callable[[dict, Sequence[tuple[str, int]], Mapping], tuple[str, str | None, str | None] | None] \
        = _no_check
    spatial: Callable[[dict, Sequence[HW]], HW] = _same
    # (attrs, operand sizes) -> (code, message with a {node} field, hint) or None
    check_spatial: Callable[[dict, Sequence[HW]], tuple[str, str, str] | None] = _no_check
    params: Callable[[dict, int, int, Mapping], int] = _zero
    macs: Callable[[dict, int, int, HW], int] = _zero
    window: Callable[[dict], Window | None] = lambda attrs: None
    global_pool: bool = False
    in_place: Callable[[dict], bool] = lambda attrs: False
    overwritable: bool = False
    scratch: Callable[[dict, int, int, int, Mapping], int] = _zero  # (attrs, in_ch, out_ch, out_bytes, settings)
    unique_name: bool = False  # has parameters, so two layers may not share its name
    uses_norm: bool = False  # is the spec's normalisation layer (its norm: section applies)
    # attributes that default to a spec-wide setting when a layer does not set them: attr -> Spec field
    spec_defaults: dict[str, str] = field(default_factory=dict)
    # what torch would refuse (or compute as NaN) once it runs: (attrs, in_ch, first operand's
    # (C, H, W), settings) -> (code, message with a {node} field, hint) or None
    check_run: Callable[[dict, int, tuple, Mapping], tuple[str, str, str] | None] = _no_check
    # the state-dict entries of its module, name -> shape: (attrs, in_ch, out_ch, settings)
    tensors: Callable[[dict, int, int, Mapping], dict] = lambda a, i, o, s: {}
    symbol: str | None = None  # diagrams draw it as a small circle with this symbol (a merge)
    label_channels: bool = False  # diagrams show its output channels
    # its receptive field depends on the data (a deformable conv's learned offsets): the analysis
    # marks it and everything after it, and reports the regular-grid field as a lower bound only
    data_dependent_rf: bool = False
    # -- tensor ops (attention): operands and outputs of any rank, the batch axis left out --
    list_attrs: tuple = ()  # attributes whose value is a list of integers (reshape's dims)
    # the whole output shape from the operands' shapes; None = (channels,) + spatial (a C x H x W map)
    shape: Callable[[dict, Sequence[tuple]], tuple] | None = None
    # (attrs, operand shapes) -> (message with a {node} field, hint) when the shapes do not fit
    check_shape: Callable[[dict, Sequence[tuple]], tuple[str, str] | None] = _no_check
    # MACs from (attrs, operand shapes, output shape); None = ``macs`` above
    macs_shape: Callable[[dict, Sequence[tuple], tuple], int] | None = None
    # the inference build (passes/fold.py): a norm-like op that folds into a fold_target op before
    # it, for these settings; a fold_target gains a bias and absorbs it
    folds: Callable[[Mapping], bool] = lambda settings: False
    fold_target: bool = False
    # the inference build (passes/fold.py): the activation after it (one of FUSED_ACTS) and a
    # two-operand residual sum it feeds are computed inside its layer (attrs fused_act, fused_residual)
    fuse_target: bool = False
    # the activation a fuse_target before it computes in its place (a name in FUSED_ACTS), or None
    fused_act: Callable[[dict], str | None] = lambda attrs: None
    fused_sum: bool = False  # a two-operand sum a fuse_target before it computes in its place
    # its output is always a view of its first operand (a channel slice): it allocates nothing and
    # keeps the operand's storage alive as long as it lives (the analysis' peak memory)
    view: bool = False


# -- sizes ----------------------------------------------------------------------------------------

def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """PyTorch's pooling size rule: with ceil_mode the last window may overhang the input (it is
    dropped only when it would start in the right padding), so a 1-pixel input still gives 1."""
    span = size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return max(out, 0)


def _window_hw(w: Window, hw: HW, pool: bool) -> HW:
    if pool:
        return tuple(pool_out_size(s, w.kernel, w.stride, w.padding, w.ceil_mode) for s in hw)
    return tuple(max(conv_out_size(s, w.kernel, w.stride, w.padding, w.dilation), 0) for s in hw)


# -- conv -----------------------------------------------------------------------------------------

def _conv_normalize(a: dict) -> None:
    if a.get("padding") is None:
        a["padding"] = a["dilation"] * (a["kernel"] - 1) // 2  # "same" for odd kernels


_WINDOWS: dict[tuple, Window] = {}  # the few distinct windows of a spec, made once (a frozen dataclass is slow to build)


def _window_of(kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> Window:
    key = (kernel, stride, padding, dilation, ceil_mode)
    w = _WINDOWS.get(key)
    if w is None:
        if len(_WINDOWS) > 4096:
            _WINDOWS.clear()
        w = _WINDOWS[key] = Window(kernel, stride, padding, dilation, ceil_mode)
    return w


def _conv_window(a: dict) -> Window:
    return _window_of(a["kernel"], a["stride"], a["padding"], a["dilation"])


def _conv_check_channels(a: dict, inputs: Sequence[tuple[str, int]], settings: Mapping):
    groups, in_ch = a["groups"], inputs[0][1]
    if in_ch % groups or a["out"] % groups:
        return (f"conv groups = {groups} must divide its {in_ch} input and {a['out']} output channels", "groups",
                None)
    return None


def _conv_params(a: dict, in_ch: int, out_ch: int, settings: Mapping) -> int:
    return out_ch * (in_ch // a["groups"]) * a["kernel"] ** 2 + (out_ch if a["bias"] else 0)


def _conv_macs(a: dict, in_ch: int, out_ch: int, hw: HW) -> int:
    return out_ch * hw[0] * hw[1] * (in_ch // a["groups"]) * a["kernel"] ** 2


def _conv_ws(settings: Mapping) -> bool:
    return (settings.get("conv") or {}).get("type") == "ConvWS"


def _conv_scratch(a: dict, in_ch: int, out_ch: int, out_bytes: int, settings: Mapping) -> int:
    """Weight standardisation makes, per call: the per-channel mean and std (and std + eps), then
    ``w - mean`` and its quotient, a weight-sized tensor each; the difference is freed before the
    convolution runs with the quotient. So beyond its output the conv holds the larger of
    2 weights + 3 channel vectors (while dividing, before the output exists) and
    1 weight + 2 channel vectors (while convolving)."""
    if not _conv_ws(settings):
        return 0
    weight = out_ch * (in_ch // a["groups"]) * a["kernel"] ** 2 * BYTES_PER_ELEMENT
    vector = out_ch * BYTES_PER_ELEMENT
    return max(2 * weight + 3 * vector - out_bytes, weight + 2 * vector)


def _conv_check_run(a: dict, in_ch: int, in_shape: tuple, settings: Mapping):
    per_group = in_ch // a["groups"]
    if _conv_ws(settings) and per_group * a["kernel"] ** 2 == 1:
        return ("E065", f"weight-standardised conv {{node}} has one weight per output channel ({per_group} input "
                        f"channel{'s' if per_group != 1 else ''} per group, kernel 1x1): its standard deviation is "
                        f"undefined and every output NaN",
                "use conv: {type: Conv2d}, or fewer groups or a larger kernel in this layer")
    return None


def _conv_torch(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
    args = [str(in_ch), str(out_ch), str(a["kernel"]), f"stride={a['stride']}", f"padding={a['padding']}",
            f"dilation={a['dilation']}", f"groups={a['groups']}", f"bias={a['bias']}"]
    if _conv_ws(settings):
        eps = (settings.get("conv") or {}).get("eps", 1e-5)
        return f"ConvWS2d({', '.join(args)}{'' if eps == 1e-5 else f', eps={eps!r}'})"
    if "fused_act" in a:  # the inference build's fused layer (passes/fold.py decided)
        args += [f"act={a['fused_act']!r}", f"residual={a['fused_residual']}"]
        if a.get("reuse_residual"):
            args.append("reuse_residual=True")
        return f"FusedConv2d({', '.join(args)})"
    return f"nn.Conv2d({', '.join(args)})"


def _window_label(name: str, a: dict, compact: bool) -> str:
    k, s = a["kernel"], a["stride"]
    if compact:
        text = f"{name} {k}x{k}" + (f"/{s}" if s != 1 else "")
        text += f" d{a['dilation']}" if a.get("dilation", 1) != 1 else ""
        return text + (f" g{a['groups']}" if a.get("groups", 1) != 1 else "")
    text = f"{name}{k}x{k}" + (f" s{s}" if s != 1 else "")
    if name == "conv":
        text += f" d{a['dilation']}" if a.get("dilation", 1) != 1 else ""
        text += f" g{a['groups']}" if a.get("groups", 1) != 1 else ""
    return text


# -- norm -----------------------------------------------------------------------------------------

GN_MISFIT = "gn-misfit"  # check_channels' hint for a GN whose num_groups does not divide the channels


def _norm_check_channels(a: dict, inputs: Sequence[tuple[str, int]], settings: Mapping):
    norm = settings["norm"]
    groups, in_ch = norm.get("num_groups"), inputs[0][1]
    if norm["type"] == "GN" and groups and in_ch % groups:
        return (f"GN num_groups = {groups} does not divide {in_ch} channels", None, GN_MISFIT)
    return None


def _norm_affine(norm: Mapping) -> bool:
    return norm.get("affine", norm["type"] != "IN")


def _norm_params(a: dict, in_ch: int, out_ch: int, settings: Mapping) -> int:
    return 2 * out_ch if _norm_affine(settings["norm"]) else 0


def _norm_torch(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
    norm = settings["norm"]
    kind = norm["type"]
    opts = []
    if norm.get("eps", 1e-5) != 1e-5:
        opts.append(f"eps={norm['eps']!r}")
    if kind != "GN" and norm.get("momentum", 0.1) != 0.1:
        opts.append(f"momentum={norm['momentum']!r}")
    if _norm_affine(norm) != (kind != "IN"):
        opts.append(f"affine={_norm_affine(norm)}")
    tail = "".join(", " + o for o in opts)
    if kind == "GN":
        return f"nn.GroupNorm({norm['num_groups']}, {out_ch}{tail})"
    cls = {"BN": "nn.BatchNorm2d", "SyncBN": "SyncBatchNorm2d", "FrozenBN": "FrozenBatchNorm2d",
           "IN": "nn.InstanceNorm2d"}[kind]
    return f"{cls}({out_ch}{tail})"


def _norm_needs(settings: Mapping) -> tuple[str, ...]:
    return {"SyncBN": ("SyncBatchNorm2d",), "FrozenBN": ("FrozenBatchNorm2d",)}.get(settings["norm"]["type"], ())


def _norm_check_run(a: dict, in_ch: int, in_shape: tuple, settings: Mapping):
    if settings["norm"]["type"] == "IN" and in_shape and in_shape[1] * in_shape[2] == 1:
        return ("E064", "instance norm {node} normalises a 1x1 map: one value per channel, which torch refuses",
                "use BN or GN, or a larger input.size, or move the norm before the global pool")
    return None


BN_LIKE = ("BN", "SyncBN", "FrozenBN")  # torch BatchNorm layouts: running statistics as buffers


def _norm_tensors(a: dict, in_ch: int, out_ch: int, settings: Mapping) -> dict:
    norm = settings["norm"]
    out = {"weight": (out_ch,), "bias": (out_ch,)} if _norm_affine(norm) else {}
    if norm["type"] in BN_LIKE:  # GroupNorm and InstanceNorm2d (track_running_stats off) keep none
        out.update(running_mean=(out_ch,), running_var=(out_ch,), num_batches_tracked=())
    return out


# -- act ------------------------------------------------------------------------------------------

def _act_torch(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
    cls, takes_inplace = ACT_MODULES[a["type"]]
    args = ["0.01"] if a["type"] == "leaky_relu" else []
    if takes_inplace and inplace:
        args.append("inplace=True")
    return f"nn.{cls}({', '.join(args)})"


# -- pools ----------------------------------------------------------------------------------------

def _pool_normalize(a: dict) -> None:
    if a.get("stride") is None:
        a["stride"] = a["kernel"]


def _pool_check_run(name: str) -> Callable:
    def check(a: dict, in_ch: int, in_shape: tuple, settings: Mapping):
        if 2 * a["padding"] > a["kernel"]:
            return ("E063", f"{name} {{node}} pads by {a['padding']}, more than half its kernel of {a['kernel']}",
                    f"torch allows padding up to kernel // 2 = {a['kernel'] // 2}")
        return None
    return check


def _pool_window(a: dict) -> Window:
    return _window_of(a["kernel"], a["stride"], a["padding"], 1, a["ceil_mode"])


def _pool_torch(cls: str) -> Callable[..., str]:
    def emit(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
        args = [str(a["kernel"]), str(a["stride"]), f"padding={a['padding']}", f"ceil_mode={a['ceil_mode']}"]
        if cls == "AvgPool2d":
            args.append(f"count_include_pad={a['count_include_pad']}")
        return f"nn.{cls}({', '.join(args)})"
    return emit


# -- merges ---------------------------------------------------------------------------------------

def _equal_channels(name: str) -> Callable:
    def check(a: dict, inputs: Sequence[tuple[str, int]], settings: Mapping):
        if len({c for _, c in inputs}) > 1:
            listing = ", ".join(f"{n.split(':')[0]} has {c}" for n, c in inputs)
            return (f"'{name}' inputs have different channels: {listing}", None,
                    "make the branches end with the same number of channels (a 1x1 conv on the shortcut?)")
        return None
    return check


def _equal_sizes(name: str, broadcast: bool) -> Callable:
    def check(a: dict, shapes: Sequence[HW]):
        bad = [s for s in shapes[1:] if tuple(s) != tuple(shapes[0]) and not (broadcast and tuple(s) == (1, 1))]
        if bad:
            return ("E030", f"'{name}' at {{node}} joins tensors of spatial sizes "
                            f"{' and '.join('x'.join(map(str, s)) for s in shapes)}",
                    "the branches must reduce the size by the same stride")
        return None
    return check


def _linear_check_spatial(a: dict, shapes: Sequence[HW]):
    if tuple(shapes[0]) != (1, 1):
        return ("E053", f"'linear' at {{node}} needs a 1x1 input, got {'x'.join(map(str, shapes[0]))}",
                "put a global_avgpool before it")
    return None


def _plain(name: str) -> Callable[[dict, Mapping, bool], str]:
    return lambda a, settings, compact: name


# -- deformable conv (mmcv's DCN / DCNv2) ------------------------------------------------------------

def _dcn_offset_channels(a: dict) -> int:
    """Channels of the offset conv: a (dy, dx) pair per kernel position and deform group, plus a
    mask value per position for the modulated (v2) form."""
    return a["deform_groups"] * (3 if a["modulated"] else 2) * a["kernel"] ** 2


def _dcn_check_channels(a: dict, inputs: Sequence[tuple[str, int]], settings: Mapping):
    problem = _conv_check_channels(a, inputs, settings)
    if problem is not None:
        return problem
    in_ch = inputs[0][1]
    if in_ch % a["deform_groups"]:
        return (f"deform_groups = {a['deform_groups']} must divide the deformable conv's {in_ch} input channels",
                "deform_groups", "mmcv's kernels split the input channels evenly among the deform groups")
    return None


def _dcn_params(a: dict, in_ch: int, out_ch: int, settings: Mapping) -> int:
    offset = _dcn_offset_channels(a)
    return _conv_params(a, in_ch, out_ch, settings) + offset * in_ch * a["kernel"] ** 2 + offset


def _dcn_macs(a: dict, in_ch: int, out_ch: int, hw: HW) -> int:
    """The offset conv's and the deformable conv's multiply-accumulates, padding counted; the
    bilinear sampling (4 reads and 3 lerps per tap) and the v2 mask products are not counted, as
    FlopCounterMode does not count them."""
    offset = _dcn_offset_channels(a) * hw[0] * hw[1] * in_ch * a["kernel"] ** 2
    return offset + _conv_macs(a, in_ch, out_ch, hw)


def _dcn_scratch(a: dict, in_ch: int, out_ch: int, out_bytes: int, settings: Mapping) -> int:
    """What the runtime's pure-torch deformable conv holds beyond its output, per image: the offset
    conv's output (2 values per tap and deform group, 3 with the mask, per position), and the most
    of: the sampling grid being built (4 such values), the grid and the sampled columns (2 and
    in_ch * k * k), or the columns, the output and the matmul's copy of the weight."""
    k2 = a["kernel"] ** 2
    positions = out_bytes // (BYTES_PER_ELEMENT * out_ch)
    u = a["deform_groups"] * k2 * positions * BYTES_PER_ELEMENT
    columns = in_ch * k2 * positions * BYTES_PER_ELEMENT
    weight = out_ch * (in_ch // a["groups"]) * k2 * BYTES_PER_ELEMENT
    offset = (3 if a["modulated"] else 2) * u
    return offset + max(4 * u, 2 * u + columns, columns + out_bytes + weight) - out_bytes


def _dcn_torch(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
    cls = "ModulatedDeformConv2dPack" if a["modulated"] else "DeformConv2dPack"
    args = [str(in_ch), str(out_ch), str(a["kernel"]), f"stride={a['stride']}", f"padding={a['padding']}",
            f"dilation={a['dilation']}", f"groups={a['groups']}", f"deform_groups={a['deform_groups']}",
            f"bias={a['bias']}"]
    return f"{cls}({', '.join(args)})"


def _dcn_tensors(a: dict, in_ch: int, out_ch: int, settings: Mapping) -> dict:
    k, offset = a["kernel"], _dcn_offset_channels(a)
    return ({"weight": (out_ch, in_ch // a["groups"], k, k)} | ({"bias": (out_ch,)} if a["bias"] else {})
            | {"conv_offset.weight": (offset, in_ch, k, k), "conv_offset.bias": (offset,)})


def _dcn_label(a: dict, settings: Mapping, compact: bool) -> str:
    name = ("dcnv2" if a["modulated"] else "dcn") if compact else ("DCNv2" if a["modulated"] else "DCN")
    rest = _window_label("conv", a, compact)[len("conv"):].lstrip()  # "3x3 s2 d2"
    return f"{name} {rest}" + (f" dg{a['deform_groups']}" if a["deform_groups"] != 1 else "")


def _dcn_check_run(a: dict, in_ch: int, in_shape: tuple, settings: Mapping):
    if a["bias"] and not a["modulated"]:
        return ("E113", "deformable conv {node} (DCN v1) has bias: true, which mmcv's DeformConv2d refuses",
                "set bias: false, or use the modulated form (modulated: true, mmcv's DCNv2), which has a bias")
    if in_shape and min(in_shape[1:]) < a["kernel"]:
        return ("W111", f"deformable conv {{node}} reads a {in_shape[1]}x{in_shape[2]} map, smaller than its "
                        f"{a['kernel']}x{a['kernel']} kernel: mmcv's kernels refuse it ('input image is smaller than "
                        f"kernel'); graphres runs it as torchvision does (taps outside the map read zero)",
                "use a larger input.size, or a plain conv in this stage, where the model must also run on mmcv")
    return None


# -- slice (a channel range, Res2Net) ---------------------------------------------------------------

def _slice_range(a: dict, in_ch: int) -> tuple[int, int]:
    """The [start, stop) channels a slice takes: ``start``/``stop`` (stop -1 = to the end), or the
    ``index``-th of ``chunks`` equal parts (torch.chunk's rule when chunks does not divide)."""
    if a["chunks"] > 0:
        size = -(-in_ch // a["chunks"])
        return min(a["index"] * size, in_ch), min((a["index"] + 1) * size, in_ch)
    stop = in_ch if a["stop"] < 0 else a["stop"]
    return a["start"], stop


def _slice_check_channels(a: dict, inputs: Sequence[tuple[str, int]], settings: Mapping):
    in_ch = inputs[0][1]
    if a["chunks"] > 0:
        if a["index"] >= a["chunks"]:
            return (f"slice index = {a['index']} is out of range for chunks = {a['chunks']} (0..{a['chunks'] - 1})",
                    "index", None)
        if in_ch % a["chunks"]:
            return (f"slice chunks = {a['chunks']} does not divide its {in_ch} input channels", "chunks",
                    "give start and stop instead, or make the channels a multiple of chunks")
        return None
    start, stop = _slice_range(a, in_ch)
    if not 0 <= start < stop <= in_ch:
        return (f"slice [{start}:{stop}] is not a non-empty channel range of its {in_ch} input channels", "start"
                if start >= min(stop, in_ch) else "stop", f"channels run from 0 to {in_ch}")
    return None


def _slice_channels(a: dict, chs: Sequence[int]) -> int:
    start, stop = _slice_range(a, chs[0])
    return max(stop - start, 0)


def _slice_call(a: dict, ref: str | None, xs: Sequence[str], inplace: bool) -> str:
    if a["chunks"] > 0:
        return f"torch.chunk({xs[0]}, {a['chunks']}, 1)[{a['index']}]"
    return f"{xs[0]}[:, {a['start']}:{'' if a['stop'] < 0 else a['stop']}]"
# -- tensor ops (rank-generic; axes count from 0 = the first axis after the batch) ----------------

MAX_RANK = 8  # axes below -MAX_RANK are refused when lowering (E014)


def _axis(axis: int, rank: int) -> int | None:
    """A non-negative axis of a tensor of ``rank`` (batch left out), or None when out of range."""
    out = axis + rank if axis < 0 else axis
    return out if 0 <= out < rank else None


def _torch_axis(axis: int) -> int:
    """The torch dim of an axis counted without the batch (negative axes count from the end)."""
    return axis + 1 if axis >= 0 else axis


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) if shape else "a scalar"


def _flatten_range(a: dict, rank: int) -> tuple[int, int] | None:
    lo, hi = _axis(a["start"], rank), _axis(a["end"], rank)
    return None if lo is None or hi is None or lo > hi else (lo, hi)


def _flatten_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    s = shapes[0]
    r = _flatten_range(a, len(s))
    if r is None:
        return tuple(s)
    lo, hi = r
    return tuple(s[:lo]) + (math.prod(s[lo:hi + 1]),) + tuple(s[hi + 1:])


def _flatten_check(a: dict, shapes: Sequence[tuple]):
    if _flatten_range(a, len(shapes[0])) is None:
        return (f"flatten at {{node}}: axes {a['start']}..{a['end']} do not fit its "
                f"{_shape_text(shapes[0])} input (rank {len(shapes[0])})",
                "axes count from 0 (the first after the batch); negative ones from the end")
    return None


def _flatten_channels(a: dict, chs: Sequence) -> Any:
    return chs[0] if a["start"] != 0 else None  # the first axis survives unless it is merged


def _unflatten_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    return tuple(shapes[0][:-1]) + tuple(shapes[1][-2:])


def _unflatten_check(a: dict, shapes: Sequence[tuple]):
    x, ref = shapes
    if len(ref) < 3 or x[-1] != ref[-2] * ref[-1]:
        return (f"unflatten at {{node}}: the last axis of its {_shape_text(x)} input cannot take the spatial size of "
                f"its {_shape_text(ref)} second input", "the second input is the C x H x W map whose H*W was flattened")
    return None


def _reshape_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    dims, total = list(a["dims"]), math.prod(shapes[0])
    if dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = total // known if known and total % known == 0 else 0
    return tuple(dims)


def _reshape_check(a: dict, shapes: Sequence[tuple]):
    dims = a["dims"]
    if dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
        return (f"reshape at {{node}}: dims {list(dims)} may hold one -1 and positive sizes only",
                "-1 stands for the size that makes the total fit")
    if math.prod(_reshape_shape(a, shapes)) != math.prod(shapes[0]):
        return (f"reshape at {{node}}: its {_shape_text(shapes[0])} input ({math.prod(shapes[0]):,} values) does not "
                f"fit dims {list(dims)}", "the product of dims must equal the input's (batch left out)")
    return None


def _permute_check(a: dict, shapes: Sequence[tuple]):
    if sorted(a["dims"]) != list(range(len(shapes[0]))):
        return (f"permute at {{node}}: dims {list(a['dims'])} is not a permutation of the {len(shapes[0])} axes of its "
                f"{_shape_text(shapes[0])} input", f"list each of 0..{len(shapes[0]) - 1} once")
    return None


def _permute_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    s = shapes[0]
    return tuple(s[d] for d in a["dims"]) if sorted(a["dims"]) == list(range(len(s))) else tuple(s)


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple | None:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(out)


def _matmul_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    x, y = shapes
    lead = _broadcast(x[:-2], y[:-2]) or ()
    return tuple(lead) + (x[-2], y[-1])


def _matmul_check(a: dict, shapes: Sequence[tuple]):
    x, y = shapes
    if len(x) < 2 or len(y) < 2 or x[-1] != y[-2] or _broadcast(x[:-2], y[:-2]) is None:
        return (f"matmul at {{node}}: cannot multiply {_shape_text(x)} by {_shape_text(y)}",
                "the first input's last axis must equal the second's next-to-last; leading axes broadcast")
    return None


def _matmul_macs(a: dict, shapes: Sequence[tuple], out: tuple) -> int:
    return math.prod(out) * shapes[0][-1]  # FlopCounterMode: 2 FLOPs per multiply-add of (b)mm


def _axis_check(name: str) -> Callable:
    def check(a: dict, shapes: Sequence[tuple]):
        if _axis(a["axis"], len(shapes[0])) is None:
            return (f"{name} at {{node}}: axis {a['axis']} is not an axis of its {_shape_text(shapes[0])} input",
                    "axes count from 0 (the first after the batch); negative ones from the end")
        return None
    return check


def _div_size_check(a: dict, shapes: Sequence[tuple]):
    return _axis_check("div_size")(a, [shapes[-1]])


def _layernorm_check(a: dict, shapes: Sequence[tuple]):
    dims, s = tuple(a["dims"]), tuple(shapes[0])
    if len(dims) > len(s) or s[len(s) - len(dims):] != dims:
        return (f"layernorm at {{node}}: its input is {_shape_text(s)}, but it normalises the last axes as "
                f"{_shape_text(dims)}", "dims are the input's trailing sizes, as torch.nn.LayerNorm's normalized_shape")
    return None


def _broadcast_check(name: str) -> Callable:
    def check(a: dict, shapes: Sequence[tuple]):
        if _broadcast(*shapes) is None:
            return (f"{name} at {{node}}: shapes {_shape_text(shapes[0])} and {_shape_text(shapes[1])} do not broadcast",
                    "sizes must match or be 1, axis by axis from the end")
        return None
    return check


def _expand_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    out = _broadcast(*shapes) or tuple(shapes[0])
    return (shapes[0][0],) + tuple(out[1:])  # the first axis (channels) stays the first input's


OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("conv", "2-d convolution (bias off by default, padding defaults to dilation * (kernel - 1) // 2)",
              {"out": REQUIRED, "kernel": REQUIRED, "stride": 1, "padding": None, "dilation": 1, "groups": 1,
               "bias": False},
              TorchEmit(module=_conv_torch,
                        needs=lambda s: (("ConvWS2d",) if _conv_ws(s) else ()) + (("FusedConv2d",) if s.get("fused") else ()),
                        defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "act": "none",
                                  "residual": False}),
              label=lambda a, s, compact: _window_label("conv", a, compact),
              int_min={"out": 1, "kernel": 1, "stride": 1, "dilation": 1, "groups": 1, "padding": 0},
              normalize=_conv_normalize, channels=lambda a, chs: a["out"], check_channels=_conv_check_channels,
              spatial=lambda a, shapes: _window_hw(_conv_window(a), shapes[0], pool=False),
              params=_conv_params, macs=_conv_macs, window=_conv_window, overwritable=True,
              scratch=_conv_scratch, unique_name=True, label_channels=True, check_run=_conv_check_run, fold_target=True, fuse_target=True,
              tensors=lambda a, i, o, s: {"weight": (o, i // a["groups"], a["kernel"], a["kernel"])}
              | ({"bias": (o,)} if a["bias"] else {})),
        OpDef("norm", "the spec's normalisation layer over the input channels (BN, SyncBN, GN or IN)",
              {"zero_init": False}, TorchEmit(module=_norm_torch, needs=_norm_needs),
              label=lambda a, s, compact: (NORM_NAMES.get(s["norm"]["type"], s["norm"]["type"]) if compact
                                           else str(s["norm"]["type"])),
              check_channels=_norm_check_channels, params=_norm_params, overwritable=True, unique_name=True,
              uses_norm=True, check_run=_norm_check_run, tensors=_norm_tensors,
              folds=lambda s: s["norm"]["type"] in BN_LIKE),
        OpDef("act", "activation function", {"type": "relu"}, TorchEmit(module=_act_torch),
              label=lambda a, s, compact: str(a["type"]), choices={"type": ACT_TYPES}, spec_defaults={"type": "act"},
              in_place=lambda a: ACT_MODULES[a["type"]][1],
              fused_act=lambda a: a["type"] if a["type"] in FUSED_ACTS else None),
        OpDef("maxpool", "max pooling", {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False},
              TorchEmit(module=_pool_torch("MaxPool2d"), defaults={"padding": 0, "ceil_mode": False}), label=lambda a, s, compact: _window_label("maxpool", a, compact),
              int_min={"kernel": 1, "stride": 1, "padding": 0}, normalize=_pool_normalize,
              spatial=lambda a, shapes: _window_hw(_pool_window(a), shapes[0], pool=True), window=_pool_window,
              check_run=_pool_check_run("maxpool"),
              # torch's max pooling also makes int64 indices (twice the float32 output), freed on return
              scratch=lambda a, i, o, out_bytes, s: 2 * out_bytes),
        OpDef("avgpool", "average pooling",
              {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True},
              TorchEmit(module=_pool_torch("AvgPool2d"),
                        defaults={"padding": 0, "ceil_mode": False, "count_include_pad": True}), label=lambda a, s, compact: _window_label("avgpool", a, compact),
              int_min={"kernel": 1, "stride": 1, "padding": 0}, normalize=_pool_normalize,
              spatial=lambda a, shapes: _window_hw(_pool_window(a), shapes[0], pool=True), window=_pool_window,
              check_run=_pool_check_run("avgpool")),
        OpDef("global_avgpool", "average over all spatial positions (output 1x1)", {},
              TorchEmit(module=lambda a, i, o, s, inplace: "nn.AdaptiveAvgPool2d(1)"),
              label=_plain("global avgpool"),
              spatial=lambda a, shapes: (1, 1) if min(shapes[0]) > 0 else (0, 0), global_pool=True),
        OpDef("add", "element-wise sum of its inputs (same shape)", {},
              TorchEmit(call=lambda ref, xs, inplace: (f"{xs[0]}.add_({' + '.join(xs[1:])})" if inplace
                                                       else " + ".join(xs))),
              label=_plain("add"), has_module=False, arity=(2, 8), check_channels=_equal_channels("add"),
              check_spatial=_equal_sizes("add", broadcast=False), in_place=lambda a: True, overwritable=True,
              symbol="+", fused_sum=True),
        OpDef("mul", "element-wise product; the second input may be 1x1 spatially (broadcast)", {},
              TorchEmit(call=lambda ref, xs, inplace: f"{xs[0]} * {xs[1]}"), label=_plain("mul"),
              has_module=False, arity=(2, 2), check_channels=_equal_channels("mul"),
              check_spatial=_equal_sizes("mul", broadcast=True), symbol="\u00d7"),
        OpDef("concat", "concatenation of its inputs along the channels, in 'from' order (same spatial size)", {},
              TorchEmit(call=lambda ref, xs, inplace: f"torch.cat([{', '.join(xs)}], 1)"), label=_plain("concat"),
              has_module=False, arity=(2, 8), channels=lambda a, chs: sum(chs),
              check_spatial=_equal_sizes("concat", broadcast=False)),
        OpDef("linear", "fully connected layer over a 1x1 input (after global_avgpool); bias on by default",
              {"out": REQUIRED, "bias": True},
              TorchEmit(module=lambda a, i, o, s, inplace: f"nn.Linear({i}, {o}{'' if a['bias'] else ', bias=False'})",
                        call=lambda ref, xs, inplace: f"{ref}(torch.flatten({xs[0]}, 1))"),
              label=_plain("linear"), int_min={"out": 1}, channels=lambda a, chs: a["out"],
              check_spatial=_linear_check_spatial,
              params=lambda a, i, o, s: o * i + (o if a["bias"] else 0), macs=lambda a, i, o, hw: o * i,
              unique_name=True, tensors=lambda a, i, o, s: {"weight": (o, i)} | ({"bias": (o,)} if a["bias"] else {})),
        OpDef("deform_conv", "deformable 2-d convolution (mmcv's DCN; modulated: true is DCNv2): a conv_offset conv "
                             "predicts per-position (dy, dx) offsets (and a sigmoid mask for v2) of every kernel tap",
              {"out": REQUIRED, "kernel": REQUIRED, "stride": 1, "padding": None, "dilation": 1, "groups": 1,
               "deform_groups": 1, "modulated": False, "bias": False},
              TorchEmit(module=_dcn_torch, needs=lambda s: ("DeformConv2d", "DeformConv2dPack",
                                                             "ModulatedDeformConv2dPack"),
                        defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "deform_groups": 1}),
              label=_dcn_label,
              int_min={"out": 1, "kernel": 1, "stride": 1, "dilation": 1, "groups": 1, "padding": 0,
                       "deform_groups": 1},
              normalize=_conv_normalize, channels=lambda a, chs: a["out"], check_channels=_dcn_check_channels,
              spatial=lambda a, shapes: _window_hw(_conv_window(a), shapes[0], pool=False),
              params=_dcn_params, macs=_dcn_macs, window=_conv_window, overwritable=True, unique_name=True,
              scratch=_dcn_scratch,
              label_channels=True, check_run=_dcn_check_run, tensors=_dcn_tensors, data_dependent_rf=True),
        OpDef("slice", "a channel range of its input: start..stop (stop -1 = the end), or part index of chunks "
                       "equal parts (a view; Res2Net's split)",
              {"start": 0, "stop": -1, "chunks": 0, "index": 0},
              TorchEmit(call_attrs=_slice_call), label=lambda a, s, compact: (
                  f"slice {a['index']}/{a['chunks']}" if a["chunks"] > 0
                  else f"slice {a['start']}:{'' if a['stop'] < 0 else a['stop']}"),
              has_module=False, int_min={"start": 0, "stop": -1, "chunks": 0, "index": 0},
              channels=_slice_channels, check_channels=_slice_check_channels, view=True),
        # -- tensor ops for attention blocks (any rank; see docs/spec-language.md#tensor-ops) --
        OpDef("flatten", "merge axes start..end into one (axes count from 0 after the batch; C x H x W -> "
                         "C x HW with start 1)", {"start": 1, "end": -1},
              TorchEmit(call_attrs=lambda a, ref, xs, inplace: f"{xs[0]}.flatten({_torch_axis(a['start'])}, {_torch_axis(a['end'])})"), label=_plain("flatten"), has_module=False,
              channels=_flatten_channels, shape=_flatten_shape, check_shape=_flatten_check,
              int_min={"start": -MAX_RANK, "end": -MAX_RANK}),
        OpDef("unflatten", "split the last axis into the H x W of the second input (a C x H x W map)", {},
              TorchEmit(call=lambda ref, xs, inplace: f"{xs[0]}.reshape({xs[0]}.shape[:-1] + {xs[1]}.shape[-2:])"),
              label=_plain("unflatten"), has_module=False, arity=(2, 2), shape=_unflatten_shape,
              check_shape=_unflatten_check),
        OpDef("reshape", "view the tensor as dims (batch left out; one -1 takes the rest)", {"dims": REQUIRED},
              TorchEmit(call_attrs=lambda a, ref, xs, inplace: f"{xs[0]}.reshape({xs[0]}.shape[0], {', '.join(map(str, a['dims']))})"), label=_plain("reshape"), has_module=False,
              list_attrs=("dims",), channels=lambda a, chs: a["dims"][0] if a["dims"][0] > 0 else None,
              shape=_reshape_shape, check_shape=_reshape_check),
        OpDef("permute", "reorder the axes (batch left out): dims[i] is the input axis that becomes axis i",
              {"dims": REQUIRED}, TorchEmit(call_attrs=lambda a, ref, xs, inplace: f"{xs[0]}.permute(0, {', '.join(str(d + 1) for d in a['dims'])})"), label=_plain("permute"),
              has_module=False, list_attrs=("dims",), channels=lambda a, chs: chs[0] if a["dims"][0] == 0 else None,
              shape=_permute_shape, check_shape=_permute_check),
        OpDef("softmax", "softmax along one axis (batch left out; -1 = the last)", {"axis": -1},
              TorchEmit(call_attrs=lambda a, ref, xs, inplace: f"{xs[0]}.softmax({_torch_axis(a['axis'])})"), label=lambda a, s, c: f"softmax({a['axis']})",
              has_module=False, shape=lambda a, shapes: tuple(shapes[0]), check_shape=_axis_check("softmax"),
              int_min={"axis": -MAX_RANK},
              global_pool=True),
        OpDef("matmul", "matrix product of the last two axes, leading axes broadcast (torch.matmul)", {},
              TorchEmit(call=lambda ref, xs, inplace: f"torch.matmul({xs[0]}, {xs[1]})"), label=_plain("matmul"),
              has_module=False, arity=(2, 2), shape=_matmul_shape, check_shape=_matmul_check,
              macs_shape=_matmul_macs, global_pool=True, symbol="@"),
        OpDef("layernorm", "layer norm over the trailing axes dims (torch.nn.LayerNorm(dims), eps 1e-5, affine)",
              {"dims": REQUIRED},
              TorchEmit(module=lambda a, i, o, s, inplace: f"nn.LayerNorm({tuple(a['dims'])})"),
              label=lambda a, s, c: "LayerNorm" if c else "LN", list_attrs=("dims",),
              shape=lambda a, shapes: tuple(shapes[0]), check_shape=_layernorm_check,
              params=lambda a, i, o, s: 2 * math.prod(a["dims"]), unique_name=True, global_pool=True,
              tensors=lambda a, i, o, s: {"weight": tuple(a["dims"]), "bias": tuple(a["dims"])}),
        OpDef("scale", "multiply by a learned parameter of `size` values (a gamma; the state-dict key is the layer's "
                       "name); it starts at `value`", {"size": 1, "value": 0},
              TorchEmit(module=lambda a, i, o, s, inplace: f"parameter({a['size']}, {a['value']})",
                        call=lambda ref, xs, inplace: f"{ref} * {xs[0]}", needs=lambda s: ("parameter",)),
              label=lambda a, s, c: "scale (gamma)", int_min={"size": 1},
              shape=lambda a, shapes: tuple(shapes[0]), params=lambda a, i, o, s: a["size"], unique_name=True,
              tensors=lambda a, i, o, s: {"": (a["size"],)}),
        OpDef("div_size", "divide the first input by the size of one axis of the last input (the first when "
                          "alone), or by its square root with sqrt: true (attention scaling)", {"axis": -1, "sqrt": False},
              TorchEmit(call_attrs=lambda a, ref, xs, inplace: f"{xs[0]} / {xs[-1]}.shape[{_torch_axis(a['axis'])}]"
                        + (" ** 0.5" if a["sqrt"] else "")), arity=(1, 2),
              label=lambda a, s, c: f"/ {'sqrt ' if a['sqrt'] else ''}size({a['axis']})", has_module=False,
              shape=lambda a, shapes: tuple(shapes[0]), check_shape=_div_size_check, int_min={"axis": -MAX_RANK}),
        OpDef("broadcast_add", "element-wise sum; the second input broadcasts (a C x 1 x 1 context onto a map)", {},
              TorchEmit(call=lambda ref, xs, inplace: f"{xs[0]} + {xs[1]}"), label=_plain("add"), has_module=False,
              arity=(2, 2), shape=lambda a, shapes: _broadcast(*shapes) or tuple(shapes[0]),
              check_shape=_broadcast_check("broadcast_add"), symbol="+"),
        OpDef("expand", "repeat the first input's size-1 axes (after the first) to the second input's sizes", {},
              TorchEmit(call=lambda ref, xs, inplace: f"{xs[0]}.expand(-1, -1, *torch.broadcast_shapes("
                                                       f"{xs[0]}.shape[2:], {xs[1]}.shape[2:]))"),
              label=_plain("expand"), has_module=False, arity=(2, 2), shape=_expand_shape,
              check_shape=_broadcast_check("expand")),
    ]
}


# -- GeneralizedAttention (mmcv): a learned bias, the relative position term, a resize -------------
# (one contiguous block: ops added for issue 10's GeneralizedAttention plugin)

def _bias_size(a: dict) -> int:
    return math.prod(a["dims"])


def _bias_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    dims = tuple(a["dims"])
    return dims if a["alone"] else (_broadcast(shapes[0], dims) or tuple(shapes[0]))


def _bias_check(a: dict, shapes: Sequence[tuple]):
    if any(d < 1 for d in a["dims"]):
        return (f"bias at {{node}}: dims {list(a['dims'])} must be positive sizes", "the learned tensor's shape")
    if not a["alone"] and _broadcast(shapes[0], tuple(a["dims"])) is None:
        return (f"bias at {{node}}: its {_shape_text(a['dims'])} tensor does not broadcast onto its "
                f"{_shape_text(shapes[0])} input", "sizes must match or be 1, axis by axis from the end")
    return None


def _bias_call(a: dict, ref: str | None, xs: Sequence[str], inplace: bool) -> str:
    dims = ", ".join(map(str, a["dims"]))
    if a["alone"]:
        # repeat (a copy, as mmcv's): a view of a parameter made under no_grad would be a leaf that
        # requires grad, which module hooks (FlopCounterMode's tracker) refuse
        return f"{ref}.view(1, {dims}).repeat({xs[0]}.shape[0], {', '.join('1' * len(a['dims']))})"
    return f"{xs[0]} + {ref}.view(1, {dims})"


def _position_sizes(shapes: Sequence[tuple]) -> tuple[int, int, int, int, int]:
    """(rows of the query, h, w, h_kv, w_kv) from the operands (query, query map, key/value map)."""
    q, qm, kv = shapes
    return q[-2], qm[-2], qm[-1], kv[-2], kv[-1]


def _position_shape(a: dict, shapes: Sequence[tuple]) -> tuple:
    rows, h, w, hkv, wkv = _position_sizes(shapes)
    one = rows == 1 and h * w != 1  # a learned bias instead of a per-position query
    if not a["vertical"]:
        return (a["heads"], 1 if one else h, w, 1, wkv)
    return (a["heads"], h, 1 if one else w, hkv, 1)


def _position_check(a: dict, shapes: Sequence[tuple]):
    q, qm, kv = shapes
    if len(q) != 3 or len(qm) != 3 or len(kv) != 3:
        return (f"position_energy at {{node}}: needs a heads x rows x dim query and two C x H x W maps, got "
                f"{', '.join(_shape_text(s) for s in shapes)}", "from: [query, query map, key/value map]")
    rows, h, w, hkv, wkv = _position_sizes(shapes)
    if q[0] != a["heads"] or q[2] != a["dim"] or rows not in (1, h * w):
        return (f"position_energy at {{node}}: its query is {_shape_text(q)}, but heads = {a['heads']}, dim = "
                f"{a['dim']} and the query map has {h}x{w} positions", "the query is heads x (H*W or 1) x dim")
    if a["feat"] % 4:
        return (f"position_energy at {{node}}: feat = {a['feat']} is not a multiple of 4 (the sine embedding has "
                f"2 * ceil(feat / 4) values, the Linear feat // 2 inputs)", "use a multiple of 4")
    if a["transposed"] and h != w and rows != 1:
        return (f"position_energy at {{node}}: transposed: true (mmcv's query-and-position term without geom_bias) "
                f"needs a square map, but the query map is {h}x{w}: mmcv fails there too",
                "use a square input size, or attention_type with its fourth bit set ('0101', '1111')")
    return None


def _position_macs(a: dict, shapes: Sequence[tuple], out: tuple) -> int:
    """The Linear on the sine embedding (once per forward, as mmcv computes it) and the product of
    the query with it, as FlopCounterMode counts them (FLOPs / 2)."""
    rows, h, w, hkv, wkv = _position_sizes(shapes)
    pairs = h * hkv if a["vertical"] else w * wkv
    return pairs * (a["feat"] // 2) * a["heads"] * a["dim"] + math.prod(out) * a["dim"]


def _position_torch(a: dict, in_ch: int, out_ch: int, settings: Mapping, inplace: bool) -> str:
    args = [str(a["feat"]), str(a["heads"]), str(a["dim"])]
    for key, default in (("vertical", False), ("magnitude", 1), ("q_stride", 1), ("kv_stride", 1), ("wave_length", 1000),
                         ("transposed", False)):
        if a[key] != default:
            args.append(f"{key}={a[key]!r}")
    return f"RelativePosition({', '.join(args)})"


def _max_len_kv(a: dict) -> int:
    return int((a["max_len"] - 1.0) / a["kv_stride"] + 1) if a["max_len"] else 0


def _local_mask_size(a: dict) -> tuple:
    ml, mk = a["max_len"], _max_len_kv(a)
    return (ml, ml, mk, mk)


def _local_mask_check(a: dict, shapes: Sequence[tuple]):
    e, qm, kv = shapes
    if len(e) < 2 or len(qm) != 3 or len(kv) != 3:
        return (f"local_mask at {{node}}: needs an energy (..., rows, keys) and two C x H x W maps, got "
                f"{', '.join(_shape_text(s) for s in shapes)}", "from: [energy, query map, key/value map]")
    if not a["max_len"]:
        return None  # check_run says why (E129)
    h, w = (1, 1) if e[-2] == 1 else qm[-2:]
    mk = _max_len_kv(a)
    if max(h, w) > a["max_len"] or max(kv[-2:]) > mk:
        return (f"local_mask at {{node}}: mmcv's local_constraint_map covers query maps up to {a['max_len']}x"
                f"{a['max_len']} and key maps up to {mk}x{mk}, but they are {h}x{w} and {kv[-2]}x{kv[-1]} here "
                f"(mmcv's view fails)", "use a smaller input size, or spatial_range -1")
    if e[-2] != h * w or e[-1] != kv[-2] * kv[-1]:
        return (f"local_mask at {{node}}: its {_shape_text(e)} energy does not pair {h}x{w} queries with "
                f"{kv[-2]}x{kv[-1]} keys", "the energy is (heads, H*W or 1, H_kv*W_kv)")
    return None


def _local_mask_run(a: dict, in_ch: int, in_shape: tuple, settings: Mapping):
    if not a["max_len"]:
        return ("E129", f"GeneralizedAttention {{node}} has spatial_range = {a['spatial_range']} and "
                        f"{a['channels']} input channels: mmcv builds its local_constraint_map only for 256 or 512 "
                        f"(max_len 84 or 42) and fails on others (max_len is undefined)",
                "use spatial_range -1, or put the plugin where it has 256 or 512 channels (after conv2 in layer3 "
                "or layer4 of ResNet-50)")
    return None


def _resize_check(a: dict, shapes: Sequence[tuple]):
    if len(shapes[0]) != 3 or len(shapes[1]) != 3:
        return (f"resize at {{node}}: needs two C x H x W maps, got {_shape_text(shapes[0])} and "
                f"{_shape_text(shapes[1])}", "the second input gives the size")
    return None


_GA_OPS = [
    OpDef("bias", "a learned tensor of shape dims (the state-dict key is the layer's name; prod(dims) values, "
                  "flat) added to its input, broadcasting; alone: true gives the tensor itself, repeated over the "
                  "input's batch; it starts uniform in +-1/sqrt(fan) (fan 0: zeros)",
          {"dims": REQUIRED, "alone": False, "fan": 0},
          TorchEmit(module=lambda a, i, o, s, inplace: f"parameter({_bias_size(a)}, 0, fan={a['fan']})",
                    call_attrs=_bias_call, needs=lambda s: ("parameter",)),
          label=lambda a, s, c: "bias" if a["alone"] else "+ bias", list_attrs=("dims",), int_min={"fan": 0},
          channels=lambda a, chs: a["dims"][0] if a["alone"] else chs[0],
          shape=_bias_shape, check_shape=_bias_check, params=lambda a, i, o, s: _bias_size(a), unique_name=True,
          tensors=lambda a, i, o, s: {"": (_bias_size(a),)}),
    OpDef("position_energy", "relative position energy of one axis (mmcv GeneralizedAttention): the sine embedding "
                             "(wave_length) of the coordinate differences (query index * q_stride - key index * "
                             "kv_stride) * magnitude, through a bias-free Linear(feat // 2, heads * dim), divided by "
                             "sqrt(2), times the query (heads x (H*W or 1) x dim); the x (width) term gives heads x H x "
                             "W x 1 x W_kv, vertical: true the y term, heads x H x W x H_kv x 1 (broadcast_add them)",
          {"vertical": False, "heads": REQUIRED, "dim": REQUIRED, "feat": REQUIRED, "magnitude": 1, "q_stride": 1,
           "kv_stride": 1, "wave_length": 1000, "transposed": False},
          TorchEmit(module=_position_torch, needs=lambda s: ("RelativePosition",)),
          label=lambda a, s, c: f"position {'y' if a['vertical'] else 'x'}", arity=(3, 3),
          int_min={"heads": 1, "dim": 1, "feat": 2, "q_stride": 1, "kv_stride": 1, "wave_length": 1},
          channels=lambda a, chs: a["heads"], shape=_position_shape, check_shape=_position_check,
          macs_shape=_position_macs, params=lambda a, i, o, s: a["heads"] * a["dim"] * (a["feat"] // 2),
          unique_name=True, global_pool=True,
          tensors=lambda a, i, o, s: {"weight": (a["heads"] * a["dim"], a["feat"] // 2)}),
    OpDef("local_mask", "mmcv GeneralizedAttention's spatial_range: a uint8 parameter local_constraint_map "
                        "(max_len x max_len x max_len_kv x max_len_kv, max_len_kv = int((max_len - 1) / kv_stride "
                        "+ 1); the state-dict key is the layer's name; no gradient) marks the keys farther than "
                        "spatial_range from each query; those energies become -inf. Inputs: the energy (heads x "
                        "(H*W or 1) x H_kv*W_kv), the query map and the key/value map",
          {"max_len": REQUIRED, "kv_stride": 1, "spatial_range": 0, "channels": 0},
          TorchEmit(module=lambda a, i, o, s, inplace: f"local_constraint_map({a['max_len']}, {a['kv_stride']}, "
                                                       f"{a['spatial_range']})",
                    call=lambda ref, xs, inplace: f"local_masked({', '.join([xs[0], str(ref)] + list(xs[1:]))})",
                    needs=lambda s: ("local_constraint_map", "local_masked")),
          label=lambda a, s, c: f"local mask {a['spatial_range']}", arity=(3, 3),
          int_min={"kv_stride": 1}, shape=lambda a, shapes: tuple(shapes[0]), check_shape=_local_mask_check,
          check_run=_local_mask_run, params=lambda a, i, o, s: math.prod(_local_mask_size(a)), unique_name=True,
          tensors=lambda a, i, o, s: {"": _local_mask_size(a)} if a["max_len"] else {}),
    OpDef("resize", "bilinear resize of the first input to the second input's H x W (align_corners false; "
                    "mmcv's upsampling after a strided query)", {},
          TorchEmit(call=lambda ref, xs, inplace: f"torch.nn.functional.interpolate({xs[0]}, size={xs[1]}.shape[-2:], "
                                                  f"mode='bilinear', align_corners=False)"),
          label=_plain("resize"), has_module=False, arity=(2, 2),
          spatial=lambda a, shapes: tuple(shapes[1]), shape=lambda a, shapes: (shapes[0][0],) + tuple(shapes[1][-2:]),
          check_shape=_resize_check),
]
OPS.update((op.name, op) for op in _GA_OPS)
