"""overlays.png: the case selection, the slice through the largest organ, and the orientation and aspect of what
is displayed for images stored with flipped and permuted axes and anisotropic spacing."""
from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_poolskip.evaluation import overlays
from nnunet_poolskip.evaluation.overlays import CT_WINDOW_HU, OverlayInputError, case_views, plot_overlays, select_cases

SPACING = (0.7, 1.4, 3.0)  # x, y, z in mm: anisotropic in plane too, so a wrong aspect shows
ORIGIN = (-20.0, 10.0, 5.0)
LABELS = {"1": "liver", "2": "spleen"}


def canonical_case(seed):
    """A volume in LPS index order (z, y, x) with identity direction: an asymmetric image and a reference whose
    largest organ (label 1) sits anterior and on the patient's right, with its largest area at z = 4."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = 7, 12, 9
    image = rng.normal(40, 30, (nz, ny, nx)) + np.arange(nx)[None, None, :] * 10 - np.arange(ny)[None, :, None] * 5
    reference = np.zeros((nz, ny, nx), np.uint8)
    for z, half in ((2, 1), (3, 2), (4, 3), (5, 1)):
        reference[z, 1:1 + half, 0:2 + half] = 1   # anterior (small y), patient right (small x)
    reference[1:6, 8:10, 6:8] = 2                   # spleen: 20 voxels, fewer than the liver's 29
    return image.astype(np.float32), reference


def stored(array, variant):
    """The same physical volume stored with another index order: 'identity', 'flipped' (x and z axes reversed), or
    'permuted' (x and y index axes swapped, then z reversed). Built with numpy and an explicit header."""
    nz, ny, nx = array.shape
    sx, sy, sz = SPACING
    ox, oy, oz = ORIGIN
    if variant == "identity":
        data, direction, spacing, origin = array, np.eye(3), SPACING, ORIGIN
    elif variant == "flipped":
        data = array[::-1, :, ::-1]
        direction = np.diag([-1.0, 1.0, -1.0])
        spacing, origin = SPACING, (ox + (nx - 1) * sx, oy, oz + (nz - 1) * sz)
    else:  # index i runs along physical y, j along x, k down z
        data = array.transpose(0, 2, 1)[::-1]
        direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: the index axes
        spacing, origin = (sy, sx, sz), (ox, oy, oz + (nz - 1) * sz)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return image


def summary(values):
    """A summary whose per-case foreground Dice is known: {case: (liver, spleen)} with None for no value."""
    return {"labels": LABELS, "per_case": [{"case": c, "dice": {"1": a, "2": b}} for c, (a, b) in values.items()]}


@pytest.fixture
def dataset(tmp_path):
    """Three cases stored in three ways; a prediction folder per model (shifted masks, so they differ)."""
    folders = {name: tmp_path / name for name in ("imagesTs", "labelsTs", "model_a", "model_b")}
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {}}))
    canonical = {}
    for seed, (case, variant) in enumerate((("c0", "identity"), ("c1", "flipped"), ("c2", "permuted"))):
        image, reference = canonical_case(seed)
        canonical[case] = (image, reference)
        sitk.WriteImage(stored(image, variant), str(folders["imagesTs"] / f"{case}_0000.nii.gz"))
        sitk.WriteImage(stored(reference, variant), str(folders["labelsTs"] / f"{case}.nii.gz"))
        sitk.WriteImage(stored(np.roll(reference, 1, axis=2), variant), str(folders["model_a"] / f"{case}.nii.gz"))
        sitk.WriteImage(stored(np.roll(reference, -1, axis=1), variant), str(folders["model_b"] / f"{case}.nii.gz"))
    summaries = {"A": summary({"c0": (0.9, 0.7), "c1": (0.2, None), "c2": (0.5, 0.7)}),
                 "B": summary({"c0": (0.8, 0.8), "c1": (0.4, 0.6), "c2": (0.6, 0.6)})}
    return folders, canonical, summaries


def test_case_selection_lowest_median_highest():
    values = {"a": (0.9, 0.7), "b": (0.2, None), "c": (0.5, 0.7), "d": (None, None), "e": (0.1, 0.5), "f": (1.0, 1.0)}
    # foreground: a 0.8, b 0.2, c 0.6, e 0.3, f 1.0 (d has none) -> sorted b, e, c, a, f: median c
    assert select_cases(summary(values)) == [("lowest", "b", pytest.approx(0.2)), ("median", "c", pytest.approx(0.6)),
                                             ("highest", "f", pytest.approx(1.0))]
    # four cases: the lower median; two cases: each listed once
    assert [c for _, c, _ in select_cases(summary({k: values[k] for k in "abce"}))] == ["b", "e", "a"]
    assert [r for r, _, _ in select_cases(summary({k: values[k] for k in "ab"}))] == ["lowest", "highest"]
    assert select_cases(summary({"d": (None, None)})) == []


def test_displayed_slices_have_display_orientation_and_spacing_aspect(dataset):
    folders, canonical, summaries = dataset
    views = case_views(folders["imagesTs"], folders["labelsTs"], {"A": folders["model_a"], "B": folders["model_b"]},
                       summaries)
    # A's foreground Dice: c0 0.8, c1 0.2, c2 0.6 -> lowest c1 (stored flipped), median c2 (permuted), highest c0
    assert [(v.role, v.case) for v in views] == [("lowest", "c1"), ("median", "c2"), ("highest", "c0")]
    for view in views:
        image, reference = canonical[view.case]
        # the largest organ is label 1 and its largest area is at z = 4, whatever the stored index order
        assert (view.z, view.organ) == (4, 1)
        np.testing.assert_array_equal(view.image, image[4])          # row 0 anterior, column 0 patient's right
        np.testing.assert_array_equal(view.reference, reference[4])
        np.testing.assert_array_equal(view.predictions["A"], np.roll(reference, 1, axis=2)[4])
        np.testing.assert_array_equal(view.predictions["B"], np.roll(reference, -1, axis=1)[4])
        assert view.aspect == pytest.approx(SPACING[1] / SPACING[0])
        assert view.window == CT_WINDOW_HU  # dataset.json says CT
        assert view.reference[1, 0] == 1 and view.reference[1, -1] == 0  # liver on the viewer's left, at the top
    assert views[0].dice == {"A": pytest.approx(0.2), "B": pytest.approx(0.5)}


def test_figure_shows_those_arrays_and_the_caveat(dataset, tmp_path, monkeypatch):
    folders, canonical, summaries = dataset
    shown = []
    saved = overlays.save_figure
    monkeypatch.setattr(overlays, "save_figure", lambda fig, path: (shown.append(fig), saved(fig, path)))
    path = tmp_path / "overlays.png"
    caveat = "SMOKE-SCALE run on synthetic phantoms"
    plot_overlays(folders["imagesTs"], folders["labelsTs"], {"A": folders["model_a"], "B": folders["model_b"]},
                  summaries, path, caveat=caveat)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 800 <= width <= 1700 and height >= 400
    (figure,) = shown
    assert caveat in figure.get_suptitle().replace("\n", " ")
    axes = figure.axes
    assert len(axes) == 3 * 4  # three cases x (image, reference, A, B)
    first_image = axes[0].images[0]
    np.testing.assert_array_equal(first_image.get_array(), canonical["c1"][0][4])
    assert axes[0].get_aspect() == pytest.approx(SPACING[1] / SPACING[0])
    # the reference overlay: label 1 coloured where the reference has it, transparent elsewhere
    overlay = np.asarray(axes[1].images[1].get_array())
    np.testing.assert_array_equal(overlay[..., 3] > 0, canonical["c1"][1][4] > 0)
    assert axes[0].get_title().startswith("c1: lowest") and "foreground Dice 50.0%" in axes[3].get_title()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["1 liver", "2 spleen"]


def test_mri_percentiles_and_bad_input(dataset, tmp_path):
    folders, canonical, summaries = dataset
    views = case_views(folders["imagesTs"], folders["labelsTs"], {"A": folders["model_a"]}, summaries, "mri")
    assert views[0].window == pytest.approx(tuple(np.percentile(canonical["c1"][0][4], [1, 99])))
    (folders["model_a"] / "c2.nii.gz").unlink()
    with pytest.raises(OverlayInputError, match=f"prediction of A of case c2 not found in {folders['model_a']}"):
        case_views(folders["imagesTs"], folders["labelsTs"], {"A": folders["model_a"]}, summaries)
    shifted = sitk.ReadImage(str(folders["labelsTs"] / "c2.nii.gz"))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(folders["model_a"] / "c2.nii.gz"))
    with pytest.raises(OverlayInputError, match="case c2: .* does not lie on the grid of the image .*origin differs"):
        case_views(folders["imagesTs"], folders["labelsTs"], {"A": folders["model_a"]}, summaries)
    with pytest.raises(OverlayInputError, match="no summary for"):
        case_views(folders["imagesTs"], folders["labelsTs"], {"C": folders["model_a"]}, summaries)
    assert not (tmp_path / "overlays.png").exists()
