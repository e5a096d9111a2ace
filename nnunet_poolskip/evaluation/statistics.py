"""Paired comparison statistics of summary.json files (``statistics.json`` of ``nnunet-poolskip compare``, format 2).

For a model B against a baseline A, per metric (dice, nsd, iou) and per label, and for the per-case foreground
mean (label ``"foreground"``). Scores per case follow :mod:`case_scores`: a label absent from the reference scores
1.0 when the model predicts nothing there and 0.0 when it predicts the organ (a false positive counts against that
model); the foreground value is the mean over the labels present in the reference. Differences are B - A, fractions.

Two scopes (DESIGN.md, "Comparison statistics"):

- ``"cases"``: one training run per model (or one seed of several). What varies is which test cases were drawn;
  the interval and p say nothing about retraining. Test: exact sign-flip permutation test of the mean difference
  (under H0 each difference is symmetric about 0: all 2^k sign vectors of the k nonzero differences are equally
  likely; zeros do not change the mean). Exhaustive for k <= 16 (p = share of the 2^k sign vectors whose |mean|
  is >= the observed, the observed included); beyond, ``PERMUTATIONS`` random sign vectors drawn with
  ``numpy.random.default_rng(SEED)`` and p = (count + 1) / (PERMUTATIONS + 1). Interval: BCa bootstrap of the mean
  (``scipy.stats.bootstrap(method="BCa")``, ``N_RESAMPLES`` resamples of the cases, seed ``SEED``), the
  percentile interval where BCa is undefined (its acceleration needs some spread in the jackknife). The smallest p
  the test can give is ``2 / 2**k`` (exhaustive) or ``1 / (PERMUTATIONS + 1)`` (sampled):
  :func:`smallest_attainable_p`.
- ``"seeds_and_cases"``: several seeds per model; the crossed random-effects model of :mod:`seed_statistics` on the
  per-seed, per-case differences, so that interval and p cover retraining and case sampling.

Every entry also keeps version 1's ``p_wilcoxon`` (two-sided Wilcoxon signed-rank, ``zero_method="wilcox"``;
across seeds: of the per-case seed means), a DESCRIPTIVE value: it tests a median-type shift over cases only.
``p`` is the test that matches the interval; ``p_holm`` adjusts ``p`` over the labels of one metric, pair and
scope (and seed); the foreground entries are a family of one, except the primary endpoint.

Primary endpoint: the foreground Dice of each named Pool Skip model against its baseline (default: every model
against the first), ``"primary": true``, its ``p_holm`` adjusted over those pairs. A practical margin (default
+-1 Dice point) gives each foreground entry a ``verdict``: ``"equivalent"`` (interval inside +-margin),
``"above_margin"`` / ``"below_margin"`` (interval entirely above +margin / below -margin), else ``"inconclusive"``.

Degenerate cases: ``n == 0``: mean, interval and p null. ``n == 1``: the mean only. All differences equal (n >= 2):
interval ``[d, d]`` (no spread among these cases, not certainty); the permutation p is 1 when they are all 0.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from nnunet_poolskip.evaluation import case_scores
from nnunet_poolskip.evaluation.case_scores import FOREGROUND, value_of
from nnunet_poolskip.evaluation.seed_statistics import METHOD as ACROSS_SEEDS_METHOD
from nnunet_poolskip.evaluation.seed_statistics import across_seeds_statistics

FORMAT_VERSION = 2
METRICS = ("dice", "nsd", "iou")
PRIMARY_METRIC = "dice"
N_RESAMPLES = 10_000
PERMUTATIONS = 20_000
EXHAUSTIVE_MAX = 16
SEED = 0
CONFIDENCE_LEVEL = 0.95
SIGNIFICANCE_LEVEL = 0.05
DEFAULT_MARGIN = 0.01
SCOPE_CASES, SCOPE_SEEDS = "cases", "seeds_and_cases"
VERDICTS = ("equivalent", "above_margin", "below_margin", "inconclusive")
METHOD = {"bootstrap": f"BCa, over cases, {N_RESAMPLES} resamples, seed {SEED} (scope cases)",
          "test": f"exact sign-flip permutation test of the mean difference, two-sided: exhaustive up to "
                  f"{EXHAUSTIVE_MAX} nonzero differences, else {PERMUTATIONS} random sign vectors (seed {SEED}), "
                  f"p = (k + 1) / (N + 1) (scope cases)",
          "across_seeds": ACROSS_SEEDS_METHOD + " (scope seeds_and_cases)",
          "correction": "Holm over labels (per metric, pair, scope and seed); the primary endpoint over its pairs",
          "p_wilcoxon": "descriptive only: Wilcoxon signed-rank, two-sided, zero_method=wilcox, over cases "
                        "(across seeds: of the per-case seed means)",
          "empty_reference": "label absent from the reference: 1.0 if the model predicts nothing, 0.0 if it "
                             "predicts it (false positive); foreground = mean over the labels present in the "
                             "reference, the same for both models",
          "primary": "foreground Dice of each model against its baseline, Holm over those pairs"}


def _value(value) -> Optional[float]:
    return value_of(value)


def case_foreground(values: Mapping[str, object]) -> Optional[float]:
    """Per-case foreground value of ONE summary: mean over the labels this case has a value for (None when it has
    none). Descriptive (overlays, tables); the paired comparison uses :mod:`case_scores` instead.

    Args:
        values: one case's values of one metric, label id -> fraction or None/NaN (``per_case[i]["dice"]``).
    """
    present = [v for v in (value_of(x) for x in values.values()) if v is not None]
    return float(np.mean(present)) if present else None


# --------------------------------------------------------------------------------- the one-run (cases) test
@functools.lru_cache(maxsize=8)
def _sign_vectors(k: int) -> np.ndarray:
    """All 2^k sign vectors (k <= EXHAUSTIVE_MAX) or PERMUTATIONS random ones (fixed seed), shape (m, k)."""
    if k <= EXHAUSTIVE_MAX:
        bits = (np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1
        return (1 - 2 * bits).astype(float)
    return np.random.default_rng(SEED).choice([-1.0, 1.0], size=(PERMUTATIONS, k))


def sign_flip_p(d: np.ndarray) -> np.ndarray:
    """Two-sided sign-flip permutation p of the mean of ``d`` (see the module docstring).

    Args:
        d: differences, shape (n,) or (m, n) (rows tested independently; zeros allowed).
    Returns:
        p (a float for 1-D input, shape (m,) otherwise); 1.0 when every difference is zero.
    """
    d = np.asarray(d, dtype=float)
    rows = np.atleast_2d(d)
    out = np.empty(rows.shape[0])
    nonzero = rows != 0
    counts = nonzero.sum(axis=1)
    for k in np.unique(counts):
        index = np.flatnonzero(counts == k)
        if k == 0:
            out[index] = 1.0
            continue
        values = np.stack([rows[i][nonzero[i]] for i in index])  # (m_k, k)
        signs = _sign_vectors(int(k))
        observed = np.abs(values.sum(axis=1))
        tolerance = 1e-9 * np.abs(values).sum(axis=1)  # float sums of the same values in another order
        hits = np.zeros(len(index))
        for start in range(0, signs.shape[0], 8192):
            sums = np.abs(values @ signs[start:start + 8192].T)
            hits += (sums >= (observed - tolerance)[:, None]).sum(axis=1)
        out[index] = hits / signs.shape[0] if k <= EXHAUSTIVE_MAX else (hits + 1) / (PERMUTATIONS + 1)
    return float(out[0]) if d.ndim == 1 else out


def smallest_attainable_p(nonzero: int) -> float:
    """Smallest two-sided p the sign-flip test of this module can give with ``nonzero`` nonzero differences:
    ``2 / 2**nonzero`` when it enumerates (every sign the same), ``1 / (PERMUTATIONS + 1)`` when it samples; 1 with
    no nonzero difference."""
    if nonzero <= 0:
        return 1.0
    return min(1.0, 2.0 / 2.0 ** nonzero) if nonzero <= EXHAUSTIVE_MAX else 1.0 / (PERMUTATIONS + 1)


def can_reach_significance(entry: Mapping, level: float = SIGNIFICANCE_LEVEL) -> bool:
    """Whether the test of a statistics entry could give p < ``level`` at all. Only the permutation test of scope
    ``"cases"`` has a floor (its nonzero differences: wins + losses); the t test across seeds has none."""
    if entry.get("scope", SCOPE_CASES) != SCOPE_CASES:
        return True
    return smallest_attainable_p(entry["wins"] + entry["losses"]) < level


def bca_interval(d: np.ndarray) -> Tuple[List[float], str]:
    """95% BCa bootstrap interval of the mean of ``d`` (n >= 2) and the method used (``"BCa"``, or
    ``"percentile"`` where BCa is undefined, or ``"none"`` when every difference is equal: ``[d, d]``)."""
    if np.all(d == d[0]):
        return [float(d[0]), float(d[0])], "none"
    kwargs = dict(vectorized=True, axis=-1, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE_LEVEL)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about a degenerate BCa; the percentile fallback follows
        interval = stats.bootstrap((d,), np.mean, method="BCa", rng=np.random.default_rng(SEED),
                                   **kwargs).confidence_interval
    if np.isfinite(interval.low) and np.isfinite(interval.high):
        return [float(interval.low), float(interval.high)], "BCa"
    interval = stats.bootstrap((d,), np.mean, method="percentile", rng=np.random.default_rng(SEED),
                               **kwargs).confidence_interval
    return [float(interval.low), float(interval.high)], "percentile"


def paired_statistics(a: Sequence[float], b: Sequence[float]) -> Dict:
    """Statistics of ``B - A`` for paired values (one per case; no missing values), scope ``"cases"``.

    Returns:
        ``n``, ``mean_difference``, ``ci95`` ([low, high] or None), ``ci_method``, ``p`` (sign-flip permutation),
        ``p_min`` (the smallest p this test could give here), ``p_wilcoxon`` (descriptive; None when every
        difference is 0), ``wins``, ``ties``, ``losses``, ``mean_a``, ``mean_b``; conventions for n = 0, n = 1 and
        equal differences as in the module docstring.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    n = int(d.size)
    wins, losses = int(np.sum(b > a)), int(np.sum(b < a))
    result = {"n": n, "mean_difference": float(d.mean()) if n else None, "ci95": None, "ci_method": None,
              "p": None, "p_min": None, "p_wilcoxon": None, "wins": wins, "ties": int(np.sum(b == a)),
              "losses": losses, "mean_a": float(a.mean()) if n else None, "mean_b": float(b.mean()) if n else None}
    if n >= 2:
        result["ci95"], result["ci_method"] = bca_interval(d)
        result["p"] = sign_flip_p(d)
        result["p_min"] = smallest_attainable_p(wins + losses)
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


