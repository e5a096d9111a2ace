"""Comparison tables and plots from several summary.json files (``nnunet-poolskip compare``).

The main table has the paper's Table 3 layout: one row per model, DICE (%), NSD (%) and mIoU (%) of the
foreground means, and for every model after the first its difference to the first (``81.52 +0.95``). Under it,
the paired statistics of every model against the first (``statistics.py``): the mean per-case difference with
its 95% bootstrap interval and the Wilcoxon p (``+0.95 [-0.40, +2.31] p=0.21``), per organ in the per-organ
tables. Figures: per-case Dice per organ and model (box plots) and a forest plot of the paired differences.

A summary counts as incomplete when it says ``"complete": false`` or lists ``missing_predictions``; its row is
marked with a dagger and every summary's ``notes`` are printed under the table (see ``evaluate_predictions.py``).
A caveat (``--caveat``) stands at the top of every table and in every figure's title.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_poolskip.evaluation.statistics import (
    FOREGROUND,
    SIGNIFICANCE_LEVEL,
    can_reach_significance,
    comparison_statistics,
    find,
)
from nnunet_poolskip.utilities.atomic import write_json_atomic, write_text_atomic
from nnunet_poolskip.utilities.figures import READER_WIDTH_INCHES, new_figure, save_figure, set_title

METRIC_COLUMNS = (("dice", "DICE (%)"), ("nsd", "NSD (%)"), ("iou", "mIoU (%)"))
METRIC_NAMES = {"dice": "Dice", "nsd": "NSD", "iou": "IoU"}
SMALL_N_MARK = "‡"
REQUIRED_KEYS = ("labels", "nsd_tolerance_mm", "per_case", "mean", "foreground_mean")
INCOMPLETE_MARK = "†"


class CompareInputError(ValueError):
    """Summaries that cannot be compared; the message names the files."""


def load_summary(path: os.PathLike | str) -> Dict:
    """Read a summary.json written by ``nnunet-poolskip evaluate`` and check that it has the needed keys."""
    path = Path(path)
    if not path.is_file():
        raise CompareInputError(f"summary {path} does not exist")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CompareInputError(f"summary {path} is not valid JSON: {error}") from None
    missing = [k for k in REQUIRED_KEYS if k not in summary] if isinstance(summary, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CompareInputError(f"summary {path} lacks {missing}: is it a summary.json of nnunet-poolskip evaluate?")
    return summary


def is_incomplete(summary: Mapping) -> bool:
    """True when the summary says it was made from incomplete runs (``complete`` false or missing predictions)."""
    return summary.get("complete") is False or bool(summary.get("missing_predictions"))


def check_comparable(summaries: Sequence[Mapping], paths: Sequence[str],
                     match_labels_by_value: bool = False) -> List[str]:
    """Raise if the summaries score different labels, name a label value differently (unless
    ``match_labels_by_value``: the user says the values mean the same structures) or use different NSD tolerances;
    return notes on lesser differences (different case sets, label names compared by value)."""
    first_labels, first_tol = set(summaries[0]["labels"]), summaries[0]["nsd_tolerance_mm"]
    notes = []
    for summary, path in zip(summaries[1:], paths[1:]):
        if set(summary["labels"]) != first_labels:
            raise CompareInputError(f"{path} scores labels {sorted(summary['labels'], key=int)}, but {paths[0]} "
                                    f"scores {sorted(first_labels, key=int)}")
        renamed = [k for k in sorted(first_labels, key=int) if summary["labels"][k] != summaries[0]["labels"][k]]
        if renamed and not match_labels_by_value:  # the same value may mean another organ: never compare silently
            raise CompareInputError(
                "; ".join(f"label {k} is {summary['labels'][k]!r} in {path} but {summaries[0]['labels'][k]!r} in "
                          f"{paths[0]}" for k in renamed)
                + ": the summaries may score different structures under one value. Compare summaries of the same "
                  "labels, or pass --match-labels-by-value if these names mean the same structures (the tables then "
                  f"use {paths[0]}'s names)")
        notes += [f"label {k} is {summary['labels'][k]!r} in {path}, {summaries[0]['labels'][k]!r} in {paths[0]}: "
                  f"compared by value (--match-labels-by-value)" for k in renamed]
        differing = [k for k in first_tol if not math.isclose(summary["nsd_tolerance_mm"][k], first_tol[k])]
        if differing:
            raise CompareInputError(f"{path} and {paths[0]} use different NSD tolerances for labels {differing} "
                                    f"({[summary['nsd_tolerance_mm'][k] for k in differing]} vs "
                                    f"{[first_tol[k] for k in differing]} mm): their NSD is not comparable")
    first_cases = [c["case"] for c in summaries[0]["per_case"]]
    for summary, path in zip(summaries[1:], paths[1:]):
        cases = [c["case"] for c in summary["per_case"]]
        if set(cases) != set(first_cases):
            notes.append(f"{path} was evaluated on {len(cases)} cases, {paths[0]} on {len(first_cases)}; "
                         f"{len(set(cases) ^ set(first_cases))} cases are not in both")
    return notes


def _percent(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def _format(value: Optional[float], reference: Optional[float] = None, with_delta: bool = False) -> str:
    if value is None:
        return "n/a"
    if not with_delta or reference is None:
        return f"{value:.2f}"
    # The delta of the printed values, so that the table adds up as read (the CSV keeps full precision).
    delta = float(f"{value:.2f}") - float(f"{reference:.2f}")
    return f"{value:.2f} {delta:+.2f}"


def averaged_labels(summary: Mapping, metric: str) -> List[str]:
    """The labels whose mean enters the summary's foreground mean of ``metric`` (those with a non-null mean)."""
    return [key for key in summary["labels"] if summary["mean"][metric].get(key) is not None]


