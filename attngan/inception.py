"""Inception-v3 trunk for the DAMSM image encoder, written in the project (no torchvision).

Module names match torchvision's `Inception3` (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
...), so a torchvision-format ImageNet state dict (`inception_v3_google-*.pth`) given as a local file loads into it,
and so do the original AttnGAN `image_encoder*.pth` checkpoints (which hold the same blocks at top level).
Only the layers up to `Mixed_7c` exist: AttnGAN never uses `AuxLogits` or `fc`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attngan.errors import AttnGANError


class BasicConv2d(nn.Module):
    """conv (no bias) + BN(eps=1e-3) + ReLU."""

    def __init__(self, cin: int, cout: int, **kw: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


def inception_blocks() -> OrderedDict[str, nn.Module]:
    """The torchvision Inception-v3 blocks up to Mixed_7c, by their torchvision names, in forward order."""
    return OrderedDict(
        Conv2d_1a_3x3=BasicConv2d(3, 32, kernel_size=3, stride=2),
        Conv2d_2a_3x3=BasicConv2d(32, 32, kernel_size=3),
        Conv2d_2b_3x3=BasicConv2d(32, 64, kernel_size=3, padding=1),
        Conv2d_3b_1x1=BasicConv2d(64, 80, kernel_size=1),
        Conv2d_4a_3x3=BasicConv2d(80, 192, kernel_size=3),
        Mixed_5b=InceptionA(192, pool_features=32),
        Mixed_5c=InceptionA(256, pool_features=64),
        Mixed_5d=InceptionA(288, pool_features=64),
        Mixed_6a=InceptionB(288),
        Mixed_6b=InceptionC(768, channels_7x7=128),
        Mixed_6c=InceptionC(768, channels_7x7=160),
        Mixed_6d=InceptionC(768, channels_7x7=160),
        Mixed_6e=InceptionC(768, channels_7x7=192),
        Mixed_7a=InceptionD(768),
        Mixed_7b=InceptionE(1280),
        Mixed_7c=InceptionE(2048),
    )


INCEPTION_NAMES: tuple[str, ...] = tuple(inception_blocks().keys())


def inception_forward(owner: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the blocks held as attributes of `owner` on a 299x299 input: (Mixed_6e 768x17x17, Mixed_7c 2048x8x8)."""
    for name in INCEPTION_NAMES:
        x = getattr(owner, name)(x)
        if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
            x = F.max_pool2d(x, kernel_size=3, stride=2)
        if name == "Mixed_6e":
            mixed_6e = x
    return mixed_6e, x


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a .safetensors file or a plain torch state dict (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise AttnGANError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is the user's input problem
            raise AttnGANError(f"cannot read {path}: {exc}") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AttnGANError(f"cannot read {path} as a PyTorch state dict: {first}") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise AttnGANError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_inception_weights(owner: nn.Module, path: str | Path) -> None:
    """Load torchvision-format ImageNet Inception-v3 weights into the blocks held by `owner`.

    `AuxLogits.*` and `fc.*` in the file are ignored; every trunk tensor must be present with the right shape.
    """
    state = read_state_dict(path)
    wanted = {k: v for k, v in owner.state_dict().items() if k.split(".")[0] in INCEPTION_NAMES}
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise AttnGANError(
            f"{path} is not a torchvision Inception-v3 state dict ({len(missing)} trunk tensors missing, e.g. {missing[0]})"
        )
    for key, ref in wanted.items():
        if key in state and tuple(state[key].shape) != tuple(ref.shape):
            raise AttnGANError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}")
    owner.load_state_dict({k: state[k] for k in wanted if k in state}, strict=False)
