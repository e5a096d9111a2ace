"""Names the comparison tables and figures share: metric columns, the small-n mark, how a difference is named."""
from __future__ import annotations

METRIC_COLUMNS = (("dice", "DICE (%)"), ("nsd", "NSD (%)"), ("iou", "mIoU (%)"))
METRIC_NAMES = {"dice": "Dice", "nsd": "NSD", "iou": "IoU"}
SMALL_N_MARK = "‡"


def difference_name(name: str, baseline: str) -> str:
    """``B − A``: how a difference of two models is named in tables and legends."""
    return f"{name} − {baseline}"
