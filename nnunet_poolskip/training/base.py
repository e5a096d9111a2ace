"""The base class of every trainer of this project."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_poolskip.training.schedule import schedule_overrides


class nnUNetTrainerBaseline(nnUNetTrainer):
    """nnU-Net's own trainer and network, unchanged, plus this project's shared trainer behaviour.

    With no ``NNUNET_POOLSKIP_*`` variable set it trains exactly as ``nnUNetTrainer``. It exists so
    that a baseline and its Pool Skip counterpart share every setting, including a short schedule
    (see :mod:`nnunet_poolskip.training.schedule`), and so that the baseline's diagnostics can be
    compared layer by layer with the Pool Skip model's.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        overrides = schedule_overrides()
        for attribute, value in overrides.items():
            setattr(self, attribute, value)
        if overrides:
            self.print_to_log_file(f"nnunet-poolskip schedule from the environment: {overrides}")
