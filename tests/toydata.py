"""A tiny nnU-Net raw dataset (two ellipsoid labels in noise) for integration tests.

This writes nnU-Net's own raw layout directly; it is a test fixture, not the BTCV/AMOS phantoms of
``nnunet-poolskip synth``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk


def toy_case(shape: Sequence[int], seed: int, channels: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(image (channels, z, y, x) float32, label (z, y, x) uint8) with labels 1 and 2."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = np.array(shape) / 2 + rng.normal(0, 1.5, 3)
    label = np.zeros(shape, np.uint8)
    radii1 = np.array(shape) * np.array([0.25, 0.25, 0.22])
    label[((z - centre[0]) / radii1[0]) ** 2 + ((y - centre[1]) / radii1[1]) ** 2
          + ((x - centre[2]) / radii1[2]) ** 2 < 1] = 1
    c2 = centre + np.array([0, -shape[1] * 0.3, 0])
    radii2 = np.array(shape) * np.array([0.18, 0.1, 0.14])
    label[((z - c2[0]) / radii2[0]) ** 2 + ((y - c2[1]) / radii2[1]) ** 2 + ((x - c2[2]) / radii2[2]) ** 2 < 1] = 2
    images = [(label * (80.0 + 40 * c) + rng.normal(0, 20, shape)).astype(np.float32) for c in range(channels)]
    return np.stack(images), label


def write_toy_dataset(raw_root: Path, dataset_id: int = 901, name: str = "Toy", n_cases: int = 6,
                      shape: Sequence[int] = (20, 32, 36), spacing_xyz: Sequence[float] = (1.0, 1.0, 2.0),
                      channels: int = 1, seed: int = 0, n_test: int = 0) -> Path:
    """Write ``DatasetXXX_Name`` with imagesTr/labelsTr (and imagesTs/labelsTs for ``n_test`` cases)."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases + n_test):
        case_shape = (shape[0] + 2 * (i % 2), shape[1], shape[2] - 2 * (i % 3))
        image, label = toy_case(case_shape, seed * 1000 + i, channels)
        split = "Tr" if i < n_cases else "Ts"
        case = f"toy_{i:03d}"
        for c in range(channels):
            img = sitk.GetImageFromArray(image[c])
            img.SetSpacing(tuple(spacing_xyz))
            sitk.WriteImage(img, str(folder / f"images{split}" / f"{case}_{c:04d}.nii.gz"))
        lab = sitk.GetImageFromArray(label)
        lab.SetSpacing(tuple(spacing_xyz))
        sitk.WriteImage(lab, str(folder / f"labels{split}" / f"{case}.nii.gz"))
    channel_names = {str(c): "CT" if c == 0 else f"ch{c}" for c in range(channels)}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": {"background": 0, "big": 1, "small": 2},
        "numTraining": n_cases, "file_ending": ".nii.gz"}, indent=2))
    return folder
