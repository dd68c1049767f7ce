#!/usr/bin/env python
"""graphres' inference build against torchvision, in the same run, on the same weights.

For each model (resnet18/50/101 classifiers: the shipped spec with ``head={num_classes: 1000}``),
a torchvision model is made with random BatchNorm statistics and affine parameters, saved as a
checkpoint and loaded by ``graphres.build(spec, checkpoint=..., inference=True)``; the logits are
checked (relative difference <= 1e-5, else exit 1). Then, under ``torch.inference_mode()``, per
thread count and batch size, interleaved pairs (the order swapped every round) time:

- eager: graphres' inference build (default memory format) against torchvision's eval model,
  as users run it (NCHW input, no change); goal ratio <= 0.85;
- compiled (``--compiled``): ``graphres.build(..., inference=True, compile=True)`` (inductor,
  freezing) against ``torch.compile(torchvision)`` with the same inductor options (freezing on);
  goal ratio <= 0.95. Both first calls (batch 1, ``no_grad``: what ``compile_seconds`` times)
  compile cold, in a fresh inductor cache, after a trivial compile that pays inductor's one-time
  set-up; the two compile times are printed and kept in the JSON.

Needs torchvision, so it runs outside graphres' CI venv (``/work/venvs/tv`` here)::

    PYTHONPATH=. /work/venvs/tv/bin/python benchmarks/inference.py            # r18, r50; eager
    PYTHONPATH=. /work/venvs/tv/bin/python benchmarks/inference.py --models resnet50 --compiled \\
        --out benchmarks/results/cpu_inference          # writes .txt and .json

Reported per row: both medians, the ratio of medians, the median of the per-pair ratios and the
ratio of minima. Exit status 0 whatever the timings, 1 if outputs differ.
"""
from __future__ import annotations

import argparse
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
except ImportError:
    sys.path.insert(0, str(REPO))
    import graphres

GOAL_EAGER = 0.85
GOAL_COMPILED = 0.95
TOLERANCE = 1e-5
INDUCTOR_OPTIONS = {"freezing": True}


def randomise_norms(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.75 + 0.75)


