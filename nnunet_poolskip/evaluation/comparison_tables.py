"""Comparison tables from several summary.json files (``nnunet-poolskip compare``).

The main table has the paper's Table 3 layout: one row per model, DICE (%), NSD@tolerance (%) and mIoU (%) of the
foreground means, and for every model after the first its difference to the first (``81.52 +0.95``); a model given
with several seeds (summaries sharing a name) shows each case's values averaged over its seeds. Under it, the paired
statistics of every model against the first (statistics.json, computed by ``statistics.py`` and
``seed_statistics.py``; nothing is computed here): the mean per-case difference with its 95% interval and the p of
the matching test (``+0.95 [-0.40, +2.31] p=0.21``), what that interval covers (one run: test cases only; several
seeds: retraining and cases), the primary endpoint's margin verdict and each seed's own difference; per organ in the
per-organ tables, with the distribution behind each mean (``organ_distribution.py``). Figures:
``comparison_figures.py``.

A summary counts as incomplete when it says ``"complete": false`` or lists ``missing_predictions``; its row is
marked with a dagger and every summary's ``notes`` are printed under the table (see ``evaluate_predictions.py``).
A caveat (``--caveat``) stands at the top of every table and in every figure's title.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.evaluation.comparison_figures import plot_differences, plot_per_organ_dice  # noqa: F401
from nnunet_poolskip.evaluation.comparison_names import (  # noqa: F401  (re-exported)
    METRIC_COLUMNS,
    METRIC_NAMES,
    SMALL_N_MARK,
    difference_name,
    metric_names,
    nsd_name,
)
from nnunet_poolskip.evaluation.organ_distribution import organ_distribution_markdown
from nnunet_poolskip.evaluation.statistics import (
    DEFAULT_MARGIN,
    FOREGROUND,
    PERMUTATIONS,
    SCOPE_SEEDS,
    SIGNIFICANCE_LEVEL,
    can_reach_significance,
    comparison_statistics,
    find,
    group_by_name,
    seed_entries,
)
from nnunet_poolskip.evaluation.summary_io import (  # noqa: F401  (re-exported: compare's public names)
    REQUIRED_KEYS,
    CompareInputError,
    check_comparable,
    is_incomplete,
    load_summary,
)
from nnunet_poolskip.utilities.atomic import write_json_atomic, write_text_atomic

INCOMPLETE_MARK = "†"


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


def is_identical(entry: Mapping) -> bool:
    """True when every difference of the entry is zero (both models scored the same everywhere)."""
    return entry["n"] > 0 and entry["ties"] == entry["n"] and entry["mean_difference"] == 0 and \
        entry["ci95"] == [0.0, 0.0]


def difference_cell(entry: Optional[Mapping], holm: bool = False) -> str:
    """``+0.95 [-0.40, +2.31] p=0.21`` (percentage points; ``p`` is the test that matches the interval),
    ``(Holm 1.00)`` added when asked, the small-n mark when the test cannot reach 0.05 with so few nonzero
    differences; ``identical in 12/12 (both 0)`` when every difference is zero."""
    if entry is None or entry["n"] == 0:
        return "n/a (no case with values in both)"
    if is_identical(entry):
        seeds = max(entry.get("n_seeds", {}).values(), default=1)
        over = f" x {seeds} seeds" if entry.get("scope") == SCOPE_SEEDS else ""
        return f"identical in {entry['n']}/{entry['n']}{over} (both {100 * entry['mean_a']:.4g})"
    text = _signed_points(entry["mean_difference"])
    interval = entry["ci95"]
    text += f" [{_signed_points(interval[0])}, {_signed_points(interval[1])}]" if interval else " [n/a]"
    p = p_text(entry.get("p", entry.get("p_wilcoxon")))
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
    return [f"{SMALL_N_MARK} marks a difference where at most 5 cases differ (k = wins + losses; zero differences "
            f"do not change a sign-flip): with k nonzero differences the smallest two-sided p of the exact "
            f"permutation test is 2/2^k (k = 5: 0.0625), so it cannot reach p < {SIGNIFICANCE_LEVEL:g} there "
            f"whatever the models do. Too few cases to show a difference; the bootstrap interval, too, tends to be "
            f"too narrow with so few cases."]


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


_difference_name = difference_name


SEEDS_COMMAND = "nnunet-poolskip benchmark ... --seeds 0 1 2 3 4"
RECOMMENDED_SEEDS = 5


def verdict_text(entry: Mapping) -> str:
    """The margin verdict of a foreground entry in words (``equivalent within ±1.00``...)."""
    margin = 100 * entry.get("margin", DEFAULT_MARGIN)
    return {"equivalent": f"equivalent: interval inside ±{margin:.2f}",
            "above_margin": f"better by more than {margin:.2f}",
            "below_margin": f"worse by more than {margin:.2f}",
            "inconclusive": f"inconclusive at ±{margin:.2f}"}.get(entry.get("verdict"), "n/a")


def primary_cell(entry: Optional[Mapping]) -> str:
    """The primary endpoint's verdict cell: margin verdict and Holm p; "significant" only across seeds."""
    if entry is None or not entry.get("primary"):
        return "–"
    text = verdict_text(entry) + f"; Holm p={p_text(entry['p_holm'])}" if entry["p_holm"] is not None else \
        verdict_text(entry)
    if entry.get("scope") == SCOPE_SEEDS and entry["p_holm"] is not None:
        text += "; significant" if entry["p_holm"] < SIGNIFICANCE_LEVEL else "; not significant"
    elif entry.get("scope") != SCOPE_SEEDS:
        text += "; over cases only (one run)"
    return text


