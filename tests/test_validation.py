"""Every validation rule: the exact message, line and column, reported all in one run."""
import textwrap

import pytest

import graphres
from graphres import SpecError

R50 = """
graphres: 1
name: r
input: {channels: 3, size: [224, 224]}
stages:
  - {block: bottleneck, blocks: 3, planes: 64, stride: 1}
  - {block: bottleneck, blocks: 4, planes: 128, stride: 2}
  - {block: bottleneck, blocks: 6, planes: 256, stride: 2}
  - {block: bottleneck, blocks: 3, planes: 512, stride: 2}
"""


@pytest.fixture
def diagnose(tmp_path, monkeypatch):
    """Compile a spec text from spec.yaml; return its diagnostics (it must fail)."""
    monkeypatch.chdir(tmp_path)

    def run(text: str, overrides=()):
        (tmp_path / "spec.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
        with pytest.raises(SpecError) as e:
            graphres.compile_spec("spec.yaml", overrides)
        return e.value.diagnostics
    return run


@pytest.fixture
def check(diagnose):
    """Compile a spec text from spec.yaml; return the headlines of its diagnostics."""
    return lambda text, overrides=(): [d.headline() for d in diagnose(text, overrides)]


def test_unknown_top_level_key_did_you_mean(check):
    assert check(R50 + "out_indice: [0]\n") == [
        "spec.yaml:9:1: error[E010]: unknown key 'out_indice' in the spec"]


def test_unknown_key_hint(diagnose):
    assert diagnose(R50 + "frozen_stage: 1\n")[0].hint == "did you mean 'frozen_stages'?"


def test_wrong_types(check):
    assert check(R50 + "frozen_stages: one\nnorm_eval: 1\n") == [
        "spec.yaml:9:16: error[E011]: frozen_stages must be an integer, found 'one' (a string)",
        "spec.yaml:10:12: error[E011]: norm_eval must be a boolean, found 1 (an integer)"]


def test_missing_stages(check):
    assert check("graphres: 1\nname: x\n") == ["spec.yaml:1:1: error[E012]: the spec needs the key 'stages'"]


def test_stride_and_dilation_at_least_one(check):
    text = R50.replace("planes: 128, stride: 2}", "planes: 128, stride: 0}").replace(
        "planes: 512, stride: 2}", "planes: 512, stride: 1, dilation: 0}")
    assert check(text) == [
        "spec.yaml:6:57: error[E014]: stages[1].stride = 0 must be >= 1",
        "spec.yaml:8:70: error[E014]: stages[3].dilation = 0 must be >= 1"]


def test_per_block_dilation_length(check):
    text = R50.replace("planes: 512, stride: 2}", "planes: 512, stride: 1, dilation: [1, 2]}")
    assert check(text) == ["spec.yaml:8:70: error[E015]: stages[3].dilation lists 2 values for 3 blocks"]


@pytest.mark.parametrize("value,expected", [
    ("[]", ["spec.yaml:9:14: error[E033]: out_indices is empty: the backbone would return nothing"]),
    ("[0, 4]", ["spec.yaml:9:18: error[E033]: out_indices[1] = 4 is out of range for 4 stages (0..3)"]),
    ("[1, 1]", ["spec.yaml:9:18: error[E033]: out_indices[1] = 1 repeats out_indices[0]"]),
    ("[-1]", ["spec.yaml:9:15: error[E033]: out_indices[0] = -1 is negative"]),
])
def test_out_indices(check, value, expected):
    assert check(R50 + f"out_indices: {value}\n") == expected


def test_negative_out_index_hint(diagnose):
    assert diagnose(R50 + "out_indices: [-1]\n")[0].hint == "indices count stages from 0: use 3 for stage 3 (layer4)"


@pytest.mark.parametrize("value", [5, -2])
def test_frozen_stages_range(check, value):
    assert check(R50 + f"frozen_stages: {value}\n") == [
        f"spec.yaml:9:16: error[E034]: frozen_stages = {value} is out of range for 4 stages (-1..4)"]


def test_style(check):
    # a block_args value is checked for every stage but reported once, at block_args
    assert check(R50 + "block_args: {style: cafe}\n") == [
        "spec.yaml:9:21: error[E013]: block_args.style = 'cafe' is not one of 'pytorch', 'caffe'"]
    assert check(R50.replace("planes: 64, stride: 1}", "planes: 64, stride: 1, style: cafe}")) == [
        "spec.yaml:5:66: error[E013]: stages[0].style = 'cafe' is not one of 'pytorch', 'caffe'"]


def test_block_args_key_no_block_has(check):
    assert check(R50 + "block_args: {stlye: caffe}\n") == [
        "spec.yaml:9:14: error[E010]: block_args sets 'stlye', a parameter of none of the stages' blocks"]


@pytest.mark.parametrize("norm,expected", [
    ("{type: BatchNorm}", "spec.yaml:9:14: error[E013]: norm.type = 'BatchNorm' is not one of 'BN', 'SyncBN', 'FrozenBN', 'GN', 'IN'"),
    ("{type: LN}", "spec.yaml:9:14: error[E013]: norm type 'LN' is not supported: it normalises the last "
                   "dimension and fails on NCHW feature maps"),
    ("{type: GN}", "spec.yaml:9:7: error[E012]: missing required key 'norm.num_groups'"),
    ("{type: BN, num_groups: 2}", "spec.yaml:9:18: error[E017]: num_groups only applies to GN, not BN"),
    ("{type: BN, momentun: 0.1}", "spec.yaml:9:18: error[E010]: unknown key 'momentun' in norm"),
])
def test_norm_options(check, norm, expected):
    assert check(R50 + f"norm: {norm}\n") == [expected]


def test_gn_groups_must_divide_channels(check):
    # one diagnostic, at num_groups, naming each channel count that does not fit and its first layer
    assert check(R50 + "norm: {type: GN, num_groups: 24}\n") == [
        "spec.yaml:9:30: error[E031]: GN num_groups = 24 does not divide the channels of 6 norm layer sizes: "
        "64 (gn1), 256 (layer1.0.gn3), 128 (layer2.0.gn1), 512 (layer2.0.gn3), 1024 (layer3.0.gn3), "
        "2048 (layer4.0.gn3)"]


def test_unknown_block_and_stem(check):
    text = R50.replace("bottleneck, blocks: 3, planes: 64", "bottlenek, blocks: 3, planes: 64") + "stem: {type: deeep}\n"
    assert check(text) == [
        "spec.yaml:9:14: error[E020]: stem type 'deeep' is not a known stem",
        "spec.yaml:5:13: error[E020]: block type 'bottlenek' is not a known block type"]


def test_block_args_unknown_parameter(check):
    text = R50.replace("planes: 64, stride: 1}", "planes: 64, stride: 1, widht: 3}")
    assert check(text) == ["spec.yaml:5:59: error[E010]: block 'bottleneck' has no parameter 'widht'"]


def test_spatial_size_reaches_zero(check):
    text = """
    graphres: 1
    input: {size: [8, 8]}
    blocks:
      valid3x3:
        params: {planes: int, stride: {type: int, default: 1}}
        out_channels: planes
        layers:
          - {name: conv, op: conv, out: planes, kernel: 3, stride: stride, padding: 0}
    stages:
      - {block: valid3x3, blocks: 1, planes: 8}
    """
    assert check(text) == [
        "spec.yaml:10:5: error[E032]: spatial size reaches zero at layer1.0.conv in stage 0 (layer1): "
        "a 2x2 input becomes 0x0 for the input size 8x8"]


def test_dilated_stage_that_strides_warns(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(R50.lstrip("\n").replace("planes: 512, stride: 2}", "planes: 512, stride: 2, dilation: 2}"))
    compiled = graphres.compile_spec(path)
    assert [d.headline() for d in compiled.warnings] == [
        f"{path}:8:57: warning[W001]: stages[3] (layer4) has stride 2 and dilation 2: it both downsamples and dilates"]


def test_all_errors_reported_in_one_run(check):
    text = R50 + "frozen_stages: 9\nout_indices: [7]\nnorm: {type: XN}\n"
    assert [h.split(": error")[1].split(":")[0] for h in check(text)] == ["[E013]", "[E033]", "[E034]"]


# ---- user-declared blocks -------------------------------------------------------------------

BLOCK = """
graphres: 1
input: {{size: [32, 32]}}
blocks:
  mine:
    params: {{planes: int, stride: {{type: int, default: 1}}}}
    out_channels: {out}
    layers:
{layers}
stages:
  - {{block: mine, blocks: 2, planes: 16}}
"""


def block_spec(layers: str, out: str = "planes") -> str:
    return BLOCK.format(layers=textwrap.indent(textwrap.dedent(layers).strip("\n"), "      "), out=out)


def test_unknown_op(check):
    assert check(block_spec("- {name: c, op: convv, out: planes, kernel: 3}")) == [
        "spec.yaml:8:23: error[E021]: unknown op 'convv'"]


def test_unknown_attribute(check):
    assert check(block_spec("- {name: c, op: conv, out: planes, kernal: 3}")) == [
        "spec.yaml:8:42: error[E010]: unknown key 'kernal' in 'conv' layer",
        "spec.yaml:8:9: error[E012]: 'conv' layer needs 'kernel'"]


def test_expression_errors_are_located_at_their_column(check):
    assert check(block_spec("- {name: c, op: conv, out: 'planes ** 2', kernel: 3}")) == [
        "spec.yaml:8:35: error[E022]: bad expression in conv.out: operator '**' is not allowed"]
    assert check(block_spec("- {name: c, op: conv, out: planes * widht, kernel: 3}")) == [
        "spec.yaml:8:43: error[E022]: unknown name 'widht' in conv.out"]


def test_channel_mismatch_in_add(check):
    layers = """
    - {name: a, op: conv, out: planes, kernel: 3}
    - {name: b, op: conv, out: planes * 2, kernel: 3, from: input}
    - {op: add, from: [a, b]}
    """
    assert check(block_spec(layers)) == [
        "spec.yaml:10:9: error[E030]: 'add' inputs have different channels: layer1.0.a has 16, layer1.0.b has 32"]


def test_declared_out_channels_mismatch(check):
    assert check(block_spec("- {name: c, op: conv, out: planes, kernel: 3}", out="planes * 4")) == [
        "spec.yaml:6:19: error[E030]: block 'mine' declares out_channels = 64 but its last layer gives 16 channels"]


def test_bad_layer_reference(check):
    layers = """
    - {name: a, op: conv, out: planes, kernel: 3}
    - {op: add, from: [a, shortcutt]}
    """
    assert check(block_spec(layers)) == [
        "spec.yaml:9:29: error[E023]: layer input 'shortcutt' is not an earlier layer of block 'mine'"]


def test_groups_must_divide_channels(check):
    assert check(block_spec("- {name: c, op: conv, out: planes, kernel: 3, groups: 3}")) == [
        "spec.yaml:8:61: error[E030]: conv groups = 3 must divide its 64 input and 16 output channels"]


def test_error_in_builtin_block_points_at_the_stage(check):
    # groups 4 does not divide an inner width of 30: the error points at the stage that asked for
    # the block, not into the built-in block file
    text = R50 + "block_args: {groups: 4, width: 30}\n"
    assert check(text) == [
        "spec.yaml:5:5: error[E030]: conv groups = 4 must divide its 30 input and 30 output channels"]


def test_block_parameter_without_default_must_be_given(check):
    assert check(block_spec("- {name: c, op: conv, out: planes, kernel: 3, stride: s}").replace(
        "stride: {type: int, default: 1}", "s: int")) == [
        "spec.yaml:10:5: error[E012]: block 'mine' needs the parameter 's'"]


def test_implicit_names_cannot_be_parameters_and_lets_cannot_read_out_channels(check):
    text = block_spec("- {name: c, op: conv, out: planes, kernel: 3}").replace(
        "params: {planes: int,", "params: {planes: int, out_channels: int,").replace(
        "    out_channels: planes", "    let: {half: out_channels // 2}\n    out_channels: planes")
    assert check(text) == [
        "spec.yaml:5:27: error[E013]: 'out_channels' is set by graphres for every block and cannot be a parameter",
        "spec.yaml:6:17: error[E022]: unknown name 'out_channels' in let 'half'"]


def test_init_checkpoint_without_type_means_pretrained(tmp_path):
    spec = graphres.load_spec({"stages": [{"block": "basic", "blocks": 1, "planes": 8}],
                               "init": {"checkpoint": "w.pth"}})
    assert spec.init["type"] == "pretrained" and spec.init["checkpoint"] == "w.pth"


def test_init_default_with_checkpoint_conflicts(check):
    assert check(R50 + "init: {type: default, checkpoint: w.pth}\n") == [
        "spec.yaml:9:23: error[E017]: init.checkpoint is set but init.type is 'default', which loads nothing"]


def test_absurd_sizes_are_refused_before_building(check):
    assert check(R50.replace("blocks: 3, planes: 64", "blocks: 3000000, planes: 64")) == [
        "spec.yaml:5:33: error[E014]: stages[0].blocks = 3000000 must be <= 1000"]
    assert check(R50.replace("planes: 512", "planes: 1000000")) == [
        "spec.yaml:8:5: error[E014]: conv.out = 4000000 channels is more than graphres builds (1048576)"]


@pytest.mark.parametrize("name, meant", [("BatchNorm2d", "BN"), ("GroupNorm", "GN"), ("SyncBatchNorm", "SyncBN"),
                                         ("InstanceNorm2d", "IN"), ("FrozenBatchNorm2d", "FrozenBN")])
def test_torch_norm_class_names_get_the_short_name(diagnose, name, meant):
    d = diagnose(R50, [f"norm.type={name}"])[0]
    assert (d.code, d.hint) == ("E013", f"did you mean '{meant}'? graphres uses the short names of mmcv's norm_cfg")


def test_mmcv_2d_norm_aliases_are_accepted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(R50)
    for alias, short in (("BN2d", "BN"), ("IN2d", "IN")):
        assert graphres.compile_spec(path, [f"norm.type={alias}"]).spec.norm["type"] == short


def test_w003_a_dilated_kernel_wider_than_its_input_once_per_stage_and_none_without_dilation():
    c = graphres.compile_spec("specs/resnet50.yaml", ["output_stride=8", "input.size=[64,64]"])
    w003 = [d for d in c.warnings if d.code == "W003"]
    # layer4.0 keeps layer3's dilation 2 (5 pixels on an 8x8 map); layer4.1 onwards run at 4
    assert [(d.message, str(d.span)) for d in w003] == [(
        "dilated conv layer4.1.conv2 in layer4: its 3x3 kernel with dilation 4 spans 9 pixels but its input "
        "is only 8x8, so the outer taps read nothing but zero padding", "specs/resnet50.yaml:13:70")]
    assert not [d for d in graphres.compile_spec("specs/resnet50.yaml", ["output_stride=8"]).warnings
                if d.code == "W003"]
    assert not [d for d in graphres.compile_spec("specs/resnet50.yaml", ["input.size=[32,32]"]).warnings
                if d.code == "W003"]
