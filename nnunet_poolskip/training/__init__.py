"""All trainer classes of this project. ``TRAINERS`` is the single list that ``trainers/`` re-exports.

The trainer modules import nnU-Net (several seconds), so they are imported on first use of a name (PEP 562):
``nnunet-poolskip env`` and other light users of ``nnunet_poolskip.training.discovery`` stay fast, while
``from nnunet_poolskip.training import nnUNetTrainerPoolSkip``, ``TRAINERS`` and the ``import *`` of
``trainers/`` work as with eager imports.
"""
from __future__ import annotations

import importlib

_TRAINER_MODULES = {  # class name -> module of this package; table order
    "nnUNetTrainerBaseline": "base",
    "nnUNetTrainerPoolSkip": "poolskip",
    "nnUNetTrainerPoolSkipAMOS": "poolskip",
    "nnUNetTrainerPoolSkipS4": "poolskip",
    "nnUNetTrainerPoolSkipHostShaped": "poolskip",
    "nnUNetTrainerAblationPoolSkip": "poolskip",
    "nnUNetTrainerAblationConvSkip": "poolskip",
    "nnUNetTrainerAblationPoolConv": "poolskip",
    "nnUNetTrainerVNet": "vnet",
    "nnUNetTrainerVNetPoolSkip": "vnet",
    "nnUNetTrainerVNetPoolSkipAll": "vnet",
}

__all__ = list(_TRAINER_MODULES) + ["TRAINERS"]


def __getattr__(name: str):
    if name == "TRAINERS":
        value = {trainer: __getattr__(trainer) for trainer in _TRAINER_MODULES}
    elif name in _TRAINER_MODULES:
        value = getattr(importlib.import_module(f"{__name__}.{_TRAINER_MODULES[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