def scope_text(entry: Optional[Mapping]) -> str:
    """What an entry's interval covers, short: ``3 seeds x 12 cases`` or ``1 run, 12 cases``."""
    if entry is None:
        return "n/a"
    if entry.get("scope") == SCOPE_SEEDS:
        return f"{max(entry['n_seeds'].values())} seeds x {entry['n']} cases"
    return f"1 run, {entry['n']} cases"


def scope_notes(entries: Sequence[Optional[Mapping]]) -> List[str]:
    """Paragraphs saying what the intervals and p values cover, for the scopes present among ``entries``."""
    scopes = {e.get("scope") for e in entries if e is not None}
    notes = []
    if scopes - {SCOPE_SEEDS}:
        notes.append(f"**One training run per model: the interval and p cover test-case sampling only.** They treat "
                     f"the two trained models as fixed and say which test cases could have been drawn; a single "
                     f"training run cannot separate the model from retraining noise (nnU-Net's run-to-run spread is "
                     f"1-3 Dice points), so no difference here is called significant. Train several seeds "
                     f"(`{SEEDS_COMMAND}`, or `nnunet-poolskip compare` with each seed's summary under the same "
                     f"--names), S >= {RECOMMENDED_SEEDS} before a claim. Interval: BCa bootstrap over cases; p: "
                     f"exact sign-flip permutation test of the mean (sampled with {PERMUTATIONS} sign vectors beyond "
                     f"16 differing cases).")
    if SCOPE_SEEDS in scopes:
        notes.append("**Across seeds and cases: the interval and p cover retraining and test-case sampling** "
                     "(crossed random-effects model on the per-seed, per-case differences, seed s of each model "
                     "paired; Satterthwaite t interval and t test; calibration: benchmarks/RESULTS.md). "
                     f"Significant means Holm-adjusted p < {SIGNIFICANCE_LEVEL:g} on the primary endpoint."
                     + ("" if min(max(e["n_seeds"].values()) for e in entries if e is not None
                                  and e.get("scope") == SCOPE_SEEDS) >= RECOMMENDED_SEEDS
                        else f" Fewer than {RECOMMENDED_SEEDS} seeds: the interval is wide by design; "
                             f"S >= {RECOMMENDED_SEEDS} is recommended before a claim."))
    return notes


def seed_lines(statistics: Optional[Mapping], models: Sequence[str], metric: str = "dice") -> List[str]:
    """Per model with several seeds: each seed's own foreground difference with its case interval, and "better in k
    of S seeds"."""
    lines = []
    for model in models:
        per_seed = seed_entries(statistics, model, metric, FOREGROUND) if statistics else []
        if not per_seed:
            continue
        better = sum(e["mean_difference"] is not None and e["mean_difference"] > 0 for e in per_seed)
        cells = "; ".join(f"{seed_name(e)}: {difference_cell(e)}" for e in per_seed)
        lines.append(f"- {model}, foreground {METRIC_NAMES[metric]} per seed (each seed's own pair, interval over "
                     f"cases only): {cells}. Better in {better} of {len(per_seed)} seeds.")
    return lines


def seed_name(entry: Mapping) -> str:
    """How a per-seed entry is named: ``seed 7`` (the recorded training seed), else ``seed #2`` (its position)."""
    number = entry.get("seed_number")
    return f"seed {number}" if number is not None else f"seed #{entry['seed'] + 1}"


