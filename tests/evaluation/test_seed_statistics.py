"""statistics.json format 2: the across-seeds comparison (crossed random-effects model), the exact sign-flip test,
empty references scored so that a false positive counts, the primary endpoint. Hand-built per-seed summaries;
every value checked against a computation made here (numpy loops, itertools enumeration)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nnunet_poolskip.evaluation import comparison_figures
from nnunet_poolskip.evaluation.comparison_tables import CompareInputError, compare_summaries
from nnunet_poolskip.evaluation.evaluate_predictions import summarize
from nnunet_poolskip.evaluation.statistics import FOREGROUND, find, seed_entries, sign_flip_p

NAN = math.nan
LABELS = {1: "liver", 2: "spleen"}


def write_summary(path, dice, empty_reference=None):
    """dice: {case: (liver, spleen)} (NaN: empty in reference and prediction); NSD = IoU = Dice here."""
    per_case = []
    for case, values in dice.items():
        entry = {"case": case, **{m: dict(zip(LABELS, values)) for m in ("dice", "nsd", "iou")}}
        if empty_reference is not None:
            entry["empty_reference"] = empty_reference.get(case, [])
        per_case.append(entry)
    summary = summarize(per_case, LABELS, {k: 1.0 for k in LABELS})
    summary.update({"missing_predictions": [], "complete": True, "notes": []})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return str(path)


def seed_summaries(tmp_path, name, scores):
    """scores: array (S, n) of liver Dice per seed and case (spleen fixed at 0.9): one summary per seed."""
    return [write_summary(tmp_path / name / f"seed{s}.json",
                          {f"c{c:02d}": (float(v), 0.9) for c, v in enumerate(row)}) for s, row in enumerate(scores)]


def run_compare(tmp_path, a_paths, b_paths, **kwargs):
    names = ["A"] * len(a_paths) + ["B"] * len(b_paths)
    compare_summaries(a_paths + b_paths, names, tmp_path / "out", **kwargs)
    return json.loads((tmp_path / "out" / "statistics.json").read_text()), (tmp_path / "out" / "table3.md").read_text()


def anova_by_hand(d):
    """The crossed model's estimate written out with loops (independent of seed_statistics)."""
    seeds, cases = len(d), len(d[0])
    grand = sum(sum(row) for row in d) / (seeds * cases)
    seed_mean = [sum(row) / cases for row in d]
    case_mean = [sum(d[s][c] for s in range(seeds)) / seeds for c in range(cases)]
    ms_seed = cases * sum((m - grand) ** 2 for m in seed_mean) / (seeds - 1)
    ms_case = seeds * sum((m - grand) ** 2 for m in case_mean) / (cases - 1)
    ms_res = sum((d[s][c] - seed_mean[s] - case_mean[c] + grand) ** 2 for s in range(seeds)
                 for c in range(cases)) / ((seeds - 1) * (cases - 1))
    # variance components truncated at 0: a mean square below MS_res drops out together with the -MS_res it needs
    terms = [(ms, df) for ms, df in ((ms_seed, seeds - 1), (ms_case, cases - 1)) if ms > ms_res]
    if len(terms) == 2:
        terms.append((-ms_res, (seeds - 1) * (cases - 1)))
    elif not terms:
        terms = [(ms_res, (seeds - 1) * (cases - 1))]
    combined = sum(t for t, _ in terms)
    df = max(1.0, combined ** 2 / sum(t ** 2 / f for t, f in terms))
    se = math.sqrt(combined / (seeds * cases))
    half = stats.t.ppf(0.975, df) * se
    return grand, se, df, [grand - half, grand + half], 2 * stats.t.sf(abs(grand) / se, df)


def test_run_noise_hides_in_each_seed_but_not_across_seeds(tmp_path):
    """Large run noise (seed offsets of -4..+5 points), tiny case noise: each seed's case interval excludes 0,
    the across-seeds interval contains it."""
    rng = np.random.default_rng(1)
    n = 12
    a = 0.80 + rng.normal(0, 0.02, (3, n))
    offsets = np.array([0.05, -0.04, 0.03])[:, None]
    b = a + offsets + rng.normal(0, 0.001, (3, n))
    statistics, table = run_compare(tmp_path, seed_summaries(tmp_path, "a", a), seed_summaries(tmp_path, "b", b))
    assert statistics["format_version"] == 2
    headline = find(statistics, "B", "dice", "1")
    assert headline["scope"] == "seeds_and_cases" and headline["n_seeds"] == {"A": 3, "B": 3}
    low, high = headline["ci95"]
    assert low < 0 < high and headline["p"] > 0.05
    mean, se, df, interval, p = anova_by_hand((b - a).tolist())
    assert headline["mean_difference"] == pytest.approx(mean, abs=1e-12)
    assert headline["se"] == pytest.approx(se, rel=1e-9) and headline["df"] == pytest.approx(df, rel=1e-9)
    assert headline["ci95"] == pytest.approx(interval, rel=1e-9) and headline["p"] == pytest.approx(p, rel=1e-9)
    per_seed = seed_entries(statistics, "B", "dice", "1")
    assert [e["seed"] for e in per_seed] == [0, 1, 2] and all(e["scope"] == "cases" for e in per_seed)
    for entry, offset in zip(per_seed, offsets[:, 0]):
        assert entry["ci95"][0] * entry["ci95"][1] > 0  # each seed alone: the interval excludes 0
        assert np.sign(entry["mean_difference"]) == np.sign(offset)
        assert entry["p"] == pytest.approx(2 / 2 ** n)  # exact: every sign the same
    assert headline["seeds_better"] == 2 and headline["seeds_worse"] == 1
    assert "Better in 2 of 3 seeds" in table and "cover retraining and test-case sampling" in table
    fg = find(statistics, "B", "dice", FOREGROUND)
    assert fg["primary"] and fg["verdict"] == "inconclusive" and "not significant" in table


