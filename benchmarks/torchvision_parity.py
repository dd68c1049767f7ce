"""Optional parity check against torchvision (not part of CI: torchvision cannot be installed beside
the CPU torch that the tests use).

For each torchvision ResNet variant, a randomly initialised torchvision model's state dict is saved
as a checkpoint, loaded by graphres (strictly, apart from fc.*), and the stage outputs of both are
compared on the same input; with specs/resnet50_classifier.yaml the whole classifier loads strictly,
fc included, and the logits are compared. Run where torchvision is installed:

    python benchmarks/torchvision_parity.py [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphres  # noqa: E402


def stages_of(tv: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    outs = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(tv, name)(x)
        outs.append(x)
    return outs


def cases():
    import torchvision.models as tvm
    yield "resnet18", tvm.resnet18, ROOT / "specs/resnet18.yaml", []
    yield "resnet34", tvm.resnet34, ROOT / "specs/resnet34.yaml", []
    yield "resnet50", tvm.resnet50, ROOT / "specs/resnet50.yaml", []
    yield "resnet101", tvm.resnet101, ROOT / "specs/resnet101.yaml", []
    yield "resnet152", tvm.resnet152, ROOT / "specs/resnet152.yaml", []
    yield "resnext50_32x4d", tvm.resnext50_32x4d, ROOT / "specs/resnext50_32x4d.yaml", []
    yield "resnext101_32x8d", tvm.resnext101_32x8d, ROOT / "specs/resnext101_32x8d.yaml", []
    yield "wide_resnet50_2", tvm.wide_resnet50_2, ROOT / "specs/wide_resnet50_2.yaml", []
    # torchvision's replace_stride_with_dilation=[False, True, True] (output stride 8)
    yield ("resnet50 os8", lambda: tvm.resnet50(replace_stride_with_dilation=[False, True, True]),
           ROOT / "specs/resnet50_os8.yaml", [])
    yield ("resnet50 os16", lambda: tvm.resnet50(replace_stride_with_dilation=[False, False, True]),
           ROOT / "specs/resnet50.yaml", ["output_stride=16"])
    # the whole classifier: fc included, loaded strictly, logits compared
    yield "resnet50 + head", tvm.resnet50, ROOT / "specs/resnet50_classifier.yaml", []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    failures = 0
    print(f"torch {torch.__version__}, device {args.device}")
    print("| model | params (graphres) | ignored keys | max abs diff (stage outputs or logits) | result |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, spec, overrides in cases():
            tv = make().eval()
            with torch.no_grad():  # non-trivial BN statistics
                for m in tv.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.1, 0.1)
                        m.running_var.uniform_(0.5, 1.5)
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.uniform_(-0.1, 0.1)
            path = Path(tmp) / "tv.pth"
            torch.save(tv.state_dict(), path)
            ours = graphres.build(spec, overrides, checkpoint=path).eval()
            tv, ours = tv.to(args.device), ours.to(args.device)
            x = torch.randn(2, 3, args.size, args.size, device=args.device)
            head = "head" in name
            with torch.no_grad():
                a, b = ((ours(x),), (tv(x),)) if head else (ours(x), stages_of(tv, x))
            diff = max((u - v).abs().max().item() for u, v in zip(a, b))
            shapes_ok = len(a) == len(b) and all(u.shape == v.shape for u, v in zip(a, b))
            ignored = [] if head else ["fc.bias", "fc.weight"]
            ok = shapes_ok and diff <= 1e-4 and ours.load_report.ignored == ignored
            failures += not ok
            params = sum(p.numel() for p in ours.parameters())
            print(f"| {name} | {params:,} | {', '.join(ours.load_report.ignored)} | {diff:.2e} | "
                  f"{'ok' if ok else 'FAIL'} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
