"""What each model of a benchmark run costs, measured from the run itself, and which models match in compute.

Per model (all its folds and seeds):
    parameters          of the network its trainer builds from the plans in its model folder (nnU-Net's
                        ``plans.json`` / ``dataset.json`` there), as inference builds it
    gflops_per_patch    GFLOPs (1e9) of one forward pass of one patch of those plans (batch 1), counted by
                        ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, a multiply-add
                        = 2 FLOPs; see :mod:`nnunet_poolskip.nn.cost`); deep supervision off, as at inference
    median_epoch_s      median of nnU-Net's logged epoch times (``Epoch time``: training and validation iterations)
                        over every epoch of every fold and seed, resumed runs' logs included
    peak_memory_mib     the largest peak over its folds and seeds that our trainers record
                        (:mod:`nnunet_poolskip.training.resources`): on CUDA the peak allocated memory
                        (``torch.cuda.max_memory_allocated``), on the CPU the peak RSS of the training process;
                        None for trainers that do not record it (the stock ``nnUNetTrainer``)
    training_s          the sum of all logged epoch times of all folds and seeds (epochs repeated after a resume
                        count again: they were computed again); start-up and the final validation are not included.
                        On a GPU: ``training_gpu_h`` = training_s x GPUs per training / 3600
A Pool Skip model (one with a baseline, :func:`~nnunet_poolskip.benchmark.protocol.is_pool_skip_model`) also gets
each of these as a ratio to its own baseline's.

Compute-matched controls: for each Pool Skip model, the run's baselines (and the conv-skip ablation) whose FLOPs per
patch lie within +-15 % of its own (:data:`COMPUTE_MATCH_TOLERANCE`).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_poolskip.benchmark.protocol import CONFIGURATION, Model, is_compute_control, is_pool_skip_model
from nnunet_poolskip.benchmark.training_log import TRAINING_LOG_GLOB, parse_training_log

COMPUTE_MATCH_TOLERANCE = 0.15
"""A control matches a Pool Skip model in compute when |its FLOPs per patch / the model's - 1| <= this."""

COST_FIELDS = ("parameters", "gflops_per_patch", "median_epoch_s", "peak_memory_mib", "training_s")
"""The costs compared as ratios to the baseline, in table order."""


@dataclass
class ModelCost:
    """What one model costs in a run (see the module docstring for each field's meaning and units)."""

    model: str
    plans: str
    patch_size: List[int]
    parameters: int
    gflops_per_patch: float
    median_epoch_s: Optional[float]
    peak_memory_mib: Optional[float]
    memory_kind: str
    training_s: Optional[float]
    training_gpu_h: Optional[float]
    n_runs: int
    n_epochs_logged: int
    flops_counted_on: str
    ratio_to_baseline: Dict[str, Optional[float]] = field(default_factory=dict)
    baseline: Optional[str] = None


