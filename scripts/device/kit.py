"""Python helpers of the GPU kit (see scripts/device/README.md).

Subcommands:

* ``prepare``: here, before a GPU session. Writes a copy of Kvasir-SEG pre-resized exactly as
  :func:`polypseg.data.load_pairs` resizes it (images: antialiased bilinear, saved as JPEG; masks:
  binarized at 128, nearest neighbour, saved as 0/255 PNG), the seeded split, and the original files
  of the test split (so evaluation there scores exactly the files it scores here).
* ``trim-splits``: the split restricted to the first N images (sorted), for ``MAX_IMAGES`` smoke runs.
* ``pack``: there, after training. Writes ``SUMMARY.md``, ``results.tar.gz`` and optionally one run's
  best weights as float16 safetensors in chunks, keeping within the limits of what comes back.

Only the standard library, numpy, Pillow, torch and polypseg (imported from ``src/`` when it is not
installed) are used, so it runs on the GPU machine as it is.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from polypseg.data import (  # noqa: E402
    Sample,
    find_pairs,
    load_pairs,
    load_splits,
    make_splits,
    parse_split_sizes,
    save_splits,
)
from polypseg.images import InputError, read_image, read_mask, resize_image, resize_mask  # noqa: E402

BOXES_FILES = ("kavsir_bboxes.json", "bboxes.json")
MIB = 1024 * 1024
#: A tqdm progress bar line: ``Epoch 3:  50%|#####     | 50/100 [00:05<00:05, 9.8it/s, loss=0.4]``.
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")


# --------------------------------------------------------------------------------------------------
# prepare (runs here)


def resize_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (size, size, 3) uint8 image and (size, size) bool mask exactly as ``load_pairs`` makes them."""
    image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
    if image.shape[:2] != mask.shape:
        raise InputError(sample.mask_path, f"mask is {mask.shape} (h, w) but its image is {image.shape[:2]}")
    return resize_image(image, (size, size)), resize_mask(mask, (size, size))


def write_resized(sample: Sample, dst: Path, size: int, quality: int) -> None:
    """Write ``dst/images/NAME.jpg`` (JPEG, 4:4:4) and ``dst/masks/NAME.png`` (0/255) of one sample."""
    image, mask = resize_pair(sample, size)
    Image.fromarray(image).save(dst / "images" / f"{sample.name}.jpg", quality=quality, subsampling=0)
    Image.fromarray(mask.astype(np.uint8) * 255).save(dst / "masks" / f"{sample.name}.png")


def compare_copies(original: Sequence[Sample], resized: Sequence[Sample], size: int) -> dict[str, float]:
    """Load both with ``load_pairs``: masks must match exactly; image error in grey levels."""
    import torch

    a, b = load_pairs(original, size, workers=2), load_pairs(resized, size, workers=2)
    diff = (a.images.int() - b.images.int()).abs()
    return {
        "images": len(original),
        "masks_equal": bool(torch.equal(a.masks, b.masks)),
        "image_max_abs_error": int(diff.max()),
        "image_mean_abs_error": float(diff.float().mean()),
    }


