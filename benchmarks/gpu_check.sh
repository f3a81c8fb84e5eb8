#!/usr/bin/env bash
# One prepared GPU check of a few minutes (issue 9), each step printing its own result:
#  1. the engine/baseline table on CUDA, eager (FRERNN_CUDA_GRAPHS=0) and with CUDA graphs,
#     then P-EP's relaxation next to FRE-RNN's (2HL, 3HL);
#  2. the packing table on CUDA (R = 1, 5, 35; eager vs CUDA graphs; peak memory; projection);
#  3. a real 50-epoch depth-2 run alone (target <= 5 s) and 35 such runs packed (<= 15 s);
#  4. CPU vs CUDA agreement (same spec and seed, 3 epochs: accuracy within 0.3 points, first
#     update within float32 tolerance);
#  5. the smoke workflow with device=cuda pack=shape (whole default target, wall time).
# Fashion-MNIST is read from $FRERNN_DATA_DIR (default ./data); without it the tables are timed
# on synthetic images and steps 3-5 are skipped. Every step's output goes to stdout; the
# script stops at the first failing step (set -e).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
[[ "$PY" == */* ]] && PY=$(realpath "$PY") # step 5 runs in another directory
DATA_DIR=$(realpath -m "${FRERNN_DATA_DIR:-data}")
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d)
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

SOURCE=(--data-dir "$DATA_DIR")
if ! "$PY" -c "import sys; from frernn import data; data.load('fashion_mnist', sys.argv[1])" \
    "$DATA_DIR" >/dev/null 2>&1; then
    echo "Fashion-MNIST not found under $DATA_DIR: synthetic images, steps 3-5 skipped"
    SOURCE=(--synthetic)
fi

step "1. engine table, eager"
FRERNN_CUDA_GRAPHS=0 "$PY" benchmarks/engine.py --device cuda --configs chain2 chain10 conv \
    --repeats 3 "${SOURCE[@]}"
step "1. engine table, CUDA graphs"
"$PY" benchmarks/engine.py --device cuda --configs chain2 chain10 conv --repeats 3 "${SOURCE[@]}"
"$PY" benchmarks/pep.py --device cuda --families 2hl 3hl --repeats 3 "${SOURCE[@]}"

step "2. packing table"
"$PY" benchmarks/packing.py --device cuda --runs 1 5 35 --batches 5 "${SOURCE[@]}"

[ "${SOURCE[0]}" = --synthetic ] && exit 0

step "3. 50-epoch depth-2 run alone, then 35 packed"
"$PY" benchmarks/pack_runs.py --device cuda --data-dir "$DATA_DIR" --out "$WORK/runs" \
    --runs 1 35 --epochs 50

step "4. CPU vs CUDA agreement"
"$PY" benchmarks/agreement.py --devices cpu cuda --epochs 3 --data-dir "$DATA_DIR"

step "5. smoke workflow, device=cuda pack=shape"
mkdir -p "$WORK/smoke"
cp -r Snakefile config.yaml workflow envs notebooks slurm "$WORK/smoke/"
ln -s "$PWD/src" "$WORK/smoke/src"
start=$(date +%s)
(cd "$WORK/smoke" && "$PY" -m snakemake --cores 8 --resources gpu=1 --config scale=smoke \
    dataset_substitute=fashion_mnist device=cuda pack=shape "data_dir=$DATA_DIR" >smoke.log 2>&1) ||
    { tail -40 "$WORK/smoke/smoke.log"; exit 1; }
echo "smoke workflow (device=cuda pack=shape): $(($(date +%s) - start)) s wall;" \
    "$(ls "$WORK/smoke/results/runs"/*/*/*/metrics.json | wc -l) runs finished"
grep -h '"device"' "$WORK/smoke/results/runs"/*/*/*/metrics.json | sort | uniq -c
