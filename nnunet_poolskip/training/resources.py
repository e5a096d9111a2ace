"""The peak memory of a training run, recorded by our trainers next to their checkpoints.

``<fold folder>/nnunet_poolskip_resources.json`` holds, for the process that trains the fold (rank 0 under DDP):

    peak_rss_mib              the process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``): on the
                              CPU, what the training took in host memory, data loading included when it runs in
                              the process (``nnUNet_n_proc_DA=0``); augmentation worker processes are not counted
    peak_cuda_allocated_mib   ``torch.cuda.max_memory_allocated`` of the training device (None on the CPU): the
                              tensors' peak, without the caching allocator's reserve
    device                    ``cpu`` or ``cuda``

It is rewritten at the start of training and after every epoch, so a run killed later still leaves its peak so
far; a run continued with ``--c`` keeps the larger of the recorded and its own peaks; a run from scratch starts
afresh. MiB = 2**20 bytes.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

from nnunet_poolskip.utilities.atomic import write_json_atomic

RESOURCES_FILENAME = "nnunet_poolskip_resources.json"
MEMORY_KEYS = ("peak_rss_mib", "peak_cuda_allocated_mib")


def current_peaks(device: torch.device) -> Dict[str, Optional[float]]:
    """This process's peak RSS and (on CUDA) peak allocated CUDA memory so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux
    cuda = None
    if device.type == "cuda" and torch.cuda.is_available():
        cuda = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return {"peak_rss_mib": round(rss_mib, 1), "peak_cuda_allocated_mib": None if cuda is None else round(cuda, 1),
            "device": device.type}


def read_resources(fold_folder: Path) -> Optional[Dict]:
    """The recorded peaks of a fold (see the module docstring), or None when nothing readable is recorded."""
    try:
        data = json.loads((Path(fold_folder) / RESOURCES_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_resources(fold_folder: Path, device: torch.device, fresh: bool) -> Dict:
    """Write this process's peaks into the fold's record; unless ``fresh`` (a training from scratch), keep the
    larger of the recorded and the current value of each. Returns what was written."""
    now = current_peaks(device)
    previous = None if fresh else read_resources(fold_folder)
    if previous:
        for key in MEMORY_KEYS:
            values = [v for v in (previous.get(key), now[key]) if isinstance(v, (int, float))]
            now[key] = max(values) if values else None
    write_json_atomic(now, Path(fold_folder) / RESOURCES_FILENAME)
    return now
