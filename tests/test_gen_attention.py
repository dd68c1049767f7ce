"""mmcv's GeneralizedAttention as YAML plugin blocks (gen_attention_block and
gen_attention_position_block) on the ops bias, position_energy and resize: numerics against a torch
formulation written here from mmcv 2.1's semantics (einsum over the explicit coordinate grids),
state-dict keys against a list recorded from mmdetection 3.3
(tools/parity/record_gen_attention_keys.py), exact parameters and MACs (against FlopCounterMode),
initialisation, the op rules, and the located diagnostics."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres.backends.diff import state_dict_shapes
from graphres.diagnostics import SpecError
from graphres.ops import OPS

from conftest import block_io, randomise

DATA = Path(__file__).parent / "data"
RECORDED = [  # tools/parity/record_gen_attention_keys.py PLUGINS
    {"cfg": {"type": "GeneralizedAttention", "spatial_range": -1, "num_heads": 8, "attention_type": "1111",
             "kv_stride": 2}, "stages": [False, True, True, True], "position": "after_conv2"},
    {"cfg": {"type": "GeneralizedAttention", "spatial_range": -1, "num_heads": 8, "attention_type": "0010",
             "kv_stride": 2, "q_stride": 2, "postfix": 1}, "stages": [True, False, False, False],
     "position": "after_conv3"},
    {"cfg": {"type": "GeneralizedAttention", "num_heads": 6, "attention_type": "0101", "position_embedding_dim": 16,
             "postfix": "_p"}, "stages": [False, False, False, True], "position": "after_conv1"},
    {"cfg": {"type": "NonLocal2d", "reduction": 4, "sub_sample": True}, "stages": [False, False, True, False],
     "position": "after_conv2"},
]


def spec(plugins, size=64, **backbone):
    size = list(size) if isinstance(size, tuple) else [size, size]
    return {"graphres": 1, "name": "p", "input": {"channels": 3, "size": size},
            "backbone": {"type": "ResNet", "depth": 50, "plugins": plugins, **backbone}}


def ga(t, **kw):
    return {"type": "GeneralizedAttention", "attention_type": t, "num_heads": kw.pop("num_heads", 8), **kw}


# -- a reference formulation (mmcv 2.1's semantics, written out over coordinate grids) -------------

def sine_features(n_q, n_kv, q_stride, kv_stride, magnitude, feat, weight):
    """heads*dim features of every (query index, key index) pair along one axis: mmcv's sine
    embedding of the scaled coordinate difference, through the Linear weight, / sqrt(2)."""
    rel = (torch.arange(n_q, dtype=torch.float64)[:, None] * q_stride
           - torch.arange(n_kv, dtype=torch.float64)[None, :] * kv_stride) * magnitude
    freqs = torch.tensor(1000.0, dtype=torch.float64) ** (4.0 / feat * torch.arange(feat // 4, dtype=torch.float64))
    angles = rel[..., None] / freqs
    emb = torch.cat([angles.sin(), angles.cos()], -1)
    return (emb @ weight.double().t() / math.sqrt(2)).float()


def constraint_map(max_len, kv_stride, spatial_range):
    """mmcv's local_constraint_map, element by element: 0 for the keys within spatial_range."""
    max_kv = int((max_len - 1.0) / kv_stride + 1)
    out = torch.ones(max_len, max_len, max_kv, max_kv, dtype=torch.uint8)
    for iy in range(max_len):
        y0, y1 = max((iy - spatial_range) // kv_stride, 0), min((iy + spatial_range + 1) // kv_stride + 1, max_len)
        for ix in range(max_len):
            x0, x1 = max((ix - spatial_range) // kv_stride, 0), min((ix + spatial_range + 1) // kv_stride + 1, max_len)
            out[iy, ix, y0:y1, x0:x1] = 0
    return out


def gen_attention(m, x, bits, heads, q_stride=1, kv_stride=2, feat=None, magnitude=1, spatial_range=-1):
    t0, t1, t2, t3 = (c == "1" for c in bits)
    xq, xkv = x[:, :, ::q_stride, ::q_stride], x[:, :, ::kv_stride, ::kv_stride]
    n, c, h, w = xq.shape
    hk, wk = xkv.shape[2:]
    d = c // heads
    feat = feat or c
    energy = x.new_zeros(n, heads, h, w, hk, wk)
    q = m.query_conv(xq).reshape(n, heads, d, h, w) if t0 or t1 else None
    k = m.key_conv(xkv).reshape(n, heads, d, hk, wk) if t0 or t2 else None
    if t0:
        energy = energy + torch.einsum("nedij,nedkl->neijkl", q, k)
    if t2:
        energy = energy + torch.einsum("ed,nedkl->nekl", m.appr_bias.reshape(heads, d), k)[:, :, None, None]
    if t1 or t3:
        px = sine_features(w, wk, q_stride, kv_stride, magnitude, feat, m.appr_geom_fc_x.weight).reshape(w, wk, heads, d)
        py = sine_features(h, hk, q_stride, kv_stride, magnitude, feat, m.appr_geom_fc_y.weight).reshape(h, hk, heads, d)
        if t1:
            qq = q + m.geom_bias.reshape(1, heads, d, 1, 1) if t3 else q
            energy = energy + torch.einsum("nedij,jled->neijl", qq, px)[:, :, :, :, None, :]
            # mmcv's y term: regular with geom_bias; without it the query is read with h and w swapped
            spec_y = "nedij,iked->neijk" if t3 else "nedji,iked->neijk"
            energy = energy + torch.einsum(spec_y, qq, py)[..., None]
        else:
            gb = m.geom_bias.reshape(heads, d)
            energy = energy + torch.einsum("ed,jled->ejl", gb, px)[None, :, None, :, None, :] \
                + torch.einsum("ed,iked->eik", gb, py)[None, :, :, None, :, None]
    if spatial_range >= 0:
        full = constraint_map(84 if c == 256 else 42, kv_stride, spatial_range)
        one_row = bits == "0010"  # mmcv's single query row takes the mask of query (0, 0)
        mask = full[:1, :1, :hk, :wk].expand(h, w, -1, -1) if one_row else full[:h, :w, :hk, :wk]
        energy = energy.masked_fill(mask.bool(), float("-inf"))
    att = energy.reshape(n, heads, h, w, hk * wk).softmax(-1).reshape(energy.shape)
    v = m.value_conv(xkv).reshape(n, heads, d, hk, wk)
    out = m.proj_conv(torch.einsum("neijkl,nedkl->nedij", att, v).reshape(n, heads * d, h, w))
    if q_stride > 1:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return m.gamma * out + x


def bottleneck(block, x, position, f):
    out = block.relu(block.bn1(block.conv1(x)))
    out = f(out) if position == "after_conv1" else out
    out = block.relu(block.bn2(block.conv2(out)))
    out = f(out) if position == "after_conv2" else out
    out = block.bn3(block.conv3(out))
    out = f(out) if position == "after_conv3" else out
    identity = block.downsample(x) if getattr(block, "downsample", None) is not None else x
    return block.relu(out + identity)






CASES = {  # name: (cfg, position, input size, reference keyword arguments)
    "1111 (attn1111 config)": (ga("1111", kv_stride=2), "after_conv2", 48, {}),
    "0010 alone (attn0010 config: one query row)": (ga("0010", kv_stride=2), "after_conv2", 48, {}),
    "0010 q_stride 2 (upsampled)": (ga("0010", kv_stride=2, q_stride=2), "after_conv2", 48, {"q_stride": 2}),
    "1000 q_stride 2 non-square": (ga("1000", q_stride=2, kv_stride=1), "after_conv3", (48, 64),
                                   {"q_stride": 2, "kv_stride": 1}),
    "0100 (transposed y term)": (ga("0100", position_embedding_dim=16), "after_conv2", 48, {"feat": 16}),
    "0001 magnitude 2": (ga("0001", position_embedding_dim=16, position_magnitude=2), "after_conv2", (48, 64),
                         {"feat": 16, "magnitude": 2}),
    "0110 q_stride 2": (ga("0110", position_embedding_dim=16, q_stride=2), "after_conv1", 48,
                        {"feat": 16, "q_stride": 2}),
    "0101 non-square": (ga("0101", position_embedding_dim=16), "after_conv2", (48, 64), {"feat": 16}),
    "1011 6 heads (floored)": (ga("1011", num_heads=6, position_embedding_dim=8, kv_stride=1), "after_conv2", 48,
                               {"feat": 8, "kv_stride": 1}),
    "1010 kv_stride 3": (ga("1010", kv_stride=3), "after_conv2", (48, 64), {"kv_stride": 3}),
}


@pytest.mark.parametrize("t, kv_stride, q_stride, spatial_range", [("1111", 2, 1, 2), ("0010", 1, 2, 1),
                                                                     ("0101", 2, 1, 0), ("1000", 3, 1, 3)])
def test_spatial_range_local_constraint_map(t, kv_stride, q_stride, spatial_range):
    cfg = ga(t, kv_stride=kv_stride, q_stride=q_stride, spatial_range=spatial_range, position_embedding_dim=16)
    plugins = [{"cfg": cfg, "position": "after_conv2", "stages": [False, False, True]}]
    compiled = graphres.compile_spec(spec(plugins, size=128, num_stages=3, out_indices=[2]))
    model = randomise(graphres.build(compiled))
    key = "layer3.0.gen_attention_block.local_constraint_map"
    sd = model.state_dict()
    mask = sd[key]
    assert mask.dtype == torch.uint8 and not dict(model.named_parameters())[key].requires_grad
    assert torch.equal(mask, constraint_map(84, kv_stride, spatial_range))
    keys = [k for k in sd if k.startswith("layer3.0.gen_attention_block.")]
    own = [k for k in keys if k.count(".") == 3]  # appr_bias, geom_bias, gamma, then the map (mmcv's order)
    assert own[-2:] == ["layer3.0.gen_attention_block.gamma", key]
    assert list(state_dict_shapes(compiled.graph)) == list(sd)
    x = torch.randn(1, 3, 128, 128)
    for index in (0, 1):
        block, bx, by = block_io(model, "layer3", index, x)
        with torch.no_grad():
            expected = bottleneck(block, bx, "after_conv2", lambda u: gen_attention(
                block.gen_attention_block, u, t, 8, q_stride=q_stride, kv_stride=kv_stride, feat=16,
                spatial_range=spatial_range))
        assert torch.allclose(by, expected, atol=1e-5, rtol=1e-4), (index, float((by - expected).abs().max()))


def test_spatial_range_errors():
    found = errors(spec([{"cfg": ga("1111", spatial_range=1), "position": "after_conv2",
                          "stages": [False, True, False, False]}]))
    assert found == [(
        "E129", "GeneralizedAttention spatial_range = 1 in layer2 after_conv2, where it has 128 input channels: mmcv "
                "builds its local_constraint_map only for 256 or 512 (max_len 84 or 42) and fails on others (max_len "
                "is undefined)")]
    # the explicit form: the op's own check (E129 at the plugin's node)
    found = errors({"graphres": 1, "stages": [{"block": "bottleneck", "blocks": 1, "planes": 32, "plugins": [
        {"position": "after_conv2", "block": "gen_attention_block", "spatial_range": 0, "num_heads": 8}]}]})
    assert found == [(
        "E129", "GeneralizedAttention layer1.0.gen_attention_block.local_constraint_map has spatial_range = 0 and 32 "
                "input channels: mmcv builds its local_constraint_map only for 256 or 512 (max_len 84 or 42) and fails "
                "on others (max_len is undefined)")]
    found = errors(spec([{"cfg": ga("1111", spatial_range=1), "position": "after_conv2",
                          "stages": [False, False, False, True]}], size=1600))
    assert [c for c, _ in found][:2] == ["W124", "E120"]
    assert "covers query maps up to 42x42 and key maps up to 21x21, but they are 50x50" in found[1][1]
    compiled = graphres.compile_spec(spec([{"cfg": ga("1111", spatial_range=1), "position": "after_conv2",
                                            "stages": [False, False, True, True]}]))
    assert [(d.code, d.message) for d in compiled.warnings] == [
        ("W124", "GeneralizedAttention spatial_range = 1 builds in mmdetection, but its init_weights() fails on the "
                 "uint8 local_constraint_map parameter (mmengine takes the mean of every parameter: 'mean(): could "
                 "not infer output dtype ... Byte')")]


@pytest.mark.parametrize("case", CASES)
def test_numerics_against_the_reference(case):
    cfg, position, size, kw = CASES[case]
    model = randomise(graphres.build(spec([{"cfg": cfg, "position": position, "stages": [False, True]}],
                                          size=size, num_stages=2, out_indices=[1])))
    heads = cfg["num_heads"]
    x = torch.randn(2, 3, *((size, size) if isinstance(size, int) else size))
    for index in (0, 1):
        block, bx, by = block_io(model, "layer2", index, x)
        with torch.no_grad():
            expected = bottleneck(block, bx, position,
                                  lambda t: gen_attention(block.gen_attention_block, t, cfg["attention_type"], heads,
                                                          **kw))
        assert torch.allclose(by, expected, atol=1e-5, rtol=1e-4), (case, index, float((by - expected).abs().max()))


def test_state_dict_keys_shapes_and_order_are_mmdetections():
    recorded = [line.split() for line in (DATA / "mmdet_r50_gen_attention_keys.txt").read_text().splitlines()
                if not line.startswith("#")]
    recorded = [(k, tuple(int(v) for v in s.split("x")) if s != "-" else ()) for k, s in recorded]
    compiled = graphres.compile_spec(spec(RECORDED))
    model = graphres.build(compiled)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == recorded
    assert list(state_dict_shapes(compiled.graph).items()) == recorded  # the torch-free listing, in order
    model.load_state_dict({k: torch.zeros(s) for k, s in recorded}, strict=True)
    assert len(recorded) == 538


def test_params_and_macs_are_exact():
    compiled = graphres.compile_spec(spec(RECORDED, size=96))
    g = compiled.graph
    assert g.graph["params"] == 33_109_613  # mmdetection's ResNet(depth=50, plugins=RECORDED), counted there
    model = graphres.build(compiled).eval()
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 96, 96))
    assert counter.get_total_flops() == 2 * g.graph["macs"]
    # layer2.0: 128 channels, 8 heads of 16, conv2 output 12x12, keys 6x6; position dim = 128
    fx = g.nodes["layer2.0.gen_attention_block.appr_geom_fc_x"]["meta"]
    assert fx["shape"] == (8, 12, 12, 1, 6)
    assert fx["macs"] == 12 * 6 * 64 * 128 + 8 * 12 * 12 * 6 * 16
    assert fx["params"] == 128 * 64
    fy = g.nodes["layer2.0.gen_attention_block.appr_geom_fc_y"]["meta"]
    assert fy["shape"] == (8, 12, 12, 6, 1)
    content = g.nodes["layer2.0.gen_attention_block.content"]["meta"]
    assert (content["shape"], content["macs"]) == ((8, 144, 36), 8 * 144 * 36 * 16)
    saliency = g.nodes["layer1.0.gen_attention_block1.content"]["meta"]  # '0010': one query row
    assert (saliency["shape"], saliency["macs"]) == ((8, 1, 144), 8 * 144 * 32)
    assert g.nodes["layer1.0.gen_attention_block1.upsample"]["meta"]["shape"] == (256, 24, 24)


