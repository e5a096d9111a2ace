"""Where a benchmark's files live: nnU-Net's three folders, the data set in them, and the environment.

Every step runs as a subprocess of a real command line (``nnUNetv2_*``, ``nnunet-poolskip ...``); this
module builds the environment each kind of step gets, so that the same variables reach the local
runner's subprocesses and the emitted SLURM scripts (one source of truth).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from nnunet_poolskip.benchmark.profiles import Settings
from nnunet_poolskip.benchmark.protocol import DATASET_KINDS
from nnunet_poolskip.training.schedule import SCHEDULE_VARIABLES, SEED_VARIABLE, VALIDATION_MIRRORING_VARIABLE
from nnunet_poolskip.utilities.cpu_precision import CPU_AUTOCAST_VARIABLE

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
SCHEDULE_FIELDS = {"num_epochs": "epochs", "num_iterations_per_epoch": "iterations",
                   "num_val_iterations_per_epoch": "val_iterations"}
"""Trainer attribute (schedule.SCHEDULE_VARIABLES' values) -> Settings field."""

CPU_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}
"""CPU runs: one process for nnU-Net's exports (it otherwise spawns 8 on any machine), no torch.compile."""
CPU_TRAINING_ENV = {"nnUNet_n_proc_DA": "0"}
"""CPU training: augmentation in the main process. Training only: nnUNetv2_plan_and_preprocess crashes with it."""


@dataclass(frozen=True)
class Workspace:
    """nnU-Net's raw, preprocessed and results folders used by one benchmark."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, folder: os.PathLike) -> "Workspace":
        """The three folders inside ``folder`` (``folder/nnUNet_raw`` etc.)."""
        folder = Path(folder).absolute()
        return cls(*(folder / name for name in NNUNET_FOLDERS))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Optional["Workspace"]:
        """The folders named by the nnUNet_raw/_preprocessed/_results variables, or None unless all are set."""
        values = [environ.get(name) for name in NNUNET_FOLDERS]
        if not all(values):
            return None
        return cls(*(Path(v).absolute() for v in values))

    def common_root(self) -> Optional[Path]:
        """The folder F when the three folders are F/nnUNet_raw, F/nnUNet_preprocessed, F/nnUNet_results."""
        root = self.raw.parent
        return root if Workspace.under(root) == self else None

    def create(self) -> None:
        """Create the three folders."""
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    def results_for_seed(self, seed: Optional[int]) -> Path:
        """The nnUNet_results folder of a seed's runs: ``<results>/seed_<seed>``, or ``results`` itself for the
        unseeded run. Each seed gets its own so that nnU-Net's folder naming inside stays untouched."""
        return self.results if seed is None else self.results / seed_folder_name(seed)

    def variables(self) -> Dict[str, str]:
        """nnUNet_raw, nnUNet_preprocessed, nnUNet_results -> absolute paths."""
        return dict(zip(NNUNET_FOLDERS, (str(self.raw), str(self.preprocessed), str(self.results))))


@dataclass(frozen=True)
class DatasetTarget:
    """The nnU-Net data set a benchmark runs on.

    Attributes:
        kind: ``btcv``, ``amos`` (converted from their downloads) or ``custom`` (already in nnUNet_raw).
        dataset_id: nnU-Net dataset id.
        label: short name for folders and tables (``btcv``, ``amos`` or ``DatasetXXX_Name``).
    """

    kind: str
    dataset_id: int
    label: str

    def raw_folder(self, workspace: Workspace) -> Optional[Path]:
        """``nnUNet_raw/DatasetXXX_*`` for this id, or None when absent. Raises ValueError when ambiguous."""
        matches = sorted(workspace.raw.glob(f"Dataset{self.dataset_id:03d}_*")) if workspace.raw.is_dir() else []
        matches = [m for m in matches if m.is_dir() and not m.name.startswith(".")]
        if len(matches) > 1:
            raise ValueError(f"several raw data sets with id {self.dataset_id} in {workspace.raw}: "
                             f"{[m.name for m in matches]}")
        return matches[0] if matches else None


def seed_folder_name(seed: int) -> str:
    """``seed_<seed>``: the folder of one seed's runs, results or predictions."""
    return f"seed_{seed}"


