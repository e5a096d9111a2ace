"""``nnunet-poolskip predict``: the softmax fold ensemble against nnU-Net's own single-fold predictions, resuming,
and every bad input (checked before any model is loaded)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import BIN
from toydata import toy_case, write_toy_dataset

from nnunet_poolskip.cli import main

TRAINER = "nnUNetTrainerPoolSkip"


def run_concurrently(commands: List[List[str]], env: Dict[str, str], timeout: float = 600) -> List[str]:
    """Start console scripts of this venv together (they are independent), wait, fail with output on error."""
    procs = [subprocess.Popen([str(BIN / c[0]), *c[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in commands]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for command, proc, output in zip(commands, procs, outputs):
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {proc.returncode}\n{output[-6000:]}")
    return outputs


def write_resampled_cases(folder: Path) -> Dict[str, Tuple[float, ...]]:
    """Two test cases on other grids than the toy plans' (2 x 1 x 1 mm, z y x), so that nnU-Net resamples on the way
    in and on the way out: a finer one (linear in 3D) and one with thick slices (2D, then nearest along z)."""
    geometries = {"fine": ((30, 48, 54), (0.7, 0.7, 1.4)), "thick": ((8, 40, 44), (0.8, 0.8, 4.0))}
    for number, (case, (shape, spacing_xyz)) in enumerate(geometries.items()):
        image, _ = toy_case(shape, seed=100 + number)
        itk = sitk.GetImageFromArray(image[0])
        itk.SetSpacing(spacing_xyz)
        sitk.WriteImage(itk, str(folder / f"{case}_0000.nii.gz"))
    return {case: spacing for case, (_, spacing) in geometries.items()}


def resample_once_reference(model_folder: Path, folds: List[int], image_file: Path) -> np.ndarray:
    """The mean of the folds' softmax on the preprocessed grid, resampled once with the plans' own (SciPy) function
    and put back into the original geometry: computed here from nnU-Net's API, independently of the ensemble."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), folds)
    pm, cm, lm = predictor.plans_manager, predictor.configuration_manager, predictor.label_manager
    data, _, properties = cm.preprocessor_class().run_case([str(image_file)], None, pm, cm, predictor.dataset_json)
    parameters = list(predictor.list_of_parameters)
    probabilities = []
    for fold_parameters in parameters:
        predictor.list_of_parameters = [fold_parameters]
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
        probabilities.append(torch.softmax(logits.float(), 0))
    mean = torch.stack(probabilities).mean(0)
    spacing = [properties["spacing"][i] for i in pm.transpose_forward]
    resampled = cm.resampling_fn_probabilities(mean, properties["shape_after_cropping_and_before_resampling"],
                                               cm.spacing, spacing)
    full = lm.revert_cropping_on_probabilities(torch.as_tensor(resampled), properties["bbox_used_for_cropping"],
                                               properties["shape_before_cropping"]).numpy()
    return full.transpose([0] + [i + 1 for i in pm.transpose_backward])


