"""Attention plugins (mmcv's ContextBlock and NonLocal2d as YAML blocks) at the bottleneck's
plugin positions: numerics against torch re-implementations written here from mmcv's semantics,
state-dict keys against a list recorded from mmdetection 3.3 (tools/parity/record_plugin_keys.py),
exact parameters and MACs (against FlopCounterMode), initialisation, mmsegmentation's variant, the
explicit form, and the located errors."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres.backends.diff import state_dict_shapes
from graphres.diagnostics import SpecError

from conftest import block_io, randomise

DATA = Path(__file__).parent / "data"
GCB = {"type": "ContextBlock", "ratio": 1 / 16}
RECORDED = [  # tools/parity/record_plugin_keys.py PLUGINS
    {"cfg": GCB, "stages": [False, True, True, True], "position": "after_conv3"},
    {"cfg": {"type": "ContextBlock", "ratio": 1 / 4, "pooling_type": "avg", "fusion_types": ["channel_add", "channel_mul"],
             "postfix": 1}, "stages": [True, False, False, False], "position": "after_conv1"},
    {"cfg": {"type": "NonLocal2d", "reduction": 4}, "stages": [False, False, True, False], "position": "after_conv2"},
    {"cfg": {"type": "NonLocal2d", "mode": "concatenation", "postfix": "_c"}, "stages": [False, False, False, True],
     "position": "after_conv2"},
]


def spec(plugins, size=64, **backbone):
    return {"graphres": 1, "name": "p", "input": {"channels": 3, "size": [size, size]},
            "backbone": {"type": "ResNet", "depth": 50, "plugins": plugins, **backbone}}


# -- reference implementations (mmcv 2.1 semantics, written out) -------------------------------

def context_block(m, x, pooling="att", add=True, mul=False):
    n, c, h, w = x.shape
    if pooling == "att":
        weights = m.conv_mask(x).reshape(n, 1, h * w).softmax(-1)
        context = torch.einsum("ncp,np->nc", x.reshape(n, c, h * w), weights[:, 0]).reshape(n, c, 1, 1)
    else:
        context = x.mean((2, 3), keepdim=True)
    out = x
    if mul:
        out = out * torch.sigmoid(m.channel_mul_conv(context))
    if add:
        out = out + m.channel_add_conv(context)
    return out


def nonlocal_block(m, x, mode="embedded_gaussian", use_scale=True):
    n, c, h, w = x.shape
    g = m.g.conv(x).flatten(2).transpose(1, 2)  # n x N x C'
    if mode == "gaussian":
        theta, phi = x.flatten(2).transpose(1, 2), x.flatten(2)
    else:
        theta, phi = m.theta.conv(x).flatten(2).transpose(1, 2), m.phi.conv(x).flatten(2)
    if mode == "concatenation":
        big_n, big_m = theta.shape[1], phi.shape[-1]
        pairs = torch.cat([theta.transpose(1, 2)[..., None].expand(-1, -1, -1, big_m),
                           phi[:, :, None, :].expand(-1, -1, big_n, -1)], 1)
        weights = F.relu(m.concat_project.conv(pairs))[:, 0] / big_m
    else:
        weights = theta @ phi
        if mode == "embedded_gaussian" and use_scale:
            weights = weights / theta.shape[-1] ** 0.5
        weights = weights.softmax(-1) if mode in ("gaussian", "embedded_gaussian") else weights / weights.shape[-1]
    y = (weights @ g).transpose(1, 2).reshape(n, -1, h, w)
    return x + m.conv_out.conv(y)


def bottleneck(block, x, plugins):
    """mmdetection's Bottleneck.forward; ``plugins`` maps a position to functions of (block, x)."""
    def run(position, out):
        for f in plugins.get(position, []):
            out = f(block, out)
        return out
    out = run("after_conv1", block.relu(block.bn1(block.conv1(x))))
    out = run("after_conv2", block.relu(block.bn2(block.conv2(out))))
    out = run("after_conv3", block.bn3(block.conv3(out)))
    identity = block.downsample(x) if getattr(block, "downsample", None) is not None else x
    return block.relu(out + identity)






