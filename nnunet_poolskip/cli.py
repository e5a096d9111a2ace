"""The ``nnunet-poolskip`` console script: one subcommand per module in ``nnunet_poolskip.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs... except for building ``--help``, which needs
every module's arguments; command modules therefore keep heavy imports (torch, nnU-Net) inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from nnunet_poolskip import __version__

COMMAND_MODULES = (
    "env",
    "derive_plans",
    "synth",
    "convert_btcv",
    "convert_amos",
    "predict",
    "evaluate",
    "compare",
    "diagnose",
    "benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-poolskip",
                                     description="Pool Skip for nnU-Net v2 (see README.md).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"nnunet_poolskip.commands.{module_name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
