"""Models with their own plans (nnU-Net's ResEnc presets): plan each plans identifier once, derive its preset
variant once, and never reuse plans that were made for something else.

nnU-Net's ResEnc planners (``nnUNetPlannerResEncM/L``) keep the default planner's target spacing and name the
3d_fullres data ``nnUNetPlans_3d_fullres``: they reuse the data ``nnUNetv2_plan_and_preprocess`` already made, so
``nnUNetv2_plan_experiment -pl <planner>`` is all they need. Should a plans' data identifier name data that do not
exist, ``nnUNetv2_preprocess -plans_name`` makes them.

Plans found on disk are checked before they are used, and refused (BenchmarkError naming the models and the plans)
when
- they were written by another planner than the model asks for (``experiment_planner_used``), or from another
  data set fingerprint than the default plans (``original_median_spacing_after_transp`` / ``..._shape_...``);
- derived plans differ from what this run's preset derives from their source plans (another preset with the same
  suffix, or edited by hand).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

from nnunet_poolskip.benchmark.config import BenchmarkError
from nnunet_poolskip.benchmark.protocol import CONFIGURATION, DEFAULT_PLANS
from nnunet_poolskip.benchmark.steps import StepFailed
from nnunet_poolskip.benchmark.workspace import executable

FINGERPRINT_KEYS = ("original_median_spacing_after_transp", "original_median_shape_after_transp")
"""Plans fields that nnU-Net copies from the data set fingerprint: plans of one data set agree on them."""


def _read_plans(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"{what}: {path} is unreadable ({error})") from None


def _who(models: List[str], plans: str) -> str:
    return f"model(s) {', '.join(models)} (plans {plans})"


def data_complete(prep: Any, plans_file: Path) -> bool:
    """True when every train+val case is preprocessed in the 3d_fullres data folder ``plans_file`` names."""
    plans = json.loads(plans_file.read_text())
    data_folder = plans_file.parent / plans["configurations"][CONFIGURATION]["data_identifier"]
    return data_folder.is_dir() and all((data_folder / f"{c}.pkl").is_file() for c in prep.train_val_cases())


def check_planned(prep: Any, plans_file: Path, planner: str, models: List[str]) -> None:
    """Refuse plans written by another planner or from another fingerprint than the default plans (see the module
    docstring)."""
    plans_name = plans_file.stem
    plans = _read_plans(plans_file, _who(models, plans_name))
    used = plans.get("experiment_planner_used")
    if used != planner:
        raise BenchmarkError(
            f"{_who(models, plans_name)}: {plans_file} exists but was written by {used!r}, not by {planner}: plans "
            f"made for something else are never reused. Move it away (nnUNetv2_plan_experiment -pl {planner} writes "
            f"it again) or use another --work for this run")
    default_file = prep.preprocessed_folder() / f"{DEFAULT_PLANS}.json"
    default = _read_plans(default_file, "nnU-Net's default plans")
    differing = [k for k in FINGERPRINT_KEYS if k in plans and k in default and plans[k] != default[k]]
    if differing:
        raise BenchmarkError(
            f"{_who(models, plans_name)}: {plans_file} was planned from another data set fingerprint than "
            f"{default_file.name} ({', '.join(f'{k} {plans[k]} vs {default[k]}' for k in differing)}); move it away "
            f"so that it is planned again for this data set")


def ensure_planned(prep: Any, plans_name: str, planner: str, models: List[str]) -> Path:
    """Make ``<nnUNet_preprocessed>/<dataset>/<plans_name>.json`` with ``planner`` unless it exists (then check it),
    and its 3d_fullres data unless they exist. Returns the plans file.

    Raises:
        BenchmarkError: naming the models and plans when planning or preprocessing fails, or when existing plans
            were made for something else.
    """
    folder = prep.preprocessed_folder()
    plans_file = folder / f"{plans_name}.json"
    step = f"plan/{plans_name}"
    dataset = str(prep.config.target.dataset_id)
    record_status = prep.steps.record.step(step).get("status")
    if plans_file.is_file() and record_status not in ("interrupted", "failed", "running"):
        check_planned(prep, plans_file, planner, models)
        prep.steps.skip(step, f"plan {plans_name}", f"{plans_file.name} exists (written by {planner})")
    else:
        argv = [executable("nnUNetv2_plan_experiment"), "-d", dataset, "-pl", planner]
        try:
            prep.steps.run(step, f"nnUNetv2_plan_experiment -pl {planner} -> {plans_name} (for "
                                 f"{', '.join(models)})", argv, "plan")
        except StepFailed as error:
            raise BenchmarkError(f"planning {_who(models, plans_name)} with {planner} failed: {error}") from None
        if not plans_file.is_file():
            raise BenchmarkError(f"planning {_who(models, plans_name)} with {planner} wrote no {plans_file}")
        check_planned(prep, plans_file, planner, models)
    if not data_complete(prep, plans_file):
        argv = [executable("nnUNetv2_preprocess"), "-d", dataset, "-plans_name", plans_name, "-c", CONFIGURATION]
        if prep.settings.preprocess_processes is not None:
            argv += ["-np", str(prep.settings.preprocess_processes)]
        try:
            prep.steps.run(f"preprocess/{plans_name}", f"nnUNetv2_preprocess -plans_name {plans_name}", argv, "plan")
        except StepFailed as error:
            raise BenchmarkError(f"preprocessing for {_who(models, plans_name)} failed: {error}") from None
    return plans_file


def ensure_derived(prep: Any, source_plans: str) -> Path:
    """The plans this run trains with for ``source_plans``: with a preset, ``<source_plans><suffix>.json`` made by
    ``derive-plans`` (again when the source plans are newer; refused when it differs from what the preset derives
    now); without one, the source plans themselves. Returns the plans file."""
    from nnunet_poolskip.training.derived_plans import derive_plans, load_preset

    config, settings = prep.config, prep.settings
    target_name = config.derived_identifier(source_plans)
    folder = prep.preprocessed_folder()
    target = folder / f"{target_name}.json"
    models = [m.name for m in config.models if m.plans == source_plans] or ["(default plans)"]
    if settings.plans_preset is not None:
        source = folder / f"{source_plans}.json"
        step = "derive_plans" if source_plans == DEFAULT_PLANS else f"derive_plans/{source_plans}"
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            wanted = json.loads(json.dumps(derive_plans(json.loads(source.read_text()),
                                                        load_preset(settings.plans_preset))))
            if _read_plans(target, _who(models, target_name)) != wanted:
                raise BenchmarkError(
                    f"{_who(models, target_name)}: {target} exists but differs from what preset "
                    f"{settings.plans_preset} derives from {source.name} (another preset with the same suffix, or "
                    f"edited): plans made for something else are never reused. Move it away or use another --work")
            prep.steps.skip(step, f"derive {target_name}", "exists")
        else:
            argv = [executable("nnunet-poolskip"), "derive-plans", "-d", str(config.target.dataset_id),
                    "-p", source_plans, "--preset", settings.plans_preset]
            prep.steps.run(step, f"derive plans {target_name} (preset {settings.plans_preset})", argv)
    if not target.is_file():
        raise BenchmarkError(f"plans {target} not found (needed by {', '.join(models)})")
    return target
