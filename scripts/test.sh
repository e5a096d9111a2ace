#!/usr/bin/env bash
# Quick start, tests: set up .venv, then run the whole test suite; pytest lists its 20 slowest tests at the end.
#   bash scripts/test.sh              everything (what CI runs through .ci/run)
#   bash scripts/test.sh --fast       the fast loop: everything but the integration tests (those that run
#                                     nnU-Net's command line), pytest -m "not integration"
# Other arguments go to pytest.
# The tests run in NNUNET_POOLSKIP_TEST_WORKERS processes (pytest-xdist; default: CPU cores + 1, at most 8; 3 on the
# 2-core CI machine; 0 runs them in this process, as -p no:xdist would), each with one torch/OpenMP thread: an
# integration test spends much of its time in single-threaded start-up, planning, evaluation and waiting for its
# subprocesses. Measured on 2 cores, quiet: 3 workers 1320 s and 1601 s of pytest in two runs (version 0.2.1), 2
# workers 1580 s (version 0.2.0): no clear gain. At most 8: each worker's tests start processes of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
default_workers=$(( $(nproc) + 1 > 8 ? 8 : $(nproc) + 1 ))
workers=${NNUNET_POOLSKIP_TEST_WORKERS:-$default_workers}
args=()
if [[ $workers != 0 ]]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    args+=(-n "$workers" --dist loadgroup)
fi
for arg in "$@"; do
    if [[ $arg == --fast ]]; then
        args+=(-m "not integration")
    else
        args+=("$arg")
    fi
done
exec .venv/bin/python -m pytest -q "${args[@]}"
