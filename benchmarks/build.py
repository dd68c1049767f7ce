#!/usr/bin/env python
"""How long building a ResNet-50 takes with graphres, against torchvision's ``resnet50()``.

Needs torchvision (run it in a venv that has it; CI never runs it). In one process, interleaved
(the order of the cases rotates every round, so machine noise falls on all alike), medians of
``--repeats`` rounds after ``--warmup`` rounds:

- ``torchvision resnet50()``: construction with torch's default init, then ResNet's own;
- ``torchvision resnet50() + load_state_dict``: the same, then ``torch.load`` of a checkpoint file
  and ``load_state_dict`` (strict);
- ``graphres build(spec)``: compile the spec, generate, construct on meta, initialise once;
- ``graphres build(compiled)``: the same from an already compiled spec (what a training script that
  builds twice pays the second time);
- ``graphres build(spec, checkpoint=...)``: compile, construct on meta, read the same file, its
  tensors assigned in place of the initialisation;
- ``graphres build(spec, device="meta")``: shapes only, no memory.

The spec is ``resnet50_classifier`` (torchvision's layout, ``fc`` included, so the same checkpoint
loads strictly into both); the checkpoint is a randomly initialised torchvision resnet50 saved to a
temporary file. The outputs of the two models loaded from it are checked to be equal first.

    /work/venvs/tv/bin/python benchmarks/build.py [--repeats 15] [--threads 1] [--out benchmarks/results/cpu_build]

Targets (issue 12): build with a checkpoint <= 0.5x torchvision's resnet50() + load_state_dict; build
without one no slower than resnet50(). Exit status 0 whatever the timings; 1 if outputs differ.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    import graphres
except ImportError:  # not installed: the checkout this script sits in
    sys.path.insert(0, str(REPO))
    import graphres
import torchvision  # noqa: E402

SPEC = "resnet50_classifier"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.txt and OUT.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("GRAPHRES_MAX_MEMORY", "unlimited")
    tmp = tempfile.TemporaryDirectory()
    ckpt = Path(tmp.name) / "resnet50.pth"
    torch.manual_seed(0)
    ref = torchvision.models.resnet50()
    with torch.no_grad():  # non-trivial norms, so that the equality check below means something
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.75, 1.5)
    torch.save(ref.state_dict(), ckpt)
    compiled = graphres.compile_spec(SPEC)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref.eval()(x)
        b = graphres.build(SPEC, checkpoint=ckpt).eval()(x)
    if not torch.equal(a, b):
        print(f"outputs differ: max abs {float((a - b).abs().max()):.3g}")
        return 1

    def tv_init():
        torchvision.models.resnet50()

    def tv_load():
        m = torchvision.models.resnet50()
        m.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))

    cases = {
        "torchvision resnet50()": tv_init,
        "torchvision resnet50() + load_state_dict": tv_load,
        "graphres build(spec)": lambda: graphres.build(SPEC),
        "graphres build(compiled)": lambda: graphres.build(compiled),
        "graphres build(spec, checkpoint=...)": lambda: graphres.build(SPEC, checkpoint=ckpt),
        "graphres build(spec, device='meta')": lambda: graphres.build(SPEC, device="meta"),
    }
    if "device" not in inspect.signature(graphres.build).parameters:  # an older graphres (the "before" run)
        del cases["graphres build(spec, device='meta')"]
    names = list(cases)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            cases[n]()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                samples[n].append(dt)
    med = {n: statistics.median(s) for n, s in samples.items()}
    q = {n: statistics.quantiles(s, n=4) for n, s in samples.items()}
    ratios = [
        ("build(spec) / resnet50()", med["graphres build(spec)"] / med["torchvision resnet50()"], 1.0),
        ("build(spec, checkpoint) / (resnet50() + load_state_dict)",
         med["graphres build(spec, checkpoint=...)"] / med["torchvision resnet50() + load_state_dict"], 0.5),
    ]
    if "graphres build(spec, device='meta')" in med:
        ratios.append(("build(spec, device='meta') / resnet50()",
                       med["graphres build(spec, device='meta')"] / med["torchvision resnet50()"], None))
    lines = [f"# benchmarks/build.py: {platform.python_version()}, torch {torch.__version__}, torchvision "
             f"{torchvision.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
             f"{args.repeats} interleaved rounds after {args.warmup} warm-up (medians)",
             f"# graphres from {Path(graphres.__file__).parent.parent}; spec {SPEC}; outputs of the two loaded "
             f"models bitwise equal",
             "", "| case | median ms | p25 ms | p75 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {1000 * med[n]:.1f} | {1000 * q[n][0]:.1f} | {1000 * q[n][2]:.1f} |" for n in names]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    lines += [f"| {label} | {v:.3f} | {'<= ' + str(t) if t is not None else '-'}"
              f"{'' if t is None else (' PASS' if v <= t else ' MISSED')} |" for label, v, t in ratios]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.txt").write_text(text)
        Path(f"{args.out}.json").write_text(json.dumps(
            {"torch": torch.__version__, "threads": torch.get_num_threads(), "medians_s": med, "samples_s": samples,
             "ratios": {label: v for label, v, _ in ratios}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
