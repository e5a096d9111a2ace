"""One benchmark step: a subprocess of a real command line, its log, its entry in run.json, its console lines.

Subprocesses get PR_SET_PDEATHSIG on Linux, so killing the runner also ends the training it started (no orphan
keeps writing into a fold folder that the next run resumes).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from nnunet_poolskip.benchmark.config import BenchmarkConfig
from nnunet_poolskip.benchmark.runinfo import RunRecord
from nnunet_poolskip.benchmark.training_runs import format_duration
from nnunet_poolskip.benchmark.workspace import step_environment


class StepFailed(Exception):
    """A step's command exited non-zero; the message names the step and its log."""


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


class Steps:
    """Runs, skips and records the steps of one benchmark invocation, and prints its progress."""

    def __init__(self, config: BenchmarkConfig, record: RunRecord, out: Optional[TextIO] = None):
        """``out``: where progress and the table are printed (default: sys.stdout at the time of printing)."""
        self.config = config
        self.record = record
        self.out = out
        self.logs = config.output / "logs"

    def say(self, message: str = "") -> None:
        print(message, file=self.out or sys.stdout, flush=True)

    def log_path(self, step_id: str) -> Path:
        return self.logs / (step_id.replace("/", "__") + ".log")

    def execute(self, step_id: str, argv: Sequence[str], purpose: str, mode: str = "run",
                watch: Optional[Callable[[], None]] = None, seed: Optional[int] = None) -> float:
        """Run one step's command to the end; record it; raise StepFailed on a non-zero exit.

        Args:
            step_id: the step's key in run.json (``train/<model>/fold_<f>``, ``predict/<model>``, ...).
            argv: the command line.
            purpose: which environment the step gets (see :func:`workspace.step_environment`).
            mode: recorded with the step (a training's fold state: new, resume, validate).
            watch: called every 2 s while the command runs, and once after it ends.
            seed: the seed whose runs the step works on (its nnUNet_results, and NNUNET_POOLSKIP_SEED for a
                training; see :func:`workspace.step_environment`); None: the unseeded run.

        Returns the wall time in seconds.
        """
        env, added = step_environment(os.environ, self.config.workspace, self.config.settings, purpose, seed)
        log_path = self.log_path(step_id)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.record.step_started(step_id, list(argv), added, mode, None if self.config.verbose else str(log_path))
        started = time.time()
        log = None if self.config.verbose else open(log_path, "a")
        try:
            if log is not None:
                log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
                log.flush()
            preexec = _set_parent_death_signal if sys.platform.startswith("linux") else None
            proc = subprocess.Popen(list(argv), env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                    stdin=subprocess.DEVNULL, preexec_fn=preexec)
            try:
                while proc.poll() is None:
                    if watch is not None:
                        watch()
                    try:
                        proc.wait(timeout=2.0)
                    except subprocess.TimeoutExpired:
                        pass
                if watch is not None:
                    watch()
            except BaseException:  # KeyboardInterrupt / SIGTERM: stop the child before leaving
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self.record.step_finished(step_id, -signal.SIGTERM, time.time() - started)
                raise
        finally:
            if log is not None:
                log.close()
        wall = time.time() - started
        self.record.step_finished(step_id, proc.returncode, wall)
        if proc.returncode != 0:
            tail = ""
            if not self.config.verbose:
                lines = log_path.read_text(errors="replace").splitlines()[-30:]
                tail = "\n    ".join([""] + lines)
            raise StepFailed(f"step {step_id} failed (exit code {proc.returncode}); command: {shlex.join(argv)}"
                             f"\n  log: {log_path}{tail}")
        return wall

    def run(self, step_id: str, title: str, argv: Sequence[str], purpose: str = "other", mode: str = "run",
            watch: Optional[Callable[[], None]] = None, close: Optional[Callable[[], None]] = None,
            seed: Optional[int] = None) -> None:
        """:meth:`execute` with a line before and after; ``close`` runs when the step ends, however it ends."""
        self.say(f"-> {title}")
        try:
            wall = self.execute(step_id, argv, purpose, mode, watch, seed)
        finally:
            if close is not None:
                close()
        self.say(f"   done in {format_duration(wall)}")

    def skip(self, step_id: str, title: str, reason: str, quiet: bool = False) -> None:
        """Record a step as skipped (its output exists), with a line unless ``quiet``."""
        self.record.step_skipped(step_id, reason)
        if not quiet:
            self.say(f"-- {title}: {reason}")
