"""``nnunet-poolskip evaluate``: values against nnU-Net's compute_metrics and brute-force NSD, the summary.json
format and its empty-mask conventions, tolerance tables, and every bad input."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli
from test_metrics import box, brute_force_nsd

from nnunet_poolskip.cli import main
from nnunet_poolskip.evaluation.metrics import normalized_surface_dice

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

SPACING_XYZ = (0.8, 1.0, 3.0)  # SimpleITK order; numpy arrays are (z, y, x) -> (3.0, 1.0, 0.8)
SPACING_ZYX = SPACING_XYZ[::-1]
LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "postcava (IVC)": 3}


def write_map(path: Path, array: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_dataset_json(path: Path, labels=None) -> Path:
    path.write_text(json.dumps({"labels": labels or LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    return path


def random_cases(root: Path) -> dict:
    """Three cases with labels 1-3: case b has no label 3 anywhere, case c has label 3 only in the prediction."""
    rng = np.random.default_rng(7)
    arrays = {}
    for case in ("a", "b", "c"):
        ref = np.zeros((10, 14, 16), np.uint8)
        ref[2:7, 3:10, 2:9] = 1
        ref[3:8, 8:13, 9:15] = 2
        ref[1:4, 1:4, 11:15] = 3
        pred = ref.copy()
        noise = rng.random(ref.shape) < 0.08
        pred[noise] = rng.integers(0, 3, noise.sum())
        if case != "a":
            ref[ref == 3] = 0
            pred[pred == 3] = 0
        if case == "c":
            pred[8:10, 1:3, 1:3] = 3
        write_map(root / "gt" / f"{case}.nii.gz", ref)
        write_map(root / "pred" / f"{case}.nii.gz", pred)
        arrays[case] = (ref, pred)
    return arrays


def evaluate(args, capsys=None):
    """In-process CLI (no interpreter start-up); one process unless the test asks for more."""
    args = list(map(str, args))
    code = main(["evaluate", *args, "--no-progress", *([] if "-np" in args else ["-np", "1"])])
    return code, (capsys.readouterr() if capsys else None)


@pytest.mark.integration  # runs nnU-Net's own evaluator on a generated folder: about 15 s
def test_values_format_and_conventions_against_nnunet(tmp_path, capsys):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    arrays = random_cases(tmp_path)
    dataset_json = write_dataset_json(tmp_path / "dataset.json")
    out = tmp_path / "summary.json"
    code, _ = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json", dataset_json, "-o", out,
                        "--csv", tmp_path / "cases.csv", "-np", "1"], capsys)
    assert code == 0
    summary = json.loads(out.read_text())
    assert list(summary)[:7] == ["metrics", "labels", "nsd_tolerance_mm", "per_case", "mean", "foreground_mean",
                                 "n_cases"]
    assert summary["metrics"] == ["dice", "nsd", "iou"]
    assert summary["labels"] == {"1": "liver", "2": "kidney_right", "3": "postcava (IVC)"}
    assert summary["nsd_tolerance_mm"] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert [c["case"] for c in summary["per_case"]] == ["a", "b", "c"]
    assert summary["complete"] is True and summary["missing_predictions"] == [] and summary["n_cases"] == 3

    for case in summary["per_case"]:
        name = case["case"]
        reference = compute_metrics(str(tmp_path / "gt" / f"{name}.nii.gz"), str(tmp_path / "pred" / f"{name}.nii.gz"),
                                    SimpleITKIO(), [1, 2, 3])["metrics"]
        ref, pred = arrays[name]
        for label in (1, 2, 3):
            for ours, theirs in ((case["dice"][str(label)], reference[label]["Dice"]),
                                 (case["iou"][str(label)], reference[label]["IoU"])):
                if math.isnan(theirs):
                    assert ours is None
                else:
                    assert ours == pytest.approx(theirs, abs=1e-12)
            nsd = normalized_surface_dice(ref == label, pred == label, SPACING_ZYX, 1.0)
            assert case["nsd"][str(label)] == (None if math.isnan(nsd) else pytest.approx(nsd, abs=1e-7))
    # Empty-mask conventions: b has label 3 in neither map (null, counted), c only in the prediction (0).
    by_case = {c["case"]: c for c in summary["per_case"]}
    assert all(by_case["b"][m]["3"] is None for m in ("dice", "nsd", "iou"))
    assert all(by_case["c"][m]["3"] == 0.0 for m in ("dice", "nsd", "iou"))
    assert summary["n_empty_both"] == {"1": 0, "2": 0, "3": 1}
    # which labels each reference lacks (compare tells a false positive from a miss by it): b and c lack label 3
    for name, (ref, _) in arrays.items():
        assert by_case[name]["empty_reference"] == [str(k) for k in (1, 2, 3) if not (ref == k).any()]
    assert by_case["c"]["empty_reference"] == ["3"] and by_case["a"]["empty_reference"] == []
    for metric in ("dice", "nsd", "iou"):
        for label in ("1", "2", "3"):
            values = [c[metric][label] for c in summary["per_case"] if c[metric][label] is not None]
            assert summary["mean"][metric][label] == pytest.approx(sum(values) / len(values))
        assert summary["foreground_mean"][metric] == pytest.approx(np.mean(list(summary["mean"][metric].values())))
    assert summary["mean"]["dice"]["3"] == pytest.approx(0.5 * by_case["a"]["dice"]["3"])  # a and c, not b

    rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
    assert len(rows) == 9 and rows[0].keys() == {"case", "label", "name", "dice", "nsd", "iou"}
    row_b3 = next(r for r in rows if r["case"] == "b" and r["label"] == "3")
    assert row_b3["dice"] == row_b3["nsd"] == row_b3["iou"] == ""
    row_a1 = next(r for r in rows if r["case"] == "a" and r["label"] == "1")
    assert float(row_a1["nsd"]) == by_case["a"]["nsd"]["1"]

    # The real console script, cases in 2 worker processes: the same numbers.
    out2 = tmp_path / "summary_np2.json"
    proc = run_cli(["nnunet-poolskip", "evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "--dataset-json",
                    str(dataset_json), "-o", str(out2), "-np", "2"], env=None)
    assert "3 cases" in proc.stdout
    assert json.loads(out2.read_text())["per_case"] == summary["per_case"]


def test_nsd_uses_header_spacing_in_array_order(tmp_path, capsys):
    # One-voxel shift along z, the 3 mm axis: with a 2 mm tolerance the moved caps are out of tolerance.
    reference = box((12, 14, 16), (3, 4, 5), (5, 6, 7))
    prediction = np.roll(reference, 1, axis=0)
    write_map(tmp_path / "gt" / "box.nii.gz", reference)
    write_map(tmp_path / "pred" / "box.nii.gz", prediction)
    out = tmp_path / "s.json"
    assert evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "--nsd-tolerance", "2", "-o", out])[0] == 0
    nsd = json.loads(out.read_text())["per_case"][0]["nsd"]["1"]
    assert nsd == pytest.approx(brute_force_nsd(reference, prediction, SPACING_ZYX, 2.0), abs=1e-6)
    assert nsd < 0.95  # with the spacing reversed (0.8 mm along z) it would be 1


def test_tolerance_tables(tmp_path, capsys):
    arrays = random_cases(tmp_path)
    del arrays
    labels = {"background": 0, "liver": 1, "kidney_right": 2, "portal and splenic veins": 3}
    dataset_json = write_dataset_json(tmp_path / "dataset.json", labels)
    out = tmp_path / "s.json"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json", dataset_json,
                               "--nsd-tolerances", "flare22", "--nsd-tolerance", "1.5", "-o", out], capsys)
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["nsd_tolerance_mm"] == {"1": 5.0, "2": 3.0, "3": 1.5}  # FLARE22 by organ name, then the fallback
    assert any("3 (portal and splenic veins)" in note for note in summary["notes"])
    assert "portal and splenic veins" in captured.err

    # IVC under AMOS's name, in AMOS's own (Decathlon-style) dataset.json; a user table by label value and name.
    write_dataset_json(tmp_path / "amos.json", {"0": "background", "1": "spleen", "2": "postcava",
                                                "3": "left adrenal gland"})
    table = tmp_path / "tol.json"
    table.write_text(json.dumps({"1": 4.5, "Left_Adrenal_Gland": 0.5}))
    for spec, expected in (("flare22", {"1": 3.0, "2": 2.0, "3": 2.0}), (table, {"1": 4.5, "2": 1.0, "3": 0.5})):
        assert evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json", tmp_path / "amos.json",
                         "--nsd-tolerances", spec, "-o", out])[0] == 0
        assert json.loads(out.read_text())["nsd_tolerance_mm"] == expected


def test_flare22_matches_the_amos_downloads_own_spellings(tmp_path, capsys):
    """AMOS 2022's dataset.json (Decathlon style) spells the aorta "arota"; FLARE22 gives the aorta 2 mm."""
    random_cases(tmp_path)
    amos = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gall bladder",
            "5": "esophagus", "6": "liver", "7": "stomach", "8": "arota", "9": "postcava", "10": "pancreas",
            "11": "right adrenal gland", "12": "left adrenal gland", "13": "duodenum", "14": "bladder",
            "15": "prostate/uterus"}
    out = tmp_path / "s.json"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json",
                               write_dataset_json(tmp_path / "amos.json", amos), "--nsd-tolerances", "flare22",
                               "-o", out], capsys)
    assert code == 0
    # FLARE22 (DESIGN.md): liver 5, kidneys 3, spleen 3, pancreas 5, aorta 2, IVC 2, adrenal glands 2,
    # gallbladder 2, esophagus 3, stomach 5, duodenum 7; bladder and prostate/uterus get the 1 mm default
    expected = {1: 3.0, 2: 3.0, 3: 3.0, 4: 2.0, 5: 3.0, 6: 5.0, 7: 5.0, 8: 2.0, 9: 2.0, 10: 5.0, 11: 2.0, 12: 2.0,
                13: 7.0, 14: 1.0, 15: 1.0}
    assert json.loads(out.read_text())["nsd_tolerance_mm"] == {str(k): v for k, v in expected.items()}
    assert "does not cover labels 14 (bladder), 15 (prostate/uterus)" in captured.err


