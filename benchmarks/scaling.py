#!/usr/bin/env python
"""How compile (validate) and build time grow with the number of blocks in a spec.

Generates specs of N basic blocks (``--block bottleneck``: bottlenecks; stages of at most 1,000
blocks, the per-stage limit; 8 planes, so that torch's own tensor work stays small and the
compiler's cost shows), and times, each in a fresh process so that no cache of an earlier size
helps:

- ``validate``: ``graphres.compile_spec(path)`` in-process (parse, lower, every pass), what
  ``graphres validate`` does after its imports;
- ``cli``: ``python -m graphres validate PATH`` as a whole process (imports included);
- ``codegen``: ``codegen.generate(graph)`` of the compiled graph (the network's Python source);
- ``build``: ``graphres.build(path)`` (compile, generate, construct and initialise the module).

Prints the curve (blocks -> seconds and milliseconds per block) and writes it as text and JSON.
``--profile N`` also writes cProfile's top functions of validate and build at N blocks.

    python benchmarks/scaling.py                                   # 100 .. 5,000 blocks
    python benchmarks/scaling.py --blocks 100 1000 5000 --repeats 3 --label after
    python benchmarks/scaling.py --block bottleneck --blocks 1000 5000 --label after-bottleneck
    PYTHONPATH=/path/to/other/checkout python benchmarks/scaling.py --label before   # another version

Exit status 0 (a benchmark, not a test). Run it on an idle machine: the figures are wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BLOCKS = [100, 500, 1000, 2000, 3000, 5000]
PER_STAGE = 1000  # graphres' limit of blocks in one stage (passes/limits.py, E014)


def spec_text(blocks: int, planes: int = 8, block: str = "basic") -> str:
    """A valid spec of ``blocks`` blocks (``basic``: 7 layers each; ``bottleneck``: 10) in stages of at
    most 1,000."""
    stages, left = [], blocks
    while left > 0:
        n = min(PER_STAGE, left)
        stages.append(f"  - {{block: {block}, blocks: {n}, planes: {planes}, stride: 1}}")
        left -= n
    return textwrap.dedent(f"""\
        graphres: 1
        name: scale{blocks}
        input: {{channels: 3, size: [32, 32]}}
        norm: {{type: BN}}
        stem: {{type: conv7x7, channels: {planes}}}
        stages:
        """) + "\n".join(stages) + f"\nout_indices: [{len(stages) - 1}]\n"


WORKER = r"""
import gc, json, sys, time
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
import graphres
from graphres.backends import codegen
t1 = time.perf_counter()
if mode == "validate":
    graphres.compile_spec(path)
elif mode == "codegen":
    g = graphres.compile_spec(path).graph
    t1 = time.perf_counter()
    codegen.generate(g)
elif mode == "build":
    import torch
    t1 = time.perf_counter()
    graphres.build(path)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "s": t2 - t1}))
"""

PROFILE = r"""
import cProfile, io, pstats, sys
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
import graphres
if mode == "build":
    import torch
