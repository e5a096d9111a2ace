"""``compare``'s paired statistics (statistics.json) against an independent computation made here: differences
collected case by case from the summaries, scipy's Wilcoxon test, a bootstrap of our own (numpy, another seed),
Holm's step-down procedure run as a rejection procedure; degenerate cases, the tables and the figures."""
from __future__ import annotations

import itertools
import json
import math
import re

import matplotlib.image
import numpy as np
import pytest
from scipy import stats

from nnunet_poolskip.cli import main
from nnunet_poolskip.evaluation import comparison_figures
from nnunet_poolskip.evaluation.evaluate_predictions import summarize
from nnunet_poolskip.evaluation.statistics import holm, paired_statistics

NAN = math.nan
LABELS = {1: "liver", 2: "spleen", 3: "pancreas"}
METRICS = ("dice", "nsd", "iou")


def write_summary(path, values, labels=LABELS):
    """values: {case: {metric: {label: value}}} with NaN for "no value"; a summary.json as ``evaluate`` writes it."""
    per_case = [{"case": case, **{m: {k: by_metric[m][k] for k in labels} for m in METRICS}}
                for case, by_metric in values.items()]
    summary = summarize(per_case, labels, {k: 1.0 for k in labels})
    summary.update({"missing_predictions": [], "complete": True, "notes": []})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


def random_values(rng, cases, shift=0.0):
    return {case: {m: {k: float(np.clip(rng.uniform(0.5, 0.9) + shift, 0, 1)) for k in LABELS} for m in METRICS}
            for case in cases}


@pytest.fixture
def pair(tmp_path):
    """A baseline and a model on 14 common cases plus one case only the model has, with nulls on either side,
    a label empty in both, and an exact tie."""
    rng = np.random.default_rng(7)
    cases = [f"case{i:02d}" for i in range(14)]
    a = random_values(rng, cases)
    b = random_values(rng, cases + ["extra"], shift=0.03)
    a["case01"]["dice"][1] = NAN            # null on the baseline's side only
    b["case02"]["dice"][2] = NAN            # null on the model's side only
    for side in (a, b):                     # empty in both
        side["case03"]["dice"][3] = NAN
    b["case04"]["dice"][1] = a["case04"]["dice"][1]   # an exact tie
    for side in (a, b):                     # a case without any Dice value: no foreground value
        side["case05"]["dice"] = {k: NAN for k in LABELS}
    return write_summary(tmp_path / "a" / "summary.json", a), write_summary(tmp_path / "b" / "summary.json", b)


def expected_differences(a_path, b_path, metric, label):
    """B - A over the cases both summaries hold, straight from the two JSON files, scored as statistics.json v2
    says: a label null (Dice) in either summary is absent from that case's reference; there a null scores 1 and a
    value counts as it is; the foreground is the mean over the labels present in the reference. Also the cases left
    out (in one summary only, or without a foreground value)."""
    docs = [json.loads(p.read_text()) for p in (a_path, b_path)]
    empty = {}
    for doc in docs:
        for case in doc["per_case"]:
            empty.setdefault(case["case"], set()).update(k for k, v in case["dice"].items() if v is None)

    def values(doc):
        out = {}
        for case in doc["per_case"]:
            absent = empty[case["case"]]
            if label == "foreground":
                present = [v for k, v in case[metric].items() if k not in absent and v is not None]
                out[case["case"]] = sum(present) / len(present) if present else None
            else:
                value = case[metric][label]
                out[case["case"]] = 1.0 if value is None and label in absent else value
        return out

    a, b = values(docs[0]), values(docs[1])
    cases = set(a) | set(b)
    both = [c["case"] for c in docs[0]["per_case"] if a.get(c["case"]) is not None and b.get(c["case"]) is not None]
    return (np.array([b[c] for c in both]) - np.array([a[c] for c in both]),
            np.array([a[c] for c in both]), np.array([b[c] for c in both]), len(cases) - len(both))


def exhaustive_sign_flip_p(d):
    nonzero = [x for x in d if x != 0]
    observed = abs(sum(nonzero))
    hits = sum(abs(sum(s * x for s, x in zip(signs, nonzero))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(nonzero)))
    return hits / 2 ** len(nonzero)


