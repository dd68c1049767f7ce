"""The fuzz harness (tools/fuzz.py): a fixed-seed slice finds no crash, hang, memory blow-up or
oversized output, and the harness itself counts, minimises and saves a crash it is shown."""
import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("graphres_fuzz", ROOT / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("mode,seed,cases", [("structure", 13, 250), ("bytes", 14, 60), ("mixed", 15, 90)])
def test_fixed_seed_slice_has_no_failures(tmp_path, monkeypatch, mode, seed, cases):
    monkeypatch.setenv("GRAPHRES_MAX_MEMORY", "unlimited")  # outcomes independent of this machine's memory
    counts = fuzz.fuzz(cases, seed, mode, time_limit=20.0, crash_dir=tmp_path / "crashes", quiet=True)
    assert {k: counts[k] for k in fuzz.BAD} == {k: 0 for k in fuzz.BAD}
    assert counts["ok"] + counts["error"] + counts["usage"] == cases
    assert counts["error"] > 0 and not (tmp_path / "crashes").exists()


def test_the_same_seed_gives_the_same_cases():
    import random
    texts = []
    for _ in range(2):
        rng = random.Random(99)
        base = fuzz.generated_block_spec(rng)
        texts.append((base, fuzz.structure_mutate(rng, base), fuzz.byte_mutate(rng, base, [base])))
    assert texts[0] == texts[1]


def test_a_crash_is_counted_minimised_and_saved(tmp_path, monkeypatch):
    from graphres import cli
    real = cli.main

    def buggy(argv):  # a planted bug: any spec with 'planes: 64' in it crashes validate
        if "planes: 64" in open(argv[1]).read():
            raise KeyError("planted")
        return real(argv)

    monkeypatch.setattr(cli, "main", buggy)
    counts = fuzz.fuzz(6, 3, "structure", crash_dir=tmp_path, quiet=True)
    assert counts["crash"] >= 1
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 2 and saved[0].startswith("crash-") and saved[0].endswith(".args")
    reproducer = (tmp_path / saved[1]).read_text()
    assert "planes: 64" in reproducer and len(reproducer) <= len("planes: 64") + 2
    assert (tmp_path / saved[0]).read_text().startswith("# KeyError@test_fuzz.py:")


def test_a_hang_is_cut_off_by_cpu_time(tmp_path, monkeypatch):
    from graphres import cli

    def spinning(argv):  # a planted infinite loop
        while True:
            pass

    monkeypatch.setattr(cli, "main", spinning)
    counts = fuzz.fuzz(1, 3, "structure", time_limit=0.1, crash_dir=tmp_path, quiet=True)
    assert counts["hang"] == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".args", ".yaml"]
