"""Arguments and reporting shared by ``convert-btcv`` and ``convert-amos`` (not a subcommand itself)."""
from __future__ import annotations

import argparse
import sys


def add_common_arguments(parser: argparse.ArgumentParser, default_id: int, kind: str) -> None:
    parser.add_argument("-d", "--dataset-id", type=int, default=default_id,
                        help=f"nnU-Net data set id (default {default_id})")
    parser.add_argument("--split-file", default=None,
                        help=f"test/train split JSON (default: the shipped "
                             f"nnunet_poolskip/dataset_conversion/split_files/{kind}_split.json; 'none': no test "
                             f"split, every labelled case in the 5-fold cross-validation, as nnU-Net Revisited; "
                             f"format in README / nnunet_poolskip/dataset_conversion/splits.py)")
    parser.add_argument("-o", "--output-root", default=None,
                        help="nnU-Net raw folder to write into (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing converted data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def report(command: str, result=None, error: Exception = None) -> int:
    """Print the outcome: one error line on stderr (exit status 2), or a summary on stdout (0)."""
    if error is not None:
        print(f"nnunet-poolskip {command}: error: {error}", file=sys.stderr)
        return 2
    folds = result.folds
    sizes = ", ".join(f"{len(f['train'])}/{len(f['val'])}" for f in folds)
    verb = "wrote" if result.written else "kept"
    print(f"{verb} {result.target}: {len(result.train)} train+val cases (imagesTr), {len(result.test)} test cases "
          f"(imagesTs/labelsTs); {len(folds)} folds, train/val {sizes}")
    for note in result.notes:
        print(f"note: {note}")
    return 0
