"""The benchmark's prepare stage: raw data -> nnU-Net raw data set -> plans and preprocessed data -> derived plans.

Steps: ``synth`` (demo, without --raw) -> ``convert-btcv`` / ``convert-amos`` -> ``nnUNetv2_plan_and_preprocess``
-> ``derive-plans`` (profiles with a plans preset); each is skipped when its output already exists.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_poolskip.benchmark.config import BenchmarkConfig, BenchmarkError
from nnunet_poolskip.benchmark.protocol import DATASET_KINDS, DEFAULT_PLANS
from nnunet_poolskip.benchmark.runinfo import file_sha256, plans_summary
from nnunet_poolskip.benchmark.steps import Steps
from nnunet_poolskip.benchmark.workspace import case_ids, executable


def planners_needed(models) -> List[Tuple[str, str, List[str]]]:
    """(plans identifier, planner class, model names) of every plans identifier of ``models`` other than nnU-Net's
    default plans, in the order the models name them."""
    found: Dict[Tuple[str, str], List[str]] = {}
    for model in models:
        if model.plans != DEFAULT_PLANS:
            found.setdefault((model.plans, model.planner), []).append(model.name)
    return [(plans, planner, names) for (plans, planner), names in found.items()]


def file_ending(raw_folder: Path) -> str:
    """The data set's file ending, from its dataset.json."""
    return json.loads((raw_folder / "dataset.json").read_text()).get("file_ending", ".nii.gz")


