"""``nnunet-poolskip synth``: synthetic BTCV or AMOS phantoms in the exact raw download layout."""
from __future__ import annotations

import argparse
import sys

NAME = "synth"
HELP = "write synthetic abdominal phantoms in the raw download layout of BTCV or AMOS 2022"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_poolskip.dataset_conversion.phantoms import ANATOMY_SCALES, DEFAULT_ANATOMY

    parser.add_argument("--kind", required=True, choices=("btcv", "amos"), help="which download layout to imitate")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (absent or empty); BTCV: OUT/RawData/Training/..., AMOS: OUT/imagesTr/...")
    parser.add_argument("--cases", type=int, default=None,
                        help="number of labelled cases (default: 30 for btcv, 24 for amos)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; a case depends only on seed, kind and number")
    parser.add_argument("--size", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="nominal voxel grid of a case (default 40 64 64: 4.7 mm in-plane, 7 mm (btcv) or "
                             "10 mm (amos) slices); "
                             "sizes vary by about 10%% per case; the field of view stays the same")
    parser.add_argument("--mri-cases", type=int, default=None,
                        help="amos only: how many of the cases are MRI (numbers from 501; default cases // 6)")
    parser.add_argument("--unlabelled", type=int, default=0,
                        help="also write this many unlabelled test images (BTCV RawData/Testing/img, AMOS imagesTs)")
    parser.add_argument("--anatomy", choices=sorted(ANATOMY_SCALES), default=DEFAULT_ANATOMY,
                        help="organ sizes: standard (BTCV-like, the default) or learnable (the small organs grown "
                             "about the same centres so that a short CPU training sees them: the demo's phantoms)")
    parser.add_argument("--overwrite", action="store_true", help="replace phantoms written earlier into the folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.dataset_conversion.phantoms import DEFAULT_SIZE, write_phantoms

    try:
        ids = write_phantoms(args.kind, args.output, cases=args.cases, seed=args.seed,
                             size=tuple(args.size) if args.size else DEFAULT_SIZE, mri_cases=args.mri_cases,
                             unlabelled=args.unlabelled, overwrite=args.overwrite, progress=not args.quiet,
                             anatomy=args.anatomy)
    except ValueError as error:
        print(f"nnunet-poolskip synth: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} labelled {args.kind} phantoms to {args.output}")
    return 0
