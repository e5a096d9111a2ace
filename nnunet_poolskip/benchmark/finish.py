"""The benchmark's finish stage: for every model whose folds are all trained, ``nnunet-poolskip predict`` (softmax
average of the folds) on the held-out test set -> ``evaluate`` -> ``compare`` -> table.md.

Predictions are remade when they come from other folds, other test-time settings or older checkpoints, and
summaries when their predictions are newer or they were computed with other NSD tolerances than
``--nsd-tolerances`` now gives; nothing stale is mixed with new results.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.prepare import file_ending
from nnunet_poolskip.benchmark.protocol import CONFIGURATION, Model
from nnunet_poolskip.benchmark.steps import Steps
from nnunet_poolskip.benchmark.train import Training
from nnunet_poolskip.benchmark.training_runs import FoldState, model_folder
from nnunet_poolskip.benchmark.workspace import case_ids, executable


class Finish:
    """Predicts, evaluates and compares the trained models (see the module docstring)."""

    def __init__(self, config: BenchmarkConfig, steps: Steps, training: Training):
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.steps = steps
        self.training = training

    def run(self) -> str:
        """Predict, evaluate and compare the models whose folds are all trained; returns the run status."""
        runs = self.training.runs()
        self.training.check_schedules(runs)
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
        trainer = model.trainer_for(self.config.target.kind)
        raw = self.config.raw_folder()
        ending = file_ending(raw)
        tests = case_ids(raw / "imagesTs", ending)
        out = self.predictions_folder(model)
        checkpoints = [model_folder(self.ws.results, raw.name, trainer, self.config.plans) / f"fold_{f}" /
                       "checkpoint_final.pth" for f in self.settings.folds]
        newest_checkpoint = max(c.stat().st_mtime for c in checkpoints)
        outputs = [out / f"{c}{ending}" for c in tests]
        step = f"predict/{model.name}"
        made_as_asked = self._predictions_made_as_asked(out)
        if made_as_asked and all(p.is_file() and p.stat().st_mtime >= newest_checkpoint for p in outputs):
            self.steps.skip(step, f"predict {model.name}", f"{len(outputs)} test predictions exist")
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
        self.steps.run(step, f"predict {len(tests)} test cases with {model.name} (softmax average of folds "
                             f"{' '.join(map(str, self.settings.folds))})", argv)
        return out

    def _predictions_made_as_asked(self, folder: Path) -> bool:
        """True when predict_args.json (written by predict) names this run's folds and test-time mirroring."""
        args_file = folder / "predict_args.json"
        if not args_file.is_file():
            return not folder.is_dir() or not any(folder.iterdir())
        recorded = json.loads(args_file.read_text())
        return ([int(f) for f in recorded.get("folds", [])] == list(self.settings.folds)
                and recorded.get("use_mirroring") == self.settings.test_time_mirroring)

    def summary_file(self, model: Model) -> Path:
        return self.config.output / "summaries" / f"{model.name}.json"

    def requested_tolerances(self) -> Dict[str, float]:
        """NSD tolerance (mm) per label value, as ``evaluate`` resolves this run's ``--nsd-tolerances`` for the
        data set (the same resolution as the evaluate command: its default, its AMOS spellings)."""
        from nnunet_poolskip.dataset_conversion.labels import download_name_aliases
        from nnunet_poolskip.evaluation.evaluate_predictions import labels_from_dataset_json
        from nnunet_poolskip.evaluation.nsd_tolerances import DEFAULT_TOLERANCE_MM, resolve_tolerances

        labels = labels_from_dataset_json(self.config.raw_folder() / "dataset.json")
        try:
            tolerances, _ = resolve_tolerances(labels, DEFAULT_TOLERANCE_MM, self.config.nsd_tolerances,
                                               download_name_aliases())
        except (ValueError, FileNotFoundError) as error:
            raise BenchmarkError(f"--nsd-tolerances: {error}") from None
        return {str(label): mm for label, mm in tolerances.items()}

    def _summary_tolerances(self, summary: Path):
        """The NSD tolerances an existing summary was computed with (None: unreadable)."""
        try:
            return json.loads(summary.read_text()).get("nsd_tolerance_mm")
        except (json.JSONDecodeError, OSError, AttributeError):
            return None

    def evaluate(self, model: Model, predictions: Path) -> Path:
        summary = self.summary_file(model)
        raw = self.config.raw_folder()
        step = f"evaluate/{model.name}"
        newest = max(p.stat().st_mtime for p in predictions.iterdir())
        title = f"evaluate {model.name} (Dice, NSD, IoU)"
        if summary.is_file() and summary.stat().st_mtime >= newest:
            if self._summary_tolerances(summary) == self.requested_tolerances():
                self.steps.skip(step, f"evaluate {model.name}", f"{summary} exists")
                return summary
            title += f"; {summary.name} was computed with other NSD tolerances"
        summary.parent.mkdir(parents=True, exist_ok=True)
        argv = [executable("nnunet-poolskip"), "evaluate", str(raw / "labelsTs"), str(predictions),
                "--dataset-json", str(raw / "dataset.json"), "-o", str(summary),
                "-np", str(self.config.evaluate_processes), "--no-progress"]
        if self.config.nsd_tolerances:
            argv += ["--nsd-tolerances", self.config.nsd_tolerances]
        self.steps.run(step, title, argv)
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
            self.steps.run(f"compare/{group_name}", f"compare {' vs '.join(m.name for m in group)}", argv)
            outputs[group_name] = (group, folder)
        files = compose_tables(self.config, self.steps.record.data, outputs, incomplete, self.config.output)
        self.steps.say("")
        self.steps.say(files["table"].read_text())
        self.steps.say("wrote " + ", ".join(str(p) for p in files.values()))
