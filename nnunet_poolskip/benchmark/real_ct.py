"""The demo's last step: its nnU-Net fold ensembles segment a real abdominal CT.

The CT is ``example_ct_sm.nii.gz`` of the pinned TotalSegmentator sdist's reference files
(:mod:`nnunet_poolskip.utilities.real_ct`; fetched by ``scripts/setup.sh``): 30 slices of an abdominal CT at 3 mm,
on the grid of ``example_seg.nii.gz``, TotalSegmentator's own 117-class (v2 ``total`` task) label map of it. That map
is a MODEL'S OUTPUT, not ground truth: the Dice against it says how far the demo's models, trained minutes on
phantoms, agree with a trained whole-body model, nothing more. Its label numbers are mapped to BTCV's 13 by
:data:`TOTALSEGMENTATOR_TO_BTCV` (from ``totalsegmentator/map_to_binary.py`` of that sdist, class map ``total``).

Where the reference files were not fetched, the step says so and is skipped: it is no error.

Writes into ``<output>/real_ct/``: ``images/realct_0000.nii.gz`` (the CT, in an nnU-Net-style folder),
``<model>/realct.nii.gz`` (each ensemble's segmentation), ``reference_btcv.nii.gz`` (the mapped label map),
``real_ct_dice.json`` (per organ and foreground mean, per model) and ``real_ct.png``.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from nnunet_poolskip.utilities.atomic import atomic_path, write_json_atomic

REAL_CT_IMAGE = "example_ct_sm.nii.gz"
"""The CT of the reference files that the label map below belongs to (same grid)."""
REAL_CT_LABELS = "example_seg.nii.gz"
"""TotalSegmentator's ``total`` label map of :data:`REAL_CT_IMAGE` (its output, not ground truth)."""
REAL_CT_CASE = "realct"
REAL_CT_MODELS = ("nnunet", "nnunet_poolskip")
"""The benchmark models that segment the real CT at the end of a demo run (the headline pair)."""
"""The case id of the real CT in the prediction folders."""

TOTALSEGMENTATOR_TO_BTCV: Dict[int, int] = {
    1: 1,    # spleen
    2: 2,    # kidney_right -> right kidney
    3: 3,    # kidney_left -> left kidney
    4: 4,    # gallbladder
    15: 5,   # esophagus
    5: 6,    # liver
    6: 7,    # stomach
    52: 8,   # aorta
    63: 9,   # inferior_vena_cava
    64: 10,  # portal_vein_and_splenic_vein -> portal and splenic veins
    7: 11,   # pancreas
    8: 12,   # adrenal_gland_right -> right adrenal gland
    9: 13,   # adrenal_gland_left -> left adrenal gland
}
"""TotalSegmentator v2 ``total`` label -> BTCV label (every other TotalSegmentator label becomes background)."""


def btcv_from_totalsegmentator(label_map: np.ndarray) -> np.ndarray:
    """``label_map`` (TotalSegmentator v2 ``total`` labels) with BTCV's label numbers (uint8; others 0)."""
    lookup = np.zeros(max(int(label_map.max()), max(TOTALSEGMENTATOR_TO_BTCV)) + 1, np.uint8)
    for total, btcv in TOTALSEGMENTATOR_TO_BTCV.items():
        lookup[total] = btcv
    return lookup[label_map.astype(np.int64)]


def organ_dice(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int]) -> Dict[str, Optional[float]]:
    """Dice per label (str keys) and ``"foreground"`` (mean over the labels with a value); None where both are empty
    (as NaN in evaluate's summaries), 0 where only one is."""
    from nnunet_poolskip.evaluation.metrics import dice_iou

    values: Dict[str, Optional[float]] = {}
    for label in labels:
        dice, _ = dice_iou(reference == label, prediction == label)
        values[str(label)] = None if math.isnan(dice) else dice
    present = [v for v in values.values() if v is not None]
    values["foreground"] = float(np.mean(present)) if present else None
    return values


