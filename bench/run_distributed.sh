#!/usr/bin/env bash
# Distributed (Dask) GLM products vs the in-memory GLM: bench/bench_distributed.py on a local
# cluster of 2 single-threaded worker processes (needs `pip install fastcurv[dask]`).
#   bash bench/run_distributed.sh [OUT.json] [extra pytest args...]
# About 2 minutes; holds X twice (800 MB in this process, 800 MB on the workers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/distributed.json}"
shift || true
PY="${PYTHON:-python}"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 \
    FASTCURV_BENCH_DISTRIBUTED=1 \
    "$PY" -m pytest bench/bench_distributed.py -p no:cacheprovider -q \
    --benchmark-group-by=group \
    --benchmark-columns=min,median,iqr,mean,rounds \
    --benchmark-json="$OUT" "$@"
"$PY" bench/bench_distributed.py "$OUT" --markdown
