"""The benchmark's table.md / table.csv: ``compare``'s numbers with the run's protocol and status on top.

``compare`` gives every model's delta against the first summary. The paper's Table 3 instead shows each
Pool Skip model against its own baseline (V-Net, +ours; nnU-Net, +ours), so the benchmark runs ``compare``
once per (baseline, Pool Skip model) pair and once for all models, and assembles the paper's layout from
the pairs' CSV rows (the numbers are compare's, never recomputed here). Above the table: whether this is a
smoke-scale or synthetic run, every deviation from the paper's protocol, and whether the run is complete.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_poolskip.benchmark.protocol import PAPER_FOLDS, Model
from nnunet_poolskip.utilities.atomic import atomic_path, write_text_atomic

PAPER_EPOCHS, PAPER_ITERATIONS = 1000, 250
METRICS = (("dice", "DICE (%)"), ("nsd", "NSD (%)"), ("miou", "mIoU (%)"))
COPIED_FROM_ALL = ("per_organ.md", "per_organ.csv", "per_organ_dice.png")
TABLE_FILES = ("table.md", "table.csv") + COPIED_FROM_ALL
"""Everything compose_tables writes into the results folder."""


def baseline_pairs(models: Sequence[Model]) -> List[Tuple[Model, Model]]:
    """(baseline, model) for every model whose baseline (``Model.base``) is also in the run, in table order."""
    by_name = {m.name: m for m in models}
    return [(by_name[m.base], m) for m in models if m.base in by_name]


def comparison_groups(models: Sequence[Model]) -> Dict[str, List[Model]]:
    """``compare`` runs to make: ``all`` (every model, deltas against the first) and ``pair_<model>``
    (baseline, model) for every model whose baseline is also in the run. A pair equal to ``all`` is left out."""
    groups: Dict[str, List[Model]] = {"all": list(models)}
    for base, model in baseline_pairs(models):
        if [base.name, model.name] != [m.name for m in models]:
            groups[f"pair_{model.name}"] = [base, model]
    return groups


def figure_caveat(config) -> Optional[str]:
    """The line every figure of a smoke-scale or synthetic-data run carries atop its title (None otherwise)."""
    s = config.settings
    if not (s.smoke or config.synthetic):
        return None
    data = "synthetic phantoms" if config.synthetic else "real data"
    schedule = f", {s.epochs or PAPER_EPOCHS} epochs x {s.iterations or PAPER_ITERATIONS} iterations" \
        if s.short_schedule else ""
    return f"SMOKE-SCALE RUN on {data}{schedule}: not evidence about Pool Skip"


def _read_csv(path: Path) -> Dict[str, Dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def _read_markdown_cells(path: Path) -> Dict[str, List[str]]:
    """Model -> its metric cells, exactly as compare printed them in table3.md (``81.52`` or ``82.47 +0.95``).

    The table is built from these strings rather than from the rounded CSV, so that it shows the very
    numbers compare shows (formatting the CSV's 4-decimal values again could round a delta differently)."""
    cells = {}
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(parts) == 1 + len(METRICS) and not parts[0] == "Model":
            cells[parts[0].replace(" †", "")] = parts[1:]
    return cells


def _number(text: str):
    return None if text in ("", None) else float(text)


def table_rows(models: Sequence[Model], outputs: Mapping[str, Tuple[List[Model], Path]]) -> List[Dict]:
    """Rows of the paper's layout: each pair as (baseline, model with its delta), then the models in no pair.

    Values are percent, read from compare's table3.csv files; deltas are percentage points against the row's
    ``baseline`` (None for a baseline row); ``cells`` are the strings compare printed for them.
    """
    pairs = {name[len("pair_"):]: spec for name, spec in outputs.items() if name.startswith("pair_")}
    by_name = {m.name: m for m in models}
    if len(models) == 2 and models[1].base == models[0].name:  # the only pair is "all" itself
        pairs[models[1].name] = outputs["all"]
    rows, placed = [], set()

    def row(model: Model, folder: Path, baseline: Model = None) -> Dict:
        source = _read_csv(folder / "table3.csv")[model.display]
        printed = _read_markdown_cells(folder / "table3.md")[model.display]
        out = {"model": model.display, "name": model.name, "baseline": baseline.display if baseline else "",
               "n_cases": int(source["n_cases"]), "incomplete": source["incomplete"] == "true",
               "foreground_labels": int(source["foreground_labels"]), "labels": int(source["labels"]),
               # a row without a baseline shows its value only (compare's "all" table adds deltas to the first)
               "cells": printed if baseline else [cell.split(" ")[0] for cell in printed]}
        for key, _ in METRICS:
            out[key] = _number(source[f"{key}_percent"])
            out[f"delta_{key}"] = _number(source[f"delta_{key}"]) if baseline else None
        return out

    for model in models:
        if model.name in pairs:
            base = by_name[model.base]
            folder = pairs[model.name][1]
            if base.name not in placed:
                rows.append(row(base, folder))
                placed.add(base.name)
            rows.append(row(model, folder, base))
            placed.add(model.name)
    for model in models:
        if model.name not in placed and not any(p.base == model.name for p in models if p.name in pairs):
            rows.append(row(model, outputs["all"][1]))
    return rows


def foreground_sentence(rows: Sequence[Mapping], cases: str = "test case") -> str:
    """"Foreground means over N organs", counting what each row's mean averages (compare's ``foreground_labels``:
    an organ without a value in any test case has no mean and is not in the foreground mean)."""
    total = rows[0]["labels"] if rows else 0
    fewer = [f"{r['model']} {r['foreground_labels']}" for r in rows if r["foreground_labels"] != r["labels"]]
    if not fewer:
        return f"Foreground means over all {total} organs"
    return (f"Foreground means over the organs with a value in some {cases}, of {total}: " + ", ".join(fewer)
            + (f", the others {total}" if len(fewer) < len(rows) else ""))


def phantom_anatomy_text(anatomy: str) -> str:
    """How the table names a phantom anatomy (``synth --anatomy``)."""
    return ("learnable anatomy: the small organs grown about BTCV-like positions for short CPU runs, not BTCV's sizes"
            if anatomy == "learnable" else f"{anatomy} anatomy")


def precision_text(record: Mapping, settings) -> str:
    """The CPU precision a run used (run.json's ``cpu_autocast``, else the settings resolved here)."""
    mode = record.get("cpu_autocast", {}).get("mode") or settings.cpu_autocast_mode()[0]
    return ("bfloat16 autocast in training and prediction" if mode == "bf16"
            else "float32 (no CPU autocast)") + f" (--cpu-autocast {settings.cpu_autocast})"


def protocol_lines(config, record: Mapping, incomplete: Mapping[str, List[str]], protocol: str = "test",
                   n_cases: int = 0) -> List[str]:
    """The banner: smoke/synthetic warning, deviations from the paper's protocol, run status, set-up.
    ``protocol`` ``cv``: the cross-validation's wording (cv_report.py), ``n_cases`` the cases it scored."""
    from nnunet_poolskip.benchmark import cv_report

    s = config.settings
    lines: List[str] = []
    if s.smoke or config.synthetic:
        what = "SYNTHETIC PHANTOMS" if config.synthetic else "real data"
        lines.append(f"> **SMOKE-SCALE RUN ON {what}: NOT A REPRODUCTION of the paper's Table 3.** It shows the "
                     f"whole protocol running end to end (conversion, nnU-Net planning and preprocessing, training, "
                     f"softmax fold ensemble, Dice/NSD/mIoU, diagnostics) and how far each model learns in this "
                     f"short training (training_curves.png, the per-organ Dice, overlays.png); it shows nothing "
                     f"about Pool Skip on real data, and its differences between models are not evidence.")
        lines.append("")
    deviations = []
    if tuple(sorted(s.folds)) != PAPER_FOLDS:
        deviations.append(f"**{len(s.folds)} fold(s) ({' '.join(map(str, s.folds))}) instead of the paper's 5**; "
                          + ("the test set is predicted by the softmax mean of these folds" if protocol == "test" else
                             "n counts the validation cases of these folds only"))
    if s.configuration != "3d_fullres":
        deviations.append(f"configuration {s.configuration} instead of the paper's 3d_fullres")
    if s.short_schedule:
        deviations.append(f"short schedule: {s.epochs or PAPER_EPOCHS} epochs x {s.iterations or PAPER_ITERATIONS} "
                          f"iterations (nnU-Net default {PAPER_EPOCHS} x {PAPER_ITERATIONS})")
    if s.plans_preset:
        deviations.append(f"plans {config.plans} (preset {s.plans_preset}: smaller networks and patches), not "
                          f"nnU-Net's default plans")
    if not s.test_time_mirroring:
        deviations.append("no test-time mirroring" + ("" if protocol == "test" else " (unmirrored final validation)"))
    if config.synthetic:
        deviations.append(f"{s.synthetic_cases} synthetic {config.target.kind.upper()}-like phantoms (seed "
                          f"{s.synth_seed}, {phantom_anatomy_text(s.phantom_anatomy)}) instead of the real data")
    if incomplete:
        lines.append("**INCOMPLETE RUN.** Left out of the table because their training did not finish: "
                     + "; ".join(f"{m} ({', '.join(v)})" for m, v in incomplete.items()) + ".")
    elif protocol == "cv":
        lines.append(cv_report.status_line(s.folds, n_cases))
    else:
        lines.append(f"Status: complete. Every model was trained on every listed fold and evaluated on all "
                     f"{len(record.get('dataset', {}).get('test_cases', []))} test cases.")
    lines.append("")
    if protocol == "cv":
        lines.append("Protocol: " + (f"profile `{s.profile}`; " if s.profile else "")
                     + cv_report.protocol_sentence(deviations) + ".")
    else:
        lines.append("Protocol: " + (f"profile `{s.profile}`; " if s.profile else "")
                     + ("the paper's protocol" if not deviations else "deviations from the paper: "
                        + "; ".join(deviations)) + ".")
    ds = record.get("dataset", {})
    lines.append(f"Data: {ds.get('name', config.target.label)}, {ds.get('n_train_val', '?')} train+val cases "
                 f"(cross-validation folds {' '.join(map(str, s.folds))}), {len(ds.get('test_cases', []))} held-out "
                 f"test cases. Device {s.device}" + (f", {s.num_gpus} GPUs (DDP)" if s.num_gpus > 1 else "")
                 + (f", {precision_text(record, s)}" if s.device == "cpu" else "") + ".")
    lines.append("Trainers: " + ", ".join(f"{m.display} = `{m.trainer_for(config.target.kind)}`"
                                          for m in config.models) + ". Details: run.json.")
    return lines


def compose_tables(config, record: Mapping, outputs: Mapping[str, Tuple[List[Model], Path]],
                   incomplete: Mapping[str, List[str]], folder: Path, sections: Sequence[str] = (),
                   csv_columns: Optional[Mapping[str, Mapping[str, str]]] = None,
                   protocol: str = "test") -> Dict[str, Path]:
    """Write table.md and table.csv into ``folder`` and copy the per-organ files of the all-models compare.

    Args:
        config: the BenchmarkConfig.
        record: run.json's data (dataset facts).
        outputs: compare group name -> (models, compare output folder), from ``comparison_groups``.
        incomplete: model name -> what is missing, for models left out.
        folder: the results folder.
        sections: Markdown lines added to table.md after the tables (the evidence sections of evidence.py).
        csv_columns: column -> model name -> cell, added to table.csv's rows (the seed spread).
        protocol: ``test`` (the held-out test set) or ``cv`` (the cross-validation: its header cell states the
            folds and n, see cv_report.py).
    Returns:
        kind -> written path.
    """

    from nnunet_poolskip.benchmark import cv_report

    models = outputs["all"][0]
    rows = table_rows(models, outputs)
    title = f"Pool Skip benchmark: {dataset_title(config)}"
    n_cases = max((r["n_cases"] for r in rows), default=0)
    folds = config.settings.folds
    first_cell = "Model" if protocol == "test" else cv_report.model_header(folds, n_cases)
    # the NSD column names its tolerance as compare's table does (``NSD@1 mm``)
    nsd = re.search(r"(NSD@[^|(]+?) \(%\)", (outputs["all"][1] / "table3.md").read_text())
    header = [first_cell] + [label.replace("NSD", nsd.group(1)) if nsd else label for _, label in METRICS]
    body = [[r["model"] + (" †" if r["incomplete"] else "")] + r["cells"] for r in rows]
    table = ["| " + " | ".join(header) + " |", "|---|" + ":---:|" * len(METRICS)]
    table += ["| " + " | ".join(cells) + " |" for cells in body]
    heading = "## Test set, paper's Table 3 layout" if protocol == "test" else cv_report.table_heading(folds, n_cases)
    text = [f"# {title}", "", *protocol_lines(config, record, incomplete, protocol, n_cases), "",
            heading, "", *table, "",
            foreground_sentence(rows, "test case" if protocol == "test" else "case")
            + ", percent; a Pool Skip row's delta (percentage points) is against the "
            "row of its own baseline above it." + (" † = evaluated on incomplete predictions." if any(
                r["incomplete"] for r in rows) else "")]
    all_table = (outputs["all"][1] / "table3.md").read_text()
    if len(models) > 2 or not any(r["baseline"] for r in rows):
        text += ["", "## All models, deltas against the first", "", all_table.strip()]
    else:
        notes = all_table.split("\n\nNotes:\n", 1)
        if len(notes) == 2:
            text += ["", "Notes:", notes[1].strip()]
    if sections:
        text += ["", *sections]
    text += ["", "Per organ: per_organ.md, per_organ.csv, per_organ_dice.png (per-case Dice per organ)."]
    table_md = folder / "table.md"
    write_text_atomic("\n".join(text) + "\n", table_md)

    s = config.settings
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "baseline", "dice_percent", "nsd_percent", "miou_percent", "delta_dice", "delta_nsd",
                     "delta_miou", "n_cases", "incomplete", "folds", "epochs", "iterations", "plans", "profile",
                     "smoke_scale", "synthetic_data", "run_complete", *(csv_columns or {})])
    for r in rows:
        writer.writerow([r["model"], r["baseline"], *[_csv(r[k]) for k, _ in METRICS],
                         *[_csv(r[f"delta_{k}"]) for k, _ in METRICS], r["n_cases"], _bool(r["incomplete"]),
                         " ".join(map(str, s.folds)), s.epochs or PAPER_EPOCHS, s.iterations or PAPER_ITERATIONS,
                         config.plans, s.profile, _bool(s.smoke), _bool(config.synthetic), _bool(not incomplete),
                         *[cells.get(r["name"], "") for cells in (csv_columns or {}).values()]])
    table_csv = folder / "table.csv"
    write_text_atomic(buffer.getvalue(), table_csv)
    written = {"table": table_md, "table_csv": table_csv}
    for name in COPIED_FROM_ALL:
        source = outputs["all"][1] / name
        if source.is_file():
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(source, tmp)
            written[name] = folder / name
    return written


def short_title(config) -> str:
    """The data set's short name (compare's --title): ``BTCV``, ``AMOS``, ``DatasetXXX_Name``, ``BTCV phantoms``."""
    label = config.target.label.upper() if config.target.kind != "custom" else config.target.label
    return f"{label} phantoms" if config.synthetic else label


def dataset_title(config) -> str:
    """The data set's name for table.md's title; synthetic runs say so."""
    label = config.target.label.upper() if config.target.kind != "custom" else config.target.label
    return f"{label} (synthetic phantoms, smoke scale)" if config.synthetic else label


def _csv(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _bool(value) -> str:
    return "true" if value else "false"
