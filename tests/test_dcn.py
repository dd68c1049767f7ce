"""Deformable convolution (mmcv's DCN and DCNv2): the op, the pure-torch kernel against a direct
loop-based reference, mmdetection's names, shapes, init and figures, the receptive field shown as
a lower bound, the drawing, and every located error.

The comparisons with torchvision.ops.deform_conv2d and with mmdetection's real ResNet run outside
CI (tools/parity/dcn.py, results in benchmarks/results/mmdet_dcn_parity.txt): CI's torch has no
torchvision. tests/data/mmdet_r50_dcn*_keys.txt were written once from mmdetection 3.3's ResNet
by tools/parity/dcn_keys.py.
"""
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import ir
from graphres.backends.codegen import generate
from graphres.backends.graphviz import to_dot
from graphres.backends.info import format_info, info_dict
from graphres.backends.runtime import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2dPack
from graphres.diagnostics import SpecError
from graphres.ops import OPS

from conftest import ROOT

DCN_STAGES = "dcn: {type: DCN, deform_groups: 1, fallback_on_stride: false}\n" \
             "stage_with_dcn: [false, true, true, true]\n"


@pytest.fixture(autouse=True)
def pure_torch():
    """CI has no torchvision; make the pure-torch path explicit wherever it is installed."""
    DeformConv2d.use_torchvision = False
    yield
    DeformConv2d.use_torchvision = True


def shorthand(tmp_path, body: str, size: int | None = None) -> str:
    head = "graphres: 1\n" + (f"input: {{size: {size}}}\n" if size else "")
    path = tmp_path / "s.yaml"
    path.write_text(head + "backbone:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ") + "\n")
    return str(path)


