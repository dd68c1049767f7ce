"""ResNeSt-50d (specs/resnest50d.yaml): split attention written as YAML blocks over the tensor ops.

timm cannot run in CI (its torch is not CI's). tests/data/timm_resnest50d_keys.txt was written
once from timm 1.0.31's resnest50d by tools/parity/timm_resnest.py --write-keys; the outputs were
compared there (benchmarks/results/timm_resnest_parity.txt: identical, also for five variants).
Here the spec's keys, shapes and order are checked against that list, the figures against hand
counts and FlopCounterMode, and the split attention against a re-implementation written from the
paper's definition (cardinal groups of radix splits, a softmax across the splits of each group).
"""
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import ir

from conftest import ROOT, run_cli

SPEC = "resnest50d"


def timm_keys() -> list[tuple[str, tuple]]:
    lines = (ROOT / "tests" / "data" / "timm_resnest50d_keys.txt").read_text().splitlines()[1:]
    out = []
    for line in lines:
        key, _, shape = line.partition(" ")
        out.append((key, tuple(int(s) for s in shape.split("x")) if shape else ()))
    return out


def make_divisible(v: float, divisor: int = 8, min_value: int = 32, round_limit: float = 0.9) -> int:
    """timm's rule for the attention width (timm.layers.make_divisible), as documented."""
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norms (bn3 is zero-initialised) so that every branch shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def variant(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"graphres: 1\n_base_: resnest50d\nname: {name}\n" + textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return graphres.build(SPEC)


# -- keys, loading, figures ------------------------------------------------------------------------

def test_attention_conv_biases_keep_torchs_default_draw_as_timm(model):
    """timm's ResNet init re-draws conv weights (Kaiming, fan_out) and leaves biases as torch's
    layers drew them, uniform in +-1/sqrt(fan_in); graphres' fc1/fc2 (init: torch_bias) too, while
    their weights keep the network's Kaiming draw. Other convs have no bias."""
    import math
    for path in ("layer1.0.conv2.fc1", "layer2.0.conv2.fc2", "layer4.2.conv2.fc2"):
        conv = model.get_submodule(path)
        fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
        bound = 1 / math.sqrt(fan_in)
        b = conv.bias.detach()
        assert float(b.abs().max()) <= bound and float(b.abs().min()) > 0
        if b.numel() >= 256:  # enough values to tell a uniform draw by its spread
            assert 0.9 < float(b.std()) / (bound / math.sqrt(3)) < 1.1
        fan_out = conv.weight.shape[0] * conv.weight.shape[2] * conv.weight.shape[3]  # torch's fan_out
        assert 0.9 < float(conv.weight.detach().std()) / math.sqrt(2 / fan_out) < 1.1  # Kaiming, fan_out, relu


def test_keys_shapes_and_order_are_timms(model):
    keys = timm_keys()
    assert len(keys) == 476
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == keys
    assert [k for k, _ in keys[:7]] == ["conv1.0.weight", "conv1.1.weight", "conv1.1.bias", "conv1.1.running_mean",
                                        "conv1.1.running_var", "conv1.1.num_batches_tracked", "conv1.3.weight"]
    assert [k for k, _ in keys if k.startswith("layer2.0.conv2.") and k.endswith("weight")] == [
        "layer2.0.conv2.conv.weight", "layer2.0.conv2.bn0.weight", "layer2.0.conv2.fc1.weight",
        "layer2.0.conv2.bn1.weight", "layer2.0.conv2.fc2.weight"]


def test_a_timm_state_dict_loads_strictly(tmp_path):
    # timm's deep-stem names (conv1.0, bn1) are this spec's own: nothing is renamed
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(3)) for k, s in timm_keys()}
    state = {k: v.abs() if k.endswith("running_var") else v for k, v in state.items()}
    path = tmp_path / "resnest50d.pth"
    torch.save(state, path)
    loaded = graphres.build(SPEC, checkpoint=str(path))
    assert torch.equal(loaded.conv1[6].weight, state["conv1.6.weight"])
    assert torch.equal(loaded.layer3[4].conv2.fc2.bias, state["layer3.4.conv2.fc2.bias"])
    assert torch.equal(loaded.fc.weight, state["fc.weight"])
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())


