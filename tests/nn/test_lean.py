"""The memory-lean implementation (nnunet_poolskip.nn.lean_kernels) against the reference implementation.

The reference (max_pool*d with indices, max_unpool*d, conv, composed by autograd) is the
straightforward Pool Skip and is itself checked against explicit loops in test_modules.py.
"""
from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.parametrizations
import torch.nn.utils.parametrize
import torch.nn.utils.prune
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_poolskip.nn.inject import inject_pool_skip
from nnunet_poolskip.nn.lean_kernels import (
    decode_offsets,
    encode_offsets,
    lean_pool_unpool,
    lean_pool_unpool_conv,
    offset_dtype,
)
from nnunet_poolskip.nn.pool_skip import (
    DEFAULT_IMPLEMENTATION,
    POOL_SKIP_CLASSES,
    VARIANTS,
    PoolSkip3d,
    is_pool_skip,
    max_pool_unpool,
    set_implementation,
)


def pair(ndim, channels, pool, variant, seed=0):
    """(lean module, reference module) with identical weights."""
    torch.manual_seed(seed)
    lean = POOL_SKIP_CLASSES[ndim](channels, pool_size=pool, variant=variant, implementation="lean")
    reference = POOL_SKIP_CLASSES[ndim](channels, pool_size=pool, variant=variant, implementation="reference")
    reference.load_state_dict(lean.state_dict())
    return lean, reference


def forward_backward(module, y, autocast_dtype=None, seed=1):
    """Output and the gradients of (input, parameters...) for a fixed random upstream gradient."""
    y = y.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = module(y)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    out.backward(grad)
    grads = [y.grad] + [p.grad for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


def assert_same(lean_result, reference_result, **tolerance):
    (out_l, grads_l), (out_r, grads_r) = lean_result, reference_result
    assert out_l.dtype == out_r.dtype and out_l.shape == out_r.shape
    torch.testing.assert_close(out_l, out_r, **tolerance)
    assert len(grads_l) == len(grads_r)
    for g_l, g_r in zip(grads_l, grads_r):
        assert g_l.dtype == g_r.dtype
        torch.testing.assert_close(g_l, g_r, **tolerance)


def tied(shape, seed=0):
    """Values on a coarse grid: many ties inside every window."""
    return torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(seed)).float() / 2


SIZES = [  # (spatial dims, spatial size, pool size): odd, not divisible, smaller than the pool, per-axis
    (1, (9,), 2), (1, (1,), 3), (2, (5, 7), 2), (2, (4, 9), (3, 2)), (2, (1, 3), 4),
    (3, (5, 6, 7), 2), (3, (3, 4, 5), (1, 2, 3)), (3, (1, 2, 1), 2), (3, (6, 5, 4), 3),
    # windows tiling the grid exactly take another backward path (boolean argmax mask)
    (1, (8,), 2), (2, (4, 6), 2), (2, (6, 4), (3, 1)), (3, (4, 6, 8), 2), (3, (2, 4, 6), (1, 2, 3)),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool", SIZES)
def test_lean_equals_reference_float32(ndim, spatial, pool, variant):
    """Random values in one sample, values with many ties inside windows in the other."""
    lean, reference = pair(ndim, 4, pool, variant)
    y = torch.cat([torch.randn((1, 4, *spatial), generator=torch.Generator().manual_seed(3)),
                   tied((1, 4, *spatial))])
    assert_same(forward_backward(lean, y), forward_backward(reference, y))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("spatial", [(5, 6, 7), (4, 6, 8)])
def test_lean_equals_reference_channels_last_3d(variant, spatial):
    lean, reference = pair(3, 8, 2, variant)
    y = tied((2, 8, *spatial)).to(memory_format=torch.channels_last_3d)
    lean_result = forward_backward(lean, y)
    assert_same(lean_result, forward_backward(reference, y))
    assert lean_result[0].shape == y.shape


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ndim,spatial,pool", [(2, (5, 7), 2), (3, (4, 5, 7), 2), (3, (3, 4, 6), (1, 2, 3)),
                                               (3, (4, 6, 8), 2)])
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32])
def test_lean_equals_reference_under_bf16_autocast(ndim, spatial, pool, variant, input_dtype):
    """Under autocast the inner conv runs in bf16 and the parameters' gradients come back in float32.
    A bf16 input is what a host conv under autocast hands over; a float32 one exercises the promotion.

    (3D sizes keep a depth >= 2: torch 2.14's oneDNN bf16 conv3d on CPU returns wrong, run-dependent
    values for depth 1, in both implementations alike.)"""
    lean, reference = pair(ndim, 4, pool, variant)
    y = tied((2, 4, *spatial)).to(input_dtype)
    lean_result = forward_backward(lean, y, torch.bfloat16)
    assert_same(lean_result, forward_backward(reference, y, torch.bfloat16), rtol=1e-2, atol=1e-2)
    assert all(g.dtype == torch.float32 for g in lean_result[1][1:])


