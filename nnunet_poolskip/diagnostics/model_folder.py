"""Diagnose a trained nnU-Net model folder: load its checkpoint through nnU-Net, run a few of its
preprocessed cases for the dead units, and collect the per-layer diagnostics into one JSON-ready dict.

Model: ``nnUNetPredictor.initialize_from_trained_model_folder`` rebuilds the network with the trainer
class named in the checkpoint (deep supervision off, as at inference) and loads the weights; the
trainer class is looked up first with the ``find_trainer_class`` the caller passes (the ``diagnose`` command
passes :func:`nnunet_poolskip.training.discovery.find_trainer_class`, so an unset ``nnUNet_extTrainer`` gives an
error that says what to run; diagnostics does not import ``training``, which builds on it).

Data: by default the cases of ``$nnUNet_preprocessed/<dataset>/<data_identifier>`` of the model's
plans and configuration (nnU-Net's own preprocessed ``.b2nd`` / ``.npz`` files, read with nnU-Net's
dataset classes), or a folder of such files given as ``data_folder``. The fold's validation cases
(``splits_final.json`` next to that folder) come first, then the other cases in sorted order. Each
case gives one sample of exactly the plans' patch size: a crop centred on the middle of the
foreground's bounding box (from the case's ``class_locations``; the image centre when it has no
foreground), zero-padded where the image is smaller (nnU-Net pads the normalised data with 0 too).
For 2D configurations, the slice through that centre. The network runs in eval mode without
gradients, one case at a time (every norm layer behaves per sample in eval mode, so this equals one
batch of all cases).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_poolskip.diagnostics.history import HISTORY_FILENAME, read_history
from nnunet_poolskip.diagnostics.layer_statistics import NEAR_ZERO_FACTOR, layer_diagnostics, summarize, unwrap_network

CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
DEFAULT_NUM_CASES = 4


class DiagnoseInputError(ValueError):
    """Bad input to ``diagnose`` (missing folder, checkpoint, data, trainer); the message says which."""


@dataclass
class ModelSpec:
    """A checked trained model: ``folder/fold_<fold>/checkpoint_<checkpoint>.pth`` exists."""

    folder: Path
    fold: Union[int, str]
    checkpoint: str
    checkpoint_file: Path

    @property
    def fold_folder(self) -> Path:
        return self.folder / f"fold_{self.fold}"


def resolve_model(model_folder: Union[str, os.PathLike], fold: Union[int, str] = 0,
                  checkpoint: str = "final") -> ModelSpec:
    """Check a model folder (``<results>/<dataset>/<trainer>__<plans>__<configuration>``) before any work.

    Args:
        model_folder: the trained model's output folder (holds ``plans.json``, ``dataset.json``, ``fold_*``).
        fold: fold number or ``"all"``.
        checkpoint: ``"final"`` or ``"best"``.

    Raises:
        DiagnoseInputError: naming the missing folder or file.
    """
    folder = Path(model_folder).resolve()
    if checkpoint not in CHECKPOINTS:
        raise DiagnoseInputError(f"--checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
    if str(fold) != "all":
        try:
            fold = int(fold)
        except ValueError:
            raise DiagnoseInputError(f"fold must be an integer or 'all', got {fold!r}") from None
    if not folder.is_dir():
        raise DiagnoseInputError(f"model folder {folder} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise DiagnoseInputError(f"{folder} is not an nnU-Net model folder: {name} is missing")
    checkpoint_file = folder / f"fold_{fold}" / CHECKPOINTS[checkpoint]
    if not checkpoint_file.is_file():
        present = sorted(p.name for p in folder.glob("fold_*/checkpoint_*.pth"))
        raise DiagnoseInputError(f"checkpoint {checkpoint_file} not found (checkpoints in {folder}: "
                                 f"{present or 'none'}); check -f/--fold and --checkpoint")
    return ModelSpec(folder, fold, checkpoint, checkpoint_file)


@dataclass
class LoadedModel:
    """A network restored by nnU-Net, with what it was built from."""

    spec: ModelSpec
    network: torch.nn.Module
    trainer_name: str
    epochs_trained: Optional[int]
    plans_manager: object
    configuration_manager: object
    configuration_name: str
    dataset_json: dict
    num_input_channels: int


def load_model(spec: ModelSpec, device: torch.device,
               find_trainer_class: Optional[Callable[[str], type]] = None) -> LoadedModel:
    """Restore the network of ``spec`` with nnU-Net's predictor, in eval mode on ``device``.

    Args:
        spec: the model folder, fold and checkpoint (from :func:`resolve_model`).
        device: where the network is put.
        find_trainer_class: looks the checkpoint's trainer class up by name, raising RuntimeError with the fix
            when it cannot; None: nnU-Net's own ``recursive_find_trainer_class_by_name``.

    Raises:
        DiagnoseInputError: when the checkpoint's trainer class cannot be found (with the fix).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    if find_trainer_class is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find_trainer_class

    # mmap: only the small header entries are read here; the predictor loads the weights below
    try:
        checkpoint = torch.load(spec.checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
        trainer_name = checkpoint["trainer_name"]
        epochs_trained = checkpoint.get("current_epoch")
        configuration_name = checkpoint["init_args"]["configuration"]
    except (KeyError, TypeError, RuntimeError, EOFError, OSError) as error:
        raise DiagnoseInputError(f"{spec.checkpoint_file} is not a readable nnU-Net checkpoint "
                                 f"({type(error).__name__}: {error})") from None
    del checkpoint
    # nnU-Net prints its trainer search and device notes; show them only if something goes wrong
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            try:
                find_trainer_class(trainer_name)
            except RuntimeError as error:
                raise DiagnoseInputError(f"{spec.checkpoint_file}: {error}") from None
            predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                        verbose=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(spec.folder), use_folds=(spec.fold,),
                                                           checkpoint_name=spec.checkpoint_file.name)
    except BaseException:
        sys.stdout.write(chatter.getvalue())
        raise
    network = unwrap_network(predictor.network).to(device).eval()
    num_input_channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                      predictor.dataset_json)
    return LoadedModel(spec, network, trainer_name, epochs_trained, predictor.plans_manager,
                       predictor.configuration_manager, configuration_name, predictor.dataset_json,
                       num_input_channels)


