"""Fold ensembles that average SOFTMAX probabilities (the paper's protocol), built on nnU-Net's own predictor.

``nnUNetv2_predict -f 0 1 2 3 4`` averages the folds' LOGITS on the preprocessed grid and resamples once;
``nnUNetv2_ensemble`` averages probabilities but needs every fold's full probability maps on disk. Here each case is
preprocessed once by nnU-Net's preprocessor; for each fold nnU-Net's ``nnUNetPredictor`` predicts logits (sliding
window, Gaussian weighting, mirroring), which are resampled to the original geometry exactly as nnU-Net's export
resamples them, turned into probabilities by nnU-Net's label manager and added to one running sum. The label map is
the argmax of the mean, written with the dataset's own image writer.

The default (``average="exact"``) equals the mean of the per-fold probabilities that ``nnUNetv2_predict
--save_probabilities`` writes. It resamples once per fold, so it keeps that work cheap: where the plans use nnU-Net's
default probability resampling (all plans nnU-Net's planners write), it runs on the prediction device with the
bit-exact torch replica of :mod:`nnunet_poolskip.inference.resampling`; otherwise with the plans' own function.
``average="resample-once"`` (opt-in) averages the folds' softmax on the preprocessed grid and resamples the mean once,
at nnU-Net's own cost; resampling and softmax do not commute, so it gives other (close) numbers.

Outputs per case (names as nnU-Net's): ``<case><file_ending>`` and, on request, ``<case>.npz`` (key
``probabilities``, classes first, original geometry, float32) with ``<case>.pkl`` (nnU-Net's properties).
Each is written to a hidden temporary name and renamed; the label map comes last, so a case whose label map
exists (and its .npz/.pkl when requested) is complete.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from nnunet_poolskip.utilities.atomic import temporary_sibling
from nnunet_poolskip.utilities.cpu_precision import CPU_AUTOCAST_MODES, cpu_autocast_context
from nnunet_poolskip.utilities.geometry import SITK_ENDINGS, ImageHeaderError, geometry_mismatch, read_geometry
from nnunet_poolskip.utilities.image_integrity import IncompleteImageError, check_image_file_complete

CHECKPOINT_FINAL = "checkpoint_final.pth"
#: What nnU-Net's predictor reads from a checkpoint.
CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")
#: How the folds are averaged: ``predict --average``.
EXACT, RESAMPLE_ONCE = "exact", "resample-once"
AVERAGES = {EXACT: "mean of softmax probabilities",
            RESAMPLE_ONCE: "mean of softmax probabilities on the preprocessed grid, resampled once"}
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
    """Check that a case's images are readable and complete and that its channels share one geometry.

    Complete: a compressed file is read as a whole stream (SimpleITK would read a truncated ``.nii.gz`` without
    an error and predict on zeros; see :mod:`nnunet_poolskip.utilities.image_integrity`).

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
        for path in files:
            check_image_file_complete(path)
    except (ImageHeaderError, IncompleteImageError) as error:
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


def check_checkpoints(model_folder: Path, folds: Sequence[Fold], checkpoint_name: str = CHECKPOINT_FINAL) -> None:
    """Load every fold's checkpoint and check that it holds what nnU-Net's predictor reads.

    Called when nnU-Net's own loading failed, to say which file it was (nnU-Net's traceback names none).

    Raises:
        PredictionInputError: naming the fold and the file that cannot be read, and why.
    """
    import torch

    for fold in folds:
        path = model_folder / f"fold_{fold}" / checkpoint_name
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # truncated or corrupt: zip, pickle or tensor storage errors of every kind
            raise PredictionInputError(
                f"fold {fold}: checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated "
                f"or corrupt: copy it again or retrain that fold") from None
        missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
        if missing:
            raise PredictionInputError(f"fold {fold}: checkpoint {path} lacks {', '.join(missing)} "
                                       f"(not a checkpoint written by nnU-Net's trainer)")


