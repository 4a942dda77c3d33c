"""Ship weights as the bundled model: float16 copy, test report, examples by the percentile rule.

Usage::

    python scripts/bundle_model.py runs/tta/cpu-fast/run/best

1. Writes the weights as float16 safetensors + their ``config.json`` into ``src/polypseg/assets/model/``.
2. Scores the shipped (float16) copy on the Kvasir-SEG test split with ``polypseg evaluate --report``
   into ``docs/bundled-test/`` and with ``--tta`` into ``docs/bundled-test-tta/``.
3. Replaces ``src/polypseg/assets/examples/`` with the test images at the 10th, 30th, 50th, 70th and
   90th percentile of the shipped model's per-image polyp Dice (the rule the README states), and prints
   their Dice values.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from polypseg.weights import bundled_examples_dir, bundled_weights_dir, load_pretrained, save_pretrained

DATA = Path("../shared/datasets/kvasir-seg")
PERCENTILES = (10, 30, 50, 70, 90)


def _evaluate(out: Path, *extra: str) -> None:
    command = [sys.executable, "-m", "polypseg.cli", "evaluate", "--data", str(DATA), "--split", "test"]
    subprocess.run([*command, "--out", str(out), "--overwrite", *extra], check=True)


def main() -> int:
    """Bundle, score, pick the examples; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="weights folder, .safetensors or run folder")
    args = parser.parse_args()
    source = Path(args.weights)
    folder = source if source.is_dir() and (source / "config.json").exists() else source / "best"
    metadata = json.loads((folder / "config.json").read_text())
    model = load_pretrained(folder)
    keep = {k: v for k, v in metadata.items() if k not in ("architecture", "format", *model.config)}
    save_pretrained(model, bundled_weights_dir(), metadata=keep, dtype=torch.float16)
    _evaluate(Path("docs/bundled-test"), "--report")
    _evaluate(Path("docs/bundled-test-tta"), "--tta")
    with Path("docs/bundled-test/per_image.csv").open() as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (float(r["polyp_dice"]), r["name"]))
    examples = bundled_examples_dir()
    for old in examples.glob("*.jpg"):
        old.unlink()
    for percentile in PERCENTILES:
        row = rows[round(percentile / 100 * (len(rows) - 1))]
        shutil.copy2(DATA / "images" / f"{row['name']}.jpg", examples / f"{row['name']}.jpg")
        print(f"p{percentile}: {row['name']}.jpg polyp Dice {float(row['polyp_dice']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
