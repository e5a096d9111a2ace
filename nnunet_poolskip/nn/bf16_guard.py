"""A workaround for a defect of torch's CPU bfloat16 convolution: float32 where its weight gradient is wrong.

Measured with torch 2.14.1 on an AMD EPYC with avx512_bf16 (benchmarks/cpu_bf16_conv_check.py, benchmarks/RESULTS.md):
under CPU bf16 autocast, oneDNN's weight gradient of a 3D convolution (or transposed convolution) with 16 channels or
more is wrong when the input's depth is larger than 1 and smaller than the kernel's depth: NaN or values of 1e36 in
some entries, from one call to the next, or silently 130 % off (e.g. a 3x3x3 convolution on 2x4x4 voxels, a 5x5x5 one
on 4x8x8). The forward pass and the input gradient are right, and so is everything in float32. MONAI's V-Net (5x5x5
convolutions) meets it at two stages of a demo-sized 16x32x32 patch and its training diverged to NaN; nnU-Net's demo
network never does (its smallest feature map is 4x4x4 for 3x3x3 kernels). The trainers of this project apply
:func:`float32_where_bf16_conv_gradients_fail` to their network under CPU bf16 autocast, and a Pool Skip module
(:mod:`nnunet_poolskip.nn.pool_skip`) runs in float32 by itself on such inputs (:func:`needs_float32`), in both its
implementations, so that they keep giving the same numbers.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch


def bf16_conv_weight_gradient_unreliable(input_spatial: Sequence[int], kernel_size: Sequence[int]) -> bool:
    """Whether a 3D (transposed) convolution on an input of ``input_spatial`` voxels (depth, height, width) with a
    ``kernel_size`` kernel (voxels) meets the CPU bfloat16 weight-gradient defect (module docstring): some axis is
    larger than 1 and smaller than the kernel along it. Only depth was seen to matter; every axis is checked, as the
    convolutions this covers are small and cost little in float32. False for 1D and 2D convolutions."""
    if len(input_spatial) != 3 or len(kernel_size) != 3:
        return False
    return any(1 < int(size) < int(kernel) for size, kernel in zip(input_spatial, kernel_size))


def needs_float32(x: torch.Tensor, kernel_size: Sequence[int]) -> bool:
    """Whether a 3D convolution with ``kernel_size`` (voxels) applied to ``x`` (N, C, D, H, W) right now would run
    under CPU bfloat16 autocast and meet the weight-gradient defect: then it must run in float32."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and bf16_conv_weight_gradient_unreliable(x.shape[2:], kernel_size))


def _float32_when_unreliable(module, forward, x, *args, **kwargs):
    if needs_float32(x, module.kernel_size):
        with torch.autocast("cpu", enabled=False):
            return forward(x.float(), *args, **kwargs)
    return forward(x, *args, **kwargs)


def float32_where_bf16_conv_gradients_fail(network: torch.nn.Module) -> int:
    """Make every 3D convolution and transposed convolution of ``network`` run in float32, with autocast off, on
    the calls where CPU bfloat16 autocast would give it a wrong weight gradient
    (:func:`bf16_conv_weight_gradient_unreliable`, decided per call from the input's shape); every other call is
    unchanged. The modules keep their class and parameters (checkpoints are nnU-Net's as before): only the
    instance's ``forward`` is wrapped, once. Returns the number of modules wrapped."""
    wrapped = 0
    for module in network.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and "forward" not in vars(module):
            module.forward = functools.partial(_float32_when_unreliable, module, module.forward)
            wrapped += 1
    return wrapped
