"""Evaluate a folder of predicted label maps against reference label maps: Dice, NSD, IoU -> summary.json.

Images are read with SimpleITK. Spacing comes from the REFERENCE header; arrays are (z, y, x), so the spacing
handed to the metrics is ``reversed(image.GetSpacing())``. summary.json follows DESIGN.md ("Evaluation output"):
values are fractions in [0, 1]; a label absent from both reference and prediction of a case is null there,
left out of the means and counted in ``n_empty_both``; absent from only one of them it scores 0.
Keys added to DESIGN.md's: per case ``empty_reference`` (the label ids absent from that case's reference, so that
``compare`` can tell a false positive on an absent organ from a missed organ: both score 0), ``n_cases``,
``n_empty_both`` (per label), ``missing_predictions`` (case ids,
only non-empty with ``allow_missing``), ``complete`` (false when predictions were missing) and ``notes``
(free-text caveats that ``nnunet-poolskip compare`` prints under its tables; other tools may append to it);
with ``ignore_other_labels`` (``evaluate --labels``) ``ignored_label_values`` (``{"reference": [...],
"prediction": [...]}``: values found in the maps besides the scored labels, which count as background for them).
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_poolskip.evaluation.metrics import METRICS, case_metrics
from nnunet_poolskip.utilities.atomic import atomic_path
from nnunet_poolskip.utilities.geometry import SITK_ENDINGS, ImageHeaderError, geometry_mismatch, read_geometry
from nnunet_poolskip.utilities.image_integrity import check_image_file_complete

OTHER_VALUES_KEY = "other_label_values"


class EvaluationInputError(ValueError):
    """Bad evaluation input (files, labels, geometry); the message names the case, file or argument."""


def labels_from_dataset_json(path: os.PathLike | str) -> Dict[int, str]:
    """Foreground labels of a dataset.json: ``{value: name}``, background (0) left out.

    Reads nnU-Net's ``{"spleen": 1}`` and the Decathlon/AMOS ``{"1": "spleen"}`` forms.

    Raises:
        EvaluationInputError: missing file or ``labels``, region-based labels, or an ignore label (not supported).
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"--dataset-json {path} does not exist")
    labels = json.loads(path.read_text()).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise EvaluationInputError(f"{path} has no 'labels' object")
    if all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items()):
        # Medical Segmentation Decathlon style (AMOS's own dataset.json): {"1": "spleen"} instead of {"spleen": 1}.
        labels = {name: int(value) for value, name in labels.items()}
    result = {}
    for name, value in labels.items():
        if name == "ignore":
            raise EvaluationInputError(f"{path}: ignore labels are not supported by this evaluation")
        if not isinstance(value, int) or isinstance(value, bool):
            raise EvaluationInputError(f"{path}: label {name!r} has value {value!r}; region-based labels are not "
                                       f"supported, give integer label values")
        if value != 0:
            result[value] = name
    return dict(sorted(result.items()))


def file_ending_of(folder: Path) -> str:
    """The single image file ending in ``folder`` (``.nii.gz``, ``.nrrd``, ...), ignoring hidden files."""
    endings = set()
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            ending = next((e for e in SITK_ENDINGS if path.name.endswith(e)), None)
            if ending is not None:
                endings.add(ending)
    if len(endings) != 1:
        raise EvaluationInputError(f"cannot tell the file ending of the label maps in {folder} (found "
                                   f"{sorted(endings) or 'no image files'}); give --file-ending")
    return endings.pop()


