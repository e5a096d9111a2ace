"""What a finished demo took and what its models learned: the figures benchmarks/RESULTS.md records for the demo.

Reads a benchmark's results folder (``run.json`` and ``summaries/<model>.json``; nothing is run) and prints a
Markdown report:

- the wall time of the last invocation (the whole ``nnunet-poolskip benchmark`` command, without the set-up of
  ``scripts/setup.sh``), the time per stage (prepare, train, finish) and per step;
- the test-set foreground-mean Dice of every model (the softmax average of its folds) and each model's Dice
  per organ;
- the issue-13/23 targets: the ensembles of nnU-Net and nnU-Net + Pool Skip at least 0.50, every model at least
  0.30, the demo within 15 minutes.

Run it after the demo on a quiet machine, e.g.::

    time bash scripts/demo.sh            # set up first (a second run skips the installation)
    .venv/bin/python benchmarks/demo_report.py results/btcv_demo
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

TARGET_MINUTES = 15.0
TARGET_BASELINE_DICE = 0.50
TARGET_EVERY_MODEL_DICE = 0.30
STAGES = {"synth": "prepare", "convert": "prepare", "plan_and_preprocess": "prepare", "derive_plans": "prepare",
          "train": "train", "predict": "finish", "evaluate": "finish", "compare": "finish"}


def stage_of(step_id: str) -> str:
    """prepare, train or finish for a step id of run.json (``train/<trainer>/fold_0`` -> train)."""
    return STAGES.get(step_id.split("/")[0], "other")


def last_invocation_steps(record: Dict) -> Dict[str, float]:
    """Step id -> wall seconds of its last attempt, for the steps that ran in the last invocation."""
    invocation = record["invocations"][-1]
    out = {}
    for step_id, step in record["steps"].items():
        attempts = [a for a in step["attempts"] if a.get("started") and a["started"] >= invocation["started"]]
        if attempts and attempts[-1].get("wall_s") is not None:
            out[step_id] = attempts[-1]["wall_s"]
    return out


def report(results: Path) -> str:
    record = json.loads((results / "run.json").read_text())
    invocation = record["invocations"][-1]
    steps = last_invocation_steps(record)
    total: Optional[float] = invocation.get("wall_s")
    lines = [f"# Demo report: {results}", "",
             f"machine: {record.get('machine', {}).get('platform')}, {record.get('machine', {}).get('cpu_count')} "
             f"CPUs; status {invocation.get('status')}; settings: "
             + ", ".join(f"{k}={record['settings'].get(k)}" for k in
                         ("plans_preset", "epochs", "iterations", "val_iterations", "folds", "synthetic_cases",
                          "synth_size", "parallel_trainings") if k in record.get("settings", {})), ""]
    by_stage: Dict[str, float] = {}
    for step_id, wall in steps.items():
        by_stage[stage_of(step_id)] = by_stage.get(stage_of(step_id), 0.0) + wall
    lines += ["| stage | wall (s) |", "|---|---|"]
    lines += [f"| {stage} | {wall:.0f} |" for stage, wall in by_stage.items()]
    lines += [f"| **whole benchmark command** | **{total:.0f}** ({total / 60:.1f} min) |" if total is not None
              else "| whole benchmark command | not finished |", ""]
    lines += ["| step | wall (s) |", "|---|---|"] + [f"| {s} | {w:.1f} |" for s, w in steps.items()] + [""]

    dice: Dict[str, float] = {}
    organ_rows: List[str] = []
    labels: Dict[str, str] = {}
    for model in record.get("models", {}):
        summary_file = results / "summaries" / f"{model}.json"
        if not summary_file.is_file():
            continue
        summary = json.loads(summary_file.read_text())
        labels = summary["labels"]
        dice[model] = summary["foreground_mean"]["dice"]
        organ_rows.append(f"| {model} | " + " | ".join(
            "-" if v is None else f"{v:.2f}" for v in summary["mean"]["dice"].values()) + " |")
    lines += ["| model | test Dice, foreground mean (softmax ensemble of the folds) |", "|---|---|"]
    lines += [f"| {m} | {d:.3f} |" for m, d in dice.items()] + [""]
    if labels:
        lines += ["| model | " + " | ".join(labels.values()) + " |", "|---|" + "---|" * len(labels)] + organ_rows + [""]

    checks = []
    if total is not None:
        checks.append((f"whole demo <= {TARGET_MINUTES:.0f} min", f"{total / 60:.1f} min",
                       total <= TARGET_MINUTES * 60))
    for model, name in (("nnunet", "nnU-Net"), ("nnunet_poolskip", "nnU-Net + Pool Skip")):  # issue 23: both
        if model in dice:
            checks.append((f"{name} ensemble >= {TARGET_BASELINE_DICE:.2f}", f"{dice[model]:.3f}",
                           dice[model] >= TARGET_BASELINE_DICE))
    if dice:
        worst = min(dice, key=dice.get)
        checks.append((f"every model >= {TARGET_EVERY_MODEL_DICE:.2f}", f"lowest {worst} {dice[worst]:.3f}",
                       dice[worst] >= TARGET_EVERY_MODEL_DICE))
    lines += ["| issue-13/23 target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", default="results/btcv_demo", help="the demo's results folder")
    args = parser.parse_args(argv)
    print(report(Path(args.results)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
