import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@pytest.fixture
def write_spec(tmp_path):
    """Write a dedented spec to a file and return its path."""
    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path
    return write


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphres", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def randomise(model, seed=0):
    """Random weights (seeded) of a scale that keeps a network's activations of order 1 (convs and
    linears 0.05, norms 1 + 0.3 noise, the rest 0.3), non-float tensors (a uint8 mask) kept; eval mode."""
    import torch  # here, not at the top: some tests check that graphres alone never imports torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():  # local_constraint_map
                continue
            scale = 0.05 if "conv" in name or "fc" in name else 0.3
            p.copy_(torch.randn_like(p) * scale + (1 if "bn" in name and name.endswith("weight") else 0))
    return model.eval()


def block_io(model, layer, index, x):
    """The block ``layer[index]`` of ``model`` and its input and output during ``model(x)``."""
    import torch
    seen = {}
    block = getattr(model, layer)[index]
    handle = block.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return block, seen["x"], seen["y"]
