"""``nnunet-poolskip predict``: the softmax fold ensemble against nnU-Net's own single-fold predictions, resuming,
and every bad input (checked before any model is loaded)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BIN
from nnunet_poolskip.cli import main
from toydata import write_toy_dataset

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


def test_softmax_ensemble_equals_mean_of_nnunet_single_fold_probabilities(toy_workspace, tmp_path, monkeypatch,
                                                                          capsys):
    ws = toy_workspace
    for fold in (0, 1):
        ws.train(TRAINER, fold)
    images = ws.raw / "imagesTs"
    common = ["-d", str(ws.dataset_id), "-c", "3d_fullres", "-tr", TRAINER, "-p", ws.plans]
    ours = tmp_path / "ours"
    fold_outputs = [tmp_path / f"nnunet_f{f}" for f in (0, 1)]
    run_concurrently(
        [["nnunet-poolskip", "predict", "-i", str(images), "-o", str(ours), *common, "-f", "0", "1",
          "--save-probabilities", "--device", "cpu", "--disable-tta"]]
        + [["nnUNetv2_predict", "-i", str(images), "-o", str(out), *common, "-f", str(f), "--save_probabilities",
            "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"] for f, out in zip((0, 1), fold_outputs)],
        ws.env)

    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert len(cases) == 2
    for case in cases:
        ensemble = np.load(ours / f"{case}.npz")
        assert list(ensemble.keys()) == ["probabilities"]
        probabilities = ensemble["probabilities"]
        image = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
        assert probabilities.shape == (3, *sitk.GetArrayFromImage(image).shape)  # classes first, original geometry
        assert probabilities.dtype == np.float32
        folds = [np.load(out / f"{case}.npz")["probabilities"] for out in fold_outputs]
        assert np.abs(folds[0] - folds[1]).max() > 1e-3  # the folds differ, so the mean is a real test
        np.testing.assert_allclose(probabilities, (folds[0] + folds[1]) / 2, rtol=0, atol=1e-5)

        label_image = sitk.ReadImage(str(ours / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label_image), probabilities.argmax(0))
        assert label_image.GetSpacing() == pytest.approx(image.GetSpacing())
        assert label_image.GetOrigin() == pytest.approx(image.GetOrigin())
        assert label_image.GetDirection() == pytest.approx(image.GetDirection())
        assert (ours / f"{case}.pkl").is_file()
    assert json.loads((ours / "dataset.json").read_text())["labels"] == {"background": 0, "big": 1, "small": 2}
    assert json.loads((ours / "predict_args.json").read_text())["folds"] == [0, 1]
    assert not list(ours.glob(".tmp*"))

    # --continue: done cases are skipped (untouched); a case without its label map is predicted again.
    for key, value in ws.env.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    done, redo = (ours / f"{cases[0]}.nii.gz"), (ours / f"{cases[1]}.nii.gz")
    before = done.stat().st_mtime_ns
    redo.unlink()
    args = ["predict", "-i", str(images), "-o", str(ours), *common, "-f", "0", "1", "--save-probabilities",
            "--device", "cpu", "--disable-tta", "--continue"]
    assert main(args) == 0
    assert "1 of 2 cases already done" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == before and redo.is_file()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(redo))),
                                  np.load(ours / f"{cases[1]}.npz")["probabilities"].argmax(0))
    assert main(args) == 0
    assert "2 of 2 cases already done" in capsys.readouterr().out


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