class SoftmaxFoldEnsemble:
    """nnU-Net's predictor for several folds of one model, averaging the folds' softmax probabilities.

    The folds' weights are loaded once (nnU-Net's ``initialize_from_trained_model_folder``); for each fold the
    predictor's parameter list is set to that fold alone, so nnU-Net's sliding window runs one fold at a time.
    """

    def __init__(self, model_folder: Union[str, os.PathLike], folds: Sequence[Fold],
                 checkpoint_name: str = CHECKPOINT_FINAL, device: str = "cuda", use_mirroring: bool = True,
                 tile_step_size: float = 0.5, average: str = EXACT, verbose: bool = False,
                 cpu_autocast: str = "off"):
        """
        Args:
            model_folder: ``nnUNet_results/DatasetXXX/Trainer__Plans__configuration``.
            folds: folds to ensemble (ints or ``all``).
            checkpoint_name: checkpoint file inside each ``fold_X``.
            device: ``cuda``, ``cpu`` or ``mps``: prediction, resampling and softmax run there (resampling and
                softmax on the CPU for ``mps``, which has no float64).
            use_mirroring: test-time mirroring along the axes the trainer allowed.
            tile_step_size: sliding-window step as a fraction of the patch size (nnU-Net's default 0.5).
            average: ``exact`` (default): the mean of the folds' probabilities at the original geometry, equal to the
                mean of what ``nnUNetv2_predict --save_probabilities`` gives per fold. ``resample-once``: the mean of
                the folds' softmax on the preprocessed grid, resampled once (nnU-Net's cost; not the same numbers).
            verbose: nnU-Net's verbose output.
            cpu_autocast: ``bf16``: the predictor's forward passes run under CPU bfloat16 autocast (on ``cpu``
                only; nnU-Net's own autocast applies on CUDA); ``off`` (default): float32, as nnU-Net on the CPU.
                Resampling and softmax stay float32 either way.
        Raises:
            PredictionInputError: a fold's checkpoint cannot be read (naming fold and file), or ``average`` or
                ``cpu_autocast`` unknown.
        """
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_poolskip.inference.resampling import torch_resampling_for

        if average not in AVERAGES:
            raise PredictionInputError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
        if cpu_autocast not in CPU_AUTOCAST_MODES:
            raise PredictionInputError(f"cpu_autocast must be one of {', '.join(CPU_AUTOCAST_MODES)}, got "
                                       f"{cpu_autocast!r}")
        self.cpu_autocast = cpu_autocast
        self.folds = list(folds)
        self.average = average
        self.device = torch.device(device)
        # Resampling and softmax run where the logits are predicted; MPS has no float64, so there on the CPU.
        self.export_device = self.device if self.device.type in ("cpu", "cuda") else torch.device("cpu")
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                         use_mirroring=use_mirroring, perform_everything_on_device=True,
                                         device=self.device, verbose=verbose,
                                         verbose_preprocessing=verbose, allow_tqdm=False)
        try:
            self.predictor.initialize_from_trained_model_folder(str(model_folder), self.folds, checkpoint_name)
        except Exception:
            check_checkpoints(Path(model_folder), self.folds, checkpoint_name)  # names the broken file
            raise
        self.fold_parameters = list(self.predictor.list_of_parameters)
        self.preprocessor = self.predictor.configuration_manager.preprocessor_class(verbose=verbose)
        configuration_manager = self.predictor.configuration_manager
        # nnU-Net's resampling on the prediction device where this package reproduces the plans' function exactly;
        # the plans' own function (NumPy, on the CPU) otherwise.
        self.device_resampling = torch_resampling_for(configuration_manager.configuration)
        self.plans_resampling = configuration_manager.resampling_fn_probabilities

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

        predictor = self.predictor
        if predictor.configuration_manager.previous_stage_name is not None:
            raise PredictionInputError("cascade configurations (3d_cascade_fullres) are not supported")
        data, _, properties = self.preprocessor.run_case([str(f) for f in image_files], None,
                                                         predictor.plans_manager, predictor.configuration_manager,
                                                         predictor.dataset_json)
        data = torch.from_numpy(data)
        grid = _ExportGrid(predictor.plans_manager, predictor.configuration_manager, properties)
        total = _RunningSum(self.export_device)
        try:
            for fold, parameters in zip(self.folds, self.fold_parameters):
                predictor.list_of_parameters = [parameters]
                with cpu_autocast_context(self.cpu_autocast, self.device.type):
                    logits = predictor.predict_logits_from_preprocessed_data(data)  # float16, on the CPU
                if self.average == EXACT:
                    total.add(functools.partial(self._resample, logits, grid), self._nonlinearity)
                else:
                    total.add(logits.to, self._nonlinearity)
                if progress is not None:
                    progress(fold)
        finally:
            predictor.list_of_parameters = self.fold_parameters
        mean = total.mean(len(self.folds))
        if self.average == RESAMPLE_ONCE:
            mean = total.run(lambda device: self._resample(mean.to(device), grid, device))
        return self._to_original_geometry(mean, properties), properties

    def _nonlinearity(self, values):
        """nnU-Net's inference nonlinearity (softmax over classes, or sigmoid for region-based models), through its
        label manager as its export applies it, so that the probabilities are computed by the same kernel."""
        return self.predictor.label_manager.apply_inference_nonlin(values)

    def _resample(self, values, grid: "_ExportGrid", device):
        """nnU-Net's resampling of ``values`` (classes first) to the cropped original grid, as a float32 tensor on
        ``device``: on the device where the plans' function has a replica, with the plans' function otherwise.
        Float16 logits come back rounded to float16 as nnU-Net rounds them."""
        import torch

        if self.device_resampling is not None:
            return self.device_resampling(values.to(device), grid.shape, grid.current_spacing, grid.new_spacing,
                                          output_dtype=torch.float32)
        resampled = self.plans_resampling(values.cpu(), grid.shape, grid.current_spacing, grid.new_spacing)
        return torch.as_tensor(resampled).to(device=device, dtype=torch.float32)

    def _to_original_geometry(self, mean, properties: dict) -> np.ndarray:
        """Revert nnU-Net's cropping (background 1 outside the box) and its axis transpose, as its export does."""
        label_manager, plans_manager = self.predictor.label_manager, self.predictor.plans_manager
        if list(mean.shape[1:]) == [int(s) for s in properties["shape_before_cropping"]]:
            probabilities = mean.cpu()  # nothing was cropped (a CT's air is not zero): no second full-size copy
        else:
            probabilities = label_manager.revert_cropping_on_probabilities(
                mean.cpu(), properties["bbox_used_for_cropping"], properties["shape_before_cropping"])
        probabilities = probabilities.numpy()
        return probabilities.transpose([0] + [i + 1 for i in plans_manager.transpose_backward])

    def segmentation(self, probabilities: np.ndarray) -> np.ndarray:
        """Label map (argmax, or nnU-Net's region rule for region-based models) of averaged probabilities."""
        label_manager = self.predictor.label_manager
        segmentation = label_manager.convert_probabilities_to_segmentation(probabilities)
        segmentation = np.asarray(segmentation)
        return segmentation.astype(np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16)

    def write_case(self, output_folder: Path, case: str, probabilities: np.ndarray, properties: dict,
                   save_probabilities: bool, file_ending: Optional[str] = None) -> np.ndarray:
        """Write the label map (and probabilities) of one case atomically, label map last; returns the label map.

        ``file_ending``: of the label map (default the dataset's; ``.nii.gz`` for single files and DICOM series)."""
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        file_ending = file_ending or self.dataset_json["file_ending"]
        label_file, *probability_files = case_outputs(output_folder, case, file_ending, save_probabilities)
        segmentation = self.segmentation(probabilities)
        temporaries = []
        try:
            if save_probabilities:
                npz_file, pkl_file = probability_files
                temporaries += [temporary_sibling(npz_file), temporary_sibling(pkl_file)]
                with open(temporaries[0], "wb") as handle:  # a file object: numpy appends no second .npz
                    np.savez_compressed(handle, probabilities=probabilities)
                save_pickle(properties, str(temporaries[1]))
                os.replace(temporaries[0], npz_file)
                os.replace(temporaries[1], pkl_file)
            temporaries.append(temporary_sibling(label_file))
            self.predictor.plans_manager.image_reader_writer_class().write_seg(segmentation, str(temporaries[-1]),
                                                                                properties)
            os.replace(temporaries[-1], label_file)
        finally:
            for path in temporaries:
                if path.exists():
                    path.unlink()
        return segmentation