def default_data_folder(model: LoadedModel) -> Path:
    """``$nnUNet_preprocessed/<dataset>/<data_identifier>`` of the model's plans and configuration."""
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed:
        raise DiagnoseInputError("nnUNet_preprocessed is not set, so the model's preprocessed cases cannot be "
                                 "found: set it, pass --data PREPROCESSED_CASES, or use --weights-only")
    return Path(nnUNet_preprocessed) / model.plans_manager.dataset_name / model.configuration_manager.data_identifier


def select_cases(data_folder: Path, fold: Union[int, str], num_cases: int) -> Tuple[object, List[str]]:
    """nnU-Net's dataset object for ``data_folder`` and the first ``num_cases`` case ids to use
    (the fold's validation cases first, see the module docstring)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if not data_folder.is_dir():
        raise DiagnoseInputError(f"preprocessed data folder {data_folder} does not exist: run "
                                 f"nnUNetv2_preprocess, pass --data PREPROCESSED_CASES, or use --weights-only")
    try:
        dataset_class = infer_dataset_class(str(data_folder))
    except (AssertionError, KeyError) as error:
        raise DiagnoseInputError(f"{data_folder} holds no nnU-Net preprocessed cases (.b2nd or .npz "
                                 f"with .pkl): {error}") from None
    dataset = dataset_class(str(data_folder))
    identifiers = sorted(dataset.identifiers)
    if not identifiers:
        raise DiagnoseInputError(f"no preprocessed cases in {data_folder}")
    first: List[str] = []
    splits = data_folder.parent / "splits_final.json"
    if splits.is_file() and str(fold) != "all":
        folds = json.loads(splits.read_text())
        if int(fold) < len(folds):
            first = [case for case in folds[int(fold)]["val"] if case in set(identifiers)]
    ordered = first + [case for case in identifiers if case not in set(first)]
    return dataset, ordered[:num_cases]


def _foreground_centre(properties: dict, spatial_shape: Sequence[int]) -> np.ndarray:
    """Middle of the bounding box of the case's sampled foreground locations, or the image centre."""
    locations = [np.asarray(v) for v in (properties.get("class_locations") or {}).values()
                 if v is not None and len(v)]
    if locations:
        coordinates = np.concatenate([loc[:, -len(spatial_shape):] for loc in locations])
        return (coordinates.min(axis=0) + coordinates.max(axis=0)) / 2
    return np.array(spatial_shape, dtype=float) / 2


