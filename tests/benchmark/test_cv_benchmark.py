"""``benchmark --protocol cv|both`` and ``--configuration 2d`` end to end through the real command lines (issue 20):
a 2-channel 3D nnU-Net data set without a test split compared by cross-validation (real nnUNetv2_train, tiny
schedule), its scores checked against an independent computation and against nnU-Net's own validation summary; the
same data set in the 2D configuration. ``--protocol both`` on the demo phantoms, reusing the trainings of a test
run: tests/benchmark/test_benchmark.py::test_scaled_down_benchmark_killed_mid_training_then_resumed."""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import BIN
from toydata import write_toy_dataset

from nnunet_poolskip.cli import main

DATASET = "Dataset912_Multi"
TINY = ["--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--epochs", "1", "--iterations", "2",
        "--val-iterations", "1", "--preprocess-processes", "1", "--evaluate-processes", "1",
        "--plans-preset", "cpu_small"]
"""The demo profile's code path at CI scale: 1 epoch of 2 iterations, the tests' tiny CPU plans."""


def clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}


def benchmark(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "nnunet-poolskip"), "benchmark", *args], env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def multi_channel_work(tmp_path_factory) -> Path:
    """nnU-Net folders with a 2-channel 3D data set of 8 labelled cases and no test split."""
    work = tmp_path_factory.mktemp("cv_work")
    folder = write_toy_dataset(work / "nnUNet_raw", 912, "Multi", n_cases=8, channels=2)
    shutil.rmtree(folder / "imagesTs")
    shutil.rmtree(folder / "labelsTs")
    return work


def raw_snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def dice_iou(reference: np.ndarray, prediction: np.ndarray, label: int):
    """Dice and IoU of one label, NaN when it is absent from both (the evaluator's convention)."""
    r, p = reference == label, prediction == label
    union, intersection, total = (r | p).sum(), (r & p).sum(), r.sum() + p.sum()
    if total == 0:
        return math.nan, math.nan
    return 2 * intersection / total, intersection / union


def validation_sets(work: Path, folds) -> dict:
    splits = json.loads((work / "nnUNet_preprocessed" / DATASET / "splits_final.json").read_text())
    return {f: sorted(splits[f]["val"]) for f in folds}