def test_softmax_ensemble_equals_mean_of_nnunet_single_fold_probabilities(toy_workspace, tmp_path, monkeypatch,
                                                                          capsys):
    import torch

    ws = toy_workspace
    for fold in (0, 1):
        ws.train(TRAINER, fold)
    images = tmp_path / "images"
    shutil.copytree(ws.raw / "imagesTs", images)
    spacings = write_resampled_cases(images)
    common = ["-d", str(ws.dataset_id), "-c", "3d_fullres", "-tr", TRAINER, "-p", ws.plans]
    ours, once = tmp_path / "ours", tmp_path / "once"
    fold_outputs = [tmp_path / f"nnunet_f{f}" for f in (0, 1)]
    run_concurrently(
        [["nnunet-poolskip", "predict", "-i", str(images), "-o", str(ours), *common, "-f", "0", "1",
          "--save-probabilities", "--device", "cpu", "--disable-tta"],
         ["nnunet-poolskip", "predict", "-i", str(images), "-o", str(once), *common, "-f", "0", "1",
          "--save-probabilities", "--device", "cpu", "--disable-tta", "--average", "resample-once"]]
        + [["nnUNetv2_predict", "-i", str(images), "-o", str(out), *common, "-f", str(f), "--save_probabilities",
            "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"] for f, out in zip((0, 1), fold_outputs)],
        ws.env)

    for key, value in ws.env.items():  # this process, too, predicts (the reference) and resumes below
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    # nnU-Net reads nnUNet_def_n_proc (its prediction threads) once, at import: match the subprocesses' single
    # thread, or the reference's convolutions round differently
    monkeypatch.setattr("nnunetv2.inference.predict_from_raw_data.default_num_processes", 1)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert len(cases) == 4
    for case in cases:
        ensemble = np.load(ours / f"{case}.npz")
        assert list(ensemble.keys()) == ["probabilities"]
        probabilities = ensemble["probabilities"]
        image = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
        assert probabilities.shape == (3, *sitk.GetArrayFromImage(image).shape)  # classes first, original geometry
        assert probabilities.dtype == np.float32
        folds = [np.load(out / f"{case}.npz")["probabilities"] for out in fold_outputs]
        assert np.abs(folds[0] - folds[1]).max() > 1e-3  # the folds differ, so the mean is a real test
        np.testing.assert_allclose(probabilities, (folds[0] + folds[1]) / 2, rtol=0, atol=1e-6)

        label_image = sitk.ReadImage(str(ours / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label_image), probabilities.argmax(0))
        assert label_image.GetSpacing() == pytest.approx(image.GetSpacing())
        assert label_image.GetOrigin() == pytest.approx(image.GetOrigin())
        assert label_image.GetDirection() == pytest.approx(image.GetDirection())
        assert (ours / f"{case}.pkl").is_file()
        if case in spacings:  # resampled cases: the opt-in mode gives other, close numbers
            expected = resample_once_reference(ws.model_folder(TRAINER), [0, 1], images / f"{case}_0000.nii.gz")
            resampled_once = np.load(once / f"{case}.npz")["probabilities"]
            np.testing.assert_allclose(resampled_once, expected, rtol=0, atol=1e-5)
            assert np.abs(resampled_once - probabilities).max() > 1e-4  # softmax and resampling do not commute
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(once / f"{case}.nii.gz"))),
                                          resampled_once.argmax(0))
    assert json.loads((ours / "dataset.json").read_text())["labels"] == {"background": 0, "big": 1, "small": 2}
    recorded = json.loads((ours / "predict_args.json").read_text())
    assert recorded["folds"] == [0, 1] and recorded["ensemble"] == "mean of softmax probabilities"
    assert "resampled once" in json.loads((once / "predict_args.json").read_text())["ensemble"]
    assert not list(ours.glob(".tmp*"))

    # --continue: done cases are skipped (untouched); a case without its label map is predicted again; --device
    # defaults to auto (cuda where torch sees a GPU, else cpu).
    done, redo = (ours / f"{cases[0]}.nii.gz"), (ours / f"{cases[1]}.nii.gz")
    before = done.stat().st_mtime_ns
    redo.unlink()
    args = ["predict", "-i", str(images), "-o", str(ours), *common, "-f", "0", "1", "--save-probabilities",
            "--disable-tta", "--continue"]
    assert main(args) == 0
    assert "3 of 4 cases already done" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == before and redo.is_file()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(redo))),
                                  np.load(ours / f"{cases[1]}.npz")["probabilities"].argmax(0))
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads((ours / "predict_args.json").read_text())["device"] == expected_device
    assert main(args) == 0
    assert "4 of 4 cases already done" in capsys.readouterr().out
    # another averaging mode is another ensemble: --continue refuses to mix them
    assert main([*args, "--average", "resample-once"]) == 2
    assert "ensemble: 'mean of softmax probabilities' then" in capsys.readouterr().err


