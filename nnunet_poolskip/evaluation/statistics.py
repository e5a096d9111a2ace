"""Paired comparison statistics of two summary.json files (``statistics.json`` of ``nnunet-poolskip compare``).

For a model B against a baseline A, per metric (dice, nsd, iou) and per label, and for the per-case foreground
mean (label ``"foreground"``), over the test cases where both have a value:

- ``n``: those cases; ``n_left_out``: cases of either summary without a value on both sides (null/NaN in one or
  both, or the case missing from one summary), left out of everything below;
- ``mean_difference``: mean of ``d = B - A`` (fractions, not percent);
- ``ci95``: 95% percentile-bootstrap interval of that mean, cases resampled with replacement, paired
  (``scipy.stats.bootstrap``, 10,000 resamples, ``numpy.random.default_rng(0)``);
- ``p_wilcoxon``: two-sided Wilcoxon signed-rank p of ``d`` (``scipy.stats.wilcoxon(d, zero_method="wilcox")``:
  zero differences are dropped, scipy picks the exact or permutation null distribution for small n);
- ``p_holm``: Holm's step-down adjustment over the labels of one metric and pair (labels with a null p are not
  in the family); the foreground mean is a family of its own, so its ``p_holm`` equals its ``p_wilcoxon``;
- ``wins``, ``ties``, ``losses``: cases with B > A, B == A, B < A.

Degenerate cases (the conventions of this module; docs/inference-and-evaluation.md says the same):

- ``n == 0``: ``mean_difference``, ``ci95``, ``p_wilcoxon`` and ``p_holm`` are null; wins/ties/losses are 0.
- ``n == 1``: ``mean_difference`` is that case's difference; ``ci95`` and the p values are null (one case says
  nothing about the spread; scipy's bootstrap refuses a single observation).
- all differences equal (``n >= 2``): every resample has the same mean, so the percentile interval is
  ``[d, d]``. That means the bootstrap sees no spread among these cases, not that the difference is certain.
  If every difference is zero, ``p_wilcoxon`` (and ``p_holm``) is null: the test has nothing to rank.

The Wilcoxon test only uses the ``k = wins + losses`` nonzero differences. Two-sided, its smallest attainable p
is ``2 / 2**k``: with ``k <= 5`` it can never reach 0.05, whatever the data (:func:`smallest_attainable_p`).

The per-case foreground value is the mean over the labels that case has a value for in that summary (each side
separately); a case with no labelled value at all has none.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

METRICS = ("dice", "nsd", "iou")
FOREGROUND = "foreground"
N_RESAMPLES = 10_000
SEED = 0
CONFIDENCE_LEVEL = 0.95
SIGNIFICANCE_LEVEL = 0.05
METHOD = {"bootstrap": f"percentile, paired over cases, {N_RESAMPLES} resamples, seed {SEED}",
          "test": "Wilcoxon signed-rank, two-sided, zero_method=wilcox",
          "correction": "Holm over labels"}


def _value(value) -> Optional[float]:
    """A summary value as a float, or None for JSON null and NaN (both mean "no value": empty in both)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def case_foreground(values: Mapping[str, object]) -> Optional[float]:
    """Per-case foreground value: mean over the labels this case has a value for (None when it has none).

    Args:
        values: one case's values of one metric, label id -> fraction or None/NaN (``per_case[i]["dice"]``).
    """
    present = [v for v in (_value(x) for x in values.values()) if v is not None]
    return float(np.mean(present)) if present else None


def case_values(summary: Mapping, metric: str, label: str) -> Dict[str, Optional[float]]:
    """Case id -> the summary's value of ``metric`` for ``label`` (a label id or ``"foreground"``), None if absent."""
    out = {}
    for case in summary["per_case"]:
        values = case.get(metric) or {}
        out[case["case"]] = case_foreground(values) if label == FOREGROUND else _value(values.get(label))
    return out


def paired_values(baseline: Mapping, model: Mapping, metric: str, label: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """The values of both summaries over the cases where both have one (in the baseline's case order), and the
    number of cases left out (a value missing on one or both sides, or the case missing from one summary)."""
    a, b = case_values(baseline, metric, label), case_values(model, metric, label)
    cases = list(a) + [c for c in b if c not in a]
    both = [c for c in cases if a.get(c) is not None and b.get(c) is not None]
    return (np.array([a[c] for c in both], dtype=float), np.array([b[c] for c in both], dtype=float),
            len(cases) - len(both))


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b - a, axis=axis)