def foreground_text(summaries: Sequence[Mapping], names: Sequence[str]) -> str:
    """"Foreground means over N labels", counting what is averaged: a label without a value in any case (empty in
    reference and prediction everywhere) has no mean and is left out; then the text says which, and for which
    model when the models differ."""
    labels = summaries[0]["labels"]
    total = len(labels)
    descriptions = []
    for summary in summaries:
        missing = {metric: [k for k in labels if k not in averaged_labels(summary, metric)] for metric, _ in
                   METRIC_COLUMNS}
        if not any(missing.values()):
            descriptions.append(None)
        elif len({tuple(v) for v in missing.values()}) == 1:
            left_out = missing["dice"]
            descriptions.append(f"{total - len(left_out)} of {total} labels (no value in any case: "
                                f"{', '.join(labels[k] for k in left_out)})")
        else:
            descriptions.append(", ".join(f"{METRIC_NAMES[m]} {total - len(v)}" for m, v in missing.items())
                                + f" of {total} labels")
    if all(d is None for d in descriptions):
        return f"Foreground means over {total} labels"
    if len(set(descriptions)) == 1:
        return f"Foreground means over {descriptions[0]}"
    return "Foreground means over " + "; ".join(f"{name}: {d or f'{total} labels'}"
                                                for name, d in zip(names, descriptions))


def _signed_points(value: float) -> str:
    return f"{100.0 * value:+.2f}"


def p_text(p: Optional[float]) -> str:
    """A p value as printed in the tables: two decimals, three below 0.01, ``<0.001`` below that."""
    if p is None:
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def difference_cell(entry: Optional[Mapping], holm: bool = False) -> str:
    """``+0.95 [-0.40, +2.31] p=0.21`` (percentage points), ``(Holm 1.00)`` added when asked, and the small-n mark
    when the test cannot reach 0.05 with so few nonzero differences."""
    if entry is None or entry["n"] == 0:
        return "n/a (no case with values in both)"
    text = _signed_points(entry["mean_difference"])
    interval = entry["ci95"]
    text += f" [{_signed_points(interval[0])}, {_signed_points(interval[1])}]" if interval else " [n/a]"
    p = p_text(entry["p_wilcoxon"])
    text += f" p{p}" if p.startswith("<") else f" p={p}"
    if holm and entry["label"] != FOREGROUND:
        text += f" (Holm {p_text(entry['p_holm'])})"
    if not can_reach_significance(entry):
        text += f" {SMALL_N_MARK}"
    return text


