"""polypseg: polyp segmentation in colonoscopy images with the model card's U-Net.

Classes: 0 background, 1 polyp, 2 polyp boundary (see :mod:`polypseg.classes`).
"""

from polypseg.classes import CLASS_NAMES, classes_to_mask, mask_to_classes
from polypseg.losses import CombinedLoss
from polypseg.model import UNet
from polypseg.version import __version__
from polypseg.weights import load_pretrained, save_pretrained

__all__ = [
    "CLASS_NAMES",
    "CombinedLoss",
    "UNet",
    "classes_to_mask",
    "load_pretrained",
    "mask_to_classes",
    "__version__",
    "save_pretrained",
]
