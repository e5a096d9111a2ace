"""Per-label overlap metrics of one case: Dice, IoU (counted here) and NSD (MONAI's ``compute_surface_dice``).

Conventions, the same for every metric (DESIGN.md, "Evaluation output"):
    * label absent from BOTH reference and prediction: NaN (the case says nothing about that label; callers
      leave it out of means and count it);
    * label absent from exactly one of them: 0.
Spacings are in millimetres and ordered like the array axes (for a SimpleITK array, z, y, x: the REVERSE of
``image.GetSpacing()``). NSD tolerances are in millimetres.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

METRICS = ("dice", "nsd", "iou")


def dice_iou(reference: np.ndarray, prediction: np.ndarray) -> Tuple[float, float]:
    """Dice and IoU of two boolean masks of the same shape.

    Args:
        reference: boolean mask of the reference label.
        prediction: boolean mask of the predicted label.
    Returns:
        (dice, iou) as floats in [0, 1]; (nan, nan) when both masks are empty; (0, 0) when exactly one is.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"mask shapes differ: reference {reference.shape}, prediction {prediction.shape}")
    n_ref = int(np.count_nonzero(reference))
    n_pred = int(np.count_nonzero(prediction))
    if n_ref == 0 and n_pred == 0:
        return math.nan, math.nan
    tp = int(np.count_nonzero(reference & prediction))
    union = n_ref + n_pred - tp
    return 2.0 * tp / (n_ref + n_pred), tp / union


def _union_bounding_box(a: np.ndarray, b: np.ndarray, margin: int) -> Tuple[slice, ...]:
    """Slices of the bounding box of ``a | b`` grown by ``margin`` voxels, clipped to the array."""
    union = a | b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, union.shape[axis])))
    return tuple(slices)


def normalized_surface_dice(reference: np.ndarray, prediction: np.ndarray, spacing_mm: Sequence[float],
                            tolerance_mm: float) -> float:
    """Normalized Surface Dice (Nikolov et al. 2018) of two boolean masks, DeepMind's surface elements.

    Computed by MONAI's ``compute_surface_dice(..., use_subvoxels=True)``: surface elements sit on the
    2x2(x2) voxel neighbourhoods with their marching-cubes areas, and a surface element counts as correct
    when its distance to the other surface is <= ``tolerance_mm``.

    Args:
        reference: boolean mask of the reference label.
        prediction: boolean mask of the predicted label, same shape.
        spacing_mm: voxel size per array axis, in mm (array axis order, not SimpleITK's x, y, z).
        tolerance_mm: accepted boundary deviation in mm (>= 0).
    Returns:
        NSD in [0, 1]; nan when both masks are empty; 0 when exactly one is (MONAI's convention too,
        returned directly to skip its empty-mask warnings).
    """
    import torch
    from monai.metrics import compute_surface_dice

    if reference.shape != prediction.shape:
        raise ValueError(f"mask shapes differ: reference {reference.shape}, prediction {prediction.shape}")
    if len(spacing_mm) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} has {len(spacing_mm)} entries for a {reference.ndim}D mask")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    ref_any, pred_any = bool(reference.any()), bool(prediction.any())
    if not ref_any and not pred_any:
        return math.nan
    if not ref_any or not pred_any:
        return 0.0
    # MONAI crops to the union's bounding box with a 1-voxel margin itself; cropping first (same box) only
    # spares converting the whole volume to tensors once per label.
    box = _union_bounding_box(reference, prediction, margin=1)
    ref = torch.from_numpy(np.ascontiguousarray(reference[box]))[None, None]
    pred = torch.from_numpy(np.ascontiguousarray(prediction[box]))[None, None]
    # MONAI needs Python floats (float32 spacing elements break its type checks).
    spacing = [float(s) for s in spacing_mm]
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own internal use of a deprecated argument on every call.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(pred, ref, class_thresholds=[float(tolerance_mm)], include_background=True,
                                     spacing=spacing, use_subvoxels=True)
    return float(value[0, 0])


def case_metrics(reference: np.ndarray, prediction: np.ndarray, labels: Iterable[int], spacing_mm: Sequence[float],
                 tolerances_mm: Mapping[int, float]) -> Dict[str, Dict[int, float]]:
    """Dice, NSD and IoU of every label of one case.

    Args:
        reference: integer label map (array axis order).
        prediction: integer label map, same shape.
        labels: foreground label values to score.
        spacing_mm: voxel size per array axis, in mm.
        tolerances_mm: NSD tolerance in mm per label value.
    Returns:
        ``{"dice": {label: value}, "nsd": {...}, "iou": {...}}`` with the empty-mask conventions of this module.
    """
    result: Dict[str, Dict[int, float]] = {m: {} for m in METRICS}
    for label in labels:
        ref_mask = reference == label
        pred_mask = prediction == label
        dice, iou = dice_iou(ref_mask, pred_mask)
        result["dice"][label] = dice
        result["iou"][label] = iou
        result["nsd"][label] = normalized_surface_dice(ref_mask, pred_mask, spacing_mm, tolerances_mm[label])
    return result
