"""nnU-Net's default resampling of predicted logits, reproduced in torch to run on the prediction device.

nnU-Net exports a prediction by resampling its float16 logits from the preprocessed grid back to the original
geometry with the plans' ``resampling_fn_probabilities``. Its planners choose ``resample_data_or_seg_to_shape(
is_seg=False, order=1, order_z=0, force_separate_z=None)``: scikit-image's ``resize`` (``scipy.ndimage.zoom``,
linear, edges extended, no anti-aliasing), channel by channel and, where the spacing is anisotropic, slice by slice
followed by nearest-neighbour along the thick axis; float64 on the CPU, rounded to float16 at the end. The softmax
fold ensemble does this once per fold, so on a GPU server it decides the ensemble's wall time.

:func:`resample_logits` gives the same float16 numbers, bit for bit, with torch on the logits' device:

1. ``torch.nn.functional.interpolate`` in float64 (same half-pixel mapping and clamped edges) agrees with SciPy to
   about 1e-13; it differs only in the order of the floating-point operations.
2. That difference can change the float16 rounding only where a value lies within one float32 step of a float16
   rounding midpoint (about 4 values in 10^4), or is close to zero (below 2**-5). Those voxels are recomputed with
   SciPy's own arithmetic (``_scipy_linear_at``), then rounded once, to nearest even, as NumPy rounds.
3. With ``output_dtype=torch.float32`` the float16 values come back as float32 (what nnU-Net's softmax reads),
   rounded by Veltkamp's split instead of two conversions, which are slow on many CPUs.

nnU-Net's own torch resampling (``resample_torch_fornnunet``) computes in float32 and gives other float16 values in
a few per cent of the voxels (probabilities move by up to about 2e-3), so it cannot stand in where the ensemble must
equal the mean of nnU-Net's per-fold probabilities. Plans with another function or settings (spline order 3, linear
along the thick axis, ...) have no replica: :func:`torch_resampling_for` returns None and the caller uses the plans'
own function.
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: The resampling function reproduced here (nnU-Net's default for probabilities), by the name plans use.
DEFAULT_PROBABILITY_RESAMPLING = "resample_data_or_seg_to_shape"

Resampler = Callable[..., torch.Tensor]

# float32 bit patterns: the 13 mantissa bits that float16 drops, their value at a float16 rounding midpoint.
_DROPPED_BITS = 0x1FFF
_HALF_MIDPOINT = 0x1000
_ABS_MASK = 0x7FFFFFFF
_SMALL_BITS = 0x3D000000  # 2**-5 as float32 bits: smaller values are always recomputed exactly
_VELTKAMP_FACTOR = float(2 ** 13 + 1)  # float32 keeps 24 bits, float16 11: splitting off 13 rounds to float16


def torch_resampling_for(configuration: dict) -> Optional[Resampler]:
    """The torch replica of a configuration's probability resampling, or None where there is none.

    Args:
        configuration: one configuration of nnU-Net's plans (``ConfigurationManager.configuration``).
    Returns:
        ``resample(logits, new_shape, current_spacing, new_spacing, output_dtype=None)`` (see
        :func:`resample_logits`) with the plans' keyword arguments bound, or
        None when the plans name another function or settings that this module does not reproduce.
    """
    if configuration.get("resampling_fn_probabilities") != DEFAULT_PROBABILITY_RESAMPLING:
        return None
    kwargs = dict(configuration.get("resampling_fn_probabilities_kwargs", {}))
    is_seg = kwargs.pop("is_seg", False)
    order, order_z = kwargs.pop("order", 3), kwargs.pop("order_z", 0)  # the defaults of nnU-Net's function
    force_separate_z = kwargs.pop("force_separate_z", False)
    threshold = kwargs.pop("separate_z_anisotropy_threshold", None)
    if kwargs or is_seg or order != 1 or order_z != 0:
        return None

    def resample(logits: torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                 new_spacing: Sequence[float], output_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return resample_logits(logits, new_shape, current_spacing, new_spacing, force_separate_z=force_separate_z,
                               separate_z_anisotropy_threshold=threshold, output_dtype=output_dtype)

    return resample


def resample_logits(logits: torch.Tensor, new_shape: Sequence[int], current_spacing: Sequence[float],
                    new_spacing: Sequence[float], force_separate_z: Optional[bool] = None,
                    separate_z_anisotropy_threshold: Optional[float] = None,
                    output_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """nnU-Net's ``resample_data_or_seg_to_shape(is_seg=False, order=1, order_z=0, ...)`` on a tensor, on its device.

    Args:
        logits: (classes, x, y, z) in nnU-Net's transposed axis order; float16 (what nnU-Net's predictor returns) or
            float32; any device.
        new_shape: target voxel grid (3 ints).
        current_spacing, new_spacing: spacings (mm) of the two grids; as in nnU-Net they decide whether the thick
            axis is resampled separately (nearest neighbour) after linear interpolation within the other two.
        force_separate_z: nnU-Net's switch (None: decide from the spacings).
        separate_z_anisotropy_threshold: nnU-Net's ``ANISO_THRESHOLD`` when None.
        output_dtype: dtype of the result (default: the input's). float32 for float16 logits gives nnU-Net's
            float16 values stored as float32, which is what its softmax reads (and saves a conversion).
    Returns:
        (classes, *new_shape) on the input's device; the input itself (converted to ``output_dtype``) when the
        shape does not change, as nnU-Net returns its input. Values from float16 logits equal nnU-Net's bit for bit;
        from float32 input they agree to about 1e-13 before the final rounding to float32.
    """
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    if logits.ndim != 4:
        raise ValueError(f"logits must be (classes, x, y, z), got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"logits must be float16 or float32, got {logits.dtype}")
    output_dtype = output_dtype or logits.dtype
    if output_dtype not in (torch.float16, torch.float32) or (logits.dtype, output_dtype) == (torch.float32,
                                                                                           torch.float16):
        raise ValueError(f"cannot resample {logits.dtype} logits to {output_dtype}")
    new_shape = [int(s) for s in new_shape]
    if list(logits.shape[1:]) == new_shape:
        return logits.to(output_dtype)
    threshold = ANISO_THRESHOLD if separate_z_anisotropy_threshold is None else separate_z_anisotropy_threshold
    separate, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, threshold)
    # Work with the thick axis first (nnU-Net resizes the planes normal to it); without one, axis 0 leads.
    axis = axis if separate else 0
    moved_shape = [new_shape[axis]] + [s for a, s in enumerate(new_shape) if a != axis]
    out = torch.empty((logits.shape[0], *new_shape), dtype=output_dtype, device=logits.device)
    plan = _SeparablePlan(torch.movedim(logits[0], axis, 0).shape, moved_shape, separate, logits.device)
    for channel in range(logits.shape[0]):
        data = torch.movedim(logits[channel], axis, 0).to(torch.float64)
        linear = plan.interpolate_linear(data)  # float64: in 3D, or within the planes when the thick axis is apart
        # Round where the result has the output's layout already (no nearest copies along the thick axis to come).
        target = out[channel] if axis == 0 and list(linear.shape) == moved_shape else None
        if logits.dtype == torch.float16:
            rounded = _round_like_float16(linear, functools.partial(plan.exact_linear_at, data), output_dtype,
                                          out=target)
        else:
            rounded = linear.to(torch.float32) if target is None else target.copy_(linear)
        del linear
        if target is None:
            out[channel] = torch.movedim(plan.nearest_along_thick_axis(rounded), 0, axis)
        del data, rounded
    return out


class _SeparablePlan:
    """Index and weight tables of nnU-Net's resampling for one (input shape, output shape), thick axis first."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], separate: bool, device: torch.device):
        self.in_shape, self.out_shape, self.separate = list(in_shape), list(out_shape), separate
        # Linear axes: all three, or the two in-plane ones when the thick axis (axis 0 here) is separate.
        self.linear_axes = [1, 2] if separate else [0, 1, 2]
        self.tables = {a: _linear_table(in_shape[a], out_shape[a], device) for a in self.linear_axes}
        self.linear_shape = [in_shape[0], *out_shape[1:]] if separate else list(out_shape)
        self.nearest = None
        if separate and in_shape[0] != out_shape[0]:
            self.nearest = torch.from_numpy(_nearest_index(in_shape[0], out_shape[0])).to(device)

    def interpolate_linear(self, data: torch.Tensor) -> torch.Tensor:
        """The linear part, in float64 (within about 1e-13 of SciPy's values), shaped ``linear_shape``."""
        if not self.separate:
            return F.interpolate(data[None, None], size=self.out_shape, mode="trilinear", align_corners=False)[0, 0]
        if list(data.shape[1:]) == self.out_shape[1:]:
            return data
        return F.interpolate(data[:, None], size=self.out_shape[1:], mode="bilinear", align_corners=False)[:, 0]

    def nearest_along_thick_axis(self, planes: torch.Tensor) -> torch.Tensor:
        """nnU-Net's order-0 step along the thick axis: copies of whole planes (a no-op without one)."""
        return planes if self.nearest is None else planes[self.nearest]  # torch's CPU index_select is far slower

    def exact_linear_at(self, data: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """SciPy's float64 values of the linear part at flat indices of ``linear_shape``, computed as SciPy does."""
        return _scipy_linear_at(data, _unravel(flat_index, self.linear_shape), self.tables)


def _linear_table(n_in: int, n_out: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """(lower index, upper index, lower weight, upper weight) of SciPy's ``zoom(order=1, mode='nearest',
    grid_mode=True)`` along one axis: source coordinate (k + 0.5) * n_in / n_out - 0.5, unclamped; the two
    neighbours clamped into the axis; weights 1 - x and 1 - (1 - x)."""
    zoom = np.divide(n_in, n_out)
    coordinate = (np.arange(n_out) + 0.5) * zoom - 0.5
    start = np.floor(coordinate)
    lower_weight = 1.0 - (coordinate - start)
    upper_weight = 1.0 - lower_weight
    start = start.astype(np.int64)
    arrays = (np.clip(start, 0, n_in - 1), np.clip(start + 1, 0, n_in - 1), lower_weight, upper_weight)
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """nnU-Net's nearest neighbour along the thick axis: map_coordinates(order=0, mode='nearest') at
    n_in / n_out * (k + 0.5) - 0.5, which SciPy rounds as floor(c + 0.5)."""
    coordinate = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return np.clip(np.floor(coordinate + 0.5), 0, n_in - 1).astype(np.int64)


def _unravel(flat_index: torch.Tensor, shape: Sequence[int]) -> List[torch.Tensor]:
    coordinates = []
    for size in reversed(shape):
        coordinates.append(flat_index % size)
        flat_index = torch.div(flat_index, size, rounding_mode="floor")
    return coordinates[::-1]


def _scipy_linear_at(data: torch.Tensor, coordinates: List[torch.Tensor], tables: dict) -> torch.Tensor:
    """SciPy's order-1 zoom at some output voxels: for the corners in C order, coefficient = value times the
    weight of each interpolated axis in axis order, summed from 0.0 (``NI_ZoomShift``). Axes without a table are
    indexed directly."""
    axes = sorted(tables)
    total = torch.zeros(coordinates[0].shape, dtype=torch.float64, device=data.device)
    for corner in itertools.product((0, 1), repeat=len(axes)):
        index = list(coordinates)
        weights = []
        for axis, side in zip(axes, corner):
            lower, upper, lower_weight, upper_weight = tables[axis]
            index[axis] = (upper if side else lower)[coordinates[axis]]
            weights.append((upper_weight if side else lower_weight)[coordinates[axis]])
        coefficient = data[tuple(index)]
        for weight in weights:
            coefficient = coefficient * weight
        total = total + coefficient
    return total


def _round_like_float16(fast: torch.Tensor, exact_at: Callable[[torch.Tensor], torch.Tensor], store: torch.dtype,
                        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``fast`` (float64, close to the exact values, see below) rounded to float16 as the exact values round, stored
    as ``store`` (float16, or float32 holding float16 values), into ``out`` when given.

    For float16 inputs (|v| <= 65504) both the fast and SciPy's sums of at most eight weighted values carry rounding
    errors below 32 * 2**-53 * 65504, about 2.3e-10 each. Away from zero (|x| >= 2**-5, where a float32 step is
    3.7e-9) the fast value can therefore round otherwise only within one float32 step of a float16 midpoint; those
    values and all smaller ones (which include float16's subnormal range) are recomputed exactly.
    """
    single = fast.to(torch.float32)
    bits = single.view(torch.int32)
    # The 13 bits that float16 drops are 0x0FFF..0x1001: within one float32 step of a float16 rounding midpoint.
    recompute = ((bits - (_HALF_MIDPOINT - 1)) & _DROPPED_BITS) < 3
    recompute |= (bits & _ABS_MASK) < _SMALL_BITS
    index = recompute.view(-1).nonzero().view(-1)
    del recompute, bits
    if store == torch.float16:
        rounded = single.to(torch.float16) if out is None else out.copy_(single)
    else:  # Veltkamp's split keeps the 11 leading bits, rounded to nearest: float16's rounding, without converting
        scaled = single * _VELTKAMP_FACTOR
        difference = scaled - single
        rounded = torch.sub(scaled, difference, out=out)
        del scaled, difference
    if index.numel():
        rounded.view(-1)[index] = round_to_dtype(exact_at(index), torch.float16).to(store)
    return rounded


def round_to_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``values`` rounded once, to nearest even, to float16 or float32, as NumPy's ``astype`` rounds.

    torch converts float64 to float16 through float32, rounding twice. Rounding to float32 "to odd" first (keep the
    nearest float32 when exact, else the neighbour whose last bit is odd) makes the second rounding give the
    correctly rounded float16, since float32 carries more than two extra bits.
    """
    if dtype == torch.float32:
        return values.to(torch.float32)
    if dtype != torch.float16:
        raise ValueError(f"cannot round to {dtype}")
    single = values.to(torch.float32)
    back = single.to(torch.float64)
    bits = single.view(torch.int32)
    to_odd = (back != values) & ((bits & 1) == 0) & single.isfinite()
    step = torch.where(values.abs() > back.abs(), 1, -1).to(torch.int32)
    return torch.where(to_odd, bits + step, bits).view(torch.float32).to(dtype)
