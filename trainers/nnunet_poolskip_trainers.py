"""The folder that nnUNet_extTrainer points to (`eval "$(nnunet-poolskip env)"`).

nnU-Net imports every module here as a top-level name and looks trainers up by class name. This file
only re-exports the classes listed in ``nnunet_poolskip.training.TRAINERS``, the single source of truth.
"""
from nnunet_poolskip.training import *  # noqa: F401,F403
