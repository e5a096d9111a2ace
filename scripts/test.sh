#!/usr/bin/env bash
# Quick start, tests: set up .venv, then run the whole test suite; pytest lists its 20 slowest tests at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
