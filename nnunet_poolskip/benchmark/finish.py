"""The benchmark's finish stage: for every model whose folds are all trained, ``nnunet-poolskip predict`` (softmax
average of the folds) on the held-out test set -> ``evaluate`` -> ``compare`` -> table.md.

With ``--seeds``, prediction and evaluation run per model x seed (the ensemble of that seed's folds, into
``predictions/seed_<s>/<model>`` and ``summaries/seed_<s>/<model>.json``); ``compare`` gets every seed's summary under
its model's name, so that its headline statistics cover retraining and case sampling, and ``summaries/<model>.json``
holds each test case's values averaged over the seeds (evaluation/summaries.py) for reference. For every
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
from nnunet_poolskip.benchmark.cross_validation import CV_FOLDER, CrossValidation
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
from nnunet_poolskip.benchmark.protocol import Model
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
        self.cross_validation = CrossValidation(config, steps)

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
        protocols = self.config.protocols
        if "cv" in protocols:  # every fold's out-of-fold predictions are there, before anything is evaluated
            self.cross_validation.check_complete({m.name: {s: self.model_folder(m, s) for s in self.settings.run_seeds}
                                                  for m in complete})
        scored = {}
        for protocol in protocols:
            seed_summaries: Dict[str, Dict[Optional[int], Path]] = {}
            for seed in self.settings.run_seeds:  # seed by seed, as trained
                for model in complete:
                    if protocol == "test":
                        predictions = self.predict(model, seed)
                    else:  # nnU-Net's final validation of each fold already predicted its held-out cases
                        predictions = self.cross_validation.link(model.name, seed, self.model_folder(model, seed))
                    seed_summaries.setdefault(model.name, {})[seed] = self.evaluate(model, predictions, seed,
                                                                                    protocol)
            summaries = [self.model_summary(model, seed_summaries[model.name], protocol) for model in complete]
            scored[protocol] = (summaries, seed_summaries)
        diagnosed = self.diagnose(complete)
        appended: List[str] = []
        if protocols == ["test", "cv"]:  # the cross-validation's tables in cv/, its section in the main table.md
            appended = self.compare(complete, scored["cv"][0], incomplete, scored["cv"][1], diagnosed,
                                    protocol="cv", folder=self.config.output / CV_FOLDER)
        protocol = protocols[0]
        self.compare(complete, scored[protocol][0], incomplete, scored[protocol][1], diagnosed, protocol=protocol,
                     appended=appended)
        if self.settings.real_ct and self.config.target.kind == "btcv":  # the demo: from phantoms to a real scan
            from nnunet_poolskip.benchmark.real_ct import REAL_CT_MODELS, segment_real_ct

            segment_real_ct(self, [m for m in complete if m.name in REAL_CT_MODELS], self.steps.say,
                            seed=self.settings.run_seeds[0])
        return "incomplete" if incomplete else "complete"

    def model_folder(self, model: Model, seed: Optional[int]) -> Path:
        """nnU-Net's folder of the model's runs with ``seed`` (None: the unseeded runs)."""
        return model_folder(self.ws.results_for_seed(seed), self.config.dataset_name(),
                            model.trainer_for(self.config.target.kind), self.config.plans_for(model),
                            self.config.configuration)

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
                "-d", str(self.config.target.dataset_id), "-c", self.config.configuration, "-tr", trainer,
                "-p", self.config.plans_for(model), "-f", *map(str, self.settings.folds),
                "--device", self.settings.device, "--continue"]
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
                and recorded.get("cpu_autocast", "off") == self.settings.cpu_autocast_mode()[0]
                and "cases" in recorded)  # earlier versions recorded no cases: predict cannot resume those

    def summary_file(self, model: Model, seed: Optional[int] = None, protocol: str = "test") -> Path:
        """``summaries/<model>.json`` (the unseeded run's, or the seed average: what compare gets), or
        ``summaries/seed_<s>/<model>.json`` (one seed's ensemble); under ``summaries/cv/`` for the
        cross-validation protocol."""
        return (self.config.output / "summaries" / ("" if protocol == "test" else CV_FOLDER) / self._seed_part(seed)
                / f"{model.name}.json")

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

    def evaluate(self, model: Model, predictions: Path, seed: Optional[int] = None, protocol: str = "test") -> Path:
        """``evaluate`` of a model's predictions: the test ensemble's against labelsTs, or (protocol ``cv``) the
        linked out-of-fold predictions against the linked labelsTr maps of the same cases."""
        summary = self.summary_file(model, seed, protocol)
        raw = self.config.raw_folder()
        step = self._step("evaluate" if protocol == "test" else "evaluate_cv", model, seed)
        newest = max(p.stat().st_mtime for p in predictions.iterdir())  # a link's time is its target's
        title = (f"evaluate {model.name}" + ("" if seed is None else f" seed {seed}")
                 + ("" if protocol == "test" else " out-of-fold validation predictions"))
        references = raw / "labelsTs" if protocol == "test" else self.cross_validation.references_folder()
        ending = file_ending(raw)
        cases = sorted(p.name[:-len(ending)] for p in predictions.iterdir() if p.name.endswith(ending))
        if summary.is_file() and summary.stat().st_mtime >= newest:
            recorded = json.loads(summary.read_text())
            # summaries/<model>.json may hold the seed average of an earlier --seeds run: never take it for
            # evaluate's; nor a summary computed with other NSD tolerances, of other cases (other folds) or
            # without the seed recorded (compare names each seed's statistics by it)
            if not is_averaged_summary(recorded) and sorted(c["case"] for c in recorded["per_case"]) == cases:
                same_tolerances = recorded.get("nsd_tolerance_mm") == self.requested_tolerances()
                if same_tolerances and recorded.get("seed") == seed:
                    self.steps.skip(step, title, f"{summary} exists")
                    return summary
                title += (f"; {summary.name} was computed with other NSD tolerances" if not same_tolerances else
                          f"; {summary.name} does not record seed {seed}")
        summary.parent.mkdir(parents=True, exist_ok=True)
        argv = [executable("nnunet-poolskip"), "evaluate", str(references), str(predictions),
                "--dataset-json", str(raw / "dataset.json"), "-o", str(summary),
                "-np", str(self.config.evaluate_processes), "--no-progress"]
        if self.config.nsd_tolerances:
            argv += ["--nsd-tolerances", self.config.nsd_tolerances]
        if seed is not None:  # compare names each seed's own statistics by it
            argv += ["--seed", str(seed)]
        self.steps.run(step, title + " (Dice, NSD, IoU)", argv)
        return summary

    def model_summary(self, model: Model, per_seed: Mapping[Optional[int], Path], protocol: str = "test") -> Path:
        """The summary compare gets: the unseeded run's own, or ``summaries/<model>.json`` with each case's
        values averaged over the seeds (rewritten every time: it is cheap, and then never stale)."""
        if list(per_seed) == [None]:
            return per_seed[None]
        path = self.summary_file(model, protocol=protocol)
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
                diagnosed: Sequence[DiagnosedRun], protocol: str = "test", folder: Optional[Path] = None,
                appended: Sequence[str] = ()) -> List[str]:
        """``compare`` for all models and for each Pool Skip model against its own baseline (the paper's
        layout), then table.md / table.csv with the run's protocol and status above the numbers and the evidence
        sections below them, and the figures.

        ``protocol``: ``test`` or ``cv`` (the summaries' protocol; cv adds nnU-Net Revisited's mean over folds).
        ``folder``: where the tables and the protocol's figures go (default: the results folder, where the table
        is also printed; the cross-validation of ``--protocol both`` goes to ``cv/``). ``appended``: Markdown lines
        added at the end of table.md (the cross-validation section of ``--protocol both``). Returns the table
        section of table.md (from its table heading on), for appending to another report."""
        from nnunet_poolskip.benchmark import costs as cost_report
        from nnunet_poolskip.benchmark.cv_report import (
            cv_wording,
            fold_mean_columns,
            fold_mean_section,
            report_section,
        )
        from nnunet_poolskip.benchmark.report import (
            baseline_pairs,
            comparison_groups,
            compose_tables,
            figure_caveat,
            short_title,
        )

        main = folder is None
        folder = self.config.output if folder is None else folder
        compare_root = self.config.output / ("compare" if protocol == "test" else f"{CV_FOLDER}/compare")
        caveat = figure_caveat(self.config)
        outputs = {}
        costs = cost_report.measure(self, models)
        matched = cost_report.compute_matched(models, costs)  # controls of matched compute: compared as pairs too
        groups = comparison_groups(models)
        groups.update({cost_report.matched_group_name(control, model): [control, model]
                       for control, model, _ in matched})
        for group_name, group in groups.items():
            group_folder = compare_root / group_name
            # with --seeds, every seed's own summary under its model's name: compare's headline statistics are then
            # the across-seeds test (retraining and case sampling), not a test on seed-averaged cases
            inputs = [(str(path), m.display) for m in group
                      for path in self._compare_inputs(m, summaries[models.index(m)], seed_summaries)]
            argv = [executable("nnunet-poolskip"), "compare", *[path for path, _ in inputs],
                    "--names", *[name for _, name in inputs], "-o", str(group_folder),
                    "--title", short_title(self.config) + ("" if protocol == "test" else " cross-validation"),
                    # primary endpoint: only a Pool Skip model against its own baseline (none in a group without one)
                    "--primary", *[m.display for m in group[1:] if m.base == group[0].name]]
            if caveat:
                argv += ["--caveat", caveat]
            step = f"compare/{group_name}" if protocol == "test" else f"compare_cv/{group_name}"
            what = "compare" if protocol == "test" else "compare (cross-validation)"
            self.steps.run(step, f"{what} {' vs '.join(m.name for m in group)}", argv)
            outputs[group_name] = (group, group_folder)
        pairs = baseline_pairs(models)
        sections, columns = [], None
        if protocol == "cv":
            means = {m.name: {seed: self.cross_validation.fold_means(path)
                              for seed, path in seed_summaries[m.name].items()} for m in models}
            sections += fold_mean_section(models, means, summaries) + [""]
            columns = fold_mean_columns(models, means)
        evidence = []
        if self.settings.seeds:
            spreads = seed_spreads(models, seed_summaries)
            evidence += seed_section(models, spreads, pairs) + [""]
            columns = {**(columns or {}), **seed_csv_columns(spreads)}
        evidence += statistics_section(pairs, outputs, bool(self.settings.seeds)) + [""]
        evidence += cost_report.report_sections(models, costs, matched, outputs, bool(self.settings.seeds),
                                                self.settings.device) + [""]
        sections += evidence if protocol == "test" else cv_wording(evidence)
        columns = {**(columns or {}), **cost_report.csv_columns(models, costs, matched)}
        self.steps.record.note("costs", cost_report.costs_record(costs, matched))
        rows = es_rows(diagnosed)
        if main:  # the elimination-singularity evidence is the same for both protocols: once, in the main report
            sections += es_section(pairs, rows)
        if appended:
            sections = [*sections, "", *appended]
        files = compose_tables(self.config, self.steps.record.data, outputs, incomplete, folder,
                               sections, columns, protocol=protocol)
        for base, model in pairs:
            compared = pair_compare_folder(base, model, outputs)
            if compared is not None and (compared / "differences.png").is_file():
                files[f"differences_{model.name}"] = folder / DIFFERENCES_FIGURE.format(model=model.name)
                with atomic_path(files[f"differences_{model.name}"]) as tmp:
                    shutil.copyfile(compared / "differences.png", tmp)
        if rows and main:
            files["es_csv"] = self.config.output / ES_CSV
            write_es_csv(rows, files["es_csv"])
            for base, model in pairs:
                path = self.config.output / ES_FIGURE.format(model=model.name)
                plot_es_pair([r for r in diagnosed if r.model.name == model.name], path, caveat)
                files[f"es_{model.name}"] = path
        files.update(self.figures(models, seed_summaries, caveat, protocol, folder, curves=main))
        if main:
            self.steps.say("")
            self.steps.say(files["table"].read_text())
            self.steps.say("wrote " + ", ".join(str(p) for p in files.values()))
        else:
            self.steps.say(f"-- cross-validation tables: {files['table']} (also in the main table.md)")
        return report_section(files["table"].read_text(), folder.relative_to(self.config.output))

    @staticmethod
    def _compare_inputs(model: Model, summary: Path, seed_summaries: Mapping[str, Mapping[Optional[int], Path]]
                        ) -> List[Path]:
        """The summaries compare gets for ``model``: each seed's own (in seed order), or the one unseeded run's."""
        per_seed = seed_summaries.get(model.name) or {}
        if not per_seed or list(per_seed) == [None]:
            return [summary]
        return [per_seed[seed] for seed in sorted(per_seed)]

    def figures(self, models: Sequence[Model], seed_summaries: Mapping[str, Mapping[Optional[int], Path]],
                caveat: Optional[str], protocol: str = "test", folder: Optional[Path] = None,
                curves: bool = True) -> Dict[str, Path]:
        """training_curves.png (nnU-Net's logged losses and pseudo Dice of every fold x seed; unless ``curves`` is
        False) and overlays.png in ``folder`` (default: the results folder): the cases with the lowest, median and
        highest foreground Dice of the first model (test cases, or with ``protocol`` cv the out-of-fold predicted
        training cases); the first seed's predictions with that seed's per-case Dice."""
        from nnunet_poolskip.diagnostics.training_curves import plot_training_curves
        from nnunet_poolskip.evaluation.overlays import plot_overlays

        output, raw = self.config.output, self.config.raw_folder()
        folder = output if folder is None else folder
        written = {}
        if curves:
            runs = self.training.runs()
            kind = self.config.target.kind
            written["training_curves"] = output / "training_curves.png"
            plot_training_curves({m.display: [r.folder for r in runs
                                              if (r.trainer, r.model.plans) == (m.trainer_for(kind), m.plans)]
                                  for m in models}, written["training_curves"], caveat)
        first_seed = self.settings.run_seeds[0]
        if first_seed is not None:  # the figure shows one seed's predictions: its title says which
            caveat = "; ".join(filter(None, [caveat, f"predictions of seed {first_seed} (of seeds "
                                                      f"{' '.join(map(str, self.settings.run_seeds))})"]))
        cases = "test cases"
        if protocol == "test":
            images, references = raw / "imagesTs", raw / "labelsTs"
            predictions = {m.display: self.predictions_folder(m, first_seed) for m in models}
        else:
            cases = "out-of-fold predicted cases (cross-validation)"
            images, references = raw / "imagesTr", self.cross_validation.references_folder()
            predictions = {m.display: self.cross_validation.predictions_folder(m.name, first_seed) for m in models}
        written["overlays"] = folder / "overlays.png"
        plot_overlays(images, references, predictions,
                      {m.display: json.loads(Path(seed_summaries[m.name][first_seed]).read_text()) for m in models},
                      written["overlays"], caveat, cases=cases)
        return written
