"""Fixtures of the inference tests (``test_predictor.py``, ``test_outputs.py``, ``test_streaming.py``)."""

from __future__ import annotations

import pytest

from polypseg.inference import Predictor


@pytest.fixture
def predictor(tiny_unet):
    return Predictor(tiny_unet, image_size=64, precision="32", min_polyp_fraction=0.0)