def _change(tmp_path, kind):
    """Make prediction b differ from its reference in one way; return the expected message fragment."""
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "gt" / "b.nii.gz")))
    target = tmp_path / "pred" / "b.nii.gz"
    if kind == "spacing":
        write_map(target, ref, spacing=(0.8, 1.0, 2.5))
    elif kind == "origin":
        write_map(target, ref, origin=(0.0, 5.0, 0.0))
    elif kind == "direction":
        write_map(target, ref, direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    elif kind == "shape":
        write_map(target, ref[:-1])
    elif kind == "label":
        bad = ref.copy()
        bad[0, 0, 0] = 7
        write_map(target, bad)
        return "label values [7]"
    return f"{kind} differs"


@pytest.mark.parametrize("kind", ["spacing", "origin", "direction", "shape", "label"])
def test_bad_prediction_names_the_case(tmp_path, capsys, kind):
    random_cases(tmp_path)
    message = _change(tmp_path, kind)
    # the dataset.json label set (1-3): value 7 is an error there (--labels would ignore it)
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json",
                               write_dataset_json(tmp_path / "dataset.json"), "-o", tmp_path / "s.json"], capsys)
    assert code == 2
    assert "case b" in captured.err and message in captured.err
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("role, kept", [("pred", 1 / 2), ("gt", 3 / 4)])
def test_truncated_file_is_refused_before_any_metric(tmp_path, capsys, role, kept):
    """SimpleITK reads a truncated .nii.gz as zeros: without the check, the case would be scored on them."""
    random_cases(tmp_path)
    target = tmp_path / role / "b.nii.gz"
    data = target.read_bytes()
    target.write_bytes(data[:int(len(data) * kept)])  # the small reference: keep its header readable
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).shape == (10, 14, 16)  # read without complaint
    out, table = tmp_path / "s.json", tmp_path / "s.csv"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "2", "3", "-o", out,
                               "--csv", table], capsys)
    assert code == 2
    assert f"case b: {target} is truncated" in captured.err
    assert not out.exists() and not table.exists()