def test_truncated_checkpoint_is_named_and_nothing_is_written(toy_workspace, tmp_path, monkeypatch, capsys):
    ws = toy_workspace
    trained = ws.train(TRAINER, 0)
    broken = ws.model_folder(TRAINER, plans="nnUNetPlansBroken")
    (broken / "fold_0").mkdir(parents=True)
    (broken / "fold_1").mkdir()
    for name in ("dataset.json", "plans.json"):
        shutil.copy(trained / name, broken / name)
    checkpoint = (trained / "fold_0" / "checkpoint_final.pth").read_bytes()
    shutil.copy(trained / "fold_0" / "checkpoint_final.pth", broken / "fold_1" / "checkpoint_final.pth")
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint[:len(checkpoint) * 2 // 3])
    for key, value in ws.env.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(ws.raw / "imagesTs"), "-o", str(out), "-d", str(ws.dataset_id), "-c",
                 "3d_fullres", "-tr", TRAINER, "-p", "nnUNetPlansBroken", "-f", "1", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"fold 0: checkpoint {broken / 'fold_0' / 'checkpoint_final.pth'} cannot be read" in err
    assert "truncated or corrupt" in err
    assert not out.exists()  # nothing written, not even an empty folder


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """nnU-Net folders with a model folder whose fold 0 'checkpoint' exists (never loaded: checks come first),
    the ext-trainer variable set as ``nnunet-poolskip env`` would, and two valid 1-channel input cases."""
    from nnunet_poolskip.training.discovery import ext_trainer_value

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_value(""))
    raw = write_toy_dataset(tmp_path / "inputs", 902, "Fake", n_cases=2, shape=(8, 10, 12))
    model = tmp_path / "nnUNet_results" / "Dataset902_Fake" / f"{TRAINER}__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text((raw / "dataset.json").read_text())
    return {"model": model, "images": raw / "imagesTr", "out": tmp_path / "out"}


def predict(fake, *extra, images=None):
    return main(["predict", "-i", str(images or fake["images"]), "-o", str(fake["out"]), "-d", "Dataset902_Fake",
                 "-c", "3d_fullres", "-tr", TRAINER, "--device", "cpu", *extra])


def test_missing_fold_checkpoint_is_named(fake_model, capsys):
    assert predict(fake_model, "-f", "0", "1", "3") == 2
    err = capsys.readouterr().err
    assert "fold(s) 1, 3 have no checkpoint_final.pth" in err and str(fake_model["model"] / "fold_3") in err
    assert not fake_model["out"].exists()  # nothing written before the checks pass


def test_missing_model_folder_and_bad_folds(fake_model, capsys):
    assert main(["predict", "-i", str(fake_model["images"]), "-o", str(fake_model["out"]), "-d", "Dataset902_Fake",
                 "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-f", "0"]) == 2
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres does not exist" in capsys.readouterr().err
    assert predict(fake_model, "-f", "zero") == 2
    assert "fold 'zero'" in capsys.readouterr().err


def _copy_case(fake, source_case: str, names: List[str]) -> Path:
    folder = fake["images"].parent / "custom"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes((fake["images"] / f"{source_case}_0000.nii.gz").read_bytes())
    return folder


@pytest.mark.parametrize("names,message", [
    (["toy_000_0000.nii.gz", "toy_000_0001.nii.gz"], "case toy_000 has channels [0, 1]"),
    (["toy_000_0001.nii.gz"], "case toy_000 has channels [1]"),
    (["toy_000.nii.gz"], "lacks the channel suffix _XXXX"),
    ([], "no input images"),
])
def test_bad_input_files(fake_model, capsys, names, message):
    folder = _copy_case(fake_model, "toy_000", names)
    assert predict(fake_model, "-f", "0", images=folder) == 2
    assert message in capsys.readouterr().err