CASES = {
    "gcb att add": ({"type": "ContextBlock", "ratio": 1 / 16}, "after_conv3",
                    lambda b, x: context_block(b.context_block, x)),
    "gcb avg add+mul": ({"type": "ContextBlock", "ratio": 1 / 4, "pooling_type": "avg",
                         "fusion_types": ["channel_add", "channel_mul"]}, "after_conv2",
                        lambda b, x: context_block(b.context_block, x, "avg", True, True)),
    "gcb att mul": ({"type": "ContextBlock", "ratio": 1 / 8, "fusion_types": ["channel_mul"]}, "after_conv1",
                    lambda b, x: context_block(b.context_block, x, "att", False, True)),
    "nonlocal embedded": ({"type": "NonLocal2d"}, "after_conv2", lambda b, x: nonlocal_block(b.nonlocal_block, x)),
    "nonlocal embedded unscaled": ({"type": "NonLocal2d", "use_scale": False, "reduction": 4}, "after_conv3",
                                   lambda b, x: nonlocal_block(b.nonlocal_block, x, use_scale=False)),
    "nonlocal dot_product": ({"type": "NonLocal2d", "mode": "dot_product"}, "after_conv1",
                             lambda b, x: nonlocal_block(b.nonlocal_block, x, "dot_product")),
    "nonlocal gaussian": ({"type": "NonLocal2d", "mode": "gaussian"}, "after_conv3",
                          lambda b, x: nonlocal_block(b.nonlocal_block, x, "gaussian")),
    "nonlocal concatenation": ({"type": "NonLocal2d", "mode": "concatenation", "reduction": 8}, "after_conv2",
                               lambda b, x: nonlocal_block(b.nonlocal_block, x, "concatenation")),
}


@pytest.mark.parametrize("case", CASES)
def test_plugin_numerics_against_the_reference(case):
    cfg, position, ref = CASES[case]
    model = randomise(graphres.build(spec([{"cfg": cfg, "position": position, "stages": [False, True]}],
                                          size=48, num_stages=2, out_indices=[1])))
    x = torch.randn(2, 3, 48, 48)
    for index in (0, 1):  # the strided first block (with downsample) and a plain one
        block, bx, by = block_io(model, "layer2", index, x)
        with torch.no_grad():
            expected = bottleneck(block, bx, {position: [ref]})
        assert torch.allclose(by, expected, atol=1e-5, rtol=1e-4), (case, index, float((by - expected).abs().max()))


def test_chained_plugins_and_mmseg_keeps_the_last():
    plugins = [{"cfg": {"type": "ContextBlock", "ratio": 1 / 16, "postfix": 1}, "position": "after_conv3"},
               {"cfg": {"type": "NonLocal2d", "reduction": 4}, "position": "after_conv3"}]
    first = lambda b, x: context_block(b.context_block1, x)  # noqa: E731
    second = lambda b, x: nonlocal_block(b.nonlocal_block, x)  # noqa: E731
    x = torch.randn(1, 3, 48, 48)
    for kind, expected_plugins in (("ResNet", [first, second]), ("mmseg.ResNet", [second])):
        model = randomise(graphres.build(spec(plugins, size=48, type=kind, num_stages=2, out_indices=[1])))
        block, bx, by = block_io(model, "layer2", 1, x)
        with torch.no_grad():
            expected = bottleneck(block, bx, {"after_conv3": expected_plugins})
        assert torch.allclose(by, expected, atol=1e-5, rtol=1e-4), kind
        assert "layer2.1.context_block1.conv_mask.weight" in model.state_dict()  # built in both


def test_state_dict_keys_shapes_and_order_are_mmdetections():
    recorded = [line.split() for line in (DATA / "mmdet_r50_plugins_keys.txt").read_text().splitlines()
                if not line.startswith("#")]
    recorded = [(k, tuple(int(v) for v in s.split("x")) if s != "-" else ()) for k, s in recorded]
    model = graphres.build(spec(RECORDED))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == recorded
    compiled = graphres.compile_spec(spec(RECORDED))
    assert state_dict_shapes(compiled.graph) == dict(recorded)  # the torch-free listing agrees
    model.load_state_dict({k: torch.zeros(s) for k, s in recorded}, strict=True)