def test_a_true_effect_consistent_over_seeds_is_found(tmp_path, monkeypatch):
    figures = {}
    saved = comparison_figures.save_figure
    monkeypatch.setattr(comparison_figures, "save_figure",
                        lambda fig, path: (figures.__setitem__(path.name, fig), saved(fig, path)))
    rng = np.random.default_rng(2)
    a = 0.80 + rng.normal(0, 0.02, (5, 12)) + rng.normal(0, 0.005, (5, 1))
    b = a + 0.05 + rng.normal(0, 0.005, (5, 1)) + rng.normal(0, 0.005, (5, 12))
    statistics, table = run_compare(tmp_path, seed_summaries(tmp_path, "a", a), seed_summaries(tmp_path, "b", b))
    fg = find(statistics, "B", "dice", FOREGROUND)
    # foreground = mean of liver and spleen (0.9 in both): half the liver difference
    mean, se, df, interval, p = anova_by_hand(((b - a) / 2).tolist())
    assert fg["mean_difference"] == pytest.approx(mean, abs=1e-12) and fg["p"] == pytest.approx(p, rel=1e-9)
    assert fg["ci95"][0] > 0.01 and fg["p"] < 0.001 and fg["seeds_better"] == 5
    assert fg["primary"] and fg["p_holm"] == fg["p"] and fg["verdict"] == "above_margin"
    assert "better by more than 1.00" in table and "; significant" in table
    forest = figures["differences.png"]
    assert "covering retraining and case sampling" in forest.get_suptitle()
    filled = [line for line in forest.axes[0].lines if line.get_marker() == "o"]
    assert filled and all(line.get_markerfacecolor() != "white" for line in filled)  # Dice foreground: significant
    # the spleen is 0.9 in every seed of both: no interval to print, it says so
    per_organ = (tmp_path / "out" / "per_organ.md").read_text()
    assert "identical in 12/12 x 5 seeds (both 90)" in per_organ


def test_one_seed_says_what_it_covers_and_never_significant(tmp_path):
    rng = np.random.default_rng(3)
    a = 0.80 + rng.normal(0, 0.02, (1, 12))
    statistics, table = run_compare(tmp_path, seed_summaries(tmp_path, "a", a),
                                    seed_summaries(tmp_path, "b", a + 0.05))
    fg = find(statistics, "B", "dice", FOREGROUND)
    assert fg["scope"] == "cases" and "seed" not in fg and fg["n_seeds"] == {"A": 1, "B": 1}
    assert "test-case sampling only" in table and "--seeds 0 1 2 3 4" in table and "S >= 5" in table
    assert "significant" not in table.replace("called significant", "")
    assert "identical in 12/12 (both 90)" in (tmp_path / "out" / "per_organ.md").read_text()


