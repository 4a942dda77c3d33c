"""What several test modules share; ``import helpers`` works from every folder of ``tests/``.

``tests/conftest.py`` (fixtures for every test) imports its paths from here. Pytest's default ("prepend")
import mode puts the folder of ``conftest.py`` on ``sys.path``, so ``from helpers import tiny_config`` works
in ``tests/training/test_train.py`` as in ``tests/test_config.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from polypseg.config import TrainConfig

#: Repository root (the folder holding ``pyproject.toml``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where the project keeps its copy of Kvasir-SEG (``images/`` and ``masks/``, 1000 JPEG pairs).
REAL_DATASET_DIR = REPO_ROOT.parent / "shared" / "datasets" / "kvasir-seg"
#: Files the tests read (``tests/fixtures/README.md`` says what each is).
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"


# --- training: the tiny run settings shared by the training tests -----------------------------------


def tiny_config(**overrides: object) -> TrainConfig:
    base = TrainConfig(
        base_channels=4,
        image_size=64,
        split_sizes=[8, 2, 2],
        batch_size=4,
        epochs=2,
        lr=3e-3,
        scheduler="cosine",
        precision="32",
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        boundary_width_px=1,
    )
    return base.updated(**overrides)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- weights: random networks and their outputs ------------------------------------------------------


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm running statistics, moderate enough to keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
    return model.eval()


def random_images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def eval_outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
