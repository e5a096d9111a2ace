"""Memory-lean Pool Skip kernels (pure torch): same numbers as the reference, far fewer saved activations.

The straightforward Pool Skip ``y + conv(unpool(maxpool(y)))`` keeps three large tensors alive for
backward: ``y`` (saved by max pooling), the int64 argmax indices, and the unpooled map ``U`` (saved by
the inner conv for its weight gradient). Per voxel of ``y`` that is 4 + 1 + 4 bytes in float32, about
as much as the host block's own conv/norm/nonlinearity save, hence ~1.45x the activation memory of a
U-Net with Pool Skip in every encoder stage.

None of these is needed. ``U`` is fully determined by the pooled values and by *where* in each window
the maximum sat. The functions here save only

- the pooled values (one per window, i.e. 1/prod(pool_size) of ``y``, in the conv's compute dtype), and
- the argmax position inside each window as a compact offset (int8 for windows of up to 127 voxels),

and rebuild ``U`` in backward (one unpooling, cheap next to the conv it feeds). The gradient that
reaches ``y`` through the pooling is ``grad_U`` gathered at the argmax positions and put back there,
which needs the same offsets and nothing else. With pool size 2 in 3D that is 0.625 bytes per voxel
of ``y`` instead of 9.

Exactness: the forward pass runs PyTorch's own ``max_pool*d(..., return_indices=True, ceil_mode=True)``
and ``max_unpool*d`` on the very same indices, and backward calls ``aten.convolution_backward`` (the
op autograd itself uses for convolutions) on the rebuilt ``U``. Values, ties inside a window (the first
maximum in scan order wins, as in PyTorch's max pooling), NaN handling, partial border windows and
every gradient are therefore those of the reference implementation in :mod:`nnunet_poolskip.nn.pool_skip`.

Time: the extra work is one unpooling in backward plus a table lookup each way (int64 indices <->
int8 offsets); it is paid back by what is no longer done: no zero-filled map for max pooling's
backward, no separate accumulation of the skip's and the branch's gradients, no allocation for the
skip sum. A training step takes about as long as with the reference (see benchmarks/overhead.py).

Mixed precision: under ``torch.autocast`` the inner conv computes in the autocast dtype exactly as an
autocast ``F.conv*d`` would (input, weight and bias cast to it; pooling itself stays in ``y``'s dtype,
as max pooling is exact in any dtype). Without autograd (``torch.no_grad``, inference) they run the
plain reference ops.

torch.compile: forward and backward trace without graph breaks (fullgraph=True), also under autocast.
Only eager backward writes ``y``'s gradient into the dead rebuilt unpooled map; compiled code allocates
it (inductor plans its buffers itself), as reusing the map broke autocast under compile (see
:func:`_skip_and_pool_gradient`).

Higher-order gradients: the backward passes are built from differentiable ops, so a graph of the
backward (``torch.autograd.grad(..., create_graph=True)``, gradient penalties,
``torch.autograd.functional.hvp`` / ``jvp``) gives the reference's second derivatives. For that, the
pooled maxima are a (discarded) second output of the conv function: double backward reaches ``y``
through them. Forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) is not implemented
and raises; the reference implementation supports it.

Deterministic mode: PyTorch's ``max_unpool*d`` has no deterministic kernel and raises under
``torch.use_deterministic_algorithms(True)``. With kernel = stride the windows do not overlap, so no two
maxima go to the same voxel and unpooling is a plain scatter, which PyTorch runs deterministically:
:func:`unpool` switches to it in deterministic mode (same values, same gradients).

The per-voxel window-position table of each grid size seen is cached (int8, one byte per voxel of a
single channel; at most 32 grids; safe to use from several threads).
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

POOL_FUNCTIONS: Dict[int, Callable] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
"""Max pooling per number of spatial dims (shared with the reference implementation)."""
UNPOOL_FUNCTIONS: Dict[int, Callable] = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}
"""Max unpooling per number of spatial dims (shared with the reference implementation)."""
CONV_FUNCTIONS: Dict[int, Callable] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

_HAS_DEVICE_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")  # torch >= 2.4
_is_compiling: Callable[[], bool] = getattr(getattr(torch, "compiler", None), "is_compiling", None) \
    or torch._dynamo.is_compiling  # torch < 2.3


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts convolutions to on ``device_type`` ("cpu", "cuda"), or None when off."""
    if _HAS_DEVICE_AUTOCAST_API:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cuda":  # torch < 2.4: per-device functions
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return None


