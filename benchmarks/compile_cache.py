#!/usr/bin/env python
"""Warm starts of the compiled inference build: a cold compile against one from inductor's cache.

``graphres.build(spec, inference=True, compile=True, cache_dir=D)`` compiles at its first call
and keeps the time as ``net.compile_seconds``. This script measures what ``cache_dir`` buys a
process that starts again (a server restart, the next job of a batch system): per round, a new
empty cache folder, then a fresh process that compiles into it (cold) and another fresh process
that compiles with it (warm). The two processes build the same weights (seeded), and the warm
process's output must equal the cold one's bit for bit, else exit 1.

With ``--torchvision`` (needs torchvision) the same is done, in the same rounds and alternating
with graphres, for ``torch.compile(torchvision_model, options={"freezing": True})``, its first
call (batch 1, ``no_grad``) timed as ``compile_seconds`` is.

Every process first compiles a trivial function, so inductor's one-time set-up in a process is
not counted (it is printed apart as ``setup s``). Reported: medians over the rounds, and the
warm/cold ratio of medians::

    python benchmarks/compile_cache.py                           # graphres, resnet50, 5 rounds
    PYTHONPATH=. /work/venvs/tv/bin/python benchmarks/compile_cache.py --torchvision \\
        --out benchmarks/results/cpu_compile_cache            # writes .txt and .json

Exit status 0 whatever the timings, 1 if a warm output differs from its cold one or a worker fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = 224
INDUCTOR_OPTIONS = {"freezing": True}


def worker(kind: str, model: str, cache: str) -> dict:
    """One fresh process: set the cache, pay inductor's set-up, compile, run once, report."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch
    start = time.perf_counter()
    torch.compile(lambda t: t.relu() + 1)(torch.randn(4))
    setup = time.perf_counter() - start
    torch.manual_seed(0)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    if kind == "graphres":
        try:
            import graphres
        except ImportError:
            sys.path.insert(0, str(REPO))
            import graphres
        net = graphres.build(model, ["head={num_classes: 1000}"], inference=True, compile=True,
                             cache_dir=cache)
        seconds = net.compile_seconds
    else:
        import torchvision
        net = torch.compile(getattr(torchvision.models, model)().eval(), options=INDUCTOR_OPTIONS)
        start = time.perf_counter()
        with torch.no_grad():
            net(torch.randn(1, 3, SIZE, SIZE))
        seconds = time.perf_counter() - start
    with torch.no_grad():
        out = net(x)
    out = out if isinstance(out, torch.Tensor) else out[-1]
    digest = hashlib.sha256(out.detach().contiguous().numpy().tobytes()).hexdigest()
    return {"compile_s": seconds, "setup_s": setup, "digest": digest, "torch": torch.__version__}


def run_worker(kind: str, model: str, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, __file__, "--worker", kind, "--models", model, "--cache", str(cache)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--torchvision", action="store_true", help="also time torch.compile(torchvision)")
    ap.add_argument("--out", help="write OUT.txt and OUT.json")
    ap.add_argument("--worker", choices=["graphres", "torchvision"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.models[0], args.cache)))
        return 0

    kinds = ["graphres"] + (["torchvision"] if args.torchvision else [])
    lines: list[str] = []
    rows = []
    status = 0

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    samples = {(m, k, w): [] for m in args.models for k in kinds for w in ("cold", "warm", "setup")}
    torch_version = None
    differs: set = set()
    for name in args.models:
        for rnd in range(args.rounds):
            for kind in (kinds if rnd % 2 == 0 else kinds[::-1]):
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        cold = run_worker(kind, name, Path(tmp))
                        warm = run_worker(kind, name, Path(tmp))
                    except RuntimeError as e:
                        say(str(e))
                        return 1
                torch_version = cold["torch"]
                same = cold["digest"] == warm["digest"]
                if not same:
                    status = 1
                    differs.add((name, kind))
                samples[(name, kind, "cold")].append(cold["compile_s"])
                samples[(name, kind, "warm")].append(warm["compile_s"])
                samples[(name, kind, "setup")] += [cold["setup_s"], warm["setup_s"]]
                say(f"{name} round {rnd + 1} {kind}: cold {cold['compile_s']:.2f} s, warm {warm['compile_s']:.2f} s"
                    f"{'' if same else ', WARM OUTPUT DIFFERS FROM COLD'}")
    header = ["# compile_cache.py: first-call compile time, cold (empty cache_dir) and warm (the same folder, "
              "a new process); medians",
              f"torch {torch_version} | python {platform.python_version()} | {platform.machine()} | "
              f"{os.cpu_count()} cores | {args.rounds} rounds | batch 1, {SIZE}x{SIZE} | inductor {INDUCTOR_OPTIONS}"]
    say("")
    for text in header:
        say(text)
    say("| model | compiled by | cold s | warm s | warm / cold | setup s | warm output = cold |")
    say("|---|---|---:|---:|---:|---:|:---|")
    for name in args.models:
        for kind in kinds:
            cold = statistics.median(samples[(name, kind, "cold")])
            warm = statistics.median(samples[(name, kind, "warm")])
            setup = statistics.median(samples[(name, kind, "setup")])
            rows.append({"model": name, "kind": kind, "cold_s": cold, "warm_s": warm, "ratio": warm / cold,
                         "setup_s": setup, "cold_samples_s": samples[(name, kind, "cold")],
                         "warm_samples_s": samples[(name, kind, "warm")],
                         "warm_equals_cold": (name, kind) not in differs})
            say(f"| {name} | {'graphres compile=True' if kind == 'graphres' else 'torch.compile(torchvision)'} "
                f"| {cold:.2f} | {warm:.2f} | {warm / cold:.3f} | {setup:.2f} | {'NO' if (name, kind) in differs else 'yes'} |")
    if args.out:
        Path(args.out + ".txt").write_text("\n".join(lines) + "\n")
        Path(args.out + ".json").write_text(json.dumps({"torch": torch_version, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}.txt and {args.out}.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
