"""The benchmark runner: the paper's Table 3 protocol from the raw data to the comparison table.

Steps, each a subprocess of a real command line, each skipped when its output already exists:

    prepare  synth (demo, without --raw) -> convert-btcv / convert-amos -> nnUNetv2_plan_and_preprocess
             -> derive-plans (profiles with a plans preset)
    train    nnUNetv2_train for every model x fold (state read from nnU-Net's checkpoints, see training.py)
    finish   nnunet-poolskip predict (softmax average of the folds) -> evaluate -> compare -> table.md

A rerun with the same arguments continues where the last one stopped. run.json records everything.
Subprocesses get PR_SET_PDEATHSIG on Linux, so killing the runner also ends the training it started
(no orphan keeps writing into a fold folder that the next run resumes).
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TextIO

from nnunet_poolskip.benchmark.profiles import Settings
from nnunet_poolskip.benchmark.protocol import CONFIGURATION, DATASET_KINDS, DEFAULT_PLANS, Model
from nnunet_poolskip.benchmark.runinfo import RunRecord, plans_summary
from nnunet_poolskip.benchmark.training import (NNUNET_SCHEDULE, FoldState, TrainingRun, epoch_times,
                                                format_duration, model_folder, schedule_mismatch,
                                                set_aside_unreadable_checkpoints, train_command)
from nnunet_poolskip.benchmark.workspace import (DatasetTarget, Workspace, case_ids, executable,
                                                 step_environment)

NNUNET_DEFAULT_EPOCHS = NNUNET_SCHEDULE["num_epochs"]
NNUNET_DEFAULT_ITERATIONS = NNUNET_SCHEDULE["num_iterations_per_epoch"]


class BenchmarkError(Exception):
    """A problem with the inputs or the state of the output folder; the message says what to do."""


class StepFailed(Exception):
    """A step's command exited non-zero; the message names the step and its log."""


