"""Calibration of compare's headline test: false-positive rate and power, simulated with stated variance components.

Each simulated benchmark trains a baseline A and a model B S times (seeds) and scores them on n test cases. A score,
in Dice points, is

    score[m, s, c] = 80 + case[c] + inter[m, c] + run[m, s] + noise[m, s, c] + (delta if m is B)

``case`` (SD 1.5): how hard case c is, shared by both models (cancels in the paired difference); ``run`` (SD 1.0):
what a retraining of model m changes, one value per training run; ``noise`` (SD 1.0): the seed x case part of a run's
score; ``inter``: model x case interaction (how much the difference itself varies between cases), 0 in the issue's
scenario (issue 19), SD 1.5 in the second one and skewed (a few cases where B fails badly, centred) in the third.
``delta`` is 0 for the false-positive rate and ``--effect`` points for the power.

The headline test is what compare reports (``evaluation.statistics``): with S = 1 the sign-flip permutation test of
the mean over cases (scope ``cases``, which cannot see retraining noise), with S >= 2 the crossed random-effects
t test (``seed_statistics.crossed_test``, scope ``seeds_and_cases``). For reference the version-1 test, Wilcoxon on
the per-case seed means (``p_wilcoxon``), is shown too. Scores are handed to the real functions as fractions.

    python benchmarks/calibration.py                 # 2000 simulations per cell: FPR +-1 % (95 %), a few minutes
    python benchmarks/calibration.py --simulations 500
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_poolskip.evaluation.seed_statistics import crossed_test  # noqa: E402
from nnunet_poolskip.evaluation.statistics import SIGNIFICANCE_LEVEL, sign_flip_p  # noqa: E402

SCENARIOS = {
    "issue": "case SD 1.5 (shared), run SD 1.0, seed x case SD 1.0, no model x case interaction",
    "interaction": "as issue, plus model x case interaction SD 1.5",
    "skewed": "as issue, plus a skewed model x case interaction: 10 % of cases -8 points for B (centred)",
}


def simulate(rng: np.random.Generator, scenario: str, sims: int, seeds: int, cases: int, delta: float):
    """Scores of A and B in Dice points, shape (sims, seeds, cases) each."""
    shape = (sims, seeds, cases)
    case = rng.normal(0, 1.5, (sims, 1, cases))
    scores = []
    for model in range(2):
        run = rng.normal(0, 1.0, (sims, seeds, 1))
        noise = rng.normal(0, 1.0, shape)
        inter = np.zeros((sims, 1, cases))
        if scenario == "interaction":
            inter = rng.normal(0, 1.5 / np.sqrt(2), (sims, 1, cases))  # the difference's interaction SD: 1.5
        elif scenario == "skewed" and model == 1:
            fail = rng.random((sims, 1, cases)) < 0.1
            inter = np.where(fail, -8.0, 0.0) + 0.8  # mean 0 over the population of cases
        scores.append(80 + case + inter + run + noise + (delta if model == 1 else 0.0))
    return scores[0] / 100, scores[1] / 100


def headline_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    if d.shape[1] == 1:
        return sign_flip_p(d[:, 0, :])
    return crossed_test(d)["p"]


def v1_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return stats.wilcoxon((b - a).mean(axis=1), zero_method="wilcox", axis=-1).pvalue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulations", type=int, default=2000)
    parser.add_argument("--effects", type=float, nargs="+", default=[2.0, 4.0],
                        help="true differences for the power (Dice points)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    started = time.process_time()
    half_width = 1.96 * np.sqrt(0.05 * 0.95 / args.simulations)
    print(f"{args.simulations} simulations per cell; FPR at alpha {SIGNIFICANCE_LEVEL}, +-{100 * half_width:.1f} % "
          f"(95 %) at a true rate of 5 %; power at true differences of "
          f"{', '.join(f'{e:+g}' for e in args.effects)} Dice points")
    for scenario in args.scenarios:
        print(f"\n### Scenario {scenario}: {SCENARIOS[scenario]}\n")
        print("| S | n | headline test | FPR | " + " | ".join(f"power at {e:+g}" for e in args.effects)
              + " | v1 Wilcoxon on seed means: FPR |")
        print("|---:|---:|---|---:|" + "---:|" * len(args.effects) + "---:|")
        for seeds in (1, 3, 5):
            for cases in (12, 30, 120):
                a, b = simulate(rng, scenario, args.simulations, seeds, cases, 0.0)
                fpr, fpr_v1 = np.mean(headline_p(a, b) < SIGNIFICANCE_LEVEL), np.mean(v1_p(a, b) < SIGNIFICANCE_LEVEL)
                power = []
                for effect in args.effects:
                    a, b = simulate(rng, scenario, args.simulations, seeds, cases, effect)
                    power.append(f"{np.mean(headline_p(a, b) < SIGNIFICANCE_LEVEL):.3f}")
                test = "sign-flip permutation (cases)" if seeds == 1 else "crossed model t (seeds_and_cases)"
                print(f"| {seeds} | {cases} | {test} | {fpr:.3f} | {' | '.join(power)} | {fpr_v1:.3f} |", flush=True)
    print(f"\nCPU time: {time.process_time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
