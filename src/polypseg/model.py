"""The U-Net of the model card: encoder 64-128-256-512, bottleneck 1024, decoder with skips, reduction head.

Module names are part of the weights format (``model.safetensors``), so they are kept stable:
``encoder.{0..3}``, ``bottleneck``, ``upsample.{0..3}``, ``decoder.{0..3}``, ``head``, ``classifier``.

The same network is the card's 3-class model (``num_classes=3``, softmax) and its binary sibling
(``num_classes=1``, one logit per pixel, sigmoid). Each decoder block concatenates the encoder's skip
tensor and the upsampled tensor; the order (``decoder_concat``) cannot be read from the weights, whose
shapes are the same either way, so it is a constructor argument saved in ``config.json``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DECODER_CONCATS", "DoubleConv", "UNet", "nearest_valid_size", "SIZE_MULTIPLE"]

#: Height and width must be multiples of this (four 2x2 max-pools).
SIZE_MULTIPLE = 16
#: Orders of a decoder block's concatenation: ``[skip, upsampled]`` (polypseg's) or ``[upsampled, skip]``.
DECODER_CONCATS = ("skip-up", "up-skip")


class DoubleConv(nn.Sequential):
    """(Conv3x3 - BatchNorm - ReLU) twice.

    The convolutions carry no bias: the BatchNorm that follows removes any constant offset.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of both convolutions' outputs.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def nearest_valid_size(size: int, multiple: int = SIZE_MULTIPLE) -> int:
    """Return the multiple of ``multiple`` closest to ``size`` (at least ``multiple``).

    Example:
        >>> nearest_valid_size(250)
        256
    """
    return max(multiple, int(round(size / multiple)) * multiple)


class UNet(nn.Module):
    """U-Net for polyp segmentation, as described by the seed model card.

    Args:
        in_channels: Input channels (3 for RGB in [0, 1]).
        num_classes: Output logit channels: 3 (background, polyp, polyp boundary; softmax) or 1 (the
            binary variant: one polyp logit, sigmoid).
        base_channels: Width of the first encoder stage; the stages are 1x, 2x, 4x, 8x and the
            bottleneck 16x this. 64 is the card's model (31.0 M parameters); 16 and 32 are the small variants.
        head_kernel_size: Kernel size of the reduction head's convolution (base -> base/2 channels).
        decoder_concat: ``"skip-up"`` (``cat([skip, upsampled])``, polypseg's order) or ``"up-skip"``
            (``cat([upsampled, skip])``), for checkpoints written by code that concatenates that way.

    Example:
        >>> model = UNet(in_channels=3, num_classes=3, base_channels=8)
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        base_channels: int = 64,
        head_kernel_size: int = 3,
        decoder_concat: str = "skip-up",
    ) -> None:
        super().__init__()
        if base_channels < 2 or base_channels % 2:
            raise ValueError(f"base_channels must be an even number >= 2, got {base_channels}")
        if head_kernel_size % 2 != 1:
            raise ValueError(f"head_kernel_size must be odd, got {head_kernel_size}")
        if decoder_concat not in DECODER_CONCATS:
            raise ValueError(f"decoder_concat must be one of {', '.join(DECODER_CONCATS)}, got {decoder_concat!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.head_kernel_size = head_kernel_size
        self.decoder_concat = decoder_concat

        widths = [base_channels * 2**i for i in range(4)]
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(previous, width))
            previous = width
        self.bottleneck = DoubleConv(widths[-1], widths[-1] * 2)
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths):
            self.upsample.append(nn.ConvTranspose2d(width * 2, width, kernel_size=2, stride=2))
            self.decoder.append(DoubleConv(width * 2, width))
        reduced = base_channels // 2
        self.head = nn.Sequential(
            nn.Conv2d(
                base_channels,
                reduced,
                kernel_size=head_kernel_size,
                padding=head_kernel_size // 2,
                bias=False,
            ),
            nn.BatchNorm2d(reduced),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(reduced, num_classes, kernel_size=1)

    @property
    def config(self) -> dict[str, int | str]:
        """The constructor arguments that rebuild this architecture."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "base_channels": self.base_channels,
            "head_kernel_size": self.head_kernel_size,
            "decoder_concat": self.decoder_concat,
        }

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that names a working size if ``x`` does not fit the network."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of {SIZE_MULTIPLE}; "
                f"the nearest valid size is {nearest_valid_size(height)}x{nearest_valid_size(width)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) in [0, 1] to logits (B, num_classes, H, W)."""
        self.check_input(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        skip_first = self.decoder_concat == "skip-up"
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            up = upsample(x)
            x = block(torch.cat([skip, up] if skip_first else [up, skip], dim=1))
        return self.classifier(self.head(x))
