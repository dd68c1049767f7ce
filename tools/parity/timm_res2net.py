"""Private parity check: graphres' specs/res2net50_26w_4s.yaml against timm's res2net50_26w_4s
(run in /work/venvs/tv, never in CI; timm's weights are not downloaded: pretrained=False, and the
timm model's own random state dict is what graphres loads).

    PYTHONPATH=$PWD /work/venvs/tv/bin/python tools/parity/timm_res2net.py [--write-keys]

Prints key/shape agreement, the strict load, max |diff| of the logits and of the features in eval
mode (float32 and float64) and of the float64 gradients; ``--write-keys`` (re)writes
tests/data/timm_res2net50_26w_4s_keys.txt, the key list CI checks the spec against.
"""
import os
import sys
import tempfile

import timm
import torch

import graphres

KEYS = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "timm_res2net50_26w_4s_keys.txt")


def main() -> None:
    print(f"torch {torch.__version__}, timm {timm.__version__}, graphres {graphres.__version__}")
    torch.manual_seed(0)
    ref = timm.create_model("res2net50_26w_4s", pretrained=False)
    # non-trivial norms so that the comparison sees every branch
    gen = torch.Generator().manual_seed(1)
    state = ref.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(v.shape, generator=gen)
        elif k.endswith("running_mean"):
            state[k] = 0.1 * torch.randn(v.shape, generator=gen)
        elif k.split(".")[-2].startswith(("bn", "bns", "downsample")) and k.endswith(("weight", "bias")) \
                and v.dim() == 1:
            state[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
    ref.load_state_dict(state)
    ref.eval()
    if "--write-keys" in sys.argv:
        lines = ["# timm res2net50_26w_4s (timm " + timm.__version__ + "): state-dict key, shape, in timm's order; "
                 "written by tools/parity/timm_res2net.py --write-keys"]
        lines += [f"{k} {'x'.join(map(str, v.shape))}" for k, v in ref.state_dict().items()]
        with open(KEYS, "w") as f:
            f.write("\n".join(lines) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "res2net50_26w_4s.pth")
        torch.save(ref.state_dict(), path)
        model = graphres.build("res2net50_26w_4s", checkpoint=path).eval()
    tk, gk = ref.state_dict(), model.state_dict()
    print(f"keys: timm {len(tk)}, graphres {len(gk)}; same set {set(tk) == set(gk)}; same shapes "
          f"{all(tk[k].shape == gk[k].shape for k in tk)}; same order {list(tk) == list(gk)}")
    print(f"params: timm {sum(p.numel() for p in ref.parameters()):,}, graphres "
          f"{sum(p.numel() for p in model.parameters()):,}, analysis "
          f"{graphres.compile_spec('res2net50_26w_4s').graph.graph['params']:,}")
    print("strict load: ok (graphres.build(..., checkpoint=timm state dict))")
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        a, b = ref(x), model(x)
        fa = ref.forward_intermediates(x, intermediates_only=True, indices=[1, 2, 3, 4]) \
            if hasattr(ref, "forward_intermediates") else None
        fb = model.forward_features(x)
    print(f"float32 logits max|d| {(a - b).abs().max().item():.3e} (logits max {a.abs().max().item():.3f})")
    if fa is not None:
        print("float32 stage outputs max|d| " + ", ".join(f"{(u - v).abs().max().item():.3e}" for u, v in zip(fa, fb)))
    r64, m64 = ref.double(), model.double()
    x64 = x.double().requires_grad_()
    la, lb = r64(x64), m64(x64)
    print(f"float64 logits max|d| {(la - lb).abs().max().item():.3e}")
    ga = torch.autograd.grad((la ** 2).sum(), [x64] + list(r64.parameters()))
    gb_named = dict(zip([n for n, _ in m64.named_parameters()],
                        torch.autograd.grad((lb ** 2).sum(), list(m64.parameters()), retain_graph=False)))
    gx = torch.autograd.grad((m64(x64) ** 2).sum(), [x64])[0]
    names = [n for n, _ in r64.named_parameters()]
    worst = max(((ga[i + 1] - gb_named[n]).abs().max() / (ga[i + 1].abs().max() + 1e-30)).item()
                for i, n in enumerate(names))
    print(f"float64 gradients: input max rel {((ga[0] - gx).abs().max() / ga[0].abs().max()).item():.3e}, "
          f"parameters max rel {worst:.3e} ({len(names)} tensors)")
    torch.manual_seed(0)
    train_ref = timm.create_model("res2net50_26w_4s", pretrained=False)
    train_ref.load_state_dict(state)
    model.float().train()
    train_ref.train()
    with torch.no_grad():
        d = (train_ref(x) - model(x)).abs().max().item()
    print(f"train mode (batch statistics) float32 logits max|d| {d:.3e}")


if __name__ == "__main__":
    main()
