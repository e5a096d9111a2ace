"""``nnunet-poolskip convert-amos``: AMOS 2022 download -> nnU-Net raw data set with test set and 5 folds."""
from __future__ import annotations

import argparse

NAME = "convert-amos"
HELP = ("convert the AMOS 2022 download (imagesTr/Va, labelsTr/Va) to nnU-Net's raw format with a CT/MRI-"
        "stratified 240/120 split")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_poolskip.commands._convert_common import add_common_arguments
    from nnunet_poolskip.dataset_conversion.amos import DEFAULT_MODALITY, MODALITIES

    parser.add_argument("source", metavar="SRC", help="the AMOS 2022 folder (dataset.json, imagesTr, labelsTr, "
                                                      "imagesVa, labelsVa)")
    add_common_arguments(parser, default_id=218, kind="amos")
    parser.add_argument("--modality", choices=MODALITIES, default=DEFAULT_MODALITY,
                        help="all: CT and MRI (Dataset..._AMOS, z-score normalisation as nnU-Net's AMOS task 2); "
                             "ct: ids <= 500 (..._AMOS_CT, CT normalisation); mri: ids > 500 (..._AMOS_MRI)")


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.commands._convert_common import report
    from nnunet_poolskip.dataset_conversion.amos import convert_amos
    from nnunet_poolskip.dataset_conversion.checks import ConversionError

    try:
        result = convert_amos(args.source, args.dataset_id, args.modality, args.split_file, args.output_root,
                              args.overwrite, progress=not args.quiet)
    except ConversionError as error:
        return report(NAME, error=error)
    return report(NAME, result=result)