def test_nan_and_infinite_values_propagate_like_the_reference():
    lean, reference = pair(3, 2, 2, "full")
    y = torch.randn(1, 2, 4, 4, 5)
    y[0, 0, 0, 0, 0] = float("nan")
    y[0, 1, 2, 2, 2] = float("-inf")
    y[0, 1, 0:2, 0:2, 0:2] = float("-inf")  # a whole window of -inf
    with torch.no_grad():
        torch.testing.assert_close(lean(y), reference(y), equal_nan=True)


def saved_bytes(module, y):
    """Bytes of the storages saved for backward by one forward, parameters excluded, each counted once."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(y.detach().clone().requires_grad_(True))
    return sum(storages.values())


def test_lean_saves_only_pooled_values_and_int8_offsets():
    batch, channels, spatial = 2, 8, (9, 8, 7)
    y = torch.randn(batch, channels, *spatial)
    windows = batch * channels * math.prod(math.ceil(s / 2) for s in spatial)
    voxels = batch * channels * math.prod(spatial)
    lean, reference = pair(3, channels, 2, "full")
    assert saved_bytes(lean, y) == windows * (4 + 1)  # float32 maxima + int8 offsets
    # the reference keeps y (max pooling), int64 indices, and the unpooled map (conv input)
    assert saved_bytes(reference, y) == voxels * 4 + windows * 8 + voxels * 4
    lean_pool_skip, _ = pair(3, channels, 2, "pool_skip")
    assert saved_bytes(lean_pool_skip, y) == windows  # int8 offsets only
    lean_bf16 = pair(3, channels, 2, "pool_conv")[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # maxima kept in the conv's bf16 + the bf16 weight copy
        weight_copy = lean_bf16.conv.weight.numel() * 2
        assert saved_bytes(lean_bf16, y) == windows * (2 + 1) + weight_copy


@pytest.mark.parametrize("ndim,spatial,pool", [(1, (11,), 3), (2, (7, 5), (2, 3)), (3, (5, 4, 3), (2, 3, 2)),
                                               (3, (3, 3, 3), 4)])
def test_offsets_round_trip_for_every_position_in_every_window(ndim, spatial, pool):
    """encode/decode are inverse for any argmax position, partial border windows included."""
    pool = (pool,) * ndim if isinstance(pool, int) else pool
    pooled_shape = [math.ceil(s / k) for s, k in zip(spatial, pool)]
    flat = torch.arange(math.prod(spatial)).reshape(spatial)
    for trial in range(20):  # random valid position in every window
        generator = torch.Generator().manual_seed(trial)
        index = torch.zeros(pooled_shape, dtype=torch.int64)
        grids = torch.meshgrid(*[torch.arange(n) for n in pooled_shape], indexing="ij")
        coords = []
        for d, (grid, k, s) in enumerate(zip(grids, pool, spatial)):
            extent = torch.clamp(s - grid * k, max=k)  # window extent along this axis (partial at the border)
            coords.append(grid * k + (torch.rand(grid.shape, generator=generator) * extent).long())
        index = flat[tuple(coords)].reshape(1, 1, *pooled_shape)
        offsets = encode_offsets(index, spatial, pool)
        assert offsets.dtype == offset_dtype(pool) and offsets.shape == index.shape
        assert int(offsets.min()) >= 0 and int(offsets.max()) < math.prod(pool)
        assert torch.equal(decode_offsets(offsets, spatial, pool), index)


def test_offset_dtype_grows_with_the_window():
    assert offset_dtype((2, 2, 2)) == torch.int8
    assert offset_dtype((4, 4, 8)) == torch.int8  # 128 positions: 0..127
    assert offset_dtype((8, 8, 8)) == torch.int16
    assert offset_dtype((64, 64, 64)) == torch.int32
    lean, reference = pair(2, 2, (16, 9), "full")  # 144 positions: int16 offsets
    y = torch.randn(1, 2, 20, 19)
    assert_same(forward_backward(lean, y), forward_backward(reference, y))


def test_functional_api_equals_modules():
    lean, _ = pair(3, 4, 2, "full")
    y = torch.randn(1, 4, 5, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(lean_pool_unpool_conv(y, lean.conv.weight, lean.conv.bias, (2, 2, 2), (1, 1, 1),
                                                         skip=True), lean(y), rtol=0, atol=0)
        torch.testing.assert_close(lean_pool_unpool(y, (1, 1, 1)), y)


def test_deterministic_given_a_seed():
    results = []
    for _ in range(2):
        lean, _ = pair(3, 4, 2, "full", seed=7)
        results.append(forward_backward(lean, torch.randn(2, 4, 6, 5, 7, generator=torch.Generator().manual_seed(5))))
    assert_same(results[0], results[1], rtol=0, atol=0)


@pytest.mark.integration  # compiles C++ with inductor: about a minute
@pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")),
                    reason="torch.compile's inductor backend needs a C++ compiler on CPU")
def test_torch_compile_inductor_fullgraph_equals_reference():
    """fullgraph=True fails on any graph break, so the custom autograd Function is traced, forward and
    backward, and compiled by inductor (C++ code generation: ~15-30 s on 2 cores with a cold cache)."""
    torch._dynamo.reset()
    lean, reference = pair(3, 4, 2, "full")
    compiled = torch.compile(lean, fullgraph=True)
    y = tied((2, 4, 4, 6, 8))
    assert_same(forward_backward(compiled, y), forward_backward(reference, y))
    torch._dynamo.reset()


@pytest.mark.parametrize("spatial", [(5, 6, 7), (4, 6, 8)])
@pytest.mark.parametrize("variant", ["full", "pool_skip"])
def test_torch_compile_traces_without_graph_breaks(spatial, variant):
    """Dynamo + AOTAutograd trace both backward paths (tiling and partial windows) in one graph; the
    aot_eager backend skips inductor's code generation, so this stays fast."""
    torch._dynamo.reset()
    lean, reference = pair(3, 4, 2, variant)
    compiled = torch.compile(lean, backend="aot_eager", fullgraph=True)
    y = tied((2, 4, *spatial))
    assert_same(forward_backward(compiled, y), forward_backward(reference, y))
    torch._dynamo.reset()


