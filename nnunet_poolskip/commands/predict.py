"""``nnunet-poolskip predict``: fold ensemble that averages softmax probabilities (the paper's protocol)."""
from __future__ import annotations

import argparse
import sys

NAME = "predict"
HELP = ("predict with a fold ensemble that averages SOFTMAX probabilities (nnUNetv2_predict averages logits); "
        "nnU-Net's predictor does sliding window and mirroring for each fold, whose logits are resampled on the "
        "prediction device exactly as nnU-Net resamples them")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, nargs="+",
                        help="a folder of input images named like nnU-Net's (CASE_0000<file_ending>, CASE_0001...); "
                             "or, for single-channel models, image files of any format SimpleITK reads (.nii.gz, "
                             ".nii, .nrrd, .mha, .mhd, ...) and/or folders of one DICOM series each: each is written "
                             "as NAME.nii.gz, named after the file or folder, in its exact geometry")
    parser.add_argument("--series-uid", help="SeriesInstanceUID of the DICOM series to predict, for folders that hold "
                                             "several (the error without it lists them)")
    parser.add_argument("--output-type", choices=("nifti", "dicom-seg"), default="nifti",
                        help="nifti (default): a label map per case; dicom-seg (DICOM series input only): also a "
                             "DICOM SEG, NAME.seg.dcm, referencing the source series, one segment per label (the "
                             "NIfTI label map is written too: evaluate and --continue read it)")
    parser.add_argument("--dicom-seg-type", choices=("BINARY", "LABELMAP"), default="BINARY",
                        help="DICOM SEG encoding (default BINARY, which every SEG viewer reads)")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (created if needed; a non-empty one needs --continue or --overwrite)")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (e.g. 17 or Dataset017_BTCV)")
    parser.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    parser.add_argument("-tr", "--trainer", required=True, help="trainer class the model was trained with")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble (default 0 1 2 3 4; 'all' for a model trained on all cases)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file in each fold folder (default checkpoint_final.pth)")
    parser.add_argument("--save-probabilities", "--save_probabilities", action="store_true",
                        help="also write CASE.npz (key 'probabilities': classes first, original geometry) and "
                             "CASE.pkl, as nnU-Net does")
    parser.add_argument("--device", "-device", choices=("auto", "cuda", "cpu", "mps"), default="auto",
                        help="device for prediction, resampling and softmax (default auto: cuda when torch sees a "
                             "GPU, else cpu)")
    parser.add_argument("--average", choices=("exact", "resample-once"), default="exact",
                        help="exact (default): the mean of the folds' probabilities at the original geometry, equal "
                             "to the mean of nnUNetv2_predict's per-fold probabilities; resample-once: the mean of the "
                             "folds' softmax on the preprocessed grid, resampled once (nnU-Net's export cost, close "
                             "but not equal numbers)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--continue", "--continue_prediction", dest="continue_prediction", action="store_true",
                          help="resume an interrupted run: skip the cases that predict_args.json lists as done with "
                               "the same settings (other settings are refused); without --continue or --overwrite "
                               "a non-empty output folder is refused")
    existing.add_argument("--overwrite", action="store_true",
                          help="first delete what an earlier nnunet-poolskip predict wrote into the output folder "
                               "(the files its predict_args.json lists); files of others are kept and never replaced")
    parser.add_argument("--disable-tta", "--disable_tta", action="store_true",
                        help="no test-time mirroring (faster, slightly less accurate; nnU-Net's --disable_tta)")
    parser.add_argument("--step-size", "-step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (default 0.5, nnU-Net's)")
    parser.add_argument("--cpu-autocast", choices=("off", "bf16", "auto"), default="off",
                        help="--device cpu: run the network's forward passes under bfloat16 autocast (bf16), or "
                             "only where the CPU computes bfloat16 natively (auto: avx512_bf16 or amx_bf16 in "
                             "/proc/cpuinfo); default off (float32, as nnU-Net on the CPU); no effect on CUDA")
    parser.add_argument("--verbose", action="store_true", help="nnU-Net's verbose output")


