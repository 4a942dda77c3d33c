"""Load: ``predict`` over many files runs in flat memory.

One fresh process segments 30 images, then 300 more; the peak resident memory (``ru_maxrss``) after the
300 must be within 25 MB of the peak after the 30. Each image is 320x256 (240 kB decoded, 1 MB of
logits at full resolution), so keeping even the decoded images would add ~70 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from polypseg.inference import Predictor, predict_files
from polypseg.model import UNet

torch.manual_seed(0)
predictor = Predictor(UNet(3, 3, base_channels=4), image_size=64, precision="32")
peaks = []
for name in ("few", "many"):
    summary = predict_files(predictor, [sys.argv[1] + "/" + name], sys.argv[2] + "/" + name, batch_size=4)
    assert summary.ok, summary.errors[:3]
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # kB -> MB (Linux)
print(json.dumps(peaks))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux only")
def test_predict_memory_does_not_grow_with_the_number_of_files(tmp_path):
    rng = np.random.default_rng(0)
    sources = []
    for index in range(3):
        path = tmp_path / f"source_{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(path, quality=90)
        sources.append(path)
    for name, count in (("few", 30), ("many", 300)):
        folder = tmp_path / "in" / name
        folder.mkdir(parents=True)
        for index in range(count):
            os.link(sources[index % 3], folder / f"image_{index:04d}.jpg")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    few, many = json.loads(done.stdout.strip().splitlines()[-1])
    assert many - few < 25, f"peak RSS {few:.0f} MB after 30 images, {many:.0f} MB after 300 more"
    assert len(list(Path(tmp_path / "out" / "many").glob("*_mask.png"))) == 300
