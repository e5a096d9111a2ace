"""``nnunet-poolskip compare``: the paper's Table 3 (Markdown + CSV), per-organ tables, paired statistics
(statistics.json) and their forest plot, and a per-organ Dice plot."""
from __future__ import annotations

import argparse
import sys

NAME = "compare"
HELP = ("compare summary.json files of nnunet-poolskip evaluate: Table 3 layout (DICE, NSD, mIoU in percent, deltas "
        "against the first), paired statistics against the first (one seed: permutation test and BCa interval over "
        "cases; several seeds: across seeds and cases), a primary endpoint with a margin, per-organ tables, plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("summaries", nargs="+", metavar="SUMMARY_JSON",
                        help="summary.json files; the first is the baseline of the deltas")
    parser.add_argument("--names", nargs="+",
                        help="model names, one per summary (default: their folder names); summaries that share a name "
                             "are the seeds of one model (e.g. --names A A A B B B for three seeds each): the "
                             "headline statistics then cover retraining and case sampling")
    parser.add_argument("--margin", type=float, default=1.0, metavar="POINTS",
                        help="practical margin of the primary endpoint in Dice points (default 1): the interval inside "
                             "+-margin is 'equivalent', entirely above/below it 'better'/'worse', else 'inconclusive'")
    parser.add_argument("--primary", nargs="*", metavar="NAME",
                        help="models whose foreground Dice against the first is the primary endpoint (Holm over "
                             "them; default: every model after the first; --primary without names: none)")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder: table3.md, table3.csv, per_organ.md, per_organ.csv, per_organ_dice.png, "
                             "and with two or more summaries statistics.json and differences.png")
    parser.add_argument("--title", help="data set name shown above the table, e.g. BTCV")
    parser.add_argument("--caveat", metavar="TEXT",
                        help="a caveat shown at the top of the tables and in every figure's title, e.g. "
                             "'SMOKE-SCALE run on synthetic phantoms'")
    parser.add_argument("--match-labels-by-value", action="store_true",
                        help="compare summaries whose label names differ for the same value (e.g. 'organ1' and "
                             "'spleen'), which are refused otherwise: you say they are the same structures; the tables "
                             "use the first summary's names and note the others")


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.evaluation.comparison_tables import CompareInputError, compare_summaries
    from nnunet_poolskip.utilities.atomic import OutputPathError, check_output_path

    try:
        check_output_path(args.output, "-o/--output", folder=True)
        outputs = compare_summaries(args.summaries, args.names, args.output, args.title, args.caveat,
                                    margin=args.margin / 100, primary=args.primary,
                                    match_labels_by_value=args.match_labels_by_value)
    except (CompareInputError, OutputPathError) as error:
        print(f"nnunet-poolskip compare: error: {error}", file=sys.stderr)
        return 2
    print(outputs["table"].read_text())
    print("wrote " + ", ".join(str(p) for p in outputs.values()))
    return 0