def _small_n_note(entries: Sequence[Mapping]) -> List[str]:
    """Say in words where the Wilcoxon test cannot reach the significance level at all."""
    if all(can_reach_significance(e) for e in entries if e is not None and e["n"] > 0):
        return []
    return [f"{SMALL_N_MARK} marks a difference where at most 5 cases differ (k = wins + losses; n counts the cases "
            f"with values in both, ties are dropped by the test): with k nonzero differences the smallest possible "
            f"two-sided Wilcoxon p is 2/2^k (k = 5: 0.0625), so the test cannot reach p < {SIGNIFICANCE_LEVEL:g} "
            f"there whatever the models do. Too few cases to show a difference; the bootstrap interval, too, tends "
            f"to be too narrow with so few cases."]


def model_rows(summaries: Sequence[Mapping], names: Sequence[str], statistics: Optional[Mapping] = None) -> List[Dict]:
    """One row per model: foreground means in percent, differences to the first model (percentage points), the
    number of labels averaged, and (with ``statistics``) the paired foreground statistics in percentage points."""
    rows = []
    first = summaries[0]["foreground_mean"]
    for index, (summary, name) in enumerate(zip(summaries, names)):
        row = {"model": name, "incomplete": is_incomplete(summary), "n_cases": len(summary["per_case"]),
               "foreground_labels": len(averaged_labels(summary, "dice")), "labels": len(summary["labels"])}
        for metric, _ in METRIC_COLUMNS:
            value, reference = _percent(summary["foreground_mean"].get(metric)), _percent(first.get(metric))
            row[metric] = value
            row[f"delta_{metric}"] = (None if index == 0 or value is None or reference is None
                                      else value - reference)
            entry = find(statistics, name, metric, FOREGROUND) if statistics and index > 0 else None
            row[f"paired_{metric}"] = entry
        rows.append(row)
    return rows


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _caveat_block(caveat: Optional[str]) -> str:
    return f"> **{caveat.strip()}**\n\n" if caveat else ""


def _notes_block(summaries: Sequence[Mapping], names: Sequence[str], extra_notes: Sequence[str]) -> str:
    lines = []
    for summary, name in zip(summaries, names):
        if is_incomplete(summary):
            missing = summary.get("missing_predictions") or []
            lines.append(f"- {INCOMPLETE_MARK} {name}: incomplete"
                         + (f" ({len(missing)} cases without prediction: {', '.join(missing[:10])})"
                            if missing else ""))
        for note in summary.get("notes") or []:
            lines.append(f"- {name}: {note}")
    lines += [f"- {note}" for note in extra_notes]
    return ("\n\nNotes:\n" + "\n".join(lines)) if lines else ""


def _difference_name(name: str, baseline: str) -> str:
    return f"{name} − {baseline}"


def paired_table_markdown(rows: Sequence[Mapping], baseline: str) -> str:
    """The paired foreground statistics of every model against the first, in percentage points."""
    body, entries = [], []
    for row in rows[1:]:
        cells = [row[f"paired_{metric}"] for metric, _ in METRIC_COLUMNS]
        entries += cells
        ns = sorted({e["n"] for e in cells if e is not None})
        body.append([_difference_name(row["model"], baseline), " / ".join(map(str, ns)) or "0"]
                    + [difference_cell(e) for e in cells])
    header = ["Comparison", "n"] + [f"Δ {column}" for _, column in METRIC_COLUMNS]
    text = (f"Paired differences against {baseline} (percentage points): the mean over the test cases of the "
            f"per-case difference of the foreground mean (over the labels a case has), [95% percentile-bootstrap "
            f"interval], two-sided Wilcoxon signed-rank p; n = cases with values in both. This can differ from the "
            f"delta above, which compares means of per-label means. Per organ: per_organ.md; details: "
            f"statistics.json.\n\n" + _markdown(header, body))
    note = _small_n_note(entries)
    return text + ("\n\n" + "\n".join(note) if note else "")


