"""How long the CLI takes as a whole process (what a user waits for), against `import torch`.

    python benchmarks/cli.py [--repeats 9]

Prints the median and the range of wall-clock times per command; `validate`, `info`, `expand`
and `render` must stay well under a second (they never import torch).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], repeats: int, warmup: bool = False) -> list[float]:
    """Wall-clock seconds of ``repeats`` runs of ``cmd`` as a whole process (after one untimed run
    with ``warmup``, to fill the file caches)."""
    if warmup:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="time graphres commands as whole processes")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    graphres = [sys.executable, "-m", "graphres"]
    commands = {
        "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
        "graphres validate specs/resnet152.yaml": graphres + ["validate", "specs/resnet152.yaml"],
        "graphres info specs/resnet152.yaml": graphres + ["info", "specs/resnet152.yaml"],
        "graphres info specs/resnet152.yaml --level layer": graphres + ["info", "specs/resnet152.yaml", "--level",
                                                                         "layer"],
        "graphres info specs/resnet152.yaml --json": graphres + ["info", "specs/resnet152.yaml", "--json"],
        "graphres expand specs/mmdet_faster_rcnn_r50.yaml": graphres + ["expand", "specs/mmdet_faster_rcnn_r50.yaml"],
        "graphres render specs/resnet152.yaml (block, svg)": graphres + ["render", "specs/resnet152.yaml", "-o",
                                                                          str(tmp / "r152.svg")],
        "graphres render specs/resnet152.yaml (stage, svg)": graphres + ["render", "specs/resnet152.yaml", "-o",
                                                                          str(tmp / "r152s.svg"), "--level", "stage"],
    }
    print(f"| command | median s | min s | max s |  ({args.repeats} runs each)")
    print("|---|---:|---:|---:|")
    for name, cmd in commands.items():
        t = timed(cmd, args.repeats)
        print(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
