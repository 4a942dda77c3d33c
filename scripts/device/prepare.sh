#!/usr/bin/env bash
# Runs HERE (not on the GPU machine), once, before a GPU session: see scripts/device/README.md.
#   scripts/device/prepare.sh            # writes .device-data/ and .whl/ (both git-ignored), prints the travel size
# Environment: PYTHON (default .venv/bin/python), SRC (default ../shared/datasets/kvasir-seg),
#   SKIP_WHEELS=1 to leave .whl/ alone, WORKERS (default 2, the CPU is shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
SRC=${SRC:-../shared/datasets/kvasir-seg}

# (d) first, so that nothing below is ever picked up as an untracked file
exclude_file=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude_file")"
touch "$exclude_file"
for pattern in /.device-data/ /.whl/; do
    grep -qxF "$pattern" "$exclude_file" || echo "$pattern" >>"$exclude_file"
done

# (a)-(c) data: pre-resized copy, original test split, splits.json
"$PY" scripts/device/kit.py prepare --src "$SRC" --dst .device-data --workers "${WORKERS:-2}"

# wheels of what the GPU machine lacks (kornia, kornia_rs), same versions as here, for CPython 3.12
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
    rm -rf .whl && mkdir -p .whl
    specs=()
    for name in kornia kornia_rs; do
        version=$("$PY" -m pip show "$name" | awk '/^Version:/ {print $2}')
        [ -n "$version" ] || { echo "prepare: $name is not installed in $PY's environment" >&2; exit 1; }
        specs+=("$name==$version")
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${specs[@]}"
    ls -l .whl
fi

# what travels: tracked files, untracked files git does not ignore, and the carried folders
for pattern in .device-data .whl; do
    git check-ignore -q "$pattern" || { echo "prepare: $pattern is not git-ignored" >&2; exit 1; }
done
bytes() { xargs -0 -r du -cb 2>/dev/null | awk 'END {print ($1 == "" ? 0 : $1)}'; }
tracked=$(git ls-files -z | bytes)
untracked=$(git ls-files -z --others --exclude-standard | bytes)
carried=$(du -cb .device-data .whl 2>/dev/null | awk 'END {print $1}')
total=$((tracked + untracked + carried))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "travel size: tracked $(mib "$tracked") + untracked $(mib "$untracked") + carried $(mib "$carried")" \
    "(.device-data $(du -sh .device-data | cut -f1), .whl $(du -sh .whl 2>/dev/null | cut -f1)) = $(mib "$total") of 64 MiB"
if [ "$total" -gt $((56 * 1048576)) ]; then
    echo "prepare: WARNING: over 56 MiB, too close to the 64 MiB limit" >&2
    exit 1
fi