def table3_markdown(summaries: Sequence[Mapping], names: Sequence[str], title: Optional[str] = None,
                    extra_notes: Sequence[str] = (), statistics: Optional[Mapping] = None,
                    caveat: Optional[str] = None) -> str:
    """The paper's Table 3 layout in Markdown (values in percent, deltas against the first model), followed by the
    paired statistics of every model against the first when ``statistics`` (statistics.json's content) is given."""
    rows = model_rows(summaries, names, statistics)
    body = []
    for index, row in enumerate(rows):
        label = row["model"] + (f" {INCOMPLETE_MARK}" if row["incomplete"] else "")
        body.append([label] + [_format(row[m], rows[0][m], with_delta=index > 0) for m, _ in METRIC_COLUMNS])
    header = ["Model"] + [f"{title} {c} ↑" if title else f"{c} ↑" for _, c in METRIC_COLUMNS]
    tolerance = _tolerance_text(summaries[0])
    text = _caveat_block(caveat) + (f"### {title}\n\n" if title else "") + _markdown(header, body)
    text += f"\n\n{foreground_text(summaries, names)}; NSD tolerance {tolerance}; deltas in percentage points " \
            f"against {names[0]}."
    if statistics is not None and len(rows) > 1:
        text += "\n\n" + paired_table_markdown(rows, names[0])
    return text + _notes_block(summaries, names, extra_notes) + "\n"


def _tolerance_text(summary: Mapping) -> str:
    values = sorted(set(float(v) for v in summary["nsd_tolerance_mm"].values()))
    return f"{values[0]:g} mm" if len(values) == 1 else "per label (" + ", ".join(
        f"{summary['labels'][k]} {float(v):g}" for k, v in summary["nsd_tolerance_mm"].items()) + " mm)"


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv_statistics(entry: Optional[Mapping], holm: bool = False) -> List[str]:
    """n, mean difference, interval (percentage points), p (and Holm p) of a statistics entry as CSV cells."""
    if entry is None:
        return [""] * (6 if holm else 5)
    interval = entry["ci95"] or [None, None]
    cells = [str(entry["n"]), _csv_number(_percent(entry["mean_difference"])),
             _csv_number(_percent(interval[0])), _csv_number(_percent(interval[1])),
             "" if entry["p_wilcoxon"] is None else f"{entry['p_wilcoxon']:.6g}"]
    if holm:
        cells.append("" if entry["p_holm"] is None else f"{entry['p_holm']:.6g}")
    return cells


def _csv_statistics_header(metric: str, holm: bool = False) -> List[str]:
    names = ["n_paired", "paired_delta", "ci95_low", "ci95_high", "p_wilcoxon"] + (["p_holm"] if holm else [])
    return [f"{name}_{metric}" for name in names]


