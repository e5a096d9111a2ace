"""MONAI V-Net under nnU-Net: network construction, Pool Skip placement, patch size, channels, dropout,
and the trainers through nnU-Net's real CLI (train, predict, checkpoint reload) on the toy dataset."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_cli
from monai.networks.nets import VNet
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_poolskip.nn.pool_skip import PoolSkip3d, is_pool_skip
from nnunet_poolskip.nn.vnet import ScaledVNet, build_vnet, inject_pool_skip_vnet, vnet_patch_size
from nnunet_poolskip.training import TRAINERS
from nnunet_poolskip.training.vnet import (
    nnUNetTrainerVNet,
    nnUNetTrainerVNetPoolSkip,
    nnUNetTrainerVNetPoolSkipAll,
    plans_with_vnet_patch,
)

SMALL = 4  # stem width of the small test networks (MONAI: 16)
FOLD = 1  # the toy split's folds 1-4 validate on one case, fold 0 on two: the final validation costs half
# OpenMP threads sleep instead of spinning while they wait: on a busy 2-core machine, spinning threads make
# these small CPU runs several times slower. Numbers are unaffected.
QUIET_OMP = {"OMP_WAIT_POLICY": "PASSIVE"}

# The documented placement (nnunet_poolskip/nn/vnet.py), written out: host conv names after injection.
PAPER_HOSTS = ["down_tr32.down_conv.conv", "down_tr32.ops.0.conv_block.conv",
               "down_tr64.down_conv.conv", "down_tr64.ops.0.conv_block.conv", "down_tr64.ops.1.conv_block.conv"]
ALL_HOSTS = PAPER_HOSTS + [
    "down_tr128.down_conv.conv", "down_tr128.ops.0.conv_block.conv", "down_tr128.ops.1.conv_block.conv",
    "down_tr128.ops.2.conv_block.conv",
    "down_tr256.down_conv.conv", "down_tr256.ops.0.conv_block.conv", "down_tr256.ops.1.conv_block.conv"]
# output channels of those convs, in units of the stem width
PAPER_CHANNELS = [2, 2, 4, 4, 4]
ALL_CHANNELS = PAPER_CHANNELS + [8, 8, 8, 8, 16, 16, 16]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The in-process networks here are tiny: one thread is as fast, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pool_skips(network: nn.Module):
    return [(name, m) for name, m in network.named_modules() if is_pool_skip(m)]


def n_params(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def dropouts(network: nn.Module):
    return [m for m in network.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d))]


# ---------------------------------------------------------------------------------------------------
# network construction


def test_full_width_is_monai_vnet_and_scaled_vnet_reproduces_it():
    torch.manual_seed(0)
    monai_net = build_vnet(1, 3)
    assert type(monai_net) is VNet
    scaled = ScaledVNet(16, in_channels=1, out_channels=3)
    reference = {k: v.shape for k, v in monai_net.state_dict().items()}
    assert {k: v.shape for k, v in scaled.state_dict().items()} == reference
    scaled.load_state_dict(monai_net.state_dict())
    monai_net.eval()
    scaled.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(monai_net(x), scaled(x))
    # MONAI's reference dropout: 2 in the encoder, 2 + 2 in up_tr256/up_tr128, the fixed skip ones in up_tr64/32
    assert [m.p for m in dropouts(monai_net)] == [0.5] * 8
    assert all(isinstance(m, nn.Dropout3d) for m in dropouts(monai_net))
    assert dropouts(build_vnet(1, 3, features_base=SMALL, dropout=False)) == []


def vnet_parameter_count(width: int, in_channels: int, out_channels: int) -> int:
    """V-Net's parameters from its published layout (MONAI's choices: no conv bias, BatchNorm, biased
    transposed convs and final 1x1 conv), computed here independently of any network object."""
    def norm(c):
        return 2 * c

    def down(c, n_convs):  # 2x2x2 stride-2 conv c -> 2c, bn, then n 5x5x5 convs at 2c
        return 8 * c * 2 * c + norm(2 * c) + n_convs * (125 * (2 * c) ** 2 + norm(2 * c))

    def up(c_in, c_out, n_convs):  # transposed 2x2x2 conv c_in -> c_out/2 with bias, bn, n convs at c_out
        return 8 * c_in * c_out // 2 + c_out // 2 + norm(c_out // 2) + n_convs * (125 * c_out ** 2 + norm(c_out))

    f = width
    return (125 * in_channels * f + norm(f)
            + down(f, 1) + down(2 * f, 2) + down(4 * f, 3) + down(8 * f, 2)
            + up(16 * f, 16 * f, 2) + up(16 * f, 8 * f, 2) + up(8 * f, 4 * f, 1) + up(4 * f, 2 * f, 1)
            + 125 * 2 * f * out_channels + norm(out_channels) + out_channels ** 2 + out_channels)


@pytest.mark.parametrize("width", [4, 8, 16])
def test_parameter_count_matches_the_vnet_layout(width):
    net = build_vnet(2, 14, features_base=width)
    assert n_params(net) == vnet_parameter_count(width, 2, 14)
    if width < 16:
        with torch.no_grad():
            assert net(torch.randn(2, 2, 16, 16, 32)).shape == (2, 14, 16, 16, 32)


@pytest.mark.parametrize("in_channels, width, ok", [(1, 16, True), (2, 16, True), (4, 16, True), (8, 16, True),
                                                    (16, 16, True), (3, 16, False), (5, 16, False),
                                                    (2, 4, True), (8, 4, False)])
def test_input_channels(in_channels, width, ok):
    if ok:
        net = build_vnet(in_channels, 2, features_base=width)
        assert net.in_tr.conv_block.conv.in_channels == in_channels
        if width == SMALL:
            with torch.no_grad():
                assert net.eval()(torch.randn(1, in_channels, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
        return
    supported = {16: "1, 2, 4, 8, 16", 4: "1, 2, 4"}[width]
    with pytest.raises(ValueError, match=f"got {in_channels} input channels.*Supported input channel counts: "
                                         f"{supported}$"):
        build_vnet(in_channels, 2, features_base=width)


def test_build_vnet_rejects_2d_and_bad_width():
    with pytest.raises(ValueError, match="3D configurations only"):
        build_vnet(1, 2, spatial_dims=2)
    with pytest.raises(ValueError, match="features_base must be a positive int"):
        build_vnet(1, 2, features_base=0)


@pytest.mark.parametrize("planned, expected", [([24, 32, 40], [16, 32, 32]), ([48, 192, 192], [48, 192, 192]),
                                               ([40, 224, 192], [32, 224, 192]), ([8, 15, 17], [16, 16, 16]),
                                               ([31, 33, 16], [16, 32, 16])])
def test_patch_size_rounds_down_to_16(planned, expected):
    assert vnet_patch_size(planned) == expected


# ---------------------------------------------------------------------------------------------------
# Pool Skip placement


@pytest.mark.parametrize("stages, hosts, channels", [((0, 1), PAPER_HOSTS, PAPER_CHANNELS),
                                                     ("all", ALL_HOSTS, ALL_CHANNELS),
                                                     ([3], ALL_HOSTS[-3:], ALL_CHANNELS[-3:])])
def test_pool_skip_sits_exactly_where_documented(stages, hosts, channels):
    base = build_vnet(1, 3, features_base=SMALL)
    net = copy.deepcopy(base)
    names = inject_pool_skip_vnet(net, stages)
    assert names == hosts
    found = pool_skips(net)
    assert [name for name, _ in found] == [h.rsplit(".", 1)[0] + ".pool_skip" for h in hosts]
    assert all(type(m) is PoolSkip3d and m.variant == "full" and m.pool_size == (2, 2, 2) for _, m in found)
    assert [m.channels for _, m in found] == [c * SMALL for c in channels]
    modules = dict(net.named_modules())
    for host in hosts:
        parent = modules[host.rsplit(".", 1)[0]]
        order = list(parent._modules)
        # a Convolution block runs conv -> pool_skip -> adn (the norm); the wrapped down-conv runs conv -> pool_skip
        assert order == (["conv", "pool_skip"] if ".down_conv." in host else ["conv", "pool_skip", "adn"])
        assert modules[host].out_channels == parent.pool_skip.channels
    # 3x3x3 inner conv with bias per module, nothing else added
    assert n_params(net) - n_params(base) == sum((c * SMALL) ** 2 * 27 + c * SMALL for c in channels)


def test_pool_skip_is_between_each_conv_and_its_norm_in_the_data_path():
    torch.manual_seed(0)
    net = build_vnet(1, 3, features_base=SMALL)
    names = inject_pool_skip_vnet(net, "all")
    modules = dict(net.named_modules())
    seen = {}

    def record(key, which):
        def hook(module, inputs, output):
            seen.setdefault(key, {})[which] = (inputs[0].detach().clone(), output.detach().clone())
        return hook

    for host in names:
        parent_name = host.rsplit(".", 1)[0]
        parent = modules[parent_name]
        if ".down_conv." in host:  # DownTransition: down_conv (conv, pool_skip) -> bn1
            norm = modules[parent_name.rsplit(".", 1)[0] + ".bn1"]
        else:
            norm = parent.adn.N
        modules[host].register_forward_hook(record(host, "conv"))
        parent.pool_skip.register_forward_hook(record(host, "pool_skip"))
        norm.register_forward_hook(record(host, "norm"))
    net.eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 32, 32))
    assert sorted(seen) == sorted(names)
    for host, calls in seen.items():
        assert torch.equal(calls["pool_skip"][0], calls["conv"][1]), host   # Pool Skip gets the conv's output
        assert torch.equal(calls["norm"][0], calls["pool_skip"][1]), host   # the norm gets Pool Skip's output
        assert not torch.equal(calls["pool_skip"][1], calls["conv"][1]), host


def test_zeroed_pool_skip_is_the_identity_and_weights_change_the_output():
    torch.manual_seed(1)
    base = build_vnet(1, 3, features_base=SMALL).eval()
    net = copy.deepcopy(base)
    inject_pool_skip_vnet(net)
    for _, m in pool_skips(net):
        nn.init.zeros_(m.conv.weight), nn.init.zeros_(m.conv.bias)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), base(x))
        for _, m in pool_skips(net):
            nn.init.normal_(m.conv.weight, std=0.1)
        assert not torch.allclose(net(x), base(x))


def test_injection_errors():
    with pytest.raises(ValueError, match="needs a monai.networks.nets.VNet"):
        inject_pool_skip_vnet(nn.Conv3d(1, 1, 3))
    net = build_vnet(1, 2, features_base=SMALL)
    with pytest.raises(ValueError, match="out of range.*4 encoder stages"):
        inject_pool_skip_vnet(net, [4])
    with pytest.raises(ValueError, match="unknown variant"):
        inject_pool_skip_vnet(net, variant="nope")
    inject_pool_skip_vnet(net)
    with pytest.raises(ValueError, match="already has Pool Skip"):
        inject_pool_skip_vnet(net)


def test_eval_mode_is_deterministic_and_training_mode_applies_dropout():
    torch.manual_seed(2)
    net = build_vnet(1, 3, features_base=SMALL)
    inject_pool_skip_vnet(net)
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))  # MONAI's dropout is active in training
        net.eval()
        assert torch.equal(net(x), net(x))
        # without dropout nothing random is left, even in training mode
        no_dropout = build_vnet(1, 3, features_base=SMALL, dropout=False).train()
        assert torch.equal(no_dropout(x), no_dropout(x))


# ---------------------------------------------------------------------------------------------------
# trainers: plans, channels, network building


@pytest.fixture(scope="module")
def cpu_plans(toy_workspace) -> dict:
    return json.loads((toy_workspace.preprocessed / f"{toy_workspace.plans}.json").read_text())


def test_trainers_registered():
    for cls in (nnUNetTrainerVNet, nnUNetTrainerVNetPoolSkip, nnUNetTrainerVNetPoolSkipAll):
        assert TRAINERS[cls.__name__] is cls


def test_plans_patch_adjusted_in_a_copy_also_for_inheriting_configurations(cpu_plans):
    plans = copy.deepcopy(cpu_plans)
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres"}
    planned = plans["configurations"]["3d_fullres"]["patch_size"]
    expected = [max(16, s - s % 16) for s in planned]
    assert planned != expected, "the toy CPU plans should have a patch that is not a multiple of 16"
    before = copy.deepcopy(plans)
    new, old_patch, new_patch = plans_with_vnet_patch(plans, "3d_child")
    assert plans == before
    assert (old_patch, new_patch) == (planned, expected)
    manager = PlansManager(new)
    assert manager.get_configuration("3d_child").patch_size == expected
    assert manager.get_configuration("3d_fullres").patch_size == planned


def test_classmethod_builds_each_trainer_network(cpu_plans):
    plans, _, _ = plans_with_vnet_patch(cpu_plans, "3d_fullres")
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    width = configuration.configuration["vnet_features_base"]
    for cls, count in ((nnUNetTrainerVNet, 0), (nnUNetTrainerVNetPoolSkip, 5), (nnUNetTrainerVNetPoolSkipAll, 12)):
        net = cls.build_network_architecture(manager, configuration, 1, 3, enable_deep_supervision=True)
        assert isinstance(net, VNet) and len(pool_skips(net)) == count, cls.__name__
        assert net.in_tr.conv_block.conv.out_channels == width
    with pytest.raises(ValueError, match="divisible by 16.*plans.json in the model folder"):
        nnUNetTrainerVNet.build_network_architecture(PlansManager(cpu_plans),
                                                     PlansManager(cpu_plans).get_configuration("3d_fullres"), 1, 3)


def test_trainer_start_rejects_unsupported_channel_counts(cpu_plans, toy_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    dataset_json = json.loads((toy_workspace.raw / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "CT", "1": "a", "2": "b"}
    plans = {**copy.deepcopy(cpu_plans), "continue_training": False}
    with pytest.raises(ValueError, match=r"nnUNetTrainerVNetPoolSkip cannot train configuration '3d_fullres'.*"
                                         r"got 3 input channels.*Supported input channel counts: 1, 2, 4$"):
        nnUNetTrainerVNetPoolSkip(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []  # failed before nnU-Net created any folder


def test_trainer_is_single_output_without_deep_supervision(cpu_plans, toy_workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    for key, value in toy_workspace.env.items():
        if key.startswith("nnUNet_") and key != "nnUNet_results":
            monkeypatch.setenv(key, value)
    dataset_json = json.loads((toy_workspace.raw / "dataset.json").read_text())
    trainer = nnUNetTrainerVNetPoolSkip({**copy.deepcopy(cpu_plans), "continue_training": False}, "3d_fullres", 0,
                                        dataset_json, torch.device("cpu"))
    trainer.initialize()
    assert trainer.enable_deep_supervision is False
    assert trainer._get_deep_supervision_scales() is None
    assert type(trainer.loss).__name__ == "DC_and_CE_loss"
    trainer.set_deep_supervision_enabled(True)  # no decoder to switch: must not fail
    patch = trainer.configuration_manager.patch_size
    assert all(s % 16 == 0 for s in patch)
    target = torch.randint(0, 3, (2, 1, *patch))
    out = trainer.network(torch.randn(2, 1, *patch))
    assert out.shape == (2, 3, *patch)
    assert torch.isfinite(trainer.loss(out, target))


# ---------------------------------------------------------------------------------------------------
# the real CLI: nnUNetv2_train, checkpoint reload, nnUNetv2_predict


def planned_and_expected_patch(toy_workspace):
    plans = json.loads((toy_workspace.preprocessed / f"{toy_workspace.plans}.json").read_text())
    planned = plans["configurations"]["3d_fullres"]["patch_size"]
    return planned, [max(16, s - s % 16) for s in planned]


@pytest.mark.integration
@pytest.mark.parametrize("trainer, n_pool_skip", [("nnUNetTrainerVNet", 0), ("nnUNetTrainerVNetPoolSkip", 5)])
def test_cli_training_saves_adjusted_plans_and_a_reloadable_checkpoint(toy_workspace, trainer, n_pool_skip):
    folder = toy_workspace.train(trainer, FOLD, extra_env=QUIET_OMP)
    planned, expected = planned_and_expected_patch(toy_workspace)
    assert planned != expected
    saved = json.loads((folder / "plans.json").read_text())
    assert saved["configurations"]["3d_fullres"]["patch_size"] == expected
    log = "".join(p.read_text() for p in (folder / f"fold_{FOLD}").glob("training_log_*.txt"))
    assert f"patch size {planned} of configuration '3d_fullres' rounded down to multiples of 16: {expected}" in log
    debug = json.loads((folder / f"fold_{FOLD}" / "debug.json").read_text())
    assert debug["enable_deep_supervision"] == "False"
    assert "DeepSupervision" not in debug["loss"]

    checkpoint = torch.load(folder / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    assert checkpoint["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] == expected
    # rebuild the way nnUNetv2_predict does: from the model folder's plans.json, on the class
    manager = PlansManager(saved)
    network = TRAINERS[trainer].build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 3,
                                                           enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])  # strict
    assert len(pool_skips(network)) == n_pool_skip
    assert sum(".pool_skip.conv." in k for k in checkpoint["network_weights"]) == 2 * n_pool_skip
    network.eval()
    x = torch.randn(1, 1, *expected)
    with torch.no_grad():
        first, second = network(x), network(x)
    assert first.shape == (1, 3, *expected) and torch.equal(first, second)


def write_small_case(folder, reference_image) -> tuple:
    """A case smaller than the V-Net patch on every axis, with the toy data's spacing."""
    reference = sitk.ReadImage(str(reference_image))
    array = np.random.default_rng(0).normal(80, 20, (10, 20, 24)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(reference.GetSpacing())
    sitk.WriteImage(image, str(folder / "toy_small_0000.nii.gz"))
    return array.shape


@pytest.mark.integration
def test_cli_predict_including_a_case_smaller_than_the_patch(toy_workspace, tmp_path):
    trainer = "nnUNetTrainerVNetPoolSkip"
    toy_workspace.train(trainer, FOLD, extra_env=QUIET_OMP)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for image in sorted((toy_workspace.raw / "imagesTs").glob("*_0000.nii.gz")):
        shutil.copy(image, inputs / image.name)
    write_small_case(inputs, next(inputs.glob("*_0000.nii.gz")))
    run_cli(["nnUNetv2_predict", "-i", str(inputs), "-o", str(out), "-d", str(toy_workspace.dataset_id),
             "-c", "3d_fullres", "-f", str(FOLD), "-tr", trainer, "-p", toy_workspace.plans, "-device", "cpu",
             "--disable_tta", "-npp", "1", "-nps", "1"], {**toy_workspace.env, **QUIET_OMP})
    images = sorted(inputs.glob("*_0000.nii.gz"))
    assert len(images) == 3
    for image in images:
        prediction = out / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert prediction.is_file(), prediction
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
        assert set(np.unique(seg)) <= {0, 1, 2}


@pytest.mark.integration
def test_our_predict_command_with_the_vnet_baseline(toy_workspace, tmp_path):
    trainer = "nnUNetTrainerVNet"
    toy_workspace.train(trainer, FOLD, extra_env=QUIET_OMP)
    images = sorted((toy_workspace.raw / "imagesTs").glob("*_0000.nii.gz"))
    run_cli(["nnunet-poolskip", "predict", "-i", str(toy_workspace.raw / "imagesTs"), "-o", str(tmp_path),
             "-d", str(toy_workspace.dataset_id), "-c", "3d_fullres", "-tr", trainer, "-p", toy_workspace.plans,
             "-f", str(FOLD), "--device", "cpu", "--disable-tta"], {**toy_workspace.env, **QUIET_OMP})
    for image in images:
        prediction = tmp_path / image.name.replace("_0000.nii.gz", ".nii.gz")
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        assert seg.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
        assert set(np.unique(seg)) <= {0, 1, 2}


@pytest.mark.integration
@pytest.mark.parametrize("trainer, n_pool_skip", [("nnUNetTrainerVNet", 0), ("nnUNetTrainerVNetPoolSkip", 5)])
def test_sliding_window_feeds_the_network_the_adjusted_patch(toy_workspace, monkeypatch, trainer, n_pool_skip):
    """nnU-Net's predictor, loaded from the model folder as nnUNetv2_predict loads it, in this process."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = toy_workspace.train(trainer, FOLD, extra_env=QUIET_OMP)
    monkeypatch.setenv("nnUNet_extTrainer", toy_workspace.env["nnUNet_extTrainer"])
    _, expected = planned_and_expected_patch(toy_workspace)
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (FOLD,))
    assert len(pool_skips(predictor.network)) == n_pool_skip
    shapes = []
    predictor.network.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    image_file = sorted((toy_workspace.raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    data, properties = SimpleITKIO().read_images([str(image_file)])
    seg = predictor.predict_single_npy_array(data, properties)
    assert seg.shape == data.shape[1:]
    assert shapes and all(s == (1, 1, *expected) for s in shapes)
    # smaller than the patch on every axis: nnU-Net pads to the patch, the result has the input's shape
    shapes.clear()
    small = np.random.default_rng(1).normal(80, 20, (1, 10, 20, 24)).astype(np.float32)
    seg = predictor.predict_single_npy_array(small, properties)
    assert seg.shape == small.shape[1:]
    assert shapes == [(1, 1, *expected)]


# ---------------------------------------------------------------------------------------------------
# benchmarks/vnet_cost.py against a count by hand


def vnet_forward_flops(patch, width: int, in_channels: int, classes: int, pool_skip_stages=()) -> int:
    """Convolution FLOPs (2 per multiply-add) of one V-Net forward at batch 1, from the layout alone."""
    def conv(voxels, c_in, c_out, kernel_volume):
        return 2 * voxels * c_in * c_out * kernel_volume

    n = [int(np.prod(patch)) // 8 ** s for s in range(5)]  # voxels at full resolution and after each stage
    f = width
    flops = conv(n[0], in_channels, f, 125)
    for s, n_convs in enumerate((1, 2, 3, 2)):  # down_tr32..down_tr256: stride-2 2x2x2 conv, then 5x5x5 convs
        c = f * 2 ** s
        flops += conv(n[s + 1], c, 2 * c, 8) + n_convs * conv(n[s + 1], 2 * c, 2 * c, 125)
        if s in pool_skip_stages:  # one 3x3x3 conv per host conv
            flops += (1 + n_convs) * conv(n[s + 1], 2 * c, 2 * c, 27)
    for c_in, c_out, n_convs, level in ((16 * f, 16 * f, 2, 3), (16 * f, 8 * f, 2, 2), (8 * f, 4 * f, 1, 1),
                                        (4 * f, 2 * f, 1, 0)):  # up_tr256..up_tr32
        flops += conv(n[level], c_in, c_out // 2, 1) + n_convs * conv(n[level], c_out, c_out, 125)
    return flops + conv(n[0], 2 * f, classes, 125) + conv(n[0], classes, classes, 1)


def test_cost_benchmark_matches_a_count_by_hand():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vnet_cost.py"
    spec = importlib.util.spec_from_file_location("vnet_cost", path)
    vnet_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vnet_cost)
    patch, width, classes, batch = (32, 48, 64), 8, 14, 2
    rows = {r["trainer"]: r for r in vnet_cost.measure(patch, batch, 1, classes, width)}
    assert list(rows) == ["nnUNetTrainerVNet", "nnUNetTrainerVNetPoolSkip", "nnUNetTrainerVNetPoolSkipAll"]
    for name, stages in (("nnUNetTrainerVNet", ()), ("nnUNetTrainerVNetPoolSkip", (0, 1)),
                         ("nnUNetTrainerVNetPoolSkipAll", (0, 1, 2, 3))):
        row = rows[name]
        added = sum((c * width) ** 2 * 27 + c * width for c, s in zip(ALL_CHANNELS, [0, 0, 1, 1, 1] + [2] * 4 + [3] * 3)
                    if s in stages)
        assert row["pool_skip_modules"] == {0: 0, 2: 5, 4: 12}[len(stages)]
        assert row["parameters"] == vnet_parameter_count(width, 1, classes) + added
        forward = vnet_forward_flops(patch, width, 1, classes, stages)
        assert row["forward_flops"] == forward
        # training: forward, input gradients (none for the network's input) and weight gradients per sample
        assert row["train_step_flops"] == batch * (3 * forward - 2 * int(np.prod(patch)) * 125 * width)
