#!/usr/bin/env python
"""Does graphres' compiled ResNet-50 forward cost what a plain hand-written PyTorch ResNet-50 costs?

Builds ``specs/resnet50.yaml`` with graphres, perturbs its BatchNorm affine parameters and running
statistics (so that no block is the identity, as zero-initialised residual norms would make it),
loads the very same state dict into the hand-written model of ``handwritten_resnet.py``
(``strict=True``), checks that both give the same four stage outputs, and then times the two forwards
interleaved (handwritten, graphres, graphres, handwritten, ... so machine noise hits both alike) under
``torch.inference_mode()``. It reports the median and interquartile range of each, the ratio of the
medians (graphres / handwritten; the target is <= 1.03) and the median of the per-pair ratios.

Run from anywhere::

    python benchmarks/forward.py                       # CPU fp32, batch 1 and 8
    python benchmarks/forward.py --batch 1 --repeats 100 --threads 1 --json build/forward.json
    python benchmarks/forward.py --device cuda         # on a machine with a GPU (TF32 off)

Exit status: 0 whatever the timings say (this is a benchmark, not a test); 1 when the outputs of the
two models differ by more than 1e-5; 2 when the requested device is unavailable.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SPEC = REPO / "specs" / "resnet50.yaml"
TARGET_RATIO = 1.03
TOLERANCE = 1e-5
NOISY_IQR = 0.10  # a row whose IQR exceeds this fraction of its median is flagged as noisy

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import graphres
except ImportError:  # not installed: use the checkout this script sits in
    sys.path.insert(0, str(REPO))
    import graphres

from handwritten_resnet import HandwrittenResNet50  # noqa: E402


# --------------------------------------------------------------------------------------------------
# models

def perturb_batchnorms(model: nn.Module, generator: torch.Generator) -> int:
    """Give every BatchNorm a non-trivial affine transform and running statistics; returns how many.

    The scales stay close to 1 so activations keep a sane magnitude through the 16 blocks."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features

            def rand(*, lo: float, hi: float) -> torch.Tensor:
                return torch.rand(n, generator=generator) * (hi - lo) + lo

            with torch.no_grad():
                if m.weight is not None:
                    m.weight.copy_(rand(lo=0.5, hi=1.0))
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    m.running_var.copy_(rand(lo=0.75, hi=1.5))
            count += 1
    return count