def own_bca(d, resamples=10_000, seed=12345):
    """BCa interval of the mean written out (Efron & Tibshirani, ch. 14), another seed than compare's."""
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    z0 = stats.norm.ppf(np.mean(means < d.mean()))
    jack = np.array([np.delete(d, i).mean() for i in range(d.size)])
    u = jack.mean() - jack
    acceleration = (u ** 3).sum() / (6 * ((u ** 2).sum()) ** 1.5)
    z = stats.norm.ppf([0.025, 0.975])
    levels = stats.norm.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
    return np.percentile(means, 100 * levels)


def own_percentile_bootstrap(d, resamples=10_000, seed=12345):
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    return np.percentile(means, [2.5, 97.5])


def holm_by_rejection(p_values, alpha):
    """Holm's procedure as its definition states it: walk the sorted p values, reject while p_(j) <= alpha/(m-j+1),
    stop at the first that is not; returns the indices rejected."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m, rejected = len(p_values), set()
    for j, index in enumerate(order):
        if p_values[index] > alpha / (m - j):
            break
        rejected.add(index)
    return rejected


def test_statistics_json_equals_an_independent_computation(tmp_path, pair):
    a_path, b_path = pair
    out = tmp_path / "cmp"
    assert main(["compare", str(a_path), str(b_path), "--names", "base", "ours", "-o", str(out)]) == 0
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["format_version"] == 2 and statistics["empty_reference_source"] == "inferred"
    assert "BCa" in statistics["method"]["bootstrap"] and "sign-flip" in statistics["method"]["test"]
    entries = {(e["metric"], e["label"]): e for e in statistics["comparisons"]}
    assert set(entries) == {(m, k) for m in METRICS for k in ("1", "2", "3", "foreground")}
    for metric in METRICS:
        p_family = {}
        for label in ("1", "2", "3", "foreground"):
            entry = entries[metric, label]
            d, a, b, left_out = expected_differences(a_path, b_path, metric, label)
            assert (entry["model"], entry["baseline"]) == ("ours", "base")
            assert entry["n"] == d.size and entry["n_left_out"] == left_out
            assert entry["mean_difference"] == pytest.approx(d.mean(), abs=1e-12)
            assert (entry["wins"], entry["ties"], entry["losses"]) == (int((b > a).sum()), int((b == a).sum()),
                                                                      int((b < a).sum()))
            assert entry["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d, zero_method="wilcox").pvalue, rel=1e-12)
            assert entry["p"] == pytest.approx(exhaustive_sign_flip_p(d), abs=1e-12)
            assert entry["ci95"] == pytest.approx(own_bca(d), abs=0.005) and entry["ci_method"] == "BCa"
            assert entry["scope"] == "cases" and entry["n_seeds"] == {"base": 1, "ours": 1}
            if label == "foreground":
                assert entry["p_holm"] == entry["p"] and entry["primary"] == (metric == "dice")
            else:
                p_family[label] = entry["p"]
        labels = sorted(p_family)
        p_values = [p_family[k] for k in labels]
        adjusted = [entries[metric, k]["p_holm"] for k in labels]
        # the adjusted p is the smallest level at which Holm's procedure rejects the hypothesis
        levels = [p + step for p in adjusted for step in (-1e-9, 1e-9)] + [0.01, 0.05, 0.2]
        for level in [v for v in levels if 0 < v < 1]:
            assert holm_by_rejection(p_values, level) == {i for i, p in enumerate(adjusted) if p <= level}
    # empty references are scored, not left out: only "extra" (B only) is; the foreground also leaves out case05
    # (no organ in its reference); case01 (A null: A predicted nothing where B predicted the liver) counts
    assert entries["dice", "1"]["n_left_out"] == 1 and entries["dice", "1"]["n"] == 14
    assert entries["dice", "1"]["n_empty_reference"] == 2 and entries["dice", "3"]["n_empty_reference"] == 2
    assert entries["dice", "1"]["false_positives"] == {"base": 0, "ours": 1}
    assert entries["dice", "1"]["ties"] == 2  # case04's exact tie and case05 (empty in both: 1 and 1)
    assert entries["dice", "foreground"]["n"] == 13 and entries["dice", "foreground"]["n_left_out"] == 2


def test_holm_worked_example():
    # m = 4 non-null: sorted 0.01, 0.03, 0.04, 0.2 -> 4*0.01, max(0.04, 3*0.03), max(0.09, 2*0.04), max(0.09, 0.2)
    assert holm([0.01, 0.04, None, 0.03, 0.2]) == pytest.approx([0.04, 0.09, None, 0.09, 0.2])
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0]) and holm([None]) == [None] and holm([]) == []


def test_degenerate_conventions():
    empty = paired_statistics([], [])
    assert empty == {"n": 0, "mean_difference": None, "ci95": None, "ci_method": None, "p": None, "p_min": None,
                     "p_wilcoxon": None, "wins": 0, "ties": 0, "losses": 0, "mean_a": None, "mean_b": None}
    one = paired_statistics([0.5], [0.75])
    assert one["n"] == 1 and one["mean_difference"] == pytest.approx(0.25)
    assert one["ci95"] is None and one["p_wilcoxon"] is None and (one["wins"], one["losses"]) == (1, 0)
    constant = paired_statistics([0.5, 0.25, 0.75], [0.625, 0.375, 0.875])  # every difference exactly +0.125
    assert constant["ci95"] == pytest.approx([0.125, 0.125], abs=1e-12)
    assert constant["p"] == pytest.approx(0.25) == constant["p_min"]  # 3 positive signs: 2 / 2**3
    zeros = paired_statistics([0.5, 0.25], [0.5, 0.25])
    assert zeros["p_wilcoxon"] is None and zeros["ties"] == 2 and zeros["ci95"] == [0.0, 0.0] and zeros["p"] == 1.0


def test_tables_show_interval_p_and_small_n_in_words(tmp_path, monkeypatch):
    figures = {}
    saved = comparison_figures.save_figure
    monkeypatch.setattr(comparison_figures, "save_figure",
                        lambda fig, path: (figures.__setitem__(path.name, fig), saved(fig, path)))
    rng = np.random.default_rng(3)
    a = write_summary(tmp_path / "a" / "summary.json", random_values(rng, ["p", "q", "r", "s"]))
    b = write_summary(tmp_path / "b" / "summary.json", random_values(rng, ["p", "q", "r", "s"], shift=0.1))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--names", "base", "ours", "-o", str(out),
                 "--caveat", "SMOKE-SCALE run on synthetic phantoms"]) == 0
    statistics = json.loads((out / "statistics.json").read_text())
    table = (out / "table3.md").read_text()
    assert table.startswith("> **SMOKE-SCALE run on synthetic phantoms**\n")
    row = next(line for line in table.splitlines() if line.startswith("| ours − base |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1 run, 4 cases"
    for cell, metric in zip(cells[2:5], METRICS):
        entry = next(e for e in statistics["comparisons"] if e["metric"] == metric and e["label"] == "foreground")
        match = re.fullmatch(r"([+-]\d+\.\d\d) \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\] p=(\d\.\d\d) ‡", cell)
        assert match, cell
        mean, low, high, p = map(float, match.groups())
        # the printed numbers are statistics.json's, rounded to two decimals (percentage points for differences)
        assert [mean, low, high] == [round(100 * v, 2) for v in (entry["mean_difference"], *entry["ci95"])]
        assert p == float(f"{entry['p']:.2f}")
    # four cases: the two-sided test cannot reach 0.05 (smallest p 2/2^4), and the table says so
    assert "cannot reach p < 0.05" in table and "2/2^k" in table
    per_organ = (out / "per_organ.md").read_text()
    assert per_organ.startswith("> **SMOKE-SCALE run on synthetic phantoms**\n")
    assert "cannot reach p < 0.05" in per_organ
    forest = figures["differences.png"]
    # the foreground in a panel of its own scale (first row), the organs below (second row, first column)
    assert [t.get_text() for t in forest.axes[0].get_yticklabels()] == ["foreground, per-case mean (n=4) ‡"]
    assert [t.get_text() for t in forest.axes[3].get_yticklabels()] == [
        "liver (n=4) ‡", "spleen (n=4) ‡", "pancreas (n=4) ‡"]
    assert forest.axes[0].get_xlim() != forest.axes[3].get_xlim()
    # NSD named with its tolerance (the summaries' 1 mm), as in the tables
    assert [a.get_title() for a in forest.axes] == [
        "Dice: foreground (own scale)", "NSD@1 mm: foreground (own scale)", "IoU: foreground (own scale)",
        "Dice: per organ", "NSD@1 mm: per organ", "IoU: per organ"]
    assert "ONE RUN PER MODEL" in forest.get_suptitle()
    legend = [t.get_text() for t in forest.legends[0].get_texts()]
    assert "one run per model: interval over test cases only, never called significant" in legend
    # no filled point: one run per model is never called significant
    assert all(line.get_markerfacecolor() == "white" for axes in forest.axes for line in axes.lines
               if line.get_marker() == "o")
    assert any("cannot reach p < 0.05" in t.get_text() for t in forest.legends[0].get_texts())

    csv_row = (out / "table3.csv").read_text().splitlines()
    header, ours = csv_row[0].split(","), dict(zip(csv_row[0].split(","), csv_row[2].split(",")))
    assert {"paired_delta_dice", "ci95_low_dice", "ci95_high_dice", "p_dice", "p_wilcoxon_dice", "n_paired_dice"} <= \
        set(header)
    dice = next(e for e in statistics["comparisons"] if e["metric"] == "dice" and e["label"] == "foreground")
    assert float(ours["paired_delta_dice"]) == pytest.approx(100 * dice["mean_difference"], abs=1e-4)
    assert float(ours["p_wilcoxon_dice"]) == pytest.approx(dice["p_wilcoxon"], rel=1e-5)
    assert float(ours["p_dice"]) == pytest.approx(dice["p"], rel=1e-5)


def test_enough_cases_need_no_warning(tmp_path):
    rng = np.random.default_rng(4)
    cases = [f"c{i}" for i in range(8)]
    a = write_summary(tmp_path / "a" / "summary.json", random_values(rng, cases))
    b = write_summary(tmp_path / "b" / "summary.json", random_values(rng, cases, shift=0.1))
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "table3.md").read_text()
    assert "‡" not in table and "cannot reach" not in table


def test_foreground_text_counts_what_is_averaged(tmp_path):
    """A label without a value in any case has no mean and is not in the foreground mean: say so, per model."""
    values = {"x": {m: {1: 0.8, 2: 0.6, 3: 0.4} for m in METRICS}, "y": {m: {1: 0.9, 2: 0.7, 3: 0.5} for m in METRICS}}
    a = write_summary(tmp_path / "a" / "summary.json", values)
    for case in values.values():
        for metric in METRICS:
            case[metric][3] = NAN  # pancreas empty in reference and prediction of every case
    b = write_summary(tmp_path / "b" / "summary.json", values)
    summary_b = json.loads(b.read_text())
    # what evaluate averaged: liver and spleen only
    assert summary_b["foreground_mean"]["dice"] == pytest.approx((0.85 + 0.65) / 2)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--names", "base", "ours", "-o", str(out)]) == 0
    table = (out / "table3.md").read_text()
    assert "Foreground means over 3 labels" not in table
    assert "Foreground means over base: 3 labels; ours: 2 of 3 labels (no value in any case: pancreas);" in table
    rows = (out / "table3.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [dict(zip(header, r.split(",")))["foreground_labels"] for r in rows[1:]] == ["3", "2"]
    assert main(["compare", str(a), str(a), "--names", "one", "two", "-o", str(out)]) == 0
    assert "Foreground means over 3 labels;" in (out / "table3.md").read_text()
    assert main(["compare", str(b), str(b), "--names", "one", "two", "-o", str(out)]) == 0
    assert "Foreground means over 2 of 3 labels (no value in any case: pancreas);" in (out / "table3.md").read_text()


def test_figures_carry_the_caveat_and_stay_readable(tmp_path, monkeypatch, pair):
    a_path, b_path = pair
    titles = []
    original = comparison_figures.save_figure

    def recording_save(figure, path, **kwargs):
        titles.append((path.name, figure.get_suptitle().replace("\n", " ")))
        original(figure, path, **kwargs)

    monkeypatch.setattr(comparison_figures, "save_figure", recording_save)
    out = tmp_path / "cmp"
    caveat = "SMOKE-SCALE run on synthetic phantoms - says nothing about Pool Skip on real data"
    assert main(["compare", str(a_path), str(b_path), str(b_path), "--names", "base", "ours", "again", "-o", str(out),
                 "--caveat", caveat]) == 0
    assert sorted(name for name, _ in titles) == ["differences.png", "per_organ_dice.png"]
    assert all(caveat in title for _, title in titles)
    for name in ("differences.png", "per_organ_dice.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width = matplotlib.image.imread(out / name).shape[:2]
        assert 1200 <= width <= 1700 and height >= 400  # drawn for a reader at about 1600 px, not a strip