def paired_table_markdown(rows: Sequence[Mapping], baseline: str, statistics: Optional[Mapping] = None,
                          summary: Optional[Mapping] = None) -> str:
    """The paired foreground statistics of every model against the first, in percentage points, with what their
    intervals cover, the primary endpoint's margin verdict and (with ``statistics``) each seed's own difference.

    Args:
        rows: :func:`model_rows` (the first is the baseline).
        baseline: its name.
        statistics: statistics.json's content, for the per-seed lines.
        summary: a summary.json, for the NSD tolerance in the header.
    """
    body, entries = [], []
    for row in rows[1:]:
        cells = [row[f"paired_{metric}"] for metric, _ in METRIC_COLUMNS]
        entries += cells
        body.append([_difference_name(row["model"], baseline), scope_text(cells[0])]
                    + [difference_cell(e) for e in cells] + [primary_cell(cells[0])])
    names = metric_names(summary)
    header = ["Comparison", "over"] + [f"Δ {names[metric]}" for metric, _ in METRIC_COLUMNS] + \
        ["primary endpoint (foreground Dice)"]
    text = (f"Paired differences against {baseline} (percentage points): the mean of the per-case difference of the "
            f"foreground mean (over the organs present in the case's reference, the same for both models), "
            f"[95% interval], p of the test that matches it. This can differ from the delta above, which compares "
            f"means of per-label means. Per organ: per_organ.md; details: statistics.json.\n\n"
            + _markdown(header, body))
    text += "\n\n" + "\n\n".join(scope_notes(entries))
    seeds = seed_lines(statistics, [row["model"] for row in rows[1:]])
    note = _small_n_note(entries)
    return text + ("\n\n" + "\n".join(seeds) if seeds else "") + ("\n\n" + "\n".join(note) if note else "")


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
    columns = [c.replace("NSD", nsd_name(summaries[0])) for _, c in METRIC_COLUMNS]
    header = ["Model"] + [f"{title} {c} ↑" if title else f"{c} ↑" for c in columns]
    tolerance = _tolerance_text(summaries[0])
    text = _caveat_block(caveat) + (f"### {title}\n\n" if title else "") + _markdown(header, body)
    text += f"\n\n{foreground_text(summaries, names)}; NSD tolerance {tolerance} ({TOLERANCE_SOURCE}); deltas in " \
            f"percentage points against {names[0]}."
    if statistics is not None and len(rows) > 1:
        text += "\n\n" + paired_table_markdown(rows, names[0], statistics, summaries[0])
    return text + _notes_block(summaries, names, extra_notes) + "\n"


TOLERANCE_SOURCE = ("the paper gives none: evaluate's --nsd-tolerances, default 1 mm for every organ as FLARE21 and "
                    "AbdomenCT-1K")


def _tolerance_text(summary: Mapping) -> str:
    values = sorted(set(float(v) for v in summary["nsd_tolerance_mm"].values()))
    return f"{values[0]:g} mm" if len(values) == 1 else "per label (" + ", ".join(
        f"{summary['labels'][k]} {float(v):g}" for k, v in summary["nsd_tolerance_mm"].items()) + " mm)"


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv_statistics(entry: Optional[Mapping], holm: bool = False) -> List[str]:
    """n, mean difference, interval (percentage points), p (and Holm p) of a statistics entry as CSV cells."""
    if entry is None:
        return [""] * (8 if holm else 7)
    interval = entry["ci95"] or [None, None]
    cells = [str(entry["n"]), _csv_number(_percent(entry["mean_difference"])),
             _csv_number(_percent(interval[0])), _csv_number(_percent(interval[1])),
             "" if entry.get("p") is None else f"{entry['p']:.6g}",
             "" if entry["p_wilcoxon"] is None else f"{entry['p_wilcoxon']:.6g}", entry.get("scope", "")]
    if holm:
        cells.append("" if entry["p_holm"] is None else f"{entry['p_holm']:.6g}")
    return cells


def _csv_statistics_header(metric: str, holm: bool = False) -> List[str]:
    names = ["n_paired", "paired_delta", "ci95_low", "ci95_high", "p", "p_wilcoxon", "scope"] + \
        (["p_holm"] if holm else [])
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
        text += (" Differences: mean of the per-case difference, where a case whose reference lacks the organ "
                 "scores 1 for a model that predicts nothing there and 0 for one that predicts it (a false positive "
                 "counts against it), [95% interval], p of the matching test (one run: BCa interval and exact "
                 "sign-flip test over cases; several seeds: across seeds and cases), and in brackets the p after "
                 "Holm's correction over the labels of that metric and model. statistics.json gives per organ the "
                 "cases empty in the reference and each model's false positives.")
        text += "\n\n" + "\n\n".join(scope_notes([e for e in entries if e is not None]))
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


OUTPUT_FILES = {"table": "table3.md", "table_csv": "table3.csv", "per_organ": "per_organ.md",
                "per_organ_csv": "per_organ.csv", "plot": "per_organ_dice.png", "statistics": "statistics.json",
                "differences_plot": "differences.png"}