def conv_pool_skip_conv(variant, implementation):
    """A U-Net stage in miniature: host conv, Pool Skip, the next conv (same weights for a given variant)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), PoolSkip3d(4, variant=variant, implementation=implementation),
                         nn.Conv3d(4, 4, 3, padding=1))


@pytest.mark.parametrize("spatial", [(5, 6, 7), (4, 6, 8)])
@pytest.mark.parametrize("variant", ["full", "pool_skip", "pool_conv"])
def test_torch_compile_under_bf16_autocast_with_a_conv_after_pool_skip(variant, spatial):
    """What nnU-Net's trainer does (torch.compile + autocast), with an op after Pool Skip in the same graph.
    The lean backward once asked the incoming gradient for its layout; Dynamo then retraced that backward
    and left its autocast-off block entered, so the next conv saw a bf16 input and float32 parameters
    ("RuntimeError when making fake tensor call"). Outputs and all gradients equal the eager reference."""
    torch._dynamo.reset()
    compiled = torch.compile(conv_pool_skip_conv(variant, "lean"), backend="aot_eager", fullgraph=True)
    y = tied((2, 2, *spatial))
    lean_result = forward_backward(compiled, y, torch.bfloat16)
    assert lean_result[0].dtype == torch.bfloat16
    assert_same(lean_result, forward_backward(conv_pool_skip_conv(variant, "reference"), y, torch.bfloat16),
                rtol=1e-2, atol=1e-2)
    torch._dynamo.reset()


def test_eager_backward_reuses_the_rebuilt_unpooled_map(monkeypatch):
    """The memory-lean saving that compiled code gives up (inductor plans its buffers itself): in eager
    mode the full variant's input gradient is written into the unpooled map rebuilt for the conv's backward,
    instead of a fresh tensor."""
    from nnunet_poolskip.nn import lean_kernels

    calls = []
    original = lean_kernels._skip_and_pool_gradient

    def spy(*args, spare):
        grad_y = original(*args, spare=spare)
        calls.append(spare is not None and grad_y.data_ptr() == spare.data_ptr())
        return grad_y

    monkeypatch.setattr(lean_kernels, "_skip_and_pool_gradient", spy)
    lean, reference = pair(3, 4, 2, "full")
    y = tied((2, 4, 5, 6, 7))
    assert_same(forward_backward(lean, y), forward_backward(reference, y))
    # under autocast the map is in the conv's dtype: reused when y comes in that dtype (from a host conv)
    y = y.to(torch.bfloat16)
    assert_same(forward_backward(lean, y, torch.bfloat16), forward_backward(reference, y, torch.bfloat16),
                rtol=1e-2, atol=1e-2)
    assert calls == [True, True]


def small_unet():
    return PlainConvUNet(1, 4, [4, 8, 16, 16], nn.Conv3d, [[1, 3, 3], 3, 3, 3], [1, [1, 2, 2], 2, 2], 2, 3, 1,
                         conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def test_injected_network_uses_the_default_and_lean_matches_reference():
    """What the trainers build (inject_pool_skip with defaults) uses the module family's default
    implementation; switched to lean, the whole network's outputs and gradients equal the reference."""
    torch.manual_seed(0)
    lean_net = small_unet()
    inject_pool_skip(lean_net)
    modules = [m for m in lean_net.modules() if is_pool_skip(m)]
    assert len(modules) == 8 and all(m.implementation == DEFAULT_IMPLEMENTATION for m in modules)
    assert set_implementation(lean_net, "lean") == 8
    reference_net = small_unet()
    inject_pool_skip(reference_net)
    reference_net.load_state_dict(lean_net.state_dict())
    assert set_implementation(reference_net, "reference") == 8
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    losses = []
    for net in (lean_net, reference_net):
        out = net(x)
        loss = sum(o.square().mean() for o in out)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p_lean), p_ref in zip(lean_net.named_parameters(), reference_net.parameters()):
        torch.testing.assert_close(p_lean.grad, p_ref.grad, msg=name)


