"""Print the time-to-accuracy table of docs/results.md from ``runs/tta/*/time_to_accuracy.json``.

A record with ``"continues": NAME`` is that run resumed with a larger budget (``polypseg train --resume
--time-budget 120m``): its marks join NAME's row, marked ``*``, and its wall time and epochs are added.

Usage::

    python scripts/time_to_accuracy_table.py runs/tta
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MARKS = ("5", "10", "15", "30", "60", "120")


def main() -> int:
    """Print one Markdown row per recorded run, fastest-learning first; returns the exit code."""
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tta")
    records = []
    continued = []
    for path in sorted(root.glob("*/time_to_accuracy.json")):
        record = json.loads(path.read_text())
        if "at_minutes" in record:
            (continued if record.get("continues") else records).append(record)
    by_name = {record["name"]: record for record in records}
    for extra in continued:
        base = by_name[extra["continues"]]
        base["wall_seconds"] += extra["wall_seconds"]
        base["epochs_run"] = extra["epochs_run"]  # metrics.csv holds the epochs before the resume too
        for mark, value in extra["at_minutes"].items():
            base["at_minutes"][mark] = {**value, "resumed": True}
    print("| recipe | CPU | epochs seen | wall | " + " | ".join(f"{m} min" for m in MARKS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(MARKS))
    for record in records:
        cells = []
        for mark in MARKS:
            value = record["at_minutes"].get(mark, {}).get("polyp_dice_per_image")
            star = "*" if record["at_minutes"].get(mark, {}).get("resumed") else ""
            cells.append(
                "" if mark not in record["at_minutes"] else ("none yet" if value is None else f"{value:.3f}{star}")
            )
        cpu = "native bf16" if record["cpu_native_bf16"] else "no native bf16"
        wall = f"{record['wall_seconds'] / 60:.1f} min"
        print(f"| `{record['name']}` | {cpu} | {record['epochs_run']} | {wall} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
