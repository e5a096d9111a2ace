"""The evidence sections of a benchmark's table.md beyond compare's numbers, and the files behind them.

- Spread between seeds (``--seeds``): per model, the foreground Dice of every seed's ensemble (each seed's
  ``evaluate`` summary), their mean and sample SD over seeds. Descriptive only: whether a difference exceeds the
  retraining noise is the across-seeds test of compare's statistics (the paired-statistics section), not a
  comparison of two SDs.
- Paired statistics: per baseline / Pool Skip pair, compare's paired foreground statistics of the model against its
  own baseline (its statistics.json, formatted by compare's own table function), and its forest plot copied as
  ``differences_<model>.png``.
- Elimination singularities: ``nnunet-poolskip diagnose`` (run by the finish stage on every fold x seed of every
  pair, baseline with ``--compare`` Pool Skip model) gives per conv layer l2/l1 and dead units; per run the
  encoder's figures (:func:`nnunet_poolskip.diagnostics.layer_statistics.encoder_summary`: median l2/l1 over the
  encoder's host convs, dead share of their units); the table shows per model the mean over its runs (folds x
  seeds) with their range; ``elimination_singularities.csv`` has every run; ``elimination_singularities_<model>.png``
  draws every run's per-layer curves (diagnose's own plot, the paper's Figure 4 style).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_poolskip.benchmark.protocol import Model
from nnunet_poolskip.utilities.atomic import write_text_atomic

ES_CSV = "elimination_singularities.csv"
ES_FIGURE = "elimination_singularities_{model}.png"
DIFFERENCES_FIGURE = "differences_{model}.png"
EVIDENCE_FILES = ("training_curves.png", "overlays.png", ES_CSV, ES_FIGURE.format(model="*"),
                  DIFFERENCES_FIGURE.format(model="*"))
"""What the finish stage writes into the results folder besides report.TABLE_FILES (glob patterns)."""


# ------------------------------------------------------------------------------------------- seeds
@dataclass
class SeedSpread:
    """One model's foreground Dice (fraction) per seed: the foreground mean of that seed's ensemble."""

    model: Model
    per_seed: Dict[int, float]

    @property
    def mean(self) -> Optional[float]:
        return float(np.mean(list(self.per_seed.values()))) if self.per_seed else None

    @property
    def sd(self) -> Optional[float]:
        """Sample SD over seeds (ddof 1); None with fewer than two seeds."""
        values = list(self.per_seed.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else None


def seed_spreads(models: Sequence[Model], seed_summaries: Mapping[str, Mapping[int, Path]]) -> Dict[str, SeedSpread]:
    """Model name -> its :class:`SeedSpread`, from each seed's summary.json (``foreground_mean.dice``; a seed
    whose foreground mean is null, no organ scored at all, is left out)."""
    spreads = {}
    for model in models:
        per_seed = {}
        for seed, path in seed_summaries.get(model.name, {}).items():
            value = json.loads(Path(path).read_text())["foreground_mean"]["dice"]
            if value is not None:
                per_seed[seed] = float(value)
        spreads[model.name] = SeedSpread(model, per_seed)
    return spreads


def seed_section(models: Sequence[Model], spreads: Mapping[str, SeedSpread],
                 pairs: Sequence[Tuple[Model, Model]]) -> List[str]:
    """table.md's section on the spread between seeds (a Markdown table and one sentence per pair)."""
    seeds = sorted({seed for spread in spreads.values() for seed in spread.per_seed})
    lines = ["## Spread between seeds", "",
             f"Every model x fold was trained once per seed ({', '.join(map(str, seeds))}); each seed's folds were "
             f"ensembled and evaluated on their own. Foreground Dice (%) of each seed's ensemble, their mean and "
             f"sample SD over seeds (percentage points), descriptive. The tables above show each test case's values "
             f"averaged over the seeds; the paired statistics use every seed (across seeds and cases).", "",
             "| Model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | SD over seeds |",
             "|---|" + ":---:|" * (len(seeds) + 2)]
    for model in models:
        spread = spreads[model.name]
        cells = [f"{100 * spread.per_seed[s]:.2f}" if s in spread.per_seed else "n/a" for s in seeds]
        cells += ["n/a" if spread.mean is None else f"{100 * spread.mean:.2f}",
                  "n/a" if spread.sd is None else f"{100 * spread.sd:.2f}"]
        lines.append(f"| {model.display} | " + " | ".join(cells) + " |")
    return lines