def crop_case(data, properties: dict, patch_size: Sequence[int]) -> np.ndarray:
    """One sample (channels, *patch_size), float32, from a preprocessed case (channels, *spatial).

    Crops around the foreground centre (see the module docstring) and zero-pads to ``patch_size``
    (voxels). A 2D ``patch_size`` on 3D data takes the slice through that centre on the first axis.
    """
    spatial_shape = tuple(int(s) for s in data.shape[1:])
    centre = _foreground_centre(properties, spatial_shape)
    patch = [int(p) for p in patch_size]
    index: List[Union[slice, int]] = [slice(None)]
    axes = list(range(len(spatial_shape)))
    if len(patch) == len(spatial_shape) - 1:
        index.append(int(np.clip(round(centre[0]), 0, spatial_shape[0] - 1)))
        axes = axes[1:]
    elif len(patch) != len(spatial_shape):
        raise DiagnoseInputError(f"patch size {patch} does not fit data of spatial shape {spatial_shape}")
    for axis, size in zip(axes, patch):
        start = int(np.clip(round(centre[axis] - size / 2), 0, max(0, spatial_shape[axis] - size)))
        index.append(slice(start, start + size))
    sample = np.asarray(data[tuple(index)], dtype=np.float32)
    padding = [(0, 0)] + [((size - have) // 2, size - have - (size - have) // 2)
                          for size, have in zip(patch, sample.shape[1:])]
    return np.pad(sample, padding) if any(p != (0, 0) for p in padding) else sample


def case_batches(model: LoadedModel, dataset, identifiers: Sequence[str], device: torch.device) -> List[torch.Tensor]:
    """One (1, channels, *patch) tensor per case on ``device``; all cases are read and checked
    (channel count) before any network runs."""
    patch_size = model.configuration_manager.patch_size
    batches = []
    for identifier in identifiers:
        data, _, _, properties = dataset.load_case(identifier)
        if data.shape[0] != model.num_input_channels:
            raise DiagnoseInputError(f"case {identifier} in {dataset.source_folder} has {data.shape[0]} channels, "
                                     f"the network takes {model.num_input_channels} (cascade configurations "
                                     f"need the previous stage's segmentations: use --weights-only)")
        batches.append(torch.from_numpy(crop_case(data, properties, patch_size))[None].to(device))
    return batches


def diagnose(model: LoadedModel, data_folder: Optional[Path] = None, num_cases: int = DEFAULT_NUM_CASES,
             weights_only: bool = False, near_zero_factor: float = NEAR_ZERO_FACTOR,
             device: torch.device = torch.device("cpu"), progress: bool = True) -> Dict:
    """The diagnostics of one restored model as a JSON-ready dict (see ``nnunet-poolskip diagnose``).

    Args:
        model: from :func:`load_model`.
        data_folder: preprocessed cases for the dead units; ``None``: the model's own (see
            :func:`default_data_folder`).
        num_cases: how many cases (samples) to run.
        weights_only: skip the dead units (no data needed); ``dead_fraction`` is then ``None``.
        near_zero_factor: see :data:`nnunet_poolskip.diagnostics.layer_statistics.NEAR_ZERO_FACTOR`.
        device: where the network runs.
        progress: show a tqdm bar over the cases.
    """
    spec = model.spec
    data_info = None
    batches = None
    if not weights_only:
        if num_cases < 1:
            raise DiagnoseInputError(f"--num-cases must be >= 1, got {num_cases}")
        folder = Path(data_folder).resolve() if data_folder is not None else default_data_folder(model)
        dataset, identifiers = select_cases(folder, spec.fold, num_cases)
        batches = case_batches(model, dataset, identifiers, device)
        data_info = {"folder": str(folder), "cases": list(identifiers),
                     "patch_size": [int(p) for p in model.configuration_manager.patch_size],
                     "n_samples": len(identifiers), "crop": "foreground bounding-box centre, zero-padded"}
    if batches is not None:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"dead units {spec.folder.name}", unit="case", disable=not progress)
    layers = layer_diagnostics(model.network, batches, near_zero_factor)
    return {
        "model": spec.folder.name,
        "model_folder": str(spec.folder),
        "trainer": model.trainer_name,
        "plans": model.plans_manager.plans_name,
        "configuration": model.configuration_name,
        "dataset": model.plans_manager.dataset_name,
        "fold": spec.fold,
        "checkpoint": spec.checkpoint,
        "checkpoint_file": str(spec.checkpoint_file),
        "epochs_trained": model.epochs_trained,
        "near_zero_factor": near_zero_factor,
        "data": data_info,
        "summary": summarize(layers),
        "layers": layers,
        "history": read_history(spec.fold_folder / HISTORY_FILENAME),
    }
