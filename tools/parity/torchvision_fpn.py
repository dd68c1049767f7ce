"""Private check: graphres.integrations.torchvision in torchvision's detectors and DeepLabV3.

    PYTHONPATH=$PWD /work/venvs/tv/bin/python tools/parity/torchvision_fpn.py > benchmarks/results/torchvision_fpn.txt

A FasterRCNN train step on fpn_backbone('mmdet_faster_rcnn_r50') (frozen_stages 1, norm_eval)
must leave the frozen stem and layer1 parameters and every BatchNorm's running statistics
untouched while the trainable weights move; the same step on torchvision's own
IntermediateLayerGetter over the graphres module shows the pitfall. Then a RetinaNet (P3-P7) forward
and a DeepLabV3 head forward."""
import torch
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import graphres
from graphres.integrations.torchvision import fpn_backbone, segmentation_backbone

SPEC = "mmdet_faster_rcnn_r50"


def snapshot(backbone):
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def train_step(det, body_model):
    det.train()
    before = snapshot(body_model)
    images = [torch.rand(3, 224, 288), torch.rand(3, 256, 256)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 30.0, 200.0, 180.0]]), "labels": torch.tensor([2])}]
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = det(images, targets)
    sum(losses.values()).backward()
    opt.step()
    after = snapshot(body_model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))]
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    bn_train = sum(m.training for m in det.backbone.body.modules() if isinstance(m, _BatchNorm))
    return (f"loss {sum(losses.values()).item():.4f}; frozen stem+layer1 tensors changed "
            f"{len(changed & set(frozen))}/{len(frozen)}; BN statistics changed {len(changed & set(stats))}/{len(stats)}; "
            f"BNs in train mode {bn_train}; trainable weights changed "
            f"{len(changed - set(frozen) - set(stats))}"), changed & (set(frozen) | set(stats))


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    det_backbone = fpn_backbone(SPEC)
    model = det_backbone.body._graphres_rules
    print(f"fpn_backbone('{SPEC}'): out_channels {det_backbone.out_channels}, frozen_stages {model.frozen_stages}, "
          f"norm_eval {model.norm_eval}, body {type(det_backbone.body).__name__}")
    det = FasterRCNN(det_backbone, num_classes=3, min_size=224, max_size=320)
    text, broken = train_step(det, det_backbone.body)
    print(f"FasterRCNN train step, graphres fpn_backbone: {text} -> {'OK' if not broken else 'BROKEN'}")

    torch.manual_seed(0)
    plain = graphres.build(SPEC)
    naive = BackboneWithFPN(plain, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [256, 512, 1024, 2048], 256,
                            extra_blocks=LastLevelMaxPool())
    det2 = FasterRCNN(naive, num_classes=3, min_size=224, max_size=320)
    text, broken2 = train_step(det2, naive.body)
    print(f"FasterRCNN train step, plain BackboneWithFPN (the pitfall): {text} -> "
          f"{'the pitfall shows' if broken2 else 'no difference'}")

    torch.manual_seed(0)
    rb = fpn_backbone(SPEC, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256), trainable_layers=3)
    retina = RetinaNet(rb, num_classes=5, min_size=256, max_size=256).eval()
    feats = rb(torch.rand(1, 3, 256, 256))
    with torch.no_grad():
        out = retina([torch.rand(3, 256, 256)])
    print(f"RetinaNet: levels {list(feats)} shapes {[tuple(v.shape[-2:]) for v in feats.values()]}; "
          f"eval forward gives {len(out)} result with keys {sorted(out[0])}")

    sb = segmentation_backbone("deeplabv3_r50_d8")
    seg = DeepLabV3(sb, DeepLabHead(2048, 21)).eval()
    with torch.no_grad():
        y = seg(torch.rand(1, 3, 128, 128))
    print(f"DeepLabV3 (deeplabv3_r50_d8 backbone, DeepLabHead(2048, 21)): out {tuple(y['out'].shape)}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
