#!/usr/bin/env bash
# Quick start, main job: set up .venv, then run the demo benchmark: the paper's protocol (nnU-Net and
# nnU-Net + Pool Skip; --models nnunet nnunet_poolskip vnet vnet_poolskip adds the V-Net pair; fold 0 for 3,000
# iterations, --folds 0 1 for a softmax fold ensemble; Dice/NSD/mIoU) on synthetic BTCV-like phantoms, CPU-sized
# (the time it takes on 2 cores: README.md, benchmarks/RESULTS.md), then a real CT segmented by both models.
# A smoke-scale run, not a reproduction.
# Results: results/btcv_demo/ (table.md, run.json, logs/, real_ct/, ...).
# Extra arguments go to `nnunet-poolskip benchmark`; rerun the same command to continue an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nnunet-poolskip benchmark --profile demo "$@"
