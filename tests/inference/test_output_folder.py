"""``inference.output_folder.OutputFolder``: the rules of predict's output folder without a model (the whole command
line: test_predict_guards.py)."""
from __future__ import annotations

import json

import pytest

from nnunet_poolskip.inference.output_folder import CONTINUE, NEW, OVERWRITE, OutputFolder
from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError

SETTINGS = {"folds": [0, 1], "use_mirroring": True}


def run(folder: OutputFolder, cases, unfinished=()):
    """What predict does: plan, start, then each case entered, its file written, marked complete."""
    todo = folder.plan(cases, ".nii.gz", False)
    folder.start({"dataset.json": {}, "plans.json": {}}, "cpu")
    for case in todo:
        folder.case_started(case, [folder.path / f"{case}.nii.gz"])
        (folder.path / f"{case}.nii.gz").write_text(f"{case} {folder.settings['folds']}")
        if case not in unfinished:
            folder.case_done(case)
    return todo


def test_record_continue_and_overwrite(tmp_path):
    out = tmp_path / "out"
    run(OutputFolder(out, SETTINGS), ["a", "b"], unfinished=["b"])  # b entered but not complete: as if killed
    record = json.loads((out / "predict_args.json").read_text())
    assert record["folds"] == [0, 1] and record["device"] == "cpu"
    assert record["cases"] == {"a": {"files": ["a.nii.gz"], "complete": True, "device": "cpu"},
                               "b": {"files": ["b.nii.gz"], "complete": False, "device": "cpu"}}
    (out / "notes.txt").write_text("mine")

    with pytest.raises(PredictionInputError) as error:
        OutputFolder(out, SETTINGS, NEW).plan(["a"], ".nii.gz", False)
    assert str(error.value) == (f"-o/--output {out} is not empty: it holds 1 case(s) predicted by nnunet-poolskip "
                                f"predict (folds [0, 1]; a; 1 unfinished) and 1 other file(s) (notes.txt). Use "
                                f"--continue to resume a run with the same settings, --overwrite to replace what "
                                f"nnunet-poolskip predict wrote there (other files are kept), or a new output folder")
    # the unfinished case is this tool's: --continue predicts it again, and a new one
    assert OutputFolder(out, SETTINGS, CONTINUE).plan(["a", "b", "c"], ".nii.gz", False) == ["b", "c"]
    with pytest.raises(PredictionInputError, match=r"folds: \[0, 1\] then, \[0\] now"):
        OutputFolder(out, {**SETTINGS, "folds": [0]}, CONTINUE).plan(["a"], ".nii.gz", False)

    # --overwrite deletes what the record lists, never a file outside it or outside the folder
    (tmp_path / "outside.nii.gz").write_text("keep")
    record["cases"]["b"]["files"].append("../outside.nii.gz")
    (out / "predict_args.json").write_text(json.dumps(record))
    assert run(OutputFolder(out, {**SETTINGS, "folds": [0]}, OVERWRITE), ["c"]) == ["c"]
    assert sorted(p.name for p in out.iterdir()) == ["c.nii.gz", "dataset.json", "notes.txt", "plans.json",
                                                     "predict_args.json"]
    assert (tmp_path / "outside.nii.gz").read_text() == "keep"
    assert sorted(json.loads((out / "predict_args.json").read_text())["cases"]) == ["c"]


def test_files_of_others_are_never_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.json").write_text("{}")  # e.g. nnUNetv2_predict's
    for mode in (CONTINUE, OVERWRITE):
        with pytest.raises(PredictionInputError, match="dataset.json was not written by nnunet-poolskip predict"):
            OutputFolder(out, SETTINGS, mode).plan(["a"], ".nii.gz", False)
    (out / "dataset.json").unlink()
    (out / "a.nii.gz").write_text("theirs")
    with pytest.raises(PredictionInputError, match=r"holds predictions \(a.nii.gz\) but no predict_args.json"):
        OutputFolder(out, SETTINGS, CONTINUE).plan(["a"], ".nii.gz", False)
    with pytest.raises(PredictionInputError, match="a.nii.gz was not written by nnunet-poolskip predict"):
        OutputFolder(out, SETTINGS, OVERWRITE).plan(["a"], ".nii.gz", False)
    assert OutputFolder(out, SETTINGS, OVERWRITE).plan(["b"], ".nii.gz", False) == ["b"]  # others' files stay
    assert (out / "a.nii.gz").read_text() == "theirs"