def segment_real_ct(finish, models: Sequence, say: Callable[[str], None], seed: Optional[int] = None,
                    reference_folder: Optional[Path] = None) -> Optional[Path]:
    """Predict the real CT with each of ``models`` (the finish stage's fold ensembles), score each against the
    mapped TotalSegmentator label map, and draw ``real_ct.png``. Returns the figure, or None when skipped.

    Args:
        finish: the benchmark's :class:`~nnunet_poolskip.benchmark.finish.Finish` (settings, steps, prediction).
        models: the models to run (the demo's nnU-Net pair).
        say: prints a line of the run's log.
        seed: the training seed whose folds predict (None: the unseeded runs).
        reference_folder: the reference files (default: :func:`nnunet_poolskip.utilities.real_ct.reference_files`).
    """
    import SimpleITK as sitk

    from nnunet_poolskip.evaluation.overlays import read_oriented
    from nnunet_poolskip.utilities.real_ct import RealCTError, reference_files

    if reference_folder is None:
        try:
            reference_folder = reference_files()
        except RealCTError as error:
            say(f"-- real CT: skipped ({error})")
            return None
    if reference_folder is None or not (reference_folder / REAL_CT_IMAGE).is_file() \
            or not (reference_folder / REAL_CT_LABELS).is_file():
        say("-- real CT: skipped (the TotalSegmentator reference files are not here; `python -m "
            "nnunet_poolskip.utilities.real_ct fetch` or scripts/setup.sh fetches them)")
        return None
    if not models:
        return None
    folder = finish.config.output / "real_ct"
    images = folder / "images"
    image_file = images / f"{REAL_CT_CASE}_0000.nii.gz"
    if not image_file.is_file():
        images.mkdir(parents=True, exist_ok=True)
        with atomic_path(image_file) as tmp:
            shutil.copyfile(reference_folder / REAL_CT_IMAGE, tmp)
    reference_image = sitk.ReadImage(str(reference_folder / REAL_CT_LABELS))
    mapped = sitk.GetImageFromArray(btcv_from_totalsegmentator(sitk.GetArrayFromImage(reference_image)))
    mapped.CopyInformation(reference_image)
    with atomic_path(folder / "reference_btcv.nii.gz") as tmp:
        sitk.WriteImage(mapped, str(tmp), useCompression=True)
    # every array in display orientation (LPS: row 0 anterior, column 0 the patient's right), the same for all
    reference, spacing, _ = read_oriented(folder / "reference_btcv.nii.gz")
    labels = sorted(TOTALSEGMENTATOR_TO_BTCV.values())
    predictions: Dict[str, np.ndarray] = {}
    dice: Dict[str, Dict[str, Optional[float]]] = {}
    for model in models:
        out = finish.predict_images(model, seed, images, folder / model.name, f"real_ct/{model.name}", "real-CT")
        predictions[model.display] = read_oriented(out / f"{REAL_CT_CASE}.nii.gz")[0]
        dice[model.display] = organ_dice(reference, predictions[model.display], labels)
    names = _btcv_names()
    write_json_atomic({"image": str(reference_folder / REAL_CT_IMAGE),
                       "reference": str(reference_folder / REAL_CT_LABELS),
                       "reference_note": "TotalSegmentator 2.18.0's output (class map total), mapped to BTCV labels: "
                                         "a model's output, not ground truth",
                       "label_map": {str(k): v for k, v in TOTALSEGMENTATOR_TO_BTCV.items()},
                       "labels": {str(k): names.get(k, str(k)) for k in labels}, "dice": dice},
                      folder / "real_ct_dice.json")
    for name, values in dice.items():
        found = [f"{names.get(int(k), k)} {v:.2f}" for k, v in values.items() if k != "foreground" and v]
        fg = values["foreground"]
        say(f"   real CT, {name}: foreground Dice {'n/a' if fg is None else f'{fg:.3f}'} against TotalSegmentator's "
            f"labels; organs found: {', '.join(found) or 'none'}")
    figure = folder / "real_ct.png"
    plot_real_ct(read_oriented(image_file)[0], reference, predictions, dice, names, figure, spacing)
    say(f"   real CT figure: {figure}")
    return figure


