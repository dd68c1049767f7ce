"""Record the state-dict keys and shapes, in order, of mmdetection 3.3's ResNet-50 with GCB and
non-local plugins, for tests/test_plugins.py (run in /work/venvs/mm; CI only reads the file):

    PYTHONPATH=$PWD /work/venvs/mm/bin/python tools/parity/record_plugin_keys.py > tests/data/mmdet_r50_plugins_keys.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mm_loader import resnets  # noqa: E402

PLUGINS = [
    dict(cfg=dict(type="ContextBlock", ratio=1. / 16), stages=(False, True, True, True), position="after_conv3"),
    dict(cfg=dict(type="ContextBlock", ratio=1. / 4, pooling_type="avg", fusion_types=("channel_add", "channel_mul"),
                  postfix=1), stages=(True, False, False, False), position="after_conv1"),
    dict(cfg=dict(type="NonLocal2d", reduction=4), stages=(False, False, True, False), position="after_conv2"),
    dict(cfg=dict(type="NonLocal2d", mode="concatenation", postfix="_c"), stages=(False, False, False, True),
         position="after_conv2"),
]

if __name__ == "__main__":
    det, _ = resnets()
    model = det(depth=50, plugins=PLUGINS)
    print("# mmdetection 3.3 ResNet(depth=50, plugins=tools/parity/record_plugin_keys.py PLUGINS): key shape")
    for key, value in model.state_dict().items():
        print(key, "x".join(map(str, value.shape)) or "-")
