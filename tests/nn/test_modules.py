"""The Pool Skip module family against an independent computation written with explicit loops.

The independent reference (`naive_pool_skip`) walks every pooling window in Python, takes the first
maximum in scan order (PyTorch's tie rule), writes it back into a zero map, and convolves with an
explicit sum over kernel offsets in float64. Every variant, both implementations, 1D/2D/3D, odd sizes,
sizes smaller than the pool and per-axis pool sizes are checked against it. Gradients are checked with
finite differences (torch.autograd.gradcheck), which is independent of both implementations.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nnunet_poolskip.nn.pool_skip import (
    DEFAULT_IMPLEMENTATION,
    IMPLEMENTATIONS,
    POOL_SKIP_CLASSES,
    VARIANTS,
    PoolSkip1d,
    PoolSkip2d,
    PoolSkip3d,
    is_pool_skip,
    max_pool_unpool,
    set_implementation,
)


def naive_unpooled(y: np.ndarray, pool: tuple) -> np.ndarray:
    """unpool(maxpool(y)) by explicit loops over (batch, channel, window); partial windows at the border."""
    out = np.zeros_like(y)
    spatial = y.shape[2:]
    window_starts = [range(0, size, k) for size, k in zip(spatial, pool)]
    for b, c in itertools.product(range(y.shape[0]), range(y.shape[1])):
        for start in itertools.product(*window_starts):
            best, best_pos = None, None
            inside = [range(s, min(s + k, size)) for s, k, size in zip(start, pool, spatial)]
            for pos in itertools.product(*inside):  # row-major scan: the first maximum wins
                value = y[(b, c) + pos]
                if best is None or value > best:
                    best, best_pos = value, pos
            out[(b, c) + best_pos] = best
    return out


def naive_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' convolution (cross-correlation, odd kernel, zero padding) as an explicit sum over offsets."""
    kernel = weight.shape[2:]
    pad = [k // 2 for k in kernel]
    padded = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    spatial = x.shape[2:]
    out = np.zeros((x.shape[0], weight.shape[0], *spatial)) + bias.reshape(1, -1, *([1] * len(spatial)))
    for offset in itertools.product(*[range(k) for k in kernel]):
        window = padded[(slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(offset, spatial))]
        # out[b, o, ...] += sum_i weight[o, i, offset] * window[b, i, ...]
        out += np.einsum("oi,bi...->bo...", weight[(slice(None), slice(None)) + offset], window)
    return out


def naive_pool_skip(module, y: torch.Tensor) -> np.ndarray:
    y64 = y.detach().double().numpy()
    unpooled = naive_unpooled(y64, module.pool_size)
    if module.variant == "pool_skip":
        return y64 + unpooled
    weight = module.conv.weight.detach().double().numpy()
    bias = module.conv.bias.detach().double().numpy()
    if module.variant == "conv_skip":
        return y64 + naive_conv(y64, weight, bias)
    branch = naive_conv(unpooled, weight, bias)
    return branch if module.variant == "pool_conv" else y64 + branch


# (spatial dims, spatial size, pool size): odd sizes, sizes not divisible by the pool, sizes below it
CASES = [
    (1, (1,), 2), (1, (7,), 2), (1, (5,), 3), (1, (2,), 4),
    (2, (1, 1), 2), (2, (5, 3), 2), (2, (7, 4), (2, 3)), (2, (3, 6), (1, 4)),
    (3, (1, 1, 1), 2), (3, (3, 5, 4), 2), (3, (2, 3, 5), (1, 2, 3)), (3, (5, 1, 3), (3, 2, 2)),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool", CASES)
def test_values_match_explicit_loops(ndim, spatial, pool, variant, implementation):
    torch.manual_seed(0)
    module = POOL_SKIP_CLASSES[ndim](3, pool_size=pool, variant=variant, implementation=implementation).double()
    # quarter steps: many ties inside windows, exercising the first-maximum rule
    y = torch.randint(-4, 5, (2, 3, *spatial)).double() / 4
    out = module(y)
    assert out.shape == y.shape and out.dtype == y.dtype
    np.testing.assert_allclose(out.detach().numpy(), naive_pool_skip(module, y), rtol=1e-12, atol=1e-12)


def test_ties_take_the_first_maximum_in_scan_order():
    """A constant window keeps its first voxel; a window with two equal maxima keeps the earlier one."""
    y = torch.zeros(1, 1, 2, 2, 2)
    y[0, 0, 1, 0, 1] = 5.0
    y[0, 0, 1, 1, 0] = 5.0  # later in row-major order than (1, 0, 1)
    for implementation in IMPLEMENTATIONS:
        module = PoolSkip3d(1, variant="pool_skip", implementation=implementation)
        out = module(y) - y
        expected = torch.zeros_like(y)
        expected[0, 0, 1, 0, 1] = 5.0
        assert torch.equal(out, expected), implementation
        constant = torch.full((1, 1, 2, 2, 2), 3.0)
        out = module(constant) - constant
        assert out[0, 0, 0, 0, 0] == 3.0 and out.sum() == 3.0, implementation


def test_pool_size_one_is_conv_skip():
    torch.manual_seed(0)
    full = PoolSkip2d(4, pool_size=1)
    conv_skip = PoolSkip2d(4, pool_size=1, variant="conv_skip")
    conv_skip.load_state_dict(full.state_dict())
    y = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(full(y), conv_skip(y), rtol=0, atol=0)
    assert torch.equal(max_pool_unpool(y, (1, 1)), y)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool", [(1, (5,), 2), (2, (3, 5), (2, 3)), (3, (3, 2, 3), 2)])
def test_gradients_match_finite_differences(ndim, spatial, pool, variant, implementation):
    """Gradients w.r.t. the input and the inner conv's weight and bias (gradcheck, float64). Inputs are
    distinct values 0.05 apart, so the finite-difference step never changes a window's argmax."""
    torch.manual_seed(0)
    module = POOL_SKIP_CLASSES[ndim](2, pool_size=pool, variant=variant, implementation=implementation).double()
    n = 2 * 2 * int(np.prod(spatial))
    y = (torch.randperm(n).double() * 0.05 - n * 0.025).reshape(2, 2, *spatial).requires_grad_(True)
    params = [p for p in module.parameters()]

    def func(y_, *ps):
        with torch.nn.utils.stateless._reparametrize_module(module, dict(zip([k for k, _ in module.named_parameters()],
                                                                             ps))):
            return module(y_)

    assert torch.autograd.gradcheck(func, (y, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_reach_inner_conv_and_input(implementation):
    torch.manual_seed(0)
    module = PoolSkip3d(4, implementation=implementation)
    y = torch.randn(2, 4, 5, 6, 7, requires_grad=True)
    module(y).square().mean().backward()
    for tensor in (y.grad, module.conv.weight.grad, module.conv.bias.grad):
        assert tensor is not None and torch.isfinite(tensor).all() and tensor.abs().sum() > 0


def test_inner_conv_and_contract():
    module = PoolSkip3d(8)
    assert module.pool_size == (2, 2, 2) and module.variant == "full"
    assert module.implementation == DEFAULT_IMPLEMENTATION and DEFAULT_IMPLEMENTATION in IMPLEMENTATIONS
    conv = module.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (8, 8, (3, 3, 3), (1, 1, 1))
    assert module.kernel_size == (3, 3, 3)
    assert conv.bias is not None
    assert not hasattr(PoolSkip3d(8, variant="pool_skip"), "conv")
    assert PoolSkip1d(3, 2, 3, "pool_conv").variant == "pool_conv"  # positional arguments as in DESIGN.md
    assert is_pool_skip(module) and not is_pool_skip(torch.nn.Conv3d(1, 1, 1))


def test_implementations_share_state_dict_and_switch():
    torch.manual_seed(0)
    lean = PoolSkip3d(4, implementation="lean")
    reference = PoolSkip3d(4, implementation="reference")
    assert list(lean.state_dict()) == list(reference.state_dict()) == ["conv.weight", "conv.bias"]
    reference.load_state_dict(lean.state_dict())
    y = torch.randn(1, 4, 5, 4, 3)
    torch.testing.assert_close(lean(y), reference(y), rtol=0, atol=0)
    net = torch.nn.Sequential(PoolSkip3d(4), torch.nn.ReLU(), PoolSkip3d(4, variant="pool_skip"))
    for implementation in IMPLEMENTATIONS:
        assert set_implementation(net, implementation) == 2
        assert all(m.implementation == implementation for m in net if is_pool_skip(m))


@pytest.mark.parametrize("kwargs,message", [
    ({"channels": 0}, "channels must be a positive int"),
    ({"channels": -2}, "channels must be a positive int"),
    ({"channels": 2.5}, "channels must be a positive int"),
    ({"channels": True}, "channels must be a positive int"),
    ({"channels": 4, "pool_size": 0}, "pool_size must be positive"),
    ({"channels": 4, "pool_size": -2}, "pool_size must be positive"),
    ({"channels": 4, "pool_size": (2, 0, 2)}, "pool_size must be positive"),
    ({"channels": 4, "pool_size": (2, 2)}, "one entry per spatial axis"),
    ({"channels": 4, "variant": "fulll"}, "unknown variant 'fulll'; choose one of full, pool_skip"),
    ({"channels": 4, "kernel_size": 2}, "kernel_size must be a positive odd int"),
    ({"channels": 4, "kernel_size": (1, 2, 3)}, "kernel_size must be a positive odd int"),
    ({"channels": 4, "kernel_size": (1, 3)}, "kernel_size must be a positive odd int or a sequence of 3"),
    ({"channels": 4, "kernel_size": 3.0}, "kernel_size must be a positive odd int"),
    ({"channels": 4, "pool_size": 2.5}, "pool_size must be a positive int or a sequence of 3"),
    ({"channels": 4, "pool_size": (2, 2.5, 2)}, "pool_size must be a positive int or a sequence of 3"),
    ({"channels": 4, "pool_size": True}, "pool_size must be a positive int"),
    ({"channels": 4, "implementation": "fast"}, "unknown implementation 'fast'; choose one of lean, reference"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PoolSkip3d(**kwargs)


def test_bad_inputs_raise_clear_errors():
    module = PoolSkip3d(4)
    with pytest.raises(ValueError, match="was built for 4 channels, got input with 3"):
        module(torch.randn(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="expects a .* tensor of 5 dims, got shape \\(1, 4, 4, 4\\)"):
        module(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="unknown implementation"):
        set_implementation(module, "other")


# --- torch.use_deterministic_algorithms(True) ----------------------------------------------------------------

@pytest.fixture
def deterministic_mode():
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _output_and_gradients(module, y, upstream, autocast=False):
    y = y.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = module(y)
    out.backward(upstream.to(out.dtype))
    result = [out.detach(), y.grad] + [p.grad for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return result


DETERMINISTIC_CASES = [(1, (7,), 2), (1, (1,), 3), (2, (5, 3), 2), (2, (1, 1), 2), (2, (7, 4), (2, 3)),
                       (3, (3, 5, 4), 2), (3, (1, 1, 1), 2), (3, (2, 3, 5), (1, 2, 3)), (3, (4, 6, 8), 2)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool", DETERMINISTIC_CASES)
@pytest.mark.parametrize("autocast", [False, True])
def test_deterministic_mode_gives_the_reference_numbers(ndim, spatial, pool, variant, implementation, autocast,
                                                        deterministic_mode):
    """Forward and backward run under use_deterministic_algorithms(True) (max_unpool*d raises there) and
    give the numbers (and dtypes) of the reference computed without it, to the bit; also under autocast."""
    torch.manual_seed(0)
    module = POOL_SKIP_CLASSES[ndim](3, pool_size=pool, variant=variant, implementation=implementation)
    reference = POOL_SKIP_CLASSES[ndim](3, pool_size=pool, variant=variant, implementation="reference")
    reference.load_state_dict(module.state_dict())
    generator = torch.Generator().manual_seed(1)
    y = torch.cat([torch.randn((1, 3, *spatial), generator=generator), torch.randint(-3, 4, (1, 3, *spatial),
                                                                                     generator=generator) / 2.0])
    upstream = torch.randn(y.shape, generator=generator)
    deterministic = _output_and_gradients(module, y, upstream, autocast)
    torch.use_deterministic_algorithms(False)
    expected = _output_and_gradients(reference, y, upstream, autocast)
    torch.use_deterministic_algorithms(True)
    assert len(deterministic) == len(expected)
    for got, want in zip(deterministic, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_deterministic_mode_repeats_a_training_step_exactly(deterministic_mode):
    """Two seeded runs of forward, backward and an SGD step give identical weights."""
    weights = []
    for _ in range(2):
        torch.manual_seed(3)
        net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), PoolSkip3d(4), torch.nn.ReLU(),
                                  PoolSkip3d(4, pool_size=(1, 2, 2), kernel_size=(1, 3, 3)))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _step in range(2):
            optimizer.zero_grad()
            net(torch.randn(2, 1, 5, 6, 7)).square().mean().backward()
            optimizer.step()
        weights.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


# --- per-axis kernels (the host-shaped reading of the paper) and integer arguments ---------------------------

@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool,kernel", [
    (3, (3, 5, 6), (1, 2, 2), (1, 3, 3)), (3, (2, 5, 3), (1, 2, 2), (3, 1, 5)), (2, (5, 4), (1, 2), (1, 3)),
    (3, (1, 3, 3), (1, 2, 2), (1, 3, 3)),
])
def test_per_axis_kernel_and_pool_match_explicit_loops(ndim, spatial, pool, kernel, variant, implementation):
    torch.manual_seed(0)
    module = POOL_SKIP_CLASSES[ndim](3, pool_size=pool, kernel_size=kernel, variant=variant,
                                     implementation=implementation).double()
    assert module.kernel_size == kernel and module.pool_size == pool
    if variant != "pool_skip":
        assert module.conv.kernel_size == kernel and module.conv.padding == tuple(k // 2 for k in kernel)
        assert module.conv.weight.shape == (3, 3, *kernel)
    y = torch.randint(-4, 5, (2, 3, *spatial)).double() / 4
    out = module(y)
    assert out.shape == y.shape
    np.testing.assert_allclose(out.detach().numpy(), naive_pool_skip(module, y), rtol=1e-12, atol=1e-12)


def test_host_shaped_module_has_the_host_convs_parameter_count():
    """1x3x3 inner conv: 9 c^2 + c parameters, a third of the 3x3x3 conv's weights."""
    c = 8
    assert sum(p.numel() for p in PoolSkip3d(c, (1, 2, 2), (1, 3, 3)).parameters()) == 9 * c * c + c
    assert sum(p.numel() for p in PoolSkip3d(c).parameters()) == 27 * c * c + c


def test_numpy_integers_are_accepted():
    module = PoolSkip3d(np.int64(4), pool_size=np.int64(2), kernel_size=np.int32(3))
    assert module.channels == 4 and module.pool_size == (2, 2, 2) and module.kernel_size == (3, 3, 3)
    assert all(type(v) is int for v in module.pool_size + module.kernel_size)
    assert PoolSkip2d(2, pool_size=np.array([1, 2])).pool_size == (1, 2)
    assert PoolSkip2d(2, kernel_size=[np.int64(1), 3]).conv.kernel_size == (1, 3)