def verdict(interval: Optional[Sequence[float]], margin: float) -> Optional[str]:
    """The interval against the practical margin (fractions): ``equivalent`` (inside [-margin, +margin]),
    ``above_margin`` (low > +margin), ``below_margin`` (high < -margin), else ``inconclusive``; None without one."""
    if not interval:
        return None
    low, high = interval
    if -margin <= low and high <= margin:
        return "equivalent"
    if low > margin:
        return "above_margin"
    if high < -margin:
        return "below_margin"
    return "inconclusive"


# ------------------------------------------------------------------------------------------ statistics.json
def group_by_name(summaries: Sequence[Mapping], names: Sequence[str]) -> Dict[str, List[Mapping]]:
    """Model name -> its summaries in the given order (summaries sharing a name are the seeds of one model)."""
    groups: Dict[str, List[Mapping]] = {}
    for summary, name in zip(summaries, names):
        groups.setdefault(name, []).append(summary)
    return groups


def _common_cases(summaries: Sequence[Mapping]) -> Tuple[List[str], int]:
    """Cases every summary holds (the first summary's order) and how many cases only some hold."""
    sets = [{case["case"] for case in s["per_case"]} for s in summaries]
    common = set.intersection(*sets)
    order = [case["case"] for case in summaries[0]["per_case"] if case["case"] in common]
    return order, len(set.union(*sets)) - len(common)


