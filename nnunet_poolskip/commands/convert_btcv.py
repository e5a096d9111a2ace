"""``nnunet-poolskip convert-btcv``: BTCV download -> nnU-Net raw data set with test set and 5 folds."""
from __future__ import annotations

import argparse

NAME = "convert-btcv"
HELP = "convert the BTCV download (RawData/Training) to nnU-Net's raw format with the paper's 18/12 split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_poolskip.commands._convert_common import add_common_arguments

    parser.add_argument("source", metavar="SRC", help="folder holding RawData/ (the unzipped RawData.zip)")
    add_common_arguments(parser, default_id=17, kind="btcv")


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.commands._convert_common import report
    from nnunet_poolskip.dataset_conversion.btcv import convert_btcv
    from nnunet_poolskip.dataset_conversion.checks import ConversionError

    try:
        result = convert_btcv(args.source, args.dataset_id, args.split_file, args.output_root, args.overwrite,
                              progress=not args.quiet)
    except ConversionError as error:
        return report(NAME, error=error)
    return report(NAME, result=result)