def test_params_and_macs_are_exact():
    compiled = graphres.compile_spec(spec(RECORDED, size=96))
    g = compiled.graph
    assert g.graph["params"] == 28_016_877  # mmdetection's ResNet(depth=50, plugins=RECORDED), counted there
    gcnet = graphres.compile_spec(spec([RECORDED[0]])).graph
    assert gcnet.graph["params"] == 26_029_773  # mmdetection's r50 with GCB r16 in c3-c5
    model = graphres.build(compiled).eval()
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 96, 96))
    assert counter.get_total_flops() == 2 * g.graph["macs"]
    nl = g.nodes["layer3.0.nonlocal_block.pairwise"]["meta"]
    assert (nl["shape"], nl["macs"]) == ((36, 36), 36 * 36 * 64)


def test_initialisation_is_mmdetections_after_init_weights():
    torch.manual_seed(0)
    sd = graphres.build(spec(RECORDED)).state_dict()
    # NonLocal2d.init_weights (called again by mmdetection's): normal(0.01) on g/theta/phi, conv_out zero
    for name in ("g", "theta", "phi"):
        w = sd[f"layer3.0.nonlocal_block.{name}.conv.weight"]
        assert 0.009 < float(w.std()) < 0.011, name
        assert float(sd[f"layer3.0.nonlocal_block.{name}.conv.bias"].abs().max()) == 0.0
    assert float(sd["layer3.0.nonlocal_block.conv_out.conv.weight"].abs().max()) == 0.0
    # ContextBlock has no init_weights: the backbone's Kaiming (fan_out) reaches every conv, its
    # zero-initialised last conv included; LayerNorm keeps 1 and 0
    w = sd["layer2.0.context_block.channel_add_conv.3.weight"]
    assert abs(float(w.std()) / (2 / 512) ** 0.5 - 1) < 0.05
    assert torch.equal(sd["layer2.0.context_block.channel_add_conv.1.weight"], torch.ones(32, 1, 1))
    # concatenation's concat_project is not in NonLocal2d.init_weights: the backbone's Kaiming
    w = sd["layer4.0.nonlocal_block_c.concat_project.conv.weight"]
    assert abs(float(w.std()) / 2 ** 0.5 - 1) < 0.1


def test_expand_round_trip_keeps_the_plugins(tmp_path):
    from graphres.cli import main
    source = tmp_path / "sh.yaml"
    import yaml
    source.write_text(yaml.safe_dump(spec(RECORDED)))
    compiled = graphres.compile_spec(source)
    explicit = yaml.safe_dump(compiled.explicit() if callable(getattr(compiled, "explicit", None)) else None)
    out = tmp_path / "explicit.yaml"
    out.write_text(explicit)
    again = graphres.compile_spec(out)
    assert again.graph.graph["params"] == compiled.graph.graph["params"]
    assert state_dict_shapes(again.graph) == state_dict_shapes(compiled.graph)
    assert main is not None


def errors(source):
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(source)
    return [(d.code, d.message) for d in e.value.diagnostics]


def test_shorthand_errors():
    assert errors(spec([{"cfg": GCB, "position": "after_conv3", "stages": [True, False]}])) == [
        ("E122", "plugins[0].stages has 2 values but num_stages = 4")]
    assert errors(spec([{"cfg": {"type": "ContextBlock"}, "position": "after_conv3"}])) == [
        ("E012", "ContextBlock needs 'ratio' (its bottleneck has int(in_channels * ratio) channels)")]
    assert errors(spec([{"cfg": {"type": "NonLocal2d", "reduction": 0}, "position": "after_conv2"}])) == [
        ("E126", "NonLocal2d reduction = 0 must be >= 1 (inner channels are max(in_channels // reduction, 1))")]
    assert errors(spec([{"cfg": {"type": "ContextBlock", "ratio": 0.25, "fusion_types": []},
                         "position": "after_conv2"}])) == [
        ("E126", "ContextBlock fusion_types is empty: mmcv asserts 'at least one fusion should be used'")]
    assert errors(spec([{"cfg": {"type": "GeneralizedAttention", "attention_type": "11"}, "position": "after_conv2"}])) == [
        ("E127", "GeneralizedAttention attention_type '11' is not a string of four 0/1 bits")]
    assert errors(spec([{"cfg": GCB, "position": "after_conv3"}, {"cfg": GCB, "position": "after_conv1",
                                                                 "stages": [False, False, True, False]}])) == [
        ("E124", "two plugins of layer3 are named 'context_block' (plugins[1] and an earlier one): mmdetection "
                 "asserts 'duplicate plugin context_block'")]
    assert errors(spec([{"cfg": GCB, "position": "after_conv3"}], depth=34)) == [
        ("E125", "plugins need Bottleneck blocks, but ResNet-18 and ResNet-34 use BasicBlock (mmdetection: "
                 "'Not implemented yet')")]
    assert errors(spec([{"cfg": GCB}])) == [("E012", "plugins[0] needs the key 'position'")]