class TorchvisionStages(nn.Module):
    """torchvision's resnet50 (where torchvision is installed), returning the four stage outputs as
    graphres' backbone does; its own modules and forward code, without the classifier."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision
        tv = torchvision.models.resnet50()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(tv, name))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c2, c3, c4, self.layer4(c4)


BASELINES = {"handwritten": HandwrittenResNet50, "torchvision": TorchvisionStages}


def build_models(spec: Path, seed: int, device: torch.device, baseline: str = "handwritten"
                 ) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)  # graphres initialises its convs from the global generator
    compiled = graphres.build(str(spec))
    perturb_batchnorms(compiled, torch.Generator().manual_seed(seed + 1))
    handwritten = BASELINES[baseline]()
    handwritten.load_state_dict(compiled.state_dict(), strict=True)
    compiled.to(device).eval()
    handwritten.to(device).eval()
    return handwritten, compiled


# --------------------------------------------------------------------------------------------------
# correctness

def compare_outputs(handwritten: nn.Module, compiled: nn.Module, x: torch.Tensor) -> dict:
    """Both models' outputs on ``x``: whether bitwise equal, the largest absolute difference, and the
    largest output magnitude (to show the comparison is not between zeros)."""
    with torch.inference_mode():
        ref = handwritten(x)
        out = compiled(x)
    if not isinstance(out, tuple) or len(out) != len(ref):
        raise SystemExit(f"graphres returned {type(out).__name__} of {len(out)} outputs, expected a tuple of {len(ref)}")
    bitwise, max_diff, max_abs, shapes = True, 0.0, 0.0, []
    for i, (r, o) in enumerate(zip(ref, out)):
        if r.shape != o.shape or r.dtype != o.dtype:
            raise SystemExit(f"output {i}: graphres {tuple(o.shape)} {o.dtype} vs handwritten {tuple(r.shape)} {r.dtype}")
        if not torch.isfinite(r).all():
            raise SystemExit(f"output {i} of the handwritten model is not finite: perturbation too strong")
        shapes.append(tuple(r.shape))
        bitwise &= torch.equal(r, o)
        max_diff = max(max_diff, (r - o).abs().max().item())
        max_abs = max(max_abs, r.abs().max().item())
    return {"bitwise_equal": bitwise, "max_abs_diff": max_diff, "max_abs_output": max_abs, "shapes": shapes}


# --------------------------------------------------------------------------------------------------
# timing

def make_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_once(model: nn.Module, x: torch.Tensor, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    model(x)
    sync()
    return time.perf_counter() - t0


def time_interleaved(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int,
                     sync: Callable[[], None]) -> dict[str, list[float]]:
    """Alternate the models run by run, swapping which goes first every round (A B, B A, A B, ...),
    so drift, noise bursts and any advantage of running second fall on both alike."""
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for i in range(warmup):
            for n in (names if i % 2 == 0 else names[::-1]):
                time_once(models[n], x, sync)
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for i in range(repeats):
                for n in (names if i % 2 == 0 else names[::-1]):
                    samples[n].append(time_once(models[n], x, sync) * 1e3)
        finally:
            if gc_was_enabled:
                gc.enable()
    return samples


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


# --------------------------------------------------------------------------------------------------
# environment and report

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_name(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["tf32"] = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return env


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| batch | handwritten median ms | graphres median ms | ratio | handwritten p25–p75 ms "
        "| graphres p25–p75 ms | paired ratio median [p25, p75] | min ratio | target ≤ 1.03 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        h, g, p = r["handwritten"], r["graphres"], r["paired_ratio"]
        lines.append(
            f"| {r['batch']} | {h['median_ms']:.2f} | {g['median_ms']:.2f} | {r['ratio']:.3f} "
            f"| {h['p25_ms']:.2f}–{h['p75_ms']:.2f} | {g['p25_ms']:.2f}–{g['p75_ms']:.2f} "
            f"| {p['median']:.3f} [{p['p25']:.3f}, {p['p75']:.3f}] | {r['min_ratio']:.3f} "
            f"| {r['verdict']}{' (noisy)' if r['noisy'] else ''} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40, help="timed runs per model and batch size (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs per model first (default 5)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    ap.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC,
                    help="graphres spec (default: specs/resnet50.yaml beside this script's folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", choices=sorted(BASELINES), default="handwritten",
                    help="what graphres is timed against: the hand-written ResNet-50 (default) or torchvision's "
                         "resnet50 (needs torchvision)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batch):
        ap.error("--repeats and --batch must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda: CUDA is not available in this torch build or on this machine", file=sys.stderr)
            return 2
        # fp32 means fp32: no TF32 convolutions or matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = make_sync(device)
    env = environment(device)

    print(f"# graphres forward vs hand-written ResNet-50 ({args.spec.name}, fp32, inference_mode)")
    print(f"torch {env['torch']} | python {env['python']} | device {env['device']}"
          + (f" ({env['gpu']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, TF32 off)" if device.type == "cuda" else ""))
    print(f"threads {env['threads']} (interop {env['interop_threads']}) | cpu: {env['cpu']} | "
          f"processor '{env['processor']}' | {env['cpu_count']} cpus ({env['cpus_usable']} usable) | {env['platform']}")
    print(f"repeats {args.repeats}, warmup {args.warmup}, input {args.size}x{args.size}, interleaved")
    sys.stdout.flush()

    handwritten, compiled = build_models(args.spec, args.seed, device, args.baseline)
    models = {"handwritten": handwritten, "graphres": compiled}
    gen = torch.Generator().manual_seed(args.seed + 2)
    inputs = {b: torch.randn(b, 3, args.size, args.size, generator=gen).to(device) for b in args.batch}

    # Correctness first, on every input that is then timed.
    checks, failed = {}, False
    for b, x in inputs.items():
        c = compare_outputs(handwritten, compiled, x)
        checks[b] = c
        if c["bitwise_equal"]:
            status = "bitwise equal"
        else:
            status = f"NOT bitwise equal, max |diff| = {c['max_abs_diff']:.3e}"
            if not c["max_abs_diff"] <= TOLERANCE:
                status += f" > {TOLERANCE:g}: FAIL"
                failed = True
        print(f"check batch {b}: outputs {', '.join('x'.join(map(str, s)) for s in c['shapes'])}: "
              f"{status} (max |output| {c['max_abs_output']:.3g})")
    if failed:
        print("numerical check failed: graphres and the hand-written ResNet-50 disagree", file=sys.stderr)
        if args.json:
            _write_json(args.json, {"env": env, "config": _config(args), "checks": checks, "results": [],
                                    "failed": True})
        return 1

    rows = []
    for b, x in inputs.items():
        samples = time_interleaved(models, x, args.repeats, args.warmup, sync)
        row: dict = {"batch": b}
        for name, vals in samples.items():
            q1, q2, q3 = quartiles(vals)
            row[name] = {"median_ms": q2, "p25_ms": q1, "p75_ms": q3, "min_ms": min(vals),
                         "mean_ms": statistics.fmean(vals), "samples_ms": vals}
        pairs = [g / h for g, h in zip(samples["graphres"], samples["handwritten"])]
        p1, p2, p3 = quartiles(pairs)
        row["paired_ratio"] = {"median": p2, "p25": p1, "p75": p3}
        row["ratio"] = row["graphres"]["median_ms"] / row["handwritten"]["median_ms"]
        row["min_ratio"] = row["graphres"]["min_ms"] / row["handwritten"]["min_ms"]
        row["verdict"] = "PASS" if row["ratio"] <= TARGET_RATIO else "ABOVE TARGET"
        row["noisy"] = any((row[n]["p75_ms"] - row[n]["p25_ms"]) > NOISY_IQR * row[n]["median_ms"] for n in models)
        rows.append(row)
        print(f"batch {b}: handwritten {row['handwritten']['median_ms']:.2f} ms, "
              f"graphres {row['graphres']['median_ms']:.2f} ms, ratio {row['ratio']:.3f}")
        sys.stdout.flush()

    print()
    print(markdown_table(rows))
    print()
    print(f"ratio = graphres median / handwritten median (target ≤ {TARGET_RATIO}); paired ratio = "
          "graphres / handwritten of back-to-back runs; min ratio = graphres min / handwritten min.")
    noisy = [str(r["batch"]) for r in rows if r["noisy"]]
    if noisy:
        print(f"noisy: batch {', '.join(noisy)} had an IQR over {NOISY_IQR:.0%} of the median (a busy machine); "
              "trust the paired and min ratios more there, or rerun with more --repeats or --threads 1.")
    if args.json:
        _write_json(args.json, {"env": env, "config": _config(args), "checks": checks, "results": rows,
                                "failed": False})
        print(f"wrote {args.json}")
    return 0


def _config(args: argparse.Namespace) -> dict:
    return {"repeats": args.repeats, "warmup": args.warmup, "batch": args.batch, "threads": args.threads,
            "device": args.device, "size": args.size, "spec": str(args.spec), "seed": args.seed,
            "target_ratio": TARGET_RATIO, "tolerance": TOLERANCE, "argv": sys.argv}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(data, default=list))  # tuples -> lists, int keys -> str
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