def test_parameters_and_macs_are_exact():
    g = graphres.compile_spec(SPEC).graph
    # the deep stem: 3x3 convs 3->32 (stride 2), 32->32, 32->64 at 112x112, three norms
    params = 9 * (3 * 32 + 32 * 32 + 32 * 64) + 2 * (32 + 32 + 64)
    macs = 112 * 112 * 9 * (3 * 32 + 32 * 32 + 32 * 64)
    params += 2048 * 1000 + 1000
    macs += 2048 * 1000
    inch, size = 64, 56
    for p, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        w = p  # group width: planes * 64 // 64, cardinality 1
        a = make_divisible(w * 2 * 0.25)  # the attention width
        out = size // stride
        for b in range(n):
            cin = inch if b == 0 else 4 * p
            hw_in = (size if b == 0 else out) ** 2  # conv1 and conv2 run before the avd pool
            hw = out * out
            params += cin * w + 2 * w                                   # conv1, bn1
            params += 2 * w * (w // 2) * 9 + 2 * 2 * w                  # conv2.conv (groups 2), bn0
            params += w * a + a + 2 * a + a * 2 * w + 2 * w             # fc1, bn1, fc2 (biased)
            params += w * 4 * p + 2 * 4 * p                             # conv3, bn3
            macs += w * cin * hw_in + 2 * w * (w // 2) * 9 * hw_in + w * a + a * 2 * w + 4 * p * w * hw
            if b == 0:
                params += cin * 4 * p + 2 * 4 * p                       # downsample.1, .2
                macs += 4 * p * cin * hw
        inch, size = 4 * p, out
    assert (g.graph[ir.G_PARAMS], g.graph[ir.G_MACS]) == (params, macs) == (27_483_240, 5_371_160_576)


def test_flop_counter_counts_twice_the_macs(model):
    small = graphres.compile_spec(SPEC, input_size=(96, 96)).graph
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, 96, 96))
    assert counter.get_total_flops() == 2 * small.graph[ir.G_MACS] == 2 * 989_751_296


def test_attention_width_is_timms_make_divisible(tmp_path):
    # in * radix * rd_ratio = 35.75: rounded to 32, below 0.9 x 35.75, so one divisor more (40)
    cases = [(143, 1, 0.25, 8, 0), (72, 2, 0.25, 8, 0), (512, 2, 0.25, 8, 0), (200, 4, 0.125, 16, 0),
             (96, 3, 0.5, 6, 0), (64, 2, 0.25, 8, 24)]
    for k, (cin, radix, ratio, divisor, rd) in enumerate(cases):
        path = variant(tmp_path, f"sa{k}", f"""\
            stem: {{type: conv7x7, channels: {cin}}}
            stages: [{{block: split_attn, blocks: 1, out: {cin}, radix: {radix}, rd_ratio: {ratio},
                      rd_divisor: {divisor}, rd_channels: {rd}}}]
            """)
        g = graphres.compile_spec(str(path)).graph
        want = rd * radix if rd else make_divisible(cin * radix * ratio, divisor)
        assert g.nodes["layer1.0.fc1"][ir.OUT_CH] == want, (cin, radix, ratio, divisor, rd)
    assert make_divisible(143 * 0.25) == 40 and make_divisible(96 * 3 * 0.5, 6) == 144


# -- numerics ---------------------------------------------------------------------------------------

