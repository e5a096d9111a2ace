"""Summaries of several runs of one model: each case's metrics averaged over runs (e.g. over training seeds).

The result is a summary.json in the DESIGN.md format ("Evaluation output"), so that ``compare`` and its paired
statistics treat it like any other summary: per case, metric and label the mean over the runs; per label the mean
over cases; the foreground mean over labels (means computed by :func:`evaluate_predictions.summarize`, the same
code as ``evaluate``).

Missing values (NaN / JSON null: the label is absent from both the reference and a run's prediction of the case):
a value is the mean over the runs that HAVE a value, and null only when no run has one. So a run whose prediction
wrongly contains an organ the reference lacks (scored 0) pulls that case's mean down, while runs that rightly left
it empty (null) are not counted as 1; ``n_partial`` counts per metric and label the cases where some but not all
runs had a value, so that this is visible.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_poolskip.evaluation.evaluate_predictions import summarize
from nnunet_poolskip.evaluation.metrics import METRICS
from nnunet_poolskip.evaluation.summary_io import (
    CompareInputError,
    check_comparable,
    is_incomplete,
    load_summary,
)

AVERAGE_KEY = "averaged_over"
"""Key of an averaged summary that names its sources (absent from evaluate's own summaries)."""
NAN_RULE = ("per case, metric and label: mean over the runs that have a value; null only when no run has one "
            "(label absent from reference and prediction in every run)")


def is_averaged_summary(summary: Mapping) -> bool:
    """True for a summary written by :func:`average_summaries` (not by ``evaluate``)."""
    return AVERAGE_KEY in summary


def average_summaries(paths: Sequence[os.PathLike | str], names: Optional[Sequence[str]] = None) -> Dict:
    """One summary whose per-case values are the means over the summaries at ``paths`` (see the module docstring).

    Args:
        paths: summary.json files of ``evaluate`` for runs of the SAME model on the SAME test cases (one per seed).
        names: what each run is (``seed 0``...), recorded in ``averaged_over``; default: the paths.

    Returns:
        A summary (DESIGN.md format plus ``n_cases``, ``n_empty_both``, ``complete``, ``missing_predictions``,
        ``notes`` like evaluate's) with ``averaged_over`` = ``{"runs": names, "summaries": paths, "rule": ...}``
        and ``n_partial`` = metric -> label -> number of cases where only some runs had a value.

    Raises:
        CompareInputError: no paths, a file that is missing or not a summary, summaries that score other labels,
            use other NSD tolerances or hold other cases (naming the files).
    """
    if not paths:
        raise CompareInputError("no summaries to average")
    paths = [str(p) for p in paths]
    names = [str(n) for n in names] if names is not None else list(paths)
    if len(names) != len(paths):
        raise CompareInputError(f"{len(names)} names for {len(paths)} summaries")
    summaries = [load_summary(p) for p in paths]
    check_comparable(summaries, paths)
    first_cases = [case["case"] for case in summaries[0]["per_case"]]
    for summary, path in zip(summaries[1:], paths[1:]):
        cases = [case["case"] for case in summary["per_case"]]
        if sorted(cases) != sorted(first_cases):
            different = sorted(set(cases) ^ set(first_cases))
            raise CompareInputError(f"{path} and {paths[0]} hold different test cases ({', '.join(different[:10])} "
                                    f"in only one): a per-case average needs the same cases in every run")
    labels = {int(k): v for k, v in summaries[0]["labels"].items()}
    tolerances = {int(k): float(v) for k, v in summaries[0]["nsd_tolerance_mm"].items()}
    by_case = [{case["case"]: case for case in summary["per_case"]} for summary in summaries]
    per_case: List[Dict] = []
    n_partial = {metric: {str(label): 0 for label in labels} for metric in METRICS}
    recorded = all("empty_reference" in run[case] for run in by_case for case in first_cases)
    for case in first_cases:
        entry: Dict = {"case": case}
        if recorded:  # the same references in every run: evaluate's record
            entry["empty_reference"] = sorted({int(k) for run in by_case for k in run[case]["empty_reference"]})
        for metric in METRICS:
            entry[metric] = {}
            for label in labels:
                values = [run[case][metric].get(str(label)) for run in by_case]
                present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
                if present and len(present) < len(values):
                    n_partial[metric][str(label)] += 1
                entry[metric][label] = float(np.mean(present)) if present else float("nan")
        per_case.append(entry)
    averaged = summarize(per_case, labels, tolerances)
    averaged["n_partial"] = n_partial
    averaged["complete"] = not any(is_incomplete(s) for s in summaries)
    averaged["missing_predictions"] = sorted({c for s in summaries for c in s.get("missing_predictions") or []})
    notes = [f"each case's values are the mean over {len(paths)} runs ({', '.join(names)})"]
    partial = sum(n for per_label in n_partial.values() for n in per_label.values())
    if partial:
        notes.append(f"{partial} case x label x metric values had a value in only some runs (an organ absent from "
                     f"the reference predicted by some runs); averaged over the runs that had one")
    averaged["notes"] = notes + list(dict.fromkeys(note for s in summaries for note in s.get("notes") or []))
    averaged[AVERAGE_KEY] = {"runs": names, "summaries": [str(Path(p).resolve()) for p in paths], "rule": NAN_RULE}
    return averaged
