"""Record the state-dict keys and shapes, in order, of mmdetection 3.3's ResNet-50 with
GeneralizedAttention plugins (two attention types, a postfix) and a NonLocal2d with sub_sample=True,
for tests/test_gen_attention.py (run in /work/venvs/mm; CI only reads the file):

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/record_gen_attention_keys.py > tests/data/mmdet_r50_gen_attention_keys.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mm_loader import resnets  # noqa: E402

PLUGINS = [
    dict(cfg=dict(type="GeneralizedAttention", spatial_range=-1, num_heads=8, attention_type="1111", kv_stride=2),
         stages=(False, True, True, True), position="after_conv2"),
    dict(cfg=dict(type="GeneralizedAttention", spatial_range=-1, num_heads=8, attention_type="0010", kv_stride=2,
                  q_stride=2, postfix=1), stages=(True, False, False, False), position="after_conv3"),
    dict(cfg=dict(type="GeneralizedAttention", num_heads=6, attention_type="0101", position_embedding_dim=16,
                  postfix="_p"), stages=(False, False, False, True), position="after_conv1"),
    dict(cfg=dict(type="NonLocal2d", reduction=4, sub_sample=True), stages=(False, False, True, False),
         position="after_conv2"),
]

if __name__ == "__main__":
    det, _ = resnets()
    model = det(depth=50, plugins=PLUGINS)  # mmdetection's init_weights() would fail on sub_sample (W120)
    print("# mmdetection 3.3 ResNet(depth=50, plugins=tools/parity/record_gen_attention_keys.py PLUGINS): key shape")
    for key, value in model.state_dict().items():
        print(key, "x".join(map(str, value.shape)) or "-")