def test_errors_are_located_at_the_plugin(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("graphres: 1\nbackbone:\n  type: ResNet\n  depth: 50\n  plugins:\n"
                    "    - cfg: {type: NonLocal2d, mode: fast}\n      position: after_conv2\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    d = e.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.col) == ("E126", 6, 37)


def test_explicit_form_errors(write_spec):
    base = """
        graphres: 1
        stages:
          - {block: %s, blocks: 1, planes: 64, plugins: [%s]}
    """
    cases = [
        ("bottleneck", "{position: after_conv4, block: context_block, ratio: 0.25}",
         ("E121", "plugin position 'after_conv4' is not one of the block's positions (after_conv1, after_conv2, "
                  "after_conv3)")),
        ("bottleneck", "{position: after_conv1, block: gcb, ratio: 0.25}",
         ("E123", "plugin block type 'gcb' is not a known block type")),
        ("bottleneck", "{position: after_conv1, block: context_block, ratio: 0.25}, "
                       "{position: after_conv2, block: context_block, ratio: 0.5}",
         ("E124", "two plugins of stages[0] are named 'context_block'")),
        ("basic", "{position: after_conv1, block: context_block, ratio: 0.25}",
         ("E125", "block type 'basic' has no plugin positions, so its stage takes no plugins")),
        ("bottleneck", "{position: after_conv1, block: context_block, ratoi: 0.25}",
         ("E010", "plugin block 'context_block' has no parameter 'ratoi'")),
        ("bottleneck", "{position: after_conv1, block: nonlocal_block, mode: fast}",
         ("E013", "nonlocal_block.mode = 'fast' is not one of 'embedded_gaussian', 'dot_product', 'gaussian', "
                  "'concatenation'")),
    ]
    for block, plugins, expected in cases:
        found = errors(write_spec(base % (block, plugins)))
        assert expected in found, (expected, found)


def test_warnings():
    compiled = graphres.compile_spec(spec([{"cfg": {"type": "NonLocal2d", "sub_sample": True}, "position": "after_conv2",
                                            "stages": [False, False, True, False]},
                                           {"cfg": {"type": "NonLocal2d", "mode": "concatenation", "postfix": 2},
                                            "position": "after_conv2", "stages": [False, False, False, True]},
                                           {"cfg": GCB, "position": "after_conv3", "postfix": 3}]))
    assert [d.code for d in compiled.warnings] == ["W120", "W121", "W122"]
    model = graphres.build(compiled)  # sub_sample builds and initialises here (mmdetection cannot)
    block, bx, by = block_io(randomise(model), "layer3", 1, torch.randn(1, 3, 64, 64))
    assert by.shape == (1, 1024, 4, 4)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product", "concatenation"])
def test_sub_sample_keys_are_mmcvs_and_load_strictly(mode):
    """mmcv wraps g and phi as nn.Sequential(conv module, max pool) (gaussian: phi is the pool): the
    keys are g.0.conv, phi.0.conv; without sub_sample they stay g.conv, phi.conv."""
    cfg = {"type": "NonLocal2d", "mode": mode, "sub_sample": True, "reduction": 4}
    model = graphres.build(spec([{"cfg": cfg, "position": "after_conv2", "stages": [False, True]}], size=48,
                                num_stages=2, out_indices=[1]))
    keys = [k[len("layer2.0.nonlocal_block."):] for k in model.state_dict() if k.startswith("layer2.0.nonlocal_block.")]
    expected = ["g.0.conv.weight", "g.0.conv.bias", "conv_out.conv.weight", "conv_out.conv.bias"]
    if mode != "gaussian":
        expected += ["theta.conv.weight", "theta.conv.bias", "phi.0.conv.weight", "phi.0.conv.bias"]
    if mode == "concatenation":
        expected += ["concat_project.conv.weight"]
    assert keys == expected
    block = model.layer2[0].nonlocal_block
    assert isinstance(block.g, torch.nn.Sequential) and isinstance(block.g[1], torch.nn.MaxPool2d)
    if mode == "gaussian":
        assert isinstance(block.phi, torch.nn.MaxPool2d)
    compiled = graphres.compile_spec(spec([{"cfg": cfg, "position": "after_conv2", "stages": [False, True]}],
                                          size=48, num_stages=2, out_indices=[1]))
    assert list(state_dict_shapes(compiled.graph)) == list(model.state_dict())
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True)
    # the numbers: mmcv's forward with the pooled g and phi
    randomise(model)
    x = torch.randn(1, 3, 48, 48)
    b, bx, by = block_io(model, "layer2", 1, x)

    def ref(blk, t):
        m = blk.nonlocal_block
        n, c, h, w = t.shape
        g = m.g[1](m.g[0].conv(t)).flatten(2).transpose(1, 2)
        if mode == "gaussian":
            theta, phi = t.flatten(2).transpose(1, 2), m.phi(t).flatten(2)
        else:
            theta, phi = m.theta.conv(t).flatten(2).transpose(1, 2), m.phi[1](m.phi[0].conv(t)).flatten(2)
        if mode == "concatenation":
            big_n, big_m = theta.shape[1], phi.shape[-1]
            pairs = torch.cat([theta.transpose(1, 2)[..., None].expand(-1, -1, -1, big_m),
                               phi[:, :, None, :].expand(-1, -1, big_n, -1)], 1)
            weights = F.relu(m.concat_project.conv(pairs))[:, 0] / big_m
        else:
            weights = theta @ phi
            if mode == "embedded_gaussian":
                weights = weights / theta.shape[-1] ** 0.5
            weights = weights.softmax(-1) if mode != "dot_product" else weights / weights.shape[-1]
        y = (weights @ g).transpose(1, 2).reshape(n, -1, h, w)
        return t + m.conv_out.conv(y)
    with torch.no_grad():
        expected_y = bottleneck(b, bx, {"after_conv2": [ref]})
    assert torch.allclose(by, expected_y, atol=1e-5, rtol=1e-4)


def test_without_sub_sample_the_keys_stay():
    model = graphres.build(spec([{"cfg": {"type": "NonLocal2d"}, "position": "after_conv2", "stages": [False, True]}],
                                size=48, num_stages=2, out_indices=[1]))
    assert "layer2.0.nonlocal_block.g.conv.weight" in model.state_dict()
    assert "layer2.0.nonlocal_block.phi.conv.weight" in model.state_dict()


def test_plugin_modules_carry_mmcv_arguments():
    """mmdetection's own test_resnet_bottleneck reads the plugins' arguments off their modules
    (block.context_block.in_channels); the same case on ResNet-50's layer1 (planes 64)."""
    model = graphres.build(spec([
        {"cfg": {"type": "GeneralizedAttention", "spatial_range": -1, "num_heads": 8, "attention_type": "0010",
                 "kv_stride": 2}, "position": "after_conv2"},
        {"cfg": {"type": "NonLocal2d"}, "position": "after_conv2"},
        {"cfg": {**GCB, "postfix": 1}, "position": "after_conv2"},
        {"cfg": {**GCB, "postfix": 2}, "position": "after_conv3"},
        {"cfg": {**GCB, "postfix": 3}, "position": "after_conv3"}]))
    block = model.layer1[0]
    assert block.gen_attention_block.in_channels == 64 and block.gen_attention_block.num_heads == 8
    assert block.gen_attention_block.kv_stride == 2 and block.gen_attention_block.spatial_range == -1
    assert block.nonlocal_block.in_channels == 64 and block.nonlocal_block.mode == "embedded_gaussian"
    assert block.nonlocal_block.reduction == 2
    assert block.context_block1.in_channels == 64
    assert block.context_block2.in_channels == 256 and block.context_block3.in_channels == 256
    assert block.context_block2.ratio == 1 / 16 and block.context_block2.pooling_type == "att"
    assert model.layer4[2].context_block3.in_channels == 2048
    # attributes, not tensors: the state dict is unchanged
    assert not any(k.endswith("in_channels") for k in model.state_dict())
