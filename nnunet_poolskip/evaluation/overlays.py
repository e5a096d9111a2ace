"""A picture of the segmentations: image, reference and each model's prediction on one axial slice per case.

Three test cases are shown: those with the lowest, the median and the highest per-case foreground Dice of the
first model (the per-case foreground value of ``statistics.case_foreground``: the mean over the labels the case has
values for; with an even number of cases the lower median). For each, one axial slice through the largest
labelled organ of the reference (the label with the most voxels; the slice where its area is largest).

Orientation: every volume is reoriented with SimpleITK's ``DICOMOrient`` to LPS (index x runs to the patient's
left, y to posterior, z to superior), whatever direction its header has, and the slice is drawn with row 0 at the
top: anterior is up and the patient's right is on the viewer's left (the radiological convention). The pixel
aspect is the in-plane spacing ratio (y spacing / x spacing), so anisotropic in-plane spacing is drawn to scale.

Intensity: CT in the abdominal window [-160, 240] HU; other images (MRI) between their 1st and 99th percentiles
in the displayed slice. Which one is told by ``intensity`` or, by default, by the data set's ``dataset.json`` next
to ``imagesTs`` (channel 0 named "CT", as nnU-Net decides its CT normalisation); without one, percentiles.
Only channel 0 (``<case>_0000``) is shown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from nnunet_poolskip.evaluation.statistics import case_foreground
from nnunet_poolskip.utilities.figures import READER_WIDTH_INCHES, new_figure, save_figure, set_title
from nnunet_poolskip.utilities.geometry import SITK_ENDINGS, Geometry, geometry_mismatch

CT_WINDOW_HU = (-160.0, 240.0)
MRI_PERCENTILES = (1.0, 99.0)
DISPLAY_ORIENTATION = "LPS"
OVERLAY_ALPHA = 0.55
ROLES = ("lowest", "median", "highest")


class OverlayInputError(ValueError):
    """Missing or mismatching files for the overlay figure; the message names the case and file."""


def select_cases(summary: Mapping, metric: str = "dice") -> List[Tuple[str, str, float]]:
    """The cases with the lowest, median and highest per-case foreground value of ``metric``.

    Returns:
        ``(role, case id, value)`` for "lowest", "median", "highest", in that order; cases without a value are
        skipped; a case is listed once (fewer than three entries when there are fewer than three cases). Ties are
        broken by case id. With an even number of cases the median is the lower of the two middle cases.
    """
    values = [(case_foreground(case.get(metric) or {}), case["case"]) for case in summary["per_case"]]
    ranked = sorted((value, case) for value, case in values if value is not None)
    if not ranked:
        return []
    picks = dict(zip(ROLES, (ranked[0], ranked[(len(ranked) - 1) // 2], ranked[-1])))
    chosen, seen = [], set()
    for role in ROLES:
        value, case = picks[role]
        if case not in seen:
            chosen.append((role, case, value))
            seen.add(case)
    return chosen


def image_is_ct(images_folder: Path) -> bool:
    """True when the dataset.json beside ``images_folder`` names channel 0 "CT" (nnU-Net's own test)."""
    dataset_json = Path(images_folder).parent / "dataset.json"
    if not dataset_json.is_file():
        return False
    data = json.loads(dataset_json.read_text())
    channels = data.get("channel_names") or data.get("modality") or {}
    return str(channels.get("0", "")).casefold() == "ct"


def _case_file(folder: Path, stem: str, role: str) -> Path:
    for ending in SITK_ENDINGS:
        if (folder / f"{stem}{ending}").is_file():
            return folder / f"{stem}{ending}"
    raise OverlayInputError(f"{role} of case {stem} not found in {folder} (looked for {stem} with the endings "
                            f"{', '.join(SITK_ENDINGS)})")


def read_oriented(path: Path):
    """Read an image and reorient it to ``DISPLAY_ORIENTATION``; returns (array z-y-x, spacing x-y-z, geometry)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise OverlayInputError(f"{path} is {image.GetDimension()}D; the overlay figure shows 3D volumes")
    geometry = Geometry(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                        tuple(image.GetDirection()), image.GetNumberOfComponentsPerPixel())
    oriented = sitk.DICOMOrient(image, DISPLAY_ORIENTATION)
    return sitk.GetArrayFromImage(oriented), tuple(oriented.GetSpacing()), geometry


def axial_slice_through_largest_organ(reference: np.ndarray) -> Tuple[int, Optional[int]]:
    """(z index, label) of the axial slice where the reference's largest label (most voxels; ties: smaller label
    value) has its largest area (ties: the first such slice). An empty reference gives the middle slice and None."""
    counts = np.bincount(reference.ravel().astype(np.int64))
    counts[0] = 0
    if not counts.any():
        return reference.shape[0] // 2, None
    label = int(np.argmax(counts))
    area = (reference == label).sum(axis=(1, 2))
    return int(np.argmax(area)), label


@dataclass
class CaseView:
    """What one row of the figure shows: 2D arrays in display orientation (row 0 anterior, column 0 the patient's
    right), ``aspect`` = y spacing / x spacing, and per model its per-case foreground Dice (fraction or None)."""

    role: str
    case: str
    z: int
    organ: Optional[int]
    image: np.ndarray
    reference: np.ndarray
    predictions: Dict[str, np.ndarray]
    dice: Dict[str, Optional[float]]
    aspect: float
    window: Tuple[float, float]
    spacing: Tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))


def case_views(images_folder: Path, labels_folder: Path, predictions: Mapping[str, Path],
               summaries: Mapping[str, Mapping], intensity: str = "auto") -> List[CaseView]:
    """Load the slices the figure shows (see the module docstring); models in the order of ``predictions``.

    Raises:
        OverlayInputError: a missing file, a prediction or label whose geometry differs from the image's, a
            model without a summary, or an unknown ``intensity``.
    """
    if intensity not in ("auto", "ct", "mri"):
        raise OverlayInputError(f"intensity must be 'auto', 'ct' or 'mri', got {intensity!r}")
    missing = [name for name in predictions if name not in summaries]
    if missing or not predictions:
        raise OverlayInputError(f"every model needs a prediction folder and a summary; no summary for {missing}"
                                if missing else "no models given")
    ct = image_is_ct(images_folder) if intensity == "auto" else intensity == "ct"
    first = next(iter(predictions))
    views = []
    for role, case, _ in select_cases(summaries[first]):
        image_path = _case_file(Path(images_folder), f"{case}_0000", "image")
        image, spacing, geometry = read_oriented(image_path)
        maps = {}
        for name, folder in [("reference", labels_folder), *predictions.items()]:
            path = _case_file(Path(folder), case, "reference label map" if name == "reference" else
                              f"prediction of {name}")
            array, _, other = read_oriented(path)
            mismatch = geometry_mismatch(geometry, other)
            if mismatch:
                raise OverlayInputError(f"case {case}: {path} does not lie on the grid of the image {image_path}: "
                                        f"{mismatch}")
            maps[name] = array
        z, organ = axial_slice_through_largest_organ(maps["reference"])
        image_slice = image[z].astype(float)
        window = CT_WINDOW_HU if ct else tuple(float(v) for v in np.percentile(image_slice, MRI_PERCENTILES))
        dice = {name: case_foreground(next(c for c in summaries[name]["per_case"] if c["case"] == case)["dice"])
                if any(c["case"] == case for c in summaries[name]["per_case"]) else None for name in predictions}
        views.append(CaseView(role, case, z, organ, image_slice, maps.pop("reference")[z],
                              {name: maps[name][z] for name in predictions}, dice, spacing[1] / spacing[0],
                              window, spacing))
    return views


def label_colours(labels: Mapping[str, str]) -> Dict[int, Tuple[float, float, float]]:
    """One colour per label value, the same in every panel, in label order: matplotlib's tab10, then the light
    half of tab20 and then Set3 (tab20 alone pairs similar blues, oranges, ... for neighbouring labels)."""
    import matplotlib

    palette = (list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
               + list(matplotlib.colormaps["Set3"].colors))
    return {int(key): palette[i % len(palette)] for i, key in enumerate(sorted(labels, key=int))}


def _rgba(label_map: np.ndarray, colours: Mapping[int, Tuple[float, float, float]]) -> np.ndarray:
    rgba = np.zeros(label_map.shape + (4,), dtype=float)
    for value, colour in colours.items():
        mask = label_map == value
        rgba[mask, :3] = colour
        rgba[mask, 3] = OVERLAY_ALPHA
    return rgba


def overlay_figure(views: List[CaseView], labels: Mapping[str, str], first_model: str,
                   caveat: Optional[str] = None, cases: str = "test cases"):
    """The figure of :func:`plot_overlays`: one row per case; columns image, reference, then each model; ``cases``
    names the cases in the title."""
    from matplotlib.patches import Patch

    colours = label_colours(labels)
    models = list(views[0].predictions) if views else []
    columns = 2 + len(models)
    panel = min(3.2, READER_WIDTH_INCHES / columns)
    # height / width of a displayed slice, kept within reason so a thin or tall slice does not give a strip
    shape = float(np.median([v.image.shape[0] * v.aspect / v.image.shape[1] for v in views])) if views else 1.0
    figure = new_figure(panel * columns, panel * min(max(shape, 0.5), 1.3) * max(1, len(views)) + 1.4
                        + (0.4 if caveat else 0))
    axes = figure.subplots(max(1, len(views)), columns, squeeze=False)
    for row, view in zip(axes, views):
        common = {"aspect": view.aspect, "interpolation": "nearest"}
        for ax in row:
            ax.imshow(view.image, cmap="gray", vmin=view.window[0], vmax=view.window[1], **common)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(f"{view.case}: {view.role} Dice of {first_model}\nimage, axial slice {view.z}", fontsize=9)
        row[1].imshow(_rgba(view.reference, colours), **common)
        organ = labels.get(str(view.organ), "") if view.organ is not None else "no organ"
        row[1].set_title(f"{view.case}: reference\n(slice through the largest organ: {organ})", fontsize=9)
        for ax, name in zip(row[2:], models):
            ax.imshow(_rgba(view.predictions[name], colours), **common)
            dice = view.dice[name]
            ax.set_title(f"{view.case}: {name}\nforeground Dice {'n/a' if dice is None else f'{100 * dice:.1f}%'}",
                         fontsize=9)
        for x, y, letter in ((0.5, 0.98, "A"), (0.5, 0.02, "P"), (0.02, 0.5, "R"), (0.98, 0.5, "L")):
            row[0].text(x, y, letter, transform=row[0].transAxes, color="yellow", fontsize=8, fontweight="bold",
                        ha="center" if x == 0.5 else ("left" if x < 0.5 else "right"),
                        va="center" if y == 0.5 else ("top" if y > 0.5 else "bottom"))
    handles = [Patch(facecolor=colours[int(k)], alpha=OVERLAY_ALPHA, label=f"{k} {name}") for k, name in
               sorted(labels.items(), key=lambda item: int(item[0]))]
    # about 1.9 inches per entry at font size 8 ("10 portal and splenic veins"): no more columns than fit the width
    figure.legend(handles=handles, loc="outside lower center", frameon=False, fontsize=8,
                  ncols=max(1, min(len(handles), 7, int(figure.get_figwidth() / 1.9))))
    window = views[0].window if views else None
    how = ("CT window [-160, 240] HU" if window == CT_WINDOW_HU else "image between its 1st and 99th percentiles")
    set_title(figure, f"{cases[:1].upper() + cases[1:]} with the lowest, median and highest foreground Dice of "
                      f"{first_model} ({how})",
              caveat, fontsize=11)
    return figure


def plot_overlays(images_folder: Path, labels_folder: Path, predictions: Mapping[str, Path],
                  summaries: Mapping[str, Mapping], path: Path, caveat: Optional[str] = None,
                  intensity: str = "auto", cases: str = "test cases") -> None:
    """Write ``overlays.png``: three test cases (lowest, median, highest per-case foreground Dice of the first
    model), one axial slice each through the reference's largest organ: the image, the reference and every model's
    prediction as coloured overlays (one colour per label, legend with the summary's organ names), with case id and
    per-case foreground Dice in the titles.

    Args:
        images_folder: nnU-Net's imagesTs (``<case>_0000.nii.gz``).
        labels_folder: the reference label maps (labelsTs, ``<case>.nii.gz``).
        predictions: model display name -> folder of its predicted label maps; the first model picks the cases.
        summaries: the same names -> parsed summary.json (DESIGN.md format); its ``labels`` name the organs.
        path: the PNG to write (atomically).
        caveat: shown in the title (e.g. that the run is smoke-scale).
        intensity: "auto" (dataset.json beside ``images_folder``), "ct" or "mri" (see the module docstring).
        cases: what the cases are, for the title (e.g. "out-of-fold predicted cases" for a cross-validation).
    Raises:
        OverlayInputError: see :func:`case_views`.
    """
    views = case_views(images_folder, labels_folder, predictions, summaries, intensity)
    if not views:
        raise OverlayInputError(f"the summary of {next(iter(predictions))} has no case with a foreground Dice")
    first = next(iter(predictions))
    figure = overlay_figure(views, summaries[first]["labels"], first, caveat, cases)
    save_figure(figure, path)