class Preparation:
    """Makes the data set, its plans and preprocessed data exist (see the module docstring)."""

    def __init__(self, config: BenchmarkConfig, steps: Steps):
        self.config = config
        self.settings = config.settings
        self.ws = config.workspace
        self.steps = steps

    def run(self) -> None:
        self.ensure_raw_dataset()
        self.ensure_preprocessed()
        self.ensure_model_plans()
        self.ensure_derived_plans()

    def ensure_raw_dataset(self) -> None:
        target, config = self.config.target, self.config
        existing = target.raw_folder(self.ws)
        if existing is not None and (existing / "dataset.json").is_file():
            note = self.check_existing_conversion(existing)
            self.steps.skip("convert", f"convert to {existing.name}",
                            "already converted" + (f"; {note}" if note else ""))
        else:  # the runner's preflight made sure there is a source
            source = config.raw_source if config.raw_source is not None else self.ensure_synthetic_raw()
            argv = [executable("nnunet-poolskip"), DATASET_KINDS[target.kind].converter, str(source),
                    "--dataset-id", str(target.dataset_id)]
            if config.split_file is not None:
                argv += ["--split-file", "none" if config.no_test_split else str(config.split_file)]
            if target.kind == "amos" and config.modality:
                argv += ["--modality", config.modality]
            self.steps.run("convert", f"convert {source} -> nnUNet_raw (dataset {target.dataset_id})", argv)
        self.check_test_set()

    def requested_conversion(self) -> Dict[str, str]:
        """The conversion settings this run asks for, as the converter records them (``settings`` of
        nnunet_poolskip_conversion.json): converter, source (when known), split file digest, AMOS modality."""
        from nnunet_poolskip.dataset_conversion.amos import DEFAULT_MODALITY
        from nnunet_poolskip.dataset_conversion.splits import shipped_split_file

        config, kind = self.config, self.config.target.kind
        split_file = config.split_file or shipped_split_file(kind)
        requested = {"command": DATASET_KINDS[kind].converter, "split_file_sha256": file_sha256(split_file)}
        source = config.raw_source or (self.synthetic_raw_folder() if config.synthetic else None)
        if source is not None:
            requested["source"] = str(Path(source).resolve())
        if kind == "amos":
            requested["modality"] = config.modality or DEFAULT_MODALITY
        return requested

    def check_existing_conversion(self, folder: Path) -> Optional[str]:
        """Refuse a converted data set (found by its id alone) that was made with other settings than this run
        asks for: another split file, AMOS modality, converter or source. A data set of another origin (no
        conversion record) cannot be compared: the returned note says so (None otherwise).

        Raises:
            BenchmarkError: naming each setting, as recorded and as requested.
        """
        from nnunet_poolskip.dataset_conversion.raw_dataset import RECORD_NAME

        if self.config.target.kind not in DATASET_KINDS:
            return None
        record_file = folder / RECORD_NAME
        if not record_file.is_file():
            return f"{folder.name} has no {RECORD_NAME}: its split and modality cannot be checked against this run's"
        try:
            record = json.loads(record_file.read_text())
            recorded = record["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BenchmarkError(f"{record_file} is unreadable: cannot tell how {folder} was converted") from None
        split = self.config.split_file or "the shipped split"
        differences = []
        for key, wanted in self.requested_conversion().items():
            if recorded.get(key) != wanted:
                if key == "split_file_sha256":
                    differences.append(f"split file {record.get('split_file')} (sha256 {str(recorded.get(key))[:12]}) "
                                       f"there, {split} (sha256 {wanted[:12]}) here")
                else:
                    differences.append(f"{key} {recorded.get(key)!r} there, {wanted!r} here")
        if differences:
            raise BenchmarkError(
                f"{folder} was converted with other settings than this run asks for: {'; '.join(differences)}. "
                f"Use another --dataset-id (or --work) for this run, or replace that conversion with "
                f"`nnunet-poolskip {DATASET_KINDS[self.config.target.kind].converter} ... --overwrite` (its "
                f"preprocessed data and trained models are then stale)")
        return None

    def synthetic_raw_folder(self) -> Path:
        return self.config.output / f"synthetic_{self.config.target.kind}_raw"

    def ensure_synthetic_raw(self) -> Path:
        folder = self.synthetic_raw_folder()
        argv = [executable("nnunet-poolskip"), "synth", "--kind", self.config.target.kind, "-o", str(folder),
                "--cases", str(self.settings.synthetic_cases), "--seed", str(self.settings.synth_seed), "--quiet"]
        if self.settings.synth_size:
            argv += ["--size", *map(str, self.settings.synth_size)]
        argv += ["--anatomy", self.settings.phantom_anatomy]
        if self._synthetic_complete(folder):
            self.steps.skip("synth", "synthetic phantoms", f"already in {folder}")
        else:
            self.steps.run("synth", f"synthesise {self.settings.synthetic_cases} {self.config.target.kind.upper()}"
                                    f"-like phantoms -> {folder}", argv)
        return folder

    def _synthetic_complete(self, folder: Path) -> bool:
        # synth writes into a temporary folder and renames it at the end: the folder exists only when complete
        return folder.is_dir() and any(folder.iterdir()) and self.steps.record.step("synth").get("status") != "failed"

    def test_cases(self) -> List[str]:
        """The held-out test cases of the converted data set; BenchmarkError when the protocol needs a test set
        (``--protocol test`` or ``both``) and the data set has none, or lacks a test case's reference label."""
        raw = self.config.raw_folder()
        ending = file_ending(raw)
        tests = case_ids(raw / "imagesTs", ending) if (raw / "imagesTs").is_dir() else []
        if "test" not in self.config.protocols:
            return tests
        if not tests:
            raise BenchmarkError(f"{raw} has no test images (imagesTs/<case>_0000{ending}): --protocol "
                                 f"{self.config.resolved_protocol()} predicts and evaluates the held-out test set; "
                                 f"compare by cross-validation over imagesTr/labelsTr with --protocol cv")
        missing = [c for c in tests if not (raw / "labelsTs" / f"{c}{ending}").is_file()]
        if missing:
            raise BenchmarkError(f"{raw / 'labelsTs'} lacks the reference labels of test cases {missing}: "
                                 f"--protocol {self.config.resolved_protocol()} evaluates the held-out test set; "
                                 f"compare by cross-validation with --protocol cv")
        return tests

    def check_test_set(self) -> None:
        """The protocol's cases exist (see :meth:`test_cases`); records the test and train+val cases in run.json."""
        raw = self.config.raw_folder()
        tests = self.test_cases()
        record = self.steps.record
        record.data["dataset"].update({"name": raw.name, "test_cases": tests,
                                       "n_train_val": len(case_ids(raw / "imagesTr", file_ending(raw)))})
        record.save()

    def train_val_cases(self) -> List[str]:
        """The converted data set's train+val case ids (imagesTr)."""
        raw = self.config.raw_folder()
        return case_ids(raw / "imagesTr", file_ending(raw))

    def preprocessed_folder(self) -> Path:
        return self.ws.preprocessed / self.config.dataset_name()

    def preprocessing_complete(self) -> bool:
        """True when the default plans exist and every train+val case is preprocessed for them."""
        folder = self.preprocessed_folder()
        plans_file = folder / f"{DEFAULT_PLANS}.json"
        if not plans_file.is_file() or self.steps.record.step("plan_and_preprocess")["status"] in (
                "interrupted", "failed", "running"):
            return False
        plans = json.loads(plans_file.read_text())
        if self.config.configuration not in plans["configurations"]:
            return False
        data_folder = folder / plans["configurations"][self.config.configuration]["data_identifier"]
        raw = self.config.raw_folder()
        cases = case_ids(raw / "imagesTr", file_ending(raw))
        return data_folder.is_dir() and all((data_folder / f"{c}.pkl").is_file() for c in cases)

    def ensure_preprocessed(self) -> None:
        step = "plan_and_preprocess"
        if self.preprocessing_complete():
            self.steps.skip(step, "nnUNetv2_plan_and_preprocess", "plans and preprocessed data exist")
        else:
            argv = [executable("nnUNetv2_plan_and_preprocess"), "-d", str(self.config.target.dataset_id),
                    "-c", self.config.configuration]
            if self.config.target.kind == "custom":  # our converters already check geometry and label values
                argv.append("--verify_dataset_integrity")
            if self.settings.preprocess_processes is not None:  # fingerprint workers too (nnU-Net default 8)
                n = str(self.settings.preprocess_processes)
                argv += ["-np", n, "-npfp", n]
            self.steps.run(step, "nnUNetv2_plan_and_preprocess (fingerprint, plans, preprocessing)", argv, "plan")

    def ensure_model_plans(self) -> None:
        """Plan (and, where its data differ, preprocess) every plans identifier of the chosen models that nnU-Net's
        default planner does not write (the ResEnc presets), once; see :mod:`nnunet_poolskip.benchmark.model_plans`."""
        from nnunet_poolskip.benchmark.model_plans import ensure_planned

        for source, planner, models in planners_needed(self.config.models):
            ensure_planned(self, source, planner, models)

    def ensure_derived_plans(self) -> None:
        """Derive every plans identifier the chosen models need with the preset (when there is one)."""
        from nnunet_poolskip.benchmark.model_plans import ensure_derived

        sources = [DEFAULT_PLANS] + [source for source, _, _ in planners_needed(self.config.models)]
        for source in sources:
            if source == DEFAULT_PLANS:
                self._ensure_default_derived_plans()
            else:
                ensure_derived(self, source)
        own = {self.config.plans_for(m): m.plans for m in self.config.models if m.plans != DEFAULT_PLANS}
        if own:
            folder = self.preprocessed_folder()
            self.steps.record.note("model_plans", {identifier: plans_summary(folder / f"{identifier}.json",
                                                                             self.config.configuration)
                                                   for identifier in sorted(own)})

    def _ensure_default_derived_plans(self) -> None:
        from nnunet_poolskip.benchmark.model_plans import ensure_derived

        target = ensure_derived(self, DEFAULT_PLANS)
        configurations = json.loads(target.read_text())["configurations"]
        if self.config.configuration not in configurations:
            # nnU-Net plans 3d_lowres only when the full-resolution images are much larger than the patch
            raise BenchmarkError(f"nnU-Net's plans {target} have no configuration {self.config.configuration!r} for "
                                 f"this data set (planned: {', '.join(sorted(configurations))}); choose one of those "
                                 f"with --configuration")
        self.steps.record.note("plans", plans_summary(target, self.config.configuration))