def errors(path: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    return [d.headline().split(": ", 1)[1] for d in e.value.diagnostics]


# -- the kernel --------------------------------------------------------------------------------------

def _bilinear(img, y, x):
    """torchvision's (and mmcv's) sampling rule: zero outside (-1, H) x (-1, W), missing corners zero."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.0
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx), (y0 + 1, x0, ly * (1 - lx)),
                       (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            total += wt * float(img[yy, xx])
    return total


def loop_reference(x, offset, weight, bias, stride, padding, dilation, groups, dg, mask=None):
    """Deformable convolution written out pixel by pixel, tap by tap (float64, tiny sizes)."""
    n, c, h, w = x.shape
    o, cpg, kh, kw = weight.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, o, ho, wo, dtype=torch.float64)
    for b in range(n):
        for oc in range(o):
            g = oc // (o // groups)
            for i in range(ho):
                for j in range(wo):
                    acc = 0.0 if bias is None else float(bias[oc])
                    for ci in range(cpg):
                        cin = g * cpg + ci
                        d = cin // (c // dg)
                        for ky in range(kh):
                            for kx in range(kw):
                                k = ky * kw + kx
                                dy = float(offset[b, d * 2 * kh * kw + 2 * k, i, j])
                                dx = float(offset[b, d * 2 * kh * kw + 2 * k + 1, i, j])
                                y = i * stride - padding + ky * dilation + dy
                                xx = j * stride - padding + kx * dilation + dx
                                v = _bilinear(x[b, cin], y, xx)
                                if mask is not None:
                                    v *= float(mask[b, d * kh * kw + k, i, j])
                                acc += float(weight[oc, ci, ky, kx]) * v
                    out[b, oc, i, j] = acc
    return out


CASES = [  # n, c, h, w, out, k, stride, padding, dilation, groups, deform_groups, modulated
    (1, 4, 5, 6, 4, 3, 1, 1, 1, 1, 1, False),
    (2, 4, 6, 5, 2, 3, 2, 1, 1, 2, 2, True),
    (1, 6, 5, 5, 3, 3, 1, 2, 2, 3, 3, True),
    (1, 2, 2, 2, 2, 3, 1, 1, 1, 1, 1, False),  # a map smaller than the kernel (mmcv refuses it)
    (1, 4, 4, 4, 2, 1, 1, 0, 1, 1, 4, True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_pure_torch_matches_the_loop_reference(case):
    n, c, h, w, o, k, s, p, d, groups, dg, modulated = case
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    offset = 2.5 * torch.randn(n, 2 * dg * k * k, ho, wo, generator=g, dtype=torch.float64)  # reaches outside
    mask = torch.rand(n, dg * k * k, ho, wo, generator=g, dtype=torch.float64) if modulated else None
    weight = torch.randn(o, c // groups, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(o, generator=g, dtype=torch.float64) if modulated else None
    got = DeformConv2d.deform_conv2d_torch(x, offset, weight, bias, s, p, d, groups, dg, mask)
    ref = loop_reference(x, offset, weight, bias, s, p, d, groups, dg, mask)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-12


def test_pure_torch_gradients_are_the_analytic_ones():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    offset = (0.7 * torch.randn(1, 2 * 2 * 9, 5, 5, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(1, 2 * 9, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda *t: DeformConv2d.deform_conv2d_torch(t[0], t[1], t[3], None, 1, 1, 1, 1, 2, t[2])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight))


def test_zero_offsets_are_an_ordinary_conv():
    torch.manual_seed(0)
    dcn = DeformConv2dPack(8, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, dcn.weight, None, 2, 2, 2, 2)
    assert dcn.conv_offset.weight.abs().max().item() == 0.0
    assert (dcn(x) - ref).abs().max().item() < 1e-12
    v2 = ModulatedDeformConv2dPack(8, 6, 3, padding=1, bias=False).double()
    ref = torch.nn.functional.conv2d(x, v2.weight, None, 1, 1) * 0.5  # zero mask logits: sigmoid 0.5
    assert (v2(x) - ref).abs().max().item() < 1e-12


def test_runtime_classes_check_their_arguments():
    with pytest.raises(ValueError, match=r"^DeformConv2dPack \(DCN v1\) has no bias: mmcv's DeformConv2d refuses "
                                         r"bias=True$"):
        DeformConv2dPack(4, 4, 3, bias=True)
    with pytest.raises(ValueError, match=r"^deform_groups = 3 must divide in_channels = 4$"):
        ModulatedDeformConv2dPack(4, 4, 3, deform_groups=3)


# -- mmdetection's model -----------------------------------------------------------------------------

def _keys_file(name: str) -> list[tuple[str, tuple]]:
    lines = (ROOT / "tests" / "data" / name).read_text().splitlines()[1:]
    out = []
    for line in lines:
        key, _, shape = line.partition(" ")
        out.append((key, tuple(int(s) for s in shape.split("x")) if shape else ()))
    return out


@pytest.mark.parametrize("dcn,keys", [("{type: DCN, deform_groups: 1, fallback_on_stride: false}",
                                       "mmdet_r50_dcn_keys.txt"),
                                      ("{type: DCNv2, deform_groups: 4, fallback_on_stride: false}",
                                       "mmdet_r50_dcnv2_dg4_keys.txt")])
def test_keys_order_and_shapes_are_mmdetections(tmp_path, dcn, keys):
    path = shorthand(tmp_path, f"type: ResNet\ndepth: 50\ndcn: {dcn}\nstage_with_dcn: [false, true, true, true]")
    model = graphres.build(path)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _keys_file(keys)


def test_an_mmdetection_state_dict_loads_strictly(tmp_path):
    """A checkpoint with exactly mmdetection's keys and shapes (tests/data) loads strictly, and the
    loaded offsets take effect."""
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES, size=64)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) * 0.05 if s else torch.tensor(7)) for k, s in
             _keys_file("mmdet_r50_dcn_keys.txt")}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    ckpt = tmp_path / "mm.pth"
    torch.save({"state_dict": state, "meta": {}}, ckpt)
    model = graphres.build(path, checkpoint=str(ckpt)).eval()
    assert torch.equal(model.layer3[2].conv2.conv_offset.weight, state["layer3.2.conv2.conv_offset.weight"])
    x = torch.randn(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        deformed = model(x)[3]
        model.layer4[1].conv2.conv_offset.weight.zero_()
        model.layer4[1].conv2.conv_offset.bias.zero_()
        plain = model(x)[3]
    assert (deformed - plain).abs().max().item() > 1e-5


def test_figures_are_exact(tmp_path):
    """ResNet-50 + DCN in stages 2-4: mmdetection's 24,088,874 parameters; MACs = conv MACs plus the
    offset convs' (the bilinear sampling is not counted), which is what FlopCounterMode counts on
    the built module (2 FLOPs per MAC)."""
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES)
    g = graphres.compile_spec(path).graph
    assert g.graph[ir.G_PARAMS] == 24_088_874
    assert g.graph[ir.G_MACS] == 4_213_128_192
    # each offset conv: 18 outputs x 3x3 taps x its input channels, at conv2's output size
    offset_macs = 18 * 9 * (4 * 28 * 28 * 128 + 6 * 14 * 14 * 256 + 3 * 7 * 7 * 512)
    assert g.graph[ir.G_MACS] == 4_089_184_256 - 2_048_000 + offset_macs  # ResNet-50 with fc, minus fc
    model = graphres.build(path)
    small = graphres.compile_spec(path, input_size=(64, 64)).graph
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 64, 64))
    assert counter.get_total_flops() == 2 * small.graph[ir.G_MACS]
    v2 = graphres.compile_spec(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES.replace(
        "type: DCN,", "type: DCNv2,"))).graph
    assert v2.graph[ir.G_PARAMS] == 24_379_295  # mmdetection's ResNet-50 + DCNv2, counted in tools/parity


def test_op_rules():
    dcn = OPS["deform_conv"]
    a = {"out": 64, "kernel": 3, "stride": 1, "padding": None, "dilation": 1, "groups": 1, "deform_groups": 2,
         "modulated": True, "bias": False}
    dcn.normalize(a)
    assert a["padding"] == 1
    assert dcn.params(a, 32, 64, {}) == 64 * 32 * 9 + 54 * 32 * 9 + 54
    assert dcn.macs(a, 32, 64, (10, 10)) == (64 + 54) * 100 * 32 * 9
    assert dcn.tensors(a, 32, 64, {}) == {"weight": (64, 32, 3, 3), "conv_offset.weight": (54, 32, 3, 3),
                                          "conv_offset.bias": (54,)}
    assert dcn.label(a, {}, True) == "dcnv2 3x3 dg2" and dcn.label(a, {}, False) == "DCNv2 3x3 dg2"
    assert dcn.check_channels(a, [("x", 33)], {})[0] == \
        "deform_groups = 2 must divide the deformable conv's 33 input channels"


# -- initialisation ----------------------------------------------------------------------------------

def test_init_is_mmdetections(tmp_path):
    """After init_weights(): DCN's weight keeps mmcv's Kaiming-uniform (the backbone's Kaiming init
    matches only nn.Conv2d), its conv_offset takes the backbone's Kaiming-normal (fan_out); DCNv2's
    weight is uniform in +-1/sqrt(fan_in) and its conv_offset zero again (mmcv's init_weights runs
    after the backbone's)."""
    torch.manual_seed(0)
    v1 = graphres.build(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES)).layer3[1].conv2
    bound = math.sqrt(6 / (256 * 9))
    assert v1.weight.abs().max().item() <= bound
    assert abs(v1.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.01
    assert abs(v1.conv_offset.weight.std().item() / math.sqrt(2 / (18 * 9)) - 1) < 0.02
    assert v1.conv_offset.bias.abs().max().item() == 0.0
    torch.manual_seed(0)
    v2 = graphres.build(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES.replace(
        "type: DCN,", "type: DCNv2,"))).layer3[1].conv2
    assert type(v2).__name__ == "ModulatedDeformConv2dPack" and v2.bias is None
    assert v2.weight.abs().max().item() <= 1 / math.sqrt(256 * 9)
    assert abs(v2.weight.std().item() / (1 / math.sqrt(3 * 256 * 9)) - 1) < 0.01
    assert v2.conv_offset.weight.abs().max().item() == 0.0 and v2.conv_offset.bias.abs().max().item() == 0.0


# -- variants ----------------------------------------------------------------------------------------

def test_fallback_on_stride_keeps_the_strided_conv2_plain(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\ndcn: {type: DCN, fallback_on_stride: true}\n"
                               "stage_with_dcn: [false, true, true, true]")
    compiled = graphres.compile_spec(path)
    assert [d.headline() for d in compiled.warnings] == [
        f"{path}:5:40: warning[W110]: fallback_on_stride: graphres keeps the plain 3x3 conv2 where it strides (the "
        "first block of each marked stage with stride 2, pytorch style); mmdetection instead pops the key from "
        "the dcn dict it shares, so only the very first marked block falls back (and in a ResNeXt none does)"]
    ops = {n: d[ir.OP] for n, d in compiled.graph.nodes(data=True)}
    assert [ops[f"layer{s}.{b}.conv2"] for s in (2, 3, 4) for b in (0, 1)] == ["conv", "deform_conv"] * 3


def test_mmseg_contract_dilation_multi_grid_with_dcn(tmp_path):
    path = shorthand(tmp_path, "type: mmseg.ResNetV1c\ndepth: 50\nstrides: [1, 2, 1, 1]\ndilations: [1, 1, 2, 4]\n"
                               "contract_dilation: true\nmulti_grid: [1, 2, 4]\n" + DCN_STAGES,
                     size=64)
    g = graphres.compile_spec(path).graph
    conv2 = [g.nodes[f"layer{s}.{b}.conv2"][ir.ATTRS] for s, b in ((3, 0), (3, 1), (4, 0), (4, 1), (4, 2))]
    assert [(a["dilation"], a["padding"]) for a in conv2] == [(1, 1), (2, 2), (1, 1), (2, 2), (4, 4)]
    model = graphres.build(path)
    assert model.layer4[2].conv2.conv_offset.dilation == (4, 4) and model.layer4[2].conv2.dilation == (4, 4)
    assert [tuple(t.shape) for t in model(torch.randn(1, 3, 64, 64))] == [
        (1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 8, 8), (1, 2048, 8, 8)]


def test_resnext_dcn_groups_and_per_block_dcn_list(tmp_path):
    path = shorthand(tmp_path, "type: ResNeXt\ndepth: 50\ngroups: 32\nbase_width: 4\n" + DCN_STAGES,
                     size=64)
    model = graphres.build(path)
    assert (model.layer2[0].conv2.groups, tuple(model.layer2[0].conv2.weight.shape)) == (32, (256, 8, 3, 3))
    explicit = tmp_path / "e.yaml"
    explicit.write_text("graphres: 1\ninput: {size: 64}\nstages:\n"
                        "  - {block: bottleneck, blocks: 2, planes: 16, dcn: [DCN, none]}\n"
                        "  - {block: bottleneck, blocks: 2, planes: 32, stride: 2, dcn: DCNv2, deform_groups: 2}\n")
    g = graphres.compile_spec(str(explicit)).graph
    assert [g.nodes[n][ir.OP] for n in ("layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2")] == \
        ["deform_conv", "conv", "deform_conv"]
    assert g.nodes["layer2.0.conv2"][ir.ATTRS]["modulated"] is True


def test_train_backward_with_cp_and_frozen(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\nfrozen_stages: 2\nwith_cp: true\n" +
                     DCN_STAGES, size=32)
    model = graphres.build(path).train()
    assert not any(p.requires_grad for p in model.layer2.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    sum(t.sum() for t in model(x)).backward()
    assert model.layer3[0].conv2.conv_offset.weight.grad is not None
    assert model.layer2[0].conv2.weight.grad is None


def test_standalone_source_runs_without_graphres(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES.replace("type: DCN,", "type: DCNv2,"),
                     size=64)
    source = generate(graphres.compile_spec(path).graph, standalone=True).source
    assert "class ModulatedDeformConv2dPack(DeformConv2d):" in source and "graphres" not in source.split(
        '"""', 2)[2].split("class ")[0]
    script = tmp_path / "net.py"
    script.write_text(source)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]"


# -- receptive field and drawing ---------------------------------------------------------------------

def test_receptive_field_is_shown_as_a_lower_bound(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES)
    g = graphres.compile_spec(path).graph
    assert [st["rf"]["deformable"] for st in g.graph["stages"]] == [False, True, True, True]
    assert not g.nodes["layer2.0.conv1"][ir.META]["rf"]["deformable"]
    assert g.nodes["layer2.0.conv2"][ir.META]["rf"]["deformable"]
    assert g.nodes["layer2.0.downsample.1"][ir.META]["rf"]["deformable"] is False
    assert ir.format_rf(g.graph["stages"][3]["rf"]) == ">= 427, deformable"
    assert ir.format_rf(g.graph["stages"][0]["rf"]) == "35"
    text = format_info(g)
    assert "layer4   3 bottleneck x3 2048x7x7       32   1 >=427" in text
    assert "RF >=N: deformable; after a deformable conv the field depends on its offsets,\nand N, its field at " \
        "zero offsets, is a lower bound" in text
    rows = info_dict(g)["rows"]
    assert [r["receptive_field"].get("deformable", False) for r in rows] == [False, False, False, True, True, True]
    assert "receptive field >= 427, deformable" in to_dot(g, level="stage")


def test_render_marks_deformable_convs(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\nnum_stages: 2\nout_indices: [0, 1]\nstrides: [1, 2]\n"
                               "dilations: [1, 1]\ndcn: {type: DCN}\nstage_with_dcn: [false, true]")
    g = graphres.compile_spec(path).graph
    dot = to_dot(g, level="layer", expand=["layer2"])
    marked = [line.strip().split(" ")[0] for line in dot.splitlines() if "peripheries=2" in line]
    assert len(marked) == 4 and all("conv2" in m for m in marked)
    assert "conv2: DCN 3x3" in dot and "deformable conv (double border)" in dot
    assert "deformable conv2: DCN 3x3 s2" in to_dot(g, level="block")
    block = to_dot(g, level="block")
    assert sum("peripheries=2" in line for line in block.splitlines()) == 2  # layer2.0 and layer2.1-3
    plain = to_dot(graphres.compile_spec(str(ROOT / "specs" / "resnet50.yaml")).graph, level="layer")
    assert "peripheries" not in plain and "deformable" not in plain


# -- errors ------------------------------------------------------------------------------------------

def test_shorthand_errors_are_located(tmp_path):
    path = shorthand(tmp_path, "type: ResNet\ndepth: 50\ndcn: {type: DCNv3, deform_groups: 0, foo: 1}\n"
                               "stage_with_dcn: [false, true, true]")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{path}:5:40: error[E010]: unknown key 'foo' in dcn",
        f"{path}:5:15: error[E110]: dcn type 'DCNv3' is not one of 'DCN' (deformable conv v1), 'DCNv2' (modulated)",
        f"{path}:5:37: error[E014]: dcn.deform_groups = 0 must be >= 1",
        f"{path}:6:19: error[E114]: stage_with_dcn has 3 values but num_stages = 4"]
    assert e.value.diagnostics[1].hint == "did you mean 'DCNv2'?"


