"""The demo's real-CT step: TotalSegmentator's labels mapped to BTCV's, the per-organ Dice, the figure, and the
skip when the reference files are absent."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnunet_poolskip.benchmark.real_ct import (
    REAL_CT_CASE,
    REAL_CT_IMAGE,
    REAL_CT_LABELS,
    TOTALSEGMENTATOR_TO_BTCV,
    btcv_from_totalsegmentator,
    organ_dice,
    segment_real_ct,
)
from nnunet_poolskip.dataset_conversion.labels import label_table

MAP_TO_BINARY = Path.home() / ".cache" / "nnunet-poolskip" / "totalsegmentator-2.18.0.tar.gz"


def test_the_map_covers_btcv_once_by_name():
    """Every BTCV organ comes from exactly one TotalSegmentator class; checked by name against the sdist's own
    class map where the sdist is cached."""
    assert sorted(TOTALSEGMENTATOR_TO_BTCV.values()) == sorted(label_table("btcv"))
    if not MAP_TO_BINARY.is_file():
        pytest.skip("the totalsegmentator sdist is not cached")
    import tarfile

    with tarfile.open(MAP_TO_BINARY) as archive:
        text = archive.extractfile("totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py").read().decode()
    block = text[text.index('"total": {'):]
    block = block[:block.index("}")]
    total = {int(k): v for k, v in re.findall(r'(\d+): "([^"]+)"', block)}
    expected = {"spleen": "spleen", "kidney_right": "right kidney", "kidney_left": "left kidney",
                "gallbladder": "gallbladder", "esophagus": "esophagus", "liver": "liver", "stomach": "stomach",
                "aorta": "aorta", "inferior_vena_cava": "inferior vena cava",
                "portal_vein_and_splenic_vein": "portal and splenic veins", "pancreas": "pancreas",
                "adrenal_gland_right": "right adrenal gland", "adrenal_gland_left": "left adrenal gland"}
    btcv = label_table("btcv")
    assert {total[k]: btcv[v] for k, v in TOTALSEGMENTATOR_TO_BTCV.items()} == expected


def test_mapping_and_dice():
    label_map = np.array([[0, 5, 5, 52], [117, 63, 1, 1]], np.uint8)  # 117 (not BTCV) -> background
    mapped = btcv_from_totalsegmentator(label_map)
    assert mapped.tolist() == [[0, 6, 6, 8], [0, 9, 1, 1]]
    prediction = np.array([[0, 6, 0, 8], [6, 0, 1, 1]], np.uint8)
    dice = organ_dice(mapped, prediction, [1, 6, 8, 9, 13])
    assert dice["1"] == 1.0 and dice["8"] == 1.0 and dice["9"] == 0.0
    assert math.isclose(dice["6"], 2 * 1 / (2 + 2))  # 2 reference voxels, 2 predicted, 1 shared
    assert dice["13"] is None  # absent from both: no value, left out of the mean
    assert math.isclose(dice["foreground"], (1.0 + 0.5 + 1.0 + 0.0) / 4)


def test_missing_reference_files_skip_the_step(tmp_path):
    said = []
    assert segment_real_ct(SimpleNamespace(), ["model"], said.append, reference_folder=tmp_path) is None
    assert len(said) == 1 and "skipped" in said[0] and "real_ct fetch" in said[0]


def test_step_predicts_scores_and_draws(tmp_path):
    """With a stand-in for the finish stage whose 'prediction' is the mapped reference with the liver removed, the
    step writes the CT as an nnU-Net case, the Dice file (liver 0, the others 1) and a figure."""
    import SimpleITK as sitk

    reference_folder = tmp_path / "reference_files"
    reference_folder.mkdir()
    rng = np.random.default_rng(0)
    ct = rng.integers(-200, 200, (6, 12, 14)).astype(np.int16)
    labels = np.zeros((6, 12, 14), np.uint8)
    labels[1:4, 2:6, 2:6] = 5  # liver
    labels[2:5, 7:10, 8:12] = 1  # spleen
    labels[0, 0, 0] = 117
    for array, name in ((ct, REAL_CT_IMAGE), (labels, REAL_CT_LABELS)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(image, str(reference_folder / name))
    calls = []

    def predict_images(model, seed, images, out, step, what):
        calls.append((model.name, seed, sorted(p.name for p in images.iterdir())))
        out.mkdir(parents=True)
        predicted = btcv_from_totalsegmentator(labels)
        predicted[predicted == 6] = 0
        image = sitk.GetImageFromArray(predicted)
        image.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(image, str(out / f"{REAL_CT_CASE}.nii.gz"))
        return out

    finish = SimpleNamespace(config=SimpleNamespace(output=tmp_path / "run"), predict_images=predict_images)
    said = []
    model = SimpleNamespace(name="nnunet", display="nnU-Net")
    figure = segment_real_ct(finish, [model], said.append, seed=None, reference_folder=reference_folder)
    assert calls == [("nnunet", None, [f"{REAL_CT_CASE}_0000.nii.gz"])]
    assert figure.is_file() and figure.stat().st_size > 10_000
    result = json.loads((tmp_path / "run" / "real_ct" / "real_ct_dice.json").read_text())
    dice = result["dice"]["nnU-Net"]
    assert dice["1"] == 1.0 and dice["6"] == 0.0 and dice["2"] is None and dice["foreground"] == 0.5
    assert "not ground truth" in result["reference_note"]
    assert any("spleen 1.00" in line for line in said)
