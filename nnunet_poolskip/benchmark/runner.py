"""The benchmark runner: the paper's Table 3 protocol from the raw data to the comparison table.

Three stages, each a sequence of steps (a subprocess of a real command line, see steps.py), each step skipped
when its output already exists:

    prepare  synth (demo, without --raw) -> convert-btcv / convert-amos -> nnUNetv2_plan_and_preprocess
             -> derive-plans (profiles with a plans preset)                                     prepare.py
    train    nnUNetv2_train for every model x fold (state read from nnU-Net's checkpoints,
             see training_runs.py)                                                              train.py
    finish   nnunet-poolskip predict (softmax average of the folds) -> evaluate -> compare
             -> table.md                                                                        finish.py

This module checks the inputs, holds the results folder's lock, keeps run.json and runs the stages asked for.
A rerun with the same arguments continues where the last one stopped. run.json records everything.
"""
from __future__ import annotations

import signal
from typing import Dict, Optional, TextIO

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.finish import Finish
from nnunet_poolskip.benchmark.prepare import Preparation
from nnunet_poolskip.benchmark.protocol import CONFIGURATION
from nnunet_poolskip.benchmark.runinfo import RunRecord
from nnunet_poolskip.benchmark.steps import StepFailed, Steps
from nnunet_poolskip.benchmark.train import Training
from nnunet_poolskip.training.schedule import SEED_VARIABLE
from nnunet_poolskip.utilities.cpu_precision import CPU_AUTOCAST_VARIABLE


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class BenchmarkRunner:
    """Runs (or continues) one benchmark; see the module docstring."""

    def __init__(self, config: BenchmarkConfig, out: Optional[TextIO] = None):
        """``out``: where progress and the table are printed (default: sys.stdout at the time of printing)."""
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.record = RunRecord(config.output / "run.json")
        self.steps = Steps(config, self.record, out)
        self.preparation = Preparation(config, self.steps)
        self.training = Training(config, self.steps)
        self.finishing = Finish(config, self.steps, self.training)

    def say(self, message: str = "") -> None:
        self.steps.say(message)

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
                    self.preparation.run()
                if config.stage in ("all", "train"):
                    self.training.run()
                if config.stage in ("all", "finish"):
                    if config.stage == "finish":  # record the test cases for the table, as the prepare stage does
                        self.preparation.check_test_set()
                    status = self.finishing.run()
                elif config.stage != "all":
                    status = f"stage {config.stage} complete"
            except StepFailed as error:
                self.record.end_invocation("failed")
                self.say(f"\nERROR: {error}\nFix the cause and rerun the same command: finished steps are kept. "
                         f"{config.output} keeps this run's settings; to change them (e.g. --cases), use another "
                         f"--output.")
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
            self._unlock(lock)

    def _remove_tables(self) -> None:
        """Tables of an earlier invocation go before this one builds its own: a run that stops early must not
        leave a table beside it that describes another state of the results."""
        from nnunet_poolskip.benchmark.cross_validation import CV_FOLDER
        from nnunet_poolskip.benchmark.evidence import EVIDENCE_FILES
        from nnunet_poolskip.benchmark.report import TABLE_FILES

        for pattern in TABLE_FILES + EVIDENCE_FILES + tuple(f"{CV_FOLDER}/{p}" for p in TABLE_FILES + EVIDENCE_FILES):
            for path in self.config.output.glob(pattern):
                path.unlink()

    def preflight(self) -> None:
        """Check the inputs that can be checked before anything is written (BenchmarkError naming them)."""
        config, target = self.config, self.config.target
        if config.split_file is not None and not config.split_file.is_file():
            raise BenchmarkError(f"--split-file {config.split_file} does not exist")
        if config.nsd_tolerances:  # a bad table would otherwise surface in the finish stage, after the training
            from nnunet_poolskip.evaluation.nsd_tolerances import load_tolerance_table

            try:
                load_tolerance_table(config.nsd_tolerances)
            except (ValueError, FileNotFoundError) as error:
                raise BenchmarkError(f"--nsd-tolerances: {error}") from None
        converted = target.raw_folder(self.ws)
        if target.kind == "custom" and converted is not None:
            from nnunet_poolskip.benchmark.dataset_checks import check_raw_dataset

            if "_" in target.label and converted.name != target.label:
                raise BenchmarkError(f"data set {target.label} not found in nnUNet_raw ({self.ws.raw}); id "
                                     f"{target.dataset_id} is {converted.name} there")

            # every label map is read once, before the preprocessing; later invocations check the files only
            check_raw_dataset(converted, read_labels=not self.preparation.preprocessing_complete())
        if converted is not None and (converted / "dataset.json").is_file():
            self.preparation.check_existing_conversion(converted)  # before any stage relies on it
            self.preparation.test_cases()  # the protocol's test set, when it needs one
            return
        if target.kind == "custom":
            raise BenchmarkError(f"data set {target.label} not found in nnUNet_raw ({self.ws.raw}); convert it "
                                 f"first or use --dataset btcv|amos with --raw")
        if "test" in config.protocols and config.no_test_split:
            raise BenchmarkError(f"--split-file none leaves no test set: --protocol {config.resolved_protocol()} "
                                 f"needs one; use --protocol cv")
        if config.stage not in ("all", "prepare"):
            raise BenchmarkError(f"data set {target.dataset_id} is not converted yet in {self.ws.raw}: run the "
                                 f"prepare stage first")
        if config.raw_source is None and not config.synthetic:
            raise BenchmarkError(f"--raw is required: the {target.kind.upper()} download folder (the "
                                 f"{self.settings.profile} profile does not make phantoms)")
        if config.raw_source is not None and not config.raw_source.is_dir():
            raise BenchmarkError(f"--raw {config.raw_source} is not a folder")

    def _lock_path(self):
        return self.config.output / ".benchmark.lock"

    def _lock(self):
        """Hold an exclusive lock on ``<output>/.benchmark.lock`` (BenchmarkError when another run holds it).

        The file is removed when the run ends (:meth:`_unlock`); a lock won on a file that another run removed
        meanwhile is not a lock, so the file must still be the one at the path once the lock is held.
        """
        import fcntl
        import os

        path = self._lock_path()
        for _ in range(10):
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise BenchmarkError(f"another benchmark is running in {self.config.output} (lock {path} is "
                                     f"held)") from None
            try:
                if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()  # removed by the run that held it just before: lock the new file instead
        raise BenchmarkError(f"could not lock {path}: it keeps being replaced")

    def _unlock(self, handle) -> None:
        """Remove the lock file, then release the lock (a run killed with SIGKILL leaves it; harmless)."""
        try:
            self._lock_path().unlink(missing_ok=True)
        finally:
            handle.close()

    def _check_compatible(self) -> None:
        """A results folder belongs to one data set and one protocol; refuse to mix runs."""
        previous = self.record.data
        key = self.settings.protocol_key()
        old_key = previous.get("protocol_key")
        if old_key is not None:  # run.json of a version that trained 3d_fullres only
            old_key = {"configuration": CONFIGURATION, **old_key}
        if old_key is not None and old_key != key:
            changed = {k: (old_key.get(k), v) for k, v in key.items() if old_key.get(k) != v}
            changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
            raise BenchmarkError(
                f"{self.config.output} holds a run made with other settings ({changes}); "
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
            "models": {m.name: {"display": m.display, "trainer": t, "base": m.base, "plans": self.config.plans_for(m)}
                       for m, t in zip(self.config.models, self.config.trainers().values())},
            "baseline_note": "nnunet = nnUNetTrainerBaseline: nnUNetTrainer unchanged plus the NNUNET_POOLSKIP_* "
                             "short-schedule variables (removed from every step's environment unless the profile "
                             "sets them)",
            "seeds": {"synthetic_phantoms": s.synth_seed if self.config.synthetic else None,
                      "splits": "the converter's deterministic split (see split_file)",
                      "training": (list(s.seeds) if s.seeds else
                                   "not seeded: nnU-Net's training is not deterministic (random augmentation, "
                                   "patch sampling and cuDNN); folds differ between reruns"),
                      "training_note": (f"each seed S: {SEED_VARIABLE}=S for every nnUNetv2_train, its runs in "
                                        f"{self.ws.results}/seed_S; bit-identical reruns only on the CPU with "
                                        f"nnUNet_n_proc_DA=0 (see training/base.py)")
                      if s.seeds else None},
            "configuration": s.configuration,
            "protocol": self.config.resolved_protocol(),
            "cpu_autocast": dict(zip(("mode", "reason"), s.cpu_autocast_mode()), requested=s.cpu_autocast,
                                 variable=CPU_AUTOCAST_VARIABLE),
        }

    def _print_header(self) -> None:
        s, c = self.settings, self.config
        self.say(f"nnunet-poolskip benchmark, profile {s.profile}: {s.description}")
        if s.overridden:
            self.say(f"  overridden: {', '.join(f'{k}={getattr(s, k)}' for k in s.overridden)}")
        data = f"synthetic {c.target.kind.upper()}-like phantoms ({s.synthetic_cases} cases)" if c.synthetic \
            else (str(c.raw_source) if c.raw_source else "already converted")
        self.say(f"  data set: {c.target.label} (id {c.target.dataset_id}), from {data}")
        folders = self.ws.raw.parent if self.ws.raw.parent == self.ws.results.parent else self.ws.variables()
        self.say(f"  output: {c.output}   nnU-Net folders: {folders}")
        if not c.verbose:  # among the first lines: where to look when something goes wrong
            self.say(f"  full logs: {c.output / 'logs'}/ (one file per step; --verbose shows them here instead)")
        protocol = c.resolved_protocol()
        chosen = "" if c.protocol else (" (chosen: the data set has no test labels)" if protocol == "cv"
                                        else " (chosen: the data set has a held-out test set)")
        self.say(f"  protocol: {protocol}{chosen}; configuration {c.configuration}"
                 + ("; --protocol cv|test|both to choose" if not c.protocol else ""))
        if s.device == "cpu":
            self.say(f"  precision: {s.cpu_autocast_mode()[1]}")

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
            done = self.preparation.preprocessing_complete()
            self.say(f"plans and preprocessing: {'done' if done else 'to do'}")
        self.training.print_plan(self.training.runs())
        for protocol in self.config.protocols:
            for seed in self.settings.run_seeds:
                for model in self.config.models:
                    summary = self.finishing.summary_file(model, seed, protocol)
                    what = "evaluation summary" + ("" if protocol == "test" else " (cross-validation)")
                    self.say(f"   {model.name:<20} {'' if seed is None else f'seed {seed} '}{what}: "
                             f"{'exists' if summary.is_file() else 'to do'}")