def offset_dtype(pool_size: Sequence[int]) -> torch.dtype:
    """Smallest signed integer dtype that holds a position inside one pooling window."""
    window = math.prod(pool_size)
    if window <= torch.iinfo(torch.int8).max + 1:
        return torch.int8
    if window <= torch.iinfo(torch.int16).max + 1:
        return torch.int16
    return torch.int32


def _window_starts(spatial: Sequence[int], pool_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """Flat index (row-major, into the input's spatial grid) of each window's first voxel; int64 tensor
    with the pooled grid's shape (ceil(size / pool) per axis: partial windows at the far border)."""
    starts = torch.zeros((), dtype=torch.int64, device=device)
    for d, (size, k) in enumerate(zip(spatial, pool_size)):
        n_windows = -(-size // k)
        shape = [1] * len(spatial)
        shape[d] = n_windows
        axis_stride = math.prod(spatial[d + 1:])
        starts = starts + (torch.arange(n_windows, device=device, dtype=torch.int64) * (k * axis_stride)).view(shape)
    return starts


_CODES_CACHE: Dict[tuple, torch.Tensor] = {}
_CODES_CACHE_SIZE = 32
_CODES_CACHE_LOCK = threading.Lock()  # data loader threads or several models may run Pool Skip at once


def _position_codes(spatial: Sequence[int], pool_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """For every voxel of the input grid, its position inside its pooling window, row-major within the
    window (0 .. prod(pool_size) - 1); flattened, as :func:`offset_dtype`.

    Depends on the shapes only, so it is cached (a U-Net asks for the same few grids every step), except
    while torch.compile traces, where it is cheap graph code instead."""
    key = (tuple(spatial), tuple(pool_size), device)
    compiling = _is_compiling()
    if not compiling:
        with _CODES_CACHE_LOCK:
            cached = _CODES_CACHE.get(key)
        if cached is not None:
            return cached
    dtype = offset_dtype(pool_size)
    codes = torch.zeros((), dtype=dtype, device=device)
    for d, (size, k) in enumerate(zip(spatial, pool_size)):
        shape = [1] * len(spatial)
        shape[d] = size
        along_axis = (torch.arange(size, device=device, dtype=torch.int64) % k) * math.prod(pool_size[d + 1:])
        codes = codes + along_axis.to(dtype).view(shape)  # one pass over the grid per axis, in the small dtype
    codes = codes.reshape(-1)
    if not compiling:
        with _CODES_CACHE_LOCK:
            if key not in _CODES_CACHE and len(_CODES_CACHE) >= _CODES_CACHE_SIZE:
                _CODES_CACHE.pop(next(iter(_CODES_CACHE)))  # the oldest entry
            _CODES_CACHE[key] = codes
    return codes


def _offset_lookup(spatial: Sequence[int], pool_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """Flat distance (int64, in the input grid) from a window's first voxel to each window position."""
    lookup = torch.zeros((), dtype=torch.int64, device=device)
    for d, k in enumerate(pool_size):
        shape = [1] * len(pool_size)
        shape[d] = k
        lookup = lookup + (torch.arange(k, device=device, dtype=torch.int64) * math.prod(spatial[d + 1:])).view(shape)
    return lookup.reshape(-1)


def encode_offsets(indices: torch.Tensor, spatial: Sequence[int], pool_size: Sequence[int]) -> torch.Tensor:
    """Turn max pooling's flat argmax indices (int64, into the input's spatial grid) into each maximum's
    position inside its window (row-major within the window), as :func:`offset_dtype` (int8 for pool
    size 2); a contiguous tensor of ``indices``' shape. One table lookup: cheap next to the pooling."""
    codes = _position_codes(spatial, pool_size, indices.device)
    return codes.index_select(0, indices.reshape(-1)).view(indices.shape)


def decode_offsets(offsets: torch.Tensor, spatial: Sequence[int], pool_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`encode_offsets`: flat int64 indices into the input's spatial grid."""
    lookup = _offset_lookup(spatial, pool_size, offsets.device)
    relative = lookup.index_select(0, offsets.reshape(-1).long()).view(offsets.shape)
    return relative.add_(_window_starts(spatial, pool_size, offsets.device))


def max_pool(y: torch.Tensor, pool_size: Tuple[int, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max pooling with kernel = stride = ``pool_size`` (voxels per axis) and partial windows at the far
    border (``ceil_mode``): (window maxima, their flat int64 indices into ``y``'s spatial grid)."""
    return POOL_FUNCTIONS[len(pool_size)](y, pool_size, pool_size, ceil_mode=True, return_indices=True)


def unpool(values: torch.Tensor, indices: torch.Tensor, pool_size: Tuple[int, ...],
           spatial: Sequence[int]) -> torch.Tensor:
    """Each value put back at its flat spatial index in a zero map of ``spatial`` size (``max_unpool*d``
    for the windows of :func:`max_pool`).

    Under ``torch.use_deterministic_algorithms(True)``, where ``max_unpool*d`` raises, a scatter does the
    same: the windows do not overlap, so no voxel receives two values and the result (and the gradient,
    a gather) is the same to the bit. It also casts like ``max_unpool*d`` under CPU autocast (to float32).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return UNPOOL_FUNCTIONS[len(pool_size)](values, indices, pool_size, pool_size, output_size=tuple(spatial))
    if (values.device.type == "cpu" and autocast_dtype("cpu") is not None
            and values.dtype in (torch.float16, torch.bfloat16)):
        values = values.float()  # CPU autocast runs max_unpool*d in float32
    batch, channels = values.shape[:2]
    out = values.new_zeros((batch, channels, math.prod(spatial)))
    out = out.scatter(2, indices.reshape(batch, channels, -1), values.reshape(batch, channels, -1))
    return out.view(batch, channels, *spatial)


def _gather_at(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tensor`` (B, C, *spatial) read at flat spatial ``indices`` (B, C, *pooled); max_unpool's backward."""
    batch, channels = tensor.shape[:2]
    return tensor.reshape(batch, channels, -1).gather(2, indices.reshape(batch, channels, -1)).view(indices.shape)


def _add_skip(y: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``y + branch``; in place into ``branch`` (a fresh tensor of ours) when that changes neither the
    dtype nor the memory layout of the result, which saves one large allocation."""
    if torch.promote_types(y.dtype, branch.dtype) == branch.dtype and y.stride() == branch.stride():
        return branch.add_(y)
    return y + branch


def _skip_and_pool_gradient(grad_out: torch.Tensor, gathered: torch.Tensor, indices: torch.Tensor,
                            pool_size: Tuple[int, ...], spatial: Sequence[int], y_dtype: torch.dtype,
                            spare: Optional[torch.Tensor]) -> torch.Tensor:
    """Gradient of ``y + g(unpool(maxpool(y)))`` w.r.t. ``y``: ``grad_out`` plus the branch's gradient
    ``gathered`` (one value per window) added at the argmax voxels.

    Autograd on the reference computes ``grad_out + unpool(gathered)``; adding ``gathered`` only where
    it is non-zero gives the same floats. ``spare``, a dead tensor of the right size (the rebuilt unpooled
    map), is reused as the result's storage when its dtype and layout fit.

    Pass no ``spare`` while torch.compile traces: asking a backward's gradient for its layout
    (``is_contiguous``, ``stride``) makes Dynamo retrace the backward with contiguous gradients, and
    torch (2.14) then leaves the backward's autocast-off block entered, so the rest of the compiled
    forward loses autocast and the trace fails on the next conv ("RuntimeError when making fake tensor
    call": bf16 input, float32 bias).
    """
    if (spare is not None and spare.dtype == y_dtype and spare.shape == grad_out.shape
            and spare.is_contiguous() and grad_out.is_contiguous()):
        grad_y = spare.copy_(grad_out)
        batch, channels = grad_y.shape[:2]
        grad_y.view(batch, channels, -1).scatter_add_(2, indices.reshape(batch, channels, -1),
                                                      gathered.reshape(batch, channels, -1).to(y_dtype))
        return grad_y
    return grad_out.to(y_dtype) + unpool(gathered.to(y_dtype), indices, pool_size, spatial)


class _PoolUnpoolFunction(torch.autograd.Function):
    """``[y +] unpool(maxpool(y))`` saving only the int8 window offsets (backward needs no values)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, pool_size: Tuple[int, ...], skip: bool) -> torch.Tensor:  # type: ignore[override]
        spatial = tuple(y.shape[2:])
        # autocast stays on here: it decides the dtype of pooling/unpooling exactly as for the reference
        # ops (CPU autocast runs them in float32, so y + unpooled is then float32 too)
        pooled, indices = max_pool(y, pool_size)
        out = unpool(pooled, indices, pool_size, spatial)
        if skip:
            out = _add_skip(y, out)
        offsets = encode_offsets(indices, spatial, pool_size)
        ctx.save_for_backward(offsets)
        ctx.pool_size, ctx.spatial, ctx.skip, ctx.y_dtype = pool_size, spatial, skip, y.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        # differentiable ops only, so that create_graph=True records a graph of this backward; it is linear
        # in grad_out and does not depend on y (the argmax positions are constants, as in the reference)
        (offsets,) = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            indices = decode_offsets(offsets, ctx.spatial, ctx.pool_size)
            gathered = _gather_at(grad_out, indices)
            if ctx.skip:
                grad_y = _skip_and_pool_gradient(grad_out, gathered, indices, ctx.pool_size, ctx.spatial,
                                                 ctx.y_dtype, spare=None)
            else:
                grad_y = unpool(gathered.to(ctx.y_dtype), indices, ctx.pool_size, ctx.spatial)
        return grad_y, None, None


class _PoolUnpoolConvFunction(torch.autograd.Function):
    """``[y +] conv(unpool(maxpool(y)))`` saving the pooled values and int8 offsets instead of ``y``, the
    int64 indices and the unpooled map; the latter is rebuilt in backward for the conv's weight gradient.

    Returns ``(out, pooled)``: the window maxima are a second, differentiable output that callers drop.
    Saved as an output, they stay connected to ``y`` in autograd's graph, so that a graph of the backward
    (create_graph=True) reaches ``y`` through them; in a first-order backward their gradient is None."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # type: ignore[override]
                pool_size: Tuple[int, ...], padding: Tuple[int, ...], compute_dtype: torch.dtype,
                skip: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        spatial = tuple(y.shape[2:])
        with torch.autocast(y.device.type, enabled=False):
            pooled, indices = max_pool(y, pool_size)
            # casting the window maxima to the conv's compute dtype before unpooling equals casting the
            # unpooled map after it (zeros stay zeros), and keeps the smaller tensor
            pooled = pooled.to(compute_dtype)
            unpooled = unpool(pooled, indices, pool_size, spatial)
            out = CONV_FUNCTIONS[len(pool_size)](unpooled, weight, bias, 1, padding)
            del unpooled
            if skip:
                out = _add_skip(y, out)
            offsets = encode_offsets(indices, spatial, pool_size)
        ctx.save_for_backward(pooled, offsets, weight)
        ctx.pool_size, ctx.spatial, ctx.padding, ctx.skip = pool_size, spatial, padding, skip
        ctx.y_dtype, ctx.has_bias = y.dtype, bias is not None
        return out, pooled

    @staticmethod
    def backward(ctx, grad_out: Optional[torch.Tensor],  # type: ignore[override]
                 grad_pooled: Optional[torch.Tensor]):
        pooled, offsets, weight = ctx.saved_tensors
        pool_size, spatial, ndim = ctx.pool_size, ctx.spatial, len(ctx.pool_size)
        need_y, need_weight, need_bias = ctx.needs_input_grad[:3]
        # the rebuilt unpooled map is dead after the conv's backward and can hold grad_y, except
        # - under create_graph=True (grad mode on here): the recorded graph needs it;
        # - while torch.compile traces: reusing it asks for grad_out's layout, which Dynamo does not know
        #   in a backward (see _skip_and_pool_gradient); inductor plans the buffers itself anyway
        reuse_unpooled = not (torch.is_grad_enabled() or _is_compiling())
        grad_y = grad_weight = grad_bias = None
        with torch.autocast(offsets.device.type, enabled=False):
            indices = decode_offsets(offsets, spatial, pool_size)
            if grad_out is not None:
                unpooled = unpool(pooled, indices, pool_size, spatial)
                grad_unpooled, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                    grad_out.to(weight.dtype), unpooled, weight, [weight.shape[0]] if ctx.has_bias else None,
                    [1] * ndim, list(ctx.padding), [1] * ndim, False, [0] * ndim, 1,
                    [need_y, need_weight, ctx.has_bias and need_bias])
                if need_y:
                    gathered = _gather_at(grad_unpooled, indices)
                    del grad_unpooled
                    if ctx.skip:
                        grad_y = _skip_and_pool_gradient(grad_out, gathered, indices, pool_size, spatial,
                                                         ctx.y_dtype, spare=unpooled if reuse_unpooled else None)
                    else:
                        grad_y = unpool(gathered.to(ctx.y_dtype), indices, pool_size, spatial)
            if grad_pooled is not None and need_y:
                # only when differentiating a backward: the maxima are y's values at the argmax voxels
                from_pooled = unpool(grad_pooled.to(ctx.y_dtype), indices, pool_size, spatial)
                grad_y = from_pooled if grad_y is None else grad_y + from_pooled
        return grad_y, grad_weight, grad_bias, None, None, None, None


def _records_graph(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will record this call (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lean_pool_unpool(y: torch.Tensor, pool_size: Sequence[int], skip: bool = False) -> torch.Tensor:
    """``unpool(maxpool(y))``, or ``y + unpool(maxpool(y))`` with ``skip``, equal to the reference ops
    (kernel = stride = ``pool_size`` voxels, partial border windows), saving only int8 window offsets.

    Args:
        y: (batch, channels, *spatial) tensor with 1 to 3 spatial dims.
        pool_size: pooling window in voxels, one entry per spatial dim.
        skip: add ``y`` to the result (Pool Skip's ``pool_skip`` ablation).
    """
    pool_size = tuple(int(p) for p in pool_size)
    if all(p == 1 for p in pool_size) or not _records_graph(y):
        # nothing to save for backward (inference): the plain ops, without encoding offsets
        unpooled = y if all(p == 1 for p in pool_size) else unpool(*max_pool(y, pool_size), pool_size, y.shape[2:])
        return y + unpooled if skip else unpooled
    return _PoolUnpoolFunction.apply(y, pool_size, bool(skip))


def lean_pool_unpool_conv(y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          pool_size: Sequence[int], padding: Sequence[int], skip: bool = False) -> torch.Tensor:
    """``conv(unpool(maxpool(y)), weight, bias)`` (stride 1, dilation 1, one group), or ``y +`` that with
    ``skip`` (Pool Skip's ``full`` variant), with the saved-tensor footprint of the pooled values plus
    int8 offsets; values and gradients equal the reference ops.

    Args:
        y: (batch, channels, *spatial) tensor with 1 to 3 spatial dims.
        weight, bias: the inner conv's parameters (bias may be None).
        pool_size: pooling window in voxels, one entry per spatial dim.
        padding: conv zero padding in voxels per spatial dim ("same" for odd kernels: kernel // 2).
        skip: add ``y`` to the result.
    """
    pool_size = tuple(int(p) for p in pool_size)
    padding = tuple(int(p) for p in padding)
    if all(p == 1 for p in pool_size) or not _records_graph(y, weight, bias):
        # nothing to save for backward (inference): the plain ops, without encoding offsets
        unpooled = y if all(p == 1 for p in pool_size) else unpool(*max_pool(y, pool_size), pool_size, y.shape[2:])
        out = CONV_FUNCTIONS[len(pool_size)](unpooled, weight, bias, 1, padding)
        return y + out if skip else out
    compute_dtype = autocast_dtype(y.device.type)
    if compute_dtype is None or y.dtype == torch.float64:
        compute_dtype = y.dtype  # without autocast the conv runs in y's dtype (and fails like F.conv on a mismatch)
    else:
        # what autocast does to a convolution's floating arguments (float64 is left alone); these casts
        # are recorded by autograd, so the parameters' gradients come back in their own dtype
        weight = weight.to(compute_dtype) if weight.dtype != torch.float64 else weight
        bias = bias.to(compute_dtype) if bias is not None and bias.dtype != torch.float64 else bias
    out, _pooled = _PoolUnpoolConvFunction.apply(y, weight, bias, pool_size, padding, compute_dtype, bool(skip))
    return out
