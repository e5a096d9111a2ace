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

Implementations (keyword ``implementation``, same parameters, same ``state_dict`` keys, same numbers):

    "lean"       saves only the pooled values and int8 argmax offsets for backward and rebuilds
                 the unpooled map there (:mod:`nnunet_poolskip.nn.lean_kernels`): 0.625 instead of 9 bytes
                 per float32 voxel for ``full`` with pool size 2 in 3D.
    "reference"  the straightforward composition of ``max_pool*d``, ``max_unpool*d`` and the conv
                 (:func:`max_pool_unpool`); the tests check "lean" against it.
:data:`DEFAULT_IMPLEMENTATION` is what modules (and so every trainer) get when not told otherwise.
``conv_skip`` (and pool size 1) has no pooling to save on and runs the same code in both.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import nn

from nnunet_poolskip.nn.lean_kernels import POOL_FUNCTIONS, UNPOOL_FUNCTIONS, lean_pool_unpool, lean_pool_unpool_conv

VARIANTS: Tuple[str, ...] = ("full", "pool_skip", "conv_skip", "pool_conv")
"""Valid values of ``variant``; the single source of truth for the ablation names."""

IMPLEMENTATIONS: Tuple[str, ...] = ("lean", "reference")
"""Valid values of ``implementation``."""
DEFAULT_IMPLEMENTATION = "lean"
"""What the module family (and so every trainer) uses unless told otherwise. "lean" gives the same
numbers as "reference", keeps 27% less activation memory on nnU-Net's BTCV network and is not slower
(benchmarks/overhead.py, figures in benchmarks/RESULTS.md)."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = POOL_FUNCTIONS
_UNPOOL = UNPOOL_FUNCTIONS


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
                 variant: str = "full", *, implementation: str = DEFAULT_IMPLEMENTATION) -> None:
        """
        Args:
            channels: channels of the host conv's output (= in and out channels of the inner conv).
            pool_size: max-pool kernel and stride in voxels, one int or one per spatial axis.
            kernel_size: inner conv kernel in voxels (odd, so that "same" padding keeps the shape).
            variant: one of :data:`VARIANTS`.
            implementation: one of :data:`IMPLEMENTATIONS` (keyword only); changes what is kept for
                backward, never the numbers or the parameters. May be changed later through the
                ``implementation`` attribute or :func:`set_implementation`.
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
        self.implementation = implementation
        if variant != "pool_skip":
            self.conv = _CONV[self.spatial_dims](channels, channels, kernel_size, stride=1,
                                                 padding=kernel_size // 2, bias=True)

    @property
    def implementation(self) -> str:
        """``"lean"`` or ``"reference"``: how the pooling branch keeps what backward needs."""
        # modules pickled whole before this attribute existed run the default
        return getattr(self, "_implementation", DEFAULT_IMPLEMENTATION)

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {value!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
        self._implementation = value

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, pool_size={self.pool_size}, kernel_size={self.kernel_size}, "
                f"variant={self.variant!r}, implementation={self.implementation!r}")

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
        if self.implementation == "lean" and any(p > 1 for p in self.pool_size):
            return self._lean_forward(y)
        unpooled = max_pool_unpool(y, self.pool_size)
        if self.variant == "pool_skip":
            return y + unpooled
        if self.variant == "pool_conv":
            return self.conv(unpooled)
        return y + self.conv(unpooled)

    def _lean_forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.variant == "pool_skip":
            return lean_pool_unpool(y, self.pool_size, skip=True)
        return lean_pool_unpool_conv(y, self.conv.weight, self.conv.bias, self.pool_size, self.conv.padding,
                                     skip=self.variant == "full")


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


def set_implementation(module: nn.Module, implementation: str) -> int:
    """Switch every Pool Skip module inside ``module`` (itself included) to ``implementation``.

    Parameters and numbers are unchanged; only what is kept for backward differs. Returns how many
    Pool Skip modules were switched. Raises ValueError for an unknown implementation.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    switched = 0
    for child in module.modules():
        if is_pool_skip(child):
            child.implementation = implementation
            switched += 1
    return switched