@pytest.mark.integration  # traces a whole injected U-Net with torch.compile: about a minute
def test_compiled_injected_unet_under_bf16_autocast_equals_reference():
    """nnU-Net's training step in miniature: a PlainConvUNet with Pool Skip injected (lean, the default),
    compiled and run under autocast; deep-supervision outputs and every parameter's gradient equal the
    uncompiled network with the reference implementation."""
    torch._dynamo.reset()
    nets = []
    for implementation in ("lean", "reference"):
        torch.manual_seed(0)
        net = small_unet()
        inject_pool_skip(net)
        assert set_implementation(net, implementation) == 8
        nets.append(net)
    compiled = torch.compile(nets[0], backend="aot_eager")
    # the deepest stage gets 4x4x4 voxels: at 2x2x2, torch 2.14's oneDNN bf16 conv3d weight gradient on CPU
    # differs from run to run in the reference alone
    x = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    outputs = []
    for net in (compiled, nets[1]):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        sum(o.float().square().mean() for o in out).backward()
        outputs.append([o.detach() for o in out])
    for out_lean, out_ref in zip(*outputs):
        assert out_lean.dtype == torch.bfloat16
        torch.testing.assert_close(out_lean, out_ref, rtol=1e-2, atol=1e-2)
    for (name, p_lean), p_ref in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p_lean.grad, p_ref.grad, rtol=1e-2, atol=1e-2, msg=name)
    torch._dynamo.reset()


