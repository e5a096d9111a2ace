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

Two more set what a run costs, not what it learns:

    NNUNET_POOLSKIP_THREADS         torch's intra-op threads (``nnUNetv2_train -device cpu`` otherwise takes one
                                    per CPU), so that several trainings can share a machine one thread each
    NNUNET_POOLSKIP_VAL_MIRRORING   ``0``: nnU-Net's final validation (after the last epoch, and ``--val``)
                                    predicts without test-time mirroring (8x fewer forward passes in 3D); the
                                    checkpoint keeps its mirroring axes, so a later prediction mirrors as usual.
                                    Unset or ``1``: nnU-Net's mirrored validation. The demo sets 0, as it also
                                    predicts its test set without mirroring.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

from nnunet_poolskip.utilities.environment import integer_variable

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
    values = {attribute: integer_variable(variable, environ, minimum=1)
              for variable, attribute in SCHEDULE_VARIABLES.items()}
    return {attribute: value for attribute, value in values.items() if value is not None}


THREADS_VARIABLE = "NNUNET_POOLSKIP_THREADS"


def torch_threads(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The thread count ``NNUNET_POOLSKIP_THREADS`` asks for (None when unset).

    Raises ValueError naming the variable when the value is not a positive integer.
    """
    return integer_variable(THREADS_VARIABLE, environ, minimum=1)


VALIDATION_MIRRORING_VARIABLE = "NNUNET_POOLSKIP_VAL_MIRRORING"


def validation_mirroring(environ: Optional[Mapping[str, str]] = None) -> bool:
    """False when ``NNUNET_POOLSKIP_VAL_MIRRORING`` is 0 (the final validation predicts without mirroring).

    Raises ValueError naming the variable when the value is not 0 or 1.
    """
    return integer_variable(VALIDATION_MIRRORING_VARIABLE, environ, 0, 1) != 0


def schedule_environment(epochs: int, iterations: int, val_iterations: int) -> Dict[str, str]:
    """The environment variables that give a trainer this short schedule."""
    values = (epochs, iterations, val_iterations)
    return {variable: str(value) for variable, value in zip(SCHEDULE_VARIABLES, values)}


def seed_from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The seed in ``NNUNET_POOLSKIP_SEED`` of ``environ`` (default os.environ); None when unset or empty.

    Raises ValueError naming the variable when the value is not an integer from 0 to :data:`MAX_SEED`.
    """
    return integer_variable(SEED_VARIABLE, environ, 0, MAX_SEED)
