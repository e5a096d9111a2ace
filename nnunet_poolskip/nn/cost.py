"""What a network costs, counted rather than timed: parameters and the FLOPs of one forward pass.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: it counts the operations it has formulas for
(convolutions, transposed convolutions, matrix products, attention), each multiply-add as 2 FLOPs
(``2 * output elements * input channels per group * kernel volume`` for a convolution); bias additions,
normalisation, nonlinearities, pooling, unpooling and additions are not counted. Counting needs only shapes, so
it runs on the ``meta`` device (no memory, no arithmetic) when the network can be built there, and falls back to
the CPU otherwise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def parameter_count(network: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``network``, each shared tensor counted once."""
    seen, total = set(), 0
    for parameter in network.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def forward_flops(network: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``network`` in eval mode on an input of ``input_shape`` (batch, channels,
    spatial sizes in voxels), as FlopCounterMode counts them (see the module docstring). The input is created
    on the device of the network's first parameter (or the CPU for a network without parameters)."""
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    data = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(data)
    finally:
        network.train(was_training)
    return int(counter.get_total_flops())


def count_costs(build: Callable[[], nn.Module], input_shape: Sequence[int]) -> dict:
    """Parameters and forward FLOPs of the network ``build()`` returns, built on the meta device when that works
    (nothing allocated), else on the CPU.

    Args:
        build: makes the network (called inside a ``torch.device`` context).
        input_shape: (batch, channels, *spatial) in voxels, e.g. one patch of the plans: (1, C, *patch_size).
    Returns:
        ``{"parameters": int, "forward_flops": int, "counted_on": "meta" | "cpu"}``.
    """
    try:
        with torch.device("meta"):
            network = build()
            flops = forward_flops(network, input_shape)
        device = "meta"
    except (NotImplementedError, RuntimeError):  # an operation without a meta kernel
        with torch.device("cpu"):
            network = build()
            flops = forward_flops(network, input_shape)
        device = "cpu"
    return {"parameters": parameter_count(network), "forward_flops": flops, "counted_on": device}