fn = graphres.compile_spec if mode == "validate" else graphres.build
prof = cProfile.Profile()
prof.enable()
fn(path)
prof.disable()
s = io.StringIO()
st = pstats.Stats(prof, stream=s).sort_stats("cumulative")
st.print_stats(40)
st.sort_stats("tottime").print_stats(25)
open(out, "w").write(s.getvalue())
"""


def run_worker(mode: str, path: Path, env: dict) -> float:
    if mode == "cli":
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "graphres", "validate", str(path)], capture_output=True,
                           text=True, env=env, cwd=path.parent)
        elapsed = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"graphres validate {path} failed:\n{r.stdout}{r.stderr}")
        return elapsed
    r = subprocess.run([sys.executable, "-c", WORKER, mode, str(path)], capture_output=True, text=True, env=env,
                       cwd=path.parent)  # not this checkout: sys.path[0] of -c is the working directory
    if r.returncode != 0:
        raise SystemExit(f"{mode} of {path} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])["s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=DEFAULT_BLOCKS)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (median)")
    ap.add_argument("--modes", nargs="+", default=["validate", "cli", "codegen", "build"],
                    choices=["validate", "cli", "codegen", "build"])
    ap.add_argument("--label", default="", help="a name for this run (before / after)")
    ap.add_argument("--block", default="basic", choices=["basic", "bottleneck"],
                    help="the repeated block type (bottleneck: 10 layers a block instead of 7)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling", help="writes OUT.txt and OUT.json (OUT_LABEL.* with --label)")
    ap.add_argument("--profile", type=int, metavar="N", help="also write cProfile output at N blocks")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also time this checkout's graphres, interleaved with this one (before/after in one run)")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    if "PYTHONPATH" not in env:  # the checkout this script sits in, unless told otherwise
        env["PYTHONPATH"] = str(REPO)
    env.setdefault("GRAPHRES_MAX_MEMORY", "unlimited")
    source = env["PYTHONPATH"].split(os.pathsep)[0]
    rows: list[dict] = []
    baseline_rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.blocks:
            path = Path(tmp) / f"scale{n}.yaml"
            path.write_text(spec_text(n, block=args.block))
            row: dict = {"blocks": n}
            base: dict = {"blocks": n}
            base_env = dict(env, PYTHONPATH=str(args.baseline)) if args.baseline else None
            for mode in args.modes:
                samples, base_samples = [], []
                for _ in range(args.repeats):  # alternating, so that machine noise falls on both
                    samples.append(run_worker(mode, path, env))
                    if base_env:
                        base_samples.append(run_worker(mode, path, base_env))
                row[mode] = statistics.median(samples)
                row[mode + "_samples"] = samples
                if base_env:
                    base[mode] = statistics.median(base_samples)
                    base[mode + "_samples"] = base_samples
            rows.append(row)
            print(_line(row, args.modes), flush=True)
            if base_env:
                baseline_rows.append(base)
                print("  baseline: " + _line(base, args.modes), flush=True)
        profiles = {}
        if args.profile:
            path = Path(tmp) / f"scale{args.profile}.yaml"
            path.write_text(spec_text(args.profile, block=args.block))
            for mode in ("validate", "build"):
                out = Path(tmp) / f"profile_{mode}.txt"
                subprocess.run([sys.executable, "-c", PROFILE, mode, str(path), str(out)], check=True, env=env,
                               cwd=tmp)
                profiles[mode] = out.read_text()

    header = [f"# graphres scaling{' (' + args.label + ')' if args.label else ''}: {source}",
              f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
              f"{args.repeats} fresh processes per figure (median); {args.block} blocks, 8 planes",
              "# validate: compile_spec in-process; cli: `graphres validate` whole process; codegen: generate();"
              " build: graphres.build(path)",
              _head(args.modes)]
    text = "\n".join(header + [_line(r, args.modes) for r in rows]) + "\n"
    if baseline_rows:
        text += (f"\n# baseline, interleaved with the rows above: {args.baseline}\n" + _head(args.modes) + "\n"
                 + "\n".join(_line(r, args.modes) for r in baseline_rows) + "\n"
                 + "\n# speed-up (baseline s / this s)\n" + " | ".join(f"{c:>14}" for c in ["blocks"] + args.modes)
                 + "\n" + "\n".join(" | ".join([f"{b['blocks']:>14,}"] + [f"{b[m] / r[m]:>14.2f}" for m in args.modes])
                                     for r, b in zip(rows, baseline_rows)) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.label}" if args.label else ""
    Path(f"{args.out}{suffix}.txt").write_text(text + "".join(
        f"\n## cProfile: {mode} at {args.profile} blocks\n{p}" for mode, p in profiles.items()))
    Path(f"{args.out}{suffix}.json").write_text(json.dumps(
        {"label": args.label, "source": source, "python": platform.python_version(), "repeats": args.repeats,
         "rows": rows, "baseline": str(args.baseline) if args.baseline else None, "baseline_rows": baseline_rows},
        indent=2) + "\n")
    print(f"wrote {args.out}{suffix}.txt and .json")
    return 0


def _head(modes: list[str]) -> str:
    cols = ["blocks"] + [f"{m} s" for m in modes] + [f"{m} ms/block" for m in modes if m != "cli"]
    return " | ".join(f"{c:>14}" for c in cols)


def _line(row: dict, modes: list[str]) -> str:
    n = row["blocks"]
    cells = [f"{n:>14,}"] + [f"{row[m]:>14.3f}" for m in modes]
    cells += [f"{1000 * row[m] / n:>14.3f}" for m in modes if m != "cli"]
    return " | ".join(cells)


if __name__ == "__main__":
    sys.exit(main())
