"""``run.json``: what a benchmark run did, written atomically and updated after every step.

It records versions, machine, settings, trainer names, plans, seeds, and per step the command, the
environment it added, its status and wall times (every attempt, so a resumed run keeps the times of
earlier invocations). A rerun loads it and appends; the trained folds themselves are recognised from
nnU-Net's checkpoint files, not from this record (see training_runs.fold_state).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_poolskip.utilities.atomic import write_json_atomic

FORMAT_VERSION = 1
DISTRIBUTIONS = ("nnunet-poolskip", "nnunetv2", "torch", "dynamic-network-architectures", "monai", "numpy",
                 "SimpleITK", "nibabel", "batchgenerators", "batchgeneratorsv2", "blosc2")


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> Dict[str, Optional[str]]:
    """Installed version of each distribution the results depend on (None: not installed)."""
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> Dict:
    """Host, OS, CPU count, memory (GiB) and GPUs (names, CUDA version as torch sees them)."""
    info: Dict = {"hostname": platform.node(), "platform": platform.platform(), "machine": platform.machine(),
                  "cpu_count": os.cpu_count(), "python_executable": sys.executable}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["gpus"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                        if torch.cuda.is_available() else [])
    except Exception as error:  # a broken CUDA set-up must not stop the record
        info["gpus"] = f"unknown ({error})"
    return info


def file_sha256(path: os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plans_summary(plans_file: os.PathLike, configuration: str) -> Dict:
    """The plans file's path and hash, and the configuration's patch size (voxels), spacing (mm),
    batch size and features per stage."""
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    conf = plans["configurations"][configuration]
    while "patch_size" not in conf and "inherits_from" in conf:  # configurations may inherit
        conf = {**plans["configurations"][conf["inherits_from"]], **conf}
    arch = conf.get("architecture", {}).get("arch_kwargs", {})
    return {"identifier": plans["plans_name"], "file": str(plans_file), "sha256": file_sha256(plans_file),
            "configuration": configuration, "patch_size": conf.get("patch_size"),
            "spacing_mm": conf.get("spacing"), "batch_size": conf.get("batch_size"),
            "features_per_stage": arch.get("features_per_stage"), "n_stages": arch.get("n_stages")}


class RunRecord:
    """The run.json of one results folder; every change is written to disk at once (atomically)."""

    def __init__(self, path: os.PathLike):
        """Load ``path`` if it exists (a resumed run), else start an empty record."""
        self.path = Path(path)
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("format") != FORMAT_VERSION:
                raise ValueError(f"{self.path} was written by another version of the benchmark "
                                 f"(format {self.data.get('format')!r}); use a new output folder")
        else:
            self.data = {"format": FORMAT_VERSION, "status": "new", "invocations": [], "steps": {}}
        self._started: Optional[float] = None

    def save(self) -> None:
        """Write the record atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.data, self.path)

    def begin_invocation(self, argv: List[str], fields: Dict) -> None:
        """Record a new invocation and refresh versions, machine and the given top-level fields.

        ``dataset`` is updated rather than replaced: the facts only the prepare stage records (folder name, test
        cases, number of train+val cases) stay until it records them again, so that an invocation of a later
        stage alone (``--stage finish``, as the SLURM jobs run) still reports them.
        """
        self._started = time.time()
        # an earlier invocation that left "running" behind was killed: say so rather than leave it open
        for invocation in self.data["invocations"]:
            if invocation["status"] == "running":
                invocation["status"] = "interrupted"
        for record in self.data["steps"].values():
            if record["status"] == "running":
                record["status"] = "interrupted"
                if record["attempts"] and record["attempts"][-1]["exit_code"] is None:
                    record["attempts"][-1]["exit_code"] = "killed"
        self.data["invocations"].append({"argv": list(argv), "started": now_iso(), "finished": None,
                                         "status": "running"})
        earlier_dataset = self.data.get("dataset", {})
        self.data.update(fields)
        if "dataset" in fields:
            self.data["dataset"] = {**earlier_dataset, **fields["dataset"]}
        self.data["versions"] = package_versions()
        self.data["machine"] = machine_info()
        self.data["status"] = "running"
        self.save()

    def end_invocation(self, status: str) -> None:
        """Close the current invocation with ``status`` (complete, incomplete, failed, interrupted)."""
        invocation = self.data["invocations"][-1]
        invocation["finished"] = now_iso()
        invocation["status"] = status
        if self._started is not None:
            invocation["wall_s"] = round(time.time() - self._started, 1)
        self.data["status"] = status
        self.save()

    def step(self, step_id: str) -> Dict:
        """The record of one step (created empty when new)."""
        return self.data["steps"].setdefault(step_id, {"status": "pending", "attempts": [], "wall_s": 0.0})

    def step_skipped(self, step_id: str, reason: str) -> None:
        """Record that a step needed no work in this invocation (its output exists)."""
        record = self.step(step_id)
        record["status"] = "done"
        record["skipped_last_invocation"] = reason
        self.save()

    def step_started(self, step_id: str, command: List[str], env: Dict[str, str], mode: str, log: str) -> None:
        """Record that a step's command starts now."""
        record = self.step(step_id)
        record.update({"status": "running", "command": list(command), "env": dict(env), "log": log})
        record.pop("skipped_last_invocation", None)
        record["attempts"].append({"mode": mode, "started": now_iso(), "finished": None, "wall_s": None,
                                   "exit_code": None})
        self.save()

    def step_finished(self, step_id: str, exit_code: int, wall_s: float) -> None:
        """Record a step's exit; the step is done when ``exit_code`` is 0, failed otherwise."""
        record = self.step(step_id)
        attempt = record["attempts"][-1]
        attempt.update({"finished": now_iso(), "wall_s": round(wall_s, 1), "exit_code": exit_code})
        record["wall_s"] = round(sum(a["wall_s"] or 0.0 for a in record["attempts"]), 1)
        record["status"] = "done" if exit_code == 0 else "failed"
        self.save()

    def note(self, key: str, value) -> None:
        """Set a top-level field and save."""
        self.data[key] = value
        self.save()
