#!/usr/bin/env bash
# Quick start, tests: set up .venv, then run the whole test suite; pytest lists its 20 slowest tests at the end.
#   bash scripts/test.sh              everything (what CI runs through .ci/run)
#   bash scripts/test.sh --fast       the fast loop: everything but the integration tests (those that run
#                                     nnU-Net's command line), pytest -m "not integration"
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
for arg in "$@"; do
    if [[ $arg == --fast ]]; then
        args+=(-m "not integration")
    else
        args+=("$arg")
    fi
done
exec .venv/bin/python -m pytest -q "${args[@]}"