def paired_statistics(a: Sequence[float], b: Sequence[float]) -> Dict:
    """Statistics of ``B - A`` for paired values (one per case; no missing values).

    Returns:
        ``n``, ``mean_difference``, ``ci95`` ([low, high] or None), ``p_wilcoxon`` (or None), ``wins``, ``ties``,
        ``losses``; conventions for n = 0, n = 1 and equal differences as in the module docstring.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    n = int(d.size)
    result = {"n": n, "mean_difference": float(d.mean()) if n else None, "ci95": None, "p_wilcoxon": None,
              "wins": int(np.sum(b > a)), "ties": int(np.sum(b == a)), "losses": int(np.sum(b < a))}
    if n >= 2:
        bootstrap = stats.bootstrap((a, b), _mean_difference, paired=True, vectorized=True,
                                    n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE_LEVEL,
                                    method="percentile", rng=np.random.default_rng(SEED))
        interval = bootstrap.confidence_interval
        result["ci95"] = [float(interval.low), float(interval.high)]
        if np.any(d != 0):
            result["p_wilcoxon"] = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return result


def holm(p_values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p values, in the input order; None entries stay None and are not counted.

    For the m non-null p values sorted ascending, p_(i) (i = 1..m) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    adjusted: List[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def smallest_attainable_p(nonzero: int) -> float:
    """Smallest two-sided p the Wilcoxon signed-rank test can give with ``nonzero`` nonzero differences:
    ``2 / 2**nonzero`` (all signs equal), capped at 1."""
    return min(1.0, 2.0 / 2.0 ** nonzero)


def can_reach_significance(entry: Mapping, level: float = SIGNIFICANCE_LEVEL) -> bool:
    """Whether the test of a statistics entry could give p < ``level`` at all, given its nonzero differences."""
    return smallest_attainable_p(entry["wins"] + entry["losses"]) < level


def comparison_statistics(summaries: Sequence[Mapping], names: Sequence[str]) -> Dict:
    """statistics.json's content: every summary after the first against the first (DESIGN.md format).

    Args:
        summaries: parsed summary.json files (``nnunet-poolskip evaluate``) with the same labels.
        names: model names, one per summary.
    Returns:
        ``{"method": METHOD, "comparisons": [...]}``; one entry per pair x metric x label, labels in the first
        summary's order, then ``"foreground"``. Each entry has the DESIGN.md keys plus ``organ`` (the label's
        name) and ``n_left_out``.
    """
    baseline, labels = summaries[0], summaries[0]["labels"]
    comparisons = []
    for summary, name in zip(summaries[1:], names[1:]):
        for metric in METRICS:
            family = []
            for label in list(labels) + [FOREGROUND]:
                a, b, left_out = paired_values(baseline, summary, metric, label)
                entry = {"model": name, "baseline": names[0], "metric": metric, "label": label,
                         "organ": labels.get(label, FOREGROUND), "n_left_out": left_out, **paired_statistics(a, b)}
                entry["p_holm"] = entry["p_wilcoxon"]  # the foreground mean: a family of one
                if label != FOREGROUND:
                    family.append(entry)
                comparisons.append(entry)
            for entry, adjusted in zip(family, holm([e["p_wilcoxon"] for e in family])):
                entry["p_holm"] = adjusted
    keys = ("model", "baseline", "metric", "label", "organ", "n", "n_left_out", "mean_difference", "ci95",
            "p_wilcoxon", "p_holm", "wins", "ties", "losses")
    return {"method": dict(METHOD), "comparisons": [{k: e[k] for k in keys} for e in comparisons]}


def find(statistics: Mapping, model: str, metric: str, label: str) -> Optional[Dict]:
    """The statistics entry of one model, metric and label (None if there is none)."""
    for entry in statistics["comparisons"]:
        if (entry["model"], entry["metric"], entry["label"]) == (model, metric, label):
            return entry
    return None
