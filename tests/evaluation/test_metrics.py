"""Dice / IoU / NSD of single masks against independent computations, and every empty-mask case.

The NSD reference here is a brute-force implementation of DeepMind's surface elements for boxes of voxels:
surface elements sit on the voxel-corner grid (the centres of 2x2x2 voxel neighbourhoods); on a box they
are face elements (4 of the 8 voxels inside; a flat square of area s_b * s_c), edge elements (2 inside; a
quad of length s_a along the edge and width sqrt(s_b^2 + s_c^2) / 2) and corner elements (1 inside; a
triangle through the three half-edges, area |(s1 s2, s0 s2, s0 s1)| / 8). Distances are all-pairs Euclidean
distances between element positions in mm, not a distance transform.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice
from scipy.spatial.distance import cdist

from nnunet_poolskip.evaluation.metrics import case_metrics, dice_iou, normalized_surface_dice

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")


def box_surface_elements(mask: np.ndarray, spacing) -> tuple:
    """(positions in mm (n, 3), areas in mm^2 (n,)) of the surface elements of a box-shaped mask."""
    s = np.asarray(spacing, float)
    padded = np.pad(mask.astype(np.int8), 1)
    positions, areas = [], []
    for vertex in np.ndindex(*(n - 1 for n in padded.shape)):
        block = padded[vertex[0]:vertex[0] + 2, vertex[1]:vertex[1] + 2, vertex[2]:vertex[2] + 2]
        count = int(block.sum())
        if count in (0, 8):
            continue
        inside = np.argwhere(block)
        if count == 4:  # a face: the normal axis is the one the four voxels share
            normal = int(np.flatnonzero(np.ptp(inside, axis=0) == 0)[0])
            others = [a for a in range(3) if a != normal]
            area = s[others[0]] * s[others[1]]
        elif count == 2:  # an edge: the two voxels differ along the edge's axis
            along = int(np.flatnonzero(np.ptp(inside, axis=0) == 1)[0])
            others = [a for a in range(3) if a != along]
            area = s[along] * math.hypot(s[others[0]], s[others[1]]) / 2
        elif count == 1:  # a corner
            area = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2) / 8
        else:
            raise AssertionError(f"not a box: {count} voxels in a neighbourhood")
        positions.append(np.array(vertex) * s)
        areas.append(area)
    return np.array(positions), np.array(areas)


def brute_force_nsd(reference: np.ndarray, prediction: np.ndarray, spacing, tolerance_mm: float) -> float:
    ref_pos, ref_area = box_surface_elements(reference, spacing)
    pred_pos, pred_area = box_surface_elements(prediction, spacing)
    distances = cdist(ref_pos, pred_pos)
    ref_ok = distances.min(axis=1) <= tolerance_mm
    pred_ok = distances.min(axis=0) <= tolerance_mm
    return (ref_area[ref_ok].sum() + pred_area[pred_ok].sum()) / (ref_area.sum() + pred_area.sum())


def box(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + n) for a, n in zip(start, size))] = True
    return mask


SPACING = (3.0, 1.0, 0.7)  # mm per array axis, strongly anisotropic


@pytest.mark.parametrize("axis,shift", [(0, 2), (2, 1), (1, 3)])
def test_nsd_of_shifted_box_matches_brute_force_surface_elements(axis, shift):
    reference = box((14, 16, 18), (3, 4, 5), (6, 7, 8))
    prediction = np.roll(reference, shift, axis=axis)
    shift_mm = shift * SPACING[axis]
    # Tolerances between the distance levels that occur (never exactly on one): below, around and above the shift.
    for tolerance in (0.3, 0.85, 1.2, shift_mm - 0.05, shift_mm + 0.05, 7.0):
        expected = brute_force_nsd(reference, prediction, SPACING, tolerance)
        assert normalized_surface_dice(reference, prediction, SPACING, tolerance) == pytest.approx(expected, abs=1e-6)
    # Every surface element of one box lies within the shift (in mm) of the other box's surface, and no closer
    # for the moved caps: NSD is exactly 1 at the shift and below 1 just under it.
    assert normalized_surface_dice(reference, prediction, SPACING, shift_mm + 1e-3) == pytest.approx(1.0, abs=1e-7)
    assert normalized_surface_dice(reference, prediction, SPACING, shift_mm - 1e-3) < 0.999


def test_nsd_of_box_shifted_along_axis0_at_tolerance_below_spacing_worked_by_hand():
    # Box of n0 x n1 x n2 voxels shifted by k along axis 0. Below the smallest spacing only coinciding surface
    # elements count: per box, the side rings at the k..n0 overlapping corner levels. One side ring (per level)
    # has 2(n2-1) face elements of s0*s2, 2(n1-1) of s0*s1 and 4 vertical edges of s0*hypot(s1, s2)/2; a rim
    # (top/bottom level) has 2(n2-1) edges of s2*hypot(s0, s1)/2, 2(n1-1) of s1*hypot(s0, s2)/2 and 4 corners;
    # a cap has (n1-1)(n2-1) faces of s1*s2. Per box: correct = (n0-k) rings + 1 rim, total = 2 caps +
    # (n0-1) rings + 2 rims, and NSD = correct / total (both boxes contribute the same).
    n0, n1, n2, k = 6, 7, 8, 2
    s0, s1, s2 = SPACING
    ring = 2 * (n2 - 1) * s0 * s2 + 2 * (n1 - 1) * s0 * s1 + 4 * s0 * math.hypot(s1, s2) / 2
    rim = (2 * (n2 - 1) * s2 * math.hypot(s0, s1) / 2 + 2 * (n1 - 1) * s1 * math.hypot(s0, s2) / 2
           + 4 * math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8)
    cap = (n1 - 1) * (n2 - 1) * s1 * s2
    expected = ((n0 - k) * ring + rim) / (2 * cap + (n0 - 1) * ring + 2 * rim)
    # Worked by hand: ring 72.7239, rim 35.8428, cap 29.4 mm^2 -> 326.7385 / 494.1053.
    assert expected == pytest.approx(0.66127, abs=1e-5)
    reference = box((14, 16, 18), (3, 4, 5), (n0, n1, n2))
    prediction = np.roll(reference, k, axis=0)
    assert normalized_surface_dice(reference, prediction, SPACING, 0.5) == pytest.approx(expected, abs=1e-6)


def test_nsd_identical_masks_is_one_and_spacing_order_matters():
    reference = box((12, 12, 12), (2, 3, 4), (5, 5, 5))
    assert normalized_surface_dice(reference, reference, SPACING, 0.0) == pytest.approx(1.0)
    prediction = np.roll(reference, 1, axis=0)
    # Shift of 1 voxel along axis 0 is 3 mm at SPACING but 0.7 mm with the axes reversed.
    assert normalized_surface_dice(reference, prediction, SPACING, 1.0) < 0.9
    assert normalized_surface_dice(reference, prediction, SPACING[::-1], 1.0) == pytest.approx(1.0, abs=1e-7)


def test_nsd_equals_monai_on_the_whole_volume():
    # The internal crop to the union's bounding box must not change MONAI's value (two separate objects).
    rng = np.random.default_rng(3)
    reference = box((20, 22, 24), (2, 3, 4), (7, 9, 6)) | box((20, 22, 24), (12, 14, 15), (5, 4, 6))
    prediction = reference ^ (rng.random(reference.shape) < 0.03)
    expected = compute_surface_dice(torch.from_numpy(prediction)[None, None], torch.from_numpy(reference)[None, None],
                                    [1.5], include_background=True, spacing=list(SPACING), use_subvoxels=True)
    assert normalized_surface_dice(reference, prediction, SPACING, 1.5) == pytest.approx(float(expected), abs=1e-7)


def test_dice_iou_counts():
    rng = np.random.default_rng(0)
    reference, prediction = rng.random((9, 10, 11)) < 0.3, rng.random((9, 10, 11)) < 0.4
    tp = np.sum(reference & prediction)
    fp = np.sum(~reference & prediction)
    fn = np.sum(reference & ~prediction)
    dice, iou = dice_iou(reference, prediction)
    assert dice == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert iou == pytest.approx(tp / (tp + fp + fn))


@pytest.mark.parametrize("ref_empty,pred_empty", [(True, True), (True, False), (False, True)])
def test_empty_mask_conventions(ref_empty, pred_empty):
    full = box((8, 8, 8), (2, 2, 2), (3, 3, 3))
    empty = np.zeros_like(full)
    reference, prediction = (empty if ref_empty else full), (empty if pred_empty else full)
    dice, iou = dice_iou(reference, prediction)
    nsd = normalized_surface_dice(reference, prediction, SPACING, 2.0)
    # MONAI's own convention on the same masks (our function answers these without calling it).
    with pytest.warns(UserWarning):
        monai_nsd = float(compute_surface_dice(torch.from_numpy(prediction)[None, None],
                                               torch.from_numpy(reference)[None, None], [2.0],
                                               include_background=True, spacing=list(SPACING),
                                               use_subvoxels=True))
    if ref_empty and pred_empty:
        assert math.isnan(dice) and math.isnan(iou) and math.isnan(nsd) and math.isnan(monai_nsd)
    else:
        assert (dice, iou, nsd, monai_nsd) == (0.0, 0.0, 0.0, 0.0)


def test_case_metrics_per_label():
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    reference[6:9, 6:9, 6:9] = 2
    prediction = reference.copy()
    prediction[prediction == 2] = 0  # label 2 missed, label 3 absent from both
    result = case_metrics(reference, prediction, [1, 2, 3], (1.0, 1.0, 1.0), {1: 1.0, 2: 1.0, 3: 1.0})
    assert result["dice"][1] == 1.0 and result["iou"][1] == 1.0 and result["nsd"][1] == pytest.approx(1.0)
    assert result["dice"][2] == 0.0 and result["iou"][2] == 0.0 and result["nsd"][2] == 0.0
    assert all(math.isnan(result[m][3]) for m in ("dice", "nsd", "iou"))


def test_bad_arguments():
    mask = box((6, 6, 6), (1, 1, 1), (2, 2, 2))
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(mask, mask, SPACING, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(mask, mask, (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_iou(mask, mask[:-1])