def split_attention(sa, x: torch.Tensor, radix: int, cardinality: int) -> torch.Tensor:
    """Split attention as the paper defines it, on the block's own modules (conv, bn0, fc1, bn1, fc2).

    The grouped conv gives ``radix`` splits of C channels each (split r: channels r*C..(r+1)*C).
    Their sum, averaged over space, is squeezed by fc1 and expanded by fc2 to one logit per
    (cardinal group k, split r, channel c of the group), stored group by group: logit index
    (k * radix + r) * (C / K) + c. Within each cardinal group the weights of a channel are a
    softmax across the radix splits (a sigmoid when radix is 1); the output is the weighted sum
    of the splits."""
    u = F.relu(sa.bn0(sa.conv(x)))
    c = u.shape[1] // radix
    splits = [u[:, r * c:(r + 1) * c] for r in range(radix)]
    total = splits[0]
    for s in splits[1:]:
        total = total + s
    z = F.relu(sa.bn1(sa.fc1(total.mean(dim=(2, 3), keepdim=True))))
    logits = sa.fc2(z)[:, :, 0, 0]
    per = c // cardinality
    weights = []  # weights[r]: (B, C), channel order of the splits
    for r in range(radix):
        weights.append(torch.cat([logits[:, (k * radix + r) * per:(k * radix + r + 1) * per]
                                  for k in range(cardinality)], dim=1))
    if radix == 1:
        weights = [torch.sigmoid(weights[0])]
    else:
        stacked = torch.stack(weights, dim=0)  # (radix, B, C)
        e = torch.exp(stacked - stacked.max(dim=0, keepdim=True).values)
        weights = list(e / e.sum(dim=0, keepdim=True))
    out = weights[0][:, :, None, None] * splits[0]
    for r in range(1, radix):
        out = out + weights[r][:, :, None, None] * splits[r]
    return out


def bottleneck(block, x, radix, cardinality, avd_first, strided):
    """timm's ResNestBottleneck semantics: the avd pool takes a strided block's stride."""
    out = F.relu(block.bn1(block.conv1(x)))
    if strided and avd_first:
        out = block.avd_first(out)
    out = split_attention(block.conv2, out, radix, cardinality)
    if strided and not avd_first:
        out = block.avd_last(out)
    out = block.bn3(block.conv3(out))
    shortcut = block.downsample(x) if block.downsample is not None else x
    return F.relu(out + shortcut)


def whole_model(model, x, radix=2, cardinality=1, avd_first=False):
    y = F.max_pool2d(F.relu(model.bn1(model.conv1(x))), 3, 2, 1)
    feats = []
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for b, block in enumerate(stage):
            y = bottleneck(block, y, radix, cardinality, avd_first, strided=s > 0 and b == 0)
        feats.append(y)
    return model.fc(torch.flatten(y.mean(dim=(2, 3)), 1)), feats


def test_forward_is_split_attention_as_defined(model):
    model.eval()
    randomise(model, 2)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    m64 = model.double()
    try:
        with torch.no_grad():
            logits, feats = whole_model(m64, x.double())
            assert (m64(x.double()) - logits).abs().max().item() <= 1e-12
            for got, want in zip(m64.forward_features(x.double()), feats):
                assert (got - want).abs().max().item() <= 1e-12
    finally:
        model.float()


def test_avd_pools_carry_the_stride(model):
    g = graphres.compile_spec(SPEC).graph
    assert g.nodes["layer2.0.avd_last"][ir.ATTRS] | {} == {"kernel": 3, "stride": 2, "padding": 1,
                                                           "ceil_mode": False, "count_include_pad": True}
    assert g.nodes["layer2.0.conv2.conv"][ir.ATTRS]["stride"] == 1
    assert "layer1.0.avd_last" not in g and "layer2.1.avd_last" not in g and "layer2.0.avd_first" not in g
    assert g.nodes["layer2.0.downsample.0"][ir.ATTRS] | {} == {"kernel": 2, "stride": 2, "padding": 0,
                                                               "ceil_mode": True, "count_include_pad": False}
    assert ir.inputs_of(g, "layer1.0.conv2.gap1") == ["layer1.0.conv2.x0", "layer1.0.conv2.x1"]
    assert ir.inputs_of(g, "layer1.0.conv2.scaled") == ["layer1.0.conv2.act0", "layer1.0.conv2.attn"]
    assert [g.nodes[f"layer3.0.conv2.{n}"][ir.META]["shape"] for n in ("rview", "rperm", "attn")] == [
        (1, 2, 256), (2, 1, 256), (512, 1, 1)]
    assert type(model.layer2[0].avd_last).__name__ == "AvgPool2d"
    # the radix splits are views of act0: no bytes of their own, and act0 lives while they do
    assert [g.nodes[f"layer2.0.conv2.{n}"][ir.META]["bytes"] for n in ("act0", "x0", "x1", "gap1")] == [
        0, 0, 0, 128 * 56 * 56 * 4]


