"""Facts about the raw download layouts of BTCV and AMOS 2022, shared by the phantoms and the converters.

BTCV (Synapse "RawData.zip", 30 labelled abdominal CTs)::

    RawData/Training/img/img0001.nii.gz      RawData/Training/label/label0001.nii.gz
    RawData/Testing/img/img0061.nii.gz       (20 unlabelled test CTs; not used by the converter)

AMOS 2022 (zenodo 7262581, "amos22")::

    dataset.json
    imagesTr/amos_0001.nii.gz   labelsTr/amos_0001.nii.gz     (240 labelled: 200 CT + 40 MRI)
    imagesVa/amos_0008.nii.gz   labelsVa/amos_0008.nii.gz     (120 labelled: 100 CT + 20 MRI)
    imagesTs/...                                              (unlabelled; not used by the converter)

AMOS case numbers above 500 are MRI, the others CT.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

NIFTI_ENDINGS = (".nii.gz", ".nii")

# BTCV
BTCV_RAW_ROOT = "RawData"
BTCV_TRAINING_IMAGES = ("Training", "img")
BTCV_TRAINING_LABELS = ("Training", "label")
BTCV_TESTING_IMAGES = ("Testing", "img")
BTCV_IMAGE_PATTERN = re.compile(r"^img(\d+)$")
BTCV_LABEL_PATTERN = re.compile(r"^label(\d+)$")
# The case numbers of the 30 labelled BTCV training CTs, in download order.
BTCV_TRAINING_NUMBERS: Tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 41))
BTCV_TESTING_FIRST_NUMBER = 61

# AMOS 2022
AMOS_LABELLED_FOLDERS = (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa"))
AMOS_UNLABELLED_FOLDER = "imagesTs"
AMOS_CASE_PATTERN = re.compile(r"^amos_(\d+)$")
AMOS_MRI_MIN_NUMBER = 501


def btcv_case_id(number: int) -> str:
    """nnU-Net case identifier of BTCV case ``number``: ``img0001``."""
    return f"img{number:04d}"


def btcv_image_name(number: int) -> str:
    """File name of a BTCV image in the download: ``img0001.nii.gz``."""
    return f"img{number:04d}.nii.gz"


def btcv_label_name(number: int) -> str:
    """File name of a BTCV label map in the download: ``label0001.nii.gz``."""
    return f"label{number:04d}.nii.gz"


def amos_case_id(number: int) -> str:
    """AMOS case identifier (also its file stem in the download and in nnU-Net): ``amos_0001``."""
    return f"amos_{number:04d}"


def amos_modality(number: int) -> str:
    """"mri" for AMOS case numbers above 500, else "ct"."""
    return "mri" if number >= AMOS_MRI_MIN_NUMBER else "ct"


def split_nifti_name(name: str) -> Optional[Tuple[str, str]]:
    """``(stem, ending)`` of a NIfTI file name (``.nii.gz`` or ``.nii``), or None for anything else."""
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None
