"""Private differential: mmdetection 3.3's ResNet against graphres, attributes and initialisation.

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/mmdet_attrs.py > benchmarks/results/mmdet_attrs.txt

For each configuration both models are built from the same seed and initialised (mmengine's
``init_weights()``; graphres in its constructor, from the same init_cfg): the state dicts must be
equal bit for bit (the same initialisers consume the random stream in the same module order), and
every attribute mmdetection code reads must be equal."""
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mm_loader import load_mmdet_resnet  # noqa: E402

import graphres  # noqa: E402

resnet, _ = load_mmdet_resnet()
import logging  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
MMLogger.get_instance("mmengine", log_level="WARNING")
logging.getLogger("mmengine").setLevel(logging.WARNING)
NET_ATTRS = ["depth", "stem_channels", "base_channels", "num_stages", "strides", "dilations", "out_indices",
             "frozen_stages", "norm_eval", "res_layers", "feat_dim", "deep_stem", "avg_down", "style",
             "zero_init_residual", "stage_blocks", "inplanes", "with_cp", "init_cfg"]
BLOCK_ATTRS = ["stride", "dilation", "with_cp", "expansion", "planes", "inplanes", "style", "conv1_stride",
               "conv2_stride", "norm1_name", "norm2_name", "norm3_name"]
CASES = [
    ("ResNet", dict(depth=18)),
    ("ResNet", dict(depth=50)),
    ("ResNet", dict(depth=50, frozen_stages=1, style="caffe", out_indices=(1, 3))),
    ("ResNet", dict(depth=50, zero_init_residual=False)),
    ("ResNet", dict(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))),
    ("ResNet", dict(depth=101, norm_cfg=dict(type="GN", num_groups=32, requires_grad=True))),
    ("ResNet", dict(depth=34, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2))),
    ("ResNetV1d", dict(depth=50)),
    ("ResNet", dict(depth=50, deep_stem=True)),
    ("ResNet", dict(depth=50, init_cfg=[dict(type="Kaiming", layer="Conv2d", mode="fan_in"),
                                        dict(type="Constant", val=0.5, layer=["_BatchNorm"])])),
    ("ResNet", dict(depth=18, init_cfg=dict(type="Normal", std=0.02, layer="Conv2d"))),
    ("ResNet", dict(depth=18, init_cfg=dict(type="Xavier", distribution="uniform", layer=["Conv2d"]))),
    ("ResNet", dict(depth=18, init_cfg=dict(type="Kaiming", a=0.1, nonlinearity="leaky_relu",
                                             distribution="uniform", layer="Conv2d"))),
    ("ResNet", dict(depth=18, init_cfg=dict(type="Kaiming"))),
]


def same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, list) and len(b) == 1:  # graphres keeps init_cfg as a list
        b = b[0]
    if isinstance(a, dict) and isinstance(b, dict):
        norm = lambda d: {k: (list(v) if isinstance(v, (list, tuple)) else [v] if k == "layer" else v)  # noqa: E731
                          for k, v in d.items() if not (k == "layer" and not v)}
        return norm(a) == norm(b)
    return a == b


def main():
    print(f"torch {torch.__version__}; mmdet ResNet from {resnet.__file__}")
    failures = 0
    for kind, kwargs in CASES:
        torch.manual_seed(0)
        ref = getattr(resnet, kind)(**kwargs)
        ref.init_weights()
        ref.train()
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = graphres.build({"graphres": 1, "backbone": {"type": kind, **kwargs}})
        ours.train()
        rs, os_ = ref.state_dict(), ours.state_dict()
        keys = list(rs) == list(os_)
        worst = max(rs, key=lambda k: (rs[k].float() - os_[k].float()).abs().max().item() if k in os_ else 0)
        diff = max(((rs[k].float() - os_[k].float()).abs().max().item() for k in rs if k in os_), default=0.0)
        stats = [(k, rs[k].float().std().item(), os_[k].float().std().item()) for k in rs
                 if k.endswith(".weight") and k in os_][:1]
        bad = [a for a in NET_ATTRS if not same(getattr(ref, a), getattr(ours, a))]
        if getattr(ref, "norm1_name", None):
            bad += [] if ref.norm1_name == ours.norm1_name and type(ref.norm1) is type(ours.norm1) else ["norm1"]
        for name in ref.res_layers:
            for rb, ob in zip(getattr(ref, name), getattr(ours, name)):
                for a in BLOCK_ATTRS:
                    if hasattr(rb, a) and not same(getattr(rb, a), getattr(ob, a)):
                        bad.append(f"{name}.{a}")
                if (rb.downsample is None) != (ob.downsample is None):
                    bad.append(f"{name}.downsample")
                for k in ("norm1", "norm2", "norm3"):
                    if hasattr(rb, k + "_name") and not torch.equal(getattr(rb, k).weight, getattr(ob, k).weight):
                        bad.append(f"{name}.{k}")
        # train() modes of the norms (where the mode changes numerics); mmdetection leaves a frozen
        # 7x7 stem's conv1/relu/maxpool in train mode, graphres the whole frozen stem in eval mode
        bn = torch.nn.modules.batchnorm._BatchNorm
        modes = dict((n, m.training) for n, m in ref.named_modules() if isinstance(m, bn)) == \
            dict((n, m.training) for n, m in ours.named_modules() if isinstance(m, bn))
        grads = [(n, p.requires_grad) for n, p in ref.named_parameters()] == \
            [(n, p.requires_grad) for n, p in ours.named_parameters()]
        if not modes:
            theirs = dict((n, m.training) for n, m in ours.named_modules())
            bad += [f"mode:{n}" for n, m in ref.named_modules() if isinstance(m, bn) and theirs.get(n) != m.training][:3]
        # where no initialiser touches a layer, both keep torch's construction-time init, which draws
        # from the random stream in construction order (mmdetection builds a downsample before its
        # block's convs): equal in distribution, not bit for bit
        rel = max((abs(rs[k].float().std().item() - os_[k].float().std().item()) / max(rs[k].float().std().item(), 1e-12)
                   for k in rs if k.endswith("weight") and rs[k].numel() > 1000), default=0.0)
        ok = keys and (diff == 0.0 or rel < 0.05) and not bad and modes and grads
        if diff and ok:
            print(f"     (not bit for bit: largest relative std difference of a weight tensor {rel:.3g})")
        failures += not ok
        label = f"{kind}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
        print(f"     keys {'equal' if keys else 'DIFFER'} ({len(rs)}), init max |diff| {diff:.3g}, "
              f"train modes {'equal' if modes else 'DIFFER'}, requires_grad {'equal' if grads else 'DIFFER'}, "
              f"attributes {'equal' if not bad else 'DIFFER: ' + ', '.join(sorted(set(bad)))}"
              + (f"; worst {worst}" if diff else "") + (f"; {stats[0][0]} std {stats[0][1]:.6f} / {stats[0][2]:.6f}" if stats else ""))
    print(f"{len(CASES) - failures}/{len(CASES)} configurations match")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
