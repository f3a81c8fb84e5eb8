#!/usr/bin/env bash
# One prepared GPU check of a few minutes: the engine/baseline table on CUDA (depth 2, depth 10,
# the MNIST conv net), P-EP next to FRE-RNN (2HL, 3HL), then a real 50-epoch depth-2 run
# (issue 6's target: <= 5 s on one H100).
# Fashion-MNIST is read from $FRERNN_DATA_DIR (default ./data); without it the table is timed on
# synthetic images and the 50-epoch run is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA_DIR=${FRERNN_DATA_DIR:-data}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

SOURCE=(--data-dir "$DATA_DIR")
if ! "$PY" -c "import sys; from frernn import data; data.load('fashion_mnist', sys.argv[1])" \
    "$DATA_DIR" >/dev/null 2>&1; then
    echo "Fashion-MNIST not found under $DATA_DIR: timing synthetic images, no 50-epoch run"
    SOURCE=(--synthetic)
fi

"$PY" benchmarks/engine.py --device cuda --configs chain2 chain10 conv --repeats 3 "${SOURCE[@]}"
"$PY" benchmarks/pep.py --device cuda --families 2hl 3hl --repeats 3 "${SOURCE[@]}"

if [ "${SOURCE[0]}" != --synthetic ]; then
    run=$(mktemp -d)
    printf 'dataset: fashion_mnist\nep: {beta: 0.1}\ntrain: {epochs: 50}\n' >"$run/spec.yaml"
    "$PY" -m frernn.cli train "$run/spec.yaml" --out "$run/out" --device cuda --data-dir "$DATA_DIR"
    "$PY" -c "import json, sys; m = json.load(open(sys.argv[1])); \
print(f\"50-epoch depth-2 run: {m['wall_seconds']:.1f} s on {m['device']} (target <= 5 s)\")" \
        "$run/out/metrics.json"
fi
