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
                 module (:func:`max_pool_unpool`); the tests check "lean" against it.
:data:`DEFAULT_IMPLEMENTATION` is what modules (and so every trainer) get when not told otherwise.
``conv_skip`` (and pool size 1) has no pooling to save on and runs the same code in both. A lean module
whose ``.conv`` has hooks (forward, backward, global; pruning and old-style weight/spectral norm work
through them) runs the reference path, which calls ``.conv``; weight parametrizations
(``torch.nn.utils.parametrize``) are applied by the lean path itself. Both paths support second-order
gradients and ``torch.use_deterministic_algorithms(True)``.

3D reading of the paper: the paper (2D) specifies a 3x3 inner convolution and 2x2 pooling. The defaults
here, kernel 3 and pool size 2 along every axis, read that as 3x3x3 and 2x2x2 in 3D. On nnU-Net's
anisotropic stages (host kernel 1x3x3 on thick slices, where nnU-Net itself neither convolves nor
downsamples across slices) that means an inner conv with 3x the host conv's parameters and pooling
across thick slices. The other literal reading, an inner conv and pool window shaped like the host
conv (e.g. 1x3x3 and 1x2x2), is built with per-axis ``kernel_size`` / ``pool_size``, which
:func:`nnunet_poolskip.nn.inject.inject_pool_skip` derives from each host conv with ``host_shaped=True``.
"""
from __future__ import annotations

import operator
from typing import Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from nnunet_poolskip.nn.bf16_guard import needs_float32
from nnunet_poolskip.nn.lean_kernels import lean_pool_unpool, lean_pool_unpool_conv, max_pool, unpool

VARIANTS: Tuple[str, ...] = ("full", "pool_skip", "conv_skip", "pool_conv")
"""Valid values of ``variant``; the single source of truth for the ablation names."""

IMPLEMENTATIONS: Tuple[str, ...] = ("lean", "reference")
"""Valid values of ``implementation``."""
DEFAULT_IMPLEMENTATION = "lean"
"""What the module family (and so every trainer) uses unless told otherwise. "lean" gives the same
numbers as "reference", keeps 27% less activation memory on nnU-Net's BTCV network and is not slower
(benchmarks/overhead.py, figures in benchmarks/RESULTS.md)."""

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def as_int(value, name: str) -> int:
    """``value`` as a Python int: ints and NumPy integers pass, bools and floats (e.g. 0.7) are refused."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def as_per_axis(value: Union[int, Sequence[int]], ndim: int, name: str) -> Tuple[int, ...]:
    """Expand an integer to ``ndim`` entries, or validate a per-axis sequence; all entries must be >= 1.
    NumPy integers count as integers; bools and floats are refused."""
    message = f"{name} must be a positive int or a sequence of {ndim} positive ints, got {value!r}"
    if isinstance(value, (str, bytes)):
        raise ValueError(message)
    try:
        values = (as_int(value, name),) * ndim
    except ValueError:
        try:
            values = tuple(as_int(v, name) for v in value)
        except (TypeError, ValueError):
            raise ValueError(message) from None
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
    Works under ``torch.use_deterministic_algorithms(True)`` (see :func:`lean_kernels.unpool`).
    """
    pool_size = tuple(pool_size)
    if all(p == 1 for p in pool_size):
        return y
    return unpool(*max_pool(y, pool_size), pool_size, y.shape[2:])


def _runs_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run any hook (its own or a global one), as ``nn.Module.__call__``
    checks it: pruning, old-style weight/spectral norm and user hooks all work through hooks."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks
                or getattr(_module_hooks, "_global_forward_hooks", None)
                or getattr(_module_hooks, "_global_forward_pre_hooks", None)
                or getattr(_module_hooks, "_global_backward_hooks", None)
                or getattr(_module_hooks, "_global_backward_pre_hooks", None))


class _PoolSkipNd(nn.Module):
    """Shared implementation; use :class:`PoolSkip1d`, :class:`PoolSkip2d` or :class:`PoolSkip3d`."""

    spatial_dims: int = 0

    def __init__(self, channels: int, pool_size: Union[int, Sequence[int]] = 2,
                 kernel_size: Union[int, Sequence[int]] = 3, variant: str = "full", *,
                 implementation: str = DEFAULT_IMPLEMENTATION) -> None:
        """
        Args:
            channels: channels of the host conv's output (= in and out channels of the inner conv).
            pool_size: max-pool kernel and stride in voxels, one int or one per spatial axis (1 along an
                axis: no pooling along it).
            kernel_size: inner conv kernel in voxels, one int or one per spatial axis; odd, so that
                "same" padding keeps the shape.
            variant: one of :data:`VARIANTS`.
            implementation: one of :data:`IMPLEMENTATIONS` (keyword only); changes what is kept for
                backward, never the numbers or the parameters. May be changed later through the
                ``implementation`` attribute or :func:`set_implementation`.
        """
        super().__init__()
        try:
            channels = as_int(channels, "channels")
            if channels < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"channels must be a positive int, got {channels!r}") from None
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        try:
            kernel = as_per_axis(kernel_size, self.spatial_dims, "kernel_size")
            if any(k % 2 == 0 for k in kernel):
                raise ValueError
        except ValueError:  # odd: "same" padding keeps the shape
            raise ValueError(f"kernel_size must be a positive odd int or a sequence of {self.spatial_dims} "
                             f"positive odd ints, got {kernel_size!r}") from None
        self.channels = channels
        self.pool_size = as_per_axis(pool_size, self.spatial_dims, "pool_size")
        self.kernel_size = kernel
        self.variant = variant
        self.implementation = implementation
        if variant != "pool_skip":
            self.conv = _CONV[self.spatial_dims](channels, channels, kernel, stride=1,
                                                 padding=tuple(k // 2 for k in kernel), bias=True)

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

    def _lean_applies(self) -> bool:
        """Whether the lean kernels compute exactly what this module's pieces would.

        The lean kernels run the inner conv functionally with ``self.conv.weight`` (the effective weight:
        a parametrization is applied on access). They cannot run the conv module itself, so whenever
        calling it would do more than ``Conv*d.forward`` with that weight (any hook on it, including
        pruning's and old-style weight/spectral norm's pre-hooks, or a subclass with its own forward, or
        conv settings the kernels do not take), the reference path runs and calls ``self.conv``.
        """
        if self.implementation != "lean" or all(p == 1 for p in self.pool_size):
            return False
        if self.variant == "pool_skip":
            return True
        conv, conv_class = self.conv, _CONV[self.spatial_dims]
        return (isinstance(conv, conv_class) and type(conv).forward is conv_class.forward
                and type(conv)._conv_forward is conv_class._conv_forward and not _runs_hooks(conv)
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation) and conv.groups == 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        if self.variant != "pool_skip" and self.spatial_dims == 3 and needs_float32(y, self.conv.kernel_size):
            # torch's CPU bf16 weight gradient of this conv would be wrong (nn/bf16_guard.py): float32 here, in
            # both implementations alike
            with torch.autocast("cpu", enabled=False):
                return self._forward(y.float())
        return self._forward(y)

    def _forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.variant == "conv_skip":
            return y + self.conv(y)
        if self._lean_applies():
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