def table3_csv(summaries: Sequence[Mapping], names: Sequence[str], statistics: Optional[Mapping] = None) -> str:
    """Table 3 as CSV: model, dice, nsd, miou (percent), their deltas to the first model, n_cases, incomplete,
    the number of labels in the foreground mean, and the paired foreground statistics (percentage points; empty for
    the first model and without ``statistics``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    csv_metrics = ("dice", "nsd", "miou")
    writer.writerow(["model", "dice_percent", "nsd_percent", "miou_percent", "delta_dice", "delta_nsd",
                     "delta_miou", "n_cases", "incomplete", "foreground_labels", "labels"]
                    + [h for m in csv_metrics for h in _csv_statistics_header(m)])
    for row in model_rows(summaries, names, statistics):
        writer.writerow([row["model"], *[_csv_number(row[m]) for m, _ in METRIC_COLUMNS],
                         *[_csv_number(row[f"delta_{m}"]) for m, _ in METRIC_COLUMNS], row["n_cases"],
                         str(row["incomplete"]).lower(), row["foreground_labels"], row["labels"],
                         *[c for m, _ in METRIC_COLUMNS for c in _csv_statistics(row[f"paired_{m}"])]])
    return out.getvalue()


def per_organ_markdown(summaries: Sequence[Mapping], names: Sequence[str], statistics: Optional[Mapping] = None,
                       caveat: Optional[str] = None) -> str:
    """Per-label means in percent, one table per metric, models as columns; with ``statistics``, one column per
    model after the first with its paired difference to the first (interval, Wilcoxon p and Holm-adjusted p)."""
    labels = summaries[0]["labels"]
    sections, entries = [], []
    for metric, column in METRIC_COLUMNS:
        body = []
        for key, organ in labels.items():
            cells = [_format(_percent(s["mean"][metric].get(key))) for s in summaries]
            if statistics is not None:
                found = [find(statistics, name, metric, key) for name in names[1:]]
                entries += found
                cells += [difference_cell(e, holm=True) for e in found]
            body.append([f"{key} {organ}"] + cells)
        header = ["Label"] + list(names)
        if statistics is not None:
            header += [f"{_difference_name(name, names[0])} (points)" for name in names[1:]]
        name = column.replace("mIoU", "IoU")
        sections.append(f"### {name} per organ\n\n" + _markdown(header, body))
    text = _caveat_block(caveat) + "\n\n".join(sections)
    text += ("\n\nMeans over the cases where the label has a value (cases empty in reference and prediction are "
             "left out).")
    if statistics is not None and len(names) > 1:
        text += (" Differences: mean of the per-case difference over the cases where both models have a value, "
                 "[95% percentile-bootstrap interval], two-sided Wilcoxon signed-rank p, and in brackets the p "
                 "after Holm's correction over the labels of that metric and model.")
        note = _small_n_note(entries)
        text += ("\n\n" + "\n".join(note)) if note else ""
    return text + "\n"


def per_organ_csv(summaries: Sequence[Mapping], names: Sequence[str], statistics: Optional[Mapping] = None) -> str:
    """Long CSV: label, organ, model, dice, nsd, iou (percent means), n_scored (cases not empty in both), and for
    every model after the first its paired statistics against the first per metric (percentage points)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "organ", "model", "dice_percent", "nsd_percent", "iou_percent", "n_scored"]
                    + [h for m, _ in METRIC_COLUMNS for h in _csv_statistics_header(m, holm=True)])
    for key, organ in summaries[0]["labels"].items():
        for index, (summary, name) in enumerate(zip(summaries, names)):
            scored = sum(case["dice"].get(key) is not None for case in summary["per_case"])
            paired = [find(statistics, name, m, key) if statistics and index > 0 else None for m, _ in METRIC_COLUMNS]
            writer.writerow([key, organ, name, *[_csv_number(_percent(summary["mean"][m].get(key)))
                                                 for m, _ in METRIC_COLUMNS], scored,
                             *[c for entry in paired for c in _csv_statistics(entry, holm=True)]])
    return out.getvalue()


ORGANS_PER_PANEL = 8


def plot_per_organ_dice(summaries: Sequence[Mapping], names: Sequence[str], path: os.PathLike | str,
                        caveat: Optional[str] = None) -> None:
    """PNG of per-case Dice (%) per organ, one box per model with every case as a dot (cases empty in reference and
    prediction left out), saved atomically.

    At most ``ORGANS_PER_PANEL`` organs per row of panels, so that the figure stays readable 1600 px wide; the
    legend sits under the panels, where it hides nothing."""
    labels = list(summaries[0]["labels"].items())
    chunks = [labels[i:i + ORGANS_PER_PANEL] for i in range(0, len(labels), ORGANS_PER_PANEL)]
    n_models = len(summaries)
    width = 0.8 / n_models
    figure = new_figure(READER_WIDTH_INCHES, 3.4 * len(chunks) + 1.6 + (0.4 if caveat else 0))
    axes_list = figure.subplots(len(chunks), 1, squeeze=False)[:, 0]
    colours = [f"C{i}" for i in range(10)]
    for axes, chunk in zip(axes_list, chunks):
        for index, (summary, name) in enumerate(zip(summaries, names)):
            data = [[100 * case["dice"][key] for case in summary["per_case"] if case["dice"].get(key) is not None]
                    for key, _ in chunk]
            positions = np.arange(len(chunk)) + (index - (n_models - 1) / 2) * width
            colour = colours[index % len(colours)]
            boxes = axes.boxplot([d if d else [np.nan] for d in data], positions=positions, widths=width * 0.9,
                                 patch_artist=True, showfliers=False, manage_ticks=False,
                                 medianprops={"color": "black"})  # the default orange vanishes in an orange box
            for box in boxes["boxes"]:
                box.set_facecolor(colour)
                box.set_alpha(0.6)
            # every case as a dot, so that a box of one or two cases still shows its colour and its n
            jitter = np.random.default_rng(index)
            for position, values in zip(positions, data):
                axes.plot(position + jitter.uniform(-0.25, 0.25, len(values)) * width, values, "o", color=colour,
                          markersize=4, markeredgecolor="black", markeredgewidth=0.4)
        for position, (key, _) in enumerate(chunk):
            if all(case["dice"].get(key) is None for summary in summaries for case in summary["per_case"]):
                axes.text(position, 50, "no values", ha="center", va="center", color="0.4", fontsize=9)
        axes.set_xticks(np.arange(len(chunk)))
        axes.set_xticklabels([organ for _, organ in chunk], rotation=20, ha="right")
        axes.set_xlim(-0.5, ORGANS_PER_PANEL - 0.5 if len(chunks) > 1 else len(chunk) - 0.5)
        axes.set_ylabel("Dice (%)")
        axes.set_ylim(0, 100)
        axes.grid(axis="y", alpha=0.3)
    handles = [matplotlib_patch(colours[i % len(colours)], name) for i, name in enumerate(names)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
    set_title(figure, "Per-case Dice per organ (cases empty in reference and prediction left out)", caveat)
    save_figure(figure, path)


def matplotlib_patch(colour: str, label: str):
    """A legend entry: a filled square of ``colour``."""
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, alpha=0.6, label=label)


