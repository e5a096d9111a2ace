"""``nnunet-poolskip predict`` never mixes (issue 25): one output folder holds the outputs of one setting, every fold
checkpoint matches the model folder it is used from, and an image of implausible geometry is refused by name.

Tiny trained toy models (shared with test_predict.py through the session's ``toy_workspace``), the real command line
in this process."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import pytest
import SimpleITK as sitk

from nnunet_poolskip.cli import main
from nnunet_poolskip.inference.softmax_ensemble import SoftmaxFoldEnsemble

TRAINER = "nnUNetTrainerPoolSkip"
pytestmark = pytest.mark.integration


@pytest.fixture
def nnunet_variables(toy_workspace, monkeypatch):
    for key, value in toy_workspace.env.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    # nnU-Net reads nnUNet_def_n_proc once, at import: one thread, as the subprocesses of the other tests
    monkeypatch.setattr("nnunetv2.inference.predict_from_raw_data.default_num_processes", 1)
    return toy_workspace


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def predict_args(ws, images: Path, out: Path, *extra: str, plans=None):
    return ["predict", "-i", str(images), "-o", str(out), "-d", str(ws.dataset_id), "-c", "3d_fullres", "-tr",
            TRAINER, "-p", plans or ws.plans, "--device", "cpu", "--disable-tta", *extra]


def test_stale_outputs_are_never_mixed_in(nnunet_variables, tmp_path, monkeypatch, capsys):
    """The issue's sequence: folds 0 1 interrupted after 2 of 3 cases; one case with fold 0 without --continue;
    every case with fold 0 and --continue. It ends in refusals; with --overwrite, in files equal to a clean fold-0
    run byte for byte, the files of others left alone."""
    ws = nnunet_variables
    ws.train(TRAINER, 0)
    ws.train(TRAINER, 1)
    images, single = tmp_path / "images", tmp_path / "single"
    shutil.copytree(ws.raw / "imagesTs", images)
    shutil.copy(ws.raw / "imagesTr" / "toy_000_0000.nii.gz", images)
    single.mkdir()
    shutil.copy(images / "toy_000_0000.nii.gz", single)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images.iterdir())
    assert len(cases) == 3
    out, clean = tmp_path / "out", tmp_path / "clean"

    written = []
    original = SoftmaxFoldEnsemble.write_case

    def interrupted_after_two(self, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)
        written.append(args[1])

    monkeypatch.setattr(SoftmaxFoldEnsemble, "write_case", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(predict_args(ws, images, out, "-f", "0", "1"))
    monkeypatch.setattr(SoftmaxFoldEnsemble, "write_case", original)
    assert sorted(p.name for p in out.glob("toy_*.nii.gz")) == [f"{c}.nii.gz" for c in written]
    capsys.readouterr()

    before = snapshot(out)
    assert main(predict_args(ws, single, out, "-f", "0")) == 2
    err = capsys.readouterr().err
    assert f"-o/--output {out} is not empty: it holds 2 case(s) predicted by nnunet-poolskip predict" in err
    assert "--continue" in err and "--overwrite" in err
    assert main(predict_args(ws, images, out, "-f", "0", "--continue")) == 2
    assert "folds: [0, 1] then, [0] now" in capsys.readouterr().err
    assert snapshot(out) == before  # nothing touched by either refusal

    # --overwrite clears this tool's outputs only; then --continue completes the folder with the same setting
    (out / "notes.txt").write_text("mine")
    assert main(predict_args(ws, single, out, "-f", "0", "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "notes.txt", "plans.json", "predict_args.json",
                                                     "toy_000.nii.gz"]
    capsys.readouterr()
    assert main(predict_args(ws, images, out, "-f", "0", "--continue")) == 0
    assert "1 of 3 cases already done" in capsys.readouterr().out
    assert main(predict_args(ws, images, clean, "-f", "0")) == 0
    for case in cases:
        assert (out / f"{case}.nii.gz").read_bytes() == (clean / f"{case}.nii.gz").read_bytes(), case
    record = json.loads((out / "predict_args.json").read_text())
    assert record["folds"] == [0] and sorted(record["cases"]) == cases
    assert all(entry["complete"] for entry in record["cases"].values())
    assert (out / "notes.txt").read_text() == "mine"

    # a file this tool did not write is never replaced, not even with --overwrite
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "toy_000.nii.gz").write_bytes(b"someone else's")
    assert main(predict_args(ws, single, foreign, "-f", "0", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"{foreign / 'toy_000.nii.gz'} was not written by nnunet-poolskip predict" in err
    assert snapshot(foreign) == {"toy_000.nii.gz": b"someone else's"}


def copy_model(trained: Path, plans: str, folds=(0,)) -> Path:
    """The trained toy model folder under another plans name (``<trainer>__<plans>__3d_fullres``)."""
    target = trained.parent / f"{TRAINER}__{plans}__3d_fullres"
    for name in ("dataset.json", "plans.json"):
        target.mkdir(exist_ok=True)
        shutil.copy(trained / name, target / name)
    for fold in folds:
        (target / f"fold_{fold}").mkdir()
        shutil.copy(trained / "fold_0" / "checkpoint_final.pth", target / f"fold_{fold}" / "checkpoint_final.pth")
    return target


def test_fold_checkpoints_must_match_the_model_folder(nnunet_variables, tmp_path, capsys):
    """A plans.json edited after training (another spacing), a fold written by another trainer, dataset labels that
    differ: each is an error naming the fold and the file, before any preprocessing, with nothing written."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_poolskip.training import nnUNetTrainerBaseline

    ws = nnunet_variables
    trained = ws.train(TRAINER, 0)
    images, out = ws.raw / "imagesTs", tmp_path / "out"

    edited = copy_model(trained, "nnUNetPlansEdited")
    plans = json.loads((edited / "plans.json").read_text())
    trained_spacing = plans["configurations"]["3d_fullres"]["spacing"]
    plans["configurations"]["3d_fullres"]["spacing"] = [2 * s for s in trained_spacing]
    (edited / "plans.json").write_text(json.dumps(plans))
    assert main(predict_args(ws, images, out, "-f", "0", plans="nnUNetPlansEdited")) == 2
    err = capsys.readouterr().err
    assert f"fold 0: {edited / 'fold_0' / 'checkpoint_final.pth'} was trained with other plans than " \
           f"{edited / 'plans.json'}" in err
    assert f"spacing {trained_spacing} in the checkpoint, {[2 * s for s in trained_spacing]} in plans.json" in err
    assert not out.exists()

    # fold 1 written by nnUNetTrainerBaseline (its network, its weights) in the Pool Skip model folder
    mixed = copy_model(trained, "nnUNetPlansMixed")
    checkpoint = torch.load(trained / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    manager = PlansManager(checkpoint["init_args"]["plans"])
    network = nnUNetTrainerBaseline.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, enable_deep_supervision=False)
    (mixed / "fold_1").mkdir()
    torch.save({**checkpoint, "trainer_name": "nnUNetTrainerBaseline", "network_weights": network.state_dict()},
               mixed / "fold_1" / "checkpoint_final.pth")
    assert main(predict_args(ws, images, out, "-f", "0", "1", plans="nnUNetPlansMixed")) == 2
    err = capsys.readouterr().err
    assert f"fold 1: {mixed / 'fold_1' / 'checkpoint_final.pth'} was written by trainer nnUNetTrainerBaseline, " \
           f"but the model folder is {TRAINER}'s" in err
    assert "Traceback" not in err and not out.exists()

    # the model folder's dataset.json names label 1 otherwise than the data set the fold was trained on
    renamed = copy_model(trained, "nnUNetPlansRenamed")
    dataset = json.loads((renamed / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "liver": 1, "small": 2}
    (renamed / "dataset.json").write_text(json.dumps(dataset))
    assert main(predict_args(ws, images, out, "-f", "0", plans="nnUNetPlansRenamed")) == 2
    err = capsys.readouterr().err
    assert f"fold 0: {renamed / 'fold_0' / 'checkpoint_final.pth'} was trained on other labels than " \
           f"{renamed / 'dataset.json'}" in err
    assert not out.exists()


def test_implausible_geometry_is_refused_by_name(nnunet_variables, tmp_path, capsys):
    """A spacing 100x too large (a unit mistake) resamples to ~10^11 voxels: an error naming the case, its
    spacing and the model's, before any allocation (the issue's run ended in a numpy MemoryError)."""
    ws = nnunet_variables
    trained = ws.train(TRAINER, 0)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    shutil.copy(ws.raw / "imagesTs" / "toy_006_0000.nii.gz", images)
    image = sitk.ReadImage(str(ws.raw / "imagesTs" / "toy_007_0000.nii.gz"))
    image.SetSpacing([100 * s for s in image.GetSpacing()])
    sitk.WriteImage(image, str(images / "metres_0000.nii.gz"))
    model_spacing = json.loads((trained / "plans.json").read_text())["configurations"]["3d_fullres"]["spacing"]
    assert main(predict_args(ws, images, out, "-f", "0")) == 2
    err = capsys.readouterr().err
    assert "case metres:" in err and "spacing 200 x 100 x 100 mm (z, y, x)" in err
    assert f"the model's spacing {' x '.join(f'{s:g}' for s in model_spacing)} mm" in err
    assert "toy_006" not in err and not out.exists()
