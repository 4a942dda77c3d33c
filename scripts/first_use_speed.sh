#!/usr/bin/env bash
# First use of `polypseg predict --backend auto`, end to end (model loading and any export included):
# 40 real Kvasir-SEG JPEGs, the full-size width-64 U-Net (random weights: speed does not depend on them),
# against `--backend torch --precision 32`, then auto again with its export cache filled (a forced
# OpenVINO run makes the export). The issue-10 target is auto >= 1.5x torch fp32 on first use.
#   bash scripts/first_use_speed.sh        (run nothing else on the machine meanwhile)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/datasets/kvasir-seg}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/imgs"
mapfile -t jpegs < <(find "$DATA/images" -name '*.jpg' | sort)
cp "${jpegs[@]:0:40}" "$work/imgs/"
"$PYTHON" -c "
import sys, torch
from polypseg.model import UNet
from polypseg.weights import save_pretrained
torch.manual_seed(0)
save_pretrained(UNet(3, 3, 64), sys.argv[1])
" "$work/w64"
export POLYPSEG_CACHE="$work/cache"
grep -m1 -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo | head -1 | sed 's/^/CPU native bf16: /' || echo "CPU native bf16: none"
run() {  # name, predict arguments...
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$PYTHON" -m polypseg.cli predict --weights "$work/w64" "$work/imgs" --out "$work/out-$name" "$@" >"$work/$name.log" 2>&1
    end=$(date +%s.%N)
    grep -h "backend auto" "$work/$name.log" || true
    echo "$name $(echo "$end - $start" | bc)" | tee -a "$work/times"
}
run torch-fp32 --backend torch --precision 32
run auto-first --backend auto
run openvino-export --backend openvino   # fills the cache, as a later or larger run would have
run auto-cached --backend auto
awk '{t[$1]=$2} END {
    printf "first use: auto %.1f s vs torch fp32 %.1f s = %.2fx\n", t["auto-first"], t["torch-fp32"], t["torch-fp32"]/t["auto-first"];
    printf "cached:    auto %.1f s = %.2fx\n", t["auto-cached"], t["torch-fp32"]/t["auto-cached"] }' "$work/times"
