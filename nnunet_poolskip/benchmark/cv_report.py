"""The cross-validation protocol's parts of table.md / table.csv (report.py builds the rest, as for the test set).

The table states the protocol, the folds and n in its own header; below it, per model, the per-case mean (each
label's mean over all n out-of-fold predicted cases, then over labels: the number ``compare`` and its statistics
use) beside nnU-Net Revisited's mean over folds (each fold's foreground mean over its own validation cases, then
the mean over the folds), so that a user can put the number beside that paper's tables.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.benchmark.protocol import PAPER_FOLDS, Model

CV_METRICS = (("dice", "Dice"), ("nsd", "NSD"), ("iou", "mIoU"))


def folds_text(folds: Sequence[int]) -> str:
    """``folds 0 1 of 5`` or ``all 5 folds``."""
    if tuple(sorted(folds)) == PAPER_FOLDS:
        return f"all {len(PAPER_FOLDS)} folds"
    return f"fold{'s' if len(folds) > 1 else ''} {' '.join(map(str, folds))} of {len(PAPER_FOLDS)}"


def model_header(folds: Sequence[int], n_cases: int) -> str:
    """The first header cell of the cross-validation table: the protocol, the folds and n in the table itself."""
    return f"Model (cross-validation, {folds_text(folds)}, n = {n_cases} cases)"


def table_heading(folds: Sequence[int], n_cases: int) -> str:
    """The Markdown heading above the cross-validation table."""
    return (f"## Cross-validation: n = {n_cases} cases of {folds_text(folds)}, each scored once by the fold that held "
            f"it out (nnU-Net's final validation), paper's Table 3 layout")


def status_line(folds: Sequence[int], n_cases: int) -> str:
    """The status line of a complete cross-validation run."""
    return (f"Status: complete. Every model was trained on {folds_text(folds)}; each of the n = {n_cases} cases of "
            f"their validation sets is scored once, from nnU-Net's final validation prediction of the fold that "
            f"held it out (fold_k/validation/), against labelsTr.")


def protocol_sentence(deviations: Sequence[str]) -> str:
    """What the protocol is, and how it deviates from nnU-Net Revisited's 5-fold cross-validation."""
    text = ("5-fold cross-validation over the labelled cases, as nnU-Net Revisited (MICCAI 2024) benchmarks "
            "(the paper itself reports a held-out test set)")
    return text + ("" if not deviations else "; deviations: " + "; ".join(deviations))


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def over_seeds(means: Mapping[Optional[int], Mapping]) -> Dict:
    """The mean over seeds of each seed's fold means (one seed: its own): ``{"mean_over_folds": {metric: v},
    "folds": {fold: {metric: v}}}``."""
    runs = list(means.values())
    folds = sorted(runs[0]["folds"])
    return {"mean_over_folds": {m: _mean([r["mean_over_folds"][m] for r in runs]) for m, _ in CV_METRICS},
            "folds": {f: {m: _mean([r["folds"][f][m] for r in runs]) for m, _ in CV_METRICS} for f in folds}}


def fold_mean_section(models: Sequence[Model], means: Mapping[str, Mapping[Optional[int], Mapping]],
                      summaries: Sequence[Path]) -> List[str]:
    """Markdown lines: per model, the per-case mean and the mean over folds of each metric, and each fold's Dice.

    Args:
        models: the table's models.
        means: model name -> seed -> :func:`cross_validation.fold_means` of that seed's summary.
        summaries: the summary ``compare`` got for each model (same order): its ``foreground_mean`` is the
            per-case mean.
    """
    folds = sorted(next(iter(next(iter(means.values())).values()))["folds"])
    seeds = len(next(iter(means.values())))
    header = ["Model"] + [f"{label} {kind}" for _, label in CV_METRICS for kind in ("per case", "over folds")]
    header += [f"Dice fold {f}" for f in folds]
    lines = ["## Cross-validation: per-case mean and mean over folds", "",
             "| " + " | ".join(header) + " |", "|---|" + ":---:|" * (len(header) - 1)]
    for model, summary in zip(models, summaries):
        per_case = json.loads(Path(summary).read_text())["foreground_mean"]
        averaged = over_seeds(means[model.name])
        cells = [model.display]
        for metric, _ in CV_METRICS:
            cells += [_percent(per_case.get(metric)), _percent(averaged["mean_over_folds"][metric])]
        cells += [_percent(averaged["folds"][f]["dice"]) for f in folds]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Percent, foreground means. *Per case*: each organ's mean over all out-of-fold predicted cases, then "
                  "the mean over organs (the table above and the paired statistics use it). *Over folds*: each "
                  "fold's foreground mean over its own validation cases, then the mean over the folds: how nnU-Net "
                  "Revisited averages (its tables, e.g. BTCV 83.08 Dice for nnU-Net at 1000 epochs and 5 folds, are "
                  "comparable only at the same folds, schedule and plans)."
              + ("" if seeds == 1 else f" With {seeds} seeds: per case from each case's mean over the seeds; over "
                                       f"folds the mean over seeds of each seed's mean over folds.")]
    return lines


def fold_mean_columns(models: Sequence[Model], means: Mapping[str, Mapping[Optional[int], Mapping]]
                      ) -> Dict[str, Dict[str, str]]:
    """table.csv columns of the cross-validation: ``protocol``, the mean over folds per metric (percent) and each
    fold's Dice (percent, space-separated in fold order)."""
    columns: Dict[str, Dict[str, str]] = {"protocol": {m.name: "cv" for m in models}}
    for metric, _ in CV_METRICS:
        name = "miou" if metric == "iou" else metric
        columns[f"fold_mean_{name}_percent"] = {}
    columns["fold_dice_percent"] = {}
    for model in models:
        averaged = over_seeds(means[model.name])
        for metric, _ in CV_METRICS:
            name = "miou" if metric == "iou" else metric
            value = averaged["mean_over_folds"][metric]
            columns[f"fold_mean_{name}_percent"][model.name] = "" if value is None else f"{100 * value:.4f}"
        columns["fold_dice_percent"][model.name] = " ".join(
            "" if v["dice"] is None else f"{100 * v['dice']:.4f}" for _, v in sorted(averaged["folds"].items()))
    return columns


def cv_wording(lines: Sequence[str]) -> List[str]:
    """The evidence sections' lines (written for the test set) with their cases named as the cross-validation's."""
    return [line.replace("test cases", "out-of-fold predicted cases").replace("test case", "out-of-fold predicted case")
            .replace("compare/<pair>/", "cv/compare/<pair>/") for line in lines]


def report_section(table_md: str, folder: Path) -> List[str]:
    """The lines of a table.md from its first ``## `` heading on, with the per-organ files named by their place
    (``folder``, relative to the main results folder): what ``--protocol both`` appends to the main report."""
    lines = table_md.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), 0)
    prefix = "" if str(folder) in ("", ".") else f"{folder}/"
    out = []
    for line in lines[start:]:
        if line.startswith("Per organ: ") and prefix:
            line = (f"Per organ: {prefix}per_organ.md, {prefix}per_organ.csv, {prefix}per_organ_dice.png; overlays "
                    f"and differences: {prefix}overlays.png, {prefix}differences_*.png; table: {prefix}table.md, "
                    f"{prefix}table.csv.")
        out.append(line)
    return out
