"""DICOM SEG output of ``predict --output-type dicom-seg``: the label map of a DICOM series as a Segmentation object
(highdicom) that references the source series, so that PACS viewers and 3D Slicer show it over the scan.

One segment per foreground label of the data set, labelled with dataset.json's names, segment number = label value;
the algorithm identification names this package, the trainer, the plans, the configuration and the folds. Frames are
the source slices in the order SimpleITK stacks the series (the label map's z order, rows and columns as stored in
the DICOM files, so no flip is involved); empty frames are left out, as highdicom does by default.

A SEG must reference its source images by their UIDs: a series anonymised without them (empty StudyInstanceUID,
SeriesInstanceUID, SOPInstanceUID or SOPClassUID) cannot be referenced, and :func:`check_referencable` refuses it
before any prediction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError
from nnunet_poolskip.utilities.atomic import temporary_sibling

SEG_ENDING = ".seg.dcm"
SEGMENTATION_TYPES = ("BINARY", "LABELMAP")
#: Attributes a SEG copies or references from its source images; empty in a series it cannot reference.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
#: Local coding scheme for segment types: the data set's own label names (no SNOMED code is known for them).
LABEL_SCHEME = "99NNUNETPOOLSKIP"


@dataclass(frozen=True)
class Algorithm:
    """What made the segmentation, for the SEG's algorithm identification."""

    version: str
    trainer: str
    plans: str
    configuration: str
    folds: str
    dataset: str


def check_referencable(files: Sequence[os.PathLike | str], series_label: str) -> None:
    """Raise unless every slice carries the UIDs a SEG must reference.

    Args:
        files: the series' DICOM files.
        series_label: the series in words, for the message.
    Raises:
        PredictionInputError: naming the series, the first file and the empty attributes.
    """
    import pydicom

    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        empty = [name for name in REQUIRED_UIDS if not str(dataset.get(name, "") or "").strip()]
        if empty:
            raise PredictionInputError(
                f"--output-type dicom-seg: DICOM series {series_label}: {path} has no {', '.join(empty)} (anonymised "
                f"without UIDs?); a DICOM SEG must reference its source images by these UIDs, so it cannot be made "
                f"for this series: use --output-type nifti")


def label_names(dataset_json: Mapping) -> dict:
    """Foreground label value -> name from dataset.json (``{"labels": {"background": 0, "liver": 1, ...}}``).

    Raises:
        PredictionInputError: a region-based data set (label values that are lists), or labels that are not
            1, 2, ... without gaps (a SEG's segment numbers must be).
    """
    names = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise PredictionInputError("--output-type dicom-seg: region-based models (label values that are lists "
                                       "in dataset.json) are not supported")
        if int(value) != 0:
            names[int(value)] = str(name)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise PredictionInputError(f"--output-type dicom-seg: dataset.json labels {sorted(names)} are not 1..N")
    return names


def write_dicom_seg(label_map: np.ndarray, source_files: Sequence[os.PathLike | str], labels: Mapping[int, str],
                    path: os.PathLike | str, algorithm: Algorithm, segmentation_type: str = "BINARY") -> Path:
    """Write ``label_map`` as a DICOM SEG referencing the source series (atomically: temporary name, then rename).

    Args:
        label_map: (slices, rows, columns) label values, slice i on ``source_files[i]`` (SimpleITK's series order,
            i.e. ``sitk.GetArrayFromImage`` of the series or of the label map predicted for it).
        source_files: the series' DICOM files in that order (pixel data is not read).
        labels: foreground label value -> name (:func:`label_names`); every value in ``label_map`` but 0 must be one.
        path: the SEG file to write.
        algorithm: what made it (see :class:`Algorithm`).
        segmentation_type: ``BINARY`` (one bit per voxel and segment, read by every SEG viewer) or ``LABELMAP``
            (DICOM's newer label map SEG, one value per voxel).
    Returns:
        ``path``.
    Raises:
        ValueError: shapes that do not match the series, or label values without a name.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if label_map.shape != (len(sources), rows, columns):
        raise ValueError(f"label map shape {label_map.shape} does not match the series ({len(sources)} slices of "
                         f"{rows} x {columns})")
    unknown = sorted(set(np.unique(label_map).tolist()) - set(labels) - {0})
    if unknown:
        raise ValueError(f"label values {unknown} have no name in the data set's labels {dict(labels)}")
    family = codes.cid7162.ArtificialIntelligence
    identification = hd.AlgorithmIdentificationSequence(
        name="nnunet-poolskip", family=family, version=algorithm.version, source="nnunet-poolskip",
        parameters={"trainer": algorithm.trainer, "plans": algorithm.plans, "configuration": algorithm.configuration,
                    "folds": algorithm.folds, "dataset": algorithm.dataset,
                    "ensemble": "mean of the folds' softmax probabilities"})
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value, segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(value=f"label{value}", scheme_designator=LABEL_SCHEME,
                                                       meaning=name[:64]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification)
        for value, name in sorted(labels.items())]
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=label_map.astype(dtype), segmentation_type=segmentation_type,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet-poolskip",
        manufacturer_model_name=f"{algorithm.trainer} ({algorithm.dataset})", software_versions=algorithm.version,
        device_serial_number="none", series_description=f"nnunet-poolskip {algorithm.trainer}"[:64],
        content_label="SEGMENTATION", content_description=f"{algorithm.trainer} fold ensemble"[:64])
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        segmentation.save_as(str(temporary))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path