def test_missing_output_folders_are_created(tmp_path, capsys):
    random_cases(tmp_path)
    out, table = tmp_path / "new" / "deeper" / "summary.json", tmp_path / "other" / "cases.csv"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "2", "3", "-o", out,
                               "--csv", table], capsys)
    assert code == 0 and f"wrote {out}" in captured.out
    assert json.loads(out.read_text())["n_cases"] == 3
    with open(table, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 3  # cases x labels
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "-o", tmp_path / "new"], capsys)
    assert code == 2 and f"-o/--output {tmp_path / 'new'} is a folder" in captured.err


def test_seed_is_recorded_only_when_given(tmp_path, capsys):
    random_cases(tmp_path)
    for seed, out in ((7, tmp_path / "seeded.json"), (None, tmp_path / "unseeded.json")):
        code, _ = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "-o", out,
                            *([] if seed is None else ["--seed", seed])], capsys)
        assert code == 0
        assert json.loads(out.read_text()).get("seed", "absent") == (7 if seed is not None else "absent")


def test_label_outside_label_set_in_reference(tmp_path, capsys):
    """A dataset.json is the whole label set: a value it lacks is an error (``--labels`` ignores other values)."""
    random_cases(tmp_path)
    dataset_json = write_dataset_json(tmp_path / "dataset.json", {"background": 0, "liver": 1, "kidney_right": 2})
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json", dataset_json, "-o",
                               tmp_path / "s.json"], capsys)
    assert code == 2 and "case a: reference" in captured.err and "label values [3]" in captured.err