class _ExportGrid:
    """Where nnU-Net's export resamples a case's prediction to: the cropped original grid, in the transposed axis
    order, and the two spacings that decide how (as ``convert_predicted_logits_to_segmentation_with_correct_shape``
    computes them)."""

    def __init__(self, plans_manager, configuration_manager, properties: dict):
        self.shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
        self.new_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
        spacing = list(configuration_manager.spacing)
        self.current_spacing = spacing if len(spacing) == len(self.shape) else [self.new_spacing[0], *spacing]


#: Values (classes x voxels) the nonlinearity is applied to at a time when adding a fold (a slab of 64 MiB in float32).
_SLAB_VALUES = 1 << 24


class _RunningSum:
    """Sum of the folds' probabilities on the prediction device, moved to the CPU if the device runs out of memory."""

    def __init__(self, device):
        self.device = device
        self.total = None

    def run(self, work: Callable):
        """``work(device)``, retried on the CPU (for good, with the sum) if a CUDA device runs out of memory."""
        import torch

        try:
            return work(self.device)
        except torch.cuda.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            print("out of GPU memory while resampling; continuing this case's export on the CPU", file=sys.stderr)
            self.device = torch.device("cpu")
            if self.total is not None:
                self.total = self.total.cpu()
            return work(self.device)

    def add(self, values: Callable, nonlinearity: Callable) -> None:
        """Add ``nonlinearity(values(device))``, both computed on the sum's device."""
        self.run(lambda device: self._add(values(device), nonlinearity))

    def _add(self, values, nonlinearity) -> None:
        """The nonlinearity slab by slab along the first spatial axis, written over ``values`` (it acts on each
        voxel's classes alone, so the numbers are those of one call), then added to the sum in place: memory holds
        the sum and one fold's values, not a third full-size map. The sum changes only in the last step, so a retry
        on the CPU after running out of GPU memory adds the fold once."""
        import torch

        if values.dtype != torch.float32:  # the sum is float32, as the nonlinearity computes
            values = values.float()
        step = max(1, _SLAB_VALUES // max(1, values[:, :1].numel()))
        for start in range(0, values.shape[1], step):
            values[:, start:start + step] = nonlinearity(values[:, start:start + step])
        if self.total is None:
            self.total = values
        else:
            self.total += values.to(self.total.device)

    def mean(self, count: int):
        """The mean, in place of the sum (which is not used again)."""
        return self.total.div_(count)

