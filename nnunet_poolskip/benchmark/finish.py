"""The benchmark's finish stage: for every model whose folds are all trained, ``nnunet-poolskip predict`` (softmax
average of the folds) on the held-out test set -> ``evaluate`` -> ``compare`` -> table.md.

With ``--seeds``, prediction and evaluation run per model x seed (the ensemble of that seed's folds, into
``predictions/seed_<s>/<model>`` and ``summaries/seed_<s>/<model>.json``), and ``summaries/<model>.json``, what
``compare`` gets, holds each test case's values averaged over the seeds (evaluation/summaries.py). For every
baseline / Pool Skip pair ``nnunet-poolskip diagnose`` runs on every fold x seed (``diagnostics/``). Then
table.md with the evidence sections (evidence.py), and the figures: training curves, overlays, per-layer l2/l1.

Predictions are remade when they come from other folds, other test-time settings or older checkpoints, summaries
when their predictions are newer or they were computed with other NSD tolerances than ``--nsd-tolerances`` now
gives, diagnostics when the checkpoints are newer; nothing stale is mixed with new results.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.evidence import (
    DIFFERENCES_FIGURE,
    ES_CSV,
    ES_FIGURE,
    DiagnosedRun,
    es_rows,
    es_section,
    pair_compare_folder,
    plot_es_pair,
    seed_csv_columns,
    seed_section,
    seed_spreads,
    statistics_section,
    write_es_csv,
)
from nnunet_poolskip.benchmark.prepare import file_ending
from nnunet_poolskip.benchmark.profiles import Settings
from nnunet_poolskip.benchmark.protocol import CONFIGURATION, Model
from nnunet_poolskip.benchmark.steps import Steps
from nnunet_poolskip.benchmark.train import Training
from nnunet_poolskip.benchmark.training_runs import FINAL_CHECKPOINT, FoldState, model_folder
from nnunet_poolskip.benchmark.workspace import case_ids, executable, seed_folder_name
from nnunet_poolskip.evaluation.summaries import average_summaries, is_averaged_summary
from nnunet_poolskip.utilities.atomic import atomic_path, write_json_atomic

SMOKE_DEAD_UNIT_CASES = 2
"""Cases (one patch each) diagnose runs for the dead units in a smoke-scale run: enough to show the pipeline."""


def dead_unit_cases(settings: Settings) -> int:
    """How many preprocessed cases ``diagnose`` runs per model for the dead units: few in a smoke run, diagnose's
    default otherwise."""
    from nnunet_poolskip.diagnostics.model_folder import DEFAULT_NUM_CASES

    return SMOKE_DEAD_UNIT_CASES if settings.smoke else DEFAULT_NUM_CASES


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
                incomplete.setdefault(run.model.name, []).append(f"{run.label} {run.state.value}")
        if incomplete and not self.config.keep_going:
            raise BenchmarkError("training is not finished for: " + "; ".join(
                f"{m} ({', '.join(v)})" for m, v in incomplete.items())
                + ". Run the benchmark (or its train stage) first, or pass --keep-going for a table marked "
                  "INCOMPLETE")
        complete = [m for m in self.config.models if m.name not in incomplete]
        if not complete:
            raise BenchmarkError("no model has all its folds trained: nothing to compare")
        seed_summaries: Dict[str, Dict[Optional[int], Path]] = {}
        for seed in self.settings.run_seeds:  # seed by seed, as trained
            for model in complete:
                predictions = self.predict(model, seed)
                seed_summaries.setdefault(model.name, {})[seed] = self.evaluate(model, predictions, seed)
        summaries = [self.model_summary(model, seed_summaries[model.name]) for model in complete]
        diagnosed = self.diagnose(complete)
        self.compare(complete, summaries, incomplete, seed_summaries, diagnosed)
        if self.settings.real_ct and self.config.target.kind == "btcv":  # the demo: from phantoms to a real scan
            from nnunet_poolskip.benchmark.real_ct import REAL_CT_MODELS, segment_real_ct

            segment_real_ct(self, [m for m in complete if m.name in REAL_CT_MODELS], self.steps.say,
                            seed=self.settings.run_seeds[0])
        return "incomplete" if incomplete else "complete"

    def model_folder(self, model: Model, seed: Optional[int]) -> Path:
        """nnU-Net's folder of the model's runs with ``seed`` (None: the unseeded runs)."""
        return model_folder(self.ws.results_for_seed(seed), self.config.dataset_name(),
                            model.trainer_for(self.config.target.kind), self.config.plans)

    def predictions_folder(self, model: Model, seed: Optional[int] = None) -> Path:
        """``predictions/<model>``, or ``predictions/seed_<s>/<model>`` for a seed's ensemble."""
        return self.config.output / "predictions" / self._seed_part(seed) / model.name

    @staticmethod
    def _seed_part(seed: Optional[int]) -> str:
        return "" if seed is None else seed_folder_name(seed)

    def _step(self, kind: str, model: Model, seed: Optional[int]) -> str:
        return f"{kind}/{model.name}" + ("" if seed is None else f"/{seed_folder_name(seed)}")

    def checkpoints(self, model: Model, seed: Optional[int]) -> List[Path]:
        """The final checkpoints of the model's folds with ``seed``."""
        return [self.model_folder(model, seed) / f"fold_{f}" / FINAL_CHECKPOINT for f in self.settings.folds]

    def predict(self, model: Model, seed: Optional[int] = None) -> Path:
        raw = self.config.raw_folder()
        return self.predict_images(model, seed, raw / "imagesTs", self.predictions_folder(model, seed),
                                   self._step("predict", model, seed), "test")

    def predict_images(self, model: Model, seed: Optional[int], images: Path, out: Path, step: str,
                       what: str) -> Path:
        """``nnunet-poolskip predict`` of every case in ``images`` (an nnU-Net-style folder) into ``out`` with the
        model's fold ensemble, as this run's settings say; skipped when ``out`` already holds them, made so and newer
        than the checkpoints. ``what`` names the cases in the log (``test``)."""
        trainer = model.trainer_for(self.config.target.kind)
        ending = file_ending(self.config.raw_folder())
        tests = case_ids(images, ending)
        newest_checkpoint = max(c.stat().st_mtime for c in self.checkpoints(model, seed))
        outputs = [out / f"{c}{ending}" for c in tests]
        seeded = "" if seed is None else f" trained with seed {seed}"
        made_as_asked = self._predictions_made_as_asked(out)
        if made_as_asked and all(p.is_file() and p.stat().st_mtime >= newest_checkpoint for p in outputs):
            self.steps.skip(step, f"predict {model.name}{seeded}", f"{len(outputs)} {what} predictions exist")
            return out
        if out.is_dir() and (not made_as_asked or any(p.is_file() and p.stat().st_mtime < newest_checkpoint
                                                      for p in outputs)):
            # made from other folds, other test-time settings or older checkpoints: never mix them with new ones
            shutil.rmtree(out)
        argv = [executable("nnunet-poolskip"), "predict", "-i", str(images), "-o", str(out),
                "-d", str(self.config.target.dataset_id), "-c", CONFIGURATION, "-tr", trainer,
                "-p", self.config.plans, "-f", *map(str, self.settings.folds), "--device", self.settings.device,
                "--continue"]
        if not self.settings.test_time_mirroring:
            argv.append("--disable-tta")
        if self.settings.cpu_autocast_mode()[0] != "off":
            argv += ["--cpu-autocast", self.settings.cpu_autocast_mode()[0]]
        self.steps.run(step, f"predict {len(tests)} {what} case(s) with {model.name} (softmax average of folds "
                             f"{' '.join(map(str, self.settings.folds))}{seeded})", argv, seed=seed)
        return out

    def _predictions_made_as_asked(self, folder: Path) -> bool:
        """True when predict_args.json (written by predict) names this run's folds and test-time mirroring."""
        args_file = folder / "predict_args.json"
        if not args_file.is_file():
            return not folder.is_dir() or not any(folder.iterdir())
        recorded = json.loads(args_file.read_text())
        return ([int(f) for f in recorded.get("folds", [])] == list(self.settings.folds)
                and recorded.get("use_mirroring") == self.settings.test_time_mirroring
                and recorded.get("cpu_autocast", "off") == self.settings.cpu_autocast_mode()[0])

    def summary_file(self, model: Model, seed: Optional[int] = None) -> Path:
        """``summaries/<model>.json`` (the unseeded run's, or the seed average: what compare gets), or
        ``summaries/seed_<s>/<model>.json`` (one seed's ensemble)."""
        return self.config.output / "summaries" / self._seed_part(seed) / f"{model.name}.json"

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

    def evaluate(self, model: Model, predictions: Path, seed: Optional[int] = None) -> Path:
        summary = self.summary_file(model, seed)
        raw = self.config.raw_folder()
        step = self._step("evaluate", model, seed)
        newest = max(p.stat().st_mtime for p in predictions.iterdir())
        title = f"evaluate {model.name}" + ("" if seed is None else f" seed {seed}")
        if summary.is_file() and summary.stat().st_mtime >= newest:
            recorded = json.loads(summary.read_text())
            # summaries/<model>.json may hold the seed average of an earlier --seeds run: never take it for
            # evaluate's; nor a summary computed with other NSD tolerances
            if not is_averaged_summary(recorded):
                if recorded.get("nsd_tolerance_mm") == self.requested_tolerances():
                    self.steps.skip(step, title, f"{summary} exists")
                    return summary
                title += f"; {summary.name} was computed with other NSD tolerances"
        summary.parent.mkdir(parents=True, exist_ok=True)
        argv = [executable("nnunet-poolskip"), "evaluate", str(raw / "labelsTs"), str(predictions),
                "--dataset-json", str(raw / "dataset.json"), "-o", str(summary),
                "-np", str(self.config.evaluate_processes), "--no-progress"]
        if self.config.nsd_tolerances:
            argv += ["--nsd-tolerances", self.config.nsd_tolerances]
        self.steps.run(step, title + " (Dice, NSD, IoU)", argv)
        return summary

    def model_summary(self, model: Model, per_seed: Mapping[Optional[int], Path]) -> Path:
        """The summary compare gets: the unseeded run's own, or ``summaries/<model>.json`` with each case's
        values averaged over the seeds (rewritten every time: it is cheap, and then never stale)."""
        if list(per_seed) == [None]:
            return per_seed[None]
        path = self.summary_file(model)
        seeds = sorted(per_seed)
        averaged = average_summaries([per_seed[s] for s in seeds], [f"seed {s}" for s in seeds])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(averaged, path)
        self.steps.say(f"-- {model.name}: per-case values averaged over seeds {' '.join(map(str, seeds))} -> {path}")
        return path

    def diagnostics_folder(self, model: Model, seed: Optional[int], fold: int) -> Path:
        return self.config.output / "diagnostics" / model.name / self._seed_part(seed) / f"fold_{fold}"

    def diagnose(self, models: Sequence[Model]) -> List[DiagnosedRun]:
        """``nnunet-poolskip diagnose`` of every fold x seed of every baseline / Pool Skip pair among ``models``
        (baseline with --compare the Pool Skip model, a few cases for the dead units); a run whose diagnostics
        are newer than both checkpoints, made with as many cases, is kept."""
        from nnunet_poolskip.benchmark.report import baseline_pairs, figure_caveat

        diagnosed = []
        cases = dead_unit_cases(self.settings)
        caveat = figure_caveat(self.config)
        for seed in self.settings.run_seeds:
            for base, model in baseline_pairs(models):
                for fold in self.settings.folds:
                    base_fold = self.model_folder(base, seed) / f"fold_{fold}"
                    model_fold = self.model_folder(model, seed) / f"fold_{fold}"
                    out = self.diagnostics_folder(model, seed, fold)
                    result = out / "diagnostics.json"
                    run = DiagnosedRun(base, model, seed, fold, result)
                    diagnosed.append(run)
                    step = self._step("diagnose", model, seed) + f"/fold_{fold}"
                    title = f"diagnose {base.name} vs {model.name} {'' if seed is None else f'seed {seed} '}fold {fold}"
                    newest = max((f / FINAL_CHECKPOINT).stat().st_mtime for f in (base_fold, model_fold))
                    if result.is_file() and result.stat().st_mtime >= newest and \
                            (json.loads(result.read_text()).get("data") or {}).get("n_samples") == cases:
                        self.steps.skip(step, title, f"{result} exists", quiet=True)
                        continue
                    argv = [executable("nnunet-poolskip"), "diagnose", str(base_fold.parent), "-f", str(fold),
                            "--compare", str(model_fold.parent), "--num-cases", str(cases),
                            "--device", self.settings.device, "-o", str(out)]
                    if caveat:
                        argv += ["--caveat", caveat]
                    self.steps.run(step, title + f" (l2/l1, dead units on {cases} cases)", argv, seed=seed)
        return diagnosed

    def compare(self, models: List[Model], summaries: List[Path], incomplete: Dict[str, List[str]],
                seed_summaries: Mapping[str, Mapping[Optional[int], Path]],
                diagnosed: Sequence[DiagnosedRun]) -> None:
        """``compare`` for all models and for each Pool Skip model against its own baseline (the paper's
        layout), then table.md / table.csv with the run's protocol and status above the numbers and the evidence
        sections below them, and the figures."""
        from nnunet_poolskip.benchmark.report import (
            baseline_pairs,
            comparison_groups,
            compose_tables,
            figure_caveat,
            short_title,
        )

        compare_root = self.config.output / "compare"
        caveat = figure_caveat(self.config)
        outputs = {}
        for group_name, group in comparison_groups(models).items():
            folder = compare_root / group_name
            argv = [executable("nnunet-poolskip"), "compare", *[str(summaries[models.index(m)]) for m in group],
                    "--names", *[m.display for m in group], "-o", str(folder),
                    "--title", short_title(self.config)]
            if caveat:
                argv += ["--caveat", caveat]
            self.steps.run(f"compare/{group_name}", f"compare {' vs '.join(m.name for m in group)}", argv)
            outputs[group_name] = (group, folder)
        pairs = baseline_pairs(models)
        sections, columns = [], None
        if self.settings.seeds:
            spreads = seed_spreads(models, seed_summaries)
            sections += seed_section(models, spreads, pairs) + [""]
            columns = seed_csv_columns(spreads)
        sections += statistics_section(pairs, outputs, bool(self.settings.seeds)) + [""]
        rows = es_rows(diagnosed)
        sections += es_section(pairs, rows)
        files = compose_tables(self.config, self.steps.record.data, outputs, incomplete, self.config.output,
                               sections, columns)
        for base, model in pairs:
            folder = pair_compare_folder(base, model, outputs)
            if folder is not None and (folder / "differences.png").is_file():
                files[f"differences_{model.name}"] = self.config.output / DIFFERENCES_FIGURE.format(model=model.name)
                with atomic_path(files[f"differences_{model.name}"]) as tmp:
                    shutil.copyfile(folder / "differences.png", tmp)
        if rows:
            files["es_csv"] = self.config.output / ES_CSV
            write_es_csv(rows, files["es_csv"])
            for base, model in pairs:
                path = self.config.output / ES_FIGURE.format(model=model.name)
                plot_es_pair([r for r in diagnosed if r.model.name == model.name], path, caveat)
                files[f"es_{model.name}"] = path
        files.update(self.figures(models, seed_summaries, caveat))
        self.steps.say("")
        self.steps.say(files["table"].read_text())
        self.steps.say("wrote " + ", ".join(str(p) for p in files.values()))

    def figures(self, models: Sequence[Model], seed_summaries: Mapping[str, Mapping[Optional[int], Path]],
                caveat: Optional[str]) -> Dict[str, Path]:
        """training_curves.png (nnU-Net's logged losses and pseudo Dice of every fold x seed) and overlays.png (test
        cases with the lowest, median and highest foreground Dice of the first model; the first seed's
        predictions with that seed's per-case Dice)."""
        from nnunet_poolskip.diagnostics.training_curves import plot_training_curves
        from nnunet_poolskip.evaluation.overlays import plot_overlays

        output, raw = self.config.output, self.config.raw_folder()
        runs = self.training.runs()
        kind = self.config.target.kind
        curves = output / "training_curves.png"
        plot_training_curves({m.display: [r.folder for r in runs if r.trainer == m.trainer_for(kind)] for m in models},
                             curves, caveat)
        first_seed = self.settings.run_seeds[0]
        if first_seed is not None:  # the figure shows one seed's predictions: its title says which
            caveat = "; ".join(filter(None, [caveat, f"predictions of seed {first_seed} (of seeds "
                                                      f"{' '.join(map(str, self.settings.run_seeds))})"]))
        overlays = output / "overlays.png"
        plot_overlays(raw / "imagesTs", raw / "labelsTs",
                      {m.display: self.predictions_folder(m, first_seed) for m in models},
                      {m.display: json.loads(Path(seed_summaries[m.name][first_seed]).read_text()) for m in models},
                      overlays, caveat)
        return {"training_curves": curves, "overlays": overlays}