def seed_csv_columns(spreads: Mapping[str, SeedSpread]) -> Dict[str, Dict[str, str]]:
    """table.csv's extra columns: seeds, and the mean and SD over seeds of the foreground Dice (percent)."""
    def number(value: Optional[float]) -> str:
        return "" if value is None else f"{100 * value:.4f}"

    return {"seeds": {name: " ".join(map(str, sorted(s.per_seed))) for name, s in spreads.items()},
            "dice_seed_mean_percent": {name: number(s.mean) for name, s in spreads.items()},
            "dice_seed_sd_percent": {name: number(s.sd) for name, s in spreads.items()}}


# ------------------------------------------------------------------------------------ paired statistics
def pair_compare_folder(base: Model, model: Model, outputs: Mapping[str, Tuple[List[Model], Path]]) -> Optional[Path]:
    """The compare output folder of (base, model): its ``pair_<model>`` group, or ``all`` when that is the pair."""
    if f"pair_{model.name}" in outputs:
        return outputs[f"pair_{model.name}"][1]
    group, folder = outputs["all"]
    return folder if [m.name for m in group] == [base.name, model.name] else None


def statistics_section(pairs: Sequence[Tuple[Model, Model]], outputs: Mapping[str, Tuple[List[Model], Path]],
                       averaged_over_seeds: bool) -> List[str]:
    """table.md's paired statistics: each Pool Skip model against its own baseline, from compare's statistics.json
    (nothing recomputed), in compare's own paired-table format."""
    from nnunet_poolskip.evaluation.comparison_tables import METRIC_COLUMNS, paired_table_markdown
    from nnunet_poolskip.evaluation.statistics import FOREGROUND, find, holm

    lines, primary = [], []
    for base, model in pairs:
        folder = pair_compare_folder(base, model, outputs)
        if folder is None or not (folder / "statistics.json").is_file():
            continue
        statistics = json.loads((folder / "statistics.json").read_text())
        primary += [(model, e) for e in statistics["comparisons"] if e.get("primary")]
        row = {"model": model.display, **{f"paired_{metric}": find(statistics, model.display, metric, FOREGROUND)
                                          for metric, _ in METRIC_COLUMNS}}
        lines += ["", paired_table_markdown([{"model": base.display}, row], base.display, statistics)]
    if not lines:
        return []
    if len(primary) > 1:  # each pair's compare adjusts over its own pair only; the primary family is every pair
        adjusted = holm([e["p"] for _, e in primary])
        lines += ["", "Primary endpoint (foreground Dice of each Pool Skip model against its own baseline), Holm over "
                      f"the {len(primary)} pairs: " + "; ".join(
                          f"{model.display}: p={e['p']:.3g}, Holm p={p:.3g}" if p is not None else
                          f"{model.display}: no p" for (model, e), p in zip(primary, adjusted)) + "."]
    what = ("every seed's ensemble, across seeds and cases" if averaged_over_seeds else "one run per fold")
    return ["## Paired statistics, each Pool Skip model against its own baseline", "",
            f"Over the test cases ({what}); forest plots: "
            + ", ".join(DIFFERENCES_FIGURE.format(model=model.name) for _, model in pairs)
            + "; per organ and metric: compare/<pair>/statistics.json.", *lines]


# ------------------------------------------------------------------------------ elimination singularities
@dataclass
class DiagnosedRun:
    """One fold x seed of a baseline / Pool Skip pair, diagnosed by ``nnunet-poolskip diagnose`` into ``json``
    (the baseline's report at the top level, the Pool Skip model's as ``compare[0]``)."""

    base: Model
    model: Model
    seed: Optional[int]
    fold: int
    json: Path

    def reports(self) -> List[Dict]:
        """The baseline's and the model's reports, labelled with the models' display names."""
        document = json.loads(self.json.read_text())
        return [{**document, "model": self.base.display}, {**document["compare"][0], "model": self.model.display}]


