#!/usr/bin/env bash
# The prepared GPU measurement for RESULTS.md. Run from the repository root on a machine with a
# CUDA GPU and a CUDA build of torch (PY=... picks the interpreter; the default is python3); it
# downloads nothing. It expects CIFAR-10 (the airplane/bird copy is enough) in the git-ignored
# folder .gpu/cifar-10-batches-py, e.g. prepared beforehand with
#     mkdir -p .gpu && cp -r ../shared/data/cifar-10-batches-py .gpu/
# and appends one JSON line per run to examples/cifar2/results-gpu.jsonl.
#
# Usage: examples/cifar2/gpu_run.sh [core|resdeep|all]   (default: all)
#   core     loader comparison (3 epochs), then net, seq, width, l2, dropout, batchnorm, depth,
#            res: 100 epochs x 3 seeds each with the tensor loader
#   resdeep  the 100-block residual net, 100 epochs x 3 seeds (by far the slowest part)
# Split the phases across calls if one call has a time limit. SEEDS="123" runs one seed only.
set -euo pipefail

PHASE="${1:-all}"
SEEDS="${SEEDS:-123 124 125}"
PY="${PY:-python3}"  # the GPU machine's own torch; train.py finds shapecheck in this checkout
DATA=.gpu
OUT=examples/cifar2/results-gpu.jsonl

if [[ ! -d "$DATA/cifar-10-batches-py" ]]; then
  echo "error: $DATA/cifar-10-batches-py not found; copy ../shared/data/cifar-10-batches-py there" >&2
  exit 2
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA GPU")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

train() {  # one run; the explain table is printed once per run, the progress bar is off
  echo "=== $* ($(date +%T))"
  "$PY" examples/cifar2/train.py --data-dir "$DATA" --device cuda --out "$OUT" --quiet "$@" \
    | tail -n 1
}

if [[ "$PHASE" == core || "$PHASE" == all ]]; then
  echo "=== loader comparison, 3 epochs, same process ($(date +%T))"
  "$PY" examples/cifar2/compare_loaders.py --model net --epochs 3 --data-dir "$DATA" \
    --device cuda --out "$OUT" --quiet | tail -n 1
  for model in net seq width l2 dropout batchnorm depth res; do
    for seed in $SEEDS; do train --model "$model" --seed "$seed"; done
  done
fi
if [[ "$PHASE" == resdeep || "$PHASE" == all ]]; then
  for seed in $SEEDS; do train --model resdeep --seed "$seed"; done
fi
"$PY" examples/cifar2/summarize.py "$OUT"
