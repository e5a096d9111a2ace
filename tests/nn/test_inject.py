"""inject_pool_skip on dynamic-network-architectures' U-Nets: placement, counts, parameters, init, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_poolskip.nn.inject import inject_pool_skip
from nnunet_poolskip.nn.pool_skip import PoolSkip2d, PoolSkip3d, is_pool_skip

NORM = {"eps": 1e-5, "affine": True}


def btcv_like_unet(deep_supervision: bool = True) -> PlainConvUNet:
    """6 stages, 32..320 features, 2 convs per stage, 14 classes (nnU-Net's BTCV 3d_fullres shape)."""
    return PlainConvUNet(1, 6, [32, 64, 128, 256, 320, 320], nn.Conv3d,
                         [[1, 3, 3]] + [[3, 3, 3]] * 5,
                         [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
                         2, 14, 2, True, nn.InstanceNorm3d, NORM, None, None, nn.LeakyReLU, {"inplace": True},
                         deep_supervision=deep_supervision)


def small_unet_2d() -> PlainConvUNet:
    return PlainConvUNet(1, 4, [4, 8, 16, 16], nn.Conv2d, 3, [1, 2, 2, 2], [2, 3, 2, 2], 3, 2, True,
                         nn.InstanceNorm2d, NORM, None, None, nn.LeakyReLU, {"inplace": True})


def small_resenc(conv=nn.Conv3d, norm=nn.InstanceNorm3d) -> ResidualEncoderUNet:
    return ResidualEncoderUNet(1, 4, [4, 8, 16, 16], conv, 3, [1, 2, 2, 2], [1, 3, 4, 6], 3, [1, 1, 1], True,
                               norm, NORM, None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=False)


def expected_pool_skip_params(channels) -> int:
    # inner conv: c*c*27 weights + c bias per wrapped conv (3D, kernel 3)
    return sum(c * c * 27 + c for c in channels)


def test_six_stage_plain_unet_counts_and_parameters():
    base = btcv_like_unet()
    n_base = sum(p.numel() for p in base.parameters())
    net = btcv_like_unet()
    names = inject_pool_skip(net, "all")
    assert len(names) == 12
    assert names[0] == "encoder.stages.0.0.convs.0.conv" and names[-1] == "encoder.stages.5.0.convs.1.conv"
    features = [32, 64, 128, 256, 320, 320]
    added = sum(p.numel() for p in net.parameters()) - n_base
    assert added == expected_pool_skip_params([c for c in features for _ in range(2)])

    net2 = btcv_like_unet()
    names2 = inject_pool_skip(net2, "all_but_last")
    assert len(names2) == 10
    assert not any(n.startswith("encoder.stages.5.") for n in names2)
    assert sum(isinstance(m, PoolSkip3d) for m in net2.modules()) == 10


def test_pool_skip_sits_between_conv_and_norm_and_decoder_untouched():
    net = btcv_like_unet()
    inject_pool_skip(net, [1, 3])
    block = net.encoder.stages[1][0].convs[0]
    kinds = [type(m) for m in block.all_modules]
    assert kinds == [nn.Conv3d, PoolSkip3d, nn.InstanceNorm3d, nn.LeakyReLU]
    assert net.encoder.stages[0][0].convs[0].all_modules[1].__class__ is nn.InstanceNorm3d
    decoder_modules = [m for name, m in net.decoder.named_modules() if not name.startswith("encoder")]
    assert not any(is_pool_skip(m) for m in decoder_modules)


def test_forward_runs_through_injected_modules():
    """The inserted module must be on the forward path (all_modules), not just registered."""
    net = small_unet_2d().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        before = net(x)
    inject_pool_skip(net, "all")
    calls = []
    for m in net.modules():
        if is_pool_skip(m):
            m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        after = net(x)
    assert len(calls) == 9  # 2 + 3 + 2 + 2 convs
    assert after.shape == before.shape
    assert not torch.allclose(after, before)


def test_2d_network_gets_2d_modules_and_odd_sizes_work():
    net = small_unet_2d()
    inject_pool_skip(net, "all", pool_size=(2, 4))
    mods = [m for m in net.modules() if is_pool_skip(m)]
    assert mods and all(isinstance(m, PoolSkip2d) and m.pool_size == (2, 4) for m in mods)
    out = net(torch.randn(2, 1, 24, 40))
    assert out.shape == (2, 3, 24, 40)  # the deepest stage is 3x5: not divisible by (2, 4)


def test_resenc_wraps_stem_and_block_convs_not_projections():
    net = small_resenc()
    names = inject_pool_skip(net, "all")
    # stem (1) + 2 convs per BasicBlockD: (1 + 3 + 4 + 6) blocks
    assert len(names) == 1 + 2 * 14
    assert names[0] == "encoder.stem.convs.0.conv"
    assert not any(".skip." in n for n in names)
    for name, m in net.named_modules():
        if ".skip." in name:
            assert not is_pool_skip(m)
    assert net(torch.randn(1, 1, 16, 32, 32)).shape == (1, 3, 16, 32, 32)
    net_last = small_resenc()
    assert len(inject_pool_skip(net_last, "all_but_last")) == 1 + 2 * 8


def test_new_convs_use_he_init_with_zero_bias():
    torch.manual_seed(0)
    net = btcv_like_unet()
    inject_pool_skip(net, [4])
    conv = net.encoder.stages[4][0].convs[0].all_modules[1].conv
    assert torch.count_nonzero(conv.bias) == 0
    fan_in = conv.in_channels * 27
    expected_std = (2.0 / ((1 + 1e-2 ** 2) * fan_in)) ** 0.5  # kaiming_normal_ with a=1e-2
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.02


@pytest.mark.parametrize("stages, message", [
    ("every", "all_but_last"),
    ([6], "out of range"),
    ([-1], "out of range"),
    ([], "selects no encoder stage"),
    (0, r"a sequence of encoder stage indices .* got 0 \(int\); for one stage write \[0\]"),
    (None, "a sequence of encoder stage indices"),
    ([0.7], r"an encoder stage index must be an integer, got 0.7 \(float\)"),
    ([1, 2.0], r"an encoder stage index must be an integer, got 2.0"),
    ([True], "an encoder stage index must be an integer, got True"),
    (["1"], "an encoder stage index must be an integer, got '1'"),
])
def test_bad_stage_selection(stages, message):
    with pytest.raises(ValueError, match=message):
        inject_pool_skip(btcv_like_unet(), stages)


def test_all_but_last_on_a_one_stage_network_is_an_error():
    net = PlainConvUNet(1, 1, [4], nn.Conv2d, 3, [1], [2], 2, [], True, nn.InstanceNorm2d, NORM, None, None,
                        nn.LeakyReLU, {"inplace": True})
    with pytest.raises(ValueError, match="'all_but_last' selects no encoder stage: this network has 1 encoder stage"):
        inject_pool_skip(net, "all_but_last")
    assert not any(is_pool_skip(m) for m in net.modules())  # nothing half-done
    assert len(inject_pool_skip(net, "all")) == 2


def test_numpy_integers_are_accepted():
    net = btcv_like_unet()
    names = inject_pool_skip(net, np.array([0, 2]), pool_size=np.int64(2))
    assert len(names) == 4
    mods = [m for m in net.modules() if is_pool_skip(m)]
    assert all(m.pool_size == (2, 2, 2) for m in mods)
    assert len(inject_pool_skip(btcv_like_unet(), [np.int64(5)], pool_size=(np.int32(1), 2, 2))) == 2


@pytest.mark.parametrize("pool_size, message", [(2.5, "pool_size must be a positive int"), (0, "pool_size must be"),
                                                ((2, 2), "one entry per spatial axis")])
def test_bad_pool_size_fails_before_anything_is_inserted(pool_size, message):
    net = btcv_like_unet()
    with pytest.raises(ValueError, match=message):
        inject_pool_skip(net, "all", pool_size=pool_size)
    assert not any(is_pool_skip(m) for m in net.modules())


# --- host_shaped: the inner conv and the pool window follow each host conv ------------------------------------

def test_host_shaped_follows_each_host_kernel():
    """BTCV's stage 0 convs are 1x3x3: inner conv 1x3x3, pool 1x2x2; the 3x3x3 stages get 3x3x3 and 2x2x2."""
    base = btcv_like_unet()
    n_base = sum(p.numel() for p in base.parameters())
    net = btcv_like_unet()
    names = inject_pool_skip(net, "all", host_shaped=True)
    assert len(names) == 12
    modules = dict(net.named_modules())
    features = [32, 64, 128, 256, 320, 320]
    added = 0
    for name in names:
        host = modules[name]
        pool_skip = modules[name.rsplit(".", 1)[0] + ".all_modules.1"]
        assert is_pool_skip(pool_skip)
        assert pool_skip.conv.kernel_size == host.kernel_size
        assert pool_skip.pool_size == tuple(2 if k > 1 else 1 for k in host.kernel_size)
        added += sum(p.numel() for p in pool_skip.parameters())
    stage0 = modules["encoder.stages.0.0.convs.0.all_modules.1"]
    assert stage0.conv.kernel_size == (1, 3, 3) and stage0.pool_size == (1, 2, 2)
    assert modules["encoder.stages.1.0.convs.0.all_modules.1"].pool_size == (2, 2, 2)
    # stage 0's two inner convs have 1x3x3 = 9 taps, the other ten 27
    expected = sum((9 if i < 2 else 27) * c * c + c for i, c in enumerate(c for c in features for _ in range(2)))
    assert added == expected == sum(p.numel() for p in net.parameters()) - n_base
    assert net(torch.randn(1, 1, 8, 32, 32))[0].shape == (1, 14, 8, 32, 32)


def test_host_shaped_with_per_axis_pool_size_and_on_a_2d_resenc():
    net = btcv_like_unet()
    inject_pool_skip(net, [0], pool_size=(4, 2, 3), host_shaped=True)
    assert net.encoder.stages[0][0].convs[0].all_modules[1].pool_size == (1, 2, 3)
    resenc = small_resenc(nn.Conv2d, nn.InstanceNorm2d)
    plain = small_resenc(nn.Conv2d, nn.InstanceNorm2d)
    assert inject_pool_skip(resenc, "all", host_shaped=True) == inject_pool_skip(plain, "all")
    shaped = [(m.kernel_size, m.pool_size) for m in resenc.modules() if is_pool_skip(m)]
    assert set(shaped) == {((3, 3), (2, 2))}  # isotropic hosts: host-shaped is the default reading


def test_unsupported_network_and_double_injection():
    with pytest.raises(ValueError, match="PlainConvUNet, ResidualEncoderUNet"):
        inject_pool_skip(nn.Sequential(nn.Conv3d(1, 2, 3)))
    net = small_unet_2d()
    inject_pool_skip(net)
    with pytest.raises(ValueError, match="already has Pool Skip"):
        inject_pool_skip(net)
    with pytest.raises(ValueError, match="unknown variant"):
        inject_pool_skip(small_unet_2d(), variant="pool_only")
