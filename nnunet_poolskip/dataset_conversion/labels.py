"""Label tables of BTCV and AMOS 2022: the single source of truth for label values and organ names.

Values are the ones in the data sets' own label files (BTCV: 13 organs, AMOS 2022: 15 organs); 0 is
background in both. Names follow DESIGN.md (the AMOS download's own dataset.json spells some of them
differently, e.g. "gall bladder" and "arota": see ``AMOS_DOWNLOAD_LABEL_NAMES``).
"""
from __future__ import annotations

from typing import Dict

KINDS = ("btcv", "amos")

BTCV_LABELS: Dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

AMOS_LABELS: Dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "postcava (IVC)",
    10: "pancreas",
    11: "right adrenal gland",
    12: "left adrenal gland",
    13: "duodenum",
    14: "bladder",
    15: "prostate/uterus",
}

# The label names exactly as the AMOS 2022 download's dataset.json writes them (typos included): the phantoms'
# imitation of that file, and download_name_aliases() for evaluating with it. Values are the same as AMOS_LABELS.
AMOS_DOWNLOAD_LABEL_NAMES: Dict[int, str] = {
    0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gall bladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "arota", 9: "postcava", 10: "pancreas", 11: "right adrenal gland",
    12: "left adrenal gland", 13: "duodenum", 14: "bladder", 15: "prostate/uterus",
}


def download_name_aliases() -> Dict[str, str]:
    """The downloads' own spellings of organ names -> this project's names, where they differ.

    For matching organ names read from a download's dataset.json (e.g. NSD tolerance tables matched by name):
    ``{"gall bladder": "gallbladder", "arota": "aorta", "postcava": "postcava (IVC)"}`` from AMOS 2022 (BTCV's
    download has no dataset.json).
    """
    return {AMOS_DOWNLOAD_LABEL_NAMES[value]: name for value, name in AMOS_LABELS.items()
            if AMOS_DOWNLOAD_LABEL_NAMES[value] != name}


def label_table(kind: str) -> Dict[int, str]:
    """Foreground labels of a data set as ``{value: organ name}`` (background 0 not included).

    Args:
        kind: "btcv" or "amos" (case-insensitive).

    Raises:
        ValueError: unknown kind.
    """
    key = kind.lower()
    if key == "btcv":
        return dict(BTCV_LABELS)
    if key == "amos":
        return dict(AMOS_LABELS)
    raise ValueError(f"unknown data set kind {kind!r}; expected one of {KINDS}")


def max_label(kind: str) -> int:
    """The largest label value of a data set (labels run 0..max_label without gaps)."""
    return max(label_table(kind))


def nnunet_labels(kind: str) -> Dict[str, int]:
    """The ``labels`` entry of an nnU-Net dataset.json: ``{"background": 0, name: value, ...}``."""
    return {"background": 0, **{name: value for value, name in sorted(label_table(kind).items())}}