def test_unreadable_image_and_channel_geometry(fake_model, capsys):
    folder = _copy_case(fake_model, "toy_000", ["toy_000_0000.nii.gz"])
    (folder / "toy_001_0000.nii.gz").write_bytes(b"\x00garbage")
    assert predict(fake_model, "-f", "0", images=folder) == 2
    err = capsys.readouterr().err
    assert "case toy_001" in err and "toy_001_0000.nii.gz" in err

    # A two-channel model whose case has channels of different sizes.
    dataset = json.loads((fake_model["model"] / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T1", "1": "T2"}
    (fake_model["model"] / "dataset.json").write_text(json.dumps(dataset))
    folder = fake_model["images"].parent / "two"
    folder.mkdir()
    (folder / "mr_0000.nii.gz").write_bytes((fake_model["images"] / "toy_000_0000.nii.gz").read_bytes())
    (folder / "mr_0001.nii.gz").write_bytes((fake_model["images"] / "toy_001_0000.nii.gz").read_bytes())
    assert predict(fake_model, "-f", "0", images=folder) == 2
    err = capsys.readouterr().err
    assert "case mr: channel mr_0001.nii.gz does not match mr_0000.nii.gz: shape differs" in err


def test_truncated_input_image_is_refused_before_prediction(fake_model, capsys):
    """SimpleITK reads a truncated .nii.gz as zeros without an error: predict must not segment those zeros."""
    folder = _copy_case(fake_model, "toy_000", ["toy_000_0000.nii.gz", "toy_001_0000.nii.gz"])
    target = folder / "toy_001_0000.nii.gz"
    data = target.read_bytes()
    target.write_bytes(data[:len(data) * 2 // 3])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).shape == (8, 10, 12)  # read without complaint
    assert predict(fake_model, "-f", "0", images=folder) == 2
    assert f"case toy_001: {target} is truncated" in capsys.readouterr().err
    assert not fake_model["out"].exists()


def test_output_blocked_by_a_file_is_refused_before_prediction(fake_model, capsys):
    fake_model["out"].write_text("not a folder")
    assert predict(fake_model, "-f", "0") == 2
    assert f"-o/--output {fake_model['out']} is a file, not a folder" in capsys.readouterr().err


def test_undiscoverable_trainer_gives_the_env_hint(fake_model, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer")
    assert predict(fake_model, "-f", "0") == 2
    assert 'eval "$(nnunet-poolskip env)"' in capsys.readouterr().err


def test_results_folder_unset(fake_model, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_results")
    assert predict(fake_model, "-f", "0") == 2
    assert "nnUNet_results is not set" in capsys.readouterr().err


def test_continue_refuses_other_settings(fake_model, capsys):
    out = fake_model["out"]
    out.mkdir()
    (out / "predict_args.json").write_text(json.dumps({"model_folder": str(fake_model["model"]), "folds": [0, 1],
                                                       "checkpoint": "checkpoint_final.pth", "use_mirroring": True,
                                                       "ensemble": "mean of softmax probabilities",
                                                       "tile_step_size": 0.5}))
    assert predict(fake_model, "-f", "0", "--continue") == 2
    err = capsys.readouterr().err
    assert "folds: [0, 1] then, [0] now" in err and "use_mirroring" not in err


def test_continue_refuses_outputs_it_did_not_write(fake_model, capsys):
    """Files named like predictions but no predict_args.json (e.g. single-fold nnUNetv2_predict outputs) are not
    counted as done: --continue refuses, and touches nothing."""
    out = fake_model["out"]
    out.mkdir()
    for case in ("toy_000", "toy_001"):
        (out / f"{case}.nii.gz").write_bytes((fake_model["images"] / f"{case}_0000.nii.gz").read_bytes())
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert predict(fake_model, "-f", "0", "--continue") == 2
    err = capsys.readouterr().err
    assert "holds predictions (toy_000.nii.gz, toy_001.nii.gz) but no predict_args.json" in err
    assert "use a new output folder" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_unreadable_checkpoint_of_a_fake_model_is_named(fake_model, capsys):
    # the fixture's fold 0 "checkpoint" is an empty file; unrelated files in the output folder do not block --continue
    fake_model["out"].mkdir()
    (fake_model["out"] / "notes.txt").write_text("mine")
    assert predict(fake_model, "-f", "0", "--continue") == 2
    err = capsys.readouterr().err
    assert f"fold 0: checkpoint {fake_model['model'] / 'fold_0' / 'checkpoint_final.pth'} cannot be read" in err
    assert [p.name for p in fake_model["out"].iterdir()] == ["notes.txt"]
