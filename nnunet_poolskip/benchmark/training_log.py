"""nnU-Net's own training log of a fold (``training_log_*.txt``), read back one record per finished epoch.

nnU-Net 2.8.1 (``nnUNetTrainer.on_train_epoch_start`` / ``on_epoch_end``) writes, each line after a
``<date> <time>: `` timestamp::

    Epoch 3
    Current learning rate: 0.00725
    train_loss -0.4121
    val_loss -0.3911
    Pseudo dice [np.float32(0.8123), np.float32(0.0), ...]
    Epoch time: 12.41 s

(with NumPy < 2 the list reads ``[0.8123, 0.0, ...]``). A resumed run (``--c``) starts a new log file whose
first epoch is the one it continues from; the epoch numbers come from the log, not from counting.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

TRAINING_LOG_GLOB = "training_log_*.txt"
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?: ")
_EPOCH = re.compile(r"^Epoch (\d+)\s*$")
_LOSS = re.compile(r"^(train_loss|val_loss) (\S+)")
_PSEUDO_DICE = re.compile(r"^Pseudo dice \[(.*)\]")
_EPOCH_TIME = re.compile(r"^Epoch time: ([0-9.eE+-]+) s")
_NUMPY_SCALAR = re.compile(r"np\.float\d*\(([^)]*)\)")


@dataclass
class EpochRecord:
    """One finished epoch as nnU-Net logged it.

    Attributes:
        epoch: nnU-Net's epoch index (0-based).
        seconds: the epoch's duration (``Epoch time``), training and validation iterations.
        train_loss / val_loss: the epoch's mean losses (None when not logged).
        pseudo_dice: nnU-Net's pseudo Dice per foreground label on the validation patches (NaN where nnU-Net
            logged nan: the label was absent from those patches and never predicted).
    """

    epoch: int
    seconds: float
    train_loss: Optional[float] = None
    val_loss: Optional[float] = None
    pseudo_dice: List[float] = field(default_factory=list)

    @property
    def mean_pseudo_dice(self) -> Optional[float]:
        """The mean over labels with a value, as nnU-Net's ``mean_fg_dice`` (None when no label has one)."""
        values = [v for v in self.pseudo_dice if not math.isnan(v)]
        return sum(values) / len(values) if values else None


def _number(text: str) -> Optional[float]:
    text = _NUMPY_SCALAR.sub(r"\1", text).strip()
    try:
        return float(text)
    except ValueError:
        return None


def parse_training_log(text: str) -> List[EpochRecord]:
    """The finished epochs of one nnU-Net training log (an epoch without its ``Epoch time`` line is unfinished)."""
    records: List[EpochRecord] = []
    epoch: Optional[int] = None
    values: dict = {}
    for raw_line in text.splitlines():
        line = _TIMESTAMP.sub("", raw_line).strip()
        match = _EPOCH.match(line)
        if match:
            epoch, values = int(match.group(1)), {}
            continue
        if epoch is None:
            continue
        match = _LOSS.match(line)
        if match:
            values[match.group(1)] = _number(match.group(2))
            continue
        match = _PSEUDO_DICE.match(line)
        if match:
            items = [_number(item) for item in match.group(1).split(",") if item.strip()]
            values["pseudo_dice"] = [math.nan if v is None else v for v in items]
            continue
        match = _EPOCH_TIME.match(line)
        if match:
            records.append(EpochRecord(epoch, float(match.group(1)), values.get("train_loss"),
                                       values.get("val_loss"), values.get("pseudo_dice", [])))
            epoch, values = None, {}
    return records


def newest_training_log(fold_folder: Path, newer_than: float = 0.0) -> Optional[Path]:
    """The newest ``training_log_*.txt`` of a fold folder modified at or after ``newer_than`` (time.time())."""
    try:
        logs = [p for p in Path(fold_folder).glob(TRAINING_LOG_GLOB) if p.stat().st_mtime >= newer_than]
    except OSError:
        return None
    return max(logs, key=lambda p: p.stat().st_mtime) if logs else None


def read_epochs(fold_folder: Path, newer_than: float = 0.0) -> List[EpochRecord]:
    """The finished epochs in the newest training log of a fold modified after ``newer_than``; [] when none."""
    log = newest_training_log(fold_folder, newer_than)
    if log is None:
        return []
    try:
        return parse_training_log(log.read_text(errors="replace"))
    except OSError:
        return []
