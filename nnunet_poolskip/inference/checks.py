"""Checks that ``predict`` runs before any preprocessing or output: every fold's checkpoint against the model folder
it is used from, and each input image's geometry against what the model's resampling would make of it.

nnU-Net's predictor builds the network from the model folder's ``plans.json`` and ``dataset.json`` and from the
FIRST fold's trainer name, then loads every fold's weights into it. So a fold trained with other plans (another
spacing, or a ``plans.json`` edited after training) predicts at the wrong spacing without any error, and a fold of
another trainer ends in a ``load_state_dict`` traceback after preprocessing that names neither fold nor file. Each
checkpoint records what it was trained with (``trainer_name``, ``init_args``: plans, configuration, dataset.json);
:func:`check_fold_checkpoints` compares that record with the folder.

An image whose header spacing is far off (mm given as cm or m) resamples to a grid that cannot fit in memory;
:func:`check_case_geometry` reads the headers only and names the case before nnU-Net allocates it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from nnunet_poolskip.inference.softmax_ensemble import (
    CHECKPOINT_FINAL,
    CHECKPOINT_KEYS,
    Fold,
    PredictionInputError,
)
from nnunet_poolskip.utilities.geometry import SITK_ENDINGS, ImageHeaderError, read_geometry

#: The parts of a configuration that decide how a case is preprocessed and which network runs it (with the plans'
#: transpose and intensity statistics, which CT normalisation reads).
CONFIGURATION_KEYS = ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm", "architecture")
PLANS_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel")
_SHOWN_DIFFERENCES = 4


def read_checkpoint_record(path: Path, fold: Fold) -> Dict[str, Any]:
    """What a fold's checkpoint says it was trained with: ``trainer_name`` and ``init_args`` (plans, configuration,
    dataset_json), without reading its weights.

    The file is memory-mapped (``torch.load(mmap=True)``): only the pickled record is read here, the weights are
    read once, by nnU-Net's predictor.

    Raises:
        PredictionInputError: naming the fold and the file when it cannot be read or lacks what nnU-Net's predictor
            reads.
    """
    import torch

    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # torch's legacy format
    except Exception as error:  # truncated or corrupt: zip, pickle or tensor storage errors of every kind
        raise PredictionInputError(
            f"fold {fold}: checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated "
            f"or corrupt: copy it again or retrain that fold") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if not missing and not all(k in checkpoint["init_args"] for k in ("plans", "configuration", "dataset_json")):
        missing = ["init_args with plans, configuration and dataset_json"]
    if missing:
        raise PredictionInputError(f"fold {fold}: checkpoint {path} lacks {', '.join(missing)} "
                                   f"(not a checkpoint written by nnU-Net's trainer)")
    return {"trainer_name": checkpoint["trainer_name"], "init_args": checkpoint["init_args"]}


def _differences(trained: Any, used: Any, name: str) -> List[str]:
    """``name`` and both values wherever ``trained`` and ``used`` differ (nested dicts compared key by key; lists
    and tuples alike)."""
    if isinstance(trained, dict) and isinstance(used, dict):
        found = []
        for key in sorted(set(trained) | set(used), key=str):
            found += _differences(trained.get(key), used.get(key), f"{name}.{key}")
        return found
    if isinstance(trained, (list, tuple)) and isinstance(used, (list, tuple)):
        trained, used = list(trained), list(used)
    return [] if trained == used else [f"{name} {trained!r} in the checkpoint, {used!r} in plans.json"]


def plans_differences(trained_plans: dict, used_plans: dict, configuration: str) -> List[str]:
    """How the plans a fold was trained with differ from the plans it would be used with, for ``configuration``
    (inherited configurations resolved as nnU-Net resolves them): the keys of ``CONFIGURATION_KEYS`` and
    ``PLANS_KEYS``, one ``"<key> <trained> in the checkpoint, <used> in plans.json"`` per difference."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    found = []
    trained = PlansManager(trained_plans).get_configuration(configuration).configuration
    used = PlansManager(used_plans).get_configuration(configuration).configuration
    for key in CONFIGURATION_KEYS:
        found += _differences(trained.get(key), used.get(key), key)
    for key in PLANS_KEYS:
        found += _differences(trained_plans.get(key), used_plans.get(key), key)
    return found


