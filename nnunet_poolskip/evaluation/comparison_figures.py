"""The figures of ``nnunet-poolskip compare``: per-case Dice per organ (box plots) and the forest plot of the paired
differences (statistics.json's numbers, nothing recomputed)."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from nnunet_poolskip.evaluation.comparison_names import METRIC_COLUMNS, METRIC_NAMES, SMALL_N_MARK, difference_name
from nnunet_poolskip.evaluation.statistics import (
    FOREGROUND,
    SCOPE_SEEDS,
    SIGNIFICANCE_LEVEL,
    can_reach_significance,
    find,
)
from nnunet_poolskip.utilities.figures import READER_WIDTH_INCHES, new_figure, save_figure, set_title

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


def _row_label(comparisons, row: str, name: str) -> tuple:
    """The y tick text of a row (organ name, n, the small-n mark) and whether the mark was used."""
    entries = [e for e in comparisons if e["label"] == row and e["n"] > 0 and e.get("seed") is None]
    ns = sorted({e["n"] for e in entries if e["metric"] == "dice"})
    text = name + (f" (n={'/'.join(map(str, ns))})" if entries else " (no paired cases)")
    small = any(not can_reach_significance(e) for e in entries)
    return text + (f" {SMALL_N_MARK}" if small else ""), small


def plot_differences(statistics: Mapping, labels: Mapping[str, str], path: os.PathLike | str,
                     caveat: Optional[str] = None, metric_titles: Optional[Mapping[str, str]] = None) -> None:
    """Forest plot of the paired differences (statistics.json's headline entries): one column per metric; on top
    the per-case foreground mean in a panel of its own scale (a small foreground difference stays readable next to
    large organ differences), below it one row per organ; each model after the first as a point (mean difference,
    percentage points) with its 95% interval; a line at zero. Filled points only for the across-seeds test with a
    Holm-adjusted p < 0.05 (one run per model: every point open, its interval covers test cases only). Organs
    without paired cases have no point; their row says so. ``metric_titles``: the metrics' names in the panel titles
    (default :data:`METRIC_NAMES`; compare passes NSD with its tolerance, ``NSD@1 mm``)."""
    names_of_metric = {**METRIC_NAMES, **(metric_titles or {})}
    comparisons = statistics["comparisons"]
    models = list(dict.fromkeys(e["model"] for e in comparisons))
    baseline = comparisons[0]["baseline"] if comparisons else ""
    n_models = max(1, len(models))
    row_height = 0.22 * n_models + 0.12
    organs = list(labels)
    figure = new_figure(READER_WIDTH_INCHES, row_height * (len(organs) + 1) + 2.6 + (0.4 if caveat else 0))
    grid = figure.subplots(2, len(METRIC_COLUMNS), squeeze=False,
                           gridspec_kw={"height_ratios": [1.6, max(1, len(organs))]})
    colours = [f"C{i}" for i in range(10)]
    offsets = (np.arange(n_models) - (n_models - 1) / 2) * (0.7 / n_models)
    across = any(e.get("scope") == SCOPE_SEEDS for e in comparisons)
    margin = statistics.get("margin")
    small = False
    for part, rows in ((0, [FOREGROUND]), (1, organs)):
        names = {FOREGROUND: "foreground, per-case mean", **labels}
        ticks = []
        for row in rows:
            text, marked = _row_label(comparisons, row, names[row])
            ticks.append(text)
            small = small or marked
        for column, (metric, _) in enumerate(METRIC_COLUMNS):
            axes = grid[part, column]
            axes.axvline(0, color="0.3", linewidth=1)
            if part == 0 and margin is not None:  # the practical margin of the verdicts
                axes.axvspan(-100 * margin, 100 * margin, color="0.88", zorder=0)
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
                    # filled only for the across-seeds test: one run's case interval says nothing about retraining
                    significant = entry.get("scope") == SCOPE_SEEDS and entry["p_holm"] is not None and \
                        entry["p_holm"] < SIGNIFICANCE_LEVEL
                    axes.plot([mean], [position], marker="o", markersize=6, color=colour,
                              markerfacecolor=colour if significant else "white", markeredgewidth=1.5)
            axes.grid(axis="x", alpha=0.3)
            axes.set_ylim(len(rows) - 0.5, -0.5)
            axes.set_yticks(range(len(rows)))
            axes.set_yticklabels(ticks if column == 0 else [])
            if part == 0:
                axes.set_title(f"{names_of_metric[metric]}: foreground (own scale)", fontsize=10)
            else:
                axes.set_title(f"{names_of_metric[metric]}: per organ", fontsize=10)
                axes.set_xlabel("difference (percentage points)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m % len(colours)], marker="o", linewidth=1.6,
                      label=difference_name(model, baseline)) for m, model in enumerate(models)]
    if across:
        handles += [Line2D([], [], color="0.3", marker="o", linestyle="none",
                           label=f"across seeds: Holm p < {SIGNIFICANCE_LEVEL:g} (significant)"),
                    Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                           label=f"across seeds: p ≥ {SIGNIFICANCE_LEVEL:g}")]
    else:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="one run per model: interval over test cases only, never called significant"))
    if margin is not None:
        from matplotlib.patches import Patch

        handles.append(Patch(color="0.88", label=f"foreground: practical margin ±{100 * margin:g} points"))
    if small:
        handles.append(Line2D([], [], linestyle="none", label=f"{SMALL_N_MARK} at most 5 cases differ: the test "
                              f"cannot reach p < {SIGNIFICANCE_LEVEL:g}; the interval is unreliable"))
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    scope = ("mean over seeds and cases, 95% interval covering retraining and case sampling" if across else
             "ONE RUN PER MODEL: mean over cases, 95% BCa interval over test cases only")
    set_title(figure, f"Paired differences against {baseline}: {scope}", caveat)
    save_figure(figure, path)
