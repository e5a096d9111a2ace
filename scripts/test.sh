#!/usr/bin/env bash
# Quick start, tests: set up .venv, then run the whole test suite; pytest lists its 20 slowest tests at the end.
#   bash scripts/test.sh              everything (what CI runs through .ci/run)
#   bash scripts/test.sh --fast       the fast loop: everything but the integration tests (those that run
#                                     nnU-Net's command line), pytest -m "not integration"
# Other arguments go to pytest.
# The tests run in NNUNET_POOLSKIP_TEST_WORKERS processes (pytest-xdist; default 2, one per core of the 2-core CI
# machine; 0 runs them in this process, as -p no:xdist would), each with one torch/OpenMP thread: most of an
# integration test is single-threaded (interpreter and library start-up, planning, evaluation), so two at a time
# use both cores where one test with two threads leaves one idle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workers=${NNUNET_POOLSKIP_TEST_WORKERS:-2}
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