def test_state_dict_is_interchangeable():
    lean = PoolSkip3d(4, implementation="lean")
    reference = PoolSkip3d(4, implementation="reference")
    assert lean.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(lean.state_dict(), strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_mode_equals_reference(variant):
    """Without autograd (nnU-Net's predictor) nothing is saved and the plain ops run."""
    lean, reference = pair(3, 4, 2, variant)
    y = tied((1, 4, 5, 6, 7))
    with torch.inference_mode():
        torch.testing.assert_close(lean(y), reference(y), rtol=0, atol=0)


# --- second-order gradients: the lean backward is itself differentiable -------------------------------------------

@pytest.mark.parametrize("variant", ["full", "pool_skip", "pool_conv"])
@pytest.mark.parametrize("ndim,spatial,pool", [(3, (3, 4, 5), 2), (2, (5, 4), (2, 3)), (1, (7,), 2)])
def test_hvp_and_jvp_equal_the_reference(ndim, spatial, pool, variant):
    """torch.autograd.functional's hvp and jvp (both double backward) through lean equal the reference's,
    w.r.t. the input and w.r.t. the inner conv's parameters (where the cross terms y <-> weight live)."""
    lean, reference = pair(ndim, 3, pool, variant)
    lean.double()
    reference.double()
    generator = torch.Generator().manual_seed(4)
    y = torch.randn((2, 3, *spatial), generator=generator, dtype=torch.float64)
    v = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    names = [name for name, _ in lean.named_parameters()]

    def results(module):
        def loss_of_input(y_):
            return (module(y_) ** 3).sum()

        def loss_of_all(y_, *params):
            with torch.nn.utils.stateless._reparametrize_module(module, dict(zip(names, params))):
                return (module(y_) ** 3).sum()

        params = tuple(p.detach() for p in module.parameters())
        tangents = (v,) + tuple(torch.randn(p.shape, generator=torch.Generator().manual_seed(9), dtype=p.dtype)
                                for p in params)
        return (torch.autograd.functional.hvp(loss_of_input, y, v)[1],
                torch.autograd.functional.jvp(module, y, v)[1],
                torch.autograd.functional.hvp(loss_of_all, (y, *params), tangents)[1])

    lean_hvp, lean_jvp, lean_full = results(lean)
    reference_hvp, reference_jvp, reference_full = results(reference)
    assert reference_hvp.abs().sum() > 0 and reference_jvp.abs().sum() > 0
    torch.testing.assert_close(lean_hvp, reference_hvp)
    torch.testing.assert_close(lean_jvp, reference_jvp)
    assert len(lean_full) == len(reference_full) == 1 + len(names)
    for lean_tensor, reference_tensor in zip(lean_full, reference_full):
        torch.testing.assert_close(lean_tensor, reference_tensor)
    if variant != "pool_skip":  # the y <-> weight cross terms are there and were compared
        assert reference_full[0].abs().sum() > 0 and reference_full[1].abs().sum() > 0


def test_gradient_penalty_through_lean_equals_reference():
    """A gradient penalty (create_graph=True, then backward through the gradient) as WGAN-GP trains."""
    lean, reference = pair(3, 2, 2, "full")
    y = torch.randn(1, 2, 3, 5, 4, generator=torch.Generator().manual_seed(2))
    grads = []
    for module in (lean, reference):
        y_ = y.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module(y_).tanh().sum(), y_, create_graph=True)
        g.square().sum().backward()
        grads.append([y_.grad] + [p.grad for p in module.parameters()])
    for g_lean, g_reference in zip(*grads):
        torch.testing.assert_close(g_lean, g_reference)


# --- the inner conv as a module: hooks, pruning, parametrizations ------------------------------------------------

def _prune(module):
    torch.nn.utils.prune.l1_unstructured(module.conv, "weight", amount=0.5)


