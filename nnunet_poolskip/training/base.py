"""The base class of every trainer of this project."""
from __future__ import annotations

from os.path import join

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_poolskip.diagnostics.history import (DIAG_EVERY_VARIABLE, HISTORY_FILENAME, append_record,
                                                 diagnostics_every, should_record, truncate_history, weight_record)
from nnunet_poolskip.training.schedule import THREADS_VARIABLE, schedule_overrides, torch_threads


class nnUNetTrainerBaseline(nnUNetTrainer):
    """nnU-Net's own trainer and network, unchanged, plus this project's shared trainer behaviour.

    With no ``NNUNET_POOLSKIP_*`` variable set it trains exactly as ``nnUNetTrainer``, except that it
    records the weight diagnostics (l2/l1, Hoyer sparsity, near-zero weights; no data) into
    ``<fold folder>/diagnostics_history.jsonl`` every 50 epochs (see
    :mod:`nnunet_poolskip.diagnostics.history`; ``NNUNET_POOLSKIP_DIAG_EVERY=N`` changes N, 0 turns it
    off). It exists so that a baseline and its Pool Skip counterpart share every setting, including a
    short schedule and a thread count (see :mod:`nnunet_poolskip.training.schedule`), and so that the baseline's
    diagnostics can be compared layer by layer with the Pool Skip model's.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        overrides = schedule_overrides()
        for attribute, value in overrides.items():
            setattr(self, attribute, value)
        if overrides:
            self.print_to_log_file(f"nnunet-poolskip schedule from the environment: {overrides}")
        threads = torch_threads()
        if threads is not None:  # after nnUNetv2_train's own torch.set_num_threads(cpu count) for -device cpu
            torch.set_num_threads(threads)
            self.print_to_log_file(f"nnunet-poolskip: {threads} torch thread(s) ({THREADS_VARIABLE})")
        self.diagnostics_every = diagnostics_every()

    @property
    def diagnostics_history_file(self) -> str:
        return join(self.output_folder, HISTORY_FILENAME)

    def on_train_start(self):
        super().on_train_start()
        if not self.diagnostics_every or self.local_rank != 0:
            return
        if self.current_epoch == 0:  # from scratch: a new history, starting with the initial weights
            self._guarded(truncate_history, self.diagnostics_history_file, None)
            self._record_weight_diagnostics(0)
        else:  # resumed: drop the records made after the checkpoint we resume from
            self._guarded(truncate_history, self.diagnostics_history_file, self.current_epoch)

    def on_epoch_end(self):
        super().on_epoch_end()  # increments current_epoch: it now counts completed epochs
        if should_record(self.current_epoch, self.diagnostics_every, self.num_epochs):
            self._record_weight_diagnostics(self.current_epoch)

    def _record_weight_diagnostics(self, completed_epochs: int) -> None:
        if self.local_rank != 0:
            return
        self._guarded(lambda: append_record(self.diagnostics_history_file, weight_record(
            self.network, completed_epochs, trainer=type(self).__name__)))

    def _guarded(self, function, *args) -> None:
        """Run a diagnostics step; log instead of raising, since diagnostics must never end a training."""
        try:
            function(*args)
        except Exception as error:
            self.print_to_log_file(f"nnunet-poolskip: weight diagnostics failed ({type(error).__name__}: "
                                   f"{error}); set {DIAG_EVERY_VARIABLE}=0 to turn recording off")