def _channels(dataset_json: dict) -> dict:
    return {str(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}


def check_fold_checkpoints(model_folder: Path, folds: Sequence[Fold], trainer: str, configuration: str,
                           checkpoint_name: str = CHECKPOINT_FINAL) -> None:
    """Check that every fold's checkpoint was trained as the model folder says: by ``trainer``, for
    ``configuration``, with the folder's plans (spacing, patch size, normalisation, network architecture, axis
    order, intensity statistics) and on the folder's labels and channels.

    Args:
        model_folder: ``nnUNet_results/DatasetXXX/Trainer__Plans__configuration`` (its plans.json and dataset.json
            exist: :func:`softmax_ensemble.check_model_folder`).
        folds: the folds to use.
        trainer: the trainer class the model folder is named after (``-tr``).
        configuration: the configuration it is named after (``-c``).
        checkpoint_name: checkpoint file in each ``fold_X``.
    Raises:
        PredictionInputError: naming the fold, its checkpoint file, the model folder's file it disagrees with and
            the values on both sides.
    """
    plans_file, dataset_file = model_folder / "plans.json", model_folder / "dataset.json"
    plans = json.loads(plans_file.read_text())
    dataset = json.loads(dataset_file.read_text())
    for fold in folds:
        path = model_folder / f"fold_{fold}" / checkpoint_name
        record = read_checkpoint_record(path, fold)
        if record["trainer_name"] != trainer:
            raise PredictionInputError(
                f"fold {fold}: {path} was written by trainer {record['trainer_name']}, but the model folder is "
                f"{trainer}'s ({model_folder}); another trainer's network does not take these weights: retrain that "
                f"fold with -tr {trainer}, or leave it out of -f")
        init_args = record["init_args"]
        if init_args["configuration"] != configuration:
            raise PredictionInputError(f"fold {fold}: {path} was trained for configuration "
                                       f"{init_args['configuration']!r}, but the model folder is for {configuration!r}")
        differences = plans_differences(init_args["plans"], plans, configuration)
        if differences:
            shown = "; ".join(differences[:_SHOWN_DIFFERENCES]) + (
                f"; and {len(differences) - _SHOWN_DIFFERENCES} more" if len(differences) > _SHOWN_DIFFERENCES
                else "")
            raise PredictionInputError(
                f"fold {fold}: {path} was trained with other plans than {plans_file}: {shown}. nnU-Net would "
                f"preprocess and predict with the folder's plans: put back the plans.json the folds were trained "
                f"with, or retrain the fold with these plans")
        trained_dataset = init_args["dataset_json"]
        if trained_dataset.get("labels") != dataset.get("labels"):
            raise PredictionInputError(
                f"fold {fold}: {path} was trained on other labels than {dataset_file}: "
                f"{trained_dataset.get('labels')} in the checkpoint, {dataset.get('labels')} in dataset.json")
        if _channels(trained_dataset) != _channels(dataset):
            raise PredictionInputError(
                f"fold {fold}: {path} was trained on other input channels than {dataset_file}: "
                f"{_channels(trained_dataset)} in the checkpoint, {_channels(dataset)} in dataset.json")


def machine_memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _size(n_bytes: float) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if n_bytes >= 2 ** power:
            return f"{n_bytes / 2 ** power:.0f} {unit}"
    return f"{n_bytes / 2 ** 10:.0f} KiB"


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def check_case_geometry(cases: Sequence[Tuple[str, Union[os.PathLike, str, Sequence[Union[os.PathLike, str]]]]],
                        plans: dict, configuration: str, dataset_json: dict,
                        memory_bytes: Optional[int] = None) -> None:
    """Refuse images whose resampling to the model's spacing is implausible, from their headers alone.

    For each case, the grid nnU-Net's preprocessing resamples it to is worked out from its first image's header
    (size and spacing in SimpleITK's axis order, reversed to array order (z, y, x) and transposed as the plans
    transpose, as nnU-Net's SimpleITKIO reads them): ``round(size * spacing / model spacing)`` per axis. Refused:
    an axis that shrinks below one voxel, and a grid whose data and per-class predictions (float32: channels +
    classes values per voxel, a lower bound of what nnU-Net holds) need more memory than the machine has.

    Args:
        cases: ``(case id, image file or the case's channel files)``; files SimpleITK cannot read headers of (other
            formats) are skipped.
        plans: the model's plans (``plans.json``).
        configuration: the configuration predicted with (e.g. ``3d_fullres``).
        dataset_json: the model's dataset.json (labels: number of predicted classes).
        memory_bytes: the memory to compare with (default: this machine's physical memory).
    Raises:
        PredictionInputError: naming the case, its file, its spacing and size, the model's spacing (both in mm, z, y,
            x) and the resampled grid.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    model_spacing = [float(s) for s in manager.get_configuration(configuration).spacing]
    transpose = list(manager.transpose_forward)
    n_classes = manager.get_label_manager(dataset_json).num_segmentation_heads
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    for case, files in cases:
        files = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
        if not files or not any(files[0].name.endswith(e) for e in SITK_ENDINGS):
            continue
        try:
            geometry = read_geometry(files[0])
        except ImageHeaderError as error:
            raise PredictionInputError(f"case {case}: {error}") from None
        if len(geometry.size) != 3 or len(transpose) != 3:
            continue
        spacing_zyx, size_zyx = list(geometry.spacing)[::-1], list(geometry.size)[::-1]
        spacing_t, size_t = [spacing_zyx[a] for a in transpose], [size_zyx[a] for a in transpose]
        target_t = model_spacing if len(model_spacing) == 3 else [spacing_t[0], *model_spacing]  # 2D: no z resampling
        new_shape = [int(round(n * s / t)) for n, s, t in zip(size_t, spacing_t, target_t)]
        target_zyx = [target_t[transpose.index(a)] for a in range(3)]
        new_zyx = [new_shape[transpose.index(a)] for a in range(3)]
        needed = math.prod(new_shape) * 4 * (len(files) + n_classes)
        what = (f"case {case}: {files[0].name} has spacing {_mm(spacing_zyx)} mm (z, y, x) and {size_zyx[0]} x "
                f"{size_zyx[1]} x {size_zyx[2]} voxels; at the model's spacing {_mm(target_zyx)} mm it resamples to "
                f"{new_zyx[0]} x {new_zyx[1]} x {new_zyx[2]} voxels")
        hint = "is the header's spacing in mm? (a unit mistake makes it 10-1000 times too large or too small)"
        if min(new_shape) < 1:
            raise PredictionInputError(f"{what}, less than one voxel along an axis: {hint}")
        if memory and needed > memory:
            raise PredictionInputError(f"{what}, which needs at least {_size(needed)} of memory (this machine "
                                       f"has {_size(memory)}): {hint}")
