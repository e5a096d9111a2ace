"""Per organ and model, the distribution behind the means: median [IQR] Dice over the cases whose reference has the
organ, failures (Dice 0 with the organ present) and false positives (organ predicted where the reference has none).

A mean hides whether a model is a little worse everywhere or fails outright on a few cases; this table of
``per_organ.md`` shows which. With several seeds per model every seed's cases count (n = cases x seeds).
"""
from __future__ import annotations

from typing import List, Mapping, Sequence

import numpy as np

from nnunet_poolskip.evaluation import case_scores


def organ_cell(runs: Sequence[Mapping], label: str, empty: Mapping) -> str:
    """``85.1 [80.2, 90.3]; 1/12 failed; FP 2/3`` (percent) for one model's runs (seeds) and one label.

    Args:
        runs: the model's summaries (one per seed).
        label: label id.
        empty: :func:`case_scores.empty_reference` of every compared summary.
    """
    present, failures, empty_cases, false_positives = [], 0, 0, 0
    for summary in runs:
        for case in summary["per_case"]:
            value = case_scores.value_of((case.get("dice") or {}).get(label))
            if label in empty.get(case["case"], set()):
                empty_cases += 1
                false_positives += value is not None
            elif value is not None:
                present.append(value)
                failures += value == 0
    if not present:
        text = "no case with the organ"
    else:
        q1, median, q3 = np.percentile(100 * np.array(present), [25, 50, 75])
        text = f"{median:.1f} [{q1:.1f}, {q3:.1f}]; {failures}/{len(present)} failed"
    return text + (f"; FP {false_positives}/{empty_cases}" if empty_cases else "")


def organ_distribution_markdown(runs_by_model: Mapping[str, Sequence[Mapping]]) -> str:
    """The per-organ distribution table (Markdown) of every model.

    Args:
        runs_by_model: model name -> its summaries (one per seed), all with the same labels.
    """
    every = [s for runs in runs_by_model.values() for s in runs]
    empty, source = case_scores.empty_reference(every)
    labels = every[0]["labels"]
    models = list(runs_by_model)
    lines: List[str] = ["### Dice per organ: median [IQR], failures, false positives", "",
                        "| Label | " + " | ".join(models) + " |", "|---|" + ":---:|" * len(models)]
    for key, organ in labels.items():
        lines.append(f"| {key} {organ} | " + " | ".join(organ_cell(runs_by_model[m], key, empty) for m in models)
                     + " |")
    seeds = max(len(r) for r in runs_by_model.values())
    lines += ["", "Percent, over the cases whose reference has the organ" + (f" (every seed: cases x {seeds})"
                                                                               if seeds > 1 else "")
              + "; failed: Dice 0 with the organ present; FP k/e: the organ predicted in k of the e cases whose "
                "reference lacks it (they score 0 in the paired differences)."
              + (" Which references lack an organ was inferred from the nulls (summaries without evaluate's "
                 "per-case record): an organ every model predicted where it is absent counts as a failure here."
                 if source == case_scores.INFERRED else "")]
    return "\n".join(lines) + "\n"
