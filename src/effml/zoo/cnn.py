"""Small vision models of the zoo: LeNet-300-100, LeNet-5, a VGG-style CNN and a ResNet-style CNN."""

from __future__ import annotations

import torch
from torch import nn

from effml.zoo.registry import zoo_model

# VGG layout of MIT 6.5940 lab 1 (CIFAR-10): 'M' is a 2x2 max-pool. 606M MACs at 3x32x32.
VGG_LAYOUT = (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@zoo_model("mlp", input_shape=(1, 1, 28, 28))
def mlp(in_features: int = 784, hidden: tuple[int, ...] = (300, 100), num_classes: int = 10) -> nn.Module:
    """LeNet-300-100: the fully connected net of Deep Compression (266,610 parameters)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs (conv 5x5 padded to keep 28x28, as for MNIST): 61,706 parameters.

    `width` scales every hidden layer (6, 16 channels; 120, 84 units), e.g. 0.5 for a distillation student.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c1, c2, f1, f2 = (max(1, round(n * width)) for n in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 5 * 5, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU(),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, 28, 28)
        return self.classifier(self.features(x))


@zoo_model("lenet5", input_shape=(1, 1, 28, 28))
def lenet5(in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """LeNet-5 (ReLU, max-pool) for 28x28 images such as Fashion-MNIST."""
    return LeNet5(in_channels, num_classes, width)


class VGG(nn.Module):
    """VGG-style CNN: 3x3 conv + BatchNorm + ReLU blocks, max-pools, global average pool, one Linear."""

    def __init__(self, layout=VGG_LAYOUT, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                c = item
        self.backbone = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = self.backbone(x)  # (B, 512, H/16, W/16)
        return self.classifier(x.mean(dim=(2, 3)))  # (B, classes)


@zoo_model("vgg", input_shape=(1, 3, 32, 32))
def vgg(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """VGG-style CNN of MIT 6.5940 lab 1 for 32x32 images (606M MACs at width 1)."""
    layout = tuple(item if item == "M" else max(1, round(item * width)) for item in VGG_LAYOUT)
    return VGG(layout, in_channels, num_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016 section 4.2): 3 stages of 16/32/64 channels, n blocks each."""

    def __init__(self, blocks_per_stage: int = 3, in_channels: int = 3, num_classes: int = 10,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                stages.append(BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, 32, 32)
        x = self.stages(self.stem(x))  # (B, 64, 8, 8)
        return self.fc(torch.flatten(self.pool(x), 1))


@zoo_model("resnet", input_shape=(1, 3, 32, 32))
def resnet(blocks_per_stage: int = 3, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-20-style CNN for 32x32 images (3 stages x 3 basic blocks, projection shortcuts)."""
    return ResNet(blocks_per_stage, in_channels, num_classes)
