"""Weight diagnostics recorded during training: the switch, and the history file in the fold folder.

Every trainer of this project (``nnUNetTrainerBaseline`` and its subclasses) appends the weight
diagnostics of :mod:`nnunet_poolskip.diagnostics.layer_statistics` (``l2_l1``, ``hoyer``, ``near_zero_fraction``,
zero filters: weights only, no data, no forward pass) to ``<fold folder>/diagnostics_history.jsonl``:

- for the initial weights (``"epoch": 0``) when a training starts from scratch,
- after every ``N``-th epoch (``"epoch"`` = number of epochs completed: N, 2N, ...),
- after the last epoch, whatever N.

The switch is the environment variable ``NNUNET_POOLSKIP_DIAG_EVERY``: a positive integer N (default
50, i.e. 21 records over nnU-Net's 1000 epochs), ``0`` to turn recording off. One record of a
BTCV-sized PlainConvUNet with Pool Skip (47 M parameters) takes 0.4 s of one CPU core (less on the GPU,
where the weights live) and ~10 KB; it runs on rank 0 only in DDP. A failure to record is logged and
never stops training.

The file has one JSON object per line (appends cannot corrupt earlier records). A run resumed from a
checkpoint first drops the records made after that checkpoint, and a run from scratch starts a new
file. :func:`read_history` keeps the last record of each epoch and skips a truncated last line.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

from torch import nn

from nnunet_poolskip.diagnostics.layer_statistics import NEAR_ZERO_FACTOR, layer_diagnostics
from nnunet_poolskip.utilities.atomic import write_text_atomic
from nnunet_poolskip.utilities.environment import integer_variable

DIAG_EVERY_VARIABLE = "NNUNET_POOLSKIP_DIAG_EVERY"
DEFAULT_DIAG_EVERY = 50
HISTORY_FILENAME = "diagnostics_history.jsonl"
HISTORY_LAYER_KEYS = ("name", "kind", "stage", "l2_l1", "hoyer", "near_zero_fraction", "zero_filter_channels")
"""The per-layer fields a history record keeps (no dead units: recording never runs data)."""


def diagnostics_every(environ: Optional[Mapping[str, str]] = None) -> int:
    """N from ``NNUNET_POOLSKIP_DIAG_EVERY`` in ``environ`` (default ``os.environ``); 0 means off.

    Raises ValueError naming the variable when the value is not an integer >= 0.
    """
    value = integer_variable(DIAG_EVERY_VARIABLE, environ, minimum=0, meaning=" (0 turns recording off)")
    return DEFAULT_DIAG_EVERY if value is None else value


def should_record(completed_epochs: int, every: int, num_epochs: int) -> bool:
    """Whether to record after ``completed_epochs`` epochs: every ``every``-th and the last one (never if 0)."""
    if every <= 0:
        return False
    return completed_epochs % every == 0 or completed_epochs >= num_epochs


def weight_record(network: nn.Module, epoch: int, near_zero_factor: float = NEAR_ZERO_FACTOR, **extra) -> Dict:
    """One history record: ``{"epoch", "time", "near_zero_factor", **extra, "layers": [...]}``.

    Args:
        network: the network (DDP / compiled wrappers are unwrapped).
        epoch: number of epochs completed (0: initial weights).
        near_zero_factor: see :data:`nnunet_poolskip.diagnostics.layer_statistics.NEAR_ZERO_FACTOR`.
        extra: more JSON-ready fields (e.g. ``trainer``).
    """
    layers = [{key: record[key] for key in HISTORY_LAYER_KEYS} for record in
              layer_diagnostics(network, None, near_zero_factor)]
    return {"epoch": int(epoch), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "near_zero_factor": near_zero_factor, **extra, "layers": layers}


def append_record(path: Union[str, os.PathLike], record: Dict) -> None:
    """Append ``record`` as one line (a single write, flushed to disk)."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_history(path: Union[str, os.PathLike]) -> List[Dict]:
    """The records of a history file sorted by epoch, the last one per epoch; ``[]`` if there is no file.

    A last line that does not parse (a write cut short) is skipped; any other bad line raises
    ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    by_epoch: Dict[int, Dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
        except (ValueError, KeyError, TypeError) as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a diagnostics record ({error})") from None
        by_epoch[epoch] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def truncate_history(path: Union[str, os.PathLike], max_epoch: Optional[int]) -> None:
    """Keep only records with ``epoch <= max_epoch`` (``None``: remove the file), atomically."""
    path = Path(path)
    if max_epoch is None:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    kept = [record for record in read_history(path) if record["epoch"] <= max_epoch]
    write_text_atomic("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept), path)
