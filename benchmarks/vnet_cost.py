"""Parameters and FLOPs of the V-Net trainers' networks at nnU-Net's BTCV patch size.

Builds each network exactly as its trainer does (``build_network_architecture`` of
``nnUNetTrainerVNet``, ``nnUNetTrainerVNetPoolSkip`` and ``nnUNetTrainerVNetPoolSkipAll``: MONAI's
V-Net, 14 outputs for BTCV's 13 organs + background, 1 input channel) on PyTorch's ``meta`` device,
so nothing is computed and any patch size costs the same fraction of a second, and counts FLOPs with
``torch.utils.flop_counter.FlopCounterMode``:

    forward / patch   one forward pass at batch 1: the cost of one sliding-window step at inference
    train step        forward + backward at the training batch size (nnU-Net: 2 for BTCV)

FlopCounterMode counts convolutions (and matrix products) with their backward; pooling, unpooling,
batch norm, ELU and additions are not counted (they are memory-bound, and small next to 5x5x5 convs).
One multiply-add is 2 FLOPs. The Pool Skip modules run their reference implementation on ``meta``
(the lean one does the same convolutions, so the counts are identical; it cannot run on ``meta``).

Patch: 48x192x192 at batch 2, the 3d_fullres plan nnU-Net 2.8.1 derives for BTCV's median geometry
(3.0 x 0.76 x 0.76 mm, 148x512x512 voxels); already a multiple of 16 per axis, so the V-Net trainers
keep it. FLOPs scale linearly with the number of voxels.

    python benchmarks/vnet_cost.py                          # BTCV patch, prints a Markdown table
    python benchmarks/vnet_cost.py --patch 64 160 224 -o /tmp/vnet_cost.md
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BTCV_BATCH, BTCV_CLASSES, BTCV_PATCH  # noqa: E402  (one source for the BTCV plan)


def trainer_classes() -> Dict[str, type]:
    from nnunet_poolskip.training.vnet import nnUNetTrainerVNet, nnUNetTrainerVNetPoolSkip, nnUNetTrainerVNetPoolSkipAll

    return {cls.__name__: cls for cls in (nnUNetTrainerVNet, nnUNetTrainerVNetPoolSkip, nnUNetTrainerVNetPoolSkipAll)}


def build_on_meta(trainer_cls: type, patch: Sequence[int], in_channels: int, classes: int,
                  features_base: int) -> nn.Module:
    """The trainer's network, with meta tensors (no memory, no compute), Pool Skip in reference mode."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from nnunet_poolskip.nn.pool_skip import set_implementation
    from nnunet_poolskip.training.vnet import FEATURES_BASE_KEY

    configuration = ConfigurationManager({"patch_size": list(patch), "architecture": {},
                                          FEATURES_BASE_KEY: features_base})
    with torch.device("meta"):
        network = trainer_cls.build_network_architecture(None, configuration, in_channels, classes,
                                                         enable_deep_supervision=False)
    set_implementation(network, "reference")
    return network


def count_flops(network: nn.Module, batch: int, in_channels: int, patch: Sequence[int], backward: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    network.train(backward)
    x = torch.empty(batch, in_channels, *patch, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = network(x)
        if backward:
            out.sum().backward()
    network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(patch: Sequence[int], batch: int, in_channels: int, classes: int, features_base: int) -> List[dict]:
    from nnunet_poolskip.nn.pool_skip import is_pool_skip

    rows = []
    for name, cls in trainer_classes().items():
        network = build_on_meta(cls, patch, in_channels, classes, features_base)
        rows.append({
            "trainer": name,
            "pool_skip_modules": sum(is_pool_skip(m) for m in network.modules()),
            "parameters": sum(p.numel() for p in network.parameters()),
            "forward_flops": count_flops(network, 1, in_channels, patch, backward=False),
            "train_step_flops": count_flops(network, batch, in_channels, patch, backward=True),
        })
    return rows


def markdown(rows: List[dict], patch: Sequence[int], batch: int, classes: int, features_base: int) -> str:
    base = rows[0]
    lines = [f"V-Net cost at patch {'x'.join(map(str, patch))} (training batch {batch}), {classes} output channels, "
             f"stem width {features_base}; FLOPs from torch.utils.flop_counter (convolutions, 1 MAC = 2 FLOPs).",
             "",
             "| trainer | Pool Skip modules | parameters (M) | vs V-Net | forward / patch (GFLOPs) | vs V-Net "
             "| train step fwd+bwd (GFLOPs) | vs V-Net |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['trainer']} | {row['pool_skip_modules']} | {row['parameters'] / 1e6:.3f} | "
            f"{row['parameters'] / base['parameters']:.3f}x | {row['forward_flops'] / 1e9:.1f} | "
            f"{row['forward_flops'] / base['forward_flops']:.3f}x | {row['train_step_flops'] / 1e9:.1f} | "
            f"{row['train_step_flops'] / base['train_step_flops']:.3f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=list(BTCV_PATCH), metavar=("Z", "Y", "X"),
                        help="patch size in voxels, each a multiple of 16 (default: nnU-Net's BTCV 3d_fullres plan)")
    parser.add_argument("--batch", type=int, default=BTCV_BATCH, help="training batch size (default %(default)s)")
    parser.add_argument("--classes", type=int, default=BTCV_CLASSES,
                        help="output channels incl. background (default %(default)s, BTCV)")
    parser.add_argument("--channels", type=int, default=1, help="input channels (default %(default)s)")
    parser.add_argument("--width", type=int, default=16, help="V-Net stem width (default 16 = MONAI's V-Net)")
    parser.add_argument("-o", "--output", type=Path, help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    if any(s < 16 or s % 16 for s in args.patch):
        parser.error(f"--patch must be multiples of 16 on every axis (V-Net), got {args.patch}")
    if args.batch < 1 or args.classes < 1:
        parser.error("--batch and --classes must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    rows = measure(args.patch, args.batch, args.channels, args.classes, args.width)
    text = markdown(rows, args.patch, args.batch, args.classes, args.width)
    print(text, end="")
    if args.output is not None:
        tmp = args.output.with_name(f".{args.output.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
