#!/usr/bin/env bash
# K-FAC / EK-FAC factors and products, the GGN and Fisher diagonals (as multiples of a
# gradient) and CG with and without preconditioners on the 784-512-512-10 MLP (numpy/scipy
# only: no JAX, no torch).
#   bash bench/run_kfac.sh [OUT.json] [extra pytest args...]
# Kept out of bench/run.sh: it takes about 5 minutes (half of it the CG solves).
# FASTCURV_BENCH_KFAC_DELTAS (default 1e-2,1e-1) chooses the CG dampings,
# FASTCURV_BENCH_KFAC_CG_DTYPES (default f64) the CG dtypes (f32,f64 for both).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/kfac.json}"
shift || true
PY="${PYTHON:-python}"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    NUMBA_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 \
    "$PY" -m pytest bench/bench_kfac.py -p no:cacheprovider -q \
    --benchmark-group-by=group \
    --benchmark-columns=min,median,iqr,mean,rounds \
    --benchmark-json="$OUT" "$@"
"$PY" bench/bench_kfac.py "$OUT" --markdown
