"""Image header geometry (size, spacing, origin, direction) read cheaply with SimpleITK, and its comparison."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

# Tolerances for "same geometry": relative for spacing; origins in mm (far below any voxel size); direction cosines.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4
# File endings whose headers SimpleITK reads (the formats of nnU-Net's SimpleITKIO and NibabelIO).
SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gipl", ".gipl.gz")


class ImageHeaderError(ValueError):
    """An image file whose header cannot be read; the message names the file."""


@dataclass(frozen=True)
class Geometry:
    """Header geometry as SimpleITK reports it: x, y, z order, spacing and origin in mm."""

    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    components: int


def read_geometry(path: os.PathLike | str) -> Geometry:
    """Read only the header of an image file (no voxel data).

    Raises:
        ImageHeaderError: the file is missing, unreadable or not an image SimpleITK understands.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise ImageHeaderError(f"cannot read image header of {path}: {lines[-1] if lines else error}") from None
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()), reader.GetNumberOfComponents())


def geometry_mismatch(reference: Geometry, other: Geometry) -> Optional[str]:
    """How two headers differ, in words (None when they agree within this module's tolerances)."""
    if reference.size != other.size:
        return f"shape differs: {reference.size} vs {other.size} (x, y, z voxels)"
    if not np.allclose(other.spacing, reference.spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing differs: {reference.spacing} vs {other.spacing} mm"
    if not np.allclose(other.origin, reference.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        return f"origin differs: {reference.origin} vs {other.origin} mm"
    if not np.allclose(other.direction, reference.direction, rtol=0, atol=DIRECTION_ATOL):
        return f"direction differs: {reference.direction} vs {other.direction}"
    return None