def es_rows(runs: Sequence[DiagnosedRun]) -> List[Dict]:
    """One row per model and diagnosed run: model, pair, seed, fold and the encoder figures (encoder_summary)."""
    from nnunet_poolskip.diagnostics.layer_statistics import encoder_summary

    rows = []
    for run in runs:
        for model, report in zip((run.base, run.model), run.reports()):
            rows.append({"model": model.name, "display": model.display, "pair": run.model.name, "seed": run.seed,
                         "fold": run.fold, "epochs_trained": report.get("epochs_trained"),
                         "n_cases": (report.get("data") or {}).get("n_samples"),
                         **encoder_summary(report["layers"]), "diagnostics": str(run.json)})
    return rows


def _mean_and_range(values: Sequence[float], scale: float, digits: int) -> str:
    if not values:
        return "n/a"
    text = f"{scale * float(np.mean(values)):.{digits}f}"
    if len(values) > 1:
        text += f" [{scale * min(values):.{digits}f}, {scale * max(values):.{digits}f}]"
    return text


def es_section(pairs: Sequence[Tuple[Model, Model]], rows: Sequence[Dict]) -> List[str]:
    """table.md's elimination-singularity table: per model (a baseline once, from its first pair) the mean over
    its diagnosed runs, with their range, of the encoder's median l2/l1 and of its share of dead units."""
    if not rows:
        return []
    order: List[Tuple[Model, str]] = []  # (model, pair whose rows it takes)
    for base, model in pairs:
        if all(m.name != base.name for m, _ in order):
            order.append((base, model.name))
        order.append((model, model.name))
    cases = sorted({r["n_cases"] for r in rows if r["n_cases"] is not None})
    runs = sorted({(r["seed"] if r["seed"] is not None else -1, r["fold"]) for r in rows})
    lines = ["## Elimination singularities (encoder host convs, final checkpoints)", "",
             "| Model | runs | median l2/l1 | dead units (%) |", "|---|:---:|:---:|:---:|"]
    for model, pair in order:
        mine = [r for r in rows if r["model"] == model.name and r["pair"] == pair]
        ratios = [r["l2_l1_median"] for r in mine if r["l2_l1_median"] is not None]
        dead = [r["dead_fraction"] for r in mine if r["dead_fraction"] is not None]
        lines.append(f"| {model.display} | {len(mine)} | {_mean_and_range(ratios, 1, 4)} | "
                     f"{_mean_and_range(dead, 100, 1)} |")
    lines += ["", f"Per run (each of the {len(runs)} fold x seed runs of a model): the median of l2/l1 = "
                  f"||W||2/||W||1 over the encoder's host convs (higher: sparser weights, the paper's Figure 4 sign of "
                  f"elimination singularities; Pool Skip's inner convs left out), and the share of the encoder's units "
                  f"(output channels of host convs followed by a nonlinearity) whose pre-activation is <= 0 at every "
                  f"voxel of {' or '.join(map(str, cases)) or '?'} preprocessed patch(es) (the fold's validation cases "
                  f"first). Shown: mean over the runs [min, max]. Every run: {ES_CSV}; per-layer curves: "
                  + ", ".join(ES_FIGURE.format(model=model.name) for _, model in pairs)
                  + "; diagnose's own output per run: diagnostics/."]
    return lines


def write_es_csv(rows: Sequence[Dict], path: Path) -> None:
    """Every diagnosed run's encoder figures as CSV (empty cell: not available)."""
    columns = ["model", "display", "pair", "seed", "fold", "epochs_trained", "n_cases", "n_layers", "l2_l1_median",
               "n_units", "n_dead_units", "dead_fraction", "diagnostics"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else (f"{row[c]:.8g}" if isinstance(row[c], float) else row[c])
                         for c in columns])
    write_text_atomic(buffer.getvalue(), path)


def plot_es_pair(runs: Sequence[DiagnosedRun], path: Path, caveat: Optional[str]) -> None:
    """The per-layer figure of one pair: every diagnosed run of the baseline and of the Pool Skip model (one
    colour per model, one thin line per fold x seed), with ``diagnose``'s own plot."""
    from nnunet_poolskip.diagnostics.plots import plot_layer_curves

    reports = [report for run in runs for report in run.reports()]
    plot_layer_curves(sorted(reports, key=lambda r: r["model"] != runs[0].base.display), path, caveat)