def test_missing_predictions(tmp_path, capsys):
    random_cases(tmp_path)
    (tmp_path / "pred" / "c.nii.gz").unlink()
    out = tmp_path / "s.json"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "2", "3", "-o", out], capsys)
    assert code == 2 and "1 of 3 cases have no prediction" in captured.err
    assert ": c (use --allow-missing" in captured.err
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "2", "3", "-o", out,
                               "--allow-missing"], capsys)
    assert code == 0 and "INCOMPLETE" in captured.out
    summary = json.loads(out.read_text())
    assert summary["complete"] is False and summary["missing_predictions"] == ["c"]
    assert [c["case"] for c in summary["per_case"]] == ["a", "b"] and summary["n_cases"] == 2
    assert any("1 of 3 reference cases had no prediction" in note for note in summary["notes"])


@pytest.mark.parametrize("extra,message", [
    (["--labels", "1", "--nsd-tolerances", "flare99"], "neither a preset"),
    (["--labels", "1", "--nsd-tolerance", "-1"], "--nsd-tolerance"),
    (["--labels", "0", "1"], "foreground values > 0"),
    (["--labels", "1", "2", "--nsd-tolerances", "flare22"], "matches none of the labels 1 (1), 2 (2)"),
])
def test_bad_arguments(tmp_path, capsys, extra, message):
    random_cases(tmp_path)
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", *extra, "-o", tmp_path / "s.json"], capsys)
    assert code == 2 and message in captured.err


def test_bad_tables_and_folders(tmp_path, capsys):
    random_cases(tmp_path)
    table = tmp_path / "tol.json"
    table.write_text(json.dumps({"9": 2.0}))
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "--nsd-tolerances", table,
                               "-o", tmp_path / "s.json"], capsys)
    assert code == 2 and "label values [9]" in captured.err
    table.write_text(json.dumps({"liver": "five"}))
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "--nsd-tolerances", table,
                               "-o", tmp_path / "s.json"], capsys)
    assert code == 2 and "'liver'" in captured.err
    code, captured = evaluate([tmp_path / "gt", tmp_path / "nowhere", "--labels", "1", "-o", tmp_path / "s.json"],
                              capsys)
    assert code == 2 and "prediction folder" in captured.err and "nowhere" in captured.err
    write_dataset_json(tmp_path / "regions.json", {"background": 0, "whole": [1, 2]})
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--dataset-json", tmp_path / "regions.json",
                               "-o", tmp_path / "s.json"], capsys)
    assert code == 2 and "region-based" in captured.err
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"not an image")
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "1", "2", "3", "-o",
                               tmp_path / "s.json"], capsys)
    assert code == 2 and "case a" in captured.err and "a.nii.gz" in captured.err


def test_labels_option_scores_only_the_listed_labels(tmp_path, capsys):
    """``--labels 3`` scores label 3 and ignores the others in both maps (issue 25: it refused references with
    other labels); the summary says which other values it found and ignored."""
    arrays = random_cases(tmp_path)
    out = tmp_path / "s.json"
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "3", "-o", out], capsys)
    assert code == 0, captured.err
    summary = json.loads(out.read_text())
    assert summary["labels"] == {"3": "3"}
    assert summary["ignored_label_values"] == {
        "reference": sorted({int(v) for ref, _ in arrays.values() for v in np.unique(ref)} - {0, 3}),
        "prediction": sorted({int(v) for _, pred in arrays.values() for v in np.unique(pred)} - {0, 3})}
    assert summary["ignored_label_values"]["reference"] == [1, 2]
    assert any("label values [1, 2] in the reference" in note for note in summary["notes"])
    by_case = {c["case"]: c for c in summary["per_case"]}
    for case, (ref, pred) in arrays.items():
        r, p = ref == 3, pred == 3
        expected = None if not r.any() and not p.any() else 2 * (r & p).sum() / (r.sum() + p.sum())
        assert by_case[case]["dice"]["3"] == (None if expected is None else pytest.approx(expected, abs=1e-12))
    # a value that is not an integer label value is still refused
    code, captured = evaluate([tmp_path / "gt", tmp_path / "pred", "--labels", "0", "-o", out], capsys)
    assert code == 2 and "--labels must be foreground values > 0" in captured.err
