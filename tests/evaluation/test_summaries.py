"""average_summaries: each case's values averaged over runs (seeds), nulls handled as documented, means recomputed;
bad inputs named."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_poolskip.evaluation.comparison_tables import CompareInputError
from nnunet_poolskip.evaluation.summaries import AVERAGE_KEY, average_summaries, is_averaged_summary

LABELS = {"1": "spleen", "2": "liver"}


def write_summary(path, per_case, tolerance=1.0, **extra):
    """A summary.json in evaluate's format; per_case: case -> metric -> label -> value (None = null)."""
    document = {"metrics": ["dice", "nsd", "iou"], "labels": LABELS,
                "nsd_tolerance_mm": {k: tolerance for k in LABELS},
                "per_case": [{"case": case, **metrics} for case, metrics in per_case.items()],
                "mean": {}, "foreground_mean": {}, **extra}
    path.write_text(json.dumps(document))
    return path


def run_values(rng, null=()):
    """Random per-case values of one run; (case, label) pairs in ``null`` are null in every metric."""
    return {case: {metric: {label: (None if (case, label) in null else float(rng.uniform()))
                            for label in LABELS} for metric in ("dice", "nsd", "iou")}
            for case in ("c1", "c2", "c3")}


def test_per_case_values_are_averaged_over_runs_and_the_means_recomputed(tmp_path):
    rng = np.random.default_rng(0)
    runs = [run_values(rng), run_values(rng, null={("c2", "1")}), run_values(rng, null={("c2", "1"), ("c3", "2")})]
    runs[1]["c3"]["dice"]["2"] = 0.0  # a run that predicts an organ the reference lacks
    paths = [write_summary(tmp_path / f"seed_{i}.json", run, notes=["no test-time mirroring"])
             for i, run in enumerate(runs)]
    averaged = average_summaries(paths, ["seed 0", "seed 1", "seed 2"])

    assert is_averaged_summary(averaged) and averaged[AVERAGE_KEY]["runs"] == ["seed 0", "seed 1", "seed 2"]
    assert [c["case"] for c in averaged["per_case"]] == ["c1", "c2", "c3"]
    for metric in ("dice", "nsd", "iou"):
        # independent computation: nanmean over runs, per case and label
        table = np.array([[[np.nan if run[c][metric][k] is None else run[c][metric][k] for k in LABELS]
                           for c in ("c1", "c2", "c3")] for run in runs])
        expected = np.nanmean(table, axis=0)
        got = np.array([[np.nan if case[metric][k] is None else case[metric][k] for k in LABELS]
                        for case in averaged["per_case"]])
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        label_means = np.nanmean(expected, axis=0)
        assert [averaged["mean"][metric][k] for k in LABELS] == pytest.approx(list(label_means), rel=1e-12)
        assert averaged["foreground_mean"][metric] == pytest.approx(float(np.mean(label_means)), rel=1e-12)
    # c2 label 1: a value in run 0 only; c3 label 2: in runs 0 and 1 (0.0 counts as a value)
    assert averaged["per_case"][1]["dice"]["1"] == pytest.approx(runs[0]["c2"]["dice"]["1"])
    assert averaged["per_case"][2]["dice"]["2"] == pytest.approx((runs[0]["c3"]["dice"]["2"] + 0.0) / 2)
    assert averaged["n_partial"]["dice"] == {"1": 1, "2": 1}
    assert averaged["n_empty_both"] == {"1": 0, "2": 0}
    assert averaged["complete"] is True and averaged["notes"].count("no test-time mirroring") == 1
    json.dumps(averaged, allow_nan=False)  # valid JSON: nulls, not NaN


def test_a_value_null_in_every_run_stays_null_and_is_left_out_of_the_means(tmp_path):
    rng = np.random.default_rng(1)
    runs = [run_values(rng, null={("c1", "2")}) for _ in range(2)]
    averaged = average_summaries([write_summary(tmp_path / f"{i}.json", r) for i, r in enumerate(runs)])
    assert averaged["per_case"][0]["dice"]["2"] is None and averaged["n_empty_both"]["2"] == 1
    expected = np.mean([(runs[0][c]["dice"]["2"] + runs[1][c]["dice"]["2"]) / 2 for c in ("c2", "c3")])
    assert averaged["mean"]["dice"]["2"] == pytest.approx(expected, rel=1e-12)
    assert not math.isnan(averaged["foreground_mean"]["dice"])


def test_summaries_that_cannot_be_averaged_are_named(tmp_path):
    rng = np.random.default_rng(2)
    a = write_summary(tmp_path / "a.json", run_values(rng))
    other_cases = run_values(rng)
    other_cases["c4"] = other_cases.pop("c3")
    b = write_summary(tmp_path / "b.json", other_cases)
    with pytest.raises(CompareInputError, match=r"b.json and .*a.json hold different test cases \(c3, c4"):
        average_summaries([a, b])
    c = write_summary(tmp_path / "c.json", run_values(rng), tolerance=2.0)
    with pytest.raises(CompareInputError, match="different NSD tolerances"):
        average_summaries([a, c])
    with pytest.raises(CompareInputError, match="missing.json does not exist"):
        average_summaries([a, tmp_path / "missing.json"])
    with pytest.raises(CompareInputError, match="no summaries"):
        average_summaries([])


def test_evaluates_record_of_empty_references_is_kept(tmp_path):
    """evaluate's per-case ``empty_reference`` (the same references in every run) survives the averaging, so that
    compare can still tell a false positive from a missed organ; without it in every run it is left out."""
    rng = np.random.default_rng(1)
    runs = [run_values(rng, null={("c3", "2")}), run_values(rng)]
    runs[1]["c3"]["dice"]["2"] = 0.0  # run 1 predicts the liver that c3's reference lacks
    for run in runs:
        for case in run:
            run[case]["empty_reference"] = ["2"] if case == "c3" else []
    paths = [write_summary(tmp_path / f"seed_{i}.json", run) for i, run in enumerate(runs)]
    averaged = average_summaries(paths)
    assert [c["empty_reference"] for c in averaged["per_case"]] == [[], [], ["2"]]
    del runs[0]["c1"]["empty_reference"]
    paths[0] = write_summary(tmp_path / "seed_0.json", runs[0])
    assert all("empty_reference" not in c for c in average_summaries(paths)["per_case"])
