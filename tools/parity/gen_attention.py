"""Differential check of graphres' GeneralizedAttention plugin (and NonLocal2d sub_sample=True)
against mmdetection 3.3's real ResNet with mmcv 2.1's GeneralizedAttention. Private: run in
/work/venvs/mm,

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/gen_attention.py 2>/dev/null | grep '^[|#]\|^init\|^(t' > benchmarks/results/gen_attention_parity.txt

Per configuration: state-dict keys, order and shapes; the initialisation after init_weights()
(constants equal, local_constraint_map bit for bit, the std of random tensors); then mmdetection's weights loaded into graphres
strictly (gamma set to 0.5 in both so the attention branch shows in the outputs; mmcv starts it at
zero) and eval outputs, train-mode outputs, float64 input and parameter gradients compared.
DCN runs on mmcv-lite's DeformConv2dPack with torchvision's kernel (tools/parity/mm_loader.py).
NonLocal2d sub_sample=True (W120) and GeneralizedAttention spatial_range >= 0 (W124: mmengine's
init_weights() takes the mean of the uint8 local_constraint_map) cannot run mmdetection's
init_weights(): those rows compare after mmcv's constructor init only ("no init_weights": the
backbone's convs keep torch's default init there, so their std differs from graphres' Kaiming).
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mm_loader import load  # noqa: E402
from plugins import compare_init  # noqa: E402

import graphres  # noqa: E402


def ga(t, **kw):
    return dict(type="GeneralizedAttention", spatial_range=-1, num_heads=8, attention_type=t, kv_stride=2, **kw)


S = (False, True, True, True)
DCN = dict(type="DCN", deform_groups=1, fallback_on_stride=False)
CONFIGS = {
    # mmdetection 3.3 configs/empirical_attention
    "attn0010 (faster-rcnn_r50-attn0010)": dict(plugins=[dict(cfg=ga("0010"), position="after_conv2", stages=S)]),
    "attn1111 (faster-rcnn_r50-attn1111)": dict(plugins=[dict(cfg=ga("1111"), position="after_conv2", stages=S)]),
    "attn0010 + dcn (attn0010-dcn)": dict(dcn=DCN, stage_with_dcn=S,
                                          plugins=[dict(cfg=ga("0010"), position="after_conv2", stages=S)]),
    "attn1111 + dcn (attn1111-dcn)": dict(dcn=DCN, stage_with_dcn=S,
                                          plugins=[dict(cfg=ga("1111"), position="after_conv2", stages=S)]),
    # the other attention types, q_stride, position_embedding_dim, magnitude, positions
    "1000 q_stride 2": dict(plugins=[dict(cfg=ga("1000", q_stride=2), position="after_conv2", stages=S)]),
    "0100 (square maps), pos dim 16": dict(plugins=[dict(cfg=ga("0100", position_embedding_dim=16),
                                                         position="after_conv2", stages=S)]),
    "0001 pos dim 16, magnitude 2": dict(plugins=[dict(cfg=ga("0001", position_embedding_dim=16,
                                                               position_magnitude=2), position="after_conv2",
                                                        stages=S)]),
    "0110 q_stride 2, pos dim 16": dict(plugins=[dict(cfg=ga("0110", q_stride=2, position_embedding_dim=16),
                                                      position="after_conv2", stages=S)]),
    "1111 q_stride 2 kv_stride 1, after_conv3": dict(plugins=[dict(cfg=dict(ga("1111", q_stride=2), kv_stride=1),
                                                                   position="after_conv3",
                                                                   stages=(False, False, True, True))]),
    "0010 q_stride 2, after_conv1 + gcb": dict(plugins=[
        dict(cfg=ga("0010", q_stride=2), position="after_conv1", stages=S),
        dict(cfg=dict(type="ContextBlock", ratio=1. / 16), position="after_conv3")]),
    "1010 heads 6 (floored channels), pos dim 16": dict(plugins=[dict(cfg=dict(ga("1010"), num_heads=6),
                                                                      position="after_conv2", stages=S)]),
    "0101 + 1011 postfix, one position": dict(plugins=[
        dict(cfg=ga("0101", position_embedding_dim=16), position="after_conv2", stages=S),
        dict(cfg=ga("1011", position_embedding_dim=16, postfix=1), position="after_conv2", stages=S)]),
    "1111 spatial_range 3, c4-c5 (no init_weights)": dict(plugins=[dict(cfg=dict(ga("1111"), spatial_range=3),
                                                                         position="after_conv2",
                                                                         stages=(False, False, True, True))]),
    "0010 spatial_range 1 kv_stride 1 q_stride 2, c4-c5 (no init_weights)": dict(plugins=[dict(
        cfg=dict(ga("0010", q_stride=2), kv_stride=1, spatial_range=1), position="after_conv2",
        stages=(False, False, True, True))]),
    "0101 spatial_range 0 + dcn, c4 (no init_weights)": dict(dcn=DCN, stage_with_dcn=(False, False, True, False), plugins=[dict(
        cfg=dict(ga("0101", position_embedding_dim=16), spatial_range=0), position="after_conv2",
        stages=(False, False, True, False))]),
    "nonlocal sub_sample (no init_weights)": dict(plugins=[dict(cfg=dict(type="NonLocal2d", sub_sample=True),
                                                                position="after_conv2",
                                                                stages=(False, True, True, False))]),
    "nonlocal gaussian sub_sample (no init_weights)": dict(plugins=[dict(
        cfg=dict(type="NonLocal2d", sub_sample=True, mode="gaussian"), position="after_conv3",
        stages=(False, False, True, False))]),
}
SIZE = 64


def listify(value):
    if isinstance(value, tuple):
        return [listify(v) for v in value]
    if isinstance(value, list):
        return [listify(v) for v in value]
    if isinstance(value, dict):
        return {k: listify(v) for k, v in value.items()}
    return value


def set_gamma(m, value):
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.endswith("gen_attention_block.gamma") or k.endswith("gen_attention_block1.gamma"):
                p.fill_(value)


def main():
    det = load()[0].ResNet
    import mmcv.cnn  # noqa: F401  (registers GeneralizedAttention, ContextBlock, NonLocal2d)
    print(f"# graphres GeneralizedAttention (+ NonLocal2d sub_sample) vs mmdetection 3.3 ResNet-50 (mmcv 2.1), "
          f"input 2x3x{SIZE}x{SIZE}")
    print("init: constant tensors (zeros, ones) equal; random ones: the largest relative difference of the std")
    print("(tensors of >= 1024 values); outputs with mmdetection's weights loaded strictly, gamma 0.5 in both")
    print("| configuration | keys | order | shapes | init constants | init std rel diff | eval max abs "
          "| train max abs | float64 grad max abs |")
    print("|---|---|---|---|---|---|---|---|---|")
    only = sys.argv[1] if len(sys.argv) > 1 else ""  # run the configurations whose name contains it
    for name, cfg in CONFIGS.items():
        if only not in name:
            continue
        torch.manual_seed(0)
        mm = det(depth=50, **copy.deepcopy(cfg))
        if "no init_weights" not in name:
            mm.init_weights()
        gr_cfg = {"graphres": 1, "name": "p", "input": {"channels": 3, "size": [SIZE, SIZE]},
                  "backbone": {"type": "ResNet", "depth": 50, **listify(copy.deepcopy(cfg))}}
        gm = graphres.build(gr_cfg)
        a, b = mm.state_dict(), gm.state_dict()
        keys = "same" if set(a) == set(b) else f"DIFF -{sorted(set(a) - set(b))[:3]} +{sorted(set(b) - set(a))[:3]}"
        order = "same" if list(a) == list(b) else "differs"
        shapes = "same" if keys == "same" and all(a[k].shape == b[k].shape for k in a) else "DIFF"
        constants_equal, worst = compare_init(a, b) if keys == "same" else (False, (float("nan"), "-"))
        masks = [k for k in a if k.endswith("local_constraint_map")]
        if keys == "same" and masks:  # uint8: compare_init skips them; they must be equal bit for bit
            equal = all(torch.equal(a[k], b[k]) for k in masks)
            name += f" ({len(masks)} local_constraint_maps {'equal' if equal else 'DIFFER'})"
        if keys != "same":
            print(f"| {name} | {keys} | {order} | {shapes} | - | - | - | - | - |", flush=True)
            continue
        set_gamma(mm, 0.5)
        gm.load_state_dict(mm.state_dict(), strict=True)
        x = torch.randn(2, 3, SIZE, SIZE)
        mm.eval(), gm.eval()
        with torch.no_grad():
            ev = max(float((p - q).abs().max()) for p, q in zip(mm(x), gm(x)))
        mm.train(), gm.train()
        with torch.no_grad():
            tr = max(float((p - q).abs().max()) for p, q in zip(mm(x), gm(x)))
        mm.double().eval(), gm.double().eval()
        gm.load_state_dict(mm.state_dict())
        xd = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
        grads = []
        for m in (mm, gm):
            xi = xd.clone().requires_grad_(True)
            m.zero_grad()
            sum((o * o).sum() for o in m(xi)).backward()
            grads.append((xi.grad, {k: p.grad for k, p in m.named_parameters() if p.grad is not None}))
        (ga_, pa), (gb, pb) = grads
        gdiff = float((ga_ - gb).abs().max())
        pdiff = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
        grad = f"{max(gdiff, pdiff):.1e}" + ("" if set(pa) == set(pb) else " (grad sets differ)")
        print(f"| {name} | {keys} | {order} | {shapes} | {'equal' if constants_equal else 'DIFFER'} | "
              f"{worst[0]:.3f} ({worst[1]}) | {ev:.1e} | {tr:.1e} | {grad} |", flush=True)


if __name__ == "__main__":
    main()
