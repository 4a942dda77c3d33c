"""The Predictor (``polypseg.inference.predictor``): class maps at the image's resolution, batches, the
bundled model, numbers out of range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polypseg.inference import Predictor, overlay

pytestmark = pytest.mark.precision  # run under both POLYPSEG_NATIVE_BF16 settings by make test


@pytest.mark.parametrize("size", [(50, 70), (64, 64), (33, 121)])
def test_prediction_is_at_the_image_resolution(predictor, size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    prediction = predictor.predict(image)
    assert prediction.class_map.shape == size
    assert prediction.class_map.dtype == np.uint8
    assert set(np.unique(prediction.class_map)) <= {0, 1, 2}
    assert prediction.polyp_mask.shape == size
    assert 0.0 <= prediction.polyp_area_percent <= 100.0


def test_batch_equals_single_predictions(predictor):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40 + 8 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    batch = predictor.predict_batch(images)
    for image, prediction in zip(images, batch, strict=True):
        np.testing.assert_array_equal(prediction.class_map, predictor.predict(image).class_map)


def test_bundled_model_segments_the_examples(real_subset):
    """The shipped model on the shipped examples (Kvasir-SEG test images), scored against their masks.

    The examples are the test images at the 10/30/50/70/90th percentile of the model's per-image Dice
    (docs/bundled-test/per_image.csv, at 256x256: 0.55, 0.80, 0.92, 0.95, 0.97 when the model was made),
    so the weakest is well below the others by construction.
    """
    from polypseg.images import read_image, read_mask
    from polypseg.metrics import binary_image_scores
    from polypseg.weights import bundled_examples_dir, read_model_config

    assert read_model_config()["base_channels"] == 16
    predictor = Predictor.from_pretrained(precision="32")
    examples = sorted(bundled_examples_dir().glob("*.jpg"))
    assert 4 <= len(examples) <= 6
    dice = []
    for path in examples:
        prediction = predictor.predict(read_image(path))
        truth = read_mask(real_subset / "masks" / path.name) >= 128
        scores = binary_image_scores(torch.from_numpy(prediction.polyp_mask)[None], torch.from_numpy(truth)[None])
        dice.append(float(scores["dice"][0]))
    assert sum(dice) / len(dice) > 0.5, dice
    assert sum(d > 0.4 for d in dice) >= 3, dice


@pytest.mark.parametrize("fraction", [-0.05, 1.5, float("nan"), float("inf")])
def test_predictor_and_overlay_refuse_numbers_out_of_range(tiny_unet, fraction):
    with pytest.raises(ValueError, match="minimum polyp fraction"):
        Predictor(tiny_unet, image_size=64, min_polyp_fraction=fraction)
    with pytest.raises(ValueError, match="opacity"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), opacity=fraction)