def case_files(folder: Path, file_ending: str) -> Dict[str, Path]:
    """Case id -> file for every non-hidden ``<case><file_ending>`` in ``folder``."""
    return {p.name[:-len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}


def label_values(array: np.ndarray) -> List[int]:
    """Distinct values of a label map as ints; raises ValueError for non-integer values."""
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() < 2 ** 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel()))]
    values = np.unique(array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise ValueError(f"non-integer values such as {values[np.mod(values, 1) != 0][:3].tolist()}")
    return [int(v) for v in values]


def _read_label_map(path: Path, case: str, role: str, allowed: Iterable[int], ignore_others: bool = False):
    """(image, integer array, label values outside ``allowed``): those values are an error unless ``ignore_others``
    (they then count as background for every scored label)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    try:
        values = label_values(array)
    except ValueError as error:
        raise EvaluationInputError(f"case {case}: {role} {path} has {error}") from None
    unknown = sorted(set(values) - set(allowed))
    if unknown and not ignore_others:
        raise EvaluationInputError(f"case {case}: {role} {path} contains label values {unknown} that are not in the "
                                   f"label set {sorted(allowed)}")
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int32)
    return image, array, unknown


def evaluate_case(case: str, reference_file: Path, prediction_file: Path, labels: Sequence[int],
                  tolerances_mm: Mapping[int, float], ignore_other_labels: bool = False) -> Dict:
    """Metrics of one case (see ``metrics.case_metrics``) at the reference's spacing.

    Args:
        ignore_other_labels: score ``labels`` only and treat other label values in either map as background for
            them (``evaluate --labels``); otherwise such values are an error.
    Returns:
        ``{"case": case, "dice": {label: value}, "nsd": {...}, "iou": {...}, "empty_reference": [labels]}`` (float
        values, NaN for labels absent from both maps; ``empty_reference``: the labels absent from the reference);
        with ``ignore_other_labels`` also ``"other_label_values": {"reference": [...], "prediction": [...]}``, the
        values found and ignored.
    Raises:
        EvaluationInputError: label values outside ``{0} | labels`` (unless ignored), or shapes that differ, naming
            the case.
    """
    allowed = [0, *labels]
    reference_image, reference, other_reference = _read_label_map(reference_file, case, "reference", allowed,
                                                                  ignore_other_labels)
    _, prediction, other_prediction = _read_label_map(prediction_file, case, "prediction", allowed,
                                                      ignore_other_labels)
    if reference.shape != prediction.shape:
        raise EvaluationInputError(f"case {case}: prediction shape {prediction.shape} differs from reference "
                                   f"shape {reference.shape}")
    spacing_mm = tuple(float(s) for s in reversed(reference_image.GetSpacing()))  # array order (z, y, x)
    counts = np.bincount(reference.ravel(), minlength=max(labels, default=0) + 1)
    result = {"case": case, **case_metrics(reference, prediction, labels, spacing_mm, tolerances_mm),
              "empty_reference": [int(k) for k in labels if counts[k] == 0]}
    if ignore_other_labels:
        result[OTHER_VALUES_KEY] = {"reference": other_reference, "prediction": other_prediction}
    return result


def _evaluate_task(task) -> Dict:
    return evaluate_case(*task)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; no thread oversubscription


def _json_number(value: float) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def summarize(per_case: Sequence[Dict], labels: Mapping[int, str], tolerances_mm: Mapping[int, float]) -> Dict:
    """The summary.json dictionary (DESIGN.md format) from per-case results with int label keys.

    Means per label leave NaN (both-empty) cases out; a label NaN in every case has a null mean.
    ``foreground_mean`` is the mean over labels of the per-label means (labels with a null mean left out).
    """
    mean: Dict[str, Dict[str, Optional[float]]] = {}
    foreground_mean: Dict[str, Optional[float]] = {}
    for metric in METRICS:
        mean[metric] = {}
        for label in labels:
            values = np.array([case[metric][label] for case in per_case], dtype=float)
            values = values[~np.isnan(values)]
            mean[metric][str(label)] = float(values.mean()) if values.size else None
        present = [v for v in mean[metric].values() if v is not None]
        foreground_mean[metric] = float(np.mean(present)) if present else None
    return {
        "metrics": list(METRICS),
        "labels": {str(k): v for k, v in labels.items()},
        "nsd_tolerance_mm": {str(k): float(tolerances_mm[k]) for k in labels},
        "per_case": [{"case": case["case"],
                      **{m: {str(k): _json_number(case[m][k]) for k in labels} for m in METRICS},
                      **({"empty_reference": [str(k) for k in case["empty_reference"]]}
                         if "empty_reference" in case else {})}
                     for case in per_case],
        "mean": mean,
        "foreground_mean": foreground_mean,
        "n_cases": len(per_case),
        "n_empty_both": {str(k): int(sum(math.isnan(case["dice"][k]) for case in per_case)) for k in labels},
    }


def evaluate_folders(reference_folder: os.PathLike | str, prediction_folder: os.PathLike | str,
                     labels: Mapping[int, str], tolerances_mm: Mapping[int, float],
                     file_ending: Optional[str] = None, allow_missing: bool = False, num_processes: int = 1,
                     notes: Sequence[str] = (), progress: bool = True, ignore_other_labels: bool = False) -> Dict:
    """Evaluate every reference case against the prediction of the same name.

    Args:
        reference_folder: folder of reference label maps ``<case><file_ending>``.
        prediction_folder: folder of predicted label maps with the same names (other files are ignored).
        labels: foreground label value -> name.
        tolerances_mm: NSD tolerance in mm per label value.
        file_ending: e.g. ``.nii.gz``; inferred from the reference folder when None.
        allow_missing: evaluate the cases that have predictions and record the others in
            ``missing_predictions`` (``complete`` false) instead of failing.
        num_processes: worker processes (cases run in parallel); 1 runs in this process.
        notes: caveats copied into the summary's ``notes``.
        progress: show a tqdm progress bar.
        ignore_other_labels: score ``labels`` only; other label values in the maps count as background for them
            (``evaluate --labels``) and the summary lists them in ``ignored_label_values`` and its notes.
            Otherwise a value outside ``labels`` is an error.
    Returns:
        The summary dictionary (see the module docstring).
    Raises:
        EvaluationInputError: missing folders or predictions, headers that differ or truncated/corrupt files
            (checked for all cases before any metric is computed), label values outside the label set (per
            case), naming the case and file.
    """
    from tqdm import tqdm

    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    for role, folder in (("reference", reference_folder), ("prediction", prediction_folder)):
        if not folder.is_dir():
            raise EvaluationInputError(f"{role} folder {folder} does not exist")
    if not labels:
        raise EvaluationInputError("no foreground labels to evaluate")
    missing_tolerance = [k for k in labels if k not in tolerances_mm]
    if missing_tolerance:
        raise EvaluationInputError(f"no NSD tolerance for labels {missing_tolerance}")
    file_ending = file_ending or file_ending_of(reference_folder)
    references = case_files(reference_folder, file_ending)
    predictions = case_files(prediction_folder, file_ending)
    if not references:
        raise EvaluationInputError(f"no reference files *{file_ending} in {reference_folder}")
    missing = sorted(set(references) - set(predictions))
    if missing and not allow_missing:
        raise EvaluationInputError(f"{len(missing)} of {len(references)} cases have no prediction in "
                                   f"{prediction_folder}: {', '.join(missing[:10])}"
                                   f"{' ...' if len(missing) > 10 else ''}"
                                   f" (use --allow-missing to evaluate the others)")
    extra = sorted(set(predictions) - set(references))
    if extra:
        print(f"warning: {len(extra)} predictions have no reference and are ignored: {', '.join(extra[:5])}",
              file=sys.stderr)
    cases = [c for c in references if c in predictions]
    if not cases:
        raise EvaluationInputError(f"none of the {len(references)} reference cases has a prediction in "
                                   f"{prediction_folder}")

    # Headers and complete files first: a geometry error or a truncated file (which SimpleITK would read as
    # zeros) should not surface after an hour of NSD computations, nor be scored at all.
    for case in tqdm(cases, desc="checking files", unit="case", disable=not progress):
        try:
            reference, prediction = read_geometry(references[case]), read_geometry(predictions[case])
            check_image_file_complete(references[case])
            check_image_file_complete(predictions[case])
        except ImageHeaderError as error:
            raise EvaluationInputError(f"case {case}: {error}") from None
        except OSError as error:
            raise EvaluationInputError(f"case {case}: cannot read {error.filename}: {error.strerror}") from None
        for role, geometry, path in (("reference", reference, references[case]),
                                     ("prediction", prediction, predictions[case])):
            if geometry.components != 1:
                raise EvaluationInputError(f"case {case}: {role} {path} has {geometry.components} components per "
                                           f"voxel; a label map has one")
        problem = geometry_mismatch(reference, prediction)
        if problem:
            raise EvaluationInputError(f"case {case}: prediction {predictions[case]} does not match its reference "
                                       f"{references[case]}: {problem} (reference vs prediction)")

    label_list = sorted(labels)
    tasks = [(case, references[case], predictions[case], label_list, dict(tolerances_mm), ignore_other_labels)
             for case in cases]
    bar = tqdm(total=len(tasks), desc="evaluating", unit="case", disable=not progress)
    per_case = []
    if num_processes <= 1 or len(tasks) == 1:
        for task in tasks:
            per_case.append(_evaluate_task(task))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(num_processes, len(tasks)), initializer=_init_worker) as pool:
            for result in pool.imap(_evaluate_task, tasks):
                per_case.append(result)
                bar.update()
    bar.close()

    others = [case.pop(OTHER_VALUES_KEY, {}) for case in per_case]
    ignored = {role: sorted({v for found in others for v in found.get(role, [])})
               for role in ("reference", "prediction")}
    summary = summarize(per_case, {k: labels[k] for k in label_list}, tolerances_mm)
    if ignore_other_labels:
        summary["ignored_label_values"] = ignored
        notes = list(notes) + [f"only labels {label_list} were scored; label values {values} in the {role} were "
                               f"ignored (background for the scored labels)"
                               for role, values in ignored.items() if values]
    summary["missing_predictions"] = missing
    summary["complete"] = not missing
    summary["notes"] = list(notes) + ([f"{len(missing)} of {len(references)} reference cases had no prediction "
                                       f"and were left out"] if missing else [])
    summary["reference_folder"] = str(reference_folder.resolve())
    summary["prediction_folder"] = str(prediction_folder.resolve())
    return summary


def write_case_csv(summary: Mapping, path: os.PathLike | str) -> None:
    """Per-case metrics of a summary as CSV rows ``case,label,name,dice,nsd,iou`` (empty cell = both empty),
    written to a temporary name and renamed."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label", "name", *summary["metrics"]])
        for case in summary["per_case"]:
            for label, name in summary["labels"].items():
                writer.writerow([case["case"], label, name,
                                 *["" if case[m][label] is None else repr(case[m][label]) for m in summary["metrics"]]])