def trainer_class(name: str):
    """The trainer class of this project or of nnU-Net with that class name (ValueError when neither has it)."""
    from nnunet_poolskip.training import TRAINERS

    if name in TRAINERS:
        return TRAINERS[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        found = recursive_find_trainer_class_by_name(name)
    except Exception:  # nnU-Net raises RuntimeError when the name is unknown
        found = None
    if found is None:
        raise ValueError(f"trainer class {name!r} not found in this project nor in nnU-Net")
    return found


def network_costs(model_folder: Path, trainer: str, configuration: str = CONFIGURATION) -> Dict:
    """Parameters and forward FLOPs of one patch (batch 1) of the network ``trainer`` builds from the plans and
    dataset.json in nnU-Net's ``model_folder`` (``<trainer>__<plans>__<configuration>``), deep supervision off.

    Returns:
        ``{"parameters", "forward_flops", "counted_on", "patch_size", "input_channels", "output_channels"}``.
    Raises:
        FileNotFoundError: naming the missing plans.json / dataset.json.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_poolskip.nn.cost import count_costs

    folder = Path(model_folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: is {folder} a trained nnU-Net model folder?")
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration_manager = plans_manager.get_configuration(configuration)
    inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    cls = trainer_class(trainer)
    patch = [int(p) for p in configuration_manager.patch_size]
    counted = count_costs(lambda: cls.build_network_architecture(plans_manager, configuration_manager, inputs,
                                                                 outputs, enable_deep_supervision=False),
                          (1, inputs, *patch))
    return {**counted, "patch_size": patch, "input_channels": inputs, "output_channels": outputs}


def logged_epoch_seconds(fold_folder: Path) -> List[float]:
    """Every epoch time nnU-Net logged in a fold folder, over all its training logs (a resumed run writes a new
    log), in seconds."""
    seconds = []
    for log in sorted(Path(fold_folder).glob(TRAINING_LOG_GLOB)):
        try:
            seconds += [r.seconds for r in parse_training_log(log.read_text(errors="replace"))]
        except OSError:
            continue
    return seconds


def run_costs(model: Model, plans: str, model_folder: Path, trainer: str, fold_folders: Sequence[Path],
              device: str, gpus_per_training: int = 1) -> ModelCost:
    """The costs of ``model`` from its trained folds (every fold x seed folder in ``fold_folders``).

    Args:
        model: the model.
        plans: its plans identifier in this run.
        model_folder: one of its nnU-Net model folders (plans.json, dataset.json): the network is counted from it.
        trainer: its trainer class name.
        fold_folders: all its fold folders (every fold of every seed).
        device: ``cuda`` or ``cpu``: which recorded peak memory counts, and whether GPU hours are given.
        gpus_per_training: GPUs of each training (DDP), for GPU hours.
    """
    from nnunet_poolskip.training.resources import read_resources

    # nnU-Net's model folder is <trainer>__<plans>__<configuration>: count the configuration that was trained
    network = network_costs(model_folder, trainer, model_folder.name.rsplit("__", 1)[-1])
    epochs = [s for f in fold_folders for s in logged_epoch_seconds(f)]
    key, kind = (("peak_cuda_allocated_mib", "CUDA peak allocated") if device == "cuda"
                 else ("peak_rss_mib", "peak RSS of the training process"))
    peaks = [r.get(key) for r in (read_resources(f) for f in fold_folders) if r]
    peaks = [p for p in peaks if isinstance(p, (int, float))]
    total = sum(epochs) if epochs else None
    return ModelCost(model=model.name, plans=plans, patch_size=network["patch_size"],
                     parameters=network["parameters"], gflops_per_patch=network["forward_flops"] / 1e9,
                     median_epoch_s=statistics.median(epochs) if epochs else None,
                     peak_memory_mib=max(peaks) if peaks else None, memory_kind=kind, training_s=total,
                     training_gpu_h=(total * gpus_per_training / 3600 if device == "cuda" and total is not None
                                     else None),
                     n_runs=len(fold_folders), n_epochs_logged=len(epochs), flops_counted_on=network["counted_on"])


def add_baseline_ratios(costs: Mapping[str, ModelCost], models: Sequence[Model]) -> None:
    """Fill ``ratio_to_baseline`` of every Pool Skip model whose baseline has costs (model / baseline, per field
    of COST_FIELDS; None where either value is missing or the baseline's is 0)."""
    for model in models:
        if not is_pool_skip_model(model) or model.name not in costs or model.base not in costs:
            continue
        own, base = costs[model.name], costs[model.base]
        own.baseline = model.base
        own.ratio_to_baseline = {f: _ratio(getattr(own, f), getattr(base, f)) for f in COST_FIELDS}


def _ratio(value, reference) -> Optional[float]:
    if value is None or reference in (None, 0):
        return None
    return value / reference


def compute_matched(models: Sequence[Model], costs: Mapping[str, ModelCost],
                    tolerance: float = COMPUTE_MATCH_TOLERANCE) -> List[Tuple[Model, Model, float]]:
    """(control, Pool Skip model, control's FLOPs / model's - 1) for every Pool Skip model and every control in the
    run (a baseline or the conv-skip ablation, not the model's own baseline) within ``tolerance``, in table order."""
    matched = []
    for model in models:
        if not is_pool_skip_model(model) or model.name not in costs:
            continue
        own = costs[model.name].gflops_per_patch
        for control in models:
            if control.name in (model.name, model.base) or not is_compute_control(control) \
                    or control.name not in costs or not own:
                continue
            difference = costs[control.name].gflops_per_patch / own - 1
            if abs(difference) <= tolerance:
                matched.append((control, model, difference))
    return matched


def matched_group_name(control: Model, model: Model) -> str:
    """The compare output folder name of a compute-matched pair."""
    return f"matched_{model.name}_vs_{control.name}"


# ------------------------------------------------------------------------------------------ report
def _count(value: Optional[float], digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _ratio_cell(value: Optional[float]) -> str:
    return "" if value is None else f"x{value:.2f}"


def cost_section(models: Sequence[Model], costs: Mapping[str, ModelCost], device: str) -> List[str]:
    """table.md's section "What each model costs" (see the module docstring)."""
    rows = [m for m in models if m.name in costs]
    if not rows:
        return []
    gpu = device == "cuda"
    header = ["Model", "plans", "parameters (M)", "GFLOPs / patch", "s / epoch (median)",
              "peak memory (MiB)", "GPU hours" if gpu else "training (h)"]
    lines = ["## What each model costs", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for model in rows:
        c = costs[model.name]
        r = c.ratio_to_baseline

        def cell(text: str, key: str) -> str:
            ratio = _ratio_cell(r.get(key))
            return f"{text} ({ratio})" if ratio else text

        time_h = c.training_gpu_h if gpu else (None if c.training_s is None else c.training_s / 3600)
        lines.append("| " + " | ".join([
            model.display, f"`{c.plans}` {'x'.join(map(str, c.patch_size))}",
            cell(f"{c.parameters / 1e6:,.3f}", "parameters"), cell(_count(c.gflops_per_patch), "gflops_per_patch"),
            cell(_count(c.median_epoch_s, 1), "median_epoch_s"), cell(_count(c.peak_memory_mib, 0), "peak_memory_mib"),
            cell(_count(time_h, 3), "training_s")]) + " |")
    memory = ("CUDA peak allocated memory (torch.cuda.max_memory_allocated) of the training process" if gpu else
              "peak RSS of the training process (getrusage ru_maxrss; data loading in the process included, "
              "augmentation workers not)")
    lines += ["", "Measured from this run: parameters and FLOPs of the network each trainer builds from the plans in "
                  "its model folder; GFLOPs of one forward pass of one patch (batch 1, patch size as given, deep "
                  "supervision off) counted by torch.utils.flop_counter (convolutions and matrix products, a "
                  "multiply-add = 2 FLOPs; norms, activations, pooling and bias additions not counted); s / epoch: "
                  "median of nnU-Net's logged epoch times over all folds and seeds; peak memory: the largest "
                  f"{memory} over the folds and seeds; "
                  + ("GPU hours" if gpu else "training (h)") + ": the sum of all logged epoch times of all folds and "
                  "seeds" + (" x GPUs per training" if gpu else "") + " (start-up and final validation not included)."
                  " (xR): the Pool Skip model's cost / its own baseline's. Timings depend on the machine and on what "
                  "else ran on it."]
    return lines


def matched_section(matched: Sequence[Tuple[Model, Model, float]], models: Sequence[Model],
                    costs: Mapping[str, ModelCost], statistics_lines: Mapping[Tuple[str, str], List[str]]) -> List[str]:
    """table.md's section on compute-matched controls: per Pool Skip model, the controls within +-15 % of its FLOPs
    per patch and the paired statistics against them (``statistics_lines``: (control, model) -> lines)."""
    pool_skip = [m for m in models if is_pool_skip_model(m) and m.name in costs]
    if not pool_skip:
        return []
    lines = ["## Compute-matched controls", "",
             f"For each Pool Skip model, the models of this run that spend the same compute on a plain network: "
             f"baselines (or the conv-skip ablation) whose GFLOPs per patch lie within +-{COMPUTE_MATCH_TOLERANCE:.0%}"
             f" of its own. Paired statistics against them answer \"Pool Skip, or the same compute in a bigger "
             f"plain network?\" beside those against its own baseline above."]
    for model in pool_skip:
        own = costs[model.name].gflops_per_patch
        found = [(c, d) for c, m, d in matched if m.name == model.name]
        lines.append("")
        if not found:
            others = [m for m in models if is_compute_control(m) and m.name != model.base and m.name in costs]
            near = ", ".join(f"{m.display} {costs[m.name].gflops_per_patch:,.2f} "
                             f"({costs[m.name].gflops_per_patch / own - 1:+.0%})" for m in others) if own else ""
            lines.append(f"**{model.display}** ({own:,.2f} GFLOPs / patch): no control in this run within "
                         f"+-{COMPUTE_MATCH_TOLERANCE:.0%}" + (f" (others: {near})" if near else "")
                         + ". To have one, add a plain network of about its compute to --models (nnU-Net's ResEnc "
                           "presets nnunet_resenc_m, nnunet_resenc_l; the conv-skip ablation ablation_conv_skip).")
            continue
        lines.append(f"**{model.display}** ({own:,.2f} GFLOPs / patch): matched by "
                     + ", ".join(f"{c.display} ({costs[c.name].gflops_per_patch:,.2f}, {d:+.1%})" for c, d in found)
                     + ".")
        for control, _ in found:
            lines += statistics_lines.get((control.name, model.name), [])
    return lines


def csv_columns(models: Sequence[Model], costs: Mapping[str, ModelCost],
                matched: Sequence[Tuple[Model, Model, float]]) -> Dict[str, Dict[str, str]]:
    """table.csv's cost columns: column -> model name -> cell (empty where not measured)."""
    def number(value, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    columns: Dict[str, Dict[str, str]] = {name: {} for name in (
        "parameters", "gflops_per_patch", "patch_size", "median_epoch_s", "peak_memory_mib", "memory_kind",
        "training_h", "training_gpu_h", *(f"{f}_ratio_to_baseline" for f in COST_FIELDS), "compute_matched_controls")}
    for model in models:
        c = costs.get(model.name)
        if c is None:
            continue
        cells = {"parameters": str(c.parameters), "gflops_per_patch": number(c.gflops_per_patch, 4),
                 "patch_size": "x".join(map(str, c.patch_size)), "median_epoch_s": number(c.median_epoch_s, 3),
                 "peak_memory_mib": number(c.peak_memory_mib, 1), "memory_kind": c.memory_kind,
                 "training_h": number(None if c.training_s is None else c.training_s / 3600, 5),
                 "training_gpu_h": number(c.training_gpu_h, 5),
                 "compute_matched_controls": " ".join(ctl.name for ctl, m, _ in matched if m.name == model.name)}
        cells.update({f"{f}_ratio_to_baseline": number(c.ratio_to_baseline.get(f), 4) for f in COST_FIELDS})
        for name, value in cells.items():
            columns[name][model.name] = value
    return columns


def costs_record(costs: Mapping[str, ModelCost], matched: Sequence[Tuple[Model, Model, float]]) -> Dict:
    """run.json's ``costs``: per model its ModelCost as a dict, and the compute-matched pairs."""
    return {"models": {name: asdict(cost) for name, cost in costs.items()},
            "flops": "torch.utils.flop_counter.FlopCounterMode, one forward pass of one patch (batch 1), "
                     "multiply-add = 2 FLOPs, convolutions and matrix products only",
            "compute_match_tolerance": COMPUTE_MATCH_TOLERANCE,
            "compute_matched": [{"model": m.name, "control": c.name, "flops_difference": round(d, 4)}
                                for c, m, d in matched]}


# ------------------------------------------------------------------------------------------ the finish stage
def measure(finish, models: Sequence[Model]) -> Dict[str, ModelCost]:
    """The costs of every model of a finished run (``finish``: the run's :class:`~nnunet_poolskip.benchmark.finish.
    Finish`), with the Pool Skip models' ratios to their baselines. A model whose network cannot be counted is left
    out with a line saying why (the table is still written)."""
    settings, kind = finish.settings, finish.config.target.kind
    costs: Dict[str, ModelCost] = {}
    for model in models:
        folders = [finish.model_folder(model, seed) / f"fold_{fold}" for seed in settings.run_seeds
                   for fold in settings.folds]
        try:
            costs[model.name] = run_costs(model, finish.config.plans_for(model),
                                          finish.model_folder(model, settings.run_seeds[0]), model.trainer_for(kind),
                                          folders, settings.device, settings.num_gpus)
        except Exception as error:  # counting is a report: it must not lose the run's table
            finish.steps.say(f"   cost of {model.name} not measured: {type(error).__name__}: {error}")
    add_baseline_ratios(costs, models)
    return costs


def report_sections(models: Sequence[Model], costs: Mapping[str, ModelCost],
                    matched: Sequence[Tuple[Model, Model, float]], outputs: Mapping[str, Tuple[List[Model], Path]],
                    averaged_over_seeds: bool, device: str) -> List[str]:
    """table.md's cost section and compute-matched section, the latter with the paired statistics of each matched
    pair from its compare run (``outputs[matched_group_name(...)]``), in the format of the own-baseline statistics."""
    from nnunet_poolskip.benchmark.evidence import statistics_section

    lines_by_pair = {}
    for control, model, _ in matched:
        group = matched_group_name(control, model)
        if group not in outputs:
            continue
        section = statistics_section([(control, model)], {f"pair_{model.name}": outputs[group]}, averaged_over_seeds)
        lines_by_pair[(control.name, model.name)] = [line for line in section[3:]]  # without its heading
    lines = cost_section(models, costs, device)
    matched_lines = matched_section(matched, models, costs, lines_by_pair)
    return lines + ([""] if lines and matched_lines else []) + matched_lines