@pytest.mark.parametrize("body,expected", [
    ("type: ResNet\ndepth: 34\ndcn: {type: DCN}\nstage_with_dcn: [false, false, true, true]",
     ["6:34: error[E111]: dcn on the basic blocks of a depth-34 ResNet: mmdetection's BasicBlock has no deformable "
      "conv (it asserts 'Not implemented yet')"]),
    ("type: ResNet\ndepth: 50\nconv_cfg: {type: ConvWS}\ndcn: {type: DCN, deform_groups: 3}\n"
     "stage_with_dcn: [false, true, true, true]",
     ["6:8: error[E112]: dcn and conv_cfg are both set: mmdetection builds the deformable conv2 only when conv_cfg "
      "is None ('conv_cfg must be None for DCN')",
      "6:35: error[E115]: dcn.deform_groups = 3 does not divide the 128 channels of layer2's deformable conv2"]),
    ("type: ResNet\ndepth: 50\ndcn: DCN\nstage_with_dcn: [false, true, true, true]",
     ["5:8: error[E011]: dcn must be a mapping such as {type: DCN, deform_groups: 1, fallback_on_stride: false}, "
      "found 'DCN' (a string)"]),
    ("type: ResNet\ndepth: 50\ndcn: {deform_groups: 2}\nstage_with_dcn: [false, true, true, true]",
     ["5:8: error[E012]: dcn needs the key 'type' (DCN or DCNv2)"]),
    ("type: ResNet\ndepth: 50\ndcn: {type: DCN}\nstage_with_dcn: [0, 1, 1, 1]",
     ["6:19: error[E011]: stage_with_dcn must be a list of booleans, one per stage, found a list"]),
    ("type: ResNet\ndepth: 50\nstage_with_dcn: [false, true, true, true]",
     ["5:19: error[E017]: stage_with_dcn enables stages but dcn is null"]),
])
def test_shorthand_dcn_errors(tmp_path, body, expected):
    path = shorthand(tmp_path, body)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.headline() for d in e.value.diagnostics] == [f"{path}:{x}" for x in expected]


