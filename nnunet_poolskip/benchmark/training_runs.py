"""One training run (model x fold) of the benchmark: where nnU-Net puts it, how far it got, how to go on.

A fold's state is read from nnU-Net's own files, so that a run killed at any point, a run made by hand
with ``nnUNetv2_train``, and a run made by a cluster job are all recognised the same way:

    done      checkpoint_final.pth and validation/summary.json exist: nothing to do
    validate  checkpoint_final.pth exists but the final validation did not finish (nnU-Net writes the
              final checkpoint before validating): ``nnUNetv2_train ... --val`` (checkpoint untouched)
    resume    checkpoint_latest.pth or checkpoint_best.pth exists: ``nnUNetv2_train ... --c`` continues
              from it (nnU-Net tries latest, then best)
    new       none of these: a fresh ``nnUNetv2_train``

A checkpoint truncated by a kill during torch.save is renamed ``<name>.unreadable`` before resuming, so the
state falls back to the previous usable checkpoint (see set_aside_unreadable_checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from nnunet_poolskip.benchmark.protocol import CONFIGURATION, DEFAULT_PLANS, Model
from nnunet_poolskip.benchmark.workspace import seed_folder_name

FINAL_CHECKPOINT = "checkpoint_final.pth"
RESUME_CHECKPOINTS = ("checkpoint_latest.pth", "checkpoint_best.pth")
"""The checkpoints ``nnUNetv2_train --c`` continues from, in the order nnU-Net tries them."""
VALIDATION_SUMMARY = "validation/summary.json"


class FoldState(str, Enum):
    """How far one fold's training got (see the module docstring)."""

    NEW = "new"
    RESUME = "resume"
    VALIDATE = "validate"
    DONE = "done"


def fold_state(fold_folder: Path) -> FoldState:
    """The state of nnU-Net's output folder ``.../<trainer>__<plans>__<configuration>/fold_<f>``."""
    fold_folder = Path(fold_folder)
    if (fold_folder / FINAL_CHECKPOINT).is_file():
        return FoldState.DONE if (fold_folder / VALIDATION_SUMMARY).is_file() else FoldState.VALIDATE
    if any((fold_folder / name).is_file() for name in RESUME_CHECKPOINTS):
        return FoldState.RESUME
    return FoldState.NEW


def checkpoint_readable(path: Path) -> bool:
    """True when a checkpoint file is a complete torch archive (a zip whose members all pass their CRC).

    torch.save is not atomic: a run killed while saving leaves a truncated file, and nnU-Net's ``--c``
    would then fail on it. Reading the zip needs no torch and takes about a second per GB.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def set_aside_unreadable_checkpoints(fold_folder: Path) -> List[Path]:
    """Rename truncated checkpoints of a fold to ``<name>.unreadable`` so that the fold's state (and
    nnU-Net's ``--c``) falls back to the next usable one; returns the renamed files' new paths."""
    moved = []
    for name in (FINAL_CHECKPOINT, *RESUME_CHECKPOINTS):
        path = Path(fold_folder) / name
        if path.is_file() and not checkpoint_readable(path):
            target = path.with_name(name + ".unreadable")
            path.replace(target)
            moved.append(target)
    return moved


NNUNET_SCHEDULE = {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}
"""nnU-Net's default training schedule (trainer attribute -> value)."""


def trained_schedule(fold_folder: Path) -> Optional[Dict[str, int]]:
    """The schedule a fold was (or is being) trained with, from the ``debug.json`` nnU-Net writes when a
    training starts (trainer attribute -> value); None when there is no readable debug.json."""
    import json

    try:
        debug = json.loads((Path(fold_folder) / "debug.json").read_text())
        return {key: int(debug[key]) for key in NNUNET_SCHEDULE}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def schedule_mismatch(fold_folder: Path, expected: Dict[str, int]) -> Optional[str]:
    """A sentence saying how a fold's recorded schedule differs from ``expected`` (None when it matches or
    nothing is recorded). A benchmark must not count a fold trained for 5 epochs as a 1000-epoch fold, which
    could happen when two runs share nnUNet_results (the folder name holds only trainer and plans)."""
    found = trained_schedule(fold_folder)
    if found is None or found == expected:
        return None
    return (f"{fold_folder} was trained with {found['num_epochs']} epochs x {found['num_iterations_per_epoch']} "
            f"iterations (its debug.json), this run asks for {expected['num_epochs']} x "
            f"{expected['num_iterations_per_epoch']} (validation iterations {found['num_val_iterations_per_epoch']} "
            f"vs {expected['num_val_iterations_per_epoch']})")


