"""Reading summary.json files for ``compare`` and checking that they can be compared (labels, NSD tolerances)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

REQUIRED_KEYS = ("labels", "nsd_tolerance_mm", "per_case", "mean", "foreground_mean")


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