def models(name: str, tmp: Path, compiled: bool):
    import torchvision
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)().eval()
    randomise_norms(tv, 1)
    ckpt = tmp / f"{name}.pth"
    torch.save(tv.state_dict(), ckpt)
    gr = graphres.build(name, ["head={num_classes: 1000}"], checkpoint=str(ckpt), inference=True)
    out = {"tv": tv, "gr": gr}
    if compiled:
        # compile times are cold: a fresh inductor cache (main), and inductor's one-time set-up
        # paid before either model by a trivial compile
        torch.compile(lambda t: t.relu() + 1)(torch.randn(4))
        tv2 = getattr(torchvision.models, name)().eval()
        tv2.load_state_dict(tv.state_dict())
        tvc = torch.compile(tv2, options=INDUCTOR_OPTIONS)
        # its first call compiles: timed as graphres times its own (compile_seconds: batch 1, no_grad)
        example = torch.randn(1, 3, 224, 224)
        start = time.perf_counter()
        with torch.no_grad():
            tvc(example)
        tvc_seconds = time.perf_counter() - start
        grc = graphres.build(name, ["head={num_classes: 1000}"], checkpoint=str(ckpt), inference=True, compile=True)
        out.update(tvc=tvc, grc=grc, tvc_compile_seconds=tvc_seconds)
    return out


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def time_pair(fa, fb, x, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            fa(x)
            fb(x)
        for i in range(repeats):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                f, store = (fa, ta) if which == 0 else (fb, tb)
                start = time.perf_counter()
                f(x)
                store.append(time.perf_counter() - start)
    return ta, tb


def summarise(kind, name, threads, batch, base, ours, goal, compile_s=None, baseline_compile_s=None) -> dict:
    mb, mo = statistics.median(base), statistics.median(ours)
    pairs = sorted(o / b for o, b in zip(ours, base))
    return {"kind": kind, "model": name, "threads": threads, "batch": batch, "baseline_ms": mb * 1e3,
            "graphres_ms": mo * 1e3, "ratio": mo / mb, "paired_ratio": statistics.median(pairs),
            "min_ratio": min(ours) / min(base), "goal": goal, "pass": mo / mb <= goal,
            "baseline_samples_ms": [t * 1e3 for t in base], "graphres_samples_ms": [t * 1e3 for t in ours],
            "compile_s": compile_s, "baseline_compile_s": baseline_compile_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--compiled", action="store_true", help="also time the compiled builds (slow to compile)")
    ap.add_argument("--out", help="write OUT.txt and OUT.json")
    args = ap.parse_args(argv)

    header = ["# graphres inference build vs torchvision (fp32, inference_mode, interleaved pairs, medians)",
              f"torch {torch.__version__} | python {platform.python_version()} | {platform.machine()} | "
              f"{torch.get_num_threads()} threads available | repeats {args.repeats}, warmup {args.warmup}, "
              f"input {args.size}x{args.size} | malloc: {os.environ.get('LD_PRELOAD') or 'glibc (default)'}"]
    lines: list[str] = []
    rows = []
    status = 0

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    for text in header:
        say(text)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compiled:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        for name in args.models:
            start = time.perf_counter()
            ms = models(name, Path(tmp), args.compiled)
            say(f"{name}: built in {time.perf_counter() - start:.1f} s"
                + (f" (first call, compiling: graphres {ms['grc'].compile_seconds:.1f} s, "
                   f"torchvision {ms['tvc_compile_seconds']:.1f} s)" if args.compiled else ""))
            for threads in args.threads:
                torch.set_num_threads(threads)
                for batch in args.batch:
                    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
                    with torch.inference_mode():
                        ref = ms["tv"](x)
                        for key in ("gr", "grc", "tvc"):
                            if key in ms:
                                d = rel_diff(ref, ms[key](x))
                                if d > (TOLERANCE if key == "gr" else 1e-4):
                                    say(f"OUTPUTS DIFFER: {name} {key} batch {batch}: relative {d:.2e}")
                                    status = 1
                    base, ours = time_pair(ms["tv"], ms["gr"], x, args.repeats, args.warmup)
                    rows.append(summarise("eager", name, threads, batch, base, ours, GOAL_EAGER))
                    say(_row(rows[-1]))
                    if args.compiled:
                        base, ours = time_pair(ms["tvc"], ms["grc"], x, args.repeats, args.warmup)
                        rows.append(summarise("compiled", name, threads, batch, base, ours, GOAL_COMPILED,
                                              ms["grc"].compile_seconds, ms["tvc_compile_seconds"]))
                        say(_row(rows[-1]))
    say("")
    say("| kind | model | threads | batch | torchvision ms | graphres ms | ratio | paired ratio | min ratio | goal |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|:---|")
    for r in rows:
        say(f"| {r['kind']} | {r['model']} | {r['threads']} | {r['batch']} | {r['baseline_ms']:.2f} | "
            f"{r['graphres_ms']:.2f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} | {r['min_ratio']:.3f} | "
            f"{'PASS' if r['pass'] else 'ABOVE'} (<= {r['goal']}) |")
    say("eager baseline: torchvision eval model; compiled baseline: torch.compile(torchvision, "
        f"options={INDUCTOR_OPTIONS}); graphres: build(..., inference=True[, compile=True]).")
    if args.out:
        Path(args.out + ".txt").write_text("\n".join(lines) + "\n")
        Path(args.out + ".json").write_text(json.dumps({"torch": torch.__version__,
                                                     "malloc": os.environ.get("LD_PRELOAD") or "glibc",
                                                     "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}.txt and {args.out}.json")
    return status


def _row(r: dict) -> str:
    return (f"{r['kind']:8s} {r['model']} threads {r['threads']} batch {r['batch']}: torchvision "
            f"{r['baseline_ms']:.2f} ms, graphres {r['graphres_ms']:.2f} ms, ratio {r['ratio']:.3f} "
            f"(paired {r['paired_ratio']:.3f}, min {r['min_ratio']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
