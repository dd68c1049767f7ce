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
    # the inference build (passes/fold.py): a norm-like op that folds into a fold_target op before
    # it, for these settings; a fold_target gains a bias and absorbs it
    folds: Callable[[Mapping], bool] = lambda settings: False
    fold_target: bool = False


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


def _conv_window(a: dict) -> Window:
    return Window(a["kernel"], a["stride"], a["padding"], a["dilation"])


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
    return Window(a["kernel"], a["stride"], a["padding"], 1, a["ceil_mode"])


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


OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("conv", "2-d convolution (bias off by default, padding defaults to dilation * (kernel - 1) // 2)",
              {"out": REQUIRED, "kernel": REQUIRED, "stride": 1, "padding": None, "dilation": 1, "groups": 1,
               "bias": False},
              TorchEmit(module=_conv_torch, needs=lambda s: ("ConvWS2d",) if _conv_ws(s) else (),
                        defaults={"stride": 1, "padding": 0, "dilation": 1, "groups": 1}),
              label=lambda a, s, compact: _window_label("conv", a, compact),
              int_min={"out": 1, "kernel": 1, "stride": 1, "dilation": 1, "groups": 1, "padding": 0},
              normalize=_conv_normalize, channels=lambda a, chs: a["out"], check_channels=_conv_check_channels,
              spatial=lambda a, shapes: _window_hw(_conv_window(a), shapes[0], pool=False),
              params=_conv_params, macs=_conv_macs, window=_conv_window, overwritable=True,
              scratch=_conv_scratch, unique_name=True, label_channels=True, check_run=_conv_check_run, fold_target=True,
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
              in_place=lambda a: ACT_MODULES[a["type"]][1]),
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
              symbol="+"),
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
    ]
}
