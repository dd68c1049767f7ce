"""Private parity check: graphres' specs/resnest50d.yaml against timm's resnest50d, and its
variants written as `_base_: resnest50d` specs against timm's resnest14d, resnest26d, resnest101e,
resnest50d_4s2x40d (radix 4, cardinality 2, avd_first) and resnest50d_1s4x24d (radix 1: the
sigmoid gate, cardinality 4). Run in /work/venvs/tv, never in CI; timm's weights are not
downloaded: pretrained=False, and the timm model's own random state dict (with perturbed norms) is
what graphres loads.

    PYTHONPATH=$PWD /work/venvs/tv/bin/python tools/parity/timm_resnest.py [--write-keys] [--quick]

For resnest50d: key/shape/order agreement, parameter counts, the strict load, max |diff| of the
logits and the stage outputs in eval mode (float32 and float64), of the float64 gradients (input
and every parameter), and of the train-mode logits (batch statistics). For each variant: keys,
order, shapes, parameters, strict load, float32 and float64 eval logits at 128x128 (``--quick``
skips the variants). ``--write-keys`` (re)writes tests/data/timm_resnest50d_keys.txt, the key
list CI checks the spec against.
"""
import os
import sys
import tempfile

import timm
import torch

import graphres

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "..", "tests", "data", "timm_resnest50d_keys.txt")

# timm model -> the graphres spec text that declares it (a variant inherits resnest50d's blocks)
VARIANTS = {
    "resnest14d": "stages:\n" + "".join(
        f"  - {{block: resnest_bottleneck, blocks: 1, planes: {p}{', stride: 2' if i else ''}}}\n"
        for i, p in enumerate((64, 128, 256, 512))),
    "resnest26d": "stages:\n" + "".join(
        f"  - {{block: resnest_bottleneck, blocks: 2, planes: {p}{', stride: 2' if i else ''}}}\n"
        for i, p in enumerate((64, 128, 256, 512))),
    "resnest101e": "stem: {type: timm_deep, channels: 128}\nstages:\n" + "".join(
        f"  - {{block: resnest_bottleneck, blocks: {n}, planes: {p}{', stride: 2' if i else ''}}}\n"
        for i, (n, p) in enumerate(((3, 64), (4, 128), (23, 256), (3, 512)))),
    "resnest50d_4s2x40d": "block_args: {radix: 4, cardinality: 2, base_width: 40, avd_first: true}\n",
    "resnest50d_1s4x24d": "block_args: {radix: 1, cardinality: 4, base_width: 24, avd_first: true}\n",
}


def perturbed(ref: torch.nn.Module, seed: int) -> dict:
    """timm's state dict with non-trivial norms (every branch shows; bn3 is not zero)."""
    gen = torch.Generator().manual_seed(seed)
    state = ref.state_dict()
    for name, m in ref.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            p = name + "."
            c = m.num_features
            state[p + "weight"] = 1.0 + 0.1 * torch.randn(c, generator=gen)
            state[p + "bias"] = 0.1 * torch.randn(c, generator=gen)
            state[p + "running_mean"] = 0.1 * torch.randn(c, generator=gen)
            state[p + "running_var"] = 0.5 + torch.rand(c, generator=gen)
    ref.load_state_dict(state)
    return state


def load(spec: str, state: dict, tmp: str, tag: str) -> torch.nn.Module:
    path = os.path.join(tmp, tag + ".pth")
    torch.save(state, path)
    return graphres.build(spec, checkpoint=path)


def key_report(ref, model, spec) -> str:
    tk, gk = ref.state_dict(), model.state_dict()
    return (f"keys: timm {len(tk)}, graphres {len(gk)}; same set {set(tk) == set(gk)}; same shapes "
            f"{set(tk) == set(gk) and all(tk[k].shape == gk[k].shape for k in tk)}; same order {list(tk) == list(gk)}\n"
            f"params: timm {sum(p.numel() for p in ref.parameters()):,}, graphres "
            f"{sum(p.numel() for p in model.parameters()):,}, analysis "
            f"{graphres.compile_spec(spec).graph.graph['params']:,}\n"
            "strict load: ok (graphres.build(..., checkpoint=timm state dict))")