def _seed_number(a_run: Mapping, b_run: Mapping) -> Optional[int]:
    """The training seed both runs of a seed pair recorded (``evaluate --seed``), else None."""
    seed = a_run.get("seed")
    return seed if seed is not None and b_run.get("seed") == seed else None


def _pair_entries(base: str, model: str, a_runs: Sequence[Mapping], b_runs: Sequence[Mapping],
                  empty: Mapping, labels: Mapping[str, str], margin: float) -> List[Dict]:
    """Every entry of one pair: per metric and label (then foreground), the headline entry and, with several
    seeds, one ``"cases"`` entry per seed; ``p_holm`` over the labels of each (metric, scope, seed)."""
    n_seeds = len(a_runs)
    cases, not_in_all = _common_cases(list(a_runs) + list(b_runs))
    entries: List[Dict] = []
    for metric in METRICS:
        families: Dict[Tuple, List[Dict]] = {}
        for label in list(labels) + [FOREGROUND]:
            a = case_scores.score_matrix(a_runs, metric, label, empty, cases)
            b = case_scores.score_matrix(b_runs, metric, label, empty, cases)
            keep = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))
            kept = [c for c, k in zip(cases, keep) if k]
            a, b = a[:, keep], b[:, keep]
            common = {"model": model, "baseline": base, "metric": metric, "label": label,
                      "organ": labels.get(label, FOREGROUND), "n_seeds": {base: n_seeds, model: len(b_runs)},
                      "n_left_out": not_in_all + int(np.sum(~keep)), "primary": False}
            if label != FOREGROUND:
                common["n_empty_reference"] = sum(label in empty.get(c, set()) for c in kept)
                common["false_positives"] = {
                    base: sum(case_scores.false_positives(s, label, empty, kept) for s in a_runs),
                    model: sum(case_scores.false_positives(s, label, empty, kept) for s in b_runs)}
            if n_seeds >= 2:
                headline = {**common, "scope": SCOPE_SEEDS, **across_seeds_statistics(a, b)}
                seed_means = b.mean(axis=0) - a.mean(axis=0)
                headline["p_wilcoxon"] = (float(stats.wilcoxon(seed_means, zero_method="wilcox").pvalue)
                                          if np.any(seed_means != 0) and seed_means.size >= 2 else None)
                per_seed = [{**common, "scope": SCOPE_CASES, "seed": s,
                             "seed_number": _seed_number(a_runs[s], b_runs[s]), **paired_statistics(a[s], b[s])}
                            for s in range(n_seeds)]
                if label != FOREGROUND:  # each seed's own false positives (the headline sums them over seeds)
                    for s, entry in enumerate(per_seed):
                        entry["false_positives"] = {
                            base: case_scores.false_positives(a_runs[s], label, empty, kept),
                            model: case_scores.false_positives(b_runs[s], label, empty, kept)}
            else:
                headline = {**common, "scope": SCOPE_CASES, **paired_statistics(a[0], b[0])}
                per_seed = []
            for entry in [headline, *per_seed]:
                entry["p_holm"] = entry["p"]
                if label == FOREGROUND:
                    entry["margin"] = margin
                    entry["verdict"] = verdict(entry["ci95"], margin)
                else:
                    families.setdefault((entry["scope"], entry.get("seed")), []).append(entry)
            entries += [headline, *per_seed]
        for family in families.values():
            for entry, adjusted in zip(family, holm([e["p"] for e in family])):
                entry["p_holm"] = adjusted
    return entries


