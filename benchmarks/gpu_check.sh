#!/usr/bin/env bash
# The GPU check in one command: Pool Skip's step time and memory (benchmarks/overhead.py, also under torch.compile),
# a real nnUNetv2_train of the baseline and the Pool Skip trainer, and the softmax ensemble's cost next to nnU-Net's
# (benchmarks/ensemble_cost.py), written as OUTDIR/gpu_check.json and OUTDIR/gpu_check.md. Under 8 minutes on one
# datacenter GPU; the stages and their time caps are described in benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh OUTDIR            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --tiny OUTDIR     # on a CPU, small sizes: checks that every stage runs
#
# It needs the repository's venv: on a bare machine run `bash scripts/setup.sh` first (it installs torch, nnU-Net
# and this package into .venv; TORCH_SPEC picks another torch build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "gpu_check: no .venv in $(pwd): run 'bash scripts/setup.sh' first (it creates .venv with torch, nnU-Net" \
         "and this package), then run this again" >&2
    exit 2
fi
exec .venv/bin/python benchmarks/gpu_check.py "$@"
