"""Comparison tables and plots from several summary.json files (``nnunet-poolskip compare``).

The main table has the paper's Table 3 layout: one row per model, DICE (%), NSD (%) and mIoU (%) of the
foreground means, and for every model after the first its difference to the first (``81.52 +0.95``).
A per-organ table and a PNG of per-case Dice per organ and model come with it.

A summary counts as incomplete when it says ``"complete": false`` or lists ``missing_predictions``; its row is
marked with a dagger and every summary's ``notes`` are printed under the table (see ``evaluation.py``).
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

from nnunet_poolskip.utilities.atomic import atomic_path, write_text_atomic

METRIC_COLUMNS = (("dice", "DICE (%)"), ("nsd", "NSD (%)"), ("iou", "mIoU (%)"))
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


def check_comparable(summaries: Sequence[Mapping], paths: Sequence[str]) -> List[str]:
    """Raise if the summaries score different labels or use different NSD tolerances; return notes on lesser
    differences (different case sets)."""
    first_labels, first_tol = set(summaries[0]["labels"]), summaries[0]["nsd_tolerance_mm"]
    for summary, path in zip(summaries[1:], paths[1:]):
        if set(summary["labels"]) != first_labels:
            raise CompareInputError(f"{path} scores labels {sorted(summary['labels'], key=int)}, but {paths[0]} "
                                    f"scores {sorted(first_labels, key=int)}")
        differing = [k for k in first_tol if not math.isclose(summary["nsd_tolerance_mm"][k], first_tol[k])]
        if differing:
            raise CompareInputError(f"{path} and {paths[0]} use different NSD tolerances for labels {differing} "
                                    f"({[summary['nsd_tolerance_mm'][k] for k in differing]} vs "
                                    f"{[first_tol[k] for k in differing]} mm): their NSD is not comparable")
    notes = []
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


def model_rows(summaries: Sequence[Mapping], names: Sequence[str]) -> List[Dict]:
    """One row per model: foreground means in percent and differences to the first model (percentage points)."""
    rows = []
    first = summaries[0]["foreground_mean"]
    for index, (summary, name) in enumerate(zip(summaries, names)):
        row = {"model": name, "incomplete": is_incomplete(summary), "n_cases": len(summary["per_case"])}
        for metric, _ in METRIC_COLUMNS:
            value, reference = _percent(summary["foreground_mean"].get(metric)), _percent(first.get(metric))
            row[metric] = value
            row[f"delta_{metric}"] = (None if index == 0 or value is None or reference is None
                                      else value - reference)
        rows.append(row)
    return rows


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _notes_block(summaries: Sequence[Mapping], names: Sequence[str], extra_notes: Sequence[str]) -> str:
    lines = []
    for summary, name in zip(summaries, names):
        if is_incomplete(summary):
            missing = summary.get("missing_predictions") or []
            lines.append(f"- {INCOMPLETE_MARK} {name}: incomplete"
                         + (f" ({len(missing)} cases without prediction: {', '.join(missing[:10])})" if missing else ""))
        for note in summary.get("notes") or []:
            lines.append(f"- {name}: {note}")
    lines += [f"- {note}" for note in extra_notes]
    return ("\n\nNotes:\n" + "\n".join(lines)) if lines else ""


def table3_markdown(summaries: Sequence[Mapping], names: Sequence[str], title: Optional[str] = None,
                    extra_notes: Sequence[str] = ()) -> str:
    """The paper's Table 3 layout in Markdown (values in percent, deltas against the first model)."""
    rows = model_rows(summaries, names)
    body = []
    for index, row in enumerate(rows):
        label = row["model"] + (f" {INCOMPLETE_MARK}" if row["incomplete"] else "")
        body.append([label] + [_format(row[m], rows[0][m], with_delta=index > 0) for m, _ in METRIC_COLUMNS])
    header = ["Model"] + [f"{title} {c} ↑" if title else f"{c} ↑" for _, c in METRIC_COLUMNS]
    tolerance = _tolerance_text(summaries[0])
    text = (f"### {title}\n\n" if title else "") + _markdown(header, body)
    text += f"\n\nForeground means over {len(summaries[0]['labels'])} labels; NSD tolerance {tolerance}; deltas in " \
            f"percentage points against {names[0]}."
    return text + _notes_block(summaries, names, extra_notes) + "\n"


def _tolerance_text(summary: Mapping) -> str:
    values = sorted(set(float(v) for v in summary["nsd_tolerance_mm"].values()))
    return f"{values[0]:g} mm" if len(values) == 1 else "per label (" + ", ".join(
        f"{summary['labels'][k]} {float(v):g}" for k, v in summary["nsd_tolerance_mm"].items()) + " mm)"


