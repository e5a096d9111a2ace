"""``inference.checks.check_case_geometry``: the resampled grid worked out from headers alone, and the refusals
(memory, less than one voxel) with the case, its spacing and the model's. The CLI path: test_predict_guards.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_poolskip.inference.checks import check_case_geometry
from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError

LABELS = {"labels": {"background": 0, "big": 1, "small": 2}}


def plans(spacing, transpose=(0, 1, 2)) -> dict:
    backward = [list(transpose).index(a) for a in range(3)]
    architecture = {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}
    return {"transpose_forward": list(transpose), "transpose_backward": backward,
            "configurations": {"c": {"spacing": list(spacing), "architecture": architecture}}}


def image(path, shape_zyx, spacing_xyz):
    itk = sitk.GetImageFromArray(np.zeros(shape_zyx, np.uint8))
    itk.SetSpacing(spacing_xyz)
    sitk.WriteImage(itk, str(path))
    return path


def test_resampled_grid_against_memory(tmp_path):
    path = image(tmp_path / "a_0000.nii.gz", (10, 20, 30), (0.5, 0.5, 4.0))  # (z, y, x) spacing 4 x 0.5 x 0.5
    # at 2 x 1 x 1 mm: 20 x 10 x 15 voxels; 2 channels + 3 classes float32 values per voxel
    needed = 20 * 10 * 15 * 4 * (2 + 3)
    check_case_geometry([("a", [path, path])], plans((2, 1, 1)), "c", LABELS, memory_bytes=needed)
    with pytest.raises(PredictionInputError) as error:
        check_case_geometry([("a", [path, path])], plans((2, 1, 1)), "c", LABELS, memory_bytes=needed - 1)
    assert str(error.value).startswith("case a: a_0000.nii.gz has spacing 4 x 0.5 x 0.5 mm (z, y, x) and 10 x 20 x "
                                       "30 voxels; at the model's spacing 2 x 1 x 1 mm it resamples to 20 x 10 x 15 "
                                       "voxels, which needs at least 59 KiB of memory (this machine has 59 KiB)")
    # plans that transpose the axes (x first): the same physical grid, reported in (z, y, x)
    transposed = plans((1, 1, 2), transpose=(2, 1, 0))
    check_case_geometry([("a", path)], transposed, "c", LABELS, memory_bytes=20 * 10 * 15 * 4 * 4)
    with pytest.raises(PredictionInputError, match="model's spacing 2 x 1 x 1 mm it resamples to 20 x 10 x 15"):
        check_case_geometry([("a", path)], transposed, "c", LABELS, memory_bytes=20 * 10 * 15 * 4 * 4 - 1)


def test_less_than_one_voxel_and_the_default_memory(tmp_path):
    tiny = image(tmp_path / "t_0000.nii.gz", (10, 20, 30), (0.001, 0.001, 0.001))  # metres read as mm
    with pytest.raises(PredictionInputError, match=r"case t: .* resamples to 0 x 0 x 0 voxels, less than one voxel"):
        check_case_geometry([("t", tiny)], plans((2, 1, 1)), "c", LABELS)
    huge = image(tmp_path / "h_0000.nii.gz", (10, 20, 30), (1000.0, 1000.0, 2000.0))
    voxels = 10000 * 20000 * 30000
    assert voxels * 4 * 4 > 2 ** 46  # 64 TiB: beyond any machine this runs on
    with pytest.raises(PredictionInputError, match=r"spacing 2000 x 1000 x 1000 mm .* 10000 x 20000 x 30000 voxels, "
                                                   rf"which needs at least {math.floor(voxels * 16 / 2 ** 30 + 0.5)} "
                                                   r"GiB"):
        check_case_geometry([("h", huge)], plans((2, 1, 1)), "c", LABELS)
