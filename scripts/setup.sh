#!/usr/bin/env bash
# Create .venv (if missing) and install nnunet-poolskip with its test extra, editable.
# torch: TORCH_SPEC overrides the pinned build (default: torch 2.14.1 + torchvision 0.29.1, which nnunetv2
# needs through timm). Re-running is cheap: nothing is reinstalled while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.nnunet_poolskip_installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing $TORCH_SPEC, nnunetv2, MONAI and nnunet-poolskip (about 2 minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q $TORCH_SPEC
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, nnunetv2, monai; from importlib.metadata import version; print("torch", torch.__version__, "nnunetv2", version("nnunetv2"), "monai", monai.__version__)')"
# real CT/MRI for the tests and the demo (a pinned sdist, sha256-checked, cached outside the repository; a failure
# here only means those tests skip and say why)
.venv/bin/python -m nnunet_poolskip.utilities.real_ct fetch || echo "[setup] real-CT reference files not available"
