"""The Pool Skip module family (pure torch: nothing here imports nnU-Net).

Pool Skip (Sun et al., "Beyond Skip Connection: Pooling and Unpooling Design for Elimination
Singularities") sits between a host convolution and its normalisation / nonlinearity. With ``y`` the
host conv's output it computes::

    full       o = y + conv_k(unpool(maxpool_e(y)))      (the method)
    pool_skip  o = y + unpool(maxpool_e(y))              (paper Table 4: {Pool, Skip})
    conv_skip  o = y + conv_k(y)                         (paper Table 4: {Conv, Skip})
    pool_conv  o = conv_k(unpool(maxpool_e(y)))          (paper Table 4: {Pool, Conv}, no skip)

``maxpool_e`` has kernel = stride = ``pool_size`` (e, in voxels); ``unpool`` puts every window's
maximum back at its argmax position and zeros elsewhere; ``conv_k`` is a ``kernel_size`` convolution
with stride 1, "same" padding, bias, and ``channels`` in and out, with no norm or activation inside.

Spatial sizes: the authors' code requires every spatial size to be divisible by e. Here the pooling
uses partial windows at the far border (``ceil_mode=True``), so every window that overlaps the input
keeps its maximum and the output always has exactly ``y``'s shape, including sizes smaller than e.
With ``pool_size`` 1 the pool/unpool pair is the identity, so ``full`` equals ``conv_skip``.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS: Tuple[str, ...] = ("full", "pool_skip", "conv_skip", "pool_conv")
"""Valid values of ``variant``; the single source of truth for the ablation names."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}


def _as_tuple(value: Union[int, Sequence[int]], ndim: int, name: str) -> Tuple[int, ...]:
    """Expand an int to ``ndim`` entries, or validate a per-axis sequence; all entries must be >= 1."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int or a sequence of {ndim} positive ints, got {value!r}")
    if isinstance(value, int):
        values = (value,) * ndim
    else:
        try:
            values = tuple(int(v) for v in value)
        except TypeError:
            raise ValueError(f"{name} must be a positive int or a sequence of {ndim} positive ints, "
                             f"got {value!r}") from None
        if len(values) != ndim:
            raise ValueError(f"{name} must have one entry per spatial axis ({ndim}), got {value!r}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return values


def max_pool_unpool(y: torch.Tensor, pool_size: Sequence[int]) -> torch.Tensor:
    """``unpool(maxpool(y))`` with kernel = stride = ``pool_size`` (voxels per axis).

    Keeps each window's maximum at its argmax position and writes zeros elsewhere. Border windows
    that are only partly inside ``y`` are pooled over their inside part, so the result has exactly
    ``y``'s shape for any spatial size. Ties inside a window resolve as PyTorch's max pooling does.
    """
    ndim = y.dim() - 2
    if all(p == 1 for p in pool_size):
        return y
    pooled, indices = _POOL[ndim](y, pool_size, pool_size, ceil_mode=True, return_indices=True)
    return _UNPOOL[ndim](pooled, indices, pool_size, pool_size, output_size=y.shape[2:])


class _PoolSkipNd(nn.Module):
    """Shared implementation; use :class:`PoolSkip1d`, :class:`PoolSkip2d` or :class:`PoolSkip3d`."""

    spatial_dims: int = 0

    def __init__(self, channels: int, pool_size: Union[int, Sequence[int]] = 2, kernel_size: int = 3,
                 variant: str = "full") -> None:
        """
        Args:
            channels: channels of the host conv's output (= in and out channels of the inner conv).
            pool_size: max-pool kernel and stride in voxels, one int or one per spatial axis.
            kernel_size: inner conv kernel in voxels (odd, so that "same" padding keeps the shape).
            variant: one of :data:`VARIANTS`.
        """
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.channels = channels
        self.pool_size = _as_tuple(pool_size, self.spatial_dims, "pool_size")
        self.kernel_size = kernel_size
        self.variant = variant
        if variant != "pool_skip":
            self.conv = _CONV[self.spatial_dims](channels, channels, kernel_size, stride=1,
                                                 padding=kernel_size // 2, bias=True)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, pool_size={self.pool_size}, kernel_size={self.kernel_size}, "
                f"variant={self.variant!r}")

    def _check_input(self, y: torch.Tensor) -> None:
        if y.dim() != self.spatial_dims + 2:
            raise ValueError(f"{type(self).__name__} expects a (batch, channels, {self.spatial_dims} spatial) "
                             f"tensor of {self.spatial_dims + 2} dims, got shape {tuple(y.shape)}")
        if y.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} was built for {self.channels} channels, "
                             f"got input with {y.shape[1]} (shape {tuple(y.shape)})")

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        if self.variant == "conv_skip":
            return y + self.conv(y)
        unpooled = max_pool_unpool(y, self.pool_size)
        if self.variant == "pool_skip":
            return y + unpooled
        if self.variant == "pool_conv":
            return self.conv(unpooled)
        return y + self.conv(unpooled)


class PoolSkip1d(_PoolSkipNd):
    """Pool Skip for (B, C, L) inputs. See the module docstring for the variants."""

    spatial_dims = 1


class PoolSkip2d(_PoolSkipNd):
    """Pool Skip for (B, C, H, W) inputs. See the module docstring for the variants."""

    spatial_dims = 2


class PoolSkip3d(_PoolSkipNd):
    """Pool Skip for (B, C, D, H, W) inputs. See the module docstring for the variants."""

    spatial_dims = 3


POOL_SKIP_CLASSES = {1: PoolSkip1d, 2: PoolSkip2d, 3: PoolSkip3d}


def is_pool_skip(module: nn.Module) -> bool:
    """True for any Pool Skip module of this family."""
    return isinstance(module, _PoolSkipNd)