def _parametrize(module):
    class Doubled(nn.Module):
        def forward(self, weight):
            return 2 * weight

    torch.nn.utils.parametrize.register_parametrization(module.conv, "weight", Doubled())


def _weight_norm(module):
    torch.nn.utils.parametrizations.weight_norm(module.conv)
    with torch.no_grad():  # a magnitude that differs from the initial weight's norm
        module.conv.parametrizations.weight.original0.mul_(1.5)


def _forward_hook(module):
    module.conv.register_forward_hook(lambda _m, _inputs, output: output * 3 - 1)


def _forward_pre_hook(module):
    module.conv.register_forward_pre_hook(lambda _m, inputs: (inputs[0] * 0.5,))


@pytest.mark.parametrize("variant", ["full", "pool_conv"])
@pytest.mark.parametrize("modify", [_prune, _parametrize, _weight_norm, _forward_hook, _forward_pre_hook])
def test_inner_conv_modifications_are_honoured(modify, variant):
    """Pruning, weight parametrizations and hooks on ``.conv`` act in the lean path as in the reference:
    same outputs and gradients, also after an optimiser step changes the underlying parameters."""
    lean, reference = pair(3, 4, 2, variant)
    modify(lean)
    modify(reference)
    reference.load_state_dict(lean.state_dict())
    y = tied((2, 4, 3, 5, 6))
    plain = forward_backward(pair(3, 4, 2, variant)[0], y)[0]
    for step in range(2):
        lean_result, reference_result = forward_backward(lean, y), forward_backward(reference, y)
        assert_same(lean_result, reference_result)
        assert not torch.equal(lean_result[0], plain)  # the modification does change the result
        with torch.no_grad():  # an optimiser step on the underlying parameters
            for module in (lean, reference):
                for p in module.parameters():
                    p.add_(0.1)


def test_a_replaced_inner_conv_is_called():
    """``.conv`` swapped for a subclass with its own forward (or any module) is what runs, in both paths."""
    class Doubling(nn.Conv3d):
        def forward(self, x):
            return 2 * super().forward(x)

    lean, reference = pair(3, 4, 2, "full")
    for module in (lean, reference):
        state = module.conv.state_dict()
        module.conv = Doubling(4, 4, 3, padding=1)
        module.conv.load_state_dict(state)
    y = tied((1, 4, 3, 5, 6))
    lean_result = forward_backward(lean, y)
    assert_same(lean_result, forward_backward(reference, y))
    with torch.no_grad():  # independent: the branch is twice the plain conv's
        expected = y + 2 * F.conv3d(max_pool_unpool(y, (2, 2, 2)), lean.conv.weight, lean.conv.bias, padding=1)
    torch.testing.assert_close(lean_result[0], expected)


def test_backward_hook_on_the_inner_conv_is_called():
    lean, _ = pair(3, 4, 2, "full")
    seen = []
    lean.conv.register_full_backward_hook(lambda _m, grad_in, grad_out: seen.append(grad_out[0].shape))
    lean(torch.randn(1, 4, 3, 4, 5, requires_grad=True)).sum().backward()
    assert seen == [(1, 4, 3, 4, 5)]


def test_global_module_hooks_see_the_inner_conv():
    lean, _ = pair(3, 4, 2, "full")
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, _i, _o: seen.append(type(m).__name__))
    try:
        lean(torch.randn(1, 4, 3, 4, 5, requires_grad=True))
    finally:
        handle.remove()
    assert seen == ["Conv3d", "PoolSkip3d"]


def test_lean_still_saves_little_with_a_parametrized_conv():
    """A parametrization only changes the weight: the lean kernels still run and save the maxima, the offsets
    and the computed weight (a tensor of its own now, not a parameter)."""
    lean, _ = pair(3, 8, 2, "full")
    _parametrize(lean)
    y = torch.randn(2, 8, 9, 8, 7)
    windows = 2 * 8 * 5 * 4 * 4
    assert saved_bytes(lean, y) == windows * (4 + 1) + lean.conv.weight.numel() * 4


# --- the position-code cache under threads -----------------------------------------------------------------------

