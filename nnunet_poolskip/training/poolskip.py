"""Trainers that build nnU-Net's own network (PlainConvUNet or ResEnc UNet) with Pool Skip in the encoder.

Each variant only changes class attributes. ``build_network_architecture`` is a classmethod so that
it can read them: nnU-Net calls it on the class at inference (``trainer_class.build_network_architecture
(plans_manager, ...)``) and on the instance in training, and both calls bind ``cls``.
"""
from __future__ import annotations

from typing import Sequence, Union

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_poolskip.nn.inject import inject_pool_skip
from nnunet_poolskip.training.base import nnUNetTrainerBaseline


class nnUNetTrainerPoolSkip(nnUNetTrainerBaseline):
    """Pool Skip (pool size 2, ``full`` variant) after every conv of every encoder stage (paper, BTCV).

    The inner conv is 3x3x3 and the pool window 2x2x2 in every stage, also where nnU-Net's host conv is
    1x3x3 (see ``nnUNetTrainerPoolSkipHostShaped`` for the other reading of the paper's 2D "3x3").
    """

    pool_skip_stages: Union[str, Sequence[int]] = "all"
    pool_skip_size: Union[int, Sequence[int]] = 2
    pool_skip_variant: str = "full"
    pool_skip_host_shaped: bool = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        inject_pool_skip(network, stages=cls.pool_skip_stages, pool_size=cls.pool_skip_size,
                         variant=cls.pool_skip_variant, host_shaped=cls.pool_skip_host_shaped)
        return network


class nnUNetTrainerPoolSkipHostShaped(nnUNetTrainerPoolSkip):
    """Pool Skip shaped like each host conv: the inner conv takes the stage's kernel from the plans
    (``kernel_sizes``, e.g. 1x3x3 on thick slices) and pools 2 only along the axes where that kernel is
    larger than 1 (1x2x2 there). Isotropic stages are as in ``nnUNetTrainerPoolSkip``; see
    :mod:`nnunet_poolskip.nn.inject` for the rule."""

    pool_skip_host_shaped = True


class nnUNetTrainerPoolSkipAMOS(nnUNetTrainerPoolSkip):
    """Pool Skip in all encoder stages but the last (the paper's AMOS setting)."""

    pool_skip_stages = "all_but_last"


class nnUNetTrainerPoolSkipS4(nnUNetTrainerPoolSkip):
    """Pool Skip with max-pool size 4 (the paper's "Pool Skip S4")."""

    pool_skip_size = 4


class nnUNetTrainerAblationPoolSkip(nnUNetTrainerPoolSkip):
    """Ablation {Pool, Skip}: y + unpool(pool(y)), no inner conv (paper Table 4)."""

    pool_skip_variant = "pool_skip"


class nnUNetTrainerAblationConvSkip(nnUNetTrainerPoolSkip):
    """Ablation {Conv, Skip}: y + conv(y), no pooling (paper Table 4)."""

    pool_skip_variant = "conv_skip"


class nnUNetTrainerAblationPoolConv(nnUNetTrainerPoolSkip):
    """Ablation {Pool, Conv}: conv(unpool(pool(y))), no skip (paper Table 4)."""

    pool_skip_variant = "pool_conv"
