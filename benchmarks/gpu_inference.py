#!/usr/bin/env python
"""GPU: graphres' inference build against torchvision, bf16, channels_last, CUDA graphs.

Prepared for a GPU machine (not run on the 2-core CPU machine of this project's CI). For each
model and batch size (default resnet50, batch 1, 32 and 256), on the same weights (a torchvision
model with random BN statistics, saved and loaded by ``graphres.build(..., inference=True)``):

- ``tv_compiled``: ``torch.compile(torchvision)`` in bf16, channels_last, at each ``--mode``;
- ``graphres``: the inference build (BN folded), bf16, channels_last, ``torch.compile`` at the same
  mode (``reduce-overhead`` runs through CUDA graphs; ``max-autotune`` autotunes and also uses
  CUDA graphs);
- ``graphres_eager`` and ``tv_eager`` for reference.

Timed with CUDA events after warm-up, interleaved (tv, graphres, graphres, tv, ...); reports the
median latency per batch (ms) and throughput (img/s), and the ratio graphres / torchvision.
Targets of issue 12 on an H200: batch-1 latency under 1 ms with CUDA graphs, resnet50 at batch
256 at least 35,000 img/s (torch.compile'd torchvision bf16: about 25,000).

    python benchmarks/gpu_inference.py                                  # r50, b1/32/256, both modes
    python benchmarks/gpu_inference.py --models resnet18 resnet50 --batch 1 256 --mode max-autotune \\
        --out benchmarks/results/h200_inference                          # .txt and .json

Outputs are checked against torchvision's fp32 eval model (relative max difference; bf16 is
reported, not failed, up to 5e-2). Exit 0 whatever the timings; 2 without CUDA.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
try:
    import graphres
except ImportError:
    sys.path.insert(0, str(HERE.parent))
    import graphres

sys.path.insert(0, str(HERE))
from inference import randomise_norms  # noqa: E402  (same weights recipe as the CPU benchmark)


def cuda_time(fn, x, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 32, 256])
    ap.add_argument("--mode", nargs="+", default=["reduce-overhead", "max-autotune"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    import torchvision
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    lines = [f"# graphres inference build vs torchvision on {torch.cuda.get_device_name()} (bf16, channels_last)",
             f"torch {torch.__version__} | torchvision {torchvision.__version__} | python {platform.python_version()}"]
    print("\n".join(lines), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            tv = getattr(torchvision.models, name)().eval()
            randomise_norms(tv, 1)
            ckpt = Path(tmp) / f"{name}.pth"
            torch.save(tv.state_dict(), ckpt)
            ref_model = tv.to(dev)
            gr = graphres.build(name, ["head={num_classes: 1000}"], checkpoint=str(ckpt), inference=True)
            gr = gr.to(dev, torch.bfloat16)
            tvb = getattr(torchvision.models, name)().eval()
            tvb.load_state_dict(tv.state_dict())
            tvb = tvb.to(dev, torch.bfloat16).to(memory_format=torch.channels_last)
            variants = {"tv_eager": tvb, "graphres_eager": gr}
            for mode in args.mode:
                variants[f"tv_compiled[{mode}]"] = torch.compile(tvb, mode=mode)
                variants[f"graphres[{mode}]"] = torch.compile(gr, mode=mode)
            for batch in args.batch:
                x32 = torch.randn(batch, 3, args.size, args.size, device=dev, generator=None)
                x = x32.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
                times = {}
                with torch.inference_mode():
                    ref = ref_model(x32).float()
                    for key, fn in variants.items():
                        for _ in range(args.warmup):
                            fn(x)
                        torch.cuda.synchronize()
                        diff = float((fn(x).float() - ref).abs().max() / ref.abs().max())
                        times[key] = {"diff": diff, "samples": []}
                    for i in range(args.repeats // 5):
                        keys = list(variants) if i % 2 == 0 else list(reversed(variants))
                        for key in keys:
                            times[key]["samples"] += cuda_time(variants[key], x, 5)
                for key, t in times.items():
                    med = statistics.median(t["samples"])
                    rows.append({"model": name, "batch": batch, "variant": key, "median_ms": med,
                                 "img_per_s": batch / med * 1e3, "rel_diff_vs_fp32": t["diff"]})
                    text = (f"{name} batch {batch} {key}: {med:.3f} ms, {batch / med * 1e3:,.0f} img/s "
                            f"(rel. diff vs fp32 {t['diff']:.1e})")
                    print(text, flush=True)
                    lines.append(text)
                for mode in ["eager"] + args.mode:
                    a = f"graphres[{mode}]" if mode != "eager" else "graphres_eager"
                    b = f"tv_compiled[{mode}]" if mode != "eager" else "tv_eager"
                    ratio = statistics.median(times[a]["samples"]) / statistics.median(times[b]["samples"])
                    text = f"{name} batch {batch} {mode}: graphres / torchvision = {ratio:.3f}"
                    print(text, flush=True)
                    lines.append(text)
    if args.out:
        Path(args.out + ".txt").write_text("\n".join(lines) + "\n")
        Path(args.out + ".json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