def prepare(
    src: Path,
    dst: Path,
    size: int = 256,
    quality: int = 95,
    split_sizes: str = "800,100,100",
    seed: int = 42,
    workers: int = 2,
    check: int = 50,
) -> dict[str, object]:
    """Write ``dst/kvasir-<size>/``, ``dst/kvasir-test/`` and ``dst/splits.json``; returns a report."""
    samples = find_pairs(src)
    splits = make_splits([s.name for s in samples], parse_split_sizes(split_sizes), seed)
    resized_dir, test_dir = dst / f"kvasir-{size}", dst / "kvasir-test"
    for folder in (resized_dir, test_dir):
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir(parents=True)
    dst.mkdir(parents=True, exist_ok=True)
    save_splits(splits, dst / "splits.json")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda s: write_resized(s, resized_dir, size, quality), samples))
    by_name = {s.name: s for s in samples}
    for name in splits["test"]:
        sample = by_name[name]
        shutil.copy2(sample.image_path, test_dir / "images" / sample.image_path.name)
        shutil.copy2(sample.mask_path, test_dir / "masks" / sample.mask_path.name)
    for boxes in BOXES_FILES:
        if (src / boxes).is_file():
            shutil.copy2(src / boxes, test_dir / boxes)  # the evaluation's detection truth, as here
            shutil.copy2(src / boxes, resized_dir / boxes)  # scaled by its own width/height: still right

    resized = find_pairs(resized_dir)
    step = max(1, len(samples) // check) if check > 0 else 1
    checked = list(range(0, len(samples), step))[: check if check > 0 else None]
    report: dict[str, object] = {
        "source": str(src),
        "pairs": len(samples),
        "splits": {key: len(value) for key, value in splits.items()},
        "resized_dir": str(resized_dir),
        "test_dir": str(test_dir),
        "check": compare_copies([samples[i] for i in checked], [resized[i] for i in checked], size),
    }
    test_pairs = find_pairs(test_dir)
    if [s.name for s in test_pairs] != splits["test"]:
        raise RuntimeError(f"{test_dir}: does not hold exactly the test split")
    if not report["check"]["masks_equal"]:  # type: ignore[index]
        raise RuntimeError("resized masks do not load as the originals do")
    return report


def trim_splits(splits_file: Path, data_dir: Path, max_images: int, out: Path) -> dict[str, int]:
    """Keep only split names among the first ``max_images`` pairs of ``data_dir`` (as ``--max-images``)."""
    keep = {s.name for s in find_pairs(data_dir)[:max_images]}
    splits = {key: [n for n in names if n in keep] for key, names in load_splits(splits_file).items()}
    save_splits(splits, out)
    return {key: len(names) for key, names in splits.items()}


# --------------------------------------------------------------------------------------------------
# pack (runs on the GPU machine)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _planned_epochs(run: Path) -> int | None:
    import yaml

    try:
        return int(yaml.safe_load((run / "config.yaml").read_text())["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def run_summary(run: Path) -> dict[str, object]:
    """Epochs done/planned, best validation score and test metrics of one run folder."""
    rows = _read_csv(run / "metrics.csv")
    best = max(rows, key=lambda r: float(r.get("val_dice") or "nan"), default=None)
    status_file = run.parent / f"{run.name}.status"
    metrics_file = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()).get("metrics", {}) if metrics_file.is_file() else {}
    return {
        "run": run.name,
        "status": status_file.read_text().strip() if status_file.is_file() else "not run",
        "epochs_done": len(rows),
        "epochs_planned": _planned_epochs(run),
        "train_seconds": round(sum(float(r.get("seconds") or 0) for r in rows), 1),
        "best_epoch": int(best["epoch"]) if best else None,
        "best_val_dice": float(best["val_dice"]) if best else None,
        "test": metrics,
    }


SUMMARY_METRICS = (
    "mean_dice",
    "mean_iou",
    "polyp_dice",
    "polyp_iou",
    "polyp_dice_dataset",
    "polyp_mean_dice_pranet",
    "detection_recall",
    "loss",
)


def summary_markdown(summaries: Sequence[dict[str, object]], notes: Sequence[str]) -> str:
    """A short Markdown report of the runs (what comes back first, readable without unpacking)."""
    lines = ["# GPU kit results", "", "| run | status | epochs | train s | best epoch | best val_dice |"]
    lines.append("|---|---|---|---|---|---|")
    for s in summaries:
        lines.append(
            f"| {s['run']} | {s['status']} | {s['epochs_done']}/{s['epochs_planned']} | {s['train_seconds']} "
            f"| {s['best_epoch']} | {s['best_val_dice']} |"
        )
    lines += ["", "Test split (original files, best weights by val_dice):", ""]
    lines.append("| metric | " + " | ".join(str(s["run"]) for s in summaries) + " |")
    lines.append("|---" * (len(summaries) + 1) + "|")
    for key in SUMMARY_METRICS:
        values = [s["test"].get(key) for s in summaries]  # type: ignore[union-attr]
        lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")
    lines += ["", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _progress_key(line: str) -> str:
    return line.split("|")[0].split(":")[0].strip()


def _tail(path: Path, lines: int) -> bytes:
    """The last ``lines`` lines of a log; a progress bar's redraws (split at CR) reduced to its last one."""
    segments = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = [
        line
        for line, following in zip(segments, [*segments[1:], ""][: len(segments)], strict=True)
        if not PROGRESS.search(line) or _progress_key(line) != _progress_key(following)
    ]
    return ("\n".join(kept[-lines:]) + "\n").encode()


def write_results_tar(runs_dir: Path, names: Sequence[str], tar_path: Path, log_lines: int = 200) -> list[str]:
    """``results.tar.gz``: per run config, metrics, split, evaluation, curves, weights config, log tails."""
    members = []
    with tarfile.open(tar_path, "w:gz") as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            members.append(name)

        for name in names:
            run = runs_dir / name
            for rel in (
                "config.yaml",
                "metrics.csv",
                "splits.json",
                "training_curves.png",
                "best/config.json",
                "eval/metrics.json",
                "eval/per_image.csv",
            ):
                if (run / rel).is_file():
                    tar.add(run / rel, arcname=f"runs/{name}/{rel}")
                    members.append(f"runs/{name}/{rel}")
            for log in (f"{name}.train.log", f"{name}.eval.log", f"{name}.status"):
                if (runs_dir / log).is_file():
                    add_bytes(f"runs/{name}/{log}", _tail(runs_dir / log, log_lines))
    return members


def write_half_weights(best: Path, out_file: Path) -> Path:
    """Float16 copy of ``best/model.safetensors`` (metadata kept): loads back with polypseg as float32."""
    from safetensors.torch import load_file, safe_open, save_file

    tensors = load_file(str(best / "model.safetensors"))
    with safe_open(str(best / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(out_file), metadata=metadata)
    return out_file


def split_file(path: Path, out_dir: Path, chunk_bytes: int) -> list[Path]:
    """Split ``path`` into ``out_dir/NAME.part00``, ``.part01``... (re-join with ``cat NAME.part* > NAME``)."""
    parts = []
    with path.open("rb") as handle:
        for index in range(math.ceil(path.stat().st_size / chunk_bytes) or 1):
            part = out_dir / f"{path.name}.part{index:02d}"
            part.write_bytes(handle.read(chunk_bytes))
            parts.append(part)
    return parts


def pack(
    runs_dir: Path,
    out_dir: Path,
    names: Sequence[str],
    return_weights: str = "improved",
    chunk_mib: float = 15.0,
    limit_mib: float = 62.0,
    max_files: int = 8,
    notes: Sequence[str] = (),
) -> list[Path]:
    """Write SUMMARY.md, summary.json, results.tar.gz and optionally weight chunks into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = list(notes)
    summaries = [run_summary(runs_dir / name) for name in names]
    tar_path = out_dir / "results.tar.gz"
    write_results_tar(runs_dir, names, tar_path)
    written = [tar_path]

    best = runs_dir / return_weights / "best"
    if return_weights not in ("", "none") and (best / "model.safetensors").is_file():
        work = runs_dir / f"{return_weights}-fp16"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        half = write_half_weights(best, work / "model.safetensors")
        shutil.copy2(best / "config.json", work / "config.json")
        digest = hashlib.sha256(half.read_bytes()).hexdigest()
        chunk = int(chunk_mib * MIB)
        planned = half.stat().st_size + sum(p.stat().st_size for p in written) + 64 * 1024
        count = math.ceil(half.stat().st_size / chunk)
        if planned > limit_mib * MIB or count + len(written) + 2 > max_files:
            notes.append(
                f"{return_weights} weights not returned: {half.stat().st_size / MIB:.1f} MiB in {count} chunks "
                f"would pass the return limits ({limit_mib} MiB, {max_files} files)"
            )
        else:
            prefix = f"{return_weights}-fp16-"
            parts = split_file(half, out_dir, chunk)
            renamed = []
            for part in parts:
                target = out_dir / (prefix + part.name)
                part.rename(target)
                renamed.append(target)
            written += renamed
            notes.append(
                f"{return_weights} best weights, float16: `cat {prefix}model.safetensors.part* > "
                f"model.safetensors` (sha256 {digest}), put it in a folder with "
                f"runs/{return_weights}/best/config.json from results.tar.gz, then "
                f"`polypseg evaluate --weights FOLDER`"
            )
    elif return_weights not in ("", "none"):
        notes.append(f"{return_weights}: no best weights to return")

    (out_dir / "summary.json").write_text(json.dumps({"runs": summaries, "notes": notes}, indent=1) + "\n")
    (out_dir / "SUMMARY.md").write_text(summary_markdown(summaries, notes))
    return [out_dir / "SUMMARY.md", out_dir / "summary.json", *written]


# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the kit helpers."""
    parser = argparse.ArgumentParser(prog="kit.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="pre-resized copy, test originals and splits.json")
    p.add_argument("--src", type=Path, default=REPO_ROOT.parent / "shared" / "datasets" / "kvasir-seg")
    p.add_argument("--dst", type=Path, default=REPO_ROOT / ".device-data")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--split-sizes", default="800,100,100")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--check", type=int, default=50, help="pairs compared after writing (0: all)")
    t = commands.add_parser("trim-splits", help="restrict a splits.json to the first N pairs of a folder")
    t.add_argument("--splits", type=Path, required=True)
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--max-images", type=int, required=True)
    t.add_argument("--out", type=Path, required=True)
    k = commands.add_parser("pack", help="summary, results.tar.gz and weight chunks into OUT")
    k.add_argument("--runs", type=Path, required=True)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--names", nargs="+", required=True)
    k.add_argument("--return-weights", default="improved", help="run name, or none")
    k.add_argument("--chunk-mib", type=float, default=15.0)
    k.add_argument("--limit-mib", type=float, default=62.0)
    k.add_argument("--note", action="append", default=[])
    args = parser.parse_args(argv)

    if args.command == "prepare":
        start = time.time()
        report = prepare(
            args.src, args.dst, args.size, args.quality, args.split_sizes, args.seed, args.workers, args.check
        )
        report["seconds"] = round(time.time() - start, 1)
        print(json.dumps(report, indent=1))
    elif args.command == "trim-splits":
        print(json.dumps(trim_splits(args.splits, args.data, args.max_images, args.out)))
    else:
        for path in pack(
            args.runs, args.out, args.names, args.return_weights, args.chunk_mib, args.limit_mib, notes=args.note
        ):
            print(f"{path} {path.stat().st_size / MIB:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
