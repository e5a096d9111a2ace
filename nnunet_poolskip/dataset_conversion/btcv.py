"""Convert the BTCV download (``RawData/Training/{img,label}``) to an nnU-Net raw data set with a test set.

Output: ``<nnUNet_raw>/DatasetXXX_BTCV`` with imagesTr/labelsTr (train+val), imagesTs/labelsTs (test),
dataset.json (the 13 labels of ``nnunet_poolskip.dataset_conversion.labels``, channel "CT", i.e. nnU-Net's CT
normalisation), splits_final.json (5 folds) and nnunet_poolskip_conversion.json (split and provenance). Files are copied
byte for byte, so their geometry is the source's. See ``nnunet_poolskip.dataset_conversion.raw_dataset`` for the checks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Union

from nnunet_poolskip.dataset_conversion.checks import (
    ConversionError,
    SourceCase,
    pair_images_and_labels,
    scan_nifti_folder,
)
from nnunet_poolskip.dataset_conversion.labels import max_label, nnunet_labels
from nnunet_poolskip.dataset_conversion.layouts import (
    BTCV_IMAGE_PATTERN,
    BTCV_LABEL_PATTERN,
    BTCV_RAW_ROOT,
    BTCV_TRAINING_IMAGES,
    BTCV_TRAINING_LABELS,
    btcv_case_id,
)
from nnunet_poolskip.dataset_conversion.raw_dataset import ConversionResult, convert_dataset, dataset_folder_name

DEFAULT_DATASET_ID = 17
DATASET_NAME = "BTCV"
SPLIT_DATASET = "BTCV"


def is_btcv_case_id(case_id: str) -> bool:
    """Whether ``case_id`` looks like a BTCV case id (``img0001``)."""
    return len(case_id) == 7 and case_id.startswith("img") and case_id[3:].isdigit()


def btcv_training_root(source: Path) -> Path:
    """The folder that holds ``Training/``: ``SOURCE/RawData`` (the unzipped download) or SOURCE itself.

    Raises:
        ConversionError: neither holds ``Training/img`` and ``Training/label``.
    """
    for candidate in (source / BTCV_RAW_ROOT, source):
        if (candidate.joinpath(*BTCV_TRAINING_IMAGES).is_dir()
                and candidate.joinpath(*BTCV_TRAINING_LABELS).is_dir()):
            return candidate
    raise ConversionError(f"{source} is not the BTCV download layout: expected "
                          f"{source / BTCV_RAW_ROOT}/Training/img/img0001.nii.gz and "
                          f"{source / BTCV_RAW_ROOT}/Training/label/label0001.nii.gz")


def discover_btcv(source: Path) -> List[SourceCase]:
    """The labelled cases of a BTCV download, sorted by case number.

    Raises:
        ConversionError: wrong layout, unexpected or duplicate files, an image without label or the reverse.
    """
    root = btcv_training_root(source)
    images = scan_nifti_folder(root.joinpath(*BTCV_TRAINING_IMAGES), BTCV_IMAGE_PATTERN, "BTCV Training/img",
                               "img0001.nii.gz", btcv_case_id)
    labels = scan_nifti_folder(root.joinpath(*BTCV_TRAINING_LABELS), BTCV_LABEL_PATTERN, "BTCV Training/label",
                               "label0001.nii.gz", btcv_case_id)
    numbers = pair_images_and_labels(images, labels, btcv_case_id, str(root / "Training"))
    return [SourceCase(btcv_case_id(n), images[n], labels[n], "ct") for n in numbers]


def btcv_dataset_json(train: List[SourceCase], test: List[SourceCase]) -> Dict:
    """Keyword arguments of nnU-Net's generate_dataset_json for the converted BTCV."""
    return dict(
        channel_names={0: "CT"}, labels=nnunet_labels("btcv"), file_ending=".nii.gz", dataset_name=DATASET_NAME,
        reference="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
        release="Multi-Atlas Labeling Beyond the Cranial Vault (BTCV), RawData.zip",
        license="see the BTCV terms of use on Synapse (syn3193805)",
        converted_by="nnunet-poolskip convert-btcv",
        description=(f"BTCV abdominal CT, 13 organs. {len(train)} train+val cases (imagesTr, 5-fold "
                     f"splits_final.json) and {len(test)} test cases (imagesTs/labelsTs), split by the split file "
                     f"recorded in nnunet_poolskip_conversion.json. Channel 'CT': nnU-Net's CT normalisation."),
        numTest=len(test),
    )


def convert_btcv(source: Union[str, os.PathLike], dataset_id: int = DEFAULT_DATASET_ID,
                 split_file: Optional[Union[str, os.PathLike]] = None, output_root: Optional[str] = None,
                 overwrite: bool = False, progress: bool = True) -> ConversionResult:
    """Convert a BTCV download to ``DatasetXXX_BTCV`` (see the module docstring).

    Args:
        source: the folder holding ``RawData/`` (or ``RawData`` itself).
        dataset_id: nnU-Net data set id (1..999).
        split_file: test/train split file (default: the shipped ``btcv_split.json``; ``none``: no test
            split, every case in the cross-validation).
        output_root: nnU-Net raw folder (default ``$nnUNet_raw``).
        overwrite: replace an existing output.
        progress: show progress bars.

    Raises:
        ConversionError: any bad input (nothing is written then).
    """
    from nnunet_poolskip.dataset_conversion.splits import resolve_split_file

    source = Path(source).expanduser()
    return convert_dataset(
        command="convert-btcv", split_dataset=SPLIT_DATASET, valid_id=is_btcv_case_id, source=source,
        folder_name=dataset_folder_name(dataset_id, DATASET_NAME),
        split_file=resolve_split_file(split_file, "btcv"), output_root=output_root,
        overwrite=overwrite, discover=lambda: discover_btcv(source), max_label=max_label("btcv"),
        dataset_json=btcv_dataset_json, settings={"dataset_id": dataset_id}, progress=progress)