@pytest.mark.parametrize("t", ["1111", "0010", "0110", "0001"])
def test_macs_match_flopcounter_per_attention_type(t):
    plugins = [{"cfg": ga(t, position_embedding_dim=16, q_stride=2 if t == "0110" else 1), "position": "after_conv2",
                "stages": [False, True]}]
    compiled = graphres.compile_spec(spec(plugins, size=(48, 64) if t != "0110" else 48, num_stages=2,
                                          out_indices=[1]))
    model = graphres.build(compiled).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, *((48, 64) if t != "0110" else (48, 48))))
    assert counter.get_total_flops() == 2 * compiled.graph.graph["macs"]


def test_initialisation_is_mmcvs_after_mmdetections_init_weights():
    torch.manual_seed(0)
    sd = graphres.build(spec(RECORDED)).state_dict()
    p = "layer3.0.gen_attention_block."
    assert torch.equal(sd[p + "gamma"], torch.zeros(1))
    # GeneralizedAttention.init_weights (called again by mmdetection's): Kaiming uniform, fan_in,
    # a=1 (leaky_relu): std 1/sqrt(fan_in); proj_conv's bias 0
    for name, fan in (("query_conv.weight", 256), ("value_conv.weight", 256), ("proj_conv.weight", 256),
                      ("appr_geom_fc_x.weight", 128)):
        w = sd[p + name]
        assert abs(float(w.std()) * fan ** 0.5 - 1) < 0.03, name
        assert float(w.abs().max()) <= (3 / fan) ** 0.5, name
    assert float(sd[p + "proj_conv.bias"].abs().max()) == 0.0
    # appr_bias, geom_bias: uniform in +-1/sqrt(2 * dim) (dim 32), untouched by init_weights
    for name in ("appr_bias", "geom_bias"):
        b = sd[p + name]
        assert float(b.abs().max()) <= 1 / 64 ** 0.5 and float(b.std()) > 0.05, name


