"""The analysis passes against what torch actually does: FLOPs counted by FlopCounterMode, live
activation bytes measured by a dispatch mode, requires_grad, shapes for other input sizes, and
receptive fields found by back-propagating from one output pixel."""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import ir
from graphres.passes.analysis import format_formula

from conftest import SPECS


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of activation storages (tensors of 3 or more dimensions) alive while ops
    run, and their peak. Norms' per-channel statistics (GN's mean and rstd) are not activations."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.current = self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        if key in self.live:
            self.live[key][1] += 1
        else:
            nbytes = t.untyped_storage().nbytes()
            self.live[key] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() >= 3 and t.untyped_storage().nbytes():
                self.track(t)
        return out


def measured_peak(model: nn.Module, x: torch.Tensor) -> int:
    mode = LiveBytes()
    with torch.no_grad():
        mode.track(x)
        with mode:
            model(x)
    return mode.peak


def counted_flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_flops_memory_and_trainable_equal_torch(path):
    compiled = graphres.compile_spec(path, ["input.size=[160, 128]"])
    g = compiled.graph
    model = graphres.build(compiled).eval()
    x = torch.randn(1, 3, 160, 128)
    assert counted_flops(model, x) == 2 * g.graph["macs"]
    assert measured_peak(model, x) == g.graph["peak_bytes"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == g.graph["trainable_params"]
    assert g.graph["frozen_params"] == g.graph["params"] - trainable


def test_resnet50_costs_match_the_reference_page():
    g = graphres.compile_spec(SPECS[0].parent / "resnet50.yaml").graph
    # reference page: 4,089,184,256 MACs with torchvision's fc, 2,048,000 of them in the fc
    assert g.graph["macs"] == 4_089_184_256 - 2_048_000
    assert g.graph["frozen_params"] == 9_536 + 215_808  # stem + layer1 (frozen_stages: 1)
    assert g.graph["trainable_params"] == 23_508_032 - 225_344


def test_peak_memory_counts_in_place_ops():
    """resnet18 at 224: the peak is in layer1.0 (hand count, float32): the image, the stem's
    maxpool output kept by the caller, conv1's output before bn1 frees it, bn1's output."""
    g = graphres.compile_spec(SPECS[0].parent / "resnet18.yaml").graph
    image = 3 * 224 * 224 * 4
    stem_conv = 64 * 112 * 112 * 4  # conv1 then bn1 (relu in place): two at once
    assert g.graph["peak_bytes"] == image + 2 * stem_conv
    assert g.nodes["relu"][ir.META]["bytes"] == 0 and g.nodes["relu"][ir.META]["in_place"]
    assert g.nodes["bn1"][ir.META]["bytes"] == stem_conv


# -- spatial size formula -----------------------------------------------------------------------

@pytest.mark.parametrize("name, rule", [("resnet50", "ceil(H/32)"), ("resnet18", "ceil(H/32)")])
def test_size_formula_holds_for_every_input_size(name, rule):
    g = graphres.compile_spec(SPECS[0].parent / f"{name}.yaml").graph
    f = g.graph["stages"][-1]["formula"]
    assert format_formula(f) == rule
    for h in range(17, 300, 7):
        sized = graphres.compile_spec(SPECS[0].parent / f"{name}.yaml", [f"input.size=[{h}, {h + 3}]"]).graph
        out = sized.graph["stages"][-1]["shape"]
        assert out[1:] == (-(-h // 32), -(-(h + 3) // 32))
        assert out[1] == (h + f[0]) // f[1]


def test_formula_text():
    assert format_formula((0, 1)) == "H"
    assert format_formula((31, 32)) == "ceil(H/32)"
    assert format_formula((0, 4), "W") == "floor(W/4)"
    assert format_formula((-3, 2)) == "floor((H-3)/2)"
    assert format_formula(None) == "-"


# -- receptive field, empirically ---------------------------------------------------------------

def _smooth(model: nn.Module) -> None:
    """Make every path carry signal: positive averaging conv weights, identity norms, max pools
    replaced by average pools of the same geometry (a max pool passes gradient to one pixel)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            nn.init.constant_(m.weight, 1.0 / fan_in)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MaxPool2d):
            k, s, p, c = m.kernel_size, m.stride, m.padding, m.ceil_mode
            m.forward = lambda x, k=k, s=s, p=p, c=c: F.avg_pool2d(x, k, s, p, c)


def gradient_region(compiled, size: int) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """For each feature output: the rows and columns (first, last) of input pixels whose gradient
    reaches the centre output pixel, and whether every pixel inside that box is reached."""
    model = graphres.build(compiled).double().eval()
    _smooth(model)
    x = torch.ones(1, compiled.spec.input_channels, size, size, dtype=torch.float64, requires_grad=True)
    regions = []
    for out in model(x):
        c = out.shape[-1] // 2
        (grad,) = torch.autograd.grad(out[0, :, c, c].sum(), x, retain_graph=True)
        hit = grad[0].abs().sum(0) > 0
        rows = hit.any(1).nonzero().flatten()
        cols = hit.any(0).nonzero().flatten()
        box = ((rows[0].item(), rows[-1].item()), (cols[0].item(), cols[-1].item()))
        full = bool(hit[box[0][0]:box[0][1] + 1, box[1][0]:box[1][1] + 1].all())
        regions.append((box, full, c))
    return regions


def _narrow(block: str, depths, **extra) -> dict:
    """A thin network with the structure of a ResNet (receptive fields do not depend on width)."""
    stages = [{"block": block, "blocks": n, "planes": 4 * 2 ** i, "stride": 1 if i == 0 else 2}
              for i, n in enumerate(depths)]
    spec = {"graphres": 1, "input": {"channels": 1, "size": [512, 512]}, "norm": {"type": "BN"},
            "stem": {"type": "conv7x7", "channels": 8}, "stages": stages, "out_indices": list(range(len(depths)))}
    for key, value in extra.items():
        if key == "stage_args":
            for st, args in zip(spec["stages"], value):
                st.update(args)
        elif key == "block_args":
            spec["block_args"] = value
        else:
            spec[key] = value
    return spec


RF_CASES = {
    "resnet18": (_narrow("basic", (2, 2, 2, 2)), [43, 99, 211, 435]),
    "resnet50": (_narrow("bottleneck", (3, 4, 6, 3)), [35, 91, 267, 427]),
    "resnet50-caffe": (_narrow("bottleneck", (3, 4, 6, 3), block_args={"style": "caffe"}), [35, 99, 291, 483]),
    "resnet50-v1d": (_narrow("bottleneck", (3, 4, 6, 3), stem={"type": "deep", "channels": 8},
                             block_args={"avg_down": True}), [39, 95, 271, 431]),
    "resnet50-d8": (_narrow("bottleneck", (3, 4, 6, 3), stage_args=[{}, {}, {"stride": 1, "dilation": 2},
                                                                   {"stride": 1, "dilation": 4}]),
                    [35, 91, 283, 475]),
}


@pytest.mark.parametrize("name", RF_CASES)
def test_receptive_field_equals_gradient_region(name):
    spec, expected = RF_CASES[name]
    compiled = graphres.compile_spec(spec)
    fields = [o["rf"] for o in compiled.graph.graph["outputs"]]
    assert [f["size"] for f in fields] == expected  # counted by hand, layer by layer
    size = spec["input"]["size"][0]
    for f, (box, filled, c) in zip(fields, gradient_region(compiled, size)):
        lo = f["center"] + c * f["jump"] - (f["size"] - 1) / 2
        hi = f["center"] + c * f["jump"] + (f["size"] - 1) / 2
        assert 0 <= lo and hi < size, "the test input must hold the whole field"
        assert box == ((lo, hi), (lo, hi))
        assert filled


def test_squeeze_excitation_makes_the_field_global():
    compiled = graphres.compile_spec(SPECS[0].parent / "se_resnet18.yaml", ["input.size=[96, 96]"])
    g = compiled.graph
    for o in g.graph["outputs"]:
        assert o["rf"]["size"] is None
    # without the SE branch, the convolutions see as much as resnet18's
    assert [o["rf"]["local_size"] for o in g.graph["outputs"]] == [99, 211, 435]
    for box, filled, _ in gradient_region(compiled, 96):
        assert box == ((0, 95), (0, 95)) and filled
