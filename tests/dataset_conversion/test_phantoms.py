"""``nnunet-poolskip synth``: exact download layouts, all organs, anatomy in patient coordinates, CT/MRI
intensities, geometry, determinism and bad arguments."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

from nnunet_poolskip.dataset_conversion.phantoms import synthesize_case

# DESIGN.md's tables, written out here as the independent expectation.
BTCV_NAMES = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
              "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
              "left adrenal gland"]
AMOS_N_LABELS = 15


def files_under(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def centroid_mm(label: sitk.Image, value: int) -> np.ndarray:
    """Physical (LPS, mm) centroid of a label, through the image's own header."""
    index = np.argwhere(sitk.GetArrayViewFromImage(label) == value).mean(axis=0)[::-1]  # (x, y, z) index
    return np.array(label.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))


@pytest.fixture(scope="module")
def btcv_phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "btcv"
    run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(out), "--cases", "3", "--unlabelled", "1",
             "--quiet"], dict(os.environ))
    return out


@pytest.fixture(scope="module")
def amos_phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "amos"
    run_cli(["nnunet-poolskip", "synth", "--kind", "amos", "-o", str(out), "--cases", "6", "--mri-cases", "3",
             "--unlabelled", "1", "--seed", "3", "--quiet"], dict(os.environ))
    return out


def test_btcv_layout_is_exact(btcv_phantoms):
    assert files_under(btcv_phantoms) == [
        "RawData/Testing/img/img0061.nii.gz",
        "RawData/Training/img/img0001.nii.gz", "RawData/Training/img/img0002.nii.gz",
        "RawData/Training/img/img0003.nii.gz",
        "RawData/Training/label/label0001.nii.gz", "RawData/Training/label/label0002.nii.gz",
        "RawData/Training/label/label0003.nii.gz"]