def comparison_statistics(summaries: Sequence[Mapping], names: Sequence[str], margin: float = DEFAULT_MARGIN,
                          primary: Optional[Sequence[str]] = None) -> Dict:
    """statistics.json's content (format 2): every model after the first against the first.

    Args:
        summaries: parsed summary.json files (``nnunet-poolskip evaluate``) with the same labels.
        names: model names, one per summary; summaries that share a name are the seeds of one model (paired with
            the baseline's seeds in the given order; every model needs as many seeds as the baseline).
        margin: practical margin of the verdicts (fraction: 0.01 = 1 Dice point).
        primary: the models whose foreground Dice against the first is the primary endpoint (Holm over them);
            default every model after the first.
    Returns:
        ``{"format_version": 2, "method": {...}, "margin": margin, "empty_reference_source": ..., "comparisons":
        [...]}``; per pair, metric and label (labels in the first summary's order, then ``"foreground"``) the
        headline entry, then the per-seed entries (with ``"seed"``: the seed's position, 0-based, and
        ``"seed_number"``: the training seed both summaries of that position recorded, ``evaluate --seed``, else
        null).
    Raises:
        ValueError: a model with another number of seeds than the baseline, or a primary model that is not
            compared.
    """
    groups = group_by_name(summaries, names)
    order = list(groups)
    base = order[0]
    for name in order[1:]:
        if len(groups[name]) != len(groups[base]):
            raise ValueError(f"{name} has {len(groups[name])} seed(s) but the baseline {base} has "
                             f"{len(groups[base])}: the across-seeds comparison pairs seed s of each model")
    primary = list(order[1:]) if primary is None else list(primary)
    unknown = [p for p in primary if p not in order[1:]]
    if unknown:
        raise ValueError(f"primary model(s) {unknown} are not compared against {base} (models: {order[1:]})")
    empty, source = case_scores.empty_reference(summaries)
    labels = summaries[0]["labels"]
    comparisons: List[Dict] = []
    for name in order[1:]:
        comparisons += _pair_entries(base, name, groups[base], groups[name], empty, labels, margin)
    headlines = [e for e in comparisons if e["model"] in primary and e["metric"] == PRIMARY_METRIC
                 and e["label"] == FOREGROUND and "seed" not in e]
    for entry, adjusted in zip(headlines, holm([e["p"] for e in headlines])):
        entry["primary"] = True
        entry["p_holm"] = adjusted
    return {"format_version": FORMAT_VERSION, "method": dict(METHOD), "margin": margin,
            "empty_reference_source": source, "comparisons": comparisons}


def find(statistics: Mapping, model: str, metric: str, label: str, seed: Optional[int] = None) -> Optional[Dict]:
    """The headline statistics entry of one model, metric and label (``seeds_and_cases`` with several seeds,
    else ``cases``), or with ``seed`` that seed's own ``cases`` entry; None if there is none."""
    for entry in statistics["comparisons"]:
        if (entry["model"], entry["metric"], entry["label"]) == (model, metric, label) and entry.get("seed") == seed:
            return entry
    return None


def seed_entries(statistics: Mapping, model: str, metric: str, label: str) -> List[Dict]:
    """The per-seed ``cases`` entries of one model, metric and label, in seed order (empty with one seed)."""
    return [e for e in statistics["comparisons"] if (e["model"], e["metric"], e["label"]) == (model, metric, label)
            and e.get("seed") is not None]
