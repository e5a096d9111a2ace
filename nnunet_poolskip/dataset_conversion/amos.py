"""Convert the AMOS 2022 download to an nnU-Net raw data set with a modality-stratified test set.

Input: the AMOS 2022 folder (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesVa``, ``labelsVa``; ``imagesTs``
is unlabelled and ignored). All labelled scans (Tr and Va; 300 CT + 60 MRI in the full release) are pooled,
as the paper does, then split into test and train+val by the split file (shipped: 1/3 test, per modality).

Output: ``<nnUNet_raw>/DatasetXXX_AMOS`` (``AMOS_CT`` / ``AMOS_MRI`` with ``--modality``), laid out like the
BTCV conversion. Channel name and image reader follow nnU-Net's own AMOS conversions
(``nnunetv2/dataset_conversion/Dataset218_Amos2022_task1.py`` and ``Dataset219_Amos2022_task2.py``): see
``CHANNEL_NAMES`` and ``NORMALISATION_NOTES``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

from nnunet_poolskip.dataset_conversion.checks import (
    ConversionError,
    SourceCase,
    check_unique_ids,
    pair_images_and_labels,
    scan_nifti_folder,
)
from nnunet_poolskip.dataset_conversion.labels import max_label, nnunet_labels
from nnunet_poolskip.dataset_conversion.layouts import (
    AMOS_CASE_PATTERN,
    AMOS_LABELLED_FOLDERS,
    AMOS_MRI_MIN_NUMBER,
    amos_case_id,
    amos_modality,
    split_nifti_name,
)
from nnunet_poolskip.dataset_conversion.raw_dataset import (
    ConversionResult,
    convert_dataset,
    dataset_folder_name,
    summarize,
)

DEFAULT_DATASET_ID = 218
SPLIT_DATASET = "AMOS2022"
MODALITIES = ("all", "ct", "mri")
DEFAULT_MODALITY = "all"  # the paper pools CT and MRI
DATASET_NAMES = {"all": "AMOS", "ct": "AMOS_CT", "mri": "AMOS_MRI"}
# nnU-Net picks the normalisation from the channel name: "CT" -> CTNormalization (clipping to the data set's
# foreground percentiles, then its mean/std), anything unknown -> per-image z-score. "either_CT_or_MR" is the
# name nnU-Net's own mixed-modality AMOS conversion (Dataset219, task 2) uses.
CHANNEL_NAMES = {"all": "either_CT_or_MR", "ct": "CT", "mri": "MRI"}
# nnU-Net's AMOS conversions read AMOS with this reader (it reorients every image to RAS).
IMAGE_READER = "NibabelIOWithReorient"
NORMALISATION_NOTES = {
    "all": ("CT and MRI mixed: channel 0 is named 'either_CT_or_MR' as in nnU-Net's own AMOS task-2 conversion "
            "(Dataset219_Amos2022_task2), so nnU-Net normalises each image by its own mean and standard deviation "
            "(ZScoreNormalization); CT normalisation would clip MRI intensities to CT Hounsfield percentiles. "
            "Images are read with NibabelIOWithReorient, as in nnU-Net's AMOS conversions."),
    "ct": ("CT only: channel 0 is 'CT' as in nnU-Net's AMOS task-1 conversion (Dataset218_Amos2022_task1), so "
           "nnU-Net uses CTNormalization. Images are read with NibabelIOWithReorient, as there."),
    "mri": ("MRI only: channel 0 is 'MRI', which nnU-Net normalises per image (ZScoreNormalization). Images are "
            "read with NibabelIOWithReorient, as in nnU-Net's AMOS conversions."),
}


def is_amos_case_id(case_id: str) -> bool:
    """Whether ``case_id`` looks like an AMOS case id (``amos_0001``)."""
    match = AMOS_CASE_PATTERN.match(case_id)
    return match is not None and len(match.group(1)) == 4


def _listed_ids(source: Path) -> Dict[str, str]:
    """``{case id: section}`` of the labelled cases the download's dataset.json lists."""
    path = source / "dataset.json"
    if not path.is_file():
        raise ConversionError(f"{source} is not the AMOS 2022 layout: missing dataset.json (expected dataset.json, "
                              f"imagesTr, labelsTr, imagesVa, labelsVa)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    listed = {}
    for section in ("training", "validation"):
        entries = data.get(section, []) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConversionError(f"{path}: {section!r} must be a list of {{'image': ..., 'label': ...}}")
        for entry in entries:
            image = entry.get("image") if isinstance(entry, dict) else None
            parts = split_nifti_name(Path(str(image)).name) if image else None
            if parts is None:
                raise ConversionError(f"{path}: {section!r} entry {entry!r} has no NIfTI 'image'")
            listed[parts[0]] = section
    return listed


def discover_amos(source: Path, modality: str = "all") -> List[SourceCase]:
    """The labelled cases (Tr and Va) of an AMOS 2022 download, restricted to ``modality``, sorted by id.

    Raises:
        ConversionError: wrong layout, unexpected or duplicate files (also the same id in Tr and Va), an image
            without label or the reverse, a case dataset.json lists but the folders lack, no case of the
            requested modality.
    """
    if modality not in MODALITIES:
        raise ConversionError(f"--modality must be one of {MODALITIES}, got {modality!r}")
    missing = [name for pair in AMOS_LABELLED_FOLDERS for name in pair if not (source / name).is_dir()]
    if missing:
        raise ConversionError(f"{source} is not the AMOS 2022 layout: missing {', '.join(missing)} (expected "
                              f"dataset.json, imagesTr, labelsTr, imagesVa, labelsVa)")
    listed = _listed_ids(source)
    cases: List[SourceCase] = []
    for images_name, labels_name in AMOS_LABELLED_FOLDERS:
        images = scan_nifti_folder(source / images_name, AMOS_CASE_PATTERN, f"AMOS {images_name}",
                                   "amos_0001.nii.gz", amos_case_id)
        labels = scan_nifti_folder(source / labels_name, AMOS_CASE_PATTERN, f"AMOS {labels_name}",
                                   "amos_0001.nii.gz", amos_case_id)
        numbers = pair_images_and_labels(images, labels, amos_case_id, f"{source}/{images_name}+{labels_name}")
        cases += [SourceCase(amos_case_id(n), images[n], labels[n], amos_modality(n)) for n in numbers]
    check_unique_ids(cases)  # the same case in Tr and Va
    by_id = {case.case_id: case for case in cases}
    absent = sorted(set(listed) - set(by_id))
    if absent:
        raise ConversionError(f"{source / 'dataset.json'} lists case {absent[0]} ({listed[absent[0]]}) but its "
                              f"image/label files are missing ({len(absent)} such case(s)): incomplete download?")
    selected = [by_id[i] for i in sorted(by_id) if modality == "all" or by_id[i].stratum == modality]
    if not selected:
        rule = f"ids >= {AMOS_MRI_MIN_NUMBER}" if modality == "mri" else f"ids < {AMOS_MRI_MIN_NUMBER}"
        raise ConversionError(f"no {modality.upper()} cases ({rule}) in {source}")
    return selected


def amos_dataset_json(modality: str, train: List[SourceCase], test: List[SourceCase]) -> Dict:
    """Keyword arguments of nnU-Net's generate_dataset_json for the converted AMOS."""
    strata = {c.case_id: c.stratum for c in train + test}
    return dict(
        channel_names={0: CHANNEL_NAMES[modality]}, labels=nnunet_labels("amos"), file_ending=".nii.gz",
        dataset_name=DATASET_NAMES[modality], reference="https://amos22.grand-challenge.org/",
        release="https://zenodo.org/record/7262581", license="see the AMOS 2022 release (zenodo 7262581)",
        converted_by="nnunet-poolskip convert-amos", overwrite_image_reader_writer=IMAGE_READER,
        description=(f"AMOS 2022 labelled scans (imagesTr + imagesVa of the release), modality {modality}, 15 "
                     f"organs. Train+val {summarize(strata, [c.case_id for c in train])} in imagesTr (5-fold "
                     f"splits_final.json), test {summarize(strata, [c.case_id for c in test])} in "
                     f"imagesTs/labelsTs. Normalisation: see normalisation_note."),
        normalisation_note=NORMALISATION_NOTES[modality],
        modalities_included=modality,  # not "modality": nnU-Net reads that key as the old channel_names
        numTest=len(test),
    )


def convert_amos(source: Union[str, os.PathLike], dataset_id: int = DEFAULT_DATASET_ID,
                 modality: str = DEFAULT_MODALITY, split_file: Optional[Union[str, os.PathLike]] = None,
                 output_root: Optional[str] = None,
                 overwrite: bool = False, progress: bool = True) -> ConversionResult:
    """Convert an AMOS 2022 download (see the module docstring).

    Args:
        source: the AMOS 2022 folder (with dataset.json, imagesTr, ...).
        dataset_id: nnU-Net data set id (1..999).
        modality: "all" (CT and MRI), "ct" (ids <= 500) or "mri" (ids > 500).
        split_file: test/train split file (default: the shipped ``amos_split.json``; ``none``: no test
            split, every case in the cross-validation).
        output_root: nnU-Net raw folder (default ``$nnUNet_raw``).
        overwrite: replace an existing output.
        progress: show progress bars.

    Raises:
        ConversionError: any bad input (nothing is written then).
    """
    from nnunet_poolskip.dataset_conversion.splits import resolve_split_file

    if modality not in MODALITIES:
        raise ConversionError(f"--modality must be one of {MODALITIES}, got {modality!r}")
    source = Path(source).expanduser()
    return convert_dataset(
        command="convert-amos", split_dataset=SPLIT_DATASET, valid_id=is_amos_case_id, source=source,
        folder_name=dataset_folder_name(dataset_id, DATASET_NAMES[modality]),
        split_file=resolve_split_file(split_file, "amos"), output_root=output_root,
        overwrite=overwrite, discover=lambda: discover_amos(source, modality), max_label=max_label("amos"),
        dataset_json=lambda train, test: amos_dataset_json(modality, train, test),
        settings={"dataset_id": dataset_id, "modality": modality}, progress=progress)
