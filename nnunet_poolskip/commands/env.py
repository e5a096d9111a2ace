"""``nnunet-poolskip env``: print the shell line that makes nnU-Net find this project's trainers."""
from __future__ import annotations

import argparse
import shlex

NAME = "env"
HELP = "print the shell line that sets nnUNet_extTrainer: eval \"$(nnunet-poolskip env)\""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shell", choices=("sh", "fish"), default="sh",
                        help="syntax of the printed line (default: sh, for bash/zsh)")


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.training.discovery import ext_trainer_value

    value = ext_trainer_value()
    if args.shell == "fish":
        print(f"set -gx nnUNet_extTrainer {shlex.quote(value)}")
    else:
        print(f"export nnUNet_extTrainer={shlex.quote(value)}")
    return 0