def test_gamma_zero_makes_the_plugin_the_identity():
    model = graphres.build(spec([{"cfg": ga("1111"), "position": "after_conv2", "stages": [False, True]}], size=48,
                                num_stages=2, out_indices=[1])).eval()
    block, bx, by = block_io(model, "layer2", 1, torch.randn(1, 3, 48, 48))
    with torch.no_grad():
        expected = bottleneck(block, bx, "after_conv2", lambda t: t)
    assert torch.equal(by, expected)


def test_op_rules():
    bias, pos, resize = OPS["bias"], OPS["position_energy"], OPS["resize"]
    a = {"dims": (8, 1, 16), "alone": False, "fan": 32}
    assert bias.shape(a, [(8, 36, 16)]) == (8, 36, 16)
    assert bias.shape(a | {"alone": True}, [(128, 6, 6)]) == (8, 1, 16)
    assert bias.params(a, 8, 8, {}) == 128 and bias.tensors(a, 8, 8, {}) == {"": (128,)}
    assert bias.torch.module(a, 8, 8, {}, False) == "parameter(128, 0, fan=32)"
    assert bias.torch.call_attrs(a, "self.b", ["q"], False) == "q + self.b.view(1, 8, 1, 16)"
    assert bias.torch.call_attrs(a | {"alone": True}, "self.b", ["q"], False) == \
        "self.b.view(1, 8, 1, 16).repeat(q.shape[0], 1, 1, 1)"
    p = {"vertical": False, "heads": 8, "dim": 16, "feat": 16, "magnitude": 1, "q_stride": 1, "kv_stride": 2,
         "wave_length": 1000, "transposed": False}
    shapes = [(8, 48, 16), (128, 6, 8), (128, 3, 4)]
    assert pos.shape(p, shapes) == (8, 6, 8, 1, 4)
    assert pos.shape(p | {"vertical": True}, shapes) == (8, 6, 8, 3, 1)
    assert pos.shape(p, [(8, 1, 16)] + shapes[1:]) == (8, 1, 8, 1, 4)
    assert pos.macs_shape(p, shapes, (8, 6, 8, 1, 4)) == 8 * 4 * 8 * 128 + 8 * 6 * 8 * 4 * 16
    assert pos.tensors(p, 8, 8, {}) == {"weight": (128, 8)}
    assert pos.check_shape(p | {"transposed": True}, shapes)[0] == (
        "position_energy at {node}: transposed: true (mmcv's query-and-position term without geom_bias) needs a "
        "square map, but the query map is 6x8: mmcv fails there too")
    assert pos.check_shape(p | {"feat": 18}, shapes)[0].startswith("position_energy at {node}: feat = 18 is not")
    assert pos.torch.module(p, 8, 8, {}, False) == "RelativePosition(16, 8, 16, kv_stride=2)"
    assert resize.shape({}, [(64, 1, 1), (64, 12, 12)]) == (64, 12, 12)