def parse_dataset(text: str, dataset_id: Optional[int] = None) -> DatasetTarget:
    """``--dataset``: ``btcv``, ``amos``, ``DatasetXXX_Name`` or a bare id; ``dataset_id`` overrides the
    converters' default ids (BTCV 17, AMOS 218).

    Raises:
        ValueError: naming the argument when it is none of these.
    """
    lowered = text.strip().lower()
    if lowered in DATASET_KINDS:
        kind = DATASET_KINDS[lowered]
        return DatasetTarget(kind.name, dataset_id if dataset_id is not None else kind.dataset_id, kind.name)
    match = re.fullmatch(r"Dataset(\d{3})_\w+", text.strip())
    if match:
        return DatasetTarget("custom", int(match.group(1)), text.strip())
    if text.strip().isdigit():
        return DatasetTarget("custom", int(text), f"Dataset{int(text):03d}")
    raise ValueError(f"--dataset must be btcv, amos, DatasetXXX_Name or a dataset id, got {text!r}")


def executable(name: str) -> str:
    """A console script of this Python environment (beside sys.executable) if there, else ``name`` (PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


RUN_VARIABLES = (*SCHEDULE_VARIABLES, SEED_VARIABLE, VALIDATION_MIRRORING_VARIABLE, CPU_AUTOCAST_VARIABLE)
"""The variables that change what a training run does: never inherited from the caller's environment."""


def schedule_variables(settings: Settings) -> Dict[str, str]:
    """NNUNET_POOLSKIP_* variables for the settings' short schedule (empty for nnU-Net's defaults)."""
    out = {}
    for variable, attribute in SCHEDULE_VARIABLES.items():
        value = getattr(settings, SCHEDULE_FIELDS[attribute])
        if value is not None:
            out[variable] = str(value)
    return out


def step_environment(base: Mapping[str, str], workspace: Workspace, settings: Settings,
                     purpose: str, seed: Optional[int] = None) -> Tuple[Dict[str, str], Dict[str, str]]:
    """The full environment for a step, and the variables it sets (for the record and the SLURM scripts).

    Args:
        base: the environment to start from (usually os.environ).
        workspace: nnU-Net's folders.
        settings: the benchmark settings (schedule, CPU variables).
        purpose: ``plan`` (nnUNetv2_plan_and_preprocess), ``train`` (nnUNetv2_train) or ``other``.
        seed: the step works on this seed's runs: nnUNet_results is the seed's folder
            (:meth:`Workspace.results_for_seed`), and a training gets NNUNET_POOLSKIP_SEED. None: the unseeded run.

    Any NNUNET_POOLSKIP_* schedule, seed or validation-mirroring variable in ``base`` is removed: a leftover
    variable must never shorten a paper run, seed an unseeded one or change its validation. A training without
    test-time mirroring (the demo) gets NNUNET_POOLSKIP_VAL_MIRRORING=0: its final validation is not mirrored
    either. nnUNet_n_proc_DA=0 is removed for planning, which crashes with it.
    """
    from nnunet_poolskip.training.discovery import ENV_VARIABLE, ext_trainer_value

    env = {k: v for k, v in base.items() if k not in RUN_VARIABLES}
    added = workspace.variables()
    added["nnUNet_results"] = str(workspace.results_for_seed(seed))
    added[ENV_VARIABLE] = ext_trainer_value(base.get(ENV_VARIABLE, ""))
    if settings.cpu_training_env:
        added.update(CPU_ENV)
    if purpose == "train":
        added.update(schedule_variables(settings))
        if settings.cpu_training_env:
            added.update(CPU_TRAINING_ENV)
        if seed is not None:
            added[SEED_VARIABLE] = str(seed)
        if not settings.test_time_mirroring:
            added[VALIDATION_MIRRORING_VARIABLE] = "0"
        if settings.cpu_autocast_mode()[0] != "off":
            added[CPU_AUTOCAST_VARIABLE] = settings.cpu_autocast_mode()[0]
    if purpose == "plan" and env.get("nnUNet_n_proc_DA") == "0":
        del env["nnUNet_n_proc_DA"]
    env.update(added)
    return env, added


def case_ids(images_folder: Path, file_ending: str) -> List[str]:
    """Case ids of an nnU-Net images folder (files ``<case>_0000<file_ending>``), sorted."""
    suffix = "_0000" + file_ending
    return sorted(p.name[:-len(suffix)] for p in images_folder.glob("*" + suffix))
