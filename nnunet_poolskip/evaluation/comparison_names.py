"""Names the comparison tables and figures share: metric columns, the small-n mark, how a difference is named."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

METRIC_COLUMNS = (("dice", "DICE (%)"), ("nsd", "NSD (%)"), ("iou", "mIoU (%)"))
METRIC_NAMES = {"dice": "Dice", "nsd": "NSD", "iou": "IoU"}
SMALL_N_MARK = "‡"


def difference_name(name: str, baseline: str) -> str:
    """``B − A``: how a difference of two models is named in tables and legends."""
    return f"{name} − {baseline}"


def nsd_name(summary: Optional[Mapping]) -> str:
    """``NSD@1 mm`` (one tolerance for every label) or ``NSD@per-organ mm`` for a summary.json; ``NSD`` without one."""
    if summary is None:
        return "NSD"
    values = sorted(set(float(v) for v in summary["nsd_tolerance_mm"].values()))
    return f"NSD@{values[0]:g} mm" if len(values) == 1 else "NSD@per-organ mm"


def metric_names(summary: Optional[Mapping]) -> Dict[str, str]:
    """:data:`METRIC_NAMES` with NSD named by its tolerance (``NSD@1 mm``), as tables and figures print them."""
    return {**METRIC_NAMES, "nsd": nsd_name(summary)}