def errors(source):
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(source)
    return [(d.code, d.message) for d in e.value.diagnostics]


def test_shorthand_errors():
    def one(**cfg):
        return errors(spec([{"cfg": {"type": "GeneralizedAttention", **cfg}, "position": "after_conv2"}]))
    assert one(attention_type="111") == [
        ("E127", "GeneralizedAttention attention_type '111' is not a string of four 0/1 bits")]
    assert one(attention_type="1211") == [
        ("E127", "GeneralizedAttention attention_type '1211' is not a string of four 0/1 bits")]
    assert one(attention_type=1111) == [
        ("E127", "GeneralizedAttention attention_type 1111 is not a string of four 0/1 bits")]
    assert one(attention_type="0000") == [
        ("E127", "GeneralizedAttention attention_type '0000' uses no term: mmcv attends uniformly (the mean of the "
                 "values at every position), which graphres does not build")]
    assert one(num_heads=0) == [("E128", "GeneralizedAttention num_heads = 0 must be >= 1")]
    assert one(kv_stride=0) == [("E128", "GeneralizedAttention kv_stride = 0 must be >= 1")]
    assert one(q_stride=-1) == [("E128", "GeneralizedAttention q_stride = -1 must be >= 1")]
    assert one(position_embedding_dim=6) == [
        ("E128", "GeneralizedAttention position_embedding_dim = 6 is not a multiple of 4: mmcv's sine embedding has "
                 "4 values but its appr_geom_fc Linear takes 3 (a shape error in forward)")]
    assert one(heads=8) == [("E010", "unknown key 'heads' in a GeneralizedAttention cfg")]
    # position_embedding_dim does not matter without a position term (mmcv builds no Linear then)
    graphres.compile_spec(spec([{"cfg": ga("1010", position_embedding_dim=6), "position": "after_conv2"}]))


