"""Private parity check: graphres' deformable convs against torchvision and mmdetection 3.3 /
mmsegmentation 1.2's real ResNet code (mmcv-lite 2.1's DCN classes on torchvision kernels).

Run in the reference venv (never in CI):

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/dcn.py > benchmarks/results/mmdet_dcn_parity.txt

1. graphres' pure-torch deform_conv2d vs torchvision.ops.deform_conv2d (float64, random offsets
   reaching outside the map, masks, strides, dilations, groups, deform groups): outputs and the
   gradients of input, offset, mask and weight.
2. For each configuration: mmdet's (or mmseg's) ResNet is built and init_weights() run; graphres
   builds the same config from the identical dict. Compared: state-dict keys, order and shapes;
   init statistics of conv2.weight / conv2.conv_offset.*; then the mmdet state dict (with the
   offset convs set to random non-zero values, so the convs really deform) is saved, loaded
   strictly into graphres from the file, and eval outputs, train outputs and float64 gradients
   are compared, on torchvision's kernels and on graphres' pure-torch path.
"""
import copy
import io
import sys
import tempfile
import os

import torch
import torchvision

sys.path.insert(0, os.path.dirname(__file__))
from mm_loader import load  # noqa: E402

import graphres  # noqa: E402
from graphres.backends.runtime import DeformConv2d  # noqa: E402


def kernel_parity() -> None:
    print("== pure-torch deform_conv2d vs torchvision.ops.deform_conv2d (float64) ==")
    print(f"{'case':44s} {'out max|d|':>11s} {'grad max|d|':>11s}")
    g = torch.Generator().manual_seed(0)
    cases = [  # n, c, h, w, out, k, stride, pad, dil, groups, dg, modulated
        (2, 8, 9, 11, 6, 3, 1, 1, 1, 1, 1, False), (2, 8, 9, 11, 6, 3, 2, 1, 1, 1, 2, True),
        (1, 12, 7, 7, 12, 3, 1, 2, 2, 3, 4, True), (1, 4, 2, 2, 4, 3, 1, 1, 1, 1, 1, False),
        (1, 4, 1, 1, 4, 3, 1, 1, 1, 1, 1, True), (2, 6, 8, 5, 9, 1, 1, 0, 1, 3, 3, False),
        (1, 16, 10, 10, 8, 3, 2, 2, 2, 2, 8, True), (1, 4, 6, 6, 4, 5, 1, 2, 1, 1, 1, True),
    ]
    worst = 0.0
    for n, c, h, w, o, k, s, p, dil, grp, dg, mod in cases:
        x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
        ho = (h + 2 * p - dil * (k - 1) - 1) // s + 1
        wo = (w + 2 * p - dil * (k - 1) - 1) // s + 1
        off = (3 * torch.randn(n, 2 * dg * k * k, ho, wo, generator=g, dtype=torch.float64)).requires_grad_()
        mask = torch.rand(n, dg * k * k, ho, wo, generator=g, dtype=torch.float64).requires_grad_() if mod else None
        weight = torch.randn(o, c // grp, k, k, generator=g, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True) if mod else None
        ins = [t for t in (x, off, mask, weight, bias) if t is not None]
        ref = torchvision.ops.deform_conv2d(x, off, weight, bias, s, p, dil, mask)
        got = DeformConv2d.deform_conv2d_torch(x, off, weight, bias, s, p, dil, grp, dg, mask)
        up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        g_ref = torch.autograd.grad(ref, ins, up)
        g_got = torch.autograd.grad(got, ins, up)
        d_out = (ref - got).abs().max().item()
        d_grad = max((a - b).abs().max().item() for a, b in zip(g_ref, g_got))
        worst = max(worst, d_out, d_grad)
        name = f"{n}x{c}x{h}x{w} k{k} s{s} p{p} d{dil} g{grp} dg{dg}{' v2' if mod else ' v1'}"
        print(f"{name:44s} {d_out:11.3e} {d_grad:11.3e}")
    print(f"worst {worst:.3e}\n")


CONFIGS = [
    ("r50 DCN stages 2-4", "mmdet", dict(type="ResNet", depth=50, dcn=dict(type="DCN", deform_groups=1,
                                         fallback_on_stride=False), stage_with_dcn=[False, True, True, True])),
    ("r50 DCNv2 stages 2-4", "mmdet", dict(type="ResNet", depth=50, dcn=dict(type="DCNv2", deform_groups=1,
                                           fallback_on_stride=False), stage_with_dcn=[False, True, True, True])),
    ("r50 DCN dg4 caffe", "mmdet", dict(type="ResNet", depth=50, style="caffe", dcn=dict(type="DCN", deform_groups=4),
                                        stage_with_dcn=[True, False, True, False])),
    ("r101 DCNv2 dg4 frozen1", "mmdet", dict(type="ResNet", depth=101, frozen_stages=1,
                                             dcn=dict(type="DCNv2", deform_groups=4, fallback_on_stride=False),
                                             stage_with_dcn=[False, True, True, True])),
    ("x101-32x4d DCN", "mmdet", dict(type="ResNeXt", depth=101, groups=32, base_width=4,
                                     dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False),
                                     stage_with_dcn=[False, True, True, True])),
    ("r50 3 stages DCNv2", "mmdet", dict(type="ResNet", depth=50, num_stages=3, out_indices=[0, 1, 2],
                                         strides=[1, 2, 2], dilations=[1, 1, 1],
                                         dcn=dict(type="DCNv2"), stage_with_dcn=[False, True, True])),
    ("mmseg V1c d8 contract+multi_grid DCN", "mmseg", dict(
        type="ResNetV1c", depth=50, strides=[1, 2, 1, 1], dilations=[1, 1, 2, 4], contract_dilation=True,
        multi_grid=[1, 2, 4], dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=[False, True, True, True])),
    ("mmseg V1d d16 DCNv2 norm_eval false", "mmseg", dict(
        type="ResNetV1d", depth=50, strides=[1, 2, 2, 1], dilations=[1, 1, 1, 2], contract_dilation=True,
        dcn=dict(type="DCNv2", deform_groups=2), stage_with_dcn=[False, False, True, True])),
]


