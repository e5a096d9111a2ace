"""Where nnU-Net must look for this project's trainers, and a clear error when it cannot find them."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VARIABLE = "nnUNet_extTrainer"
ENV_HINT = 'eval "$(nnunet-poolskip env)"'


def ext_trainer_path() -> Path:
    """The folder holding the trainer re-exports: ``trainers/`` in a checkout, its installed copy in a wheel."""
    import nnunet_poolskip.ext_trainers as ext

    return Path(ext.__file__).resolve().parent


def ext_trainer_value(current: str | None = None) -> str:
    """The value ``nnUNet_extTrainer`` should have: our folder first, then any other folders already set."""
    ours = str(ext_trainer_path())
    current = os.environ.get(ENV_VARIABLE, "") if current is None else current
    others = [p for p in current.split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours] + others)


def is_configured() -> bool:
    """True when ``nnUNet_extTrainer`` already contains our trainer folder."""
    ours = str(ext_trainer_path())
    return any(os.path.abspath(p) == ours for p in os.environ.get(ENV_VARIABLE, "").split(os.pathsep) if p)


def find_trainer_class(name: str):
    """Look a trainer up the way nnU-Net does; on failure, say how to make ours discoverable.

    Raises:
        RuntimeError: naming the trainer, with the ``env`` command when ``nnUNet_extTrainer`` is unset
            or does not contain this project's folder.
    """
    from nnunet_poolskip.training import TRAINERS

    if name in TRAINERS and not is_configured():
        raise RuntimeError(f"trainer {name!r} is one of nnunet-poolskip's, but nnU-Net cannot find it because "
                           f"{ENV_VARIABLE} does not point to {ext_trainer_path()}. Run: {ENV_HINT}")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError as error:
        raise RuntimeError(f"trainer {name!r} not found by nnU-Net ({error}). For this project's trainers "
                           f"run: {ENV_HINT}") from None