def test_btcv_cases_hold_every_organ_on_a_shared_anisotropic_grid(btcv_phantoms):
    shapes = set()
    for n in (1, 2, 3):
        image = sitk.ReadImage(str(btcv_phantoms / f"RawData/Training/img/img{n:04d}.nii.gz"))
        label = sitk.ReadImage(str(btcv_phantoms / f"RawData/Training/label/label{n:04d}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
        assert image.GetSize() == label.GetSize()
        for get in ("GetSpacing", "GetOrigin", "GetDirection"):
            assert np.allclose(getattr(image, get)(), getattr(label, get)(), atol=1e-6), get
        spacing = image.GetSpacing()
        assert spacing[2] > 1.2 * spacing[0] and spacing[0] == pytest.approx(spacing[1])
        direction = np.array(image.GetDirection()).reshape(3, 3)
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        assert not np.allclose(direction, np.eye(3)) and np.linalg.norm(image.GetOrigin()) > 10
        values = np.unique(sitk.GetArrayViewFromImage(label))
        assert values.tolist() == list(range(len(BTCV_NAMES) + 1))
        shapes.add(image.GetSize())
        # LPS: the liver lies on the patient's right (smaller x) of the spleen, the aorta left of the IVC,
        # kidneys behind (larger y) the gallbladder, the esophagus above (larger z) the pancreas.
        c = {name: centroid_mm(label, v) for v, name in enumerate(BTCV_NAMES, start=1)}
        assert c["liver"][0] < c["spleen"][0] and c["right kidney"][0] < c["left kidney"][0]
        assert c["inferior vena cava"][0] < c["aorta"][0]
        assert c["right kidney"][1] > c["gallbladder"][1] and c["esophagus"][2] > c["pancreas"][2]
        counts = np.bincount(sitk.GetArrayViewFromImage(label).ravel())
        assert counts[6] == counts[1:].max()  # the liver is the largest organ
        assert max(counts[12], counts[13]) < min(counts[1], counts[2], counts[3], counts[6], counts[7])
        hu = sitk.GetArrayViewFromImage(image)
        labels = sitk.GetArrayViewFromImage(label)
        assert hu.min() <= -900  # air outside the body
        assert 70 < np.median(hu[labels == 6]) < 150  # enhanced liver, HU
        assert np.median(hu[labels == 4]) < 50  # gallbladder: fluid
        assert hu[labels == 6].std() > 5  # noise
    assert len(shapes) > 1  # sizes vary by case


def test_amos_layout_and_dataset_json(amos_phantoms):
    expected = {"imagesTs/amos_0004.nii.gz", "dataset.json"}
    for part, numbers in (("Tr", (1, 2, 501, 502)), ("Va", (3, 503))):
        for n in numbers:
            expected |= {f"images{part}/amos_{n:04d}.nii.gz", f"labels{part}/amos_{n:04d}.nii.gz"}
    assert set(files_under(amos_phantoms)) == expected
    meta = json.loads((amos_phantoms / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["numValidation"] == 2 and meta["numTest"] == 1
    assert [e["image"] for e in meta["validation"]] == ["./imagesVa/amos_0003.nii.gz", "./imagesVa/amos_0503.nii.gz"]
    assert [e["label"] for e in meta["training"]][0] == "./labelsTr/amos_0001.nii.gz"
    assert meta["test"] == [{"image": "./imagesTs/amos_0004.nii.gz"}]
    assert sorted(map(int, meta["labels"])) == list(range(AMOS_N_LABELS + 1))


def test_amos_ct_and_mri_cases(amos_phantoms):
    for part, n in (("Tr", 1), ("Tr", 501)):
        image = sitk.ReadImage(str(amos_phantoms / f"images{part}/amos_{n:04d}.nii.gz"))
        label = sitk.ReadImage(str(amos_phantoms / f"labels{part}/amos_{n:04d}.nii.gz"))
        labels = sitk.GetArrayViewFromImage(label)
        values = sitk.GetArrayViewFromImage(image)
        assert np.unique(labels).tolist() == list(range(AMOS_N_LABELS + 1))
        c = {v: centroid_mm(label, v) for v in (1, 6, 14)}
        assert c[6][0] < c[1][0]  # liver right of spleen, whatever the direction of the file
        assert c[14][2] < c[6][2] - 100  # bladder far below the liver (mm)
        if n < 500:  # CT: Hounsfield units with air
            assert values.min() <= -900 and 70 < np.median(values[labels == 6]) < 150
        else:  # MRI: non-negative magnitudes; fat (around the organs) brighter than the bladder's fluid
            assert values.min() >= 0
            assert np.median(values[labels == 14]) < 0.5 * np.median(values[(labels == 0) & (values > 100)])
    ct = sitk.ReadImage(str(amos_phantoms / "imagesTr/amos_0001.nii.gz"))
    mri = sitk.ReadImage(str(amos_phantoms / "imagesTr/amos_0501.nii.gz"))
    assert ct.GetDirection()[0] * mri.GetDirection()[0] < 0  # MRI stored with the other x orientation


def test_deterministic_and_independent_of_case_count(tmp_path):
    a, b = synthesize_case("btcv", 5, seed=7), synthesize_case("btcv", 5, seed=7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.origin == b.origin
    c = synthesize_case("btcv", 5, seed=8)
    assert c.image.shape != a.image.shape or not np.array_equal(c.image, a.image)
    env = dict(os.environ)
    for cases in (1, 2):
        run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(tmp_path / str(cases)), "--cases",
                 str(cases), "--seed", "7", "--size", "20", "32", "32", "--quiet"], env)
    first = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / str(k) / "RawData/Training/img/img0001.nii.gz")))
             for k in (1, 2)]
    assert np.array_equal(first[0], first[1])
    assert first[0].shape[1] < 45  # --size 20 32 32 gives a smaller grid than the default 64 in-plane
    run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(tmp_path / "1"), "--cases", "2", "--size", "20",
             "32", "32", "--overwrite", "--quiet"], env)
    assert files_under(tmp_path / "1") == files_under(tmp_path / "2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_bad_arguments_are_refused(tmp_path):
    env = dict(os.environ)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    proc = run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(busy), "--cases", "1"], env, check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(busy), "--cases", "1", "--overwrite"],
                   env, check=False)
    assert proc.returncode == 2 and "notes.txt" in proc.stderr
    assert (busy / "notes.txt").read_text() == "keep me"
    proc = run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(tmp_path / "x"), "--mri-cases", "2"],
                   env, check=False)
    assert proc.returncode == 2 and "--mri-cases" in proc.stderr and not (tmp_path / "x").exists()