def _btcv_names() -> Dict[int, str]:
    from nnunet_poolskip.dataset_conversion.labels import label_table

    return {int(k): v for k, v in label_table("btcv").items()}


def plot_real_ct(image: np.ndarray, reference: np.ndarray, predictions: Mapping[str, np.ndarray],
                 dice: Mapping[str, Mapping[str, Optional[float]]], names: Mapping[int, str], path: Path,
                 spacing_xyz: Sequence[float]) -> None:
    """One row per view (axial slice through the most labelled organ voxels, coronal slice through the CT's middle):
    the CT, TotalSegmentator's labels (a model's output), and each model's segmentation; a per-organ Dice table under
    it. Arrays are (z, y, x) of the same grid in LPS display orientation (row 0 anterior, column 0 the patient's
    right, z up), ``spacing_xyz`` in mm."""
    from matplotlib.patches import Patch

    from nnunet_poolskip.evaluation.overlays import CT_WINDOW_HU, OVERLAY_ALPHA, _rgba, label_colours
    from nnunet_poolskip.utilities.figures import new_figure, save_figure, set_title

    labels = {str(k): v for k, v in names.items()}
    colours = label_colours(labels)
    z = int(np.argmax((reference > 0).sum(axis=(1, 2))))
    y = int(np.argmax((reference > 0).sum(axis=(0, 2))))
    views = [("axial", lambda a: a[z], spacing_xyz[1] / spacing_xyz[0], f"axial slice {z}"),
             ("coronal", lambda a: a[::-1, y, :], spacing_xyz[2] / spacing_xyz[0], f"coronal row {y}")]
    panels = [("CT", None), ("TotalSegmentator (a model's output,\nnot ground truth)", reference)]
    panels += [(f"{name}\nforeground Dice {_percent(dice[name]['foreground'])}", p) for name, p in predictions.items()]
    figure = new_figure(3.3 * len(panels), 8.2)
    grid = figure.add_gridspec(3, len(panels), height_ratios=[1, 0.4, 0.95])
    for row, (_, cut, aspect, where) in enumerate(views):
        for column, (title, labels_map) in enumerate(panels):
            ax = figure.add_subplot(grid[row, column])
            ax.imshow(cut(image), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=aspect,
                      interpolation="nearest")
            if labels_map is not None:
                ax.imshow(_rgba(cut(labels_map), colours), aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}\n{where}" if row == 0 else where, fontsize=8)
            if column == 0:
                for x, y_, letter in ((0.02, 0.5, "R"), (0.98, 0.5, "L")):
                    ax.text(x, y_, letter, transform=ax.transAxes, color="yellow", fontsize=8, fontweight="bold",
                            ha="left" if x < 0.5 else "right", va="center")
    table_ax = figure.add_subplot(grid[2, :])
    table_ax.axis("off")
    rows = [[f"{k} {names[k]}", *[_percent(dice[m][str(k)]) for m in predictions]] for k in sorted(names)]
    header = ["organ: Dice against TotalSegmentator (n/a: in neither)", *predictions]
    table = table_ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 0.9)
    handles = [Patch(facecolor=colours[int(k)], alpha=OVERLAY_ALPHA, label=f"{k} {n}") for k, n in
               sorted(labels.items(), key=lambda item: int(item[0]))]
    figure.legend(handles=handles, loc="outside lower center", frameon=False, fontsize=7, ncols=7)
    set_title(figure, "A real abdominal CT (TotalSegmentator's example, 3 mm) segmented by the demo's nnU-Net models "
                      "(softmax average of their folds; CT window [-160, 240] HU)",
              "Models trained minutes on synthetic phantoms at a coarse grid; the reference is TotalSegmentator's "
              "output, not ground truth.", fontsize=10)
    save_figure(figure, path)


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
