"""``nnunet-poolskip compare``: Table 3 values and deltas worked out by hand, per-organ tables, the plot,
incomplete-run marking, and summaries that cannot be compared."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib.image
import pytest
from conftest import run_cli

from nnunet_poolskip.cli import main
from nnunet_poolskip.evaluation.evaluate_predictions import summarize

NAN = math.nan
LABELS = {1: "liver", 2: "spleen"}


def write_summary(path: Path, cases, tolerance=1.0, **extra) -> Path:
    """cases: {case: (dice1, dice2)}; NSD = dice - 0.1 and IoU = dice / 2 so every metric is known by hand."""
    per_case = [{"case": case, "dice": {1: d1, 2: d2}, "nsd": {1: d1 - 0.1, 2: d2 - 0.1},
                 "iou": {1: d1 / 2, 2: d2 / 2}} for case, (d1, d2) in cases.items()]
    summary = summarize(per_case, LABELS, {1: tolerance, 2: tolerance})
    summary.update({"missing_predictions": [], "complete": True, "notes": []}, **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


@pytest.fixture
def summaries(tmp_path):
    # A: liver (0.8 + 0.9) / 2 = 0.85, spleen 0.6 (case y empty in both) -> foreground Dice 0.725.
    a = write_summary(tmp_path / "a" / "summary.json", {"x": (0.8, 0.6), "y": (0.9, NAN)})
    # B: liver 0.925, spleen 0.7 -> 0.8125: +8.75 points; NSD 0.7125 (+8.75); IoU 0.40625 (+4.375).
    b = write_summary(tmp_path / "b" / "summary.json", {"x": (0.9, 0.7), "y": (0.95, NAN)})
    # C: incomplete, with a caveat from the run that made it.
    c = write_summary(tmp_path / "c" / "summary.json", {"x": (0.7, 0.5)}, complete=False,
                      missing_predictions=["y"], notes=["trained for 50 epochs"])
    return a, b, c


def test_table3_values_and_deltas(tmp_path, summaries):
    a, b, c = summaries
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), str(c), "--names", "nnUNet", "nnUNet+PoolSkip", "short", "-o", str(out),
                 "--title", "BTCV"]) == 0
    table = (out / "table3.md").read_text()
    lines = table.splitlines()
    assert "| Model | BTCV DICE (%) ↑ | BTCV NSD@1 mm (%) ↑ | BTCV mIoU (%) ↑ |" in lines
    assert "| nnUNet | 72.50 | 62.50 | 36.25 |" in lines
    # 40.625 prints as 40.62 (binary float); the printed delta is that of the printed values: 40.62 - 36.25.
    assert "| nnUNet+PoolSkip | 81.25 +8.75 | 71.25 +8.75 | 40.62 +4.37 |" in lines
    # C: liver 0.7, spleen 0.5 -> 60.00 (-12.50), NSD 50.00 (-12.50), IoU 30.00 (-6.25); marked incomplete.
    assert "| short † | 60.00 -12.50 | 50.00 -12.50 | 30.00 -6.25 |" in lines
    assert "- † short: incomplete (1 cases without prediction: y)" in lines
    assert "- short: trained for 50 epochs" in lines
    assert "NSD tolerance 1 mm" in table

    rows = list(csv.DictReader((out / "table3.csv").open()))
    assert [r["model"] for r in rows] == ["nnUNet", "nnUNet+PoolSkip", "short"]
    assert float(rows[1]["dice_percent"]) == pytest.approx(81.25)
    assert float(rows[1]["delta_dice"]) == pytest.approx(8.75)
    assert float(rows[1]["delta_miou"]) == pytest.approx(4.375) and rows[0]["delta_dice"] == ""
    assert [r["incomplete"] for r in rows] == ["false", "false", "true"]
    assert [r["n_cases"] for r in rows] == ["2", "2", "1"]

    per_organ = (out / "per_organ.md").read_text().splitlines()
    # Means per model, then the paired differences against nnUNet: liver B - A = +10, +5 over x, y (mean +7.50,
    # every resample lies in [5, 10]; exact sign-flip p: 2 of the 4 sign vectors reach |7.5|); C has liver only in
    # x: -10 (one case: no interval, no p). Holm over the two organs: min(1, 2 x 0.5).
    assert ("| 1 liver | 85.00 | 92.50 | 70.00 | +7.50 [+5.00, +10.00] p=0.50 (Holm 1.00) ‡ "
            "| -10.00 [n/a] p=n/a (Holm n/a) ‡ |") in per_organ
    # spleen: y is empty in the reference and in both predictions, a perfect score for both (difference 0): the
    # differences are +10 and 0, one nonzero (p = 2/2 = 1)
    assert ("| 2 spleen | 60.00 | 70.00 | 50.00 | +5.00 [+0.00, +10.00] p=1.00 (Holm 1.00) ‡ "
            "| -10.00 [n/a] p=n/a (Holm n/a) ‡ |") in per_organ
    organ_rows = list(csv.DictReader((out / "per_organ.csv").open()))
    spleen_b = next(r for r in organ_rows if r["organ"] == "spleen" and r["model"] == "nnUNet+PoolSkip")
    assert float(spleen_b["iou_percent"]) == pytest.approx(35.0) and spleen_b["n_scored"] == "1"

    png = out / "per_organ_dice.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert not list(out.glob(".tmp*"))


def test_console_script_default_names(tmp_path, summaries):
    a, b, _ = summaries
    proc = run_cli(["nnunet-poolskip", "compare", str(a), str(b), "-o", str(tmp_path / "cmp")], env=None)
    assert "| a | 72.50 | 62.50 | 36.25 |" in proc.stdout and "| b | 81.25 +8.75 |" in proc.stdout
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"table3.md", "table3.csv", "per_organ.md",
                                                              "per_organ.csv", "per_organ_dice.png",
                                                              "statistics.json", "differences.png"}


def test_one_summary_writes_tables_without_statistics(tmp_path, summaries):
    a, b, _ = summaries
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    # the same folder again with one summary: no statistics of the earlier pair stay behind
    assert main(["compare", str(a), "-o", str(tmp_path / "cmp")]) == 0
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"table3.md", "table3.csv", "per_organ.md",
                                                              "per_organ.csv", "per_organ_dice.png"}


def test_cases_that_differ_are_noted(tmp_path, summaries):
    a, _, c = summaries
    assert main(["compare", str(a), str(c), "-o", str(tmp_path / "cmp")]) == 0
    assert "evaluated on 1 cases" in (tmp_path / "cmp" / "table3.md").read_text()


def test_incomparable_summaries(tmp_path, summaries, capsys):
    a, b, _ = summaries
    other_tolerance = write_summary(tmp_path / "t" / "summary.json", {"x": (0.8, 0.6)}, tolerance=2.0)
    other_labels = tmp_path / "l.json"
    data = json.loads(a.read_text())
    data["labels"]["3"] = "kidney"
    other_labels.write_text(json.dumps(data))
    same_folder_name = tmp_path / "other" / "a" / "summary.json"  # parent "a", like the baseline's
    same_folder_name.parent.mkdir(parents=True)
    same_folder_name.write_text(b.read_text())
    not_a_summary = tmp_path / "n.json"
    not_a_summary.write_text(json.dumps({"foreground_mean": {}}))
    for args, message in (([a, b, "--names", "one"], "2 summaries but 1 names"),
                          ([a, b, a, "--names", "x", "x", "y"], "different numbers of seeds"),
                          ([a, same_folder_name], "folder names repeat"),
                          ([a, other_tolerance], "different NSD tolerances"),
                          ([a, other_labels], "scores labels"),
                          ([a, not_a_summary], "lacks"),
                          ([a, tmp_path / "missing.json"], "does not exist")):
        assert main(["compare", *map(str, args), "-o", str(tmp_path / "cmp")]) == 2
        assert message in capsys.readouterr().err


def test_label_names_that_differ_are_refused_unless_matched_by_value(tmp_path, summaries, capsys):
    """Same label values, other meanings (issue 25): compare names both and refuses; --match-labels-by-value
    compares them anyway and says so under the table."""
    a, b, _ = summaries
    renamed = tmp_path / "renamed" / "summary.json"
    data = json.loads(b.read_text())
    data["labels"]["1"] = "organ1"
    renamed.parent.mkdir()
    renamed.write_text(json.dumps(data))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(renamed), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"label 1 is 'organ1' in {renamed} but 'liver' in {a}" in err
    assert "--match-labels-by-value" in err
    assert not out.exists()

    assert main(["compare", str(a), str(renamed), "-o", str(out), "--match-labels-by-value"]) == 0
    table = (out / "table3.md").read_text()
    assert f"label 1 is 'organ1' in {renamed}, 'liver' in {a}: compared by value (--match-labels-by-value)" in table
    assert "liver" in (out / "per_organ.md").read_text()
