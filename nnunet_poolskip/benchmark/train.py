"""The benchmark's train stage: ``nnUNetv2_train`` for every model x fold, each continued from where it stopped.

A fold's state is read from nnU-Net's own checkpoints (see :mod:`nnunet_poolskip.benchmark.training_runs`), so a
fold trained by hand, by a cluster job or by an earlier, killed run is recognised the same way.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Tuple

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.steps import RunningStep, StepFailed, Steps
from nnunet_poolskip.benchmark.training_log import read_epochs
from nnunet_poolskip.benchmark.training_runs import (
    NNUNET_SCHEDULE,
    FoldState,
    TrainingRun,
    format_duration,
    model_folder,
    planned_runs,
    schedule_mismatch,
    set_aside_unreadable_checkpoints,
    train_command,
)
from nnunet_poolskip.benchmark.workspace import executable
from nnunet_poolskip.training.schedule import THREADS_VARIABLE

NNUNET_DEFAULT_EPOCHS = NNUNET_SCHEDULE["num_epochs"]
NNUNET_DEFAULT_ITERATIONS = NNUNET_SCHEDULE["num_iterations_per_epoch"]


class Training:
    """Plans, checks and runs the training of every model x fold (see the module docstring)."""

    def __init__(self, config: BenchmarkConfig, steps: Steps):
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.steps = steps
        self.estimate = _Estimate()
        self.active: List[_EpochWatcher] = []  # the runs training now
        self.pending: List[TrainingRun] = []  # the runs still to start

    def runs(self) -> List[TrainingRun]:
        """Every model x fold x seed, seed by seed, in table order (a trainer shared by two models is listed once)."""
        folder = self.config.target.raw_folder(self.ws)
        # before conversion the name is unknown; no fold folder can exist yet, so every run is new
        name = folder.name if folder is not None else f"Dataset{self.config.target.dataset_id:03d}_(not converted)"
        return [TrainingRun(model, trainer, fold,
                            model_folder(self.ws.results_for_seed(seed), name, trainer, self.config.plans_for(model),
                                         self.config.configuration)
                            / f"fold_{fold}", seed)
                for model, trainer, fold, seed in planned_runs(self.config.models, self.config.target.kind,
                                                               self.settings.folds, self.settings.run_seeds)]

    def epochs(self) -> int:
        return self.settings.epochs or NNUNET_DEFAULT_EPOCHS

    def print_plan(self, runs: List[TrainingRun]) -> None:
        s = self.settings
        pending = [r for r in runs if r.state != FoldState.DONE]
        schedule = (f"{self.epochs()} epoch(s) x {s.iterations or NNUNET_DEFAULT_ITERATIONS} iterations"
                    + ("" if not s.short_schedule else f" (nnU-Net default: {NNUNET_DEFAULT_EPOCHS} x "
                                                       f"{NNUNET_DEFAULT_ITERATIONS})"))
        say = self.steps.say
        seeds = f" x {len(s.seeds)} seeds {' '.join(map(str, s.seeds))}" if s.seeds else ", unseeded"
        say(f"training: {len(runs)} runs ({len(self.config.models)} models x {len(s.folds)} folds "
            f"{' '.join(map(str, s.folds))}{seeds}), {schedule}, plans "
            f"{', '.join(sorted({self.config.plans_for(m) for m in self.config.models}))}, device {s.device}"
            + (f", {s.num_gpus} GPUs (DDP)" if s.num_gpus > 1 else "")
            + f"; to do: {len(pending)} runs, {len(pending) * self.epochs()} epochs")
        for run in runs:
            say(f"   {run.model.name:<20} {run.trainer:<30} {run.label}: {run.state.value}")
        if pending:
            say("   (one line per epoch; the time left is estimated from the first measured epoch on)")

    def expected_schedule(self) -> Dict[str, int]:
        """Trainer attribute -> value of this run's schedule (nnU-Net's defaults where not overridden)."""
        s = self.settings
        values = (s.epochs, s.iterations, s.val_iterations)
        return {key: value or default for (key, default), value in zip(NNUNET_SCHEDULE.items(), values)}

    def check_schedules(self, runs: List[TrainingRun]) -> None:
        """Refuse folds trained (or started) with another schedule than this run's (see schedule_mismatch)."""
        problems = [p for p in (schedule_mismatch(r.folder, self.expected_schedule()) for r in runs
                                if r.state != FoldState.NEW) if p]
        if problems:
            raise BenchmarkError("; ".join(problems) + ". Use another --work / nnUNet_results for this run, or move "
                                                       "those folds away")

    def run(self) -> None:
        """Train every run that is not done, ``parallel_trainings`` at a time (see :meth:`threads_per_training`)."""
        runs = self.runs()
        self.print_plan(runs)
        self.check_schedules(runs)
        todo = []
        for run in runs:
            state = run.state
            if state in (FoldState.RESUME, FoldState.VALIDATE):
                for moved in set_aside_unreadable_checkpoints(run.folder):
                    self.steps.say(f"   set aside the truncated checkpoint {moved} (killed while saving)")
                state = run.state
            if state == FoldState.DONE:
                self.steps.skip(run.step_id, self.title(run), "done (checkpoint_final.pth and validation exist)",
                                quiet=True)
            else:
                todo.append((run, state))
        self.pending = [run for run, _ in todo]
        parallel = max(1, self.settings.parallel_trainings)
        active: List[Tuple[RunningStep, Optional[_EpochWatcher]]] = []
        try:
            while todo or active:
                while todo and len(active) < parallel:
                    active.append(self._start(*todo.pop(0)))
                for entry in list(active):
                    step, watcher = entry
                    if not step.poll():
                        continue
                    active.remove(entry)
                    if watcher is not None:
                        watcher.close()
                    try:
                        wall = step.finish()
                        self.steps.say(f"   done in {format_duration(wall)}" if parallel == 1 else
                                       f"   done: {step.title} in {format_duration(wall)}")
                    except StepFailed as error:
                        if not self.config.keep_going:
                            raise
                        self.steps.say(f"   FAILED (--keep-going: continuing): {error}")
                if len(active) == 1:
                    active[0][0].wait(2.0)  # returns as soon as the training ends
                elif active:
                    time.sleep(2.0)
                self.steps.heartbeat([step for step, _ in active])
        except BaseException:  # a failed run, Ctrl-C, SIGTERM: stop the other trainings before leaving
            for step, watcher in active:
                step.stop()
                if watcher is not None:
                    watcher.close()
            raise

    @staticmethod
    def title(run: TrainingRun) -> str:
        return f"train {run.model.name} {run.label} ({run.trainer})"

    def threads_per_training(self) -> Optional[int]:
        """Torch threads of each training when several run at once (CPU count / parallel_trainings); None when
        they run one at a time (nnU-Net's own choice: every CPU)."""
        parallel = self.settings.parallel_trainings
        if parallel <= 1:
            return None
        return max(1, (os.cpu_count() or 1) // parallel)

    def _start(self, run: TrainingRun, state: FoldState) -> Tuple[RunningStep, Optional["_EpochWatcher"]]:
        argv = train_command(executable("nnUNetv2_train"), self.config.target.dataset_id, run.fold,
                             run.trainer, self.config.plans_for(run.model), self.settings.device,
                             self.settings.num_gpus, state, self.config.configuration)
        what = {FoldState.NEW: "", FoldState.RESUME: " [continuing from its checkpoint: --c]",
                FoldState.VALIDATE: " [trained; running the unfinished final validation: --val]"}[state]
        self.pending.remove(run)
        watcher = _EpochWatcher(self, run, time.time(), state) if state != FoldState.VALIDATE else None
        threads = self.threads_per_training()
        extra_env = {THREADS_VARIABLE: str(threads)} if threads is not None else None
        self.steps.say(f"-> {self.title(run)}{what}" + (f" [{threads} thread(s)]" if threads is not None else ""))
        step = self.steps.start(run.step_id, argv, "train", state.value, watcher.poll if watcher else None,
                                self.title(run), extra_env, seed=run.seed)
        return step, watcher

    def measured_first_epoch(self, run: TrainingRun, seconds: float) -> None:
        """Record the first measured epoch of a trainer in run.json (``first_epoch_seconds``)."""
        record = self.steps.record
        record.data.setdefault("first_epoch_seconds", {})[run.trainer] = seconds
        record.save()

    def time_left(self) -> Optional[float]:
        """Seconds the benchmark still needs, estimated from the epochs and runs measured in this invocation.

        Every unfinished epoch costs the mean epoch time measured for its trainer (for a trainer not measured yet:
        the mean of all measured epochs); every run adds its trainer's measured start-up and final validation
        (run time minus epoch time; before any run has finished, what the running ones spent outside epochs so
        far); runs going on at the same time share that work; the finish stage adds the same per-run amount per
        model for its prediction and evaluation. None before the first epoch.
        """
        estimate = self.estimate
        if not estimate.epoch_seconds:
            return None
        outside = [w.outside_epochs() for w in self.active]
        fallback_overhead = max(outside) if outside else 0.0

        def overhead(trainer: str) -> float:
            value = estimate.mean(estimate.run_overheads, trainer)
            return fallback_overhead if value is None else value

        work = 0.0
        for watcher in self.active:
            trainer = watcher.run.trainer
            work += max(0, self.epochs() - watcher.epochs_done) * estimate.mean(estimate.epoch_seconds, trainer)
            work += max(0.0, overhead(trainer) - watcher.outside_epochs())
        for run in self.pending:
            work += self.epochs() * estimate.mean(estimate.epoch_seconds, run.trainer) + overhead(run.trainer)
        finish = len(self.config.models) * overhead("")  # "": the mean over all trainers
        return work / max(1, self.settings.parallel_trainings) + finish


class _Estimate:
    """Epoch and per-run times measured in this invocation, per trainer (see Training.time_left)."""

    def __init__(self):
        self.epoch_seconds: Dict[str, List[float]] = {}
        self.run_overheads: Dict[str, List[float]] = {}  # run wall time minus its epochs' time

    @staticmethod
    def mean(by_trainer: Dict[str, List[float]], trainer: str) -> Optional[float]:
        """The mean for ``trainer``, else over all trainers; None when nothing was measured."""
        values = by_trainer.get(trainer) or [v for vs in by_trainer.values() for v in vs]
        return sum(values) / len(values) if values else None


def epoch_line(model: str, fold: int, epoch: int, epochs: int, train_loss: Optional[float],
               pseudo_dice: Optional[float], seconds_per_epoch: float, time_left: Optional[float],
               seed: Optional[int] = None) -> str:
    """The console line for one finished epoch of a training run.

    Args:
        model: the model name (``--models``).
        fold: the cross-validation fold.
        epoch: the finished epoch, counted from 1.
        epochs: the run's number of epochs.
        train_loss: nnU-Net's mean training loss of the epoch (Dice + CE; negative once Dice dominates).
        pseudo_dice: nnU-Net's pseudo Dice of the epoch, mean over the foreground labels (None: not logged).
        seconds_per_epoch: the epoch's duration (s).
        time_left: estimated seconds until the whole benchmark is done (None: not known yet).
        seed: the run's training seed, when it has one.
    """
    who = f"{model} fold {fold}" + (f" seed {seed}" if seed is not None else "")
    loss = "?" if train_loss is None else f"{train_loss:.4f}"
    dice = "?" if pseudo_dice is None else f"{pseudo_dice:.3f}"
    left = "estimate after the first epoch" if time_left is None else f"~{format_duration(time_left)} left in all"
    return (f"   {who} epoch {epoch}/{epochs}: train loss {loss}, pseudo Dice {dice}, "
            f"{seconds_per_epoch:.1f} s/epoch, {left}")


class _EpochWatcher:
    """Follows nnU-Net's training log of a running fold and prints one line per finished epoch (none with
    --verbose, where nnU-Net's own output is on the console)."""

    def __init__(self, training: Training, run: TrainingRun, started: float, state: FoldState = FoldState.NEW):
        self.training, self.run, self.started, self.state = training, run, started, state
        self.seen = 0
        self.epochs_done = 0
        self.epoch_seconds = 0.0
        training.active.append(self)

    def outside_epochs(self) -> float:
        """Seconds this run has spent outside its logged epochs so far (start-up, final validation)."""
        return max(0.0, time.time() - self.started - self.epoch_seconds)

    def poll(self) -> None:
        records = read_epochs(self.run.folder, self.started - 1)
        training = self.training
        for record in records[self.seen:]:
            if not training.estimate.epoch_seconds.get(self.run.trainer):
                training.measured_first_epoch(self.run, record.seconds)
            training.estimate.epoch_seconds.setdefault(self.run.trainer, []).append(record.seconds)
            self.epochs_done = record.epoch + 1
            self.epoch_seconds += record.seconds
            if not training.config.verbose:
                training.steps.say(epoch_line(self.run.model.name, self.run.fold, record.epoch + 1,
                                              training.epochs(), record.train_loss, record.mean_pseudo_dice,
                                              record.seconds, training.time_left(), self.run.seed))
        self.seen = max(self.seen, len(records))

    def close(self) -> None:
        """The run ended: its time outside epochs is a measured start-up + final validation."""
        if self in self.training.active:
            self.training.active.remove(self)
            if self.state == FoldState.NEW:  # a resumed run's log holds only part of its epochs
                self.training.estimate.run_overheads.setdefault(self.run.trainer, []).append(self.outside_epochs())
