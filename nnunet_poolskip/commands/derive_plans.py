"""``nnunet-poolskip derive-plans``: write CPU-sized (or other preset) plans next to planned ones."""
from __future__ import annotations

import argparse

NAME = "derive-plans"
HELP = "derive new plans from planned ones with a preset from plans/ (default: cpu_small)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True,
                        help="dataset id or name, as for nnUNetv2_train (e.g. 17 or Dataset017_BTCV)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    parser.add_argument("--preset", default="cpu_small",
                        help="shipped preset name or a preset JSON path (default cpu_small)")


def run(args: argparse.Namespace) -> int:
    from os.path import join

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_poolskip.training.derived_plans import derive_plans_file

    folder = join(nnUNet_preprocessed.require(), maybe_convert_to_dataset_name(args.dataset))
    name = derive_plans_file(folder, args.plans, args.preset)
    print(f"wrote {join(folder, name + '.json')}; train with: nnUNetv2_train {args.dataset} 3d_fullres FOLD "
          f"-tr TRAINER -p {name}")
    return 0
