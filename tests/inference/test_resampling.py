"""The torch replica of nnU-Net's default probability resampling: the same float16 logits, bit for bit, as nnU-Net's
own ``resample_data_or_seg_to_shape`` (scikit-image/SciPy, float64), on every kind of geometry nnU-Net meets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

from nnunet_poolskip.inference.resampling import resample_logits, round_to_dtype, torch_resampling_for

DEFAULT_KWARGS = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}


def nnunet(logits: torch.Tensor, new_shape, current_spacing, new_spacing, **kwargs) -> np.ndarray:
    return resample_data_or_seg_to_shape(logits, new_shape, current_spacing, new_spacing,
                                         **{**DEFAULT_KWARGS, **kwargs})


def random_logits(shape, seed: int, scale: float = 6.0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).normal(0, scale, shape)).astype(np.float16))


GEOMETRIES = [  # (input grid, output grid, current spacing, new spacing): what each case exercises
    ((3, 14, 17, 19), (29, 40, 33), (1.0, 1.0, 1.0), (0.5, 0.4, 0.6)),  # trilinear upsampling
    ((3, 30, 41, 22), (11, 19, 20), (0.5, 0.5, 0.5), (1.3, 1.1, 0.6)),  # trilinear downsampling (no anti-aliasing)
    ((3, 9, 30, 31), (31, 77, 70), (3.0, 0.8, 0.8), (1.0, 0.3, 0.35)),  # thick slices: 2D, then nearest along z
    ((3, 20, 30, 31), (7, 61, 70), (2.0, 1.0, 1.0), (6.0, 0.5, 0.45)),  # thick target slices, nearest z downsampled
    ((3, 25, 8, 30), (33, 21, 61), (0.8, 4.0, 0.8), (0.6, 1.5, 0.4)),  # the thick axis in the middle
    ((3, 24, 30, 7), (24, 55, 13), (0.8, 0.8, 3.5), (0.8, 0.4, 2.0)),  # thick last axis, unchanged first axis
    ((3, 1, 40, 41), (1, 77, 80), (5.0, 1.0, 1.0), (5.0, 0.5, 0.5)),  # a 2D configuration (one slice)
    ((3, 16, 1, 17), (31, 1, 40), (1.0, 1.0, 1.0), (0.5, 1.0, 0.4)),  # a singleton axis inside
]


@pytest.mark.parametrize("shape,new_shape,current_spacing,new_spacing", GEOMETRIES)
def test_float16_logits_equal_nnunet_bit_for_bit(shape, new_shape, current_spacing, new_spacing):
    logits = random_logits(shape, seed=sum(shape))
    expected = nnunet(logits, new_shape, current_spacing, new_spacing)
    resampled = resample_logits(logits, new_shape, current_spacing, new_spacing)
    assert resampled.dtype == torch.float16 and tuple(resampled.shape) == (shape[0], *new_shape)
    assert expected.dtype == np.float16
    np.testing.assert_array_equal(resampled.numpy().view(np.int16), expected.view(np.int16))
    # the same float16 values, stored as float32 (what the ensemble's softmax reads)
    as_float32 = resample_logits(logits, new_shape, current_spacing, new_spacing, output_dtype=torch.float32)
    assert as_float32.dtype == torch.float32
    np.testing.assert_array_equal(as_float32.numpy(), expected.astype(np.float32))


def test_rounding_midpoints_and_subnormals_equal_nnunet():
    # Logits near zero (float16's subnormal range) and coarse float16 inputs whose averages land exactly on float16
    # rounding midpoints: the values where a fast float64 result may round otherwise than SciPy's.
    logits = random_logits((4, 12, 13, 14), seed=1, scale=1e-4)
    logits[2:] = torch.from_numpy(np.random.default_rng(2).integers(-40, 40, (2, 12, 13, 14)) / 8).half()
    for new_shape in ((24, 26, 28), (23, 27, 31), (35, 9, 30)):
        expected = nnunet(logits, new_shape, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
        resampled = resample_logits(logits, new_shape, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
        np.testing.assert_array_equal(resampled.numpy().view(np.int16), expected.view(np.int16))
        as_float32 = resample_logits(logits, new_shape, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), output_dtype=torch.float32)
        np.testing.assert_array_equal(as_float32.numpy(), expected.astype(np.float32))


def test_float32_probabilities_agree_and_unchanged_shape_is_returned_as_is():
    probabilities = torch.softmax(random_logits((3, 10, 12, 14), seed=3).float(), 0)
    expected = nnunet(probabilities, (19, 25, 21), (1.0, 1.0, 1.0), (0.5, 0.5, 0.7))
    resampled = resample_logits(probabilities, (19, 25, 21), (1.0, 1.0, 1.0), (0.5, 0.5, 0.7))
    assert resampled.dtype == torch.float32
    np.testing.assert_allclose(resampled.numpy(), expected, rtol=0, atol=1e-7)
    assert resample_logits(probabilities, (10, 12, 14), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)) is probabilities
    with pytest.raises(ValueError, match="cannot resample torch.float32 logits to torch.float16"):
        resample_logits(probabilities, (9, 9, 9), (1, 1, 1), (1, 1, 1), output_dtype=torch.float16)


def test_forced_separate_z_and_threshold_follow_nnunet():
    logits = random_logits((2, 10, 16, 18), seed=4)
    for kwargs in ({"force_separate_z": True}, {"force_separate_z": False},
                   {"separate_z_anisotropy_threshold": 1.5}):
        expected = nnunet(logits, (21, 30, 37), (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), **kwargs)
        resampled = resample_logits(logits, (21, 30, 37), (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), **kwargs)
        np.testing.assert_array_equal(resampled.numpy().view(np.int16), expected.view(np.int16))


def test_round_to_dtype_rounds_once_to_nearest_even_like_numpy():
    rng = np.random.default_rng(5)
    values = rng.normal(0, 10, 100_000)
    half = values.astype(np.float16)
    midpoints = (half.astype(np.float64) + np.nextafter(half, np.float16(np.inf)).astype(np.float64)) / 2
    values = np.concatenate([values, midpoints, np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf),
                             rng.normal(0, 1e-6, 1000), [0.0, -0.0, 65504.0, 65520.0, 1e6, -1e6]])
    with np.errstate(over="ignore"):  # 1e6 is infinite in float16, for NumPy as for torch
        expected = values.astype(np.float16)
    # torch's own cast rounds through float32 and differs from NumPy just above midpoints: the case handled here
    assert not np.array_equal(torch.from_numpy(values).half().numpy().view(np.int16), expected.view(np.int16))
    rounded = round_to_dtype(torch.from_numpy(values), torch.float16).numpy()
    np.testing.assert_array_equal(rounded.view(np.int16), expected.view(np.int16))


def test_replica_only_for_the_settings_it_reproduces():
    configuration = {"resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                     "resampling_fn_probabilities_kwargs": dict(DEFAULT_KWARGS)}
    assert callable(torch_resampling_for(configuration))
    for change in ({"order": 3}, {"order_z": 1}, {"is_seg": True}, {"unknown": 1}):
        other = {**configuration,
                 "resampling_fn_probabilities_kwargs": {**DEFAULT_KWARGS, **change}}
        assert torch_resampling_for(other) is None, change
    assert torch_resampling_for({**configuration, "resampling_fn_probabilities": "resample_torch_fornnunet"}) is None

    resample = torch_resampling_for(configuration)
    logits = random_logits((2, 6, 7, 8), seed=6)
    np.testing.assert_array_equal(resample(logits, (9, 9, 9), (1, 1, 1), (0.7, 0.8, 0.9)).numpy(),
                                  nnunet(logits, (9, 9, 9), (1, 1, 1), (0.7, 0.8, 0.9)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_equals_nnunet_bit_for_bit():
    for shape, new_shape, current_spacing, new_spacing in GEOMETRIES:
        logits = random_logits(shape, seed=7)
        expected = nnunet(logits, new_shape, current_spacing, new_spacing)
        resampled = resample_logits(logits.cuda(), new_shape, current_spacing, new_spacing)
        assert resampled.device.type == "cuda"
        np.testing.assert_array_equal(resampled.cpu().numpy().view(np.int16), expected.view(np.int16))
