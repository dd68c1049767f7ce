"""Res2Net-50 26w4s (specs/res2net50_26w_4s.yaml), written as a YAML block over the slice op.

timm cannot run in CI (its torch is not CI's). tests/data/timm_res2net50_26w_4s_keys.txt was
written once from timm 1.0.31's res2net50_26w_4s by tools/parity/timm_res2net.py --write-keys;
the outputs were compared there (benchmarks/results/timm_res2net_parity.txt: identical). Here the
spec's keys, shapes and order are checked against that list, the figures against hand counts and
FlopCounterMode, and the forward against timm's Bottle2neck algorithm written out below.
"""
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import ir
from graphres.diagnostics import SpecError
from graphres.ops import OPS

from conftest import ROOT

SPEC = "res2net50_26w_4s"


def timm_keys() -> list[tuple[str, tuple]]:
    lines = (ROOT / "tests" / "data" / "timm_res2net50_26w_4s_keys.txt").read_text().splitlines()[1:]
    out = []
    for line in lines:
        key, _, shape = line.partition(" ")
        out.append((key, tuple(int(s) for s in shape.split("x")) if shape else ()))
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return graphres.build(SPEC)


def test_keys_shapes_and_order_are_timms(model):
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == timm_keys()


def test_a_timm_state_dict_loads_strictly(tmp_path, model):
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(3)) for k, s in timm_keys()}
    state = {k: v.abs() if k.endswith("running_var") else v for k, v in state.items()}
    path = tmp_path / "res2net.pth"
    torch.save(state, path)
    loaded = graphres.build(SPEC, checkpoint=str(path))
    assert torch.equal(loaded.layer3[4].convs[2].weight, state["layer3.4.convs.2.weight"])


def test_parameters_and_macs_are_exact():
    g = graphres.compile_spec(SPEC).graph
    # per stage: planes p, width w = p * 26 // 64, blocks n; conv1 in->4w, three 3x3 w->w, conv3 4w->4p,
    # norms 2 per channel, downsample in the first block; stem and fc as ResNet-50's
    params = 64 * 3 * 49 + 128 + 2048 * 1000 + 1000
    macs = 64 * 112 * 112 * 3 * 49 + 2048 * 1000
    inch, size = 64, 56
    for p, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        w = p * 26 // 64
        out = size // stride
        for b in range(n):
            cin, s = (inch, stride) if b == 0 else (4 * p, 1)
            hw_in, hw = (size * size, out * out) if b == 0 else (out * out, out * out)
            params += cin * 4 * w + 2 * 4 * w + 3 * (9 * w * w + 2 * w) + 4 * w * 4 * p + 2 * 4 * p
            macs += 4 * w * hw_in * cin + 3 * w * hw * 9 * w + 4 * p * hw * 4 * w
            if b == 0:
                params += cin * 4 * p + 2 * 4 * p
                macs += 4 * p * hw * cin
        inch, size = 4 * p, out
    assert (g.graph[ir.G_PARAMS], g.graph[ir.G_MACS]) == (params, macs) == (25_699_120, 4_255_166_464)


def test_flop_counter_counts_twice_the_macs(model):
    small = graphres.compile_spec(SPEC, input_size=(96, 96)).graph
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, 3, 96, 96))
    assert counter.get_total_flops() == 2 * small.graph[ir.G_MACS]


def _bottle2neck(block, x, width, first):
    """timm's Bottle2neck.forward (scale 4), on the graphres block's own modules."""
    out = F.relu(block.bn1(block.conv1(x)))
    spx = torch.split(out, width, 1)
    spo = []
    sp = spx[0]
    for i in range(3):
        sp = spx[i] if i == 0 or first else sp + spx[i]
        sp = F.relu(block.bns[i](block.convs[i](sp)))
        spo.append(sp)
    spo.append(block.pool(spx[3]) if first else spx[3])
    out = block.bn3(block.conv3(torch.cat(spo, 1)))
    shortcut = block.downsample(x) if first else x
    return F.relu(out + shortcut)


