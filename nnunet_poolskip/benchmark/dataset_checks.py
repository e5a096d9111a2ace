"""Checks of an nnU-Net data set the user brings (``--dataset DatasetXXX_Name``), before any long work.

The benchmark compares models on any nnU-Net raw data set: label names from its dataset.json, any number of input
channels, any file ending nnU-Net reads (its own reader/writer classes read the files here too). What it refuses,
each with a message naming the data set, case, channel or file:

- a dataset.json that is missing, unreadable, or lacks ``labels`` or ``channel_names`` (``modality`` in old ones);
- region-based labels (a label whose value is a list of values, nnU-Net's ``regions_class_order``) and the ignore
  label: the evaluation scores one integer value per organ and every voxel of the reference;
- a labelsTr case without an image for every channel, an image without its label;
- label values in labelsTr that dataset.json does not list (read from every label file: only before the
  preprocessing, which is where nnU-Net would otherwise stop on them, or train on them silently).

Nothing is written: the raw data is never modified.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from nnunet_poolskip.benchmark.config import BenchmarkError


@dataclass(frozen=True)
class RawDatasetFacts:
    """What the checks found in a raw data set.

    Attributes:
        folder: the data set's folder in nnUNet_raw.
        labels: foreground label value -> name (background left out).
        channels: channel index -> name, as dataset.json lists them.
        file_ending: the data set's file ending (``.nii.gz``, ``.png``, ...).
        training_cases: case ids of labelsTr, sorted.
    """

    folder: Path
    labels: Dict[int, str]
    channels: Dict[int, str]
    file_ending: str
    training_cases: List[str]


def read_dataset_json(folder: Path) -> Dict:
    """dataset.json of a raw data set as a dict (BenchmarkError naming the file when missing or unreadable)."""
    path = folder / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"data set {folder.name}: {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkError(f"data set {folder.name}: {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"data set {folder.name}: {path} must hold a JSON object")
    return data


def dataset_labels(folder: Path, dataset_json: Dict) -> Dict[int, str]:
    """Foreground label value -> name of a dataset.json (nnU-Net's ``{"name": value}`` or the Decathlon's
    ``{"value": "name"}``); BenchmarkError for a missing ``labels``, region-based labels or an ignore label."""
    where = f"data set {folder.name} ({folder / 'dataset.json'})"
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise BenchmarkError(f"{where} has no 'labels' object: nnU-Net needs {{\"background\": 0, \"organ\": 1, ...}}")
    if all(str(k).isdigit() and isinstance(v, str) for k, v in labels.items()):
        labels = {name: int(value) for value, name in labels.items()}
    if "ignore" in labels:
        raise BenchmarkError(f"{where} has an ignore label (value {labels['ignore']}): not supported by this "
                             f"benchmark, whose evaluation scores every voxel of the reference; remove it from "
                             f"dataset.json and the label maps in a copy of the data set")
    regions = [name for name, value in labels.items() if isinstance(value, (list, tuple))]
    if regions or "regions_class_order" in dataset_json:
        raise BenchmarkError(f"{where} uses region-based labels ({', '.join(regions) or 'regions_class_order'}): not "
                             f"supported by this benchmark, which scores one integer label value per organ; "
                             f"convert the data set to plain labels")
    result = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BenchmarkError(f"{where}: label {name!r} has value {value!r}; labels must be non-negative integers")
        if value != 0:
            result[value] = name
    if not result:
        raise BenchmarkError(f"{where} lists no foreground label")
    return dict(sorted(result.items()))


def dataset_channels(folder: Path, dataset_json: Dict) -> Dict[int, str]:
    """Channel index -> name (``channel_names``, or ``modality`` of older dataset.json files); BenchmarkError when
    neither is there or the indices are not 0..n-1."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise BenchmarkError(f"data set {folder.name} ({folder / 'dataset.json'}) has no 'channel_names' object: "
                             f"nnU-Net needs {{\"0\": \"CT\", ...}}, one entry per input channel")
    try:
        result = {int(k): str(v) for k, v in channels.items()}
    except ValueError:
        raise BenchmarkError(f"data set {folder.name}: 'channel_names' keys must be channel numbers 0, 1, ..., got "
                             f"{sorted(channels)}") from None
    if sorted(result) != list(range(len(result))):
        raise BenchmarkError(f"data set {folder.name}: 'channel_names' must number the channels 0..{len(result) - 1}, "
                             f"got {sorted(result)}")
    return dict(sorted(result.items()))


def check_raw_dataset(folder: Path, read_labels: bool = True) -> RawDatasetFacts:
    """Check an nnU-Net raw data set (see the module docstring) and return what it holds.

    Args:
        folder: ``nnUNet_raw/DatasetXXX_Name``.
        read_labels: also read every label map of labelsTr (with nnU-Net's reader for the file ending) and
            refuse values that dataset.json does not list; False checks only dataset.json and the file names.

    Raises:
        BenchmarkError: naming the data set and the case, channel or file.
    """
    data = read_dataset_json(folder)
    labels = dataset_labels(folder, data)
    channels = dataset_channels(folder, data)
    ending = data.get("file_ending", ".nii.gz")
    images, references = folder / "imagesTr", folder / "labelsTr"
    for sub in (images, references):
        if not sub.is_dir():
            raise BenchmarkError(f"data set {folder.name}: {sub} does not exist")
    cases = sorted(p.name[:-len(ending)] for p in references.iterdir()
                   if p.is_file() and p.name.endswith(ending) and not p.name.startswith("."))
    if not cases:
        raise BenchmarkError(f"data set {folder.name}: no label maps *{ending} in {references} (dataset.json's "
                             f"file_ending is {ending!r})")
    present = {p.name for p in images.iterdir() if p.is_file()}
    for case in cases:
        for channel, name in channels.items():
            expected = f"{case}_{channel:04d}{ending}"
            if expected not in present:
                raise BenchmarkError(f"data set {folder.name}: case {case} has no image for channel {channel} "
                                     f"({name}): {images / expected} is missing")
    unlabelled = sorted(name[:-len(f"_0000{ending}")] for name in present if name.endswith(f"_0000{ending}")
                        and name[:-len(f"_0000{ending}")] not in set(cases))
    if unlabelled:
        raise BenchmarkError(f"data set {folder.name}: images without a label map in {references}: "
                             f"{', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}")
    if read_labels:
        check_label_values(folder, data, cases, labels, ending)
    return RawDatasetFacts(folder, labels, channels, ending, cases)


def check_label_values(folder: Path, dataset_json: Dict, cases: List[str], labels: Dict[int, str],
                       ending: str) -> None:
    """Refuse a labelsTr map holding a value that dataset.json does not list (read with nnU-Net's reader for the
    data set's file ending, as its preprocessing reads it)."""
    import numpy as np
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    references = folder / "labelsTr"
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(references / f"{cases[0]}{ending}"),
                                                       verbose=False)()
    allowed = {0, *labels}
    for case in cases:
        path = references / f"{case}{ending}"
        segmentation, _ = reader.read_seg(str(path))
        values = np.unique(segmentation)
        unknown = sorted(int(v) if float(v).is_integer() else float(v) for v in values if v not in allowed)
        if unknown:
            raise BenchmarkError(f"data set {folder.name}: case {case}: {path} holds label values {unknown} that "
                                 f"dataset.json does not list (its labels: {sorted(allowed)})")

