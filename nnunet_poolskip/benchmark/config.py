"""What one benchmark invocation is asked to do (:class:`BenchmarkConfig`), and its input error."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_poolskip.benchmark.profiles import Settings
from nnunet_poolskip.benchmark.protocol import DATASET_KINDS, DEFAULT_PLANS, Model
from nnunet_poolskip.benchmark.workspace import DatasetTarget, Workspace


class BenchmarkError(Exception):
    """A problem with the inputs or the state of the output folder; the message says what to do."""


@dataclass
class BenchmarkConfig:
    """Everything one benchmark invocation needs (built from the command line by commands/benchmark.py).

    Attributes:
        target: the data set.
        settings: the resolved profile.
        models: the models, in table order.
        output: the results folder (run.json, predictions, summaries, tables, logs).
        workspace: nnU-Net's folders.
        raw_source: the raw download to convert (BTCV/AMOS layout); None: synthetic phantoms (demo) or an
            already converted data set.
        split_file: the converter's --split-file (None: the shipped paper split).
        modality: AMOS ``--modality`` (ct, mri, all; None: the converter's default).
        stage: ``all``, ``prepare``, ``train`` or ``finish`` (see :mod:`nnunet_poolskip.benchmark.runner`).
        keep_going: after a failed training, go on with the other models and build a table from the
            complete ones, marked INCOMPLETE.
        verbose: show the subprocesses' output instead of writing it to logs/.
        evaluate_processes: evaluate's -np.
        nsd_tolerances: evaluate's --nsd-tolerances (None: 1 mm for every organ).
        argv: the command line, for the record.
        protocol: ``test``, ``cv`` or ``both`` (protocol.PROTOCOLS); None: chosen from the data set by
            :meth:`resolved_protocol` (``test`` when it has test labels, else ``cv``).
    """

    target: DatasetTarget
    settings: Settings
    models: List[Model]
    output: Path
    workspace: Workspace
    raw_source: Optional[Path] = None
    split_file: Optional[Path] = None
    modality: Optional[str] = None
    stage: str = "all"
    keep_going: bool = False
    verbose: bool = False
    evaluate_processes: int = 1
    nsd_tolerances: Optional[str] = None
    argv: List[str] = field(default_factory=list)
    protocol: Optional[str] = None

    @property
    def configuration(self) -> str:
        """The nnU-Net configuration the models are trained and predicted in (``--configuration``)."""
        return self.settings.configuration

    @property
    def no_test_split(self) -> bool:
        """True when the converter is asked to put every case into the cross-validation (``--split-file none``)."""
        from nnunet_poolskip.dataset_conversion.splits import NO_TEST_SPLIT_FILE

        return self.split_file is not None and self.split_file.name == NO_TEST_SPLIT_FILE

    def resolved_protocol(self) -> str:
        """``--protocol``, or when it was not given: ``test`` for a data set with test labels (BTCV/AMOS converted
        with a test split, the paper's protocol), ``cv`` for one without (an nnU-Net data set with imagesTr/labelsTr
        only, or ``--split-file none``)."""
        if self.protocol is not None:
            return self.protocol
        folder = self.target.raw_folder(self.workspace)
        if folder is not None and (folder / "dataset.json").is_file():
            labels = folder / "labelsTs"
            return "test" if labels.is_dir() and any(labels.iterdir()) else "cv"
        return "cv" if self.no_test_split else "test"

    @property
    def protocols(self) -> List[str]:
        """The protocols to report, in report order: ``["test"]``, ``["cv"]`` or ``["test", "cv"]``."""
        protocol = self.resolved_protocol()
        return ["test", "cv"] if protocol == "both" else [protocol]

    @property
    def plans(self) -> str:
        """The plans identifier of the models on nnU-Net's default plans (see :meth:`plans_for`)."""
        return self.derived_identifier(DEFAULT_PLANS)

    def derived_identifier(self, source_plans: str) -> str:
        """``source_plans`` with the plans preset's suffix (the plans derive-plans writes), or itself without a
        preset."""
        if self.settings.plans_preset is None:
            return source_plans
        from nnunet_poolskip.training.derived_plans import load_preset

        return source_plans + load_preset(self.settings.plans_preset)["plans_suffix"]

    def plans_for(self, model: Model) -> str:
        """The plans identifier ``model`` trains and predicts with (its own plans, derived by the preset)."""
        return self.derived_identifier(model.plans)

    @property
    def synthetic(self) -> bool:
        """True when the data are phantoms made by ``synth`` (no --raw, a profile with synthetic cases)."""
        return (self.raw_source is None and self.target.kind in DATASET_KINDS
                and self.settings.synthetic_cases is not None)

    def trainers(self) -> Dict[str, str]:
        """Model name -> trainer class name for this data set."""
        return {m.name: m.trainer_for(self.target.kind) for m in self.models}

    def dataset_name(self) -> str:
        """``DatasetXXX_Name`` of the converted data set in nnUNet_raw (BenchmarkError before conversion)."""
        folder = self.target.raw_folder(self.workspace)
        if folder is None:
            raise BenchmarkError(f"data set {self.target.dataset_id} not found in {self.workspace.raw}")
        return folder.name

    def raw_folder(self) -> Path:
        """The converted data set's folder in nnUNet_raw."""
        return self.workspace.raw / self.dataset_name()
