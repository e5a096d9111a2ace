"""Fold ensembles that average SOFTMAX probabilities (the paper's protocol), built on nnU-Net's own predictor.

``nnUNetv2_predict -f 0 1 2 3 4`` averages the folds' LOGITS; ``nnUNetv2_ensemble`` averages probabilities but
needs every fold's full probability maps on disk. Here each case is preprocessed once by nnU-Net's
preprocessor, then for each fold nnU-Net's ``nnUNetPredictor`` predicts logits (sliding window, Gaussian
weighting, mirroring) and ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples them to
the original geometry and applies the softmax. One running sum per case holds the probabilities, so memory
is bounded by two probability maps whatever the number of folds. The label map is the argmax of the mean,
written with the dataset's own image writer.

Outputs per case (names as nnU-Net's): ``<case><file_ending>`` and, on request, ``<case>.npz`` (key
``probabilities``, classes first, original geometry, float32) with ``<case>.pkl`` (nnU-Net's properties).
Each is written to a hidden temporary name and renamed; the label map comes last, so a case whose label map
exists (and its .npz/.pkl when requested) is complete.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from nnunet_poolskip.utilities.geometry import SITK_ENDINGS, ImageHeaderError, geometry_mismatch, read_geometry

CHECKPOINT_FINAL = "checkpoint_final.pth"
Fold = Union[int, str]


class PredictionInputError(ValueError):
    """Bad prediction input (model folder, folds, images); the message names the file, fold or case."""


def parse_folds(folds: Sequence[str]) -> List[Fold]:
    """Fold arguments as nnU-Net takes them: integers, or ``all``."""
    parsed: List[Fold] = []
    for fold in folds:
        if str(fold) == "all":
            parsed.append("all")
        elif str(fold).isdigit():
            parsed.append(int(fold))
        else:
            raise PredictionInputError(f"fold {fold!r} is neither an integer nor 'all'")
    if len(set(parsed)) != len(parsed):
        raise PredictionInputError(f"folds {list(folds)} repeat a fold")
    return parsed


def check_model_folder(model_folder: Path, folds: Sequence[Fold], checkpoint_name: str = CHECKPOINT_FINAL) -> None:
    """Check that the model folder, its dataset.json/plans.json and every fold's checkpoint exist.

    Raises:
        PredictionInputError: naming the missing folder, file or fold(s).
    """
    if not model_folder.is_dir():
        raise PredictionInputError(f"model folder {model_folder} does not exist: train with the same dataset, "
                                   f"trainer (-tr), plans (-p) and configuration (-c) first")
    for name in ("dataset.json", "plans.json"):
        if not (model_folder / name).is_file():
            raise PredictionInputError(f"{model_folder / name} is missing (is this an nnU-Net model folder?)")
    missing = [f for f in folds if not (model_folder / f"fold_{f}" / checkpoint_name).is_file()]
    if missing:
        raise PredictionInputError(
            f"fold(s) {', '.join(map(str, missing))} have no {checkpoint_name} in {model_folder} "
            f"(missing: {', '.join(str(model_folder / f'fold_{f}' / checkpoint_name) for f in missing)}); "
            f"finish their training or choose folds with -f")


def group_case_files(folder: Path, file_ending: str, n_channels: int) -> Dict[str, List[Path]]:
    """Group nnU-Net input images ``<case>_<XXXX><file_ending>`` by case, channels in order.

    Args:
        folder: input folder.
        file_ending: the dataset's file ending, e.g. ``.nii.gz``.
        n_channels: number of input channels dataset.json declares.
    Returns:
        case id -> [channel 0 file, channel 1 file, ...].
    Raises:
        PredictionInputError: missing folder, no images, a file with the ending but without ``_XXXX``, or a case
            whose channels are not exactly 0 .. n_channels-1 (naming the case and what it has).
    """
    if not folder.is_dir():
        raise PredictionInputError(f"input folder {folder} does not exist")
    pattern = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending))
    channels: Dict[str, Dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(file_ending):
            continue
        match = pattern.fullmatch(path.name)
        if match is None:
            raise PredictionInputError(f"input file {path} lacks the channel suffix _XXXX before {file_ending} "
                                       f"(nnU-Net naming: CASE_0000{file_ending})")
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    if not channels:
        raise PredictionInputError(f"no input images *_XXXX{file_ending} in {folder}")
    expected = list(range(n_channels))
    for case, found in channels.items():
        if sorted(found) != expected:
            raise PredictionInputError(f"case {case} has channels {sorted(found)} in {folder}, but the model takes "
                                       f"{n_channels} channel(s) {['%04d' % c for c in expected]} (dataset.json)")
    return {case: [found[c] for c in expected] for case, found in channels.items()}


def check_case_images(case: str, files: Sequence[Path], file_ending: str) -> None:
    """Check that a case's images are readable (headers only) and that its channels share one geometry.

    Raises:
        PredictionInputError: naming the case and file.
    """
    if file_ending not in SITK_ENDINGS:  # a reader this check does not know: at least the file must open
        for path in files:
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as error:
                raise PredictionInputError(f"case {case}: cannot read {path}: {error}") from None
        return
    try:
        geometries = [read_geometry(path) for path in files]
    except ImageHeaderError as error:
        raise PredictionInputError(f"case {case}: {error}") from None
    for path, geometry in zip(files[1:], geometries[1:]):
        problem = geometry_mismatch(geometries[0], geometry)
        if problem:
            raise PredictionInputError(f"case {case}: channel {path.name} does not match {files[0].name}: {problem}")


def case_outputs(output_folder: Path, case: str, file_ending: str, save_probabilities: bool) -> List[Path]:
    """The files a finished case has in ``output_folder``."""
    files = [output_folder / f"{case}{file_ending}"]
    if save_probabilities:
        files += [output_folder / f"{case}.npz", output_folder / f"{case}.pkl"]
    return files


def _temporary(path: Path) -> Path:
    # Keep the real ending: the image writers choose the format from it.
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


class SoftmaxFoldEnsemble:
    """nnU-Net's predictor for several folds of one model, averaging the folds' softmax probabilities.

    The folds' weights are loaded once (nnU-Net's ``initialize_from_trained_model_folder``); for each fold the
    predictor's parameter list is set to that fold alone, so nnU-Net's sliding window runs one fold at a time.
    """

    def __init__(self, model_folder: Union[str, os.PathLike], folds: Sequence[Fold],
                 checkpoint_name: str = CHECKPOINT_FINAL, device: str = "cuda", use_mirroring: bool = True,
                 tile_step_size: float = 0.5, verbose: bool = False):
        """
        Args:
            model_folder: ``nnUNet_results/DatasetXXX/Trainer__Plans__configuration``.
            folds: folds to ensemble (ints or ``all``).
            checkpoint_name: checkpoint file inside each ``fold_X``.
            device: ``cuda``, ``cpu`` or ``mps``.
            use_mirroring: test-time mirroring along the axes the trainer allowed.
            tile_step_size: sliding-window step as a fraction of the patch size (nnU-Net's default 0.5).
            verbose: nnU-Net's verbose output.
        """
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folds = list(folds)
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                         use_mirroring=use_mirroring, perform_everything_on_device=True,
                                         device=torch.device(device), verbose=verbose,
                                         verbose_preprocessing=verbose, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(model_folder), self.folds, checkpoint_name)
        self.fold_parameters = list(self.predictor.list_of_parameters)
        self.preprocessor = self.predictor.configuration_manager.preprocessor_class(verbose=verbose)

    @property
    def dataset_json(self) -> dict:
        return self.predictor.dataset_json

    def predict_probabilities(self, image_files: Sequence[Union[str, os.PathLike]], progress=None):
        """Mean softmax probabilities of the folds for one case, at the original image geometry.

        Args:
            image_files: the case's channel files, channel 0 first.
            progress: optional callable ``progress(fold)`` run after each fold (e.g. a tqdm update).
        Returns:
            (probabilities float32 array (classes, *original image array shape), nnU-Net's properties dict).
        """
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        predictor = self.predictor
        if predictor.configuration_manager.previous_stage_name is not None:
            raise PredictionInputError("cascade configurations (3d_cascade_fullres) are not supported")
        data, _, properties = self.preprocessor.run_case([str(f) for f in image_files], None,
                                                         predictor.plans_manager, predictor.configuration_manager,
                                                         predictor.dataset_json)
        data = torch.from_numpy(data)
        total: Optional[np.ndarray] = None
        try:
            for fold, parameters in zip(self.folds, self.fold_parameters):
                predictor.list_of_parameters = [parameters]
                logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
                _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
                    logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
                    properties, return_probabilities=True)
                del logits
                if total is None:
                    total = probabilities.astype(np.float32, copy=False)
                else:
                    total += probabilities
                del probabilities
                if progress is not None:
                    progress(fold)
        finally:
            predictor.list_of_parameters = self.fold_parameters
        total /= len(self.folds)
        return total, properties

    def segmentation(self, probabilities: np.ndarray) -> np.ndarray:
        """Label map (argmax, or nnU-Net's region rule for region-based models) of averaged probabilities."""
        label_manager = self.predictor.label_manager
        segmentation = label_manager.convert_probabilities_to_segmentation(probabilities)
        segmentation = np.asarray(segmentation)
        return segmentation.astype(np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16)

    def write_case(self, output_folder: Path, case: str, probabilities: np.ndarray, properties: dict,
                   save_probabilities: bool) -> None:
        """Write the label map (and probabilities) of one case atomically, label map last."""
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        file_ending = self.dataset_json["file_ending"]
        label_file, *probability_files = case_outputs(output_folder, case, file_ending, save_probabilities)
        segmentation = self.segmentation(probabilities)
        temporaries = []
        try:
            if save_probabilities:
                npz_file, pkl_file = probability_files
                temporaries += [_temporary(npz_file), _temporary(pkl_file)]
                with open(temporaries[0], "wb") as handle:  # a file object: numpy appends no second .npz
                    np.savez_compressed(handle, probabilities=probabilities)
                save_pickle(properties, str(temporaries[1]))
                os.replace(temporaries[0], npz_file)
                os.replace(temporaries[1], pkl_file)
            temporaries.append(_temporary(label_file))
            self.predictor.plans_manager.image_reader_writer_class().write_seg(segmentation, str(temporaries[-1]),
                                                                                properties)
            os.replace(temporaries[-1], label_file)
        finally:
            for path in temporaries:
                if path.exists():
                    path.unlink()