def _mm_model(det, seg, scope, cfg):
    cfg = copy.deepcopy(cfg)
    kind = cfg.pop("type")
    mod = det if scope == "mmdet" else seg
    if kind == "ResNeXt":
        import mmdet
        path = os.path.join(os.path.dirname(mmdet.__file__), "models", "backbones", "resnext.py")
        import importlib.util
        spec = importlib.util.spec_from_file_location("mmdet.models.backbones.resnext", path)
        rx = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = rx
        spec.loader.exec_module(rx)
        return rx.ResNeXt(**cfg)
    return getattr(mod, kind)(**cfg)


def _stats(t):
    t = t.detach().double()
    return t.mean().item(), t.std().item() if t.numel() > 1 else 0.0, t.abs().max().item()


def model_parity(det, seg) -> None:
    print("== mmdet / mmseg ResNet with DCN vs graphres ==")
    for name, scope, cfg in CONFIGS:
        torch.manual_seed(0)
        mm = _mm_model(det, seg, scope, cfg)
        import logging
        logging.getLogger("mmengine").setLevel(logging.ERROR)
        mm.init_weights()
        spec_type = cfg["type"] if scope == "mmdet" else "mmseg." + cfg["type"]
        gcfg = dict(cfg, type=spec_type)
        torch.manual_seed(0)
        gr = graphres.build({"graphres": 1, "input": {"size": 64}, "backbone": gcfg})
        mk, gk = list(mm.state_dict().items()), list(gr.state_dict().items())
        same_keys = [k for k, _ in mk] == [k for k, _ in gk]
        same_shapes = same_keys and all(a.shape == b.shape for (_, a), (_, b) in zip(mk, gk))
        print(f"-- {name} ({scope}): {len(mk)} keys, keys+order {'equal' if same_keys else 'DIFFER'}, "
              f"shapes {'equal' if same_shapes else 'DIFFER'}, params {sum(p.numel() for p in mm.parameters()):,} "
              f"vs {sum(p.numel() for p in gr.parameters()):,}")
        if not same_keys:
            ms, gs = {k for k, _ in mk}, {k for k, _ in gk}
            print("   only mmdet:", sorted(ms - gs)[:6], " only graphres:", sorted(gs - ms)[:6])
            continue
        # init statistics of the deformable layers (mean, std, max|w|), first DCN block
        first = next(k for k, _ in mk if k.endswith("conv2.conv_offset.weight")).rsplit(".conv_offset", 1)[0]
        for suffix in ("weight", "conv_offset.weight", "conv_offset.bias"):
            key = f"{first}.{suffix}"
            a, b = _stats(mm.state_dict()[key]), _stats(gr.state_dict()[key])
            print(f"   init {key:34s} mmdet mean {a[0]:+.4f} std {a[1]:.4f} max {a[2]:.4f} | "
                  f"graphres mean {b[0]:+.4f} std {b[1]:.4f} max {b[2]:.4f}")
        # non-zero offsets and masks, so that the convs deform; BN statistics made non-trivial
        state = mm.state_dict()
        gen = torch.Generator().manual_seed(1)
        for k in state:
            if "conv_offset" in k:
                state[k] = 0.05 * torch.randn(state[k].shape, generator=gen)
            elif k.endswith("running_var"):
                state[k] = 0.5 + torch.rand(state[k].shape, generator=gen)
            elif k.endswith("running_mean"):
                state[k] = 0.1 * torch.randn(state[k].shape, generator=gen)
            elif "bn" in k.split(".")[-2] and k.endswith(("weight", "bias")):
                state[k] = 1.0 + 0.1 * torch.randn(state[k].shape, generator=gen)
        mm.load_state_dict(state, strict=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "mm_dcn.pth")
            torch.save({"state_dict": state, "meta": {"source": "mmdet ResNet with dcn"}}, path)
            gr = graphres.build({"graphres": 1, "input": {"size": 64}, "backbone": gcfg}, checkpoint=path)
        for path_name, use_tv in (("torchvision", True), ("pure-torch", False)):
            DeformConv2d.use_torchvision = use_tv
            x = torch.randn(2, 3, 64, 64, generator=gen)
            mm.eval(), gr.eval()
            with torch.no_grad():
                a, b = mm(x), gr(x)
            d_eval = max((u - v).abs().max().item() for u, v in zip(a, b))
            r_eval = max(((u - v).abs().max() / u.abs().max()).item() for u, v in zip(a, b))
            mm.train(), gr.train()
            with torch.no_grad():
                a, b = mm(x), gr(x)
            d_train = max((u - v).abs().max().item() for u, v in zip(a, b))
            m64, g64 = copy.deepcopy(mm).double(), copy.deepcopy(gr).double()
            m64.eval()  # mmdet's train() returns None: no chaining
            g64.eval()
            x64 = x.double().requires_grad_()
            ya, yb = m64(x64), g64(x64)
            la = sum((t * t).sum() for t in ya)
            lb = sum((t * t).sum() for t in yb)
            ga = torch.autograd.grad(la, [x64] + [p for p in m64.parameters() if p.requires_grad])
            gb = torch.autograd.grad(lb, [x64] + [p for p in g64.parameters() if p.requires_grad])
            rel = max(((u - v).abs().max() / (u.abs().max() + 1e-30)).item() for u, v in zip(ga, gb))
            frozen_same = [p.requires_grad for p in mm.parameters()] == [p.requires_grad for p in gr.parameters()]
            print(f"   {path_name:11s} eval max|d| {d_eval:.3e} (relative to max|out| {r_eval:.1e}), "
                  f"train max|d| {d_train:.3e}, float64 grads "
                  f"max rel {rel:.3e} ({len(ga)} tensors), requires_grad flags {'equal' if frozen_same else 'DIFFER'}")
        DeformConv2d.use_torchvision = True
    print()


if __name__ == "__main__":
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, graphres {graphres.__version__}\n")
    kernel_parity()
    det, seg, _, _ = load()
    model_parity(det, seg)