def table3_csv(summaries: Sequence[Mapping], names: Sequence[str]) -> str:
    """Table 3 as CSV: model, dice, nsd, miou (percent), their deltas to the first model, n_cases, incomplete."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "dice_percent", "nsd_percent", "miou_percent", "delta_dice", "delta_nsd",
                     "delta_miou", "n_cases", "incomplete"])
    for row in model_rows(summaries, names):
        writer.writerow([row["model"], *[_csv_number(row[m]) for m, _ in METRIC_COLUMNS],
                         *[_csv_number(row[f"delta_{m}"]) for m, _ in METRIC_COLUMNS], row["n_cases"],
                         str(row["incomplete"]).lower()])
    return out.getvalue()


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def per_organ_markdown(summaries: Sequence[Mapping], names: Sequence[str]) -> str:
    """Per-label means in percent, one table per metric, models as columns (deltas against the first)."""
    labels = summaries[0]["labels"]
    sections = []
    for metric, column in METRIC_COLUMNS:
        body = []
        for key, organ in labels.items():
            first = _percent(summaries[0]["mean"][metric].get(key))
            body.append([f"{key} {organ}"] + [_format(_percent(s["mean"][metric].get(key)), first, with_delta=i > 0)
                                              for i, s in enumerate(summaries)])
        name = column.replace("mIoU", "IoU")
        sections.append(f"### {name} per organ\n\n" + _markdown(["Label"] + list(names), body))
    return "\n\n".join(sections) + "\n"


def per_organ_csv(summaries: Sequence[Mapping], names: Sequence[str]) -> str:
    """Long CSV: label, organ, model, dice, nsd, iou (percent means), n_scored (cases not empty in both)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "organ", "model", "dice_percent", "nsd_percent", "iou_percent", "n_scored"])
    for key, organ in summaries[0]["labels"].items():
        for summary, name in zip(summaries, names):
            scored = sum(case["dice"].get(key) is not None for case in summary["per_case"])
            writer.writerow([key, organ, name, *[_csv_number(_percent(summary["mean"][m].get(key)))
                                                 for m, _ in METRIC_COLUMNS], scored])
    return out.getvalue()


def plot_per_organ_dice(summaries: Sequence[Mapping], names: Sequence[str], path: os.PathLike | str) -> None:
    """PNG of per-case Dice (%) per organ, one box per model (cases empty in both left out), saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = summaries[0]["labels"]
    n_models = len(summaries)
    width = 0.8 / n_models
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) * max(1, n_models / 2) + 2), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (summary, name) in enumerate(zip(summaries, names)):
        data = [[100 * case["dice"][key] for case in summary["per_case"] if case["dice"].get(key) is not None]
                for key in labels]
        positions = np.arange(len(labels)) + (index - (n_models - 1) / 2) * width
        colour = colours[index % len(colours)]
        boxes = axes.boxplot([d if d else [np.nan] for d in data], positions=positions, widths=width * 0.9,
                             patch_artist=True, showfliers=True, manage_ticks=False)
        for box in boxes["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        axes.plot([], [], color=colour, linewidth=8, alpha=0.6, label=name)
    axes.set_xticks(np.arange(len(labels)))
    axes.set_xticklabels([organ for organ in labels.values()], rotation=45, ha="right")
    axes.set_ylabel("Dice (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    axes.set_title("Per-case Dice per organ")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)


OUTPUT_FILES = {"table": "table3.md", "table_csv": "table3.csv", "per_organ": "per_organ.md",
                "per_organ_csv": "per_organ.csv", "plot": "per_organ_dice.png"}


def compare_summaries(paths: Sequence[os.PathLike | str], names: Optional[Sequence[str]], output_folder: os.PathLike | str,
                      title: Optional[str] = None) -> Dict[str, Path]:
    """Write Table 3 (Markdown, CSV), the per-organ tables (Markdown, CSV) and the Dice plot into ``output_folder``.

    Args:
        paths: summary.json files; the first is the reference of the deltas.
        names: model names (same number as paths); default: each summary's parent folder name.
        output_folder: created if needed.
        title: optional data set name shown above the table (e.g. BTCV).
    Returns:
        Output kind -> path (keys of ``OUTPUT_FILES``).
    Raises:
        CompareInputError: unreadable summaries, a names/paths count mismatch, duplicate names, different
            label sets or NSD tolerances.
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
    extra_notes = check_comparable(summaries, paths)
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {kind: folder / name for kind, name in OUTPUT_FILES.items()}
    write_text_atomic(table3_markdown(summaries, names, title, extra_notes), outputs["table"])
    write_text_atomic(table3_csv(summaries, names), outputs["table_csv"])
    write_text_atomic(per_organ_markdown(summaries, names), outputs["per_organ"])
    write_text_atomic(per_organ_csv(summaries, names), outputs["per_organ_csv"])
    plot_per_organ_dice(summaries, names, outputs["plot"])
    return outputs
