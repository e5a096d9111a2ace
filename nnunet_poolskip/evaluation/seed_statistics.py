"""The across-seeds comparison of two models: per-seed, per-case differences in a crossed random-effects model.

Several training runs (seeds) of a baseline A and a model B are evaluated on the same test cases. Seed ``s`` of B is
paired with seed ``s`` of A (the pairing is arbitrary: seeds of different models share nothing), giving differences
``d[s, c]`` (fractions) for seeds ``s = 1..S`` and cases ``c = 1..n``. The model:

    d[s, c] = delta + u[s] + v[c] + w[s, c]

``u[s]`` (variance ``var_seed``): what retraining changes, the run effects of B's and A's seed-``s`` runs;
``v[c]`` (``var_case``): how the difference varies from case to case (which cases were drawn); ``w[s, c]``
(``var_residual``): the seed x case interaction. All three are random and independent; the target is ``delta``,
the difference the two training recipes make on the population of cases, averaged over retraining.

Estimate: the two-way ANOVA without replication. With the grand mean ``m``, seed means ``m_s``, case means ``m_c``:

    MS_seed = n * sum_s (m_s - m)^2 / (S - 1)            E = var_res + n var_seed
    MS_case = S * sum_c (m_c - m)^2 / (n - 1)            E = var_res + S var_case
    MS_res  = sum (d - m_s - m_c + m)^2 / ((S-1)(n-1))   E = var_res

so ``Var(m) = var_seed / S + var_case / n + var_res / (nS)`` is estimated without bias by
``(MS_seed + MS_case - MS_res) / (nS)``. That estimate can be negative or too small when a mean square falls below
``MS_res`` by chance; each variance component is therefore truncated at zero (``var_seed = max(0, MS_seed -
MS_res) / n``, the same for cases), which gives ``V = (max(MS_seed, MS_res) + max(MS_case, MS_res) - MS_res) /
(nS)``: never below ``MS_res / (nS)``, never negative, and at least as wide as the untruncated estimate.

Degrees of freedom: Satterthwaite's for the linear combination of mean squares actually used,
``df = V'^2 / sum_i (c_i MS_i)^2 / df_i`` (``V' = nS V``, coefficients ``c_i`` = +1, +1, -1 for the terms that are
in ``V'``), floored at 1 (a t distribution with 1 df, the Cauchy: very wide; below that the approximation itself
fails). The df are small when the seed term dominates (S - 1 = 2 with three seeds): the interval is then wide, as it
should be, since three retrainings say little about the fourth. Interval: ``m +- t_{0.975, df} sqrt(V)``; p: the
two-sided t test of ``delta = 0`` with the same ``V`` and df, so the interval and the p agree.

Why this model rather than a two-way bootstrap (resampling seeds and cases independently): with S = 3 to 5 seeds a
bootstrap over seeds draws from 3-5 values and underestimates their variance by the factor (S - 1)/S and more (its
percentile intervals are too narrow); the ANOVA estimator is unbiased and the t quantile with Satterthwaite's df
widens the interval for the few seeds. ``benchmarks/calibration.py`` measures the false-positive rate of this test
(the target is <= 0.07 for S >= 3 at n = 12, 30 and 120; the table is in benchmarks/RESULTS.md).

Conventions: fewer than 2 seeds or 2 cases: no interval and no p (the model needs both). All differences equal:
``V = 0``, the interval is ``[m, m]`` and p is 1 when ``m == 0`` and null otherwise (no spread to test against).
The functions take arrays of shape ``(..., S, n)`` so that a simulation can evaluate many tables at once.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from scipy import stats

CONFIDENCE_LEVEL = 0.95
DF_FLOOR = 1.0
METHOD = ("crossed random-effects model on the per-seed, per-case differences (two-way ANOVA without replication; "
          "Var(mean) = (max(MS_seed, MS_res) + max(MS_case, MS_res) - MS_res) / (n S), variance components "
          "truncated at 0), Satterthwaite df (floored at 1), t interval and two-sided t test")


def mean_squares(d: np.ndarray) -> Dict[str, np.ndarray]:
    """The two-way ANOVA of ``d`` (shape ``(..., S, n)``: seeds x cases) without replication.

    Args:
        d: differences B - A (fractions), seeds along axis -2 and cases along axis -1, no missing values.
    Returns:
        ``mean``, ``ms_seed`` (S - 1 df), ``ms_case`` (n - 1 df), ``ms_residual`` ((S - 1)(n - 1) df), each of the
        leading shape ``d.shape[:-2]``.
    """
    d = np.asarray(d, dtype=float)
    n_seeds, n_cases = d.shape[-2], d.shape[-1]
    grand = d.mean(axis=(-2, -1))
    seed_means = d.mean(axis=-1)
    case_means = d.mean(axis=-2)
    ms_seed = n_cases * ((seed_means - grand[..., None]) ** 2).sum(axis=-1) / (n_seeds - 1)
    ms_case = n_seeds * ((case_means - grand[..., None]) ** 2).sum(axis=-1) / (n_cases - 1)
    residual = d - seed_means[..., :, None] - case_means[..., None, :] + grand[..., None, None]
    ms_residual = (residual ** 2).sum(axis=(-2, -1)) / ((n_seeds - 1) * (n_cases - 1))
    return {"mean": grand, "ms_seed": ms_seed, "ms_case": ms_case, "ms_residual": ms_residual}


def crossed_test(d: np.ndarray, confidence_level: float = CONFIDENCE_LEVEL) -> Dict[str, np.ndarray]:
    """The across-seeds estimate, interval and p of the mean difference (see the module docstring).

    Args:
        d: differences B - A (fractions), shape ``(..., S, n)`` with S >= 2 seeds and n >= 2 cases.
        confidence_level: of the interval.
    Returns:
        Arrays of the leading shape: ``mean``, ``se`` (sqrt of the estimated Var(mean)), ``df``, ``low``, ``high``,
        ``p`` (NaN where V = 0 and the mean is not 0), and the variance components ``var_seed``, ``var_case``,
        ``var_residual`` (fractions squared, truncated at 0) and the mean squares.
    Raises:
        ValueError: fewer than 2 seeds or 2 cases.
    """
    d = np.asarray(d, dtype=float)
    n_seeds, n_cases = d.shape[-2], d.shape[-1]
    if n_seeds < 2 or n_cases < 2:
        raise ValueError(f"the crossed model needs at least 2 seeds and 2 cases, got {n_seeds} x {n_cases}")
    ms = mean_squares(d)
    res = ms["ms_residual"]
    seed_term, case_term = np.maximum(ms["ms_seed"], res), np.maximum(ms["ms_case"], res)
    combined = seed_term + case_term - res  # = n S V
    variance = combined / (n_seeds * n_cases)
    # Satterthwaite: the terms in the combination are MS_seed (if above MS_res), MS_case (likewise) and -MS_res
    # when at least one of them is; otherwise the combination is MS_res alone.
    seed_in, case_in = ms["ms_seed"] > res, ms["ms_case"] > res
    df_seed, df_case, df_res = n_seeds - 1, n_cases - 1, (n_seeds - 1) * (n_cases - 1)
    denominator = (np.where(seed_in, ms["ms_seed"] ** 2 / df_seed, 0.0)
                   + np.where(case_in, ms["ms_case"] ** 2 / df_case, 0.0)
                   + res ** 2 / df_res * np.where(seed_in & case_in, 1.0, 0.0)
                   + np.where(~seed_in & ~case_in, res ** 2 / df_res, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denominator > 0, combined ** 2 / np.where(denominator > 0, denominator, 1.0), df_res)
    df = np.maximum(df, DF_FLOOR)
    se = np.sqrt(variance)
    quantile = stats.t.ppf(0.5 + confidence_level / 2, df)
    mean = ms["mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.nan)
    p = np.where(se > 0, 2 * stats.t.sf(np.abs(t), df), np.where(mean == 0, 1.0, np.nan))
    return {"mean": mean, "se": se, "df": df, "low": mean - quantile * se, "high": mean + quantile * se, "p": p,
            "var_seed": np.maximum(ms["ms_seed"] - res, 0) / n_cases,
            "var_case": np.maximum(ms["ms_case"] - res, 0) / n_seeds, "var_residual": res, **{
                k: ms[k] for k in ("ms_seed", "ms_case", "ms_residual")}}


def across_seeds_statistics(a: np.ndarray, b: np.ndarray) -> Dict:
    """statistics.json's fields of a ``"seeds_and_cases"`` entry for one metric and label.

    Args:
        a, b: scores (fractions) of the baseline and the model, shape (S, n): seed ``s`` of each on case ``c``,
            the same cases in the same order, no missing values.
    Returns:
        ``n`` (cases), ``mean_difference``, ``ci95``, ``p``, ``se``, ``df``, ``variance_components`` (``seed``,
        ``case``, ``residual``: fractions squared), ``seeds_better`` / ``seeds_worse`` (seeds whose mean
        difference over the cases is > 0 / < 0), ``wins`` / ``ties`` / ``losses`` (cases whose difference averaged
        over the seeds is > 0, == 0, < 0), ``mean_a`` / ``mean_b`` (means over seeds and cases); interval, p and the
        rest null when there are fewer than 2 cases or 2 seeds.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    n_seeds, n_cases = d.shape
    per_seed, per_case = d.mean(axis=1) if n_cases else np.zeros(n_seeds), d.mean(axis=0)
    result: Dict[str, Optional[object]] = {
        "n": int(n_cases), "mean_difference": float(d.mean()) if d.size else None, "ci95": None, "p": None,
        "se": None, "df": None, "variance_components": None,
        "seeds_better": int(np.sum(per_seed > 0)), "seeds_worse": int(np.sum(per_seed < 0)),
        "wins": int(np.sum(per_case > 0)), "ties": int(np.sum(per_case == 0)), "losses": int(np.sum(per_case < 0)),
        "mean_a": float(a.mean()) if a.size else None, "mean_b": float(b.mean()) if b.size else None}
    if n_seeds >= 2 and n_cases >= 2:
        test = crossed_test(d)
        p = float(test["p"])
        result.update({"ci95": [float(test["low"]), float(test["high"])], "p": None if np.isnan(p) else p,
                       "se": float(test["se"]), "df": float(test["df"]),
                       "variance_components": {"seed": float(test["var_seed"]), "case": float(test["var_case"]),
                                               "residual": float(test["var_residual"])}})
    return result
