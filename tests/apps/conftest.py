"""Fixtures of the web demo tests (test_webpage.py, test_webdemo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypseg.images import read_image
from polypseg.weights import bundled_examples_dir


@pytest.fixture
def example() -> Path:
    return sorted(bundled_examples_dir().glob("*.jpg"))[0]


@pytest.fixture
def balanced_weights(tmp_path, example, partial_polyp_weights) -> Path:
    """Untrained weights whose polyp mask covers 30 % of the example (see conftest.partial_polyp_weights)."""
    return partial_polyp_weights(read_image(example), tmp_path / "weights", 0.3)
