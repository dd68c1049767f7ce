"""An independent, plain-PyTorch implementation of the OpenMMLab ResNet semantics, written from
the reference page (../shared/reference/mmdet-resnet.md) for tests only. graphres never imports it.
Its module names follow the OpenMMLab/torchvision layout, so a graphres state dict loads strictly."""
import torch
from torch import nn


def norm(ch):
    return nn.BatchNorm2d(ch)


class WSConv(nn.Conv2d):
    """Weight standardisation written from the definition: w' = (w - mean) / (std + 1e-5) per output
    channel over (in, kh, kw), std with Bessel's correction (mmcv's conv_ws_2d)."""

    def forward(self, x):
        w = self.weight
        n = w[0].numel()
        mean = w.sum(dim=(1, 2, 3), keepdim=True) / n
        var = ((w - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / (n - 1)
        return nn.functional.conv2d(x, (w - mean) / (var.sqrt() + 1e-5), self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)


class SE(nn.Module):
    def __init__(self, ch, reduction):
        super().__init__()
        self.fc1 = nn.Conv2d(ch, ch // reduction, 1)
        self.fc2 = nn.Conv2d(ch // reduction, ch, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, dilation, downsample, conv=nn.Conv2d, norm=norm, **_):
        super().__init__()
        self.conv1 = conv(cin, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottle(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, dilation, downsample, style="pytorch", groups=1, base_width=4,
                 width=None, conv=nn.Conv2d, norm=norm, se=None):
        super().__init__()
        width = width or (planes if groups == 1 else (planes * base_width // 64) * groups)
        s1, s2 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = conv(cin, width, 1, s1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, s2, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = norm(width)
        self.conv3 = conv(width, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.se = SE(planes * 4, se) if se else None
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


ARCH = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)), 50: (Bottle, (3, 4, 6, 3)),
        101: (Bottle, (3, 4, 23, 3)), 152: (Bottle, (3, 8, 36, 3))}


class RefResNet(nn.Module):
    def __init__(self, depth, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), out_indices=(0, 1, 2, 3),
                 style="pytorch", deep_stem=False, avg_down=False, groups=1, base_width=4, stem=64, widths=None,
                 conv=nn.Conv2d, norm=norm, se=None, num_classes=None):
        """``dilations``: per stage, an int for every block or a list, block by block."""
        super().__init__()
        block, counts = ARCH[depth]
        if deep_stem:
            self.stem = nn.Sequential(
                conv(3, stem // 2, 3, 2, 1, bias=False), norm(stem // 2), nn.ReLU(),
                conv(stem // 2, stem // 2, 3, 1, 1, bias=False), norm(stem // 2), nn.ReLU(),
                conv(stem // 2, stem, 3, 1, 1, bias=False), norm(stem), nn.ReLU())
        else:
            self.conv1 = conv(3, stem, 7, 2, 3, bias=False)
            self.bn1 = norm(stem)
            self.relu = nn.ReLU()
        self.deep_stem = deep_stem
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem
        self.out_indices = out_indices
        self.n = len(strides)
        for i in range(self.n):
            planes = 64 * 2 ** i
            layers = []
            for b in range(counts[i]):
                stride = strides[i] if b == 0 else 1
                down = None
                if b == 0 and (stride != 1 or cin != planes * block.expansion):
                    mods = []
                    if avg_down:
                        mods.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
                    mods += [conv(cin, planes * block.expansion, 1, 1 if avg_down else stride, bias=False),
                             norm(planes * block.expansion)]
                    down = nn.Sequential(*mods)
                dil = dilations[i][b] if isinstance(dilations[i], (list, tuple)) else dilations[i]
                extra = dict(width=widths[i] if widths else None, se=se) if block is Bottle else {}
                layers.append(block(cin, planes, stride, dil, down, style=style, groups=groups,
                                    base_width=base_width, conv=conv, norm=norm, **extra))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        if num_classes:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(self.n):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        if self.num_classes:
            return self.fc(torch.flatten(self.avgpool(x), 1))
        return tuple(outs)


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter and BN statistic non-trivial values (no zero-init degeneracy)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith("weight") and t.dim() == 1:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif t.dim() == 4:
                    fan_in = t[0].numel()
                    t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
