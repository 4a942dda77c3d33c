r"""Time to accuracy: train one recipe under a wall-clock budget and score what it had at fixed times.

Runs ``polypseg train ... --time-budget BUDGET`` as a child process. At each mark (minutes of wall time
since the command started, data loading included) it copies the run's ``best/`` (the best-validation
weights so far: what a user who stopped then would have). When training ends, every snapshot and the
final ``best/`` are scored on the test split with ``polypseg evaluate`` (after training, so scoring
does not slow the run), and ``OUT/time_to_accuracy.json`` gets one record: the command, the CPU, wall
time, epochs seen and the test polyp Dice per image (no TTA) at each mark.

Usage::

    python scripts/time_to_accuracy.py --name cpu-fast --out runs/tta/cpu-fast --budget 60m --marks 15,30,60 \\
        -- --config configs/cpu-fast.yaml

Everything after ``--`` goes to ``polypseg train`` (``--out`` and ``--time-budget`` are added).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from polypseg.config import parse_duration
from polypseg.hardware import cpu_flags, cpu_supports_bf16

DATA = "../shared/datasets/kvasir-seg"


def _score(weights: Path, run: Path, data: str) -> dict:
    out = weights / "test"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "polypseg.cli",
            "evaluate",
            "--weights",
            str(weights),
            "--data",
            data,
            "--splits",
            str(run / "splits.json"),
            "--split",
            "test",
            "--out",
            str(out),
            "--overwrite",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics


def main() -> int:
    """Train, snapshot, score; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the run (OUT/run) and snapshots")
    parser.add_argument("--budget", required=True, help="time budget, e.g. 15m")
    parser.add_argument("--marks", default="15", help="minutes at which to snapshot best/, e.g. 15,30,60")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    run = args.out / "run"
    marks = sorted(float(m) for m in args.marks.split(","))
    command = [
        sys.executable,
        "-m",
        "polypseg.cli",
        "train",
        *train_args,
        "--data",
        args.data,
        "--out",
        str(run),
        "--time-budget",
        args.budget,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with (args.out / "train.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pending = list(marks)
        loads: list[float] = []
        while process.poll() is None:
            time.sleep(5)
            loads.append(os.getloadavg()[0])
            minutes = (time.monotonic() - start) / 60
            while pending and minutes >= pending[0]:
                mark = pending.pop(0)
                if (run / "best" / "model.safetensors").exists():
                    shutil.copytree(run / "best", args.out / f"at-{mark:g}min", dirs_exist_ok=True)
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the training process only: scoring comes later
    cpu_seconds = usage.ru_utime + usage.ru_stime
    if process.returncode != 0:
        print(f"training failed (exit {process.returncode}); see {args.out / 'train.log'}", file=sys.stderr)
        return 1
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    budget_minutes = parse_duration(args.budget) / 60
    results = {}
    for mark in marks:
        snapshot = args.out / f"at-{mark:g}min"
        if mark >= budget_minutes:
            snapshot = run / "best"  # the end of the run (it stops on its budget)
        elif not snapshot.exists():
            results[f"{mark:g}"] = {"polyp_dice_per_image": None, "weights": None, "epoch": None}
            continue
        metrics = _score(snapshot, run, args.data)
        results[f"{mark:g}"] = {
            "polyp_dice_per_image": metrics["metrics"]["polyp_dice"] if "metrics" in metrics else metrics["polyp_dice"],
            "weights": str(snapshot),
            "epoch": json.loads((snapshot / "config.json").read_text()).get("training", {}).get("epoch"),
        }
    final = _score(run / "best", run, args.data)
    record = {
        "name": args.name,
        "command": "polypseg train " + " ".join([*train_args, "--data", args.data, "--time-budget", args.budget]),
        "cpu_native_bf16": cpu_supports_bf16(),
        "cpu_flags": {k: v for k, v in cpu_flags().items() if v},
        "wall_seconds": round(wall, 1),
        "training_cpu_seconds": round(cpu_seconds, 1),
        "mean_load_average": round(sum(loads) / max(len(loads), 1), 2),
        "cores": os.cpu_count(),
        "epochs_run": len(rows),
        "at_minutes": results,
        "final_test": final,
    }
    (args.out / "time_to_accuracy.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("name", "wall_seconds", "epochs_run", "at_minutes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