def test_errors_are_located(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("graphres: 1\nbackbone:\n  type: ResNet\n  depth: 50\n  plugins:\n"
                    "    - cfg: {type: GeneralizedAttention, attention_type: '10x1'}\n      position: after_conv2\n")
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    d = e.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.col) == ("E127", 6, 58)


def test_w123_and_the_square_map_error():
    compiled = graphres.compile_spec(spec([{"cfg": ga("1100", position_embedding_dim=16), "position": "after_conv2",
                                            "stages": [False, True]}], size=48, num_stages=2, out_indices=[1]))
    assert [(d.code, d.message) for d in compiled.warnings] == [
        ("W123", "GeneralizedAttention attention_type '1100': without its fourth bit, mmcv's query-position term reads "
                 "the query with height and width swapped in its y part, and fails on maps that are not square")]
    found = errors(spec([{"cfg": ga("0100", position_embedding_dim=16), "position": "after_conv2",
                          "stages": [False, True]}], size=(48, 64), num_stages=2, out_indices=[1]))
    assert [c for c, _ in found] == ["W123", "E120"] and "needs a square map, but the query map is 6x8" in found[1][1]


def test_explicit_form_round_trip():
    compiled = graphres.compile_spec(spec(RECORDED))
    explicit = compiled.explicit()
    again = graphres.compile_spec(explicit)
    assert again.graph.graph["params"] == compiled.graph.graph["params"]
    assert state_dict_shapes(again.graph) == state_dict_shapes(compiled.graph)
    blocks = {p["name"]: p["block"] for p in explicit["stages"][3]["plugins"]}
    assert blocks == {"gen_attention_block": "gen_attention_block",
                      "gen_attention_block_p": "gen_attention_position_block"}


def test_torchscript_export_and_standalone_source(tmp_path):
    plugins = [{"cfg": ga("1111", spatial_range=2, q_stride=2), "position": "after_conv2",
                "stages": [False, False, True]},
               {"cfg": ga("0010", postfix=1), "position": "after_conv3", "stages": [False, True, False]}]
    compiled = graphres.compile_spec(spec(plugins, size=64, num_stages=3, out_indices=[2]))
    model = randomise(graphres.build(compiled))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)[0]
        assert torch.equal(torch.jit.script(model)(x)[0], y)
        assert torch.equal(torch.export.export(model, (x,)).module()(x)[0], y)
    source = tmp_path / "m.py"
    source.write_text(graphres.backends.codegen.generate(compiled.graph, standalone=True).source)
    import importlib.util
    spec_ = importlib.util.spec_from_file_location("ga_standalone", source)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    standalone = mod.build_model()
    standalone.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(standalone.eval()(x)[0], y)