ONE_MODEL_OUTPUTS = ("statistics", "differences_plot")
"""Written only when there is a second summary to compare with the first."""


def compare_summaries(paths: Sequence[os.PathLike | str], names: Optional[Sequence[str]],
                      output_folder: os.PathLike | str, title: Optional[str] = None,
                      caveat: Optional[str] = None, margin: float = DEFAULT_MARGIN,
                      primary: Optional[Sequence[str]] = None, match_labels_by_value: bool = False) -> Dict[str, Path]:
    """Write Table 3 (Markdown, CSV), the per-organ tables (Markdown, CSV), statistics.json and the two figures into
    ``output_folder``.

    Args:
        paths: summary.json files; the first model is the reference of the deltas and the baseline of the
            statistics.
        names: model names (same number as paths); summaries that share a name are the seeds of one model (its
            table row shows each case's values averaged over its seeds; the statistics use every seed). Default:
            each summary's parent folder name.
        output_folder: created if needed.
        title: optional data set name shown above the table (e.g. BTCV).
        caveat: optional text shown at the top of the Markdown tables and in every figure's title (e.g. that this
            is a smoke-scale run on synthetic data).
        margin: practical margin of the primary endpoint's verdict, a fraction (0.01 = 1 Dice point).
        primary: models whose foreground Dice against the first is the primary endpoint (default: all others).
        match_labels_by_value: compare summaries whose label names differ for the same value (the user says they
            are the same structures); the tables use the first summary's names and a note lists the others.
    Returns:
        Output kind -> path (keys of ``OUTPUT_FILES``; statistics.json and differences.png only with two or more
        models).
    Raises:
        CompareInputError: unreadable summaries, a names/paths count mismatch, models with different numbers of
            seeds, an unknown primary model, different label sets, label names or NSD tolerances.
    """
    from nnunet_poolskip.evaluation.summaries import average_summaries

    paths = [str(p) for p in paths]
    if not paths:
        raise CompareInputError("give at least one summary.json")
    if names is None:
        names = [Path(p).resolve().parent.name for p in paths]
        if len(set(names)) != len(names):  # repeated names mean seeds of one model: only when the user says so
            raise CompareInputError(f"the summaries' folder names repeat ({names}): give --names (summaries that "
                                    f"share a name are the seeds of one model)")
    names = list(names)
    if len(names) != len(paths):
        raise CompareInputError(f"{len(paths)} summaries but {len(names)} names (--names)")
    if not 0 <= margin < 1:
        raise CompareInputError(f"--margin {100 * margin:g} points: give a margin between 0 and 100 points")
    every = [load_summary(p) for p in paths]
    extra_notes = check_comparable(every, paths, match_labels_by_value)
    seeds_of = group_by_name(paths, names)
    models = list(seeds_of)
    counts = {m: len(seeds_of[m]) for m in models}
    if len(set(counts.values())) > 1:
        raise CompareInputError(f"models with different numbers of seeds (summaries per name): {counts}; the "
                                f"across-seeds comparison pairs seed s of every model with seed s of {models[0]}")
    summaries = [every[paths.index(seeds_of[m][0])] if counts[m] == 1 else
                 average_summaries(seeds_of[m], [f"seed {i}" for i in range(counts[m])]) for m in models]
    try:
        statistics = comparison_statistics(every, names, margin, primary) if len(models) > 1 else None
    except ValueError as error:
        raise CompareInputError(str(error)) from None
    names = models
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {kind: folder / name for kind, name in OUTPUT_FILES.items()
               if statistics is not None or kind not in ONE_MODEL_OUTPUTS}
    write_text_atomic(table3_markdown(summaries, names, title, extra_notes, statistics, caveat), outputs["table"])
    write_text_atomic(table3_csv(summaries, names, statistics), outputs["table_csv"])
    runs_by_model = {m: [every[paths.index(p)] for p in seeds_of[m]] for m in models}
    write_text_atomic(per_organ_markdown(summaries, names, statistics, caveat) + "\n"
                      + organ_distribution_markdown(runs_by_model), outputs["per_organ"])
    write_text_atomic(per_organ_csv(summaries, names, statistics), outputs["per_organ_csv"])
    plot_per_organ_dice(summaries, names, outputs["plot"], caveat)
    if statistics is None:  # a single model: what an earlier compare into this folder left would contradict it
        for kind in ONE_MODEL_OUTPUTS:
            (folder / OUTPUT_FILES[kind]).unlink(missing_ok=True)
    else:
        write_json_atomic(statistics, outputs["statistics"])
        plot_differences(statistics, summaries[0]["labels"], outputs["differences_plot"], caveat,
                         metric_names(summaries[0]))
    return outputs