@pytest.mark.integration
def test_cross_validation_of_a_multi_channel_data_set_without_test_split(multi_channel_work, tmp_path, capsys):
    work, out = multi_channel_work, tmp_path / "results"
    raw = work / "nnUNet_raw" / DATASET
    before = raw_snapshot(raw)
    run = benchmark(*TINY, "--dataset", DATASET, "--work", str(work), "--output", str(out), "--folds", "0", "1")
    assert "protocol: cv (chosen: the data set has no test labels)" in run.stdout
    assert raw_snapshot(raw) == before  # the raw data is never modified

    folds = validation_sets(work, (0, 1))
    cases = sorted(folds[0] + folds[1])
    table = (out / "table.md").read_text()
    assert f"| Model (cross-validation, folds 0 1 of 5, n = {len(cases)} cases) | DICE (%) |" in table
    assert "5-fold cross-validation over the labelled cases, as nnU-Net Revisited" in table
    assert "## Cross-validation: per-case mean and mean over folds" in table
    assert "## Elimination singularities" in table and table in run.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "cv" and record["configuration"] == "3d_fullres"
    assert record["dataset"]["test_cases"] == []

    models = work / "nnUNet_results" / DATASET
    labels = (1, 2)
    with open(out / "table.csv", newline="") as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    for model, trainer in (("nnunet", "nnUNetTrainerBaseline"), ("nnunet_poolskip", "nnUNetTrainerPoolSkip")):
        summary = json.loads((out / "summaries" / "cv" / f"{model}.json").read_text())
        assert [c["case"] for c in summary["per_case"]] == cases
        ours = {c["case"]: c for c in summary["per_case"]}
        folder = models / f"{trainer}__nnUNetPlansCPU__3d_fullres"
        fold_dice = []
        for fold, fold_cases in folds.items():
            # nnU-Net's own validation summary: Dice and IoU equal ours wherever both define a value
            nnunet = json.loads((folder / f"fold_{fold}" / "validation" / "summary.json").read_text())
            compared = 0
            for entry in nnunet["metric_per_case"]:
                case = Path(entry["prediction_file"]).name[:-len(".nii.gz")]
                for label in labels:
                    for theirs, mine in (("Dice", "dice"), ("IoU", "iou")):
                        value, reference = entry["metrics"][str(label)][theirs], ours[case][mine][str(label)]
                        if reference is not None and not math.isnan(value):
                            assert reference == pytest.approx(value, abs=1e-6), (model, case, label, theirs)
                            compared += 1
            assert compared >= len(fold_cases)
            # nnU-Net Revisited's averaging, computed here from the per-case values
            label_means = [np.nanmean([np.nan if ours[c]["dice"][str(label)] is None else ours[c]["dice"][str(label)]
                                       for c in fold_cases]) for label in labels]
            fold_dice.append(np.nanmean(label_means))
        assert float(rows[{"nnunet": "nnU-Net"}.get(model, "nnU-Net + Pool Skip")]["fold_mean_dice_percent"]) == \
            pytest.approx(100 * np.mean(fold_dice), abs=1e-3)

    # one case scored independently: its out-of-fold prediction read from nnU-Net's validation folder
    case = folds[1][0]
    prediction_file = models / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres" / "fold_1" / "validation" / \
        f"{case}.nii.gz"
    reference_image = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
    reference = sitk.GetArrayFromImage(reference_image)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_file)))
    scored = {c["case"]: c for c in json.loads((out / "summaries" / "cv" / "nnunet_poolskip.json").read_text())
              ["per_case"]}[case]
    spacing = [float(s) for s in reversed(reference_image.GetSpacing())]
    from monai.metrics import compute_surface_dice

    for label in labels:
        dice, iou = dice_iou(reference, prediction, label)
        for metric, value in (("dice", dice), ("iou", iou)):
            recorded = scored[metric][str(label)]
            assert (recorded is None) if math.isnan(value) else recorded == pytest.approx(value, abs=1e-9)
        one_hot = [np.stack([m != label, m == label])[None].astype(np.float32) for m in (prediction, reference)]
        import torch

        nsd = float(compute_surface_dice(torch.from_numpy(one_hot[0]), torch.from_numpy(one_hot[1]), [1.0],
                                         spacing=spacing, use_subvoxels=True)[0, 0])
        recorded = scored["nsd"][str(label)]
        assert (recorded is None) if math.isnan(nsd) else recorded == pytest.approx(nsd, abs=1e-6)

    # a fold whose final validation lacks a case: refused before anything is evaluated, naming model, fold, case
    moved = prediction_file.with_name("moved.nii.gz")
    prediction_file.rename(moved)
    finish = ["benchmark", *TINY, "--dataset", DATASET, "--work", str(work), "--output", str(out), "--folds", "0", "1",
              "--stage", "finish"]
    assert main(finish) == 2
    error = capsys.readouterr().err
    assert f"nnunet_poolskip fold 1: {prediction_file.parent} lacks 1 of its {len(folds[1])} validation cases " \
           f"({case})" in error
    assert not (out / "table.md").exists() and not (out / "table.csv").exists()
    moved.rename(prediction_file)


@pytest.mark.integration
def test_two_d_configuration(multi_channel_work, tmp_path):
    work, out = multi_channel_work, tmp_path / "results_2d"
    benchmark(*TINY, "--dataset", DATASET, "--work", str(work), "--output", str(out), "--folds", "0",
              "--configuration", "2d")
    folds = validation_sets(work, (0,))
    table = (out / "table.md").read_text()
    assert "configuration 2d instead of the paper's 3d_fullres" in table
    assert f"n = {len(folds[0])} cases" in table
    for trainer in ("nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip"):
        fold = work / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlansCPU__2d" / "fold_0"
        assert (fold / "checkpoint_final.pth").is_file()
        plans = json.loads((fold.parent / "plans.json").read_text())
        assert len(plans["configurations"]["2d"]["patch_size"]) == 2
    summary = json.loads((out / "summaries" / "cv" / "nnunet_poolskip.json").read_text())
    assert [c["case"] for c in summary["per_case"]] == folds[0]
    record = json.loads((out / "run.json").read_text())
    assert record["configuration"] == "2d"
    assert record["steps"]["train/nnUNetTrainerPoolSkip/fold_0"]["command"][2:4] == ["2d", "0"]
