#!/usr/bin/env bash
# Run the benchmark suite (all but the MLP products: bench/run_mlp.sh, and K-FAC / diagonals /
# CG: bench/run_kfac.sh) and print the ratio table.
#   bash bench/run.sh [OUT.json] [extra pytest args...]
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset (they make OpenBLAS pick a slower kernel for
# the numpy/scipy baselines); every library gets 2 threads. Rounds are set by bench/harness.py
# (FASTCURV_BENCH_TARGET_S, FASTCURV_BENCH_MIN_ROUNDS, FASTCURV_BENCH_QUIET_WAIT[_ROUND]).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/latest.json}"
shift || true
PY="${PYTHON:-python}"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 \
    "$PY" -m pytest bench -p no:cacheprovider -q --ignore=bench/bench_influence.py \
    --ignore=bench/bench_mlp.py --ignore=bench/bench_kfac.py \
    --benchmark-group-by=group \
    --benchmark-columns=min,median,iqr,mean,rounds \
    --benchmark-json="$OUT" "$@"
"$PY" bench/report.py "$OUT"