VARIANT_BLOCKS = {  # name -> block_args, radix, cardinality, avd_first
    "r4c2": ("{radix: 4, cardinality: 2, base_width: 40, avd_first: true}", 4, 2, True),
    "r1c4": ("{radix: 1, cardinality: 4, base_width: 24, avd_first: true}", 1, 4, True),
    "r3c1": ("{radix: 3, base_width: 48}", 3, 1, False),
}


@pytest.mark.parametrize("name", sorted(VARIANT_BLOCKS))
def test_parametric_split_attention(tmp_path, name):
    args, radix, cardinality, avd_first = VARIANT_BLOCKS[name]
    stages = "".join(f"  - {{block: resnest_bottleneck, blocks: {n}, planes: {p}{', stride: 2' if i else ''}}}\n"
                     for i, (n, p) in enumerate(((2, 64), (1, 128), (1, 256), (1, 512))))
    path = variant(tmp_path, name, f"block_args: {args}\nstages:\n{stages}")
    torch.manual_seed(0)
    model = graphres.build(str(path)).eval().double()
    randomise(model, 4)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        logits, _ = whole_model(model, x, radix, cardinality, avd_first)
        assert (model(x) - logits).abs().max().item() <= 1e-12
    g = graphres.compile_spec(str(path)).graph
    assert ("layer2.0.avd_first" in g, "layer2.0.avd_last" in g) == (avd_first, not avd_first)
    assert g.nodes["layer1.0.conv2.conv"][ir.ATTRS]["groups"] == radix * cardinality
    assert ("layer1.0.conv2.rsoft" in g, "layer1.0.conv2.rgate" in g) == (radix > 1, radix == 1)


def test_radix_zero_is_a_plain_conv2(tmp_path):
    path = variant(tmp_path, "r0", "block_args: {radix: 0}\n")
    model = graphres.build(str(path))
    keys = [k for k in model.state_dict() if k.startswith("layer1.0.")][:8]
    assert keys == ["layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean",
                    "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked", "layer1.0.conv2.weight",
                    "layer1.0.bn2.weight"]
    assert model.layer2[0].conv2.stride == (1, 1) and model.layer2[0].avd_last.stride == 2


def test_inference_build_matches_eval(tmp_path, model):
    model.eval()
    randomise(model, 6)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    net = graphres.build(SPEC, checkpoint=str(path), inference=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = model(x), net(x)
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-5
    assert "layer1.0.conv2.bn0.weight" not in net.state_dict()  # folded into conv2.conv


# -- the CLI on the spec -----------------------------------------------------------------------------

def test_validate_info_and_render(tmp_path):
    r = run_cli("validate", SPEC)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == ("resnest50d: ok: resnest50d: 4 stages, 16 blocks, 27,483,240 parameters; outputs logits "
                        "(1000 classes); features layer1 (256 ch, stride 4), layer2 (512 ch, stride 8), layer3 "
                        "(1024 ch, stride 16), layer4 (2048 ch, stride 32)\n")
    r = run_cli("info", SPEC)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "stem       timm_deep             64x56x56        4   1     15  28.8K  358M" in lines
    assert "layer2   1 resnest_bottleneck x4 512x28x28       8   1 global  1.32M 1.37G" in lines
    assert "MACs         5,371,160,576 = 5.37 G multiply-accumulates (conv + linear)" in lines
    r = run_cli("info", SPEC, "--level", "layer", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["layer3.0.conv2.fc1"]["params"] == 256 * 128 + 128
    assert rows["layer3.0.conv2.rsoft"]["type"] == "softmax(0)"
    out = tmp_path / "resnest.dot"
    r = run_cli("render", SPEC, "--level", "layer", "-o", out)
    assert (r.returncode, r.stderr) == (0, "")
    dot = out.read_text()
    for label in ("conv2.rsoft: softmax(0)", "conv2.fc1: conv1x1", "avd_last: avgpool3x3 s2",
                  "conv1.6: conv3x3", "conv2.x1: slice 1/2"):
        assert label in dot, label
    # the sums of the radix splits are not drawn as identity shortcuts
    assert dot.count("label=identity") == 4  # one per folded run of identity blocks
    assert '"layer1.0.act3" -> "layer1.1.add" [label=identity' in dot
