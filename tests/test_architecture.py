"""The pipeline's direction holds: parse -> graph -> passes -> backends -> CLI.

Reads every module's imports (without running them) and checks the layering rules of STYLE.md:
torch only in the torch backends, the IR never imports the spec package, passes never import
backends, and the spec package knows nothing of the graph."""
import ast
from pathlib import Path

import pytest

import graphres
from graphres import ir

PKG = Path(graphres.__file__).parent
TORCH_BACKENDS = {"backends/torch_module.py", "backends/runtime.py", "backends/checkpoint.py", "backends/export.py",
                  "backends/layouts.py", "backends/inference.py", "backends/materialise.py",
                  "integrations/openmmlab.py",
                  "integrations/torchvision.py"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = set()
    package = ".".join(("graphres",) + path.relative_to(PKG).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mods.add(".".join(base + ([node.module] if node.module else [])))
            else:
                mods.add(node.module)
    return mods


MODULES = sorted(p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("rel", MODULES)
def test_layering(rel):
    mods = imports(PKG / rel)
    uses_torch = any(m == "torch" or m.startswith("torch.") for m in mods)
    if rel not in TORCH_BACKENDS:
        lazy = rel in ("__init__.py", "cli.py")  # import the torch backends inside functions only
        top = {m for m in imports_top_level(PKG / rel)}
        assert not any(m.startswith("torch") for m in top), f"{rel} imports torch"
        assert lazy or not uses_torch, f"{rel} imports torch"
    if rel == "ir.py":
        assert not any(m.startswith("graphres.spec") for m in mods)
    if rel.startswith("passes/"):
        assert not any(m.startswith("graphres.backends") for m in mods)
    if rel.startswith("spec/"):
        assert not any(m.startswith(("graphres.ir", "graphres.lower", "graphres.passes", "graphres.backends"))
                       for m in mods)
    if rel == "diagnostics.py":
        assert all(not m.startswith("graphres.") for m in mods)


def imports_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_every_module_says_which_stage_it_is():
    for rel in MODULES:
        doc = ast.get_docstring(ast.parse((PKG / rel).read_text()))
        assert doc, f"{rel} has no module docstring"


def test_ir_order_and_ports_are_deterministic():
    g = graphres.compile_spec("specs/resnet18.yaml").graph
    order = ir.topological_order(g)
    assert order[:5] == ["input", "conv1", "bn1", "relu", "maxpool"]
    assert ir.inputs_of(g, "layer2.0.add") == ["layer2.0.bn2", "layer2.0.downsample.1"]
    assert ir.inputs_of(g, "layer2.1.add") == ["layer2.1.bn2", "layer2.0.relu:1"]
    assert ir.dump(g) == ir.dump(graphres.compile_spec("specs/resnet18.yaml").graph)
    assert "  layer1.0.conv1 = conv(maxpool) {bias=False, dilation=1, groups=1, kernel=3, out=64, padding=1, " \
           "stride=1}  -> (64, 56, 56)" in ir.dump(g).splitlines()


def test_no_file_but_the_op_table_switches_on_op_names():
    """Each op rule is written once, in graphres/ops.py: nowhere else compares a value with an op name."""
    from graphres.ops import OPS
    names = set(OPS)
    found = []
    for rel in MODULES:
        if rel == "ops.py" or rel.startswith("spec/"):  # the spec package reads layer keys, not IR ops
            continue
        for node in ast.walk(ast.parse((PKG / rel).read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.Set, ast.List))
                           for e in c.elts if isinstance(e, ast.Constant)]
                hits = [c.value for c in consts if isinstance(c.value, str) and c.value in names]
                if hits:
                    found.append(f"{rel}:{node.lineno}: {hits}")
    assert found == []