def model_folder(results: Path, dataset_name: str, trainer: str, plans: str,
                 configuration: str = CONFIGURATION) -> Path:
    """nnU-Net's model folder ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``."""
    return Path(results) / dataset_name / f"{trainer}__{plans}__{configuration}"


def train_command(train_executable: str, dataset_id: int, fold: Union[int, str], trainer: str, plans: str,
                  device: str, num_gpus: int = 1, state: FoldState = FoldState.NEW,
                  configuration: str = CONFIGURATION) -> List[str]:
    """The ``nnUNetv2_train`` command for one fold in a given state (a done fold has none: ValueError).

    Args:
        train_executable: path or name of ``nnUNetv2_train``.
        dataset_id: nnU-Net dataset id.
        fold: cross-validation fold (or a shell variable such as ``$FOLD`` for job scripts).
        trainer: trainer class name.
        plans: plans identifier.
        device: ``cuda`` or ``cpu``.
        num_gpus: passed as ``-num_gpus`` (nnU-Net's DDP training) when above 1.
        state: the fold's state; RESUME adds ``--c``, VALIDATE adds ``--val``.
        configuration: the nnU-Net configuration (``3d_fullres``, ``2d``, ``3d_lowres``).
    """
    if state == FoldState.DONE:
        raise ValueError("a done fold needs no training command")
    argv = [train_executable, str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans,
            "-device", device]
    if num_gpus > 1:
        argv += ["-num_gpus", str(num_gpus)]
    if state == FoldState.RESUME:
        argv.append("--c")
    elif state == FoldState.VALIDATE:
        argv.append("--val")
    return argv


def planned_runs(models: Sequence[Model], dataset_kind: str, folds: Sequence[int],
                 seeds: Sequence[Optional[int]]) -> List[Tuple[Model, str, int, Optional[int]]]:
    """(model, trainer, fold, seed) of every training a benchmark makes, seed by seed (all models and folds of a
    seed before the next seed), then model by model; a trainer shared by two models with the same plans is trained
    once. The local runner and the SLURM array use this one list."""
    runs, seen = [], set()
    for seed in seeds:
        for model in models:
            trainer = model.trainer_for(dataset_kind)
            for fold in folds:
                if (trainer, model.plans, fold, seed) not in seen:
                    seen.add((trainer, model.plans, fold, seed))
                    runs.append((model, trainer, fold, seed))
    return runs


@dataclass
class TrainingRun:
    """One model x fold (x seed) of the benchmark; ``seed`` None: the unseeded run."""

    model: Model
    trainer: str
    fold: int
    folder: Path
    seed: Optional[int] = None

    @property
    def step_id(self) -> str:
        # a model with its own plans (ResEnc) may share its trainer with another model: the plans tell them apart
        who = self.trainer if self.model.plans == DEFAULT_PLANS else f"{self.trainer}__{self.model.plans}"
        if self.seed is None:
            return f"train/{who}/fold_{self.fold}"
        return f"train/{who}/{seed_folder_name(self.seed)}/fold_{self.fold}"

    @property
    def label(self) -> str:
        """``fold 3`` or ``seed 1 fold 3``, for messages."""
        return f"fold {self.fold}" if self.seed is None else f"seed {self.seed} fold {self.fold}"

    @property
    def state(self) -> FoldState:
        return fold_state(self.folder)

    @property
    def checkpoint(self) -> Path:
        return self.folder / FINAL_CHECKPOINT


def format_duration(seconds: Optional[float]) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h`` or ``3.2 days``."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m nnunet_poolskip.benchmark.training_runs FOLD_FOLDER``: set truncated checkpoints aside and print
    the fold's state (new, resume, validate, done). The SLURM training jobs use it, so that they and the
    local runner decide the same way."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m nnunet_poolskip.benchmark.training_runs",
                                     description="print a fold's state: new, resume, validate or done")
    parser.add_argument("fold_folder")
    parser.add_argument("--expect-schedule", nargs=3, type=int, metavar=("EPOCHS", "ITERS", "VAL_ITERS"),
                        help="fail (exit 3) when the fold was trained with another schedule")
    args = parser.parse_args(argv)
    folder = Path(args.fold_folder)
    state = fold_state(folder)
    if args.expect_schedule and state != FoldState.NEW:
        problem = schedule_mismatch(folder, dict(zip(NNUNET_SCHEDULE, args.expect_schedule)))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 3
    if state in (FoldState.RESUME, FoldState.VALIDATE):
        for moved in set_aside_unreadable_checkpoints(folder):
            print(f"set aside the truncated checkpoint {moved}", file=sys.stderr)
        state = fold_state(folder)
    print(state.value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
