"""``nnunet-poolskip diagnose``: elimination-singularity diagnostics of trained models (JSON + figures)."""
from __future__ import annotations

import argparse
import sys

NAME = "diagnose"
HELP = ("per-conv-layer l2/l1, Hoyer sparsity, near-zero weights and dead units of a trained model "
        "(optionally next to another one), as diagnostics.json and PNG figures")

JSON_NAME = "diagnostics.json"
LAYERS_PNG = "diagnostics.png"
HISTORY_PNG = "diagnostics_over_epochs.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", metavar="MODEL_FOLDER",
                        help="trained model folder, e.g. $nnUNet_results/Dataset017_BTCV/"
                             "nnUNetTrainerPoolSkip__nnUNetPlans__3d_fullres")
    parser.add_argument("-f", "--fold", default="0", help="fold to diagnose: a number or 'all' (default 0)")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final",
                        help="checkpoint_final.pth or checkpoint_best.pth (default final)")
    parser.add_argument("--data", metavar="PREPROCESSED_CASES", default=None,
                        help="folder of nnU-Net preprocessed cases (.b2nd/.npz + .pkl) for the dead units "
                             "(default: $nnUNet_preprocessed/<dataset>/<data_identifier> of each model's plans)")
    parser.add_argument("--num-cases", type=int, default=4,
                        help="cases run for the dead units, one patch each (default 4; the fold's "
                             "validation cases first)")
    parser.add_argument("--compare", metavar="OTHER_MODEL_FOLDER", action="append", default=[],
                        help="another trained model folder to diagnose with the same fold and checkpoint, "
                             "e.g. the baseline; repeat for more")
    parser.add_argument("--weights-only", action="store_true",
                        help="skip the dead units (no data needed, no forward pass)")
    parser.add_argument("--near-zero-factor", type=float, default=None,
                        help="a weight is near zero when |w| <= factor * rms(layer weights) (default 0.01)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the networks run for the dead units (default: cuda if available)")
    parser.add_argument("--caveat", metavar="TEXT",
                        help="a line put atop every figure's title, e.g. that the models come from a smoke-scale run")
    parser.add_argument("-o", "--output", default=None, metavar="OUT",
                        help=f"output folder for {JSON_NAME}, {LAYERS_PNG} and, when training recorded a "
                             f"history, {HISTORY_PNG} (default: diagnostics/<MODEL_FOLDER's name>_fold<F> in the "
                             f"current folder)")


def default_output(model_folder: str, fold: str):
    """``diagnostics/<model folder name>_fold<fold>`` in the current folder (the default of ``-o``)."""
    from pathlib import Path

    return Path("diagnostics") / f"{Path(model_folder).resolve().name}_fold{fold}"


def _labels_unique(reports) -> None:
    """Make the ``model`` labels unique (two folders with the same name from different datasets)."""
    seen = set()
    for report in reports:
        if report["model"] in seen:
            report["model"] = f"{report['dataset']}/{report['model']}"
        if report["model"] in seen:
            report["model"] = report["model_folder"]
        seen.add(report["model"])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_poolskip.diagnostics.model_folder import DiagnoseInputError, resolve_model
    from nnunet_poolskip.utilities.atomic import OutputPathError, check_output_path

    try:
        output = check_output_path(args.output or default_output(args.model_folder, args.fold), "-o/--output",
                                   folder=True)
        specs = [resolve_model(folder, args.fold, args.checkpoint) for folder in [args.model_folder, *args.compare]]
        if args.data is not None and not Path(args.data).is_dir():
            raise DiagnoseInputError(f"--data folder {args.data} does not exist")
        if args.near_zero_factor is not None and args.near_zero_factor < 0:
            raise DiagnoseInputError(f"--near-zero-factor must be >= 0, got {args.near_zero_factor}")
        if args.num_cases < 1 and not args.weights_only:
            raise DiagnoseInputError(f"--num-cases must be >= 1, got {args.num_cases}")
        return _run(args, specs, output)
    except (DiagnoseInputError, OutputPathError) as error:
        print(f"nnunet-poolskip diagnose: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, specs, output) -> int:
    import torch

    from nnunet_poolskip.diagnostics.layer_statistics import NEAR_ZERO_FACTOR
    from nnunet_poolskip.diagnostics.model_folder import diagnose, load_model
    from nnunet_poolskip.diagnostics.plots import plot_history, plot_layer_curves
    from nnunet_poolskip.training.discovery import find_trainer_class
    from nnunet_poolskip.utilities.atomic import write_json_atomic

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    factor = NEAR_ZERO_FACTOR if args.near_zero_factor is None else args.near_zero_factor
    reports = []
    for spec in specs:
        model = load_model(spec, device, find_trainer_class)
        reports.append(diagnose(model, args.data, args.num_cases, args.weights_only, factor, device))
        del model
    _labels_unique(reports)
    output.mkdir(parents=True, exist_ok=True)
    document = {
        "description": "nnunet-poolskip elimination-singularity diagnostics; per conv layer in data-flow order. "
                       "l2_l1 = ||W||_2/||W||_1 (bias excluded), hoyer = (sqrt(n) - l1/l2)/(sqrt(n) - 1), "
                       "near_zero_fraction = share of |w| <= near_zero_factor * rms(W), dead_fraction = share "
                       "of output channels whose pre-activation is <= 0 at every voxel of every sample "
                       "(null: no nonlinearity follows, or no data).",
        **reports[0],
        "compare": reports[1:],
    }
    write_json_atomic(document, output / JSON_NAME)
    plot_layer_curves(reports, output / LAYERS_PNG, args.caveat)
    wrote_history = plot_history(reports, output / HISTORY_PNG, args.caveat)
    for report in reports:
        summary = report["summary"].get("host", {})
        dead = summary.get("dead_fraction_mean")
        print(f"{report['model']} (fold {report['fold']}, {report['checkpoint']}): {summary.get('n_layers')} convs, "
              f"l2/l1 mean {summary.get('l2_l1_mean'):.4f} max {summary.get('l2_l1_max'):.4f} "
              f"({summary.get('l2_l1_max_layer')}), zero filters {summary.get('n_zero_filters')}, "
              f"dead units {summary.get('n_dead_units')}"
              + (f" (mean fraction {dead:.4f})" if dead is not None else ""))
    print(f"wrote {output / JSON_NAME}, {output / LAYERS_PNG}" + (f", {output / HISTORY_PNG}" if wrote_history else ""))
    return 0
