"""The model families of the search spaces: MobileNetV2-style CNN and a small ViT, built from an arch dict.

`deploy=True` builds the int8 deployment form that budgets are counted on: batch norm folded into the conv
(a bias per output channel instead of BN's scale, shift and running statistics), ReLU6 in place: what an
int8 MCU runtime (TFLite Micro, CMSIS-NN) runs. The training form has BN and no conv bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.nas.families import Arch, family


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: nearest multiple of 8, never below 90% of v."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def conv_act(cin: int, cout: int, k: int, stride: int, groups: int, act: bool, deploy: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=deploy)]
    if not deploy:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    """1x1 expand (skipped at ratio 1) -> kxk depthwise (stride) -> 1x1 linear project; + x when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int, deploy: bool):
        super().__init__()
        hidden = cin * expand
        layers = conv_act(cin, hidden, 1, 1, 1, True, deploy) if expand != 1 else []
        layers += conv_act(hidden, hidden, kernel, stride, hidden, True, deploy)
        layers += conv_act(hidden, cout, 1, 1, 1, False, deploy)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, data: dict, arch: Arch, deploy: bool = False):
        super().__init__()
        w = float(arch["width"])
        cin = make_divisible(data["stem"] * w)
        layers = conv_act(data["input_channels"], cin, 3, 2, 1, True, deploy)  # stem, stride 2
        for i, st in enumerate(data["stages"]):
            cout = make_divisible(st["channels"] * w)
            for j in range(int(arch[f"s{i}.depth"])):
                layers.append(InvertedResidual(cin, cout, st["stride"] if j == 0 else 1, int(arch[f"s{i}.expand"]),
                                               int(arch[f"s{i}.kernel"]), deploy))
                cin = cout
        head = make_divisible(data["head"] * max(1.0, w))  # the paper keeps 1280 for widths below 1
        layers += conv_act(cin, head, 1, 1, 1, True, deploy)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(head, data["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, R, R) -> (B, classes)
        x = self.features(x)  # (B, head, R/32, R/32)
        return self.classifier(x.mean((2, 3)))  # global average pool -> (B, head)


def _mbv2_params(d: dict) -> dict[str, tuple]:
    out = {"width": tuple(d["width"]), "resolution": tuple(d["resolution"])}
    for i, st in enumerate(d["stages"]):
        for what in ("depth", "kernel", "expand"):
            out[f"s{i}.{what}"] = tuple(st[what])
    return out


def _describe_mbv2(a: Arch) -> str:
    n = len([k for k in a if k.endswith(".depth")])
    stages = [f"{a[f's{i}.depth']}x{a[f's{i}.kernel']}k{a[f's{i}.expand']}e" for i in range(n)]
    return f"mbv2 w{a['width']} r{a['resolution']} " + "-".join(stages)


@family("mobilenetv2", _mbv2_params, _describe_mbv2)
def mobilenetv2(data: dict, arch: Arch, deploy: bool) -> nn.Module:
    return MobileNetV2(data, arch, deploy)


# ---- small transformer -------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (GELU)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, C/H)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, data: dict, arch: Arch):
        super().__init__()
        width, p, r = int(arch["width"]), int(data["patch"]), int(arch["resolution"])
        self.embed = nn.Conv2d(data["input_channels"], width, p, p)
        self.pos = nn.Parameter(torch.randn(1, (r // p) ** 2, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, int(arch["heads"]), int(arch["mlp_ratio"]))
                                      for _ in range(int(arch["depth"]))])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, data["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, R, R) -> (B, classes)
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, C), N = (R/p)^2
        return self.head(self.norm(self.blocks(x)).mean(1))


def _vit_params(d: dict) -> dict[str, tuple]:
    return {k: tuple(d[k]) for k in ("resolution", "depth", "width", "heads", "mlp_ratio")}


def _describe_vit(a: Arch) -> str:
    return f"vit d{a['depth']} w{a['width']} h{a['heads']} mlp{a['mlp_ratio']}"


@family("transformer", _vit_params, _describe_vit)
def transformer(data: dict, arch: Arch, deploy: bool) -> nn.Module:
    return ViT(data, arch)  # LayerNorm has nothing to fold: the deployment form is the same model
