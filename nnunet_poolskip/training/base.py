"""The base class of every trainer of this project."""
from __future__ import annotations

import random
from os.path import join
from typing import Optional

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_poolskip.diagnostics.history import (
    DIAG_EVERY_VARIABLE,
    HISTORY_FILENAME,
    append_record,
    diagnostics_every,
    should_record,
    truncate_history,
    weight_record,
)
from nnunet_poolskip.nn.bf16_guard import float32_where_bf16_conv_gradients_fail
from nnunet_poolskip.training.resources import record_resources
from nnunet_poolskip.training.schedule import (
    SEED_VARIABLE,
    THREADS_VARIABLE,
    VALIDATION_MIRRORING_VARIABLE,
    schedule_overrides,
    seed_from_environment,
    torch_threads,
    validation_mirroring,
)
from nnunet_poolskip.utilities.cpu_precision import (
    CPU_AUTOCAST_VARIABLE,
    cpu_autocast_context,
    cpu_autocast_from_environment,
)


class nnUNetTrainerBaseline(nnUNetTrainer):
    """nnU-Net's own trainer and network, unchanged, plus this project's shared trainer behaviour.

    With no ``NNUNET_POOLSKIP_*`` variable set it trains exactly as ``nnUNetTrainer``, except that it
    records the weight diagnostics (l2/l1, Hoyer sparsity, near-zero weights; no data) into
    ``<fold folder>/diagnostics_history.jsonl`` every 50 epochs (see
    :mod:`nnunet_poolskip.diagnostics.history`; ``NNUNET_POOLSKIP_DIAG_EVERY=N`` changes N, 0 turns it
    off), and the training process's peak memory into ``<fold folder>/nnunet_poolskip_resources.json`` at the
    start and after every epoch (:mod:`nnunet_poolskip.training.resources`). It exists so that a baseline and
    its Pool Skip counterpart share every setting, including a short schedule, a thread count and an unmirrored
    final validation (see :mod:`nnunet_poolskip.training.schedule`), and so that the baseline's diagnostics can be
    compared layer by layer with the Pool Skip model's.

    With ``NNUNET_POOLSKIP_SEED=S`` set, the run is seeded (unset: not seeded, as nnU-Net): Python's ``random``,
    NumPy's global generator and torch get S at start-up, before nnU-Net builds the network and its data
    loaders, and again at the start of every epoch a seed derived from (S, epoch, rank) (:func:`epoch_seed`), so
    that a run continued with ``--c`` draws the same patches and augmentations from there on as an uninterrupted
    run. nnU-Net's data loader and its batchgeneratorsv2 transforms draw from exactly these global generators; with
    augmentation worker processes (``nnUNet_n_proc_DA`` > 0, nnU-Net's default on GPU machines) the workers
    reseed themselves from the operating system (batchgenerators' NonDetMultiThreadedAugmenter, ``seeds=None``)
    and deliver batches in whatever order they finish, and cuDNN picks algorithms by timing: bit-identical
    runs are therefore only promised on the CPU with ``nnUNet_n_proc_DA=0``.
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
        self.mirrored_validation = validation_mirroring()  # read now: a bad value fails before training, not after
        self.cpu_autocast = cpu_autocast_from_environment()
        if self.cpu_autocast != "off":
            where = ("on the CPU: training steps, validation steps and the final validation"
                     if self.device.type == "cpu"
                     else f"ignored on {self.device.type} (nnU-Net's own autocast applies there)")
            self.print_to_log_file(f"nnunet-poolskip: {CPU_AUTOCAST_VARIABLE}={self.cpu_autocast}: bfloat16 autocast "
                                   f"{where}")
        self.seed: Optional[int] = seed_from_environment()
        if self.seed is not None:
            seed_everything(epoch_seed(self.seed, None, self.local_rank))
            self.print_to_log_file(f"nnunet-poolskip: {SEED_VARIABLE}={self.seed}: Python random, NumPy and torch "
                                   f"seeded at start-up and at every epoch start (seed derived from the seed, the "
                                   f"epoch and the rank {self.local_rank})")

    def initialize(self):
        """nnU-Net's initialize; under CPU bfloat16 autocast the network's 3D convolutions then run in float32 on
        the inputs where torch's bf16 weight gradient is wrong (:func:`float32_where_bf16_conv_gradients_fail`)."""
        super().initialize()
        if self.cpu_autocast == "bf16" and self.device.type == "cpu":
            wrapped = float32_where_bf16_conv_gradients_fail(self.network)
            if wrapped:  # initialize may run twice; the modules are wrapped once
                self.print_to_log_file(f"nnunet-poolskip: bfloat16 autocast: {wrapped} 3D convolution(s) run in "
                                       f"float32 whenever their input is thinner than their kernel (torch's CPU "
                                       f"bf16 weight gradient is wrong there)")

    def _autocast(self):
        """CPU bfloat16 autocast when NNUNET_POOLSKIP_CPU_AUTOCAST=bf16 and the trainer runs on the CPU."""
        return cpu_autocast_context(self.cpu_autocast, self.device.type)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step, under CPU bfloat16 autocast when asked (nnU-Net autocasts on CUDA only). The
        backward pass runs inside the context too: autograd runs each op's backward in the dtype its forward had."""
        with self._autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step, under CPU bfloat16 autocast when asked."""
        with self._autocast():
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation, under CPU bfloat16 autocast when asked (the predictor's forward passes run
        in this process); see :meth:`_final_validation` for mirroring."""
        with self._autocast():
            return self._final_validation(save_probabilities)

    def _final_validation(self, save_probabilities: bool):
        """nnU-Net's final validation; without test-time mirroring when NNUNET_POOLSKIP_VAL_MIRRORING=0 (the
        mirroring axes are restored afterwards: checkpoint_final.pth, saved before, keeps them anyway)."""
        if self.mirrored_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file(f"nnunet-poolskip: final validation without test-time mirroring "
                               f"({VALIDATION_MIRRORING_VARIABLE}=0)")
        axes, self.inference_allowed_mirroring_axes = self.inference_allowed_mirroring_axes, None
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes

    def on_epoch_start(self):
        if self.seed is not None:
            seed_everything(epoch_seed(self.seed, self.current_epoch, self.local_rank))
        super().on_epoch_start()

    @property
    def diagnostics_history_file(self) -> str:
        return join(self.output_folder, HISTORY_FILENAME)

    def on_train_start(self):
        super().on_train_start()
        self._record_resources(fresh=self.current_epoch == 0)
        if not self.diagnostics_every or self.local_rank != 0:
            return
        if self.current_epoch == 0:  # from scratch: a new history, starting with the initial weights
            self._guarded(truncate_history, self.diagnostics_history_file, None)
            self._record_weight_diagnostics(0)
        else:  # resumed: drop the records made after the checkpoint we resume from
            self._guarded(truncate_history, self.diagnostics_history_file, self.current_epoch)

    def on_epoch_end(self):
        super().on_epoch_end()  # increments current_epoch: it now counts completed epochs
        self._record_resources(fresh=False)
        if should_record(self.current_epoch, self.diagnostics_every, self.num_epochs):
            self._record_weight_diagnostics(self.current_epoch)

    def _record_weight_diagnostics(self, completed_epochs: int) -> None:
        if self.local_rank != 0:
            return
        self._guarded(lambda: append_record(self.diagnostics_history_file, weight_record(
            self.network, completed_epochs, trainer=type(self).__name__)))

    def _record_resources(self, fresh: bool) -> None:
        """The process's peak memory so far into the fold folder (nnunet_poolskip.training.resources); rank 0."""
        if self.local_rank != 0:
            return
        try:
            record_resources(self.output_folder, self.device, fresh)
        except OSError as error:  # a record must never end a training
            self.print_to_log_file(f"nnunet-poolskip: could not record peak memory ({error})")

    def _guarded(self, function, *args) -> None:
        """Run a diagnostics step; log instead of raising, since diagnostics must never end a training."""
        try:
            function(*args)
        except Exception as error:
            self.print_to_log_file(f"nnunet-poolskip: weight diagnostics failed ({type(error).__name__}: "
                                   f"{error}); set {DIAG_EVERY_VARIABLE}=0 to turn recording off")


def epoch_seed(seed: int, epoch: Optional[int], rank: int = 0) -> int:
    """The seed for one phase of a seeded run: ``seed`` itself at start-up (``epoch`` None) on rank 0; otherwise
    a 32-bit value derived from (seed, epoch, rank) by NumPy's SeedSequence, so that every epoch, and every DDP
    rank, draws its own independent stream."""
    if epoch is None and rank == 0:
        return seed
    entropy = [seed, rank] if epoch is None else [seed, rank, epoch + 1]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
