"""Short training schedules for the very same trainer classes, set from the environment.

nnU-Net's CLI gives no way to shorten a run other than choosing another trainer class, but the
checkpoint records the trainer's class name and inference rebuilds the network from that class. To
keep one class per architecture, every trainer of this project reads these variables at start-up:

    NNUNET_POOLSKIP_EPOCHS      num_epochs                     (nnU-Net default 1000)
    NNUNET_POOLSKIP_ITERS       num_iterations_per_epoch       (default 250)
    NNUNET_POOLSKIP_VAL_ITERS   num_val_iterations_per_epoch   (default 50)

Unset variables leave nnU-Net's defaults untouched.

One more variable sets how a CPU training computes, not what it computes:

    NNUNET_POOLSKIP_THREADS     torch's intra-op threads (``nnUNetv2_train -device cpu`` otherwise takes one
                                per CPU), so that several trainings can share a machine one thread each
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

SCHEDULE_VARIABLES: Dict[str, str] = {
    "NNUNET_POOLSKIP_EPOCHS": "num_epochs",
    "NNUNET_POOLSKIP_ITERS": "num_iterations_per_epoch",
    "NNUNET_POOLSKIP_VAL_ITERS": "num_val_iterations_per_epoch",
}


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


THREADS_VARIABLE = "NNUNET_POOLSKIP_THREADS"


def torch_threads(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The thread count ``NNUNET_POOLSKIP_THREADS`` asks for (None when unset).

    Raises ValueError naming the variable when the value is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(THREADS_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {raw!r}")
    return int(raw)


def schedule_environment(epochs: int, iterations: int, val_iterations: int) -> Dict[str, str]:
    """The environment variables that give a trainer this short schedule."""
    values = (epochs, iterations, val_iterations)
    return {variable: str(value) for variable, value in zip(SCHEDULE_VARIABLES, values)}
