"""Specs given as Python data, as configs loaded by ``mmengine.Config.fromfile`` hold them: dict
subclasses (ConfigDict), objects with ``.to_dict()``, tuples; and mmcv's ``conv_cfg=dict(type='Conv')``."""
import pytest

import graphres
from graphres import SpecError
from graphres.spec.emit import to_explicit


class ConfigDict(dict):
    """Like mmengine's ConfigDict: a dict subclass whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Frozen:
    """Not a Mapping at all, but convertible, as objects with ``to_dict()`` are."""

    def __init__(self, **kw):
        self._kw = kw

    def to_dict(self):
        return dict(self._kw)


def mmdet_backbone() -> ConfigDict:
    """The backbone of faster-rcnn_r50_fpn_1x_coco.py, as Config.fromfile returns it."""
    return ConfigDict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                      norm_cfg=ConfigDict(type="BN", requires_grad=True), norm_eval=True, style="pytorch")


def test_config_dict_with_tuples_compiles_as_the_yaml_spec():
    compiled = graphres.compile_spec({"graphres": 1, "backbone": mmdet_backbone()})
    yaml_spec = graphres.compile_spec("specs/mmdet_faster_rcnn_r50.yaml")
    assert compiled.graph.graph["params"] == yaml_spec.graph.graph["params"] == 23_508_032
    assert compiled.graph.graph["macs"] == yaml_spec.graph.graph["macs"] == 4_087_136_256
    assert to_explicit(compiled.spec)["out_indices"] == [0, 1, 2, 3]
    assert to_explicit(compiled.spec)["norm"] == {"type": "BN", "requires_grad": True, "eps": 1e-05}


def test_outer_mapping_may_be_a_config_dict_and_overrides_apply():
    spec = ConfigDict(graphres=1, backbone=mmdet_backbone())
    assert graphres.compile_spec(spec, ["backbone.depth=101"]).graph.graph["params"] == 42_500_160
    assert spec.backbone.depth == 50  # the caller's config is left as it was
    assert spec.backbone.out_indices == (0, 1, 2, 3)


def test_tuples_in_the_explicit_form():
    spec = {"graphres": 1, "stem": {"type": "conv7x7", "channels": 64},
            "input": {"channels": 3, "size": (224, 224)},
            "stages": ({"block": "basic", "blocks": 2, "planes": 64, "stride": 1},
                       {"block": "basic", "blocks": 2, "planes": 128, "stride": 2}),
            "out_indices": (0, 1)}
    g = graphres.compile_spec(spec).graph
    assert [o["index"] for o in g.graph["outputs"]] == [0, 1]
    assert tuple(g.graph["input_size"]) == (224, 224)


def test_objects_with_to_dict_are_mappings():
    spec = Frozen(graphres=1, backbone=Frozen(type="ResNet", depth=18, out_indices=(3,)))
    g = graphres.compile_spec(spec).graph
    assert g.graph["params"] == 11_176_512
    assert [o["index"] for o in g.graph["outputs"]] == [3]


def test_to_dict_that_fails_is_a_located_error():
    class Broken:
        def to_dict(self):
            raise RuntimeError("no")

    with pytest.raises(SpecError) as e:
        graphres.load_spec({"graphres": 1, "backbone": Broken()})
    (d,) = e.value.diagnostics
    assert (d.code, d.message, d.hint, d.span.file) == (
        "E011", "backbone: Broken.to_dict() failed: RuntimeError", "pass plain dicts and lists, or a Mapping", "<dict>")


def test_to_dict_that_gives_no_mapping_is_a_located_error():
    class Odd:
        def to_dict(self):
            return [1]

    with pytest.raises(SpecError) as e:
        graphres.load_spec({"graphres": 1, "backbone": Odd()})
    (d,) = e.value.diagnostics
    assert (d.code, d.message, d.hint) == ("E011", "backbone: to_dict() gave list, not a mapping",
                                           "pass plain dicts and lists")


def test_wrong_types_inside_tuples_are_still_reported():
    with pytest.raises(SpecError) as e:
        graphres.load_spec({"graphres": 1, "backbone": ConfigDict(type="ResNet", depth=50, out_indices=(0, "x"))})
    assert [(d.code, d.message) for d in e.value.diagnostics] == [
        ("E011", "out_indices[1] must be an integer, found 'x' (a string)")]


def test_self_containing_tuple_is_refused_not_a_recursion_error():
    items: list = []
    items.append(items)
    with pytest.raises(SpecError) as e:
        graphres.load_spec({"graphres": 1, "backbone": ConfigDict(type="ResNet", depth=50, out_indices=(items,))})
    assert [d.code for d in e.value.diagnostics] == ["E062"]


@pytest.mark.parametrize("conv_type", ["Conv", "Conv2d"])
def test_conv_cfg_conv_is_mmcvs_alias_of_conv2d(conv_type):
    spec = graphres.load_spec({"graphres": 1, "backbone": ConfigDict(
        type="ResNet", depth=18, conv_cfg=ConfigDict(type=conv_type))})
    assert spec.conv == {"type": "Conv2d"}
    plain = graphres.load_spec({"graphres": 1, "backbone": {"type": "ResNet", "depth": 18}})
    assert to_explicit(spec) == to_explicit(plain)


def test_conv_cfg_conv_in_yaml(write_spec):
    path = write_spec("""
        graphres: 1
        backbone: {type: ResNet, depth: 18, conv_cfg: {type: Conv}}
        """)
    assert graphres.load_spec(path).conv == {"type": "Conv2d"}


def test_conv_alias_stays_a_shorthand_spelling(write_spec):
    path = write_spec("""
        graphres: 1
        stages: [{block: basic, blocks: 1, planes: 64}]
        conv: {type: Conv}
        """)
    with pytest.raises(SpecError) as e:
        graphres.load_spec(path)
    assert [d.code for d in e.value.diagnostics] == ["E013"]


def test_schema_accepts_the_conv_alias_in_conv_cfg_only():
    import jsonschema
    from graphres.spec.schema import spec_schema
    validator = jsonschema.Draft202012Validator(spec_schema())
    ok = {"graphres": 1, "backbone": {"type": "ResNet", "depth": 18, "conv_cfg": {"type": "Conv"}}}
    assert list(validator.iter_errors(ok)) == []
    bad = {"graphres": 1, "stages": [{"block": "basic", "blocks": 1, "planes": 64}], "conv": {"type": "Conv"}}
    assert [e.validator for e in validator.iter_errors(bad)] != []