def plot_differences(statistics: Mapping, labels: Mapping[str, str], path: os.PathLike | str,
                     caveat: Optional[str] = None) -> None:
    """Forest plot of the paired differences (statistics.json's content): one panel per metric, one row per organ
    and the per-case foreground mean on top, each model after the first as a point (mean difference, percentage
    points) with its 95% bootstrap interval; a line at zero. Filled points: Holm-adjusted p < 0.05 (foreground:
    the Wilcoxon p); open points: not. Organs without paired cases have no point; their row says so."""
    comparisons = statistics["comparisons"]
    models = list(dict.fromkeys(e["model"] for e in comparisons))
    baseline = comparisons[0]["baseline"] if comparisons else ""
    rows = [FOREGROUND] + list(labels)
    names = {FOREGROUND: "foreground, per-case mean", **labels}
    n_models = max(1, len(models))
    row_height = 0.22 * n_models + 0.12
    figure = new_figure(READER_WIDTH_INCHES, row_height * len(rows) + 2.0 + (0.4 if caveat else 0))
    axes_list = figure.subplots(1, len(METRIC_COLUMNS), sharey=True, squeeze=False)[0]
    colours = [f"C{i}" for i in range(10)]
    offsets = (np.arange(n_models) - (n_models - 1) / 2) * (0.7 / n_models)
    tick_labels, small = [], False
    for row in rows:
        entries = [e for e in comparisons if e["label"] == row and e["n"] > 0]
        ns = sorted({e["n"] for e in entries if e["metric"] == "dice"})
        text = names[row] + (f" (n={'/'.join(map(str, ns))})" if entries else " (no paired cases)")
        if any(not can_reach_significance(e) for e in entries):
            text += f" {SMALL_N_MARK}"
            small = True
        tick_labels.append(text)
    for axes, (metric, _) in zip(axes_list, METRIC_COLUMNS):
        axes.axvline(0, color="0.3", linewidth=1)
        axes.axhline(0.5, color="0.7", linewidth=0.8)  # foreground above, organs below
        for m, model in enumerate(models):
            colour = colours[m % len(colours)]
            for y, row in enumerate(rows):
                entry = find(statistics, model, metric, row)
                if entry is None or entry["n"] == 0:
                    continue
                position = y + offsets[m]
                mean = 100 * entry["mean_difference"]
                if entry["ci95"]:
                    low, high = (100 * v for v in entry["ci95"])
                    axes.plot([low, high], [position, position], color=colour, linewidth=1.6)
                significant = entry["p_holm"] is not None and entry["p_holm"] < SIGNIFICANCE_LEVEL
                axes.plot([mean], [position], marker="o", markersize=6, color=colour,
                          markerfacecolor=colour if significant else "white", markeredgewidth=1.5)
        axes.set_title(METRIC_NAMES[metric])
        axes.set_xlabel("difference (percentage points)")
        axes.grid(axis="x", alpha=0.3)
        axes.set_ylim(len(rows) - 0.5, -0.5)
    axes_list[0].set_yticks(range(len(rows)))
    axes_list[0].set_yticklabels(tick_labels)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m % len(colours)], marker="o", linewidth=1.6,
                      label=_difference_name(model, baseline)) for m, model in enumerate(models)]
    handles += [Line2D([], [], color="0.3", marker="o", linestyle="none", label=f"p < {SIGNIFICANCE_LEVEL:g} "
                       "(organs: Holm-adjusted)"),
                Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                       label=f"p ≥ {SIGNIFICANCE_LEVEL:g} or not testable")]
    if small:
        handles.append(Line2D([], [], linestyle="none", label=f"{SMALL_N_MARK} at most 5 cases differ: the test "
                              f"cannot reach p < {SIGNIFICANCE_LEVEL:g}; the interval is unreliable"))
    figure.legend(handles=handles, loc="outside lower center", ncols=2 if small else min(len(handles), 4),
                  frameon=False)
    set_title(figure, f"Paired differences against {baseline}: mean over cases and 95% bootstrap interval", caveat)
    save_figure(figure, path)


