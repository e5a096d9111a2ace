#!/usr/bin/env bash
# The GPU check in one command: Pool Skip's step time and memory (benchmarks/overhead.py, also under torch.compile),
# a real nnUNetv2_train of the baseline and the Pool Skip trainer, and the softmax ensemble's cost next to nnU-Net's
# (benchmarks/ensemble_cost.py), written as OUTDIR/gpu_check.json and OUTDIR/gpu_check.md. Under 8 minutes on one
# datacenter GPU; the stages and their time caps are described in benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh OUTDIR            # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --tiny OUTDIR     # on a CPU, small sizes: checks that every stage runs
#
# It runs in the environment you have active: the `python` (or `python3`) on PATH, when it imports torch, nnU-Net and this package
# (e.g. your own nnU-Net environment with `pip install -e .` of this checkout), so a GPU node needs no second torch.
# Only when that Python lacks them does it fall back to the checkout's .venv (made by `bash scripts/setup.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
active=""
for candidate in python python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c "import torch, nnunetv2, nnunet_poolskip" >/dev/null 2>&1; then
        active=$("$candidate" -c "import sys; print(sys.executable)")
        break
    fi
done
if [ -n "$active" ]; then
    py="$active"
    echo "gpu_check: using the active environment's Python: $py" >&2
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
    echo "gpu_check: the active Python (${active:-$(command -v python || echo none)}) lacks torch, nnunetv2 or" \
         "nnunet_poolskip: using the checkout's .venv ($(pwd)/.venv)" >&2
else
    echo "gpu_check: the active Python ($(command -v python || echo none)) lacks torch, nnunetv2 or nnunet_poolskip" \
         "and there is no .venv in $(pwd): activate an environment with them (pip install -e . in your nnU-Net" \
         "environment) or run 'bash scripts/setup.sh' (it creates .venv), then run this again" >&2
    exit 2
fi
"$py" -c "import nnunet_poolskip, sys; print(f'gpu_check: nnunet_poolskip {nnunet_poolskip.__version__} from' \
          f' {nnunet_poolskip.__file__}', file=sys.stderr)"
exec "$py" benchmarks/gpu_check.py "$@"
