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
from typing import Callable, Dict, List, Optional, Sequence, TextIO

from nnunet_poolskip.benchmark.config import BenchmarkConfig
from nnunet_poolskip.benchmark.runinfo import RunRecord
from nnunet_poolskip.benchmark.training_runs import format_duration
from nnunet_poolskip.benchmark.workspace import step_environment

HEARTBEAT_SECONDS = 50.0
"""Longest silence on the console while a step runs (without --verbose): then a "still running" line."""


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
        self.last_said = time.time()

    def say(self, message: str = "") -> None:
        print(message, file=self.out or sys.stdout, flush=True)
        self.last_said = time.time()

    def heartbeat(self, running: Sequence["RunningStep"]) -> None:
        """Say which steps are still running when the console has been silent for HEARTBEAT_SECONDS (nothing with
        --verbose, where the commands' own output is on the console)."""
        now = time.time()
        if self.config.verbose or not running or now - self.last_said < HEARTBEAT_SECONDS:
            return
        self.say("   ... still running: " + "; ".join(f"{step.title} ({format_duration(now - step.started)} so far)"
                                                    for step in running))

    def log_path(self, step_id: str) -> Path:
        return self.logs / (step_id.replace("/", "__") + ".log")

    def start(self, step_id: str, argv: Sequence[str], purpose: str, mode: str = "run",
              watch: Optional[Callable[[], None]] = None, title: Optional[str] = None,
              extra_env: Optional[Dict[str, str]] = None, seed: Optional[int] = None) -> "RunningStep":
        """Start one step's command and record it; :class:`RunningStep` follows it to its end.

        Args:
            step_id: the step's key in run.json (``train/<model>/fold_<f>``, ``predict/<model>``, ...).
            argv: the command line.
            purpose: which environment the step gets (see :func:`workspace.step_environment`).
            mode: recorded with the step (a training's fold state: new, resume, validate).
            watch: called at every poll while the command runs, and once after it ends.
            title: the step's name in the "still running" line (see :meth:`heartbeat`).
            extra_env: variables added to the step's environment (and recorded with it).
            seed: the seed whose runs the step works on (its nnUNet_results, and NNUNET_POOLSKIP_SEED for a
                training; see :func:`workspace.step_environment`); None: the unseeded run.
        """
        env, added = step_environment(os.environ, self.config.workspace, self.config.settings, purpose, seed)
        if extra_env:
            env.update(extra_env)
            added.update(extra_env)
        log_path = self.log_path(step_id)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.record.step_started(step_id, list(argv), added, mode, None if self.config.verbose else str(log_path))
        log = None if self.config.verbose else open(log_path, "a")
        try:
            if log is not None:
                log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
                log.flush()
            preexec = _set_parent_death_signal if sys.platform.startswith("linux") else None
            proc = subprocess.Popen(list(argv), env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                    stdin=subprocess.DEVNULL, preexec_fn=preexec)
        except BaseException:
            if log is not None:
                log.close()
            self.record.step_finished(step_id, -1, 0.0)
            raise
        return RunningStep(self, step_id, title or step_id, list(argv), proc, log, log_path, watch)

    def execute(self, step_id: str, argv: Sequence[str], purpose: str, mode: str = "run",
                watch: Optional[Callable[[], None]] = None, title: Optional[str] = None,
                seed: Optional[int] = None) -> float:
        """Run one step's command to the end (see :meth:`start`); raise StepFailed on a non-zero exit.

        While it runs, ``watch`` is called every 2 s, and a "still running" line is printed whenever the console
        has been silent for HEARTBEAT_SECONDS (not with --verbose, where the command's own output is on the
        console). Returns the wall time in seconds.
        """
        step = self.start(step_id, argv, purpose, mode, watch, title, seed=seed)
        try:
            while not step.poll():
                self.heartbeat([step])
                step.wait(2.0)
        except BaseException:  # KeyboardInterrupt / SIGTERM: stop the child before leaving
            step.stop()
            raise
        return step.finish()

    def run(self, step_id: str, title: str, argv: Sequence[str], purpose: str = "other", mode: str = "run",
            watch: Optional[Callable[[], None]] = None, close: Optional[Callable[[], None]] = None,
            seed: Optional[int] = None) -> None:
        """:meth:`execute` with a line before and after; ``close`` runs when the step ends, however it ends."""
        self.say(f"-> {title}")
        try:
            wall = self.execute(step_id, argv, purpose, mode, watch, title, seed)
        finally:
            if close is not None:
                close()
        self.say(f"   done in {format_duration(wall)}")

    def skip(self, step_id: str, title: str, reason: str, quiet: bool = False) -> None:
        """Record a step as skipped (its output exists), with a line unless ``quiet``."""
        self.record.step_skipped(step_id, reason)
        if not quiet:
            self.say(f"-- {title}: {reason}")


class RunningStep:
    """A started step (see :meth:`Steps.start`): poll it, wait for it, stop it, then :meth:`finish` it."""

    def __init__(self, steps: Steps, step_id: str, title: str, argv: List[str], proc: subprocess.Popen,
                 log: Optional[TextIO], log_path: Path, watch: Optional[Callable[[], None]]):
        self.steps, self.step_id, self.title, self.argv = steps, step_id, title, argv
        self.proc, self.log, self.log_path, self.watch = proc, log, log_path, watch
        self.started = time.time()

    def poll(self) -> bool:
        """Call ``watch``; True once the command has ended (``watch`` then saw its last output)."""
        ended = self.proc.poll() is not None
        if self.watch is not None:
            self.watch()
        return ended

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the command to end."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Terminate the command (killed after 30 s) and record the step as stopped."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_log()
        self.steps.record.step_finished(self.step_id, -signal.SIGTERM, time.time() - self.started)

    def finish(self) -> float:
        """Record the ended command's exit; its wall time in seconds, or StepFailed naming the step and its log."""
        returncode = self.proc.wait()
        self._close_log()
        wall = time.time() - self.started
        self.steps.record.step_finished(self.step_id, returncode, wall)
        if returncode != 0:
            tail = ""
            if not self.steps.config.verbose:
                lines = self.log_path.read_text(errors="replace").splitlines()[-30:]
                tail = "\n    ".join([""] + lines)
            raise StepFailed(f"step {self.step_id} failed (exit code {returncode}); command: "
                             f"{shlex.join(self.argv)}\n  log: {self.log_path}{tail}")
        return wall

    def _close_log(self) -> None:
        if self.log is not None and not self.log.closed:
            self.log.close()
