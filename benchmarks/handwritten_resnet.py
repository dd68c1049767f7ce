"""A plain, hand-written PyTorch ResNet-50 backbone: the baseline that ``forward.py`` times graphres against.

It is written the way a person writes a ResNet by hand (torchvision's layout and state-dict names, no
classifier head): a ``Bottleneck`` module with ``conv1`` 1x1 / ``bn1`` / ``conv2`` 3x3 (the stride sits
here) / ``bn2`` / ``conv3`` 1x1 / ``bn3``, one in-place ``relu`` module, ``out += identity``, and a
``downsample`` ``nn.Sequential(conv 1x1, BN)`` where the shape changes. The stem is ``conv1`` 7x7/2,
``bn1``, ``relu``, ``maxpool`` 3/2/1; ``layer1``..``layer4`` hold 3, 4, 6 and 3 blocks. ``forward``
returns the four stage outputs as a tuple, as ``graphres.build("specs/resnet50.yaml")`` does, and
``state_dict()`` keys equal torchvision's ``resnet50`` keys without ``fc.*``.

Deliberately independent of graphres and of torchvision (which is not installed here).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand, plus a shortcut; output channels = planes * 4."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.downsample: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))

        # The shortcut is computed after the main branch, as graphres' block plan orders it.
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class HandwrittenResNet50(nn.Module):
    """ResNet-50 backbone (no pooling head, no fc) returning (layer1, layer2, layer3, layer4) outputs."""

    def __init__(self, blocks_per_stage: Sequence[int] = (3, 4, 6, 3), stem_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        channels = stem_channels
        stage_planes = (64, 128, 256, 512)
        stage_strides = (1, 2, 2, 2)
        for index, (count, planes, stride) in enumerate(zip(blocks_per_stage, stage_planes, stage_strides)):
            blocks = []
            for b in range(count):
                blocks.append(Bottleneck(channels, planes, stride if b == 0 else 1))
                channels = planes * Bottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5
