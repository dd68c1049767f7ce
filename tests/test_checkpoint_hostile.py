"""Broken checkpoints: each is refused with a reason about the file, or loads with a warning that
says what is odd about it; never a raw torch error (weights_only=True throughout)."""
import warnings

import pytest
import torch

import graphres
from graphres import CheckpointError, CheckpointWarning
from graphres.backends.export import seeded

from conftest import ROOT, run_cli

SPEC = str(ROOT / "specs" / "resnet18.yaml")


@pytest.fixture(scope="module")
def sd():
    with seeded(1):
        return graphres.build(SPEC).state_dict()


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        graphres.build(SPEC, checkpoint=path)
    return str(e.value)


def _warnings(path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = graphres.build(SPEC, checkpoint=path)
    assert [str(w.message) for w in caught if w.category is CheckpointWarning] == model.load_report.warnings
    return model.load_report.warnings


def test_non_string_key(tmp_path, sd):
    path = _save(tmp_path, "k.pth", {**sd, 0: torch.zeros(1), ("a", 1): torch.zeros(1)})
    assert _error(path) == (f"checkpoint '{path}' has 2 keys that are not a string (0, ('a', 1)); "
                            f"a state dict maps names to tensors")


def test_meta_tensors(tmp_path, sd):
    path = _save(tmp_path, "m.pth", {k: torch.empty(v.shape, device="meta") if k.startswith("conv1") else v
                                     for k, v in sd.items()})
    assert _error(path) == (f"checkpoint '{path}' has 1 tensor without data (on the meta device): conv1.weight; "
                            f"save the checkpoint after the weights are materialised")


@pytest.mark.parametrize("dtype,kind", [(torch.int64, "integer"), (torch.int8, "integer"), (torch.bool, "boolean"),
                                        (torch.complex64, "complex")])
def test_integer_boolean_and_complex_weights_are_refused(tmp_path, sd, dtype, kind):
    path = _save(tmp_path, "i.pth", {**sd, "conv1.weight": sd["conv1.weight"].to(dtype),
                                     "fc.weight": torch.zeros(2)})
    assert _error(path) == (f"checkpoint '{path}' cannot be loaded:\n"
                            f"  {kind} tensors where the model has floating-point ones (1): conv1.weight")


def test_float16_and_float64_are_cast_and_said(tmp_path, sd):
    half = {k: v.half() if k.startswith("layer4.1.") and v.is_floating_point() else v for k, v in sd.items()}
    half["conv1.weight"] = sd["conv1.weight"].double()
    path = _save(tmp_path, "h.pth", half)
    assert _warnings(path) == [
        f"checkpoint '{path}': 1 tensor cast from float64 to float32: conv1.weight",
        f"checkpoint '{path}': 10 tensors cast from float16 to float32: layer4.1.bn1.bias, layer4.1.bn1.running_mean, "
        f"layer4.1.bn1.running_var, layer4.1.bn1.weight, layer4.1.bn2.bias, layer4.1.bn2.running_mean, "
        f"layer4.1.bn2.running_var, layer4.1.bn2.weight, ... (2 more)"]


def test_nan_inf_and_negative_running_var_are_reported(tmp_path, sd):
    bad = dict(sd)
    w = sd["conv1.weight"].clone()
    w[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    bad["conv1.weight"] = w
    bad["bn1.running_var"] = sd["bn1.running_var"] - 2.0
    path = _save(tmp_path, "n.pth", bad)
    assert _warnings(path) == [
        f"checkpoint '{path}': 1 tensor holds NaN or infinite values: conv1.weight (3 of 9,408); "
        f"the model's outputs will be NaN",
        f"checkpoint '{path}': 1 negative running variance: bn1.running_var (min -1); "
        f"a variance is never negative, so these weights are damaged"]


def test_clean_checkpoint_has_no_warnings(tmp_path, sd):
    assert _warnings(_save(tmp_path, "ok.pth", sd)) == []


def test_truncated_empty_and_foreign_files(tmp_path, sd):
    good = _save(tmp_path, "good.pth", sd).read_bytes()
    (tmp_path / "t.pth").write_bytes(good[:1000])
    assert _error(tmp_path / "t.pth") == (
        f"checkpoint '{tmp_path / 't.pth'}' is truncated or damaged: it starts as a torch.save archive, "
        f"but its 1,000 bytes end before the archive's directory")
    (tmp_path / "e.pth").write_bytes(b"")
    assert _error(tmp_path / "e.pth") == f"checkpoint '{tmp_path / 'e.pth'}' is empty (0 bytes)"
    (tmp_path / "x.pth").write_text("hello")
    assert _error(tmp_path / "x.pth") == f"checkpoint '{tmp_path / 'x.pth'}' is not a torch.save file (it starts with b'hell')"
    (tmp_path / "dir.pth").mkdir()
    assert _error(tmp_path / "dir.pth") == f"checkpoint '{tmp_path / 'dir.pth'}' is a directory, not a file"


class Evil:
    """Pickled by reference: a weights_only load must refuse to import it."""


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "x": Evil()}, tmp_path / "p.pth")
    message = _error(tmp_path / "p.pth")
    assert message.startswith(f"cannot read checkpoint '{tmp_path / 'p.pth'}' safely (weights_only=True): it holds "
                              f"Python objects other than tensors and plain containers (")


def test_broken_checkpoints_through_the_cli(tmp_path, sd):
    (tmp_path / "e.pth").write_bytes(b"")
    good = _save(tmp_path, "good.pth", sd).read_bytes()
    (tmp_path / "t.pth").write_bytes(good[: len(good) // 2])
    _save(tmp_path, "k.pth", {**sd, 7: torch.zeros(1)})
    expected = {
        "e.pth": "graphres: error: checkpoint 'e.pth' is empty (0 bytes)\n",
        "t.pth": f"graphres: error: checkpoint 't.pth' is truncated or damaged: it starts as a torch.save archive, "
                 f"but its {len(good) // 2:,} bytes end before the archive's directory\n",
        "k.pth": "graphres: error: checkpoint 'k.pth' has 1 key that is not a string (7); a state dict maps names "
                 "to tensors\n",
    }
    for name, err in expected.items():
        r = run_cli("compile", SPEC, "--set", "input.size=[64, 64]", "--checkpoint", name, "-o", "o.pt2", cwd=tmp_path)
        assert (r.returncode, r.stderr) == (1, err)
    assert not (tmp_path / "o.pt2").exists()
