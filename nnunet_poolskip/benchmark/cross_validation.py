"""The cross-validation protocol (``benchmark --protocol cv``): every case of the trained folds scored once, by the
fold that held it out, as nnU-Net Revisited (MICCAI 2024) benchmarks.

No extra prediction step: nnU-Net's final validation (run by ``nnUNetv2_train`` at the end of each fold, mirrored
unless the profile turns test-time mirroring off) already wrote the out-of-fold predictions of the fold's
validation cases to ``fold_k/validation/<case><ending>``, at the original geometry. For every model (and seed):

    cv/predictions/[seed_<s>/]<model>/   links to those files, one per case of the trained folds' validation sets
    cv/references/                       links to the same cases' labelsTr maps (the raw data is never modified)
    summaries/cv/[seed_<s>/]<model>.json ``nnunet-poolskip evaluate`` of the two (Dice, NSD, IoU per case and label)

The validation sets come from ``splits_final.json`` in nnUNet_preprocessed (the folds nnU-Net trained on). A fold
whose validation folder lacks a case of its validation set is refused before anything is evaluated, naming the
model, fold and cases. With fewer than 5 folds, n is the number of cases of the folds trained.

Besides the per-case mean (each label's mean over all n cases, then the mean over labels: what ``compare`` and its
statistics use), :func:`fold_means` gives nnU-Net Revisited's average: each fold's foreground mean over its own
validation cases, then the mean over the folds, computed with the evaluator's own ``summarize``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.workspace import seed_folder_name

CV_FOLDER = "cv"
"""Subfolder of the results folder with the cross-validation's prediction and reference links (and, with
``--protocol both``, its tables)."""
SPLITS_FILE = "splits_final.json"


def read_validation_cases(preprocessed_folder: Path, folds: Sequence[int]) -> Dict[int, List[str]]:
    """Fold -> its validation case ids (sorted), from nnU-Net's ``splits_final.json``.

    Args:
        preprocessed_folder: ``nnUNet_preprocessed/DatasetXXX_Name``.
        folds: the folds trained.

    Raises:
        BenchmarkError: no splits_final.json (no fold trained yet), a fold it does not define, or a case in the
            validation sets of two folds.
    """
    path = Path(preprocessed_folder) / SPLITS_FILE
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"{path} does not exist: nnU-Net writes it when the first fold is trained; train the "
                             f"folds first") from None
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkError(f"{path} is not readable JSON ({error})") from None
    result = {}
    for fold in folds:
        if not 0 <= fold < len(splits):
            raise BenchmarkError(f"fold {fold} is not in {path} ({len(splits)} folds): nnU-Net trained it on a "
                                 f"random split of its own, which the cross-validation cannot score")
        result[fold] = sorted(splits[fold]["val"])
    seen: Dict[str, int] = {}
    for fold, cases in result.items():
        for case in cases:
            if case in seen:
                raise BenchmarkError(f"{path}: case {case} is in the validation sets of folds {seen[case]} and {fold}")
            seen[case] = fold
    return result


def missing_validation_cases(fold_folder: Path, cases: Sequence[str], file_ending: str) -> List[str]:
    """The cases of a fold's validation set that have no prediction in ``fold_folder/validation/``."""
    folder = Path(fold_folder) / "validation"
    return [c for c in cases if not (folder / f"{c}{file_ending}").is_file()]


