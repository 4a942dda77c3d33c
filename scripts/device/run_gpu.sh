#!/usr/bin/env bash
# Runs ON THE GPU MACHINE, in the repository root (see scripts/device/README.md):
#   bash scripts/device/run_gpu.sh
# Trains configs/seed.yaml (the model card's recipe) and configs/improved.yaml concurrently on the one
# GPU, within a time guard, evaluates both runs' best weights on the original test-split files, and
# writes SUMMARY.md, summary.json, results.tar.gz (and the improved weights, float16, in chunks) to $OUT.
# Run it again while the machine is still warm and the runs in $RUNS resume from their last epoch.
#
# Environment (defaults are the GPU session's):
#   OUT=/tmp/device-out  RUNS=/tmp/runs  DEVICE_DATA=.device-data  WHEELS=.whl (empty: install nothing)
#   PYTHON=python3  ACCELERATOR=gpu  PRECISION=bf16-mixed  DEVICES=1
#   TRAIN_SECONDS=420 (time guard of the training phase)  EVAL_SECONDS=120
#   RUNS_TO_TRAIN="seed improved"  WIDTH= (default: the configs' 64)  EPOCHS_SEED=  EPOCHS_IMPROVED=
#   MAX_IMAGES= (first N pairs only)  BATCH_SIZE=  RETURN_WEIGHTS=improved (or none, or seed)
#   CPU smoke run: ACCELERATOR=cpu PRECISION=32 WIDTH=8 EPOCHS_SEED=1 EPOCHS_IMPROVED=1 OUT=/tmp/x WHEELS=
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/device-out}
RUNS=${RUNS:-/tmp/runs}
DEVICE_DATA=${DEVICE_DATA:-.device-data}
WHEELS=${WHEELS-.whl}
SITE=${SITE:-/tmp/site}
ACCELERATOR=${ACCELERATOR:-gpu}
PRECISION=${PRECISION:-bf16-mixed}
DEVICES=${DEVICES:-1}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
EVAL_SECONDS=${EVAL_SECONDS:-120}
RUNS_TO_TRAIN=${RUNS_TO_TRAIN:-seed improved}
RETURN_WEIGHTS=${RETURN_WEIGHTS:-improved}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1

DATA="$DEVICE_DATA/kvasir-256"
TEST_DATA="$DEVICE_DATA/kvasir-test"
SPLITS="$DEVICE_DATA/splits.json"
mkdir -p "$OUT" "$RUNS"
log() { echo "[run_gpu $(($(date +%s) - start))s] $*"; }

for path in "$DATA/images" "$TEST_DATA/images" "$SPLITS"; do
    [ -e "$path" ] || { echo "run_gpu: $path missing: run scripts/device/prepare.sh here and carry .device-data" >&2; exit 2; }
done

# Wheels of what the machine lacks (kornia), into a private site folder.
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
        || { echo "run_gpu: installing the wheels failed" >&2; exit 2; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import kornia, polypseg, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'kornia', kornia.__version__)" || { echo "run_gpu: imports failed" >&2; exit 2; }
if [ "$ACCELERATOR" = gpu ]; then nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null; fi

if [ -n "${MAX_IMAGES:-}" ]; then  # smoke runs: the split restricted to the first N pairs, as --max-images does
    "$PY" scripts/device/kit.py trim-splits --splits "$SPLITS" --data "$DATA" --max-images "$MAX_IMAGES" \
        --out "$RUNS/splits-$MAX_IMAGES.json" || exit 2
    SPLITS="$RUNS/splits-$MAX_IMAGES.json"
fi

train_one() {  # NAME CONFIG EPOCHS -> trains in $RUNS/NAME (resuming it if it exists), logs to $RUNS/NAME.train.log
    local name=$1 config=$2 epochs=$3 run="$RUNS/$1" args
    if [ -d "$run" ] && [ ! -f "$run/config.yaml" ]; then rm -rf "$run"; fi  # killed before it wrote anything
    if [ -f "$run/config.yaml" ]; then
        args=(--resume)  # the run's own config, data and split; only --epochs may change
    else
        args=(--config "$config" --data "$DATA" --splits "$SPLITS" --precision "$PRECISION"
            --accelerator "$ACCELERATOR" --devices "$DEVICES")
        [ -n "${WIDTH:-}" ] && args+=(--base-channels "$WIDTH")
        [ -n "${BATCH_SIZE:-}" ] && args+=(--batch-size "$BATCH_SIZE")
        [ -n "${MAX_IMAGES:-}" ] && args+=(--max-images "$MAX_IMAGES")
    fi
    [ -n "$epochs" ] && args+=(--epochs "$epochs")
    local left=$((TRAIN_SECONDS - ($(date +%s) - start)))
    ((left < 30)) && left=30
    log "train $name ($config${epochs:+, $epochs epochs}), time guard ${left}s: ${args[*]}"
    timeout -k 30 "$left" "$PY" -m polypseg.cli train --out "$run" "${args[@]}" >>"$RUNS/$name.train.log" 2>&1
    local rc=$?
    case $rc in
        0) echo "complete" >"$RUNS/$name.status" ;;
        124 | 137) echo "stopped by the time guard (${left}s); resumable" >"$RUNS/$name.status" ;;
        *) echo "failed (exit $rc), see $name.train.log" >"$RUNS/$name.status" ;;
    esac
    log "train $name: $(cat "$RUNS/$name.status")"
}

evaluate_one() {  # NAME -> $RUNS/NAME/eval/{metrics.json,per_image.csv}, log $RUNS/NAME.eval.log
    local name=$1 run="$RUNS/$1"
    [ -f "$run/best/model.safetensors" ] || { log "evaluate $name: no best weights"; return; }
    timeout -k 10 "$EVAL_SECONDS" "$PY" -m polypseg.cli evaluate --weights "$run" --data "$TEST_DATA" \
        --splits "$SPLITS" --split test --out "$run/eval" --overwrite --batch-size 16 >"$RUNS/$name.eval.log" 2>&1
    log "evaluate $name: exit $?"
}

names=()
for name in $RUNS_TO_TRAIN; do
    case $name in
        seed) epochs=${EPOCHS_SEED:-} ;;
        improved) epochs=${EPOCHS_IMPROVED:-} ;;
        *) epochs= ;;
    esac
    [ -f "configs/$name.yaml" ] || { echo "run_gpu: configs/$name.yaml not found" >&2; exit 2; }
    train_one "$name" "configs/$name.yaml" "$epochs" &
    names+=("$name")
done
wait
if [ "$ACCELERATOR" = gpu ]; then nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null; fi

for name in "${names[@]}"; do evaluate_one "$name" & done
wait

for name in "${names[@]}"; do
    log "$name: last lines of the training log"
    tr '\r' '\n' <"$RUNS/$name.train.log" 2>/dev/null | grep -v '^\s*$' | tail -n 4 | cut -c1-300
    tail -n 14 "$RUNS/$name.eval.log" 2>/dev/null | cut -c1-300
done

note="$(($(date +%s) - start))s on $(uname -n) ($ACCELERATOR, $PRECISION); runs in $RUNS"
"$PY" scripts/device/kit.py pack --runs "$RUNS" --out "$OUT" --names "${names[@]}" \
    --return-weights "$RETURN_WEIGHTS" --note "$note" || { echo "run_gpu: packing failed" >&2; exit 1; }
cat "$OUT/SUMMARY.md"
log "done"
