"""``nnunet-poolskip predict``: fold ensemble that averages softmax probabilities (the paper's protocol)."""
from __future__ import annotations

import argparse
import sys

NAME = "predict"
HELP = ("predict with a fold ensemble that averages SOFTMAX probabilities (nnUNetv2_predict averages logits); "
        "nnU-Net's predictor does sliding window and mirroring for each fold, whose logits are resampled on the "
        "prediction device exactly as nnU-Net resamples them")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="folder of input images named like nnU-Net's: CASE_0000<file_ending>, CASE_0001...")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
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
    parser.add_argument("--continue", "--continue_prediction", dest="continue_prediction", action="store_true",
                        help="skip cases whose outputs already exist (resume an interrupted run)")
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

    from tqdm import tqdm

    from nnunet_poolskip.inference.softmax_ensemble import (
        AVERAGES,
        PredictionInputError,
        SoftmaxFoldEnsemble,
        case_outputs,
        check_case_images,
        check_model_folder,
        group_case_files,
        parse_folds,
    )
    from nnunet_poolskip.utilities.atomic import OutputPathError, check_output_path, write_json_atomic
    from nnunet_poolskip.utilities.cpu_precision import resolve_cpu_autocast

    prefix = "nnunet-poolskip predict: error:"
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
        n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
        file_ending = dataset_json["file_ending"]
        check_output_path(args.output, "-o/--output", folder=True)
        cases = group_case_files(Path(args.input), file_ending, n_channels)
        for case, files in tqdm(cases.items(), desc="checking input images", unit="case",
                                disable=len(cases) < 2, leave=False):
            check_case_images(case, files, file_ending)
        device = _resolve_device(args.device)
        cpu_autocast, autocast_reason = resolve_cpu_autocast(args.cpu_autocast, device)
        from nnunet_poolskip.training.discovery import find_trainer_class

        find_trainer_class(args.trainer)  # nnU-Net looks the class up by name: fail early with the env hint
    except (PredictionInputError, OutputPathError, RuntimeError) as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2

    output = Path(args.output)
    settings = {"model_folder": str(model_folder), "folds": folds, "checkpoint": args.checkpoint,
                "ensemble": AVERAGES[args.average], "use_mirroring": not args.disable_tta,
                "tile_step_size": args.step_size, "cpu_autocast": cpu_autocast}
    recorded_file = output / "predict_args.json"
    if args.continue_prediction:
        problem = _continue_problem(output, recorded_file, settings, cases, file_ending)
        if problem:
            print(f"{prefix} --continue: {problem}", file=sys.stderr)
            return 2
    todo = {case: files for case, files in cases.items()
            if not (args.continue_prediction
                    and all(p.is_file() for p in case_outputs(output, case, file_ending, args.save_probabilities)))}
    if len(todo) < len(cases):
        print(f"--continue: {len(cases) - len(todo)} of {len(cases)} cases already done, skipping them")
    if not todo:
        return 0

    if args.cpu_autocast != "off" or cpu_autocast != "off":
        print(f"precision: {autocast_reason}")
    try:  # loads every fold's checkpoint: a broken one is named here, before anything is written
        ensemble = SoftmaxFoldEnsemble(model_folder, folds, args.checkpoint, device=device,
                                       use_mirroring=not args.disable_tta, tile_step_size=args.step_size,
                                       average=args.average, verbose=args.verbose, cpu_autocast=cpu_autocast)
    except PredictionInputError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    # What nnU-Net's own predict leaves beside its outputs, so that the folder can be evaluated or ensembled.
    write_json_atomic(ensemble.dataset_json, output / "dataset.json")
    write_json_atomic(ensemble.predictor.plans_manager.plans, output / "plans.json")
    write_json_atomic({**settings, "device": device}, recorded_file)
    case_bar = tqdm(todo.items(), desc="cases", unit="case", position=0)
    for case, files in case_bar:
        case_bar.set_postfix_str(case)
        with tqdm(total=len(folds), desc=f"{case} folds", unit="fold", position=1, leave=False) as fold_bar:
            probabilities, properties = ensemble.predict_probabilities(files, progress=lambda fold: fold_bar.update())
        ensemble.write_case(output, case, probabilities, properties, args.save_probabilities)
        del probabilities
    print(f"wrote {len(todo)} case(s) to {output} ({AVERAGES[args.average]} of folds {', '.join(map(str, folds))})")
    return 0


RECORDED_BEFORE_KEYED = {"cpu_autocast": "off"}
"""predict_args.json keys that older versions did not write, and what their predictions were made with."""


def _continue_problem(output, recorded_file, settings: dict, cases: dict, file_ending: str) -> str:
    """Why ``--continue`` must not reuse what ``output`` holds, or "" when it may."""
    import json

    if recorded_file.is_file():
        recorded = json.loads(recorded_file.read_text())
        # keys added in later versions, with the value their outputs were made with
        recorded = {**RECORDED_BEFORE_KEYED, **recorded}
        changed = [k for k in settings if recorded.get(k) != settings[k]]
        if changed:  # resuming with other settings would mix two different ensembles in one folder
            return (f"{output} was predicted with other settings ("
                    + ", ".join(f"{k}: {recorded.get(k)!r} then, {settings[k]!r} now" for k in changed)
                    + "); use a new output folder or drop --continue")
        return ""
    foreign = sorted(case for case in cases if (output / f"{case}{file_ending}").is_file())
    if foreign:  # e.g. single-fold nnUNetv2_predict outputs: same names, other predictions
        shown = ", ".join(f"{case}{file_ending}" for case in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        return (f"{output} holds predictions ({shown}) but no predict_args.json, so they were not written by "
                f"nnunet-poolskip predict (nnUNetv2_predict writes the same names) and cannot be counted as done; "
                f"use a new output folder, or drop --continue to predict every case again")
    return ""
