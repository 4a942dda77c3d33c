#!/usr/bin/env bash
# The time-to-accuracy comparison of docs/results.md: each recipe of configs/time-to-accuracy/ under a
# 15-minute budget, one after the other (each alone in the foreground of the CPU: run nothing else).
#   bash scripts/run_time_to_accuracy.sh [RECIPE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BUDGET=${BUDGET:-15m}
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(card-w16 bundled-recipe onecycle-256 cpu-fast-15m crops-128 cpu-fast-w24)
for name in "${recipes[@]}"; do
    [ -e "runs/tta/$name/time_to_accuracy.json" ] && { echo "$name: done already"; continue; }
    rm -rf "runs/tta/$name"
    if [ "$name" = cpu-fast-15m ]; then config=configs/cpu-fast.yaml; else config="configs/time-to-accuracy/$name.yaml"; fi
    echo "$(date +%T) $name ($config, $BUDGET)"
    "$PYTHON" scripts/time_to_accuracy.py --name "$name" --out "runs/tta/$name" --budget "$BUDGET" --marks 5,10,15 \
        -- --config "$config"
done