OUTPUT_FILES = {"table": "table3.md", "table_csv": "table3.csv", "per_organ": "per_organ.md",
                "per_organ_csv": "per_organ.csv", "plot": "per_organ_dice.png", "statistics": "statistics.json",
                "differences_plot": "differences.png"}
ONE_MODEL_OUTPUTS = ("statistics", "differences_plot")
"""Written only when there is a second summary to compare with the first."""


def compare_summaries(paths: Sequence[os.PathLike | str], names: Optional[Sequence[str]],
                      output_folder: os.PathLike | str, title: Optional[str] = None,
                      caveat: Optional[str] = None, match_labels_by_value: bool = False) -> Dict[str, Path]:
    """Write Table 3 (Markdown, CSV), the per-organ tables (Markdown, CSV), statistics.json and the two figures into
    ``output_folder``.

    Args:
        paths: summary.json files; the first is the reference of the deltas and the baseline of the statistics.
        names: model names (same number as paths); default: each summary's parent folder name.
        output_folder: created if needed.
        title: optional data set name shown above the table (e.g. BTCV).
        caveat: optional text shown at the top of the Markdown tables and in every figure's title (e.g. that this
            is a smoke-scale run on synthetic data).
        match_labels_by_value: compare summaries whose label names differ for the same value (the user says they
            are the same structures); the tables use the first summary's names and a note lists the others.
    Returns:
        Output kind -> path (keys of ``OUTPUT_FILES``; statistics.json and differences.png only with two or more
        summaries).
    Raises:
        CompareInputError: unreadable summaries, a names/paths count mismatch, duplicate names, different
            label sets, label names or NSD tolerances.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise CompareInputError("give at least one summary.json")
    if names is None:
        names = [Path(p).resolve().parent.name for p in paths]
    names = list(names)
    if len(names) != len(paths):
        raise CompareInputError(f"{len(paths)} summaries but {len(names)} names (--names)")
    if len(set(names)) != len(names):
        raise CompareInputError(f"model names must differ, got {names} (use --names)")
    summaries = [load_summary(p) for p in paths]
    extra_notes = check_comparable(summaries, paths, match_labels_by_value)
    statistics = comparison_statistics(summaries, names) if len(summaries) > 1 else None
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {kind: folder / name for kind, name in OUTPUT_FILES.items()
               if statistics is not None or kind not in ONE_MODEL_OUTPUTS}
    write_text_atomic(table3_markdown(summaries, names, title, extra_notes, statistics, caveat), outputs["table"])
    write_text_atomic(table3_csv(summaries, names, statistics), outputs["table_csv"])
    write_text_atomic(per_organ_markdown(summaries, names, statistics, caveat), outputs["per_organ"])
    write_text_atomic(per_organ_csv(summaries, names, statistics), outputs["per_organ_csv"])
    plot_per_organ_dice(summaries, names, outputs["plot"], caveat)
    if statistics is None:  # a single summary: what an earlier compare into this folder left would contradict it
        for kind in ONE_MODEL_OUTPUTS:
            (folder / OUTPUT_FILES[kind]).unlink(missing_ok=True)
    else:
        write_json_atomic(statistics, outputs["statistics"])
        plot_differences(statistics, summaries[0]["labels"], outputs["differences_plot"], caveat)
    return outputs