def _resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; an explicit device that is not there is an error."""
    import torch

    from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PredictionInputError("--device cuda requested but torch sees no CUDA GPU; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise PredictionInputError("--device mps requested but MPS is not available")
    return device


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nnunet_poolskip.inference.checks import check_case_geometry, check_fold_checkpoints
    from nnunet_poolskip.inference.output_folder import OutputFolder, output_mode
    from nnunet_poolskip.inference.softmax_ensemble import (
        AVERAGES,
        PredictionInputError,
        check_model_folder,
        parse_folds,
    )
    from nnunet_poolskip.utilities.atomic import OutputPathError, check_output_path
    from nnunet_poolskip.utilities.cpu_precision import resolve_cpu_autocast

    prefix = "nnunet-poolskip predict: error:"
    resolved = None
    try:
        if not 0 < args.step_size <= 1:
            raise PredictionInputError(f"--step-size must be in (0, 1], got {args.step_size}")
        folds = parse_folds(args.folds)
        from nnunetv2.paths import nnUNet_results
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        if not nnUNet_results.is_set():
            raise PredictionInputError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results")
        try:
            model_folder = Path(get_output_folder(args.dataset, args.trainer, args.plans, args.configuration))
        except (RuntimeError, ValueError) as error:  # unknown dataset id or name
            raise PredictionInputError(str(error)) from None
        check_model_folder(model_folder, folds, args.checkpoint)
        dataset_json = json.loads((model_folder / "dataset.json").read_text())
        check_output_path(args.output, "-o/--output", folder=True)
        mode = output_mode(args.continue_prediction, args.overwrite)
        resolved = _prediction_inputs(args, model_folder, dataset_json)
        cases = {name: case.files for name, case in resolved.cases.items()}
        file_ending = next(iter(resolved.cases.values())).output_ending  # of the label maps written
        device = _resolve_device(args.device)
        cpu_autocast, autocast_reason = resolve_cpu_autocast(args.cpu_autocast, device)
        from nnunet_poolskip.training.discovery import find_trainer_class

        find_trainer_class(args.trainer)  # nnU-Net looks the class up by name: fail early with the env hint
        settings = {"model_folder": str(model_folder), "folds": folds, "checkpoint": args.checkpoint,
                    "ensemble": AVERAGES[args.average], "use_mirroring": not args.disable_tta,
                    "tile_step_size": args.step_size, "output_type": args.output_type, "cpu_autocast": cpu_autocast}
        folder = OutputFolder(Path(args.output), settings, mode)
        todo_cases = folder.plan(list(cases), file_ending, args.save_probabilities)  # writes nothing
        # every fold against the model folder, and the images against the model's spacing: before any preprocessing
        check_fold_checkpoints(model_folder, folds, args.trainer, args.configuration, args.checkpoint)
        plans = json.loads((model_folder / "plans.json").read_text())
        check_case_geometry([(case, cases[case]) for case in todo_cases], plans, args.configuration, dataset_json)
    except (PredictionInputError, OutputPathError, RuntimeError) as error:
        if resolved is not None:
            resolved.close()
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    try:
        if args.cpu_autocast != "off" or cpu_autocast != "off":
            print(f"precision: {autocast_reason}")
        return _predict(args, prefix, model_folder, folds, device, cases, todo_cases, file_ending, resolved, folder,
                        cpu_autocast)
    finally:
        resolved.close()  # the temporary images of DICOM series


def _predict(args, prefix: str, model_folder, folds, device: str, cases: dict, todo_cases: list, file_ending: str,
             resolved, folder, cpu_autocast: str = "off") -> int:
    from pathlib import Path

    from tqdm import tqdm

    from nnunet_poolskip.inference.softmax_ensemble import (
        AVERAGES,
        PredictionInputError,
        SoftmaxFoldEnsemble,
        case_outputs,
    )

    output = Path(args.output)
    todo = {case: cases[case] for case in todo_cases}
    if len(todo) < len(cases):
        print(f"--continue: {len(cases) - len(todo)} of {len(cases)} cases already done, skipping them")
    if not todo:
        return 0

    try:  # loads every fold's checkpoint: a broken one is named here, before anything is written
        ensemble = SoftmaxFoldEnsemble(model_folder, folds, args.checkpoint, device=device,
                                       use_mirroring=not args.disable_tta, tile_step_size=args.step_size,
                                       average=args.average, verbose=args.verbose, cpu_autocast=cpu_autocast)
    except PredictionInputError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    # What nnU-Net's own predict leaves beside its outputs, so that the folder can be evaluated or ensembled.
    folder.start({"dataset.json": ensemble.dataset_json, "plans.json": ensemble.predictor.plans_manager.plans},
                 device)
    case_bar = tqdm(todo.items(), desc="cases", unit="case", position=0)
    for case, files in case_bar:
        case_bar.set_postfix_str(case)
        with tqdm(total=len(folds), desc=f"{case} folds", unit="fold", position=1, leave=False) as fold_bar:
            probabilities, properties = ensemble.predict_probabilities(files, progress=lambda fold: fold_bar.update())
        folder.case_started(case, case_outputs(output, case, file_ending, args.save_probabilities)
                            + _seg_outputs(args, output, case))
        segmentation = ensemble.write_case(output, case, probabilities, properties, args.save_probabilities,
                                           file_ending=file_ending)
        del probabilities
        if args.output_type == "dicom-seg":
            _write_dicom_seg(args, output, resolved.cases[case], segmentation, ensemble.dataset_json, folds)
        folder.case_done(case)
    print(f"wrote {len(todo)} case(s) to {output} ({AVERAGES[args.average]} of folds {', '.join(map(str, folds))})")
    return 0


def _prediction_inputs(args: argparse.Namespace, model_folder, dataset_json: dict):
    """``-i`` resolved into checked cases (:mod:`nnunet_poolskip.inference.inputs`); ``--output-type dicom-seg``
    checked against them (DICOM input whose slices carry UIDs, labels 1..N)."""
    from nnunet_poolskip.inference import dicom_seg
    from nnunet_poolskip.inference.inputs import (
        configuration_dimension,
        reader_endings_of,
        refuse_dicom_seg_for_files,
        resolve_inputs,
    )
    from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError

    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    if args.output_type == "dicom-seg":
        dicom_seg.label_names(dataset_json)
        refuse_dicom_seg_for_files(args.input)  # before any DICOM series is read
    dimension = configuration_dimension(model_folder / "plans.json", args.configuration)
    resolved = resolve_inputs(args.input, dataset_json["file_ending"], n_channels, dimension, args.series_uid,
                              reader_endings_of(model_folder / "plans.json"))
    if args.output_type == "dicom-seg":
        try:
            for case in resolved.cases.values():
                if case.series is None:
                    raise PredictionInputError(f"--output-type dicom-seg is for DICOM series input; {case.source} is "
                                               f"not one (use --output-type nifti)")
                dicom_seg.check_referencable(case.series.files, case.series.label())
        except BaseException:
            resolved.close()
            raise
    return resolved


def _seg_outputs(args: argparse.Namespace, output, case: str) -> list:
    from nnunet_poolskip.inference.dicom_seg import SEG_ENDING

    return [output / f"{case}{SEG_ENDING}"] if args.output_type == "dicom-seg" else []


def _write_dicom_seg(args: argparse.Namespace, output, case, segmentation, dataset_json: dict, folds) -> None:
    from nnunet_poolskip import __version__
    from nnunet_poolskip.inference import dicom_seg

    algorithm = dicom_seg.Algorithm(version=__version__, trainer=args.trainer, plans=args.plans,
                                    configuration=args.configuration, folds=" ".join(map(str, folds)),
                                    dataset=str(args.dataset))
    dicom_seg.write_dicom_seg(segmentation, case.series.files, dicom_seg.label_names(dataset_json),
                              output / f"{case.name}{dicom_seg.SEG_ENDING}", algorithm, args.dicom_seg_type)
