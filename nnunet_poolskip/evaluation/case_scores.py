"""Per-case scores for the paired comparison, with empty references scored so that a false positive counts.

A summary.json (``nnunet-poolskip evaluate``) holds per case and label a value, null when the label is absent from
both the reference and the prediction, 0 when it is in only one of them. Leaving the nulls out of a paired test
(as version 1 of statistics.json did) drops exactly the cases where one model rightly predicted nothing and the
other predicted an organ that is not there, so a model that hallucinates an absent organ could show a paired gain.
Here, for the paired comparison:

- label absent from the reference, absent from the prediction (null): 1.0, a perfect score;
- label absent from the reference, present in the prediction (0): 0.0, a false positive against that model;
- label present in the reference: the summary's value.

The per-case foreground value is the mean over the labels PRESENT in the reference of that case, the same labels
for both models (false positives on absent organs show per label, not in the foreground mean); a case whose
reference has none of the labels has no foreground value.

Which labels a case's reference lacks: evaluate records it per case (``"empty_reference"``: label ids). For older
summaries without it, it is inferred: a label is empty in the reference of a case when ANY of the compared summaries
(every seed of every model) has null there. A label that every summary scores 0 (all predicted it where the
reference has none, or all missed an organ that is there) cannot be told apart and counts as present: both models
score 0 and the case is a tie, so the paired difference is the same either way; only ``n_empty_reference`` and the
false-positive counts can be too low. ``empty_reference_source`` says which rule was used.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

FOREGROUND = "foreground"
EMPTY_REFERENCE_KEY = "empty_reference"
RECORDED, INFERRED = "recorded", "inferred"
BOTH_EMPTY_SCORE = 1.0


def value_of(value) -> Optional[float]:
    """A summary value as a float, or None for JSON null and NaN (both mean "no value": empty in both)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def empty_reference(summaries: Sequence[Mapping]) -> Tuple[Dict[str, Set[str]], str]:
    """Case id -> the label ids absent from that case's reference, and the source of that knowledge.

    Args:
        summaries: every compared summary.json (all seeds of all models; the same references).
    Returns:
        (mapping, ``"recorded"`` when every summary carries evaluate's per-case ``empty_reference`` record, else
        ``"inferred"`` from the nulls as the module docstring says).
    """
    recorded = all(EMPTY_REFERENCE_KEY in case for s in summaries for case in s["per_case"])
    empty: Dict[str, Set[str]] = {}
    for summary in summaries:
        for case in summary["per_case"]:
            labels = empty.setdefault(case["case"], set())
            if recorded:
                labels.update(str(k) for k in case[EMPTY_REFERENCE_KEY])
            else:
                labels.update(k for k, v in (case.get("dice") or {}).items() if value_of(v) is None)
    return empty, RECORDED if recorded else INFERRED


def scored_values(summary: Mapping, metric: str, label: str, empty: Mapping[str, Set[str]]
                  ) -> Dict[str, Optional[float]]:
    """Case id -> the score of ``metric`` for ``label`` (a label id or ``"foreground"``) in the paired comparison.

    Args:
        summary: one summary.json.
        metric: ``dice``, ``nsd`` or ``iou``.
        label: a label id, or ``"foreground"`` for the mean over the labels present in the case's reference.
        empty: from :func:`empty_reference`.
    Returns:
        Fractions; None where there is no score (a label present in the reference but null in the summary, which
        evaluate never writes; a foreground mean with no label present or no value).
    """
    out: Dict[str, Optional[float]] = {}
    labels = list(summary["labels"])
    for case in summary["per_case"]:
        values = case.get(metric) or {}
        absent = empty.get(case["case"], set())
        if label == FOREGROUND:
            present = [value_of(values.get(k)) for k in labels if k not in absent]
            present = [v for v in present if v is not None]
            out[case["case"]] = float(np.mean(present)) if present else None
        elif label in absent:
            value = value_of(values.get(label))
            out[case["case"]] = BOTH_EMPTY_SCORE if value is None else value
        else:
            out[case["case"]] = value_of(values.get(label))
    return out


def false_positives(summary: Mapping, label: str, empty: Mapping[str, Set[str]], cases: Sequence[str]) -> int:
    """Cases among ``cases`` whose reference lacks ``label`` and whose prediction has it (a non-null value)."""
    by_case = {case["case"]: case for case in summary["per_case"]}
    return sum(1 for c in cases if label in empty.get(c, set()) and c in by_case
               and value_of((by_case[c].get("dice") or {}).get(label)) is not None)


def score_matrix(summaries: Sequence[Mapping], metric: str, label: str, empty: Mapping[str, Set[str]],
                 cases: Sequence[str]) -> np.ndarray:
    """Scores of several summaries (rows, e.g. the seeds of one model) over ``cases`` (columns); NaN for none."""
    rows: List[List[float]] = []
    for summary in summaries:
        values = scored_values(summary, metric, label, empty)
        rows.append([math.nan if values.get(c) is None else values[c] for c in cases])
    return np.array(rows, dtype=float).reshape(len(summaries), len(cases))