@dataclass
class BenchmarkConfig:
    """Everything one benchmark invocation needs (built from the command line by commands/benchmark.py).

    Attributes:
        target: the data set.
        settings: the resolved profile.
        models: the models, in table order.
        output: the results folder (run.json, predictions, summaries, tables, logs).
        workspace: nnU-Net's folders.
        raw_source: the raw download to convert (BTCV/AMOS layout); None: synthetic phantoms (demo) or an
            already converted data set.
        split_file: the converter's --split-file (None: the shipped paper split).
        modality: AMOS ``--modality`` (ct, mri, all; None: the converter's default).
        stage: ``all``, ``prepare``, ``train`` or ``finish`` (see the module docstring).
        keep_going: after a failed training, go on with the other models and build a table from the
            complete ones, marked INCOMPLETE.
        verbose: show the subprocesses' output instead of writing it to logs/.
        evaluate_processes: evaluate's -np.
        nsd_tolerances: evaluate's --nsd-tolerances (None: 1 mm for every organ).
        argv: the command line, for the record.
    """

    target: DatasetTarget
    settings: Settings
    models: List[Model]
    output: Path
    workspace: Workspace
    raw_source: Optional[Path] = None
    split_file: Optional[Path] = None
    modality: Optional[str] = None
    stage: str = "all"
    keep_going: bool = False
    verbose: bool = False
    evaluate_processes: int = 1
    nsd_tolerances: Optional[str] = None
    argv: List[str] = field(default_factory=list)

    @property
    def plans(self) -> str:
        """The plans identifier the models are trained with."""
        if self.settings.plans_preset is None:
            return DEFAULT_PLANS
        from nnunet_poolskip.plans_transform import load_preset

        return DEFAULT_PLANS + load_preset(self.settings.plans_preset)["plans_suffix"]

    @property
    def synthetic(self) -> bool:
        """True when the data are phantoms made by ``synth`` (no --raw, a profile with synthetic cases)."""
        return (self.raw_source is None and self.target.kind in DATASET_KINDS
                and self.settings.synthetic_cases is not None)

    def trainers(self) -> Dict[str, str]:
        """Model name -> trainer class name for this data set."""
        return {m.name: m.trainer_for(self.target.kind) for m in self.models}


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:
        pass


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class BenchmarkRunner:
    """Runs (or continues) one benchmark; see the module docstring."""

    def __init__(self, config: BenchmarkConfig, out: Optional[TextIO] = None):
        """``out``: where progress and the table are printed (default: sys.stdout at the time of printing)."""
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.out = out
        self.record = RunRecord(config.output / "run.json")
        self.logs = config.output / "logs"
        self._measured: Dict[str, float] = {}  # trainer -> first-epoch seconds measured in this invocation

    # ----------------------------------------------------------------------------------------- helpers
    def say(self, message: str = "") -> None:
        print(message, file=self.out or sys.stdout, flush=True)

    def dataset_name(self) -> str:
        folder = self.config.target.raw_folder(self.ws)
        if folder is None:
            raise BenchmarkError(f"data set {self.config.target.dataset_id} not found in {self.ws.raw}")
        return folder.name

    def raw_folder(self) -> Path:
        return self.ws.raw / self.dataset_name()

    def execute(self, step_id: str, argv: Sequence[str], purpose: str, mode: str = "run",
                watch: Optional[Callable[[], None]] = None) -> float:
        """Run one step's command to the end; record it; raise StepFailed on a non-zero exit.

        Returns the wall time in seconds.
        """
        env, added = step_environment(os.environ, self.ws, self.settings, purpose)
        log_path = self.logs / (step_id.replace("/", "__") + ".log")
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

    def run_step(self, step_id: str, title: str, argv: Sequence[str], purpose: str = "other",
                 mode: str = "run", watcher: Optional["_EpochWatcher"] = None) -> None:
        self.say(f"-> {title}")
        try:
            wall = self.execute(step_id, argv, purpose, mode, watcher.poll if watcher else None)
        finally:
            if watcher is not None:
                watcher.close()
        self.say(f"   done in {format_duration(wall)}")

    def skip_step(self, step_id: str, title: str, reason: str, quiet: bool = False) -> None:
        self.record.step_skipped(step_id, reason)
        if not quiet:
            self.say(f"-- {title}: {reason}")

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> int:
        """Run the configured stages; returns the process exit code (0 done, 1 a step failed, 130 stopped)."""
        config = self.config
        self.preflight()
        config.output.mkdir(parents=True, exist_ok=True)
        lock = self._lock()
        previous_handler = None
        try:
            # a scheduler's SIGTERM (time limit, scancel) stops the running step cleanly, like Ctrl-C
            previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            self._check_compatible()
            self.ws.create()
            self.record.begin_invocation(config.argv, self._record_fields())
            self._print_header()
            status = "complete"
            if config.stage in ("all", "finish"):
                self._remove_tables()
            try:
                if config.stage in ("all", "prepare"):
                    self.prepare()
                if config.stage in ("all", "train"):
                    self.train_all()
                if config.stage in ("all", "finish"):
                    status = self.finish()
                elif config.stage != "all":
                    status = f"stage {config.stage} complete"
            except StepFailed as error:
                self.record.end_invocation("failed")
                self.say(f"\nERROR: {error}\nFix the cause and rerun the same command: finished steps are kept.")
                return 1
            except BenchmarkError:
                self.record.end_invocation("failed")
                raise
            except KeyboardInterrupt:
                self.record.end_invocation("interrupted")
                self.say("\ninterrupted; rerun the same command to continue")
                return 130
            self.record.end_invocation(status)
            if status == "incomplete":
                self.say("\nINCOMPLETE: the table leaves out the models whose training did not finish (see above); "
                         "fix what failed and rerun the same command to complete it")
                return 1
            return 0
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
            lock.close()

    def _remove_tables(self) -> None:
        """Tables of an earlier invocation go before this one builds its own: a run that stops early must not
        leave a table beside it that describes another state of the results."""
        from nnunet_poolskip.benchmark.report import TABLE_FILES

        for name in TABLE_FILES:
            (self.config.output / name).unlink(missing_ok=True)

    def preflight(self) -> None:
        """Check the inputs that can be checked before anything is written (BenchmarkError naming them)."""
        config, target = self.config, self.config.target
        if config.split_file is not None and not config.split_file.is_file():
            raise BenchmarkError(f"--split-file {config.split_file} does not exist")
        converted = target.raw_folder(self.ws)
        if converted is not None and (converted / "dataset.json").is_file():
            return
        if target.kind == "custom":
            raise BenchmarkError(f"data set {target.label} not found in nnUNet_raw ({self.ws.raw}); convert it "
                                 f"first or use --dataset btcv|amos with --raw")
        if config.stage not in ("all", "prepare"):
            raise BenchmarkError(f"data set {target.dataset_id} is not converted yet in {self.ws.raw}: run the "
                                 f"prepare stage first")
        if config.raw_source is None and not config.synthetic:
            raise BenchmarkError(f"--raw is required: the {target.kind.upper()} download folder (the "
                                 f"{self.settings.profile} profile does not make phantoms)")
        if config.raw_source is not None and not config.raw_source.is_dir():
            raise BenchmarkError(f"--raw {config.raw_source} is not a folder")

    def _lock(self):
        import fcntl

        handle = open(self.config.output / ".benchmark.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise BenchmarkError(f"another benchmark is running in {self.config.output} (lock "
                                 f"{self.config.output / '.benchmark.lock'} is held)") from None
        return handle

    def _check_compatible(self) -> None:
        """A results folder belongs to one data set and one protocol; refuse to mix runs."""
        previous = self.record.data
        key = self.settings.protocol_key()
        old_key = previous.get("protocol_key")
        if old_key is not None and old_key != key:
            changed = {k: (old_key.get(k), v) for k, v in key.items() if old_key.get(k) != v}
            raise BenchmarkError(
                f"{self.config.output} holds a run made with other settings ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                f"rerun with the same settings to continue it, or choose another --output")
        old_target = previous.get("dataset", {})
        if old_target and (old_target.get("id") != self.config.target.dataset_id
                           or old_target.get("kind") != self.config.target.kind):
            raise BenchmarkError(f"{self.config.output} holds a run on data set {old_target.get('id')} "
                                 f"({old_target.get('kind')}); choose another --output")

    def _record_fields(self) -> Dict:
        s = self.settings
        return {
            "profile": s.profile,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
            "protocol_key": s.protocol_key(),
            "dataset": {"kind": self.config.target.kind, "id": self.config.target.dataset_id,
                        "label": self.config.target.label, "synthetic": self.config.synthetic,
                        "raw_source": str(self.config.raw_source) if self.config.raw_source else None,
                        "split_file": str(self.config.split_file) if self.config.split_file else None},
            "paths": {"output": str(self.config.output), **self.ws.variables()},
            "models": {m.name: {"display": m.display, "trainer": t, "base": m.base}
                       for m, t in zip(self.config.models, self.config.trainers().values())},
            "baseline_note": "nnunet = nnUNetTrainerBaseline: nnUNetTrainer unchanged plus the NNUNET_POOLSKIP_* "
                             "short-schedule variables (removed from every step's environment unless the profile "
                             "sets them)",
            "seeds": {"synthetic_phantoms": s.synth_seed if self.config.synthetic else None,
                      "splits": "the converter's deterministic split (see split_file)",
                      "training": "not seeded: nnU-Net's training is not deterministic (random augmentation, "
                                  "patch sampling and cuDNN); folds differ between reruns"},
            "configuration": CONFIGURATION,
        }

    def _print_header(self) -> None:
        s, c = self.settings, self.config
        self.say(f"nnunet-poolskip benchmark, profile {s.profile}: {s.description}")
        if s.overridden:
            self.say(f"  overridden: {', '.join(f'{k}={getattr(s, k)}' for k in s.overridden)}")
        data = f"synthetic {c.target.kind.upper()}-like phantoms ({s.synthetic_cases} cases)" if c.synthetic \
            else (str(c.raw_source) if c.raw_source else "already converted")
        self.say(f"  data set: {c.target.label} (id {c.target.dataset_id}), from {data}")
        self.say(f"  output: {c.output}   nnU-Net folders: {self.ws.raw.parent if self.ws.raw.parent == self.ws.results.parent else self.ws.variables()}")

    def dry_run(self) -> None:
        """Print what a run would do now (steps to do, folds' states), and change nothing."""
        self._print_header()
        folder = self.config.target.raw_folder(self.ws)
        if folder is None:
            source = "synthetic phantoms" if self.config.synthetic else (self.config.raw_source or "?")
            self.say(f"to do: convert {source} -> nnUNet_raw, nnUNetv2_plan_and_preprocess"
                     + (", derive-plans" if self.settings.plans_preset else ""))
        else:
            self.say(f"raw data set: {folder}")
            done = self._preprocessing_complete()
            self.say(f"plans and preprocessing: {'done' if done else 'to do'}")
        self.print_training_plan(self.training_runs())
        for model in self.config.models:
            summary = self.summary_file(model)
            self.say(f"   {model.name:<20} evaluation summary: {'exists' if summary.is_file() else 'to do'}")

    # -------------------------------------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Raw data -> nnU-Net raw data set -> plans and preprocessed data -> derived plans."""
        self.ensure_raw_dataset()
        self.ensure_preprocessed()
        self.ensure_derived_plans()

    def ensure_raw_dataset(self) -> None:
        target, config = self.config.target, self.config
        existing = target.raw_folder(self.ws)
        if existing is not None and (existing / "dataset.json").is_file():
            self.skip_step("convert", f"convert to {existing.name}", "already converted")
        else:  # preflight() made sure there is a source
            source = config.raw_source if config.raw_source is not None else self.ensure_synthetic_raw()
            argv = [executable("nnunet-poolskip"), DATASET_KINDS[target.kind].converter, str(source),
                    "--dataset-id", str(target.dataset_id)]
            if config.split_file is not None:
                argv += ["--split-file", str(config.split_file)]
            if target.kind == "amos" and config.modality:
                argv += ["--modality", config.modality]
            self.run_step("convert", f"convert {source} -> nnUNet_raw (dataset {target.dataset_id})", argv)
        self._check_test_set()

    def synthetic_raw_folder(self) -> Path:
        return self.config.output / f"synthetic_{self.config.target.kind}_raw"

    def ensure_synthetic_raw(self) -> Path:
        folder = self.synthetic_raw_folder()
        argv = [executable("nnunet-poolskip"), "synth", "--kind", self.config.target.kind, "-o", str(folder),
                "--cases", str(self.settings.synthetic_cases), "--seed", str(self.settings.synth_seed), "--quiet"]
        if self.settings.synth_size:
            argv += ["--size", *map(str, self.settings.synth_size)]
        if self._synthetic_complete(folder):
            self.skip_step("synth", "synthetic phantoms", f"already in {folder}")
        else:
            self.run_step("synth", f"synthesise {self.settings.synthetic_cases} {self.config.target.kind.upper()}"
                                   f"-like phantoms -> {folder}", argv)
        return folder

    def _synthetic_complete(self, folder: Path) -> bool:
        # synth writes into a temporary folder and renames it at the end: the folder exists only when complete
        return folder.is_dir() and any(folder.iterdir()) and self.record.step("synth").get("status") != "failed"

    def _check_test_set(self) -> None:
        raw = self.raw_folder()
        import json

        ending = json.loads((raw / "dataset.json").read_text()).get("file_ending", ".nii.gz")
        tests = case_ids(raw / "imagesTs", ending) if (raw / "imagesTs").is_dir() else []
        if not tests:
            raise BenchmarkError(f"{raw} has no test images (imagesTs/<case>_0000{ending}): the benchmark predicts "
                                 f"and evaluates the held-out test set")
        missing = [c for c in tests if not (raw / "labelsTs" / f"{c}{ending}").is_file()]
        if missing:
            raise BenchmarkError(f"{raw / 'labelsTs'} lacks the reference labels of test cases {missing}")
        self.record.data["dataset"].update({"name": raw.name, "test_cases": tests,
                                            "n_train_val": len(case_ids(raw / "imagesTr", ending))})
        self.record.save()

    def preprocessed_folder(self) -> Path:
        return self.ws.preprocessed / self.dataset_name()

    def _preprocessing_complete(self) -> bool:
        import json

        folder = self.preprocessed_folder()
        plans_file = folder / f"{DEFAULT_PLANS}.json"
        if not plans_file.is_file() or self.record.step("plan_and_preprocess")["status"] in ("interrupted",
                                                                                               "failed", "running"):
            return False
        plans = json.loads(plans_file.read_text())
        data_folder = folder / plans["configurations"][CONFIGURATION]["data_identifier"]
        raw = self.raw_folder()
        ending = json.loads((raw / "dataset.json").read_text()).get("file_ending", ".nii.gz")
        cases = case_ids(raw / "imagesTr", ending)
        return data_folder.is_dir() and all((data_folder / f"{c}.pkl").is_file() for c in cases)

    def ensure_preprocessed(self) -> None:
        step = "plan_and_preprocess"
        if self._preprocessing_complete():
            self.skip_step(step, "nnUNetv2_plan_and_preprocess", "plans and preprocessed data exist")
        else:
            argv = [executable("nnUNetv2_plan_and_preprocess"), "-d", str(self.config.target.dataset_id),
                    "-c", CONFIGURATION]
            if self.config.target.kind == "custom":  # our converters already check geometry and label values
                argv.append("--verify_dataset_integrity")
            if self.settings.preprocess_processes is not None:  # fingerprint workers too (nnU-Net default 8)
                argv += ["-np", str(self.settings.preprocess_processes), "-npfp", str(self.settings.preprocess_processes)]
            self.run_step(step, "nnUNetv2_plan_and_preprocess (fingerprint, plans, preprocessing)", argv, "plan")

    def ensure_derived_plans(self) -> None:
        plans = self.config.plans
        folder = self.preprocessed_folder()
        target = folder / f"{plans}.json"
        if self.settings.plans_preset is not None:
            source = folder / f"{DEFAULT_PLANS}.json"
            if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
                self.skip_step("derive_plans", f"derive {plans}", "exists")
            else:
                argv = [executable("nnunet-poolskip"), "derive-plans", "-d", str(self.config.target.dataset_id),
                        "--preset", self.settings.plans_preset]
                self.run_step("derive_plans", f"derive plans {plans} (preset {self.settings.plans_preset})", argv)
        if not target.is_file():
            raise BenchmarkError(f"plans {target} not found")
        self.record.note("plans", plans_summary(target, CONFIGURATION))

    # ---------------------------------------------------------------------------------------- train
    def training_runs(self) -> List[TrainingRun]:
        """Every model x fold, in table order (a trainer shared by two models is listed once)."""
        runs, seen = [], set()
        folder = self.config.target.raw_folder(self.ws)
        # before conversion the name is unknown; no fold folder can exist yet, so every run is new
        name = folder.name if folder is not None else f"Dataset{self.config.target.dataset_id:03d}_(not converted)"
        for model in self.config.models:
            trainer = model.trainer_for(self.config.target.kind)
            for fold in self.settings.folds:
                if (trainer, fold) in seen:
                    continue
                seen.add((trainer, fold))
                folder = model_folder(self.ws.results, name, trainer, self.config.plans) / f"fold_{fold}"
                runs.append(TrainingRun(model, trainer, fold, folder))
        return runs

    def epochs(self) -> int:
        return self.settings.epochs or NNUNET_DEFAULT_EPOCHS

    def print_training_plan(self, runs: List[TrainingRun]) -> None:
        s = self.settings
        pending = [r for r in runs if r.state != FoldState.DONE]
        schedule = (f"{self.epochs()} epoch(s) x {s.iterations or NNUNET_DEFAULT_ITERATIONS} iterations"
                    + ("" if not s.short_schedule else f" (nnU-Net default: {NNUNET_DEFAULT_EPOCHS} x "
                                                       f"{NNUNET_DEFAULT_ITERATIONS})"))
        self.say(f"training: {len(runs)} runs ({len(self.config.models)} models x {len(s.folds)} folds "
                 f"{' '.join(map(str, s.folds))}), {schedule}, plans {self.config.plans}, device {s.device}"
                 + (f", {s.num_gpus} GPUs (DDP)" if s.num_gpus > 1 else "")
                 + f"; to do: {len(pending)} runs, {len(pending) * self.epochs()} epochs")
        for run in runs:
            self.say(f"   {run.model.name:<20} {run.trainer:<30} fold {run.fold}: {run.state.value}")
        if pending:
            self.say("   (time estimate after the first measured epoch)")

    def expected_schedule(self) -> Dict[str, int]:
        """Trainer attribute -> value of this run's schedule (nnU-Net's defaults where not overridden)."""
        s = self.settings
        values = (s.epochs, s.iterations, s.val_iterations)
        return {key: value or default for (key, default), value in zip(NNUNET_SCHEDULE.items(), values)}

    def check_schedules(self, runs: List[TrainingRun]) -> None:
        """Refuse folds trained (or started) with another schedule than this run's (see schedule_mismatch)."""
        problems = [p for p in (schedule_mismatch(r.folder, self.expected_schedule()) for r in runs
                                if r.state != FoldState.NEW) if p]
        if problems:
            raise BenchmarkError("; ".join(problems) + ". Use another --work / nnUNet_results for this run, or move "
                                                       "those folds away")

    def train_all(self) -> None:
        runs = self.training_runs()
        self.print_training_plan(runs)
        self.check_schedules(runs)
        for index, run in enumerate(runs):
            state = run.state
            if state in (FoldState.RESUME, FoldState.VALIDATE):
                for moved in set_aside_unreadable_checkpoints(run.folder):
                    self.say(f"   set aside the truncated checkpoint {moved} (killed while saving)")
                state = run.state
            title = f"train {run.model.name} fold {run.fold} ({run.trainer})"
            if state == FoldState.DONE:
                self.skip_step(run.step_id, title, "done (checkpoint_final.pth and validation exist)", quiet=True)
                continue
            argv = train_command(executable("nnUNetv2_train"), self.config.target.dataset_id, run.fold,
                                 run.trainer, self.config.plans, self.settings.device, self.settings.num_gpus, state)
            what = {FoldState.NEW: "", FoldState.RESUME: " [continuing from its checkpoint: --c]",
                    FoldState.VALIDATE: " [trained; running the unfinished final validation: --val]"}[state]
            remaining = [r for r in runs[index:] if r.state != FoldState.DONE]
            watcher = _EpochWatcher(self, run, time.time(), remaining) if state != FoldState.VALIDATE else None
            try:
                self.run_step(run.step_id, title + what, argv, "train", state.value, watcher)
            except StepFailed as error:
                if not self.config.keep_going:
                    raise
                self.say(f"   FAILED (--keep-going: continuing): {error}")

    def measured_first_epoch(self, run: TrainingRun, seconds: float, remaining: List[TrainingRun]) -> None:
        """Print the time estimate the first measured epoch of a trainer allows."""
        first_ever = not self._measured
        self._measured[run.trainer] = seconds
        per_run = seconds * self.epochs()
        same = [r for r in remaining if r.trainer == run.trainer]
        self.say(f"   [estimate] {run.model.name}: first epoch {seconds:.1f} s (includes start-up) -> about "
                 f"{format_duration(per_run)} per fold of {self.epochs()} epoch(s), plus nnU-Net's final "
                 f"validation; {len(same)} run(s) of this model to do: ~{format_duration(per_run * len(same))}")
        if first_ever and len(remaining) > len(same):
            self.say(f"   [estimate] all {len(remaining)} runs to do, if every model cost the same: "
                     f"~{format_duration(per_run * len(remaining))} (V-Net is usually slower than nnU-Net's "
                     f"U-Net; re-estimated as each model starts)")
        self.record.data.setdefault("first_epoch_seconds", {})[run.trainer] = seconds
        self.record.save()

    # --------------------------------------------------------------------------------------- finish
    def finish(self) -> str:
        """Predict, evaluate and compare the models whose folds are all trained; returns the run status."""
        runs = self.training_runs()
        self.check_schedules(runs)
        incomplete = {}
        for run in runs:
            if run.state != FoldState.DONE:
                incomplete.setdefault(run.model.name, []).append(f"fold {run.fold} {run.state.value}")
        if incomplete and not self.config.keep_going:
            raise BenchmarkError("training is not finished for: " + "; ".join(
                f"{m} ({', '.join(v)})" for m, v in incomplete.items())
                + ". Run the benchmark (or its train stage) first, or pass --keep-going for a table marked "
                  "INCOMPLETE")
        complete = [m for m in self.config.models if m.name not in incomplete]
        if not complete:
            raise BenchmarkError("no model has all its folds trained: nothing to compare")
        summaries = []
        for model in complete:
            predictions = self.predict(model)
            summaries.append(self.evaluate(model, predictions))
        self.compare(complete, summaries, incomplete)
        return "incomplete" if incomplete else "complete"

    def predictions_folder(self, model: Model) -> Path:
        return self.config.output / "predictions" / model.name

    def predict(self, model: Model) -> Path:
        import json

        trainer = model.trainer_for(self.config.target.kind)
        raw = self.raw_folder()
        ending = json.loads((raw / "dataset.json").read_text()).get("file_ending", ".nii.gz")
        tests = case_ids(raw / "imagesTs", ending)
        out = self.predictions_folder(model)
        checkpoints = [model_folder(self.ws.results, raw.name, trainer, self.config.plans) / f"fold_{f}" /
                       "checkpoint_final.pth" for f in self.settings.folds]
        newest_checkpoint = max(c.stat().st_mtime for c in checkpoints)
        outputs = [out / f"{c}{ending}" for c in tests]
        step = f"predict/{model.name}"
        made_as_asked = self._predictions_made_as_asked(out)
        if made_as_asked and all(p.is_file() and p.stat().st_mtime >= newest_checkpoint for p in outputs):
            self.skip_step(step, f"predict {model.name}", f"{len(outputs)} test predictions exist")
            return out
        if out.is_dir() and (not made_as_asked or any(p.is_file() and p.stat().st_mtime < newest_checkpoint
                                                      for p in outputs)):
            # made from other folds, other test-time settings or older checkpoints: never mix them with new ones
            shutil.rmtree(out)
        argv = [executable("nnunet-poolskip"), "predict", "-i", str(raw / "imagesTs"), "-o", str(out),
                "-d", str(self.config.target.dataset_id), "-c", CONFIGURATION, "-tr", trainer,
                "-p", self.config.plans, "-f", *map(str, self.settings.folds), "--device", self.settings.device,
                "--continue"]
        if not self.settings.test_time_mirroring:
            argv.append("--disable-tta")
        self.run_step(step, f"predict {len(tests)} test cases with {model.name} (softmax average of folds "
                            f"{' '.join(map(str, self.settings.folds))})", argv)
        return out

    def _predictions_made_as_asked(self, folder: Path) -> bool:
        """True when predict_args.json (written by predict) names this run's folds and test-time mirroring."""
        import json

        args_file = folder / "predict_args.json"
        if not args_file.is_file():
            return not folder.is_dir() or not any(folder.iterdir())
        recorded = json.loads(args_file.read_text())
        return ([int(f) for f in recorded.get("folds", [])] == list(self.settings.folds)
                and recorded.get("use_mirroring") == self.settings.test_time_mirroring)

    def summary_file(self, model: Model) -> Path:
        return self.config.output / "summaries" / f"{model.name}.json"

    def evaluate(self, model: Model, predictions: Path) -> Path:
        summary = self.summary_file(model)
        raw = self.raw_folder()
        step = f"evaluate/{model.name}"
        newest = max(p.stat().st_mtime for p in predictions.iterdir())
        if summary.is_file() and summary.stat().st_mtime >= newest:
            self.skip_step(step, f"evaluate {model.name}", f"{summary} exists")
            return summary
        summary.parent.mkdir(parents=True, exist_ok=True)
        argv = [executable("nnunet-poolskip"), "evaluate", str(raw / "labelsTs"), str(predictions),
                "--dataset-json", str(raw / "dataset.json"), "-o", str(summary),
                "-np", str(self.config.evaluate_processes), "--no-progress"]
        if self.config.nsd_tolerances:
            argv += ["--nsd-tolerances", self.config.nsd_tolerances]
        self.run_step(step, f"evaluate {model.name} (Dice, NSD, IoU)", argv)
        return summary

    def compare(self, models: List[Model], summaries: List[Path], incomplete: Dict[str, List[str]]) -> None:
        """``compare`` for all models and for each Pool Skip model against its own baseline (the paper's
        layout), then table.md / table.csv with the run's protocol and status above the numbers."""
        from nnunet_poolskip.benchmark.report import comparison_groups, compose_tables, short_title

        compare_root = self.config.output / "compare"
        outputs = {}
        for group_name, group in comparison_groups(models).items():
            folder = compare_root / group_name
            argv = [executable("nnunet-poolskip"), "compare", *[str(summaries[models.index(m)]) for m in group],
                    "--names", *[m.display for m in group], "-o", str(folder),
                    "--title", short_title(self.config)]
            self.run_step(f"compare/{group_name}", f"compare {' vs '.join(m.name for m in group)}", argv)
            outputs[group_name] = (group, folder)
        files = compose_tables(self.config, self.record.data, outputs, incomplete, self.config.output)
        self.say("")
        self.say(files["table"].read_text())
        self.say("wrote " + ", ".join(str(p) for p in files.values()))


class _EpochWatcher:
    """Follows nnU-Net's training log of a running fold: the time estimate after its first epoch, and a tqdm
    bar over the epochs when stderr is a terminal."""

    def __init__(self, runner: BenchmarkRunner, run: TrainingRun, started: float, remaining: List[TrainingRun]):
        self.runner, self.run, self.started, self.remaining = runner, run, started, remaining
        self.seen = 0
        self.bar = None
        self.show_bar = sys.stderr.isatty() and not runner.config.verbose

    def poll(self) -> None:
        if self.bar is None and self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.runner.epochs(), desc=f"   {self.run.model.name} fold {self.run.fold}",
                            unit="epoch", leave=False, file=sys.stderr)
        times = epoch_times(self.run.folder, self.started - 1)
        if len(times) > self.seen:
            if self.seen == 0 and self.run.trainer not in self.runner._measured:
                if self.bar is not None:
                    self.bar.clear()
                self.runner.measured_first_epoch(self.run, times[0], self.remaining)
            if self.bar is not None:
                self.bar.update(len(times) - self.seen)
                self.bar.set_postfix_str(f"{times[-1]:.1f} s/epoch")
            self.seen = len(times)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
