"""The benchmark's train stage: ``nnUNetv2_train`` for every model x fold, each continued from where it stopped.

A fold's state is read from nnU-Net's own checkpoints (see :mod:`nnunet_poolskip.benchmark.training_runs`), so a
fold trained by hand, by a cluster job or by an earlier, killed run is recognised the same way.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.steps import StepFailed, Steps
from nnunet_poolskip.benchmark.training_runs import (NNUNET_SCHEDULE, FoldState, TrainingRun, epoch_times,
                                                     format_duration, model_folder, planned_runs, schedule_mismatch,
                                                     set_aside_unreadable_checkpoints, train_command)
from nnunet_poolskip.benchmark.workspace import executable

NNUNET_DEFAULT_EPOCHS = NNUNET_SCHEDULE["num_epochs"]
NNUNET_DEFAULT_ITERATIONS = NNUNET_SCHEDULE["num_iterations_per_epoch"]


class Training:
    """Plans, checks and runs the training of every model x fold (see the module docstring)."""

    def __init__(self, config: BenchmarkConfig, steps: Steps):
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.steps = steps
        self._measured: Dict[str, float] = {}  # trainer -> first-epoch seconds measured in this invocation

    def runs(self) -> List[TrainingRun]:
        """Every model x fold x seed, seed by seed, in table order (a trainer shared by two models is listed once)."""
        folder = self.config.target.raw_folder(self.ws)
        # before conversion the name is unknown; no fold folder can exist yet, so every run is new
        name = folder.name if folder is not None else f"Dataset{self.config.target.dataset_id:03d}_(not converted)"
        return [TrainingRun(model, trainer, fold,
                            model_folder(self.ws.results_for_seed(seed), name, trainer, self.config.plans)
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
            f"{' '.join(map(str, s.folds))}{seeds}), {schedule}, plans {self.config.plans}, device {s.device}"
            + (f", {s.num_gpus} GPUs (DDP)" if s.num_gpus > 1 else "")
            + f"; to do: {len(pending)} runs, {len(pending) * self.epochs()} epochs")
        for run in runs:
            say(f"   {run.model.name:<20} {run.trainer:<30} {run.label}: {run.state.value}")
        if pending:
            say("   (time estimate after the first measured epoch)")

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
        runs = self.runs()
        self.print_plan(runs)
        self.check_schedules(runs)
        for index, run in enumerate(runs):
            state = run.state
            if state in (FoldState.RESUME, FoldState.VALIDATE):
                for moved in set_aside_unreadable_checkpoints(run.folder):
                    self.steps.say(f"   set aside the truncated checkpoint {moved} (killed while saving)")
                state = run.state
            title = f"train {run.model.name} {run.label} ({run.trainer})"
            if state == FoldState.DONE:
                self.steps.skip(run.step_id, title, "done (checkpoint_final.pth and validation exist)", quiet=True)
                continue
            argv = train_command(executable("nnUNetv2_train"), self.config.target.dataset_id, run.fold,
                                 run.trainer, self.config.plans, self.settings.device, self.settings.num_gpus, state)
            what = {FoldState.NEW: "", FoldState.RESUME: " [continuing from its checkpoint: --c]",
                    FoldState.VALIDATE: " [trained; running the unfinished final validation: --val]"}[state]
            remaining = [r for r in runs[index:] if r.state != FoldState.DONE]
            watcher = _EpochWatcher(self, run, time.time(), remaining) if state != FoldState.VALIDATE else None
            try:
                self.steps.run(run.step_id, title + what, argv, "train", state.value,
                               watcher.poll if watcher else None, watcher.close if watcher else None, seed=run.seed)
            except StepFailed as error:
                if not self.config.keep_going:
                    raise
                self.steps.say(f"   FAILED (--keep-going: continuing): {error}")

    def measured_first_epoch(self, run: TrainingRun, seconds: float, remaining: List[TrainingRun]) -> None:
        """Print the time estimate the first measured epoch of a trainer allows."""
        first_ever = not self._measured
        self._measured[run.trainer] = seconds
        per_run = seconds * self.epochs()
        same = [r for r in remaining if r.trainer == run.trainer]
        say = self.steps.say
        say(f"   [estimate] {run.model.name}: first epoch {seconds:.1f} s (includes start-up) -> about "
            f"{format_duration(per_run)} per fold of {self.epochs()} epoch(s), plus nnU-Net's final "
            f"validation; {len(same)} run(s) of this model to do: ~{format_duration(per_run * len(same))}")
        if first_ever and len(remaining) > len(same):
            say(f"   [estimate] all {len(remaining)} runs to do, if every model cost the same: "
                f"~{format_duration(per_run * len(remaining))} (V-Net is usually slower than nnU-Net's "
                f"U-Net; re-estimated as each model starts)")
        record = self.steps.record
        record.data.setdefault("first_epoch_seconds", {})[run.trainer] = seconds
        record.save()


class _EpochWatcher:
    """Follows nnU-Net's training log of a running fold: the time estimate after its first epoch, and a tqdm
    bar over the epochs when stderr is a terminal."""

    def __init__(self, training: Training, run: TrainingRun, started: float, remaining: List[TrainingRun]):
        self.training, self.run, self.started, self.remaining = training, run, started, remaining
        self.seen = 0
        self.bar = None
        self.show_bar = sys.stderr.isatty() and not training.config.verbose

    def poll(self) -> None:
        if self.bar is None and self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.training.epochs(), desc=f"   {self.run.model.name} fold {self.run.fold}",
                            unit="epoch", leave=False, file=sys.stderr)
        times = epoch_times(self.run.folder, self.started - 1)
        if len(times) > self.seen:
            if self.seen == 0 and self.run.trainer not in self.training._measured:
                if self.bar is not None:
                    self.bar.clear()
                self.training.measured_first_epoch(self.run, times[0], self.remaining)
            if self.bar is not None:
                self.bar.update(len(times) - self.seen)
                self.bar.set_postfix_str(f"{times[-1]:.1f} s/epoch")
            self.seen = len(times)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
