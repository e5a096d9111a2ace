"""Trainers that train MONAI's V-Net under nnU-Net's preprocessing, augmentation, loss and schedule.

Compared with nnU-Net's own trainer only the network and what it needs change:

- the network is ``monai.networks.nets.VNet`` (:func:`nnunet_poolskip.nn.vnet.build_vnet`), one output;
  deep supervision is off (``enable_deep_supervision = False``: plain Dice+CE loss, no downsampled
  targets) and ``set_deep_supervision_enabled`` does nothing;
- the configuration's patch size is rounded down to a multiple of 16 per axis (never below 16), in
  the plans the trainer is given, before nnU-Net builds anything from them. The trainer saves those
  plans as ``plans.json`` in the model folder, and ``nnUNetv2_predict`` reads the patch size for its
  sliding window from there, so training and inference use the same V-Net-compatible patch;
- the input channel count must divide V-Net's stem width (1, 2, 4, 8 or 16 at full width): anything
  else fails at trainer start with an error naming the supported counts.

Plans key: a configuration may carry ``"vnet_features_base"`` (default 16, MONAI's V-Net). The CPU
plans preset sets a smaller width so that tests and smoke runs are cheap; it is plans data, so
inference (which only sees ``plans.json``) builds the same network.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_poolskip.nn.vnet import (
    MONAI_FEATURES_BASE,
    PAPER_POOL_SKIP_STAGES,
    PATCH_DIVISOR,
    build_vnet,
    check_input_channels,
    inject_pool_skip_vnet,
    vnet_patch_size,
)
from nnunet_poolskip.training.base import nnUNetTrainerBaseline

FEATURES_BASE_KEY = "vnet_features_base"
"""Optional key of a plans configuration: V-Net stem width (default 16 = MONAI's V-Net)."""


def vnet_features_base(configuration_manager: ConfigurationManager) -> int:
    """The V-Net width a configuration asks for (``vnet_features_base``, default 16)."""
    value = configuration_manager.configuration.get(FEATURES_BASE_KEY, MONAI_FEATURES_BASE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"plans key {FEATURES_BASE_KEY!r} must be a positive int, got {value!r}")
    return value


def plans_with_vnet_patch(plans: Dict, configuration: str) -> Tuple[Dict, list, list]:
    """A deep copy of ``plans`` whose ``configuration`` has a V-Net patch size (see ``vnet_patch_size``).

    The new size is written into the configuration's own entry, so it also overrides a size the
    configuration inherits (``inherits_from``); other configurations are unchanged.

    Returns:
        (new plans, planned patch size, adjusted patch size), sizes in voxels per axis.
    """
    new_plans = copy.deepcopy(plans)
    planned = list(PlansManager(new_plans).get_configuration(configuration).patch_size)
    adjusted = vnet_patch_size(planned)
    new_plans["configurations"][configuration]["patch_size"] = adjusted
    return new_plans, planned, adjusted


class nnUNetTrainerVNet(nnUNetTrainerBaseline):
    """MONAI's V-Net (no Pool Skip) trained and run exactly like nnU-Net, with one output.

    Dropout: MONAI's reference V-Net, unchanged (``vnet_dropout = True``): Dropout3d(0.5) after the
    down-convs of ``down_tr128``/``down_tr256``, on the input and the skip of ``up_tr256``/``up_tr128``,
    and the fixed Dropout3d(0.5) on the skip of ``up_tr64``/``up_tr32``. The paper's V-Net takes
    nnU-Net's preprocessing, not its architecture choices, so the V-Net baseline is MONAI's network as
    published; Pool Skip is compared against that same network. Dropout only acts in training mode:
    nnU-Net's validation and ``nnUNetv2_predict`` put the network in eval mode, so inference is
    deterministic. A subclass with ``vnet_dropout = False`` trains without any dropout (nnU-Net's
    own U-Nets use none).

    Patch size: rounded DOWN to a multiple of 16 per axis (minimum 16) and logged; see the module
    docstring. Rounding down keeps the patch within the memory and median-image-size limits nnU-Net's
    planner chose it for, at the price of a little context; cases smaller than the patch are padded
    by nnU-Net as always.
    """

    pool_skip_stages: Optional[Union[str, Sequence[int]]] = None
    """Encoder stages with Pool Skip (indices into ``VNET_ENCODER_STAGES``); None: no Pool Skip."""
    pool_skip_size: Union[int, Sequence[int]] = 2
    pool_skip_variant: str = "full"
    vnet_dropout: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # before nnU-Net builds PlansManager, folders and logs: fail early, and let every later user of
        # the plans (data loaders, plans.json in the model folder, inference) see the V-Net patch size
        plans, planned, adjusted = plans_with_vnet_patch(plans, configuration)
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        if len(adjusted) != 3:
            raise ValueError(f"{type(self).__name__} trains 3D configurations only; {configuration!r} has a "
                             f"{len(adjusted)}D patch. Use 3d_fullres or 3d_lowres")
        num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        try:
            check_input_channels(num_input_channels, vnet_features_base(configuration_manager))
        except ValueError as error:
            raise ValueError(f"{type(self).__name__} cannot train configuration {configuration!r} of "
                             f"{plans_manager.dataset_name}: {error}") from None
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        if planned != adjusted:
            self.print_to_log_file(f"V-Net: patch size {planned} of configuration {configuration!r} rounded down "
                                   f"to multiples of {PATCH_DIVISOR}: {adjusted} (used for training and saved "
                                   f"in plans.json for inference)")
        else:
            self.print_to_log_file(f"V-Net: patch size {planned} is already a multiple of {PATCH_DIVISOR}")

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """MONAI V-Net (with Pool Skip where the class says). One output, whatever ``enable_deep_supervision``.

        A classmethod (not nnU-Net's staticmethod) so that it reads the class attributes; nnU-Net calls it
        on the class at inference and on the instance in training, and both bind ``cls``.
        """
        patch_size = list(configuration_manager.patch_size)
        if any(s % PATCH_DIVISOR for s in patch_size):
            raise ValueError(f"V-Net needs a patch size divisible by {PATCH_DIVISOR} on every axis, the plans give "
                             f"{patch_size}. The V-Net trainers adjust it at training start and save the result "
                             f"as plans.json in the model folder: predict with that model folder's plans")
        network = build_vnet(num_input_channels, num_output_channels,
                             features_base=vnet_features_base(configuration_manager), dropout=cls.vnet_dropout,
                             spatial_dims=len(patch_size))
        if cls.pool_skip_stages is not None:
            inject_pool_skip_vnet(network, stages=cls.pool_skip_stages, pool_size=cls.pool_skip_size,
                                  variant=cls.pool_skip_variant)
        return network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """V-Net has a single output and no switchable decoder: nothing to do."""


class nnUNetTrainerVNetPoolSkip(nnUNetTrainerVNet):
    """V-Net with Pool Skip after every conv of the first two encoder stages (the paper's V-Net setting).

    That is ``down_tr32`` (down-conv, 1 conv) and ``down_tr64`` (down-conv, 2 convs): 5 Pool Skip
    modules, pool size 2, ``full`` variant. Dropout and patch size as :class:`nnUNetTrainerVNet`.
    """

    pool_skip_stages = PAPER_POOL_SKIP_STAGES


class nnUNetTrainerVNetPoolSkipAll(nnUNetTrainerVNet):
    """V-Net with Pool Skip after every conv of all four encoder stages (12 modules).

    The paper stopped at two stages because its Pool Skip breaks on odd feature-map sizes; ours
    handles any size, so all stages are possible.
    """

    pool_skip_stages = "all"
