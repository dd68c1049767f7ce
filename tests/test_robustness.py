"""User mistakes never become tracebacks: randomly damaged specs either compile or raise SpecError.

Each example takes a shipped spec, replaces, deletes or adds a few values anywhere in it (with
values of the wrong type, out of range, huge, empty, expressions, names), and compiles it."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphres
from graphres import SpecError

from conftest import ROOT

BASES = [yaml.safe_load((ROOT / "specs" / f"{n}.yaml").read_text())
         for n in ("resnet50", "se_resnet18", "mmdet_faster_rcnn_r50", "resnet18")]
VALUES = [None, -1, 0, 1, 2, 3, 7, "x", "caffe", "BN", "GN", [], {}, 1.5, True, False, 10 ** 12, [1, 2],
          {"a": 1}, "planes * 2", "in_channels", "1 if x else 2", -3, "input", "conv1", "planes ** 99"]
KEYS = ["x", "groups", "width", "style", "norm", "from", "when", "op", "seq", "dilation", "blocks", "_base_"]


def paths(node, path=()):
    if path:
        yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, path + (i,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(1, 3))
def test_damaged_specs_compile_or_raise_spec_error(rng, edits):
    spec = copy.deepcopy(rng.choice(BASES))
    for _ in range(edits):
        path = rng.choice(list(paths(spec)))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        roll = rng.random()
        if roll < 0.6:
            parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(parent, dict) and roll < 0.8:
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
    try:
        graphres.compile_spec(spec)
    except SpecError as e:
        assert e.diagnostics and all(d.code and d.message for d in e.diagnostics)
