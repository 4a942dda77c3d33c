"""Which images are scored and with what truth (``polypseg.evaluation.splits``)."""

from __future__ import annotations

import pytest


def test_read_truth_boxes_scales_to_the_evaluation_size(tmp_path):
    import json

    from polypseg.evaluation import read_truth_boxes

    assert read_truth_boxes(tmp_path, 256) is None
    entry = {
        "height": 512,
        "width": 1024,
        "bbox": [{"label": "polyp", "xmin": 0, "ymin": 256, "xmax": 512, "ymax": 512}],
    }
    (tmp_path / "kavsir_bboxes.json").write_text(json.dumps({"a": entry}))
    assert read_truth_boxes(tmp_path, 256) == {"a": [(0, 128, 128, 256)]}
    (tmp_path / "kavsir_bboxes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="kavsir_bboxes.json"):
        read_truth_boxes(tmp_path, 256)
