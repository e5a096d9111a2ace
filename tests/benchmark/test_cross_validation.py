"""The cross-validation protocol and the checks of a user's nnU-Net data set (issue 20), without training:
validation sets from splits_final.json, nnU-Net Revisited's mean over folds against an independent computation,
the refusals of bad data sets and arguments before anything is written, --split-file none, --configuration in the
SLURM jobs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from toydata import write_toy_dataset

from nnunet_poolskip.benchmark.config import BenchmarkError
from nnunet_poolskip.benchmark.cross_validation import (
    fold_means,
    link_cases,
    missing_validation_cases,
    read_validation_cases,
)
from nnunet_poolskip.benchmark.cv_report import fold_mean_columns, model_header, report_section
from nnunet_poolskip.benchmark.dataset_checks import check_raw_dataset
from nnunet_poolskip.benchmark.protocol import MODELS, check_configuration, parse_models
from nnunet_poolskip.cli import main
from nnunet_poolskip.dataset_conversion.btcv import convert_btcv
from nnunet_poolskip.dataset_conversion.phantoms import write_phantoms
from nnunet_poolskip.dataset_conversion.splits import resolve_split_file


# ------------------------------------------------------------------------------------ validation sets
def test_validation_cases_come_from_splits_final_and_bad_splits_are_refused(tmp_path):
    with pytest.raises(BenchmarkError, match="splits_final.json does not exist: nnU-Net writes it"):
        read_validation_cases(tmp_path, [0])
    splits = [{"train": ["c", "d"], "val": ["b", "a"]}, {"train": ["a", "b"], "val": ["d", "c"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    assert read_validation_cases(tmp_path, [0, 1]) == {0: ["a", "b"], 1: ["c", "d"]}
    assert read_validation_cases(tmp_path, [1]) == {1: ["c", "d"]}
    with pytest.raises(BenchmarkError, match=r"fold 2 is not in .*splits_final.json \(2 folds\)"):
        read_validation_cases(tmp_path, [0, 2])
    splits[1]["val"].append("a")
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    with pytest.raises(BenchmarkError, match="case a is in the validation sets of folds 0 and 1"):
        read_validation_cases(tmp_path, [0, 1])


def test_missing_validation_cases_and_links(tmp_path):
    fold = tmp_path / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "validation" / "a.nii.gz").write_bytes(b"x")
    assert missing_validation_cases(fold, ["a", "b"], ".nii.gz") == ["b"]
    target = tmp_path / "targets"
    target.mkdir()
    for name in ("a", "b", "c"):
        (target / f"{name}.nii.gz").write_text(name)
    links = tmp_path / "links"
    link_cases({"a": target / "a.nii.gz", "b": target / "b.nii.gz"}, links, ".nii.gz")
    (links / "stale.nii.gz").write_text("left over")
    link_cases({"b": target / "b.nii.gz", "c": target / "c.nii.gz"}, links, ".nii.gz")
    assert sorted(p.name for p in links.iterdir()) == ["b.nii.gz", "c.nii.gz"]
    assert (links / "c.nii.gz").read_text() == "c" and (links / "c.nii.gz").is_symlink()


def test_fold_means_against_an_independent_computation():
    # 2 labels, 3 cases in fold 0, 2 in fold 1; label 2 absent from reference and prediction in case "d" (null)
    dice = {"a": (0.9, 0.5), "b": (0.7, 0.3), "c": (0.8, 0.0), "d": (0.6, None), "e": (0.4, 0.2)}
    summary = {"labels": {"1": "liver", "2": "spleen"}, "nsd_tolerance_mm": {"1": 1.0, "2": 1.0},
               "per_case": [{"case": c, "dice": {"1": v[0], "2": v[1]}, "nsd": {"1": v[0], "2": v[1]},
                             "iou": {"1": v[0] / 2, "2": None if v[1] is None else v[1] / 2}}
                            for c, v in dice.items()]}
    result = fold_means(summary, {0: ["a", "b", "c"], 1: ["d", "e"]})
    fold0 = ((0.9 + 0.7 + 0.8) / 3 + (0.5 + 0.3 + 0.0) / 3) / 2
    fold1 = ((0.6 + 0.4) / 2 + 0.2) / 2  # label 2: only case e has a value
    assert result["folds"][0]["dice"] == pytest.approx(fold0)
    assert result["folds"][1]["dice"] == pytest.approx(fold1)
    assert result["mean_over_folds"]["dice"] == pytest.approx((fold0 + fold1) / 2)
    assert result["mean_over_folds"]["iou"] == pytest.approx((fold0 + fold1) / 4)
    assert result["n_cases"] == {0: 3, 1: 2}
    # differs from the per-case mean over all 5 cases, which is what compare uses
    per_case = (np.mean([0.9, 0.7, 0.8, 0.6, 0.4]) + np.mean([0.5, 0.3, 0.0, 0.2])) / 2
    assert not math.isclose(per_case, result["mean_over_folds"]["dice"])
    columns = fold_mean_columns([MODELS["nnunet"]], {"nnunet": {None: result}})
    assert columns["protocol"] == {"nnunet": "cv"}
    assert float(columns["fold_mean_dice_percent"]["nnunet"]) == pytest.approx(100 * (fold0 + fold1) / 2, abs=1e-4)
    assert [float(v) for v in columns["fold_dice_percent"]["nnunet"].split()] == pytest.approx(
        [100 * fold0, 100 * fold1], abs=1e-4)


def test_report_texts_state_protocol_folds_and_n():
    assert model_header((0, 1), 16) == "Model (cross-validation, folds 0 1 of 5, n = 16 cases)"
    assert model_header((0, 1, 2, 3, 4), 30) == "Model (cross-validation, all 5 folds, n = 30 cases)"
    table_md = "# T\n\nbanner\n\n## Cross-validation: x\n\n| a |\n\nPer organ: per_organ.md\n"
    section = report_section(table_md, Path("cv"))
    assert section[0] == "## Cross-validation: x" and section[-1].startswith("Per organ: cv/per_organ.md")


# ------------------------------------------------------------------------------- data set checks
def raw_set(tmp_path: Path, channels: int = 2, dataset_id: int = 950, name: str = "Mine") -> Path:
    folder = write_toy_dataset(tmp_path / "nnUNet_raw", dataset_id, name, n_cases=3, shape=(6, 8, 8),
                               channels=channels)
    shutil.rmtree(folder / "imagesTs")
    shutil.rmtree(folder / "labelsTs")
    return folder


def edit_dataset_json(folder: Path, **changes) -> None:
    data = json.loads((folder / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "dataset.json").write_text(json.dumps(data))


def test_a_good_multi_channel_data_set_passes_and_reports_its_facts(tmp_path):
    facts = check_raw_dataset(raw_set(tmp_path))
    assert facts.labels == {1: "big", 2: "small"} and facts.channels == {0: "CT", 1: "ch1"}
    assert facts.training_cases == ["toy_000", "toy_001", "toy_002"] and facts.file_ending == ".nii.gz"


@pytest.mark.parametrize("change, message", [
    (dict(labels=None), "has no 'labels' object"),
    (dict(channel_names=None), "has no 'channel_names' object"),
    (dict(labels={"background": 0, "organ": 1, "both": [1, 2]}, regions_class_order=[1, 2]),
     "uses region-based labels (both): not supported"),
    (dict(labels={"background": 0, "big": 1, "small": 2, "ignore": 3}), "has an ignore label (value 3): not supported"),
    (dict(channel_names={"0": "CT", "2": "MR"}), "'channel_names' must number the channels 0..1"),
])
def test_bad_dataset_json_is_refused_naming_the_data_set(tmp_path, change, message):
    folder = raw_set(tmp_path)
    edit_dataset_json(folder, **change)
    with pytest.raises(BenchmarkError) as error:
        check_raw_dataset(folder)
    assert message in str(error.value) and "Dataset950_Mine" in str(error.value)


def test_missing_channel_unlabelled_image_and_unlisted_label_values_are_refused(tmp_path):
    folder = raw_set(tmp_path)
    (folder / "imagesTr" / "toy_001_0001.nii.gz").unlink()
    with pytest.raises(BenchmarkError, match=r"case toy_001 has no image for channel 1 \(ch1\)"):
        check_raw_dataset(folder)
    folder = raw_set(tmp_path / "b")
    (folder / "labelsTr" / "toy_002.nii.gz").unlink()
    with pytest.raises(BenchmarkError, match="images without a label map in .*labelsTr: toy_002"):
        check_raw_dataset(folder)
    folder = raw_set(tmp_path / "c")
    label = sitk.ReadImage(str(folder / "labelsTr" / "toy_001.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 5
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(label)
    sitk.WriteImage(changed, str(folder / "labelsTr" / "toy_001.nii.gz"))
    with pytest.raises(BenchmarkError, match=r"case toy_001: .*toy_001.nii.gz holds label values \[5\] that "
                                             r"dataset.json does not list"):
        check_raw_dataset(folder)
    check_raw_dataset(folder, read_labels=False)  # the cheap check reads no label map


# --------------------------------------------------------------------------- arguments and refusals
def test_configuration_checks():
    check_configuration("2d", ["nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip"])
    check_configuration("3d_lowres", ["nnUNetTrainerVNet"])
    with pytest.raises(ValueError, match="3d_cascade_fullres is not supported"):
        check_configuration("3d_cascade_fullres", ["nnUNetTrainerBaseline"])
    with pytest.raises(ValueError, match=r"--configuration 2d: the V-Net trainers \['nnUNetTrainerVNet'\] train 3D"):
        check_configuration("2d", ["nnUNetTrainerBaseline", "nnUNetTrainerVNet"])
    resenc = parse_models("nnunet,nnunet_resenc_m,nnunet_resenc_m_poolskip")
    check_configuration("3d_fullres", [m.trainer for m in resenc], resenc)
    for configuration in ("2d", "3d_lowres"):
        with pytest.raises(ValueError, match=rf"--configuration {configuration}: the models \['nnunet_resenc_m', "
                                             rf"'nnunet_resenc_m_poolskip'\] use nnU-Net's ResEnc plans"):
            check_configuration(configuration, [m.trainer for m in resenc], resenc)


@pytest.mark.parametrize("args, message", [
    (["--protocol", "test"], "has no test images (imagesTs/<case>_0000.nii.gz): --protocol test predicts"),
    (["--protocol", "both"], "--protocol both predicts and evaluates the held-out test set"),
    (["--configuration", "3d_cascade_fullres"], "3d_cascade_fullres is not supported"),
    (["--configuration", "2d", "--models", "nnunet,vnet"], "V-Net trainers ['nnUNetTrainerVNet'] train 3D"),
    (["--configuration", "3d_lowres", "--models", "nnunet,nnunet_resenc_m"],
     "--configuration 3d_lowres: the models ['nnunet_resenc_m'] use nnU-Net's ResEnc plans"),
    (["--split-file", "none"], "--split-file applies to --dataset btcv|amos"),
    (["--dataset", "Dataset951_Absent"], "Dataset951_Absent not found in nnUNet_raw"),
    (["--dataset", "Dataset950_Other"], "Dataset950_Other not found in nnUNet_raw"),
])
def test_bad_requests_on_a_data_set_without_test_labels_fail_before_anything_is_written(tmp_path, capsys, args,
                                                                                         message):
    raw_set(tmp_path / "work")
    out = tmp_path / "results"
    argv = ["benchmark", "--profile", "demo", "--dataset", "Dataset950_Mine", "--work", str(tmp_path / "work"),
            "--output", str(out), "--models", "nnunet,nnunet_poolskip", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "work" / "nnUNet_raw").iterdir()) == ["Dataset950_Mine"]


def test_bad_dataset_json_of_a_users_data_set_fails_before_anything_is_written(tmp_path, capsys):
    folder = raw_set(tmp_path / "work")
    edit_dataset_json(folder, labels={"background": 0, "organ": [1, 2]})
    out = tmp_path / "results"
    assert main(["benchmark", "--profile", "demo", "--dataset", "950", "--work", str(tmp_path / "work"),
                 "--output", str(out), "--models", "nnunet"]) == 2
    assert "uses region-based labels (organ): not supported" in capsys.readouterr().err
    assert not out.exists()


def test_split_file_none_with_the_test_protocol_is_refused(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["benchmark", "--profile", "demo", "--split-file", "none", "--protocol", "test", "--output", str(out),
                 "--work", str(tmp_path / "work")]) == 2
    assert "--split-file none leaves no test set: --protocol test needs one; use --protocol cv" in \
        capsys.readouterr().err
    assert not out.exists()


def test_convert_btcv_with_no_test_split_puts_every_case_into_the_folds(tmp_path):
    source = tmp_path / "btcv"
    write_phantoms("btcv", source, 7, seed=0, size=(24, 40, 40), progress=False)
    result = convert_btcv(source, 17, "none", tmp_path / "raw", progress=False)
    assert result.test == [] and len(result.train) == 7
    assert sorted(c for fold in result.folds for c in fold["val"]) == sorted(result.train)
    assert len(result.folds) == 5 and not any((result.target / "imagesTs").glob("*.nii.gz"))
    assert any("no test split" in note for note in result.notes)
    assert resolve_split_file("none", "amos") == resolve_split_file("NONE", "btcv")


def test_slurm_jobs_carry_the_configuration_and_the_protocol(tmp_path):
    raw_set(tmp_path / "work")
    jobs = tmp_path / "jobs"
    assert main(["benchmark", "--profile", "paper", "--dataset", "Dataset950_Mine", "--work", str(tmp_path / "work"),
                 "--output", str(tmp_path / "results"), "--models", "nnunet,nnunet_poolskip", "--configuration", "2d",
                 "--protocol", "cv", "--emit", "slurm", str(jobs)]) == 0
    train = (jobs / "train.sbatch").read_text()
    assert "nnUNetv2_train 950 2d \"$FOLD\" -tr \"$TRAINER\" -p \"$PLANS\" -device cuda" in train
    assert '"$TRAINER"__"$PLANS"__2d' in train and "PLANS=nnUNetPlans" in train
    finish = (jobs / "finish.sbatch").read_text()
    assert "--configuration 2d" in finish and "--protocol cv" in finish and "--stage finish" in finish
    assert "--configuration 2d" in (jobs / "prepare.sbatch").read_text()