def test_forward_is_timms_algorithm(model):
    model.eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():  # non-trivial norms, so that every branch shows
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
        x = torch.randn(2, 3, 64, 64, generator=g)
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        feats = []
        for s, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            for b, block in enumerate(stage):
                y = _bottle2neck(block, y, (64 << s) * 26 // 64, b == 0)
            feats.append(y)
        logits = model.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))
        assert torch.equal(model(x), logits)
        for got, want in zip(model.forward_features(x), feats):
            assert torch.equal(got, want)


def test_first_blocks_pool_and_later_blocks_add():
    g = graphres.compile_spec(SPEC).graph
    assert g.nodes["layer2.0.pool"][ir.ATTRS] | {} == {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": False,
                                                       "count_include_pad": True}
    assert "layer2.1.pool" not in g and "layer2.0.sp1" not in g
    assert ir.inputs_of(g, "layer2.1.sp1") == ["layer2.1.spx1", "layer2.1.relu:1"]
    assert ir.inputs_of(g, "layer1.0.concat") == ["layer1.0.relu:1", "layer1.0.relu:2", "layer1.0.relu:3",
                                                  "layer1.0.pool"]
    assert ir.inputs_of(g, "layer1.1.concat")[-1] == "layer1.1.spx3"
    assert [g.nodes[f"layer3.0.spx{i}"][ir.OUT_CH] for i in range(4)] == [104] * 4


# -- the slice op ------------------------------------------------------------------------------------

def test_slice_rules():
    op = OPS["slice"]
    a = {"start": 8, "stop": -1, "chunks": 0, "index": 0}
    assert op.channels(a, [20]) == 12 and op.label(a, {}, True) == "slice 8:"
    assert op.torch.call_attrs(a, None, ["x"], False) == "x[:, 8:]"
    b = {"start": 0, "stop": -1, "chunks": 4, "index": 3}
    assert op.channels(b, [20]) == 5 and op.torch.call_attrs(b, None, ["x"], False) == "torch.chunk(x, 4, 1)[3]"
    assert op.check_channels(b, [("x", 18)], {})[0] == "slice chunks = 4 does not divide its 18 input channels"
    assert op.check_channels({**b, "index": 4}, [("x", 20)], {})[0] == \
        "slice index = 4 is out of range for chunks = 4 (0..3)"
    assert op.check_channels({**a, "start": 30}, [("x", 20)], {})[0] == \
        "slice [30:20] is not a non-empty channel range of its 20 input channels"
    assert op.params(a, 20, 12, {}) == 0 and op.macs(a, 20, 12, (4, 4)) == 0 and op.window(a) is None


def test_slices_in_a_user_block(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        graphres: 1
        input: {size: 16}
        blocks:
          halves:
            out_channels: in_channels
            layers:
              - {name: lo, op: slice, chunks: 2, index: 0}
              - {name: hi, op: slice, chunks: 2, index: 1, from: input}
              - {name: conv, op: conv, out: in_channels // 2, kernel: 3, from: hi}
              - {name: relu, op: act}
              - {op: add, from: [lo, relu]}
              - {name: relu, op: act}
              - {op: concat, from: [hi, "relu:1"]}
        stem: {type: conv7x7, channels: 8}
        stages: [{block: halves, blocks: 2}]
        """))
    model = graphres.build(str(path)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for block in model.layer1:
            lo, hi = torch.chunk(y, 2, 1)
            y = torch.cat([hi, F.relu(lo + F.relu(block.conv(hi)))], 1)
        assert torch.equal(model(x)[0], y)
    path.write_text(path.read_text().replace("chunks: 2, index: 1", "chunks: 3, index: 1"))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(str(path))
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{path}:8:39: error[E030]: slice chunks = 3 does not divide its 8 input channels"]
