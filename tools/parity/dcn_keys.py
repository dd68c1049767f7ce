"""Write the state-dict keys and shapes of mmdetection 3.3's real ResNet-50 with DCN / DCNv2 (run
once in /work/venvs/mm; the files under tests/data/ are what CI compares graphres' keys with).

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/dcn_keys.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from mm_loader import load  # noqa: E402

CONFIGS = {
    "mmdet_r50_dcn_keys.txt": dict(depth=50, dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False),
                                   stage_with_dcn=(False, True, True, True)),
    "mmdet_r50_dcnv2_dg4_keys.txt": dict(depth=50, dcn=dict(type="DCNv2", deform_groups=4, fallback_on_stride=False),
                                         stage_with_dcn=(False, True, True, True)),
}

if __name__ == "__main__":
    det, _, _, _ = load()
    root = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data")
    for name, cfg in CONFIGS.items():
        model = det.ResNet(**cfg)
        lines = [f"# mmdet 3.3 ResNet({cfg}): state-dict key, shape; written by tools/parity/dcn_keys.py"]
        lines += [f"{k} {'x'.join(map(str, v.shape))}" for k, v in model.state_dict().items()]
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(lines) + "\n")
        print(name, len(lines) - 1, "keys,", sum(p.numel() for p in model.parameters()), "params")
