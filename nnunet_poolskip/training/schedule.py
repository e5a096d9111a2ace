"""Short training schedules for the very same trainer classes, set from the environment.

nnU-Net's CLI gives no way to shorten a run other than choosing another trainer class, but the
checkpoint records the trainer's class name and inference rebuilds the network from that class. To
keep one class per architecture, every trainer of this project reads these variables at start-up:

    NNUNET_POOLSKIP_EPOCHS      num_epochs                     (nnU-Net default 1000)
    NNUNET_POOLSKIP_ITERS       num_iterations_per_epoch       (default 250)
    NNUNET_POOLSKIP_VAL_ITERS   num_val_iterations_per_epoch   (default 50)

Unset variables leave nnU-Net's defaults untouched.

One more variable, read by the same trainers at start-up, seeds the run (see :func:`seed_from_environment`):

    NNUNET_POOLSKIP_SEED        seeds Python's ``random``, NumPy's global generator and torch (CPU and CUDA)

Unset, nothing is seeded: nnU-Net's own behaviour (it does not seed training on purpose).
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

SCHEDULE_VARIABLES: Dict[str, str] = {
    "NNUNET_POOLSKIP_EPOCHS": "num_epochs",
    "NNUNET_POOLSKIP_ITERS": "num_iterations_per_epoch",
    "NNUNET_POOLSKIP_VAL_ITERS": "num_val_iterations_per_epoch",
}

SEED_VARIABLE = "NNUNET_POOLSKIP_SEED"
"""The environment variable that seeds a training run of this project's trainers."""
MAX_SEED = 2 ** 32 - 1
"""The largest seed (NumPy's global generator takes 32-bit seeds)."""


def schedule_overrides(environ: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Trainer attribute -> value for every schedule variable set in ``environ`` (default os.environ).

    Raises ValueError naming the variable when a value is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    overrides = {}
    for variable, attribute in SCHEDULE_VARIABLES.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{variable} must be a positive integer, got {raw!r}")
        overrides[attribute] = value
    return overrides


def schedule_environment(epochs: int, iterations: int, val_iterations: int) -> Dict[str, str]:
    """The environment variables that give a trainer this short schedule."""
    values = (epochs, iterations, val_iterations)
    return {variable: str(value) for variable, value in zip(SCHEDULE_VARIABLES, values)}


def seed_from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The seed in ``NNUNET_POOLSKIP_SEED`` of ``environ`` (default os.environ); None when unset or empty.

    Raises ValueError naming the variable when the value is not an integer from 0 to :data:`MAX_SEED`.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(SEED_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{SEED_VARIABLE} must be an integer from 0 to {MAX_SEED}, got {raw!r}")
    return value