def test_hallucinated_organ_counts_against_the_model(tmp_path):
    """The issue's 6-case example: the spleen is absent from the reference of 3 cases; B predicts it there.
    Version 1 left those cases out (means 80 vs 41, paired +2.0 for B); now B scores 0 against A's 1.0."""
    spleen_a = [0.78, 0.80, 0.82, NAN, NAN, NAN]
    spleen_b = [0.80, 0.82, 0.84, 0.0, 0.0, 0.0]
    cases = [f"c{i}" for i in range(6)]
    empty = {c: [2] for c in cases[3:]}
    for record in (None, empty):  # inferred from the nulls, and evaluate's record
        folder = tmp_path / ("recorded" if record else "inferred")
        a = write_summary(folder / "a.json", {c: (0.9, v) for c, v in zip(cases, spleen_a)}, record)
        b = write_summary(folder / "b.json", {c: (0.9, v) for c, v in zip(cases, spleen_b)}, record)
        statistics, _ = run_compare(folder, [a], [b])
        assert json.loads(open(a).read())["mean"]["dice"]["2"] == pytest.approx(0.80)
        assert json.loads(open(b).read())["mean"]["dice"]["2"] == pytest.approx(0.41)
        entry = find(statistics, "B", "dice", "2")
        expected = np.array([0.02, 0.02, 0.02, -1.0, -1.0, -1.0])
        assert entry["n"] == 6 and entry["mean_difference"] == pytest.approx(expected.mean())
        assert entry["n_empty_reference"] == 3 and entry["false_positives"] == {"A": 0, "B": 3}
        assert entry["losses"] == 3 and entry["wins"] == 3
        # foreground: over the organs present in the reference (liver everywhere, spleen in 3 cases)
        fg = find(statistics, "B", "dice", FOREGROUND)
        assert fg["mean_difference"] == pytest.approx(np.mean([0.01, 0.01, 0.01, 0, 0, 0]))
        assert statistics["empty_reference_source"] == ("recorded" if record else "inferred")
        per_organ = (folder / "out" / "per_organ.md").read_text()
        # median [IQR] over the 3 cases with a spleen, and the false positives where it is absent
        assert "| 2 spleen | 80.0 [79.0, 81.0]; 0/3 failed; FP 0/3 | 82.0 [81.0, 83.0]; 0/3 failed; FP 3/3 |" \
            in per_organ


def exhaustive_p(d):
    """Two-sided sign-flip p by enumerating every sign vector of the nonzero differences with itertools (flipping
    a zero changes nothing, so each pattern stands for 2^zeros equally likely vectors)."""
    nonzero = [x for x in d if x != 0]
    observed = abs(sum(nonzero))
    hits = sum(abs(sum(s * x for s, x in zip(signs, nonzero))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(nonzero)))
    return hits / 2 ** len(nonzero)


def test_tie_heavy_sixty_cases_get_the_exact_p(tmp_path):
    """60 cases of which 5 differ, all in B's favour: exact p = 2/2^5 = 0.0625 (version 1 printed p=0.04)."""
    a = np.full((1, 60), 0.8)
    b = a.copy()
    b[0, :5] += [0.01, 0.02, 0.03, 0.015, 0.025]
    statistics, table = run_compare(tmp_path, seed_summaries(tmp_path, "a", a), seed_summaries(tmp_path, "b", b))
    entry = find(statistics, "B", "dice", "1")
    assert entry["p"] == pytest.approx(exhaustive_p((b - a)[0])) == pytest.approx(0.0625)
    assert entry["p_min"] == pytest.approx(0.0625) and "‡" in table
    mixed = np.zeros(60)
    mixed[:9] = [0.01, -0.02, 0.03, 0.015, -0.005, 0.04, 0.02, -0.01, 0.035]
    assert sign_flip_p(mixed) == pytest.approx(exhaustive_p(mixed), abs=1e-12)


def test_seed_counts_must_match(tmp_path):
    a = seed_summaries(tmp_path, "a", np.full((2, 4), 0.8))
    b = seed_summaries(tmp_path, "b", np.full((3, 4), 0.8))
    with pytest.raises(CompareInputError, match="different numbers of seeds"):
        run_compare(tmp_path, a, b)


def record_seeds(paths, seeds):
    """Write ``"seed"`` into each summary as ``evaluate --seed`` does (None: leave it out)."""
    for path, seed in zip(map(Path, paths), seeds):
        summary = json.loads(path.read_text())
        if seed is not None:
            summary["seed"] = seed
        path.write_text(json.dumps(summary))
    return paths


def test_per_seed_results_are_named_by_the_recorded_training_seed(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 0.9, (2, 6))
    b = a + 0.02  # liver +2 points, spleen the same: foreground (mean of both) +1 point
    # seeds 3 and 7 recorded by both models: the per-seed entries and the table name them
    named = tmp_path / "named"
    statistics, table = run_compare(named, record_seeds(seed_summaries(named, "a", a), [3, 7]),
                                    record_seeds(seed_summaries(named, "b", b), [3, 7]))
    per_seed = seed_entries(statistics, "B", "dice", FOREGROUND)
    assert [(e["seed"], e["seed_number"]) for e in per_seed] == [(0, 3), (1, 7)]
    line = next(x for x in table.splitlines() if "foreground Dice per seed" in x)
    assert "seed 3: +1.00" in line and "seed 7: +1.00" in line, line
    # nothing recorded, or the pair's seeds disagree: no number, the position is named instead (1-based)
    statistics, table = run_compare(tmp_path / "unnamed", record_seeds(seed_summaries(tmp_path / "unnamed", "a", a),
                                                                       [3, None]),
                                    record_seeds(seed_summaries(tmp_path / "unnamed", "b", b), [4, None]))
    assert [e["seed_number"] for e in seed_entries(statistics, "B", "dice", FOREGROUND)] == [None, None]
    line = next(x for x in table.splitlines() if "foreground Dice per seed" in x)
    assert "seed #1: +1.00" in line and "seed #2: +1.00" in line and "seed 3" not in line, line
