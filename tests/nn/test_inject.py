"""inject_pool_skip on dynamic-network-architectures' U-Nets: placement, counts, parameters, init, errors."""
from __future__ import annotations

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
                         [[1, 3, 3]] + [[3, 3, 3]] * 5, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
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
])
def test_bad_stage_selection(stages, message):
    with pytest.raises(ValueError, match=message):
        inject_pool_skip(btcv_like_unet(), stages)


def test_unsupported_network_and_double_injection():
    with pytest.raises(ValueError, match="PlainConvUNet, ResidualEncoderUNet"):
        inject_pool_skip(nn.Sequential(nn.Conv3d(1, 2, 3)))
    net = small_unet_2d()
    inject_pool_skip(net)
    with pytest.raises(ValueError, match="already has Pool Skip"):
        inject_pool_skip(net)
    with pytest.raises(ValueError, match="unknown variant"):
        inject_pool_skip(small_unet_2d(), variant="pool_only")
