"""How long `graphres render` takes as a whole process, up to the deepest spec at layer level.

    python benchmarks/render.py [--repeats 7] [--out benchmarks/results/cpu_render.txt]

Each row is the median (and range) of whole-process wall-clock times: Python's start-up, importing
graphres, parsing and analysing the spec, building the DOT and running Graphviz's `dot` for SVG,
writing the file. Baselines in the same run: `python -c pass` (the interpreter alone) and
`python -c "import graphres"`, and `dot -Tsvg` on the DOT source alone. Target: resnet152 at
layer level under 2 s, with every block unfolded (`--expand all`, ~500 layer nodes) too.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cli import ROOT, timed  # noqa: E402  (benchmarks/ is on sys.path when this file runs)
TARGET_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description="time graphres render as whole processes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    py = sys.executable
    render = [py, "-m", "graphres", "render"]
    r152 = "specs/resnet152.yaml"
    subprocess.run(render + [r152, "-o", str(tmp / "all.dot"), "--level", "layer", "--expand", "all"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    commands = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "python -c 'import graphres' (baseline)": [py, "-c", "import graphres"],
        "dot -Tsvg on resnet152 layer --expand all DOT (Graphviz alone)": [shutil.which("dot") or "dot", "-Tsvg",
                                                                           str(tmp / "all.dot"), "-o",
                                                                           str(tmp / "dot_only.svg")],
        "render resnet152 --level stage (svg)": render + [r152, "-o", str(tmp / "s.svg"), "--level", "stage"],
        "render resnet152 --level block (svg)": render + [r152, "-o", str(tmp / "b.svg")],
        "render resnet152 --level layer (svg, folded)": render + [r152, "-o", str(tmp / "l.svg"), "--level", "layer"],
        "render resnet152 --level layer --expand all (svg)": render + [r152, "-o", str(tmp / "la.svg"), "--level",
                                                                       "layer", "--expand", "all"],
        "render resnet152 --level layer --expand all (dot source)": render + [r152, "-o", str(tmp / "la.dot"),
                                                                              "--level", "layer", "--expand", "all"],
        "render resnet152 --level layer --expand all (png)": render + [r152, "-o", str(tmp / "la.png"), "--level",
                                                                       "layer", "--expand", "all"],
    }
    dot_version = subprocess.run(["dot", "-V"], capture_output=True, text=True).stderr.strip()
    lines = [f"# {platform.node() or 'machine'}: {platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}, {dot_version}; {args.repeats} runs each after one warm-up",
             "| command | median s | min s | max s |", "|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    worst = 0.0
    for name, cmd in commands.items():
        t = timed(cmd, args.repeats, warmup=True)
        row = f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} |"
        if name.startswith("render") and "layer" in name:
            worst = max(worst, statistics.median(t))
        print(row, flush=True)
        lines.append(row)
    nodes = sum("[label=" in line and "->" not in line for line in (tmp / "la.dot").read_text().splitlines())
    verdict = f"slowest layer-level median {worst:.3f} s: " + ("PASS" if worst < TARGET_S else "ABOVE TARGET") + \
        f" (target < {TARGET_S} s); the --expand all drawing has {nodes} nodes"
    print(verdict)
    lines.append("")
    lines.append(verdict)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
