"""The block language's composition features: blocks that use blocks (names nest, cycles are
refused), branches merged by concat in a defined operand order, and per-block stage arguments."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import graphres
from graphres import SpecError, ir

GATE_AND_MIXED = """
    graphres: 1
    input: {size: 32}
    blocks:
      gate:
        params: {reduction: {type: int, default: 4, min: 1}}
        let: {squeezed: "max(in_channels // reduction, 1)"}
        out_channels: in_channels
        layers:
          - {name: pool, op: global_avgpool}
          - {name: fc1, op: conv, out: squeezed, kernel: 1, bias: true}
          - {name: act, op: act, type: relu}
          - {name: fc2, op: conv, out: in_channels, kernel: 1, bias: true}
          - {name: sig, op: act, type: sigmoid}
          - {name: scale, op: mul, from: [input, sig]}
      mixed:
        params:
          planes: {type: int, min: 2}
          stride: {type: int, default: 1}
          reduction: {type: int, default: 4}
        let: {half: planes // 2}
        out_channels: planes
        layers:
          - {name: a, op: conv, out: half, kernel: 1, stride: stride, from: input}
          - {name: b, op: conv, out: planes - half, kernel: 3, stride: stride, from: input}
          - {name: cat, op: concat, from: [a, b]}
          - {name: "{norm}1", op: norm}
          - {name: se, block: gate, reduction: reduction}
          - {name: relu, op: act}
    stages:
      - {block: mixed, blocks: 2, planes: 16}
      - {block: mixed, blocks: 1, planes: 33, stride: 2, reduction: 3}
    """


def test_nested_block_names_channels_and_params(write_spec):
    compiled = graphres.compile_spec(write_spec(GATE_AND_MIXED))
    g = compiled.graph
    assert g.nodes["layer2.0.se.fc1"][ir.OUT_CH] == 11  # 33 // 3
    assert g.nodes["layer1.0.cat"][ir.OUT_CH] == 16
    model = graphres.build(compiled)
    keys = set(model.state_dict())
    assert {"layer1.0.se.fc1.weight", "layer1.0.se.fc1.bias", "layer1.0.se.fc2.weight", "layer2.0.a.weight",
            "layer2.0.b.weight", "layer2.0.bn1.running_mean"} <= keys
    # counted by hand: stem conv 3*64*49 + bn 128; per block: a, b convs, bn, gate convs with biases
    def block(cin, planes, r):
        half, sq = planes // 2, max(planes // r, 1)
        return cin * half + 9 * cin * (planes - half) + 2 * planes + planes * sq + sq + sq * planes + planes
    expected = 3 * 64 * 49 + 128 + block(64, 16, 4) + block(16, 16, 4) + block(16, 33, 3)
    assert g.graph["params"] == expected == sum(p.numel() for p in model.parameters())


def test_concat_operand_order_and_gate_numerics(write_spec):
    model = graphres.build(write_spec(GATE_AND_MIXED)).eval()
    blk = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p))
        blk.bn1.running_var.uniform_(0.5, 1.5)
        cat = torch.cat([blk.a(x), blk.b(x)], dim=1)  # 'from: [a, b]': a's channels first
        y = blk.bn1(cat)
        gate = torch.sigmoid(blk.se.fc2(torch.relu(blk.se.fc1(y.mean(dim=(2, 3), keepdim=True)))))
        expected = torch.relu(y * gate)
        torch.testing.assert_close(blk(x), expected, rtol=1e-5, atol=1e-5)


def test_concat_and_nested_macs_equal_flop_counter(write_spec):
    compiled = graphres.compile_spec(write_spec(GATE_AND_MIXED))
    model = graphres.build(compiled).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * compiled.graph.graph["macs"]


def test_concat_spatial_sizes_must_agree(write_spec):
    path = write_spec("""
        graphres: 1
        input: {size: 32}
        blocks:
          bad:
            params: {planes: int}
            out_channels: planes * 2
            layers:
              - {name: a, op: conv, out: planes, kernel: 1, stride: 2}
              - {name: b, op: conv, out: planes, kernel: 1, from: input}
              - {name: cat, op: concat, from: [a, b]}
        stages: [{block: bad, blocks: 1, planes: 8}]
        """)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.headline() for d in e.value.diagnostics] == [
        f"{path}:11:10: error[E030]: 'concat' at layer1.0.cat joins tensors of spatial sizes 4x4 and 8x8"]


def errors(write_spec, text):
    path = write_spec(text)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    return [d.headline().replace(str(path), "spec.yaml") for d in e.value.diagnostics]


def test_mutual_recursion_names_the_cycle(write_spec):
    assert errors(write_spec, """
        graphres: 1
        blocks:
          a:
            params: {planes: int}
            out_channels: planes
            layers:
              - {name: conv1, op: conv, out: planes, kernel: 3}
              - {name: inner, block: b, width: planes}
          b:
            params: {width: int}
            out_channels: width
            layers:
              - {name: again, block: a, planes: width}
        stages: [{block: a, blocks: 1, planes: 8}]
        """) == ["spec.yaml:8:30: error[E050]: block 'a' uses itself: a -> b -> a"]


def test_block_use_mistakes_are_located(write_spec):
    assert errors(write_spec, """
        graphres: 1
        blocks:
          a:
            params: {planes: int}
            out_channels: planes
            layers:
              - {name: conv1, op: conv, out: planes, kernel: 3}
          b:
            params: {width: int}
            out_channels: width
            layers:
              - {name: x, block: gatee, width: width}
              - {name: y, block: a, widht: width}
              - {name: z, block: conv7x7, channels: width}
        stages: [{block: b, blocks: 1, width: 8}]
        """) == [
        "spec.yaml:12:26: error[E020]: block type 'gatee' is not a known block type",
        "spec.yaml:13:29: error[E010]: block 'a' has no parameter 'widht'",
        "spec.yaml:13:9: error[E012]: layer 'y' uses block 'a' without its parameter 'planes'",
        "spec.yaml:14:26: error[E020]: block type 'conv7x7' is a stem, not a block",
    ]


def test_block_use_argument_values_are_checked_where_written(write_spec):
    assert errors(write_spec, """
        graphres: 1
        blocks:
          a:
            params: {planes: {type: int, min: 2}}
            out_channels: planes
            layers:
              - {name: conv1, op: conv, out: planes, kernel: 3}
          b:
            params: {width: int}
            out_channels: width
            layers:
              - {name: x, block: a, planes: width - 8}
        stages: [{block: b, blocks: 1, width: 8}]
        """) == ["spec.yaml:12:37: error[E014]: argument planes of block 'a' = 0 must be >= 2"]


def test_unknown_name_in_a_block_argument_is_located_at_its_column(write_spec):
    assert errors(write_spec, """
        graphres: 1
        blocks:
          b:
            params: {width: int}
            out_channels: width
            layers:
              - {name: x, block: basic, planes: width * widht}
        stages: [{block: b, blocks: 1, width: 8}]
        """) == ["spec.yaml:7:49: error[E022]: unknown name 'widht' in basic.planes"]


def test_per_block_arguments_and_a_different_block_type_per_stage():
    compiled = graphres.compile_spec({
        "graphres": 1, "input": {"size": 64},
        "stages": [
            {"block": "bottleneck", "blocks": 3, "planes": 64, "style": ["pytorch", "caffe", "pytorch"]},
            {"block": "bottleneck", "blocks": 2, "planes": 128, "stride": [2, 1], "groups": [1, 4],
             "base_channels": 64, "base_width": 16},
            {"block": "basic", "blocks": 2, "planes": 256, "stride": 2, "dilation": [1, 2]},
        ]})
    g = compiled.graph
    assert g.nodes["layer2.1.conv2"][ir.ATTRS]["groups"] == 4
    assert g.nodes["layer2.1.conv2"][ir.OUT_CH] == 128 * 16 // 64 * 4
    assert g.nodes["layer2.0.conv2"][ir.ATTRS]["groups"] == 1
    assert [g.nodes[f"layer3.{b}.conv1"][ir.ATTRS]["dilation"] for b in (0, 1)] == [1, 2]
    assert g.graph["stages"][2]["block"] == "basic"
    from graphres.spec.emit import to_explicit
    doc = to_explicit(compiled.spec)
    assert doc["stages"][0]["style"] == ["pytorch", "caffe", "pytorch"]
    assert doc["stages"][1]["groups"] == [1, 4] and doc["stages"][1]["stride"] == [2, 1]
    assert to_explicit(graphres.compile_spec(doc).spec) == doc
    model = graphres.build(compiled)
    assert isinstance(model.layer3[1].conv1, nn.Conv2d)


def test_per_block_list_length_is_checked():
    with pytest.raises(SpecError) as e:
        graphres.compile_spec({"graphres": 1, "stages": [{"block": "bottleneck", "blocks": 2, "planes": 64,
                                                          "groups": [1, 2, 4]}]})
    assert [d.message for d in e.value.diagnostics] == ["stages[0].groups lists 3 values for 2 blocks"]


MIXED_STAGE = """
    graphres: 1
    input: {size: 64}
    blocks:
      se:
        params: {reduction: {type: int, default: 16}}
        out_channels: in_channels
        layers:
          - {name: pool, op: global_avgpool}
          - {name: fc1, op: conv, out: in_channels // reduction, kernel: 1, bias: true}
          - {name: relu, op: act}
          - {name: fc2, op: conv, out: in_channels, kernel: 1, bias: true}
          - {name: gate, op: act, type: sigmoid}
          - {name: scale, op: mul, from: [input, gate]}
      se_bottleneck:
        params:
          planes: int
          stride: {type: int, default: 1}
          dilation: {type: int, default: 1}
          reduction: {type: int, default: 16}
        out_channels: planes * 4
        layers:
          - {name: body, block: bottleneck, planes: planes, stride: stride, dilation: dilation}
          - {name: se, block: se, reduction: reduction}
    stages:
      - {block: bottleneck, blocks: 3, planes: 64}
      - {block: [bottleneck, bottleneck, se_bottleneck], blocks: 3, planes: 128, stride: 2, reduction: 8}
    """


def test_a_stage_may_mix_block_types(write_spec):
    compiled = graphres.compile_spec(write_spec(MIXED_STAGE))
    g = compiled.graph
    assert g.nodes["layer2.0.conv2"][ir.ATTRS]["stride"] == 2  # stride: first block only, as ever
    assert g.nodes["layer2.2.body.conv2"][ir.ATTRS]["stride"] == 1
    assert g.nodes["layer2.2.se.fc1"][ir.OUT_CH] == 512 // 8  # reduction goes to the type that declares it
    assert g.graph["stages"][1]["block"] == "bottleneck/se_bottleneck"
    plain = graphres.compile_spec(write_spec(MIXED_STAGE.replace("se_bottleneck], blocks", "bottleneck], blocks")
                                             .replace(", reduction: 8}", "}"), "plain.yaml"))
    assert g.graph["params"] - plain.graph.graph["params"] == 512 * 64 + 64 + 64 * 512 + 512  # one SE gate
    model = graphres.build(compiled)
    assert sum(p.numel() for p in model.parameters()) == g.graph["params"]
    assert "layer2.2.se.fc2.bias" in model.state_dict() and "layer2.1.se.fc2.bias" not in model.state_dict()
    from graphres.spec.emit import to_explicit
    doc = to_explicit(compiled.spec)
    assert doc["stages"][1]["block"] == ["bottleneck", "bottleneck", "se_bottleneck"]
    assert to_explicit(graphres.compile_spec(doc).spec) == doc


def test_mixed_block_types_are_checked(write_spec):
    path = write_spec(MIXED_STAGE.replace("[bottleneck, bottleneck, se_bottleneck]", "[bottleneck, se_botleneck]"))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.message for d in e.value.diagnostics] == ["stages[1].block lists 2 block types for 3 blocks"]
    path = write_spec(MIXED_STAGE.replace("[bottleneck, bottleneck, se_bottleneck]", "[bottleneck, bottleneck, seb]"))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.headline().replace(str(path), "spec.yaml") for d in e.value.diagnostics] == [
        "spec.yaml:26:38: error[E020]: block type 'seb' is not a known block type"]
    path = write_spec(MIXED_STAGE.replace("reduction: 8}", "reduktion: 8}"))
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(path)
    assert [d.message for d in e.value.diagnostics] == [
        "blocks 'bottleneck', 'se_bottleneck' have no parameter 'reduktion'"]


WRAP = """
    graphres: 1
    input: {size: 64}
    blocks:
      wrap:
        params: {planes: int, style: {type: str, default: pytorch}}
        out_channels: planes * 4
        layers:
          - {name: inner, block: bottleneck, planes: planes, style: STYLE, stride: 2}
    stages: [{block: wrap, blocks: 1, planes: 16}]
    """


def test_a_bare_word_is_a_string_argument_unless_it_names_something(write_spec):
    def conv_strides(style):
        g = graphres.compile_spec(write_spec(WRAP.replace("STYLE", style))).graph
        return g.nodes["layer1.0.inner.conv1"][ir.ATTRS]["stride"], g.nodes["layer1.0.inner.conv2"][ir.ATTRS]["stride"]
    assert conv_strides("caffe") == (2, 1)  # the string 'caffe': stride on the 1x1 conv
    assert conv_strides('"\'caffe\'"') == (2, 1)  # the quoted expression means the same
    assert conv_strides("style") == (1, 2)  # the enclosing block's own style (pytorch by default)
    with pytest.raises(SpecError) as e:
        graphres.compile_spec(write_spec(WRAP.replace("STYLE", "cafe")))
    d = e.value.diagnostics[0]
    assert d.headline().split("/")[-1] == ("spec.yaml:8:65: error[E013]: argument style of block 'bottleneck' = "
                                           "'cafe' is not one of 'pytorch', 'caffe'")
    assert d.hint == "did you mean 'caffe'?"
    # an integer parameter takes no bare word: that is an unknown name
    assert errors(write_spec, WRAP.replace("planes: planes", "planes: plane").replace("STYLE", "caffe")) == [
        "spec.yaml:8:50: error[E022]: unknown name 'plane' in bottleneck.planes"]
