"""Differential check of graphres' attention plugins against mmdetection 3.3's and mmsegmentation
1.2's real ResNet (mmcv 2.1's ContextBlock and NonLocal2d). Private: run in /work/venvs/mm,

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/plugins.py > benchmarks/results/plugins_parity.txt

For each configuration it compares the state-dict keys, their order and shapes; the initialisation
after init_weights() (mean and std of every tensor, graphres' own init against mmdetection's);
then loads mmdetection's weights into graphres strictly and compares eval outputs, train-mode
outputs (batch statistics), and float64 input and parameter gradients.
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mm_loader import resnets  # noqa: E402

import graphres  # noqa: E402

GCB = dict(type="ContextBlock", ratio=1. / 16)
CONFIGS = {
    "gcb r16 c3-c5 (gcnet)": dict(depth=50, plugins=[dict(cfg=GCB, stages=(False, True, True, True),
                                                          position="after_conv3")]),
    "gcb r4 avg add+mul": dict(depth=50, plugins=[dict(cfg=dict(type="ContextBlock", ratio=1. / 4, pooling_type="avg",
                                                                fusion_types=("channel_add", "channel_mul")),
                                                       position="after_conv3")]),
    "gcb att mul only, after_conv2": dict(depth=50, plugins=[dict(cfg=dict(type="ContextBlock", ratio=1. / 8,
                                                                           fusion_types=("channel_mul",)),
                                                                  position="after_conv2")]),
    "nonlocal embedded (default) after_conv2": dict(depth=50, plugins=[dict(cfg=dict(type="NonLocal2d"),
                                                                           position="after_conv2",
                                                                           stages=(False, False, True, False))]),
    "nonlocal dot_product r4, use_scale false": dict(depth=50, plugins=[dict(
        cfg=dict(type="NonLocal2d", reduction=4, mode="dot_product", use_scale=False), position="after_conv1")]),
    "nonlocal gaussian": dict(depth=50, plugins=[dict(cfg=dict(type="NonLocal2d", mode="gaussian"),
                                                      position="after_conv3", stages=(False, False, False, True))]),
    "nonlocal embedded no scale": dict(depth=50, plugins=[dict(cfg=dict(type="NonLocal2d", use_scale=False),
                                                               position="after_conv3",
                                                               stages=(False, True, False, False))]),
    "gcb x2 postfix + nonlocal, one position": dict(depth=50, plugins=[
        dict(cfg=dict(type="ContextBlock", ratio=1. / 16, postfix=1), position="after_conv3"),
        dict(cfg=dict(type="ContextBlock", ratio=1. / 16, postfix=2), position="after_conv3"),
        dict(cfg=dict(type="NonLocal2d", reduction=4), position="after_conv3", stages=(False, False, True, True))]),
    "ResNeXt 32x4d + gcb, caffe, frozen 1": dict(type="ResNeXt", depth=50, groups=32, base_width=4, style="caffe",
                                                 frozen_stages=1, plugins=[dict(cfg=GCB, position="after_conv2")]),
    "ResNetV1d 101 + nonlocal dilated": dict(type="ResNetV1d", depth=101, strides=(1, 2, 1, 1),
                                             dilations=(1, 1, 2, 4), plugins=[dict(
                                                 cfg=dict(type="NonLocal2d", reduction=4),
                                                 position="after_conv2", stages=(False, False, True, False))]),
    "mmseg: two plugins at one position (last kept), contract_dilation + multi_grid": dict(
        type="mmseg.ResNetV1c", depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True,
        multi_grid=(1, 2, 4), plugins=[
            dict(cfg=dict(type="ContextBlock", ratio=1. / 16, postfix=1), position="after_conv3"),
            dict(cfg=dict(type="NonLocal2d", reduction=4), position="after_conv3", stages=(False, False, True, True))]),
    "nonlocal concatenation (forward only in mmcv)": dict(depth=50, plugins=[dict(
        cfg=dict(type="NonLocal2d", mode="concatenation", reduction=4), position="after_conv2",
        stages=(False, False, False, True))]),
}
SIZE = 64


def build_mm(det, seg, cfg):
    cfg = copy.deepcopy(cfg)
    kind = cfg.pop("type", "ResNet")
    cls = seg if kind.startswith("mmseg.") else det
    kind = kind.split(".")[-1]
    extra = {}
    if kind == "ResNetV1c":
        extra = dict(deep_stem=True)
    elif kind == "ResNetV1d":
        extra = dict(deep_stem=True, avg_down=True)
    elif kind == "ResNeXt":
        raise NotImplementedError
    if cls is seg:
        extra.setdefault("stem_channels", 64)
        cfg.setdefault("norm_eval", False)
    return cls(**extra, **cfg)


def compare_init(a, b):
    """(whether every constant tensor of mmdetection's is equal in graphres, the largest relative
    difference of the standard deviation over random tensors of >= 1024 values, its key)."""
    constants_equal, worst = True, (0.0, "-")
    for k, va in a.items():
        if not va.is_floating_point():
            continue
        va, vb = va.double(), b[k].double()
        if va.numel() == 1 or float(va.std()) == 0.0:
            constants_equal &= bool(torch.equal(va, vb))
        elif va.numel() >= 1024:
            worst = max(worst, (abs(float(vb.std()) / float(va.std()) - 1), k))
    return constants_equal, worst


def main():
    det, seg = resnets()
    import importlib.util
    rx_path = Path(sys.modules[det.__module__].__file__).with_name("resnext.py")
    spec = importlib.util.spec_from_file_location("mmdet.models.backbones.resnext", rx_path)
    rx = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = rx
    spec.loader.exec_module(rx)
    print(f"# graphres plugins vs mmdetection 3.3 / mmsegmentation 1.2 (mmcv 2.1), input 2x3x{SIZE}x{SIZE}")
    print("init: constant tensors (zeros, ones, LayerNorm) equal; random ones: the largest relative difference of")
    print("the standard deviation (tensors of >= 1024 values; sampling noise is a few percent)")
    print("| configuration | keys | order | shapes | init constants | init std rel diff | eval max abs "
          "| train max abs | float64 grad max abs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        if cfg.get("type") == "ResNeXt":
            c = dict(cfg)
            c.pop("type")
            mm = rx.ResNeXt(**c)
        else:
            mm = build_mm(det, seg, cfg)
        mm.init_weights()
        gr_cfg = {"graphres": 1, "name": "p", "input": {"channels": 3, "size": [SIZE, SIZE]},
                  "backbone": {"type": "ResNet", **copy.deepcopy(cfg)}}
        if cfg.get("type"):
            gr_cfg["backbone"]["type"] = cfg["type"]
        for p in gr_cfg["backbone"].get("plugins", []):
            p["cfg"] = dict(p["cfg"])
            if "fusion_types" in p["cfg"]:
                p["cfg"]["fusion_types"] = list(p["cfg"]["fusion_types"])
            if "stages" in p:
                p["stages"] = list(p["stages"])
        for k in ("strides", "dilations", "multi_grid"):
            if k in gr_cfg["backbone"]:
                gr_cfg["backbone"][k] = list(gr_cfg["backbone"][k])
        gm = graphres.build(gr_cfg)
        a, b = mm.state_dict(), gm.state_dict()
        keys = "same" if set(a) == set(b) else f"DIFF -{sorted(set(a) - set(b))[:3]} +{sorted(set(b) - set(a))[:3]}"
        order = "same" if list(a) == list(b) else "differs"
        shapes = "same" if all(a[k].shape == b[k].shape for k in set(a) & set(b)) else "DIFF"
        constants_equal, worst = compare_init(a, b) if keys == "same" else (False, (float("nan"), "-"))
        gm.load_state_dict(a, strict=True)
        x = torch.randn(2, 3, SIZE, SIZE)
        mm.eval(), gm.eval()
        with torch.no_grad():
            ev = max(float((p - q).abs().max()) for p, q in zip(mm(x), gm(x)))
        mm.train(), gm.train()
        with torch.no_grad():
            tr = max(float((p - q).abs().max()) for p, q in zip(mm(x), gm(x)))
        grad = "n/a (mmcv backward fails)"
        if "concatenation" not in name:
            mm.double().eval(), gm.double().eval()
            gm.load_state_dict(mm.state_dict())
            xd = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
            grads = []
            for m in (mm, gm):
                xi = xd.clone().requires_grad_(True)
                m.zero_grad()
                sum((o * o).sum() for o in m(xi)).backward()
                grads.append((xi.grad, {k: p.grad for k, p in m.named_parameters() if p.grad is not None}))
            (ga, pa), (gb, pb) = grads
            gdiff = float((ga - gb).abs().max())
            pdiff = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
            grad = f"{max(gdiff, pdiff):.1e}" + ("" if set(pa) == set(pb) else " (grad sets differ)")
        print(f"| {name} | {keys} | {order} | {shapes} | {'equal' if constants_equal else 'DIFFER'} | "
              f"{worst[0]:.3f} ({worst[1]}) | {ev:.1e} | {tr:.1e} | {grad} |", flush=True)


if __name__ == "__main__":
    main()