def test_dcn_off_everywhere_is_a_plain_resnet(tmp_path):
    plain = graphres.compile_spec(shorthand(tmp_path, "type: ResNet\ndepth: 18\ndcn: {type: DCN}\n"
                                                      "stage_with_dcn: [false, false, false, false]")).graph
    assert plain.graph[ir.G_PARAMS] == 11_176_512


def test_explicit_spec_errors(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(textwrap.dedent("""\
        graphres: 1
        blocks:
          mine:
            out_channels: 12
            layers:
              - {op: deform_conv, out: 12, kernel: 3, deform_groups: 5}
        stages:
          - {block: mine, blocks: 1}
          - {block: basic, blocks: 1, planes: 64, dcn: DCN}
          - {block: bottleneck, blocks: 1, planes: 64, dcn: dcn}
        """))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(str(path))
    assert [d.headline() for d in e.value.diagnostics if d.is_error] == [
        f"{path}:9:43: error[E010]: block 'basic' has no parameter 'dcn'",
        f"{path}:10:53: error[E013]: stages[2].dcn = 'dcn' is not one of 'none', 'DCN', 'DCNv2'"]
    path.write_text(path.read_text().replace("  - {block: basic, blocks: 1, planes: 64, dcn: DCN}\n", "")
                    .replace("dcn: dcn}", "dcn: DCN}"))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(str(path))
    assert [d.headline() for d in e.value.diagnostics if d.is_error] == [
        f"{path}:6:62: error[E030]: deform_groups = 5 must divide the deformable conv's 64 input channels"]


def test_dcn_v1_bias_and_small_maps(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(textwrap.dedent("""\
        graphres: 1
        input: {size: 8}
        blocks:
          mine:
            out_channels: 8
            layers:
              - {op: deform_conv, out: 8, kernel: 3, bias: true}
        stages:
          - {block: mine, blocks: 1}
        """))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(str(path))
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{path}:7:9: error[E113]: deformable conv layer1.0.deform_conv (DCN v1) has bias: true, which mmcv's "
        "DeformConv2d refuses"]
    compiled = graphres.compile_spec(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES, size=48))
    assert [d.headline().split(": ", 1)[1] for d in compiled.warnings] == [
        "warning[W111]: deformable conv layer4.1.conv2 reads a 2x2 map, smaller than its 3x3 kernel: mmcv's kernels "
        "refuse it ('input image is smaller than kernel'); graphres runs it as torchvision does (taps outside the "
        "map read zero)"]
    model = graphres.build(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES, size=48))
    assert tuple(model(torch.randn(1, 3, 48, 48))[3].shape) == (1, 2048, 2, 2)


def test_language_server_and_diff_show_the_bound(tmp_path):
    from graphres.backends.diff import diff_dict, format_diff
    from graphres.lsp.document import row_text, stage_rows
    dcn = graphres.compile_spec(shorthand(tmp_path, "type: ResNet\ndepth: 50\n" + DCN_STAGES))
    rows = stage_rows(dcn)
    assert [r["rf"] for r in rows] == [11, 35, ">= 91, deformable", ">= 267, deformable", ">= 427, deformable"]
    assert row_text(rows[4]) == ("layer4 bottleneck x3: 2048x7x7 /32 d1 RF >= 427, deformable, 15.21M params, "
                                 "821.43M MACs")
    plain = graphres.compile_spec(str(ROOT / "specs" / "resnet50.yaml"))
    text = format_diff(diff_dict(plain.graph, dcn.graph))
    assert ">= 427, deformable" in text