def link_cases(files: Mapping[str, Path], folder: Path, file_ending: str) -> None:
    """Make ``folder`` hold exactly one link ``<case><file_ending>`` per entry of ``files`` (case -> target file),
    pointing at the target's absolute path; links that are already right stay (so do their times), others go."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"{case}{file_ending}": Path(target).absolute() for case, target in files.items()}
    for entry in folder.iterdir():
        if entry.name not in wanted or not entry.is_symlink() or Path(os.readlink(entry)) != wanted[entry.name]:
            entry.unlink()
    for name, target in wanted.items():
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(target)


def fold_means(summary: Mapping, validation_cases: Mapping[int, Sequence[str]]) -> Dict:
    """nnU-Net Revisited's average of a cross-validation summary: per fold, the foreground mean over the fold's
    own validation cases (the evaluator's ``summarize`` on those cases: each label's mean over the cases where it
    has a value, then the mean over labels); then the mean over the folds.

    Args:
        summary: a summary.json (DESIGN.md format) holding the cases of every fold.
        validation_cases: fold -> its validation cases.

    Returns:
        ``{"folds": {fold: {metric: fraction or None}}, "mean_over_folds": {metric: fraction or None},
        "n_cases": {fold: n}}``; a metric without a value in a fold (every label absent from its cases) is None
        there and left out of the mean over folds.
    """
    from nnunet_poolskip.evaluation.evaluate_predictions import summarize
    from nnunet_poolskip.evaluation.metrics import METRICS

    labels = {int(k): v for k, v in summary["labels"].items()}
    tolerances = {int(k): float(v) for k, v in summary["nsd_tolerance_mm"].items()}
    by_case = {c["case"]: c for c in summary["per_case"]}
    folds, counts = {}, {}
    for fold, cases in sorted(validation_cases.items()):
        per_case = []
        for case in cases:
            entry = by_case[case]
            per_case.append({"case": case, **{m: {label: math.nan if entry[m].get(str(label)) is None
                                                  else float(entry[m][str(label)]) for label in labels}
                                              for m in METRICS}})
        folds[fold] = summarize(per_case, labels, tolerances)["foreground_mean"]
        counts[fold] = len(per_case)
    mean = {}
    for metric in METRICS:
        values = [f[metric] for f in folds.values() if f[metric] is not None]
        mean[metric] = sum(values) / len(values) if values else None
    return {"folds": folds, "mean_over_folds": mean, "n_cases": counts}


class CrossValidation:
    """Scores the models' out-of-fold validation predictions (see the module docstring)."""

    def __init__(self, config: BenchmarkConfig, steps):
        self.config = config
        self.steps = steps

    @property
    def folder(self) -> Path:
        return self.config.output / CV_FOLDER

    def validation_cases(self) -> Dict[int, List[str]]:
        """Fold -> validation cases, for the folds of this run (see :func:`read_validation_cases`)."""
        preprocessed = self.config.workspace.preprocessed / self.config.dataset_name()
        return read_validation_cases(preprocessed, self.config.settings.folds)

    def scored_cases(self) -> List[str]:
        """Every case the cross-validation scores (the validation cases of the folds trained), sorted."""
        return sorted(c for cases in self.validation_cases().values() for c in cases)

    def check_complete(self, model_folders: Mapping[str, Mapping[Optional[int], Path]]) -> None:
        """Refuse, before anything is evaluated, a fold whose validation folder lacks a case of its validation set.

        Args:
            model_folders: model name -> seed -> nnU-Net's model folder (``.../<trainer>__<plans>__<config>``).
        Raises:
            BenchmarkError: naming the model, seed, fold and the missing cases.
        """
        from nnunet_poolskip.benchmark.prepare import file_ending

        ending = file_ending(self.config.raw_folder())
        problems = []
        for name, by_seed in model_folders.items():
            for seed, folder in by_seed.items():
                for fold, cases in self.validation_cases().items():
                    missing = missing_validation_cases(folder / f"fold_{fold}", cases, ending)
                    if missing:
                        who = f"{name}" + ("" if seed is None else f" seed {seed}")
                        problems.append(f"{who} fold {fold}: {folder / f'fold_{fold}' / 'validation'} lacks "
                                        f"{len(missing)} of its {len(cases)} validation cases "
                                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        if problems:
            raise BenchmarkError("incomplete final validation: " + "; ".join(problems) + ". Rerun that fold's "
                                 "validation (nnUNetv2_train ... --val, or remove its validation/summary.json and "
                                 "rerun the benchmark)")

    def predictions_folder(self, model_name: str, seed: Optional[int]) -> Path:
        """``cv/predictions/[seed_<s>/]<model>``: the links to the model's out-of-fold predictions."""
        return self.folder / "predictions" / ("" if seed is None else seed_folder_name(seed)) / model_name

    def references_folder(self) -> Path:
        """``cv/references``: the links to the scored cases' labelsTr maps."""
        return self.folder / "references"

    def link(self, model_name: str, seed: Optional[int], model_folder: Path) -> Path:
        """Link the model's out-of-fold predictions and the references of the scored cases; returns the
        predictions folder."""
        from nnunet_poolskip.benchmark.prepare import file_ending

        raw = self.config.raw_folder()
        ending = file_ending(raw)
        folds = self.validation_cases()
        link_cases({c: raw / "labelsTr" / f"{c}{ending}" for cases in folds.values() for c in cases},
                   self.references_folder(), ending)
        predictions = self.predictions_folder(model_name, seed)
        link_cases({c: model_folder / f"fold_{fold}" / "validation" / f"{c}{ending}"
                    for fold, cases in folds.items() for c in cases}, predictions, ending)
        return predictions

    def fold_means(self, summary_path: Path) -> Dict:
        """:func:`fold_means` of a summary file of this run's cross-validation."""
        return fold_means(json.loads(Path(summary_path).read_text()), self.validation_cases())