def test_position_code_cache_is_thread_safe(monkeypatch):
    """8 threads ask for more grids than the cache holds, so entries are evicted while others read them."""
    import sys
    import threading

    from nnunet_poolskip.nn import lean_kernels

    monkeypatch.setattr(lean_kernels, "_CODES_CACHE", {})
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up at once
    errors, wrong = [], []
    grids = [((s, s + 1, 3), (2, 2, 2)) for s in range(1, 41)] + [((s, 5), (3, 2)) for s in range(1, 21)]

    def work(seed):
        generator = torch.Generator().manual_seed(seed)
        try:
            for trial in range(300):
                spatial, pool = grids[int(torch.randint(len(grids), (1,), generator=generator))]
                codes = lean_kernels._position_codes(spatial, pool, torch.device("cpu"))
                # independent: the position of each voxel inside its window, row-major
                coords = torch.meshgrid(*[torch.arange(s) % k for s, k in zip(spatial, pool)], indexing="ij")
                expected = sum(c * math.prod(pool[d + 1:]) for d, c in enumerate(coords)).reshape(-1)
                if not torch.equal(codes.long(), expected):
                    wrong.append((spatial, pool))
        except Exception as error:  # noqa: BLE001 - any exception in a thread is the failure we look for
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == [] and wrong == []
    assert len(lean_kernels._CODES_CACHE) <= lean_kernels._CODES_CACHE_SIZE


def test_forward_mode_ad_raises_in_lean_and_works_in_reference():
    """What docs/memory-lean.md says: forward-mode AD is not implemented for the lean functions."""
    import torch.autograd.forward_ad as forward_ad

    lean, reference = pair(3, 2, 2, "full")
    y, tangent = torch.randn(1, 2, 3, 4, 5), torch.randn(1, 2, 3, 4, 5)
    with forward_ad.dual_level():
        with pytest.raises(NotImplementedError, match="jvp"):
            lean(forward_ad.make_dual(y, tangent))
        out = reference(forward_ad.make_dual(y, tangent))
        assert forward_ad.unpack_dual(out).tangent.abs().sum() > 0


@pytest.mark.parametrize("variant", ["full", "pool_conv"])
def test_lean_stays_within_bf16_rounding_of_the_exact_result(variant):
    """Under CPU bf16 autocast (as a host conv under nnU-Net's training hands it a bf16 tensor), the lean kernels and
    the reference both stay within the error bound of bf16 arithmetic around the float64 result, and so within
    twice that bound of each other. The bound is computed here: inputs and weights rounded to bf16 (relative error
    2**-8 each), float32 accumulation, the output rounded to bf16: per voxel about
    3 * 2**-8 * (|conv| with absolute values of weights and inputs + |bias|) + 2**-8 * |output| + |y| * 2**-8."""
    torch.manual_seed(0)
    lean, reference = pair(3, 8, 2, variant)
    y = torch.randn(2, 8, 4, 6, 10).to(torch.bfloat16)  # depth >= 2 (see the test above)
    exact_module = POOL_SKIP_CLASSES[3](8, pool_size=2, variant=variant, implementation="reference").double()
    exact_module.load_state_dict(lean.state_dict())
    y64 = y.double()
    exact = exact_module(y64)
    pooled, indices = torch.nn.functional.max_pool3d(y64, 2, 2, ceil_mode=True, return_indices=True)
    unpooled = torch.nn.functional.max_unpool3d(pooled, indices, 2, 2, output_size=y64.shape[2:])
    conv = exact_module.conv
    magnitude = torch.nn.functional.conv3d(unpooled.abs(), conv.weight.abs(), conv.bias.abs(), padding=1)
    eps = 2.0 ** -8
    bound = 3 * eps * magnitude + eps * exact.abs() + (eps * y64.abs() if variant == "full" else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = {"lean": lean(y), "reference": reference(y)}
    for name, out in outputs.items():
        error = (out.double() - exact).abs()
        assert torch.all(error <= bound), (name, float((error - bound).max()))
    assert torch.all((outputs["lean"].double() - outputs["reference"].double()).abs() <= 2 * bound)
    assert outputs["lean"].dtype == outputs["reference"].dtype