def main_model(tmp: str) -> None:
    print("== resnest50d (specs/resnest50d.yaml), input 2x3x224x224")
    torch.manual_seed(0)
    ref = timm.create_model("resnest50d", pretrained=False)
    state = perturbed(ref, 1)
    ref.eval()
    if "--write-keys" in sys.argv:
        lines = ["# timm resnest50d (timm " + timm.__version__ + "): state-dict key, shape, in timm's order; "
                 "written by tools/parity/timm_resnest.py --write-keys"]
        lines += [f"{k} {'x'.join(map(str, v.shape))}" for k, v in ref.state_dict().items()]
        with open(KEYS, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {os.path.relpath(KEYS)} ({len(lines) - 1} keys)")
    model = load("resnest50d", state, tmp, "resnest50d").eval()
    print(key_report(ref, model, "resnest50d"))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        a, b = ref(x), model(x)
        fa = ref.forward_intermediates(x, intermediates_only=True, indices=[1, 2, 3, 4])
        fb = model.forward_features(x)
    print(f"float32 logits max|d| {(a - b).abs().max().item():.3e} (logits max {a.abs().max().item():.3f})")
    print("float32 stage outputs max|d| " + ", ".join(f"{(u - v).abs().max().item():.3e}" for u, v in zip(fa, fb)))
    r64, m64 = ref.double(), model.double()
    x64 = x.double().requires_grad_()
    with torch.no_grad():
        fa64 = r64.forward_intermediates(x64, intermediates_only=True, indices=[1, 2, 3, 4])
        fb64 = m64.forward_features(x64)
    print("float64 stage outputs max|d| " + ", ".join(f"{(u - v).abs().max().item():.3e}"
                                                     for u, v in zip(fa64, fb64)))
    la, lb = r64(x64), m64(x64)
    print(f"float64 logits max|d| {(la - lb).abs().max().item():.3e}")
    names = [n for n, _ in r64.named_parameters()]
    ga = torch.autograd.grad((la ** 2).sum(), [x64] + list(r64.parameters()))
    gb = torch.autograd.grad((lb ** 2).sum(), [x64] + [dict(m64.named_parameters())[n] for n in names])
    worst = max(((u - v).abs().max() / (u.abs().max() + 1e-30)).item() for u, v in zip(ga[1:], gb[1:]))
    print(f"float64 gradients: input max rel {((ga[0] - gb[0]).abs().max() / ga[0].abs().max()).item():.3e}, "
          f"parameters max rel {worst:.3e} ({len(names)} tensors)")
    ref.float().train()
    model.float().train()
    with torch.no_grad():
        d = (ref(x) - model(x)).abs().max().item()
    print(f"train mode (batch statistics) float32 logits max|d| {d:.3e}")
    ok = all(ref.state_dict()[k].equal(v) for k, v in model.state_dict().items() if k.endswith("running_mean"))
    print(f"train mode running statistics equal after one step: {ok}")


def variants(tmp: str) -> None:
    for name, text in VARIANTS.items():
        spec = os.path.join(tmp, name + ".yaml")
        with open(spec, "w") as f:
            f.write(f"graphres: 1\n_base_: resnest50d\nname: {name}\n{text}")
        print(f"== {name} (_base_: resnest50d + {text.splitlines()[0].split(':')[0]}...), input 2x3x128x128")
        torch.manual_seed(0)
        ref = timm.create_model(name, pretrained=False)
        state = perturbed(ref, 3)
        ref.eval()
        model = load(spec, state, tmp, name).eval()
        print(key_report(ref, model, spec))
        x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            d32 = (ref(x) - model(x)).abs().max().item()
            d64 = (ref.double()(x.double()) - model.double()(x.double())).abs().max().item()
        print(f"float32 logits max|d| {d32:.3e}; float64 logits max|d| {d64:.3e}")


def main() -> None:
    print(f"torch {torch.__version__}, timm {timm.__version__}, graphres {graphres.__version__}")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        main_model(tmp)
        if "--quick" not in sys.argv:
            variants(tmp)


if __name__ == "__main__":
    main()
