"""``nnunet-poolskip evaluate``: Dice, NSD and IoU of predicted label maps against references -> summary.json."""
from __future__ import annotations

import argparse
import os
import sys

NAME = "evaluate"
HELP = "Dice, NSD (MONAI, DeepMind surface elements) and IoU per case and label -> summary.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference_folder", metavar="GT_DIR", help="folder of reference label maps <case><ending>")
    parser.add_argument("prediction_folder", metavar="PRED_DIR",
                        help="folder of predicted label maps with the same file names (other files are ignored)")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--dataset-json", help="dataset.json whose 'labels' give the label values and organ names")
    labels.add_argument("--labels", nargs="+", type=int, metavar="L",
                        help="foreground label values to evaluate; other values in the maps are ignored (background "
                             "for these labels) and listed in the summary's ignored_label_values")
    parser.add_argument("--nsd-tolerance", type=float, default=None, metavar="MM",
                        help="NSD tolerance in mm for every label (default 1); with --nsd-tolerances, the tolerance "
                             "of the labels the table does not cover")
    parser.add_argument("--nsd-tolerances", metavar="FILE_OR_PRESET",
                        help="per-label NSD tolerances: a shipped preset (flare22) or a JSON file mapping label "
                             "values or organ names to mm")
    parser.add_argument("-o", "--output", required=True, help="summary.json to write (missing folders are created)")
    parser.add_argument("--csv", help="also write the per-case metrics as CSV (case,label,name,dice,nsd,iou; missing "
                                      "folders are created)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate the cases that have predictions; the summary lists the missing ones and "
                             "says complete: false")
    parser.add_argument("--file-ending", help="label map file ending (default: dataset.json's, else inferred)")
    parser.add_argument("-np", "--num-processes", type=int, default=min(4, os.cpu_count() or 1),
                        help="cases evaluated in parallel (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, metavar="S",
                        help="the training seed of the models that made these predictions (benchmark --seeds): "
                             "recorded in summary.json as \"seed\", and compare names its per-seed results by it")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nnunet_poolskip.dataset_conversion.labels import download_name_aliases
    from nnunet_poolskip.evaluation.evaluate_predictions import (
        EvaluationInputError,
        evaluate_folders,
        labels_from_dataset_json,
        write_case_csv,
    )
    from nnunet_poolskip.evaluation.nsd_tolerances import DEFAULT_TOLERANCE_MM, resolve_tolerances
    from nnunet_poolskip.utilities.atomic import check_output_path, write_json_atomic

    try:
        check_output_path(args.output, "-o/--output")
        if args.csv:
            check_output_path(args.csv, "--csv")
        file_ending = args.file_ending
        if args.dataset_json:
            labels = labels_from_dataset_json(args.dataset_json)
            file_ending = file_ending or json.loads(Path(args.dataset_json).read_text()).get("file_ending")
        else:
            if any(v <= 0 for v in args.labels):
                raise EvaluationInputError(f"--labels must be foreground values > 0, got {args.labels}")
            labels = {v: str(v) for v in sorted(set(args.labels))}
        default_mm = DEFAULT_TOLERANCE_MM if args.nsd_tolerance is None else args.nsd_tolerance
        # organ names as the AMOS download's own dataset.json spells them ("arota") match the tables too
        tolerances, notes = resolve_tolerances(labels, default_mm, args.nsd_tolerances, download_name_aliases())
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        summary = evaluate_folders(args.reference_folder, args.prediction_folder, labels, tolerances,
                                   file_ending=file_ending, allow_missing=args.allow_missing,
                                   num_processes=args.num_processes, notes=notes, progress=not args.no_progress,
                                   ignore_other_labels=args.labels is not None)
    except (EvaluationInputError, ValueError, FileNotFoundError) as error:
        print(f"nnunet-poolskip evaluate: error: {error}", file=sys.stderr)
        return 2
    if args.seed is not None:
        summary["seed"] = args.seed
    write_json_atomic(summary, args.output)
    if args.csv:
        write_case_csv(summary, args.csv)
    fg = summary["foreground_mean"]
    print(f"{summary['n_cases']} cases; foreground mean: " + ", ".join(
        f"{m} {'n/a' if fg[m] is None else f'{100 * fg[m]:.2f}%'}" for m in summary["metrics"]))
    if not summary["complete"]:
        print(f"INCOMPLETE: missing predictions for {', '.join(summary['missing_predictions'])}")
    print(f"wrote {args.output}")
    return 0
