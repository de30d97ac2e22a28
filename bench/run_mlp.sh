#!/usr/bin/env bash
# MLP products against JAX (jit) and torch.func (needs `pip install -e ".[mlp-bench]"`).
#   bash bench/run_mlp.sh [OUT.json] [extra pytest args...]
# Kept out of bench/run.sh: it takes about 8 minutes and loads JAX and torch, whose thread
# pools would then share the process with the other benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/mlp-products.json}"
shift || true
PY="${PYTHON:-python}"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 \
    "$PY" -m pytest bench/bench_mlp.py -p no:cacheprovider -q \
    --benchmark-group-by=group \
    --benchmark-columns=min,median,iqr,mean,rounds \
    --benchmark-json="$OUT" "$@"
"$PY" bench/bench_mlp.py "$OUT" --markdown
