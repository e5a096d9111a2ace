"""All trainer classes of this project. ``TRAINERS`` is the single list that ``trainers/`` re-exports."""
from nnunet_poolskip.training.base import nnUNetTrainerBaseline
from nnunet_poolskip.training.poolskip import (
    nnUNetTrainerAblationConvSkip,
    nnUNetTrainerAblationPoolConv,
    nnUNetTrainerAblationPoolSkip,
    nnUNetTrainerPoolSkip,
    nnUNetTrainerPoolSkipAMOS,
    nnUNetTrainerPoolSkipS4,
)
from nnunet_poolskip.training.vnet import nnUNetTrainerVNet, nnUNetTrainerVNetPoolSkip, nnUNetTrainerVNetPoolSkipAll

TRAINERS = {
    cls.__name__: cls
    for cls in (
        nnUNetTrainerBaseline,
        nnUNetTrainerPoolSkip,
        nnUNetTrainerPoolSkipAMOS,
        nnUNetTrainerPoolSkipS4,
        nnUNetTrainerAblationPoolSkip,
        nnUNetTrainerAblationConvSkip,
        nnUNetTrainerAblationPoolConv,
        nnUNetTrainerVNet,
        nnUNetTrainerVNetPoolSkip,
        nnUNetTrainerVNetPoolSkipAll,
    )
}

__all__ = list(TRAINERS) + ["TRAINERS"]
