"""Elimination-singularity diagnostics: metrics against numpy, planted zero filters and dead units,
stable layer names with and without Pool Skip, the training-time history, and ``nnunet-poolskip diagnose``
on toy models trained through nnU-Net's CLI."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import run_cli
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_poolskip import cli
from nnunet_poolskip.diagnostics.history import (
    DIAG_EVERY_VARIABLE,
    HISTORY_FILENAME,
    append_record,
    diagnostics_every,
    read_history,
    should_record,
    truncate_history,
    weight_record,
)
from nnunet_poolskip.diagnostics.layer_statistics import (
    NEAR_ZERO_FACTOR,
    conv_layers,
    dead_units,
    encoder_summary,
    is_encoder_stage,
    layer_diagnostics,
    weight_statistics,
)
from nnunet_poolskip.nn.inject import inject_pool_skip
from nnunet_poolskip.nn.pool_skip import PoolSkip3d

DIAG_ENV = {DIAG_EVERY_VARIABLE: "1"}


def numpy_sparsity(w: np.ndarray):
    w = w.astype(np.float64).ravel()
    l1, l2, n = np.abs(w).sum(), np.sqrt((w ** 2).sum()), w.size
    near = np.mean(np.abs(w) <= NEAR_ZERO_FACTOR * np.sqrt(np.mean(w ** 2)))
    return l2 / l1, (np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1), near


@pytest.mark.parametrize("shape", [(8, 4, 3, 3, 3), (16, 8, 3, 3), (5, 7, 1, 1, 1), (3, 2, 5)])
def test_l2_l1_hoyer_and_near_zero_match_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_t(3, size=shape).astype(np.float32)
    w[rng.random(shape) < 0.1] = 0.0
    stats = weight_statistics(torch.from_numpy(w))
    l2_l1, hoyer, near = numpy_sparsity(w)
    assert stats["n_weights"] == w.size
    assert stats["l2_l1"] == pytest.approx(l2_l1, rel=1e-12)
    assert stats["hoyer"] == pytest.approx(hoyer, rel=1e-12)
    assert stats["near_zero_fraction"] == pytest.approx(near, abs=0)
    assert stats["near_zero_fraction"] >= np.mean(w == 0) > 0  # the planted exact zeros count


def test_sparsity_extremes_and_empty_conventions():
    one_hot = torch.zeros(4, 3, 3, 3)
    one_hot[1, 2, 0, 1] = -2.5
    stats = weight_statistics(one_hot)
    assert stats["l2_l1"] == pytest.approx(1.0) and stats["hoyer"] == pytest.approx(1.0)
    assert stats["zero_filter_channels"] == [0, 2, 3]
    constant = torch.full((2, 2, 3, 3), -0.3)
    stats = weight_statistics(constant)
    assert stats["l2_l1"] == pytest.approx(1 / 6) and stats["hoyer"] == pytest.approx(0.0, abs=1e-12)
    assert stats["near_zero_fraction"] == 0.0 and stats["zero_filter_channels"] == []
    zeros = weight_statistics(torch.zeros(3, 2, 3))
    assert zeros["l2_l1"] is None and zeros["hoyer"] is None
    assert zeros["near_zero_fraction"] == 1.0 and zeros["zero_filter_channels"] == [0, 1, 2]
    assert weight_statistics(torch.tensor([[0.7]]))["hoyer"] is None
    # transposed conv weights are (in, out, ...): filters are along axis 1
    transposed = torch.ones(3, 4, 2, 2)
    transposed[:, 1] = 0
    assert weight_statistics(transposed, out_channel_axis=1)["zero_filter_channels"] == [1]
    with pytest.raises(ValueError, match="near_zero_factor"):
        weight_statistics(transposed, near_zero_factor=-1)


def small_unet(seed: int = 0) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(1, 3, (8, 16, 32), nn.Conv3d, 3, (1, 2, 2), (2, 2, 2), 3, (2, 2), True,
                         nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=False)


ZEROED = "encoder.stages.1.0.convs.1.conv"      # planted all-zero filters (weights and bias)
ZEROED_CHANNELS = [2, 5]
FORCED = "decoder.stages.0.convs.0"             # norm scale 0, shift -1: pre-activation -1 everywhere
FORCED_CHANNELS = [1, 3]


def plant(network: nn.Module) -> None:
    with torch.no_grad():
        conv = network.get_submodule(ZEROED)
        conv.weight[ZEROED_CHANNELS] = 0
        conv.bias[ZEROED_CHANNELS] = 0
        norm = network.get_submodule(FORCED).norm
        norm.weight[FORCED_CHANNELS] = 0
        norm.bias[FORCED_CHANNELS] = -1


def test_planted_zero_filters_and_dead_units_are_found_exactly():
    network = small_unet()
    plant(network)
    batch = torch.randn(2, 1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    records = {r["name"]: r for r in layer_diagnostics(network, [batch[:1], batch[1:]])}
    for name, record in records.items():
        assert record["zero_filter_channels"] == (ZEROED_CHANNELS if name == ZEROED else []), name
    # an all-zero filter gives a constant map, which instance norm turns into 0: those units are dead too
    expected_dead = {ZEROED: ZEROED_CHANNELS, f"{FORCED}.conv": FORCED_CHANNELS}
    for name, record in records.items():
        if name.startswith(("decoder.transpconvs", "decoder.seg_layers")):
            assert record["dead_fraction"] is None and record["nonlinearity"] is None, name
            continue
        assert record["nonlinearity"] == name[: -len("conv")] + "nonlin", name
        assert record["dead_channels"] == expected_dead.get(name, []), name
        assert record["dead_fraction"] == len(expected_dead.get(name, [])) / record["out_channels"], name
    # weights only: no dead units at all
    assert all(r["dead_fraction"] is None for r in layer_diagnostics(network))


def test_pool_skip_model_keeps_host_names_and_reports_inner_convs_separately():
    baseline, pool_skip = small_unet(), small_unet()
    plant(baseline)
    plant(pool_skip)
    wrapped = inject_pool_skip(pool_skip, "all")
    base_layers, ps_layers = conv_layers(baseline), conv_layers(pool_skip)
    hosts = [layer.name for layer in ps_layers if layer.kind == "host"]
    assert hosts == [layer.name for layer in base_layers]
    assert [layer.name for layer in ps_layers if layer.has_pool_skip] == wrapped
    inner = [layer for layer in ps_layers if layer.kind == "poolskip"]
    assert [layer.name for layer in inner] == [n[: -len("conv")] + "poolskip.conv" for n in wrapped]
    assert [layer.host for layer in inner] == wrapped
    assert all(pool_skip.get_submodule(layer.module_path) is layer.module for layer in ps_layers)
    # data-flow order: each inner conv right after its host, encoder before decoder
    names = [layer.name for layer in ps_layers]
    assert all(names.index(layer.name) == names.index(layer.host) + 1 for layer in inner)
    assert [layer.stage for layer in ps_layers[:4]] == ["encoder.0"] * 4 and ps_layers[-1].stage == "decoder.1"

    batch = torch.randn(2, 1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    records = {r["name"]: r for r in layer_diagnostics(pool_skip, [batch])}
    assert all(records[layer.name]["dead_fraction"] is None and records[layer.name]["kind"] == "poolskip"
               for layer in inner)
    assert records[f"{FORCED}.conv"]["dead_channels"] == FORCED_CHANNELS
    # Pool Skip's inner conv mixes all channels into the zeroed ones: they are zero filters, yet alive
    assert records[ZEROED]["zero_filter_channels"] == ZEROED_CHANNELS
    assert records[ZEROED]["dead_channels"] == []


def test_encoder_summary_counts_encoder_host_convs_only():
    network = small_unet()
    plant(network)  # 2 dead units in the encoder (ZEROED), 2 in the decoder (FORCED, not counted)
    batch = torch.randn(1, 1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    records = layer_diagnostics(network, [batch])
    summary = encoder_summary(records)
    hosts = [r for r in records if r["kind"] == "host" and r["name"].startswith("encoder.")]
    assert summary["n_layers"] == len(hosts) == 6  # 3 stages x 2 convs
    assert summary["l2_l1_median"] == pytest.approx(float(np.median([r["l2_l1"] for r in hosts])), rel=1e-12)
    assert (summary["n_dead_units"], summary["n_units"]) == (len(ZEROED_CHANNELS), 2 * (8 + 16 + 32))
    assert summary["dead_fraction"] == pytest.approx(2 / 112)
    # with Pool Skip: its inner convs are left out, the host convs' figures are the same weights'
    inject_pool_skip(network, "all")
    with_pool_skip = layer_diagnostics(network)
    assert sum(r["kind"] == "poolskip" for r in with_pool_skip) == 6
    weights_only = encoder_summary(with_pool_skip)
    assert weights_only["n_layers"] == 6
    assert (weights_only["n_units"], weights_only["dead_fraction"]) == (0, None)
    assert weights_only["l2_l1_median"] == pytest.approx(summary["l2_l1_median"])
    assert encoder_summary([])["l2_l1_median"] is None
    assert [is_encoder_stage(s) for s in ("encoder.0", "in_tr", "down_tr256", "up_tr256", "out_tr", "decoder.0",
                                          None)] == [True, True, True, False, False, False, False]


def test_residual_encoder_units_and_skip_projections():
    torch.manual_seed(0)
    network = ResidualEncoderUNet(1, 3, (8, 16, 32), nn.Conv3d, 3, (1, 2, 2), (1, 2, 2), 3, (2, 2), True,
                                  nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
                                  {"inplace": True})
    inject_pool_skip(network)
    records = {r["name"]: r for r in layer_diagnostics(network, [torch.randn(1, 1, 8, 16, 16)])}
    assert records["encoder.stem.convs.0.conv"]["stage"] == "encoder.0"
    block = "encoder.stages.1.blocks.0"
    assert records[f"{block}.conv1.conv"]["nonlinearity"] == f"{block}.conv1.nonlin"
    assert records[f"{block}.conv2.conv"]["nonlinearity"] == f"{block}.nonlin2"  # after the residual add
    assert records[f"{block}.skip.1.conv"]["dead_fraction"] is None
    assert records[f"{block}.skip.1.conv"]["has_pool_skip"] is False
    assert records[f"{block}.conv2.poolskip.conv"]["host"] == f"{block}.conv2.conv"


def test_vnet_order_units_and_wrapped_pool_skip_names():
    from monai.networks.nets import VNet

    torch.manual_seed(0)
    vnet = VNet(spatial_dims=3, in_channels=1, out_channels=3)
    plain = [layer.name for layer in conv_layers(vnet)]
    assert plain[0] == "in_tr.conv_block.conv" and plain[-1] == "out_tr.conv2"
    assert [layer.stage for layer in conv_layers(vnet)][:2] == ["in_tr", "down_tr32"]
    records = {r["name"]: r for r in layer_diagnostics(vnet, [torch.randn(1, 1, 16, 16, 16)])}
    assert records["down_tr64.ops.1.conv_block.conv"]["nonlinearity"] == "down_tr64.ops.1.act_function"
    assert records["down_tr32.down_conv"]["nonlinearity"] == "down_tr32.act_function1"
    assert records["up_tr32.up_conv"]["nonlinearity"] == "up_tr32.act_function1"
    assert records["out_tr.conv2"]["dead_fraction"] is None

    # two ways of inserting Pool Skip: wrap a bare conv, or rebuild the (conv, adn) Sequential with it
    down = vnet.down_tr32
    down.down_conv = nn.Sequential(down.down_conv, PoolSkip3d(32))
    block = down.ops[0].conv_block
    down.ops[0].conv_block = nn.Sequential(OrderedDict(conv=block.conv, poolskip=PoolSkip3d(32), adn=block.adn))
    layers = conv_layers(vnet)
    assert [layer.name for layer in layers if layer.kind == "host"] == plain
    inner = {layer.name: layer.host for layer in layers if layer.kind == "poolskip"}
    assert inner == {"down_tr32.down_conv.poolskip.conv": "down_tr32.down_conv",
                     "down_tr32.ops.0.conv_block.poolskip.conv": "down_tr32.ops.0.conv_block.conv"}
    results, n_samples = dead_units(vnet, [torch.randn(1, 1, 16, 16, 16)], layers)
    assert n_samples == 1 and results["down_tr32.down_conv"]["nonlinearity"] == "down_tr32.act_function1"


def test_history_switch_and_file(tmp_path):
    assert diagnostics_every({}) == 50
    assert diagnostics_every({DIAG_EVERY_VARIABLE: "0"}) == 0
    assert diagnostics_every({DIAG_EVERY_VARIABLE: " 7 "}) == 7
    for bad in ("-1", "often"):
        with pytest.raises(ValueError, match=DIAG_EVERY_VARIABLE):
            diagnostics_every({DIAG_EVERY_VARIABLE: bad})
    assert [e for e in range(0, 13) if should_record(e, 5, 12)] == [0, 5, 10, 12]
    assert not should_record(12, 0, 12)

    network = small_unet()
    path = tmp_path / HISTORY_FILENAME
    for epoch in (0, 5, 10, 5):  # a resumed run records epoch 5 again: the last one wins
        append_record(path, weight_record(network, epoch, trainer="T"))
    with open(path, "a") as handle:
        handle.write('{"epoch": 15, "lay')  # a write cut short
    history = read_history(path)
    assert [r["epoch"] for r in history] == [0, 5, 10]
    assert [layer["name"] for layer in history[0]["layers"]] == [layer.name for layer in conv_layers(network)]
    assert history[0]["trainer"] == "T" and "dead_fraction" not in history[0]["layers"][0]
    truncate_history(path, 5)
    assert [r["epoch"] for r in read_history(path)] == [0, 5]
    truncate_history(path, None)
    assert not path.exists() and read_history(path) == []


def test_diagnose_reports_bad_input_clearly(tmp_path, capsys, monkeypatch, toy_workspace):
    missing = tmp_path / "nope"
    assert cli.main(["diagnose", str(missing), "-o", str(tmp_path / "out")]) == 2
    assert f"model folder {missing} does not exist" in capsys.readouterr().err
    folder = toy_workspace.train("nnUNetTrainerPoolSkip", 0, extra_env=DIAG_ENV)
    assert cli.main(["diagnose", str(folder), "-f", "3", "-o", str(tmp_path / "out")]) == 2
    assert "fold_3/checkpoint_final.pth not found" in capsys.readouterr().err
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert cli.main(["diagnose", str(folder), "--weights-only", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nnUNetTrainerPoolSkip" in err and 'eval "$(nnunet-poolskip env)"' in err
    assert not (tmp_path / "out").exists()


def test_training_records_weight_diagnostics_history(toy_workspace):
    for trainer in ("nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip"):
        fold = toy_workspace.train(trainer, 0, extra_env=DIAG_ENV) / "fold_0"
        history = read_history(fold / HISTORY_FILENAME)
        # initial weights, then after the one epoch of the short schedule (every 1, and the last one)
        assert [r["epoch"] for r in history] == [0, 1]
        assert all(r["trainer"] == trainer for r in history)
        kinds = {layer["kind"] for layer in history[-1]["layers"]}
        assert kinds == ({"host", "poolskip"} if "PoolSkip" in trainer else {"host"})
        # the last record holds the final weights: the same numbers as checkpoint_final
        weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
        first = history[-1]["layers"][0]
        assert first["name"] == "encoder.stages.0.0.convs.0.conv"
        assert first["l2_l1"] == pytest.approx(numpy_sparsity(weights[first["name"] + ".weight"].numpy())[0],
                                               rel=1e-12)


def test_diagnose_compares_pool_skip_and_baseline(toy_workspace, tmp_path):
    import matplotlib.image

    pool_skip = toy_workspace.train("nnUNetTrainerPoolSkip", 0, extra_env=DIAG_ENV)
    baseline = toy_workspace.train("nnUNetTrainerBaseline", 0, extra_env=DIAG_ENV)
    out = tmp_path / "diag"
    proc = run_cli(["nnunet-poolskip", "diagnose", str(pool_skip), "-f", "0", "--checkpoint", "final",
                    "--compare", str(baseline), "--num-cases", "2", "--device", "cpu", "-o", str(out)],
                   toy_workspace.env, timeout=300)
    assert "wrote" in proc.stdout
    report = json.loads((out / "diagnostics.json").read_text())
    assert report["model"] == pool_skip.name and report["trainer"] == "nnUNetTrainerPoolSkip"
    assert len(report["compare"]) == 1 and report["compare"][0]["model"] == baseline.name
    val_cases = json.loads((toy_workspace.preprocessed / "splits_final.json").read_text())[0]["val"]
    for model in (report, report["compare"][0]):
        assert model["data"]["cases"] == val_cases[:2] and model["data"]["n_samples"] == 2
        assert [r["epoch"] for r in model["history"]] == [0, 1]
        for layer in model["layers"]:
            assert isinstance(layer["name"], str) and layer["kind"] in ("host", "poolskip")
            assert isinstance(layer["stage"], str)
            assert all(isinstance(layer[k], float) for k in ("l2_l1", "hoyer", "near_zero_fraction"))
            assert layer["dead_fraction"] is None or 0.0 <= layer["dead_fraction"] <= 1.0
            expects_units = layer["kind"] == "host" and ".convs." in layer["name"]
            assert (layer["dead_fraction"] is not None) == expects_units, layer["name"]
    ps_layers, base_layers = report["layers"], report["compare"][0]["layers"]
    assert [la["name"] for la in ps_layers if la["kind"] == "host"] == [la["name"] for la in base_layers]
    assert not any(la["kind"] == "poolskip" for la in base_layers)
    assert sum(la["kind"] == "poolskip" for la in ps_layers) == sum(la["has_pool_skip"] for la in ps_layers
                                                                    if la["kind"] == "host") > 0
    # the ratios against numpy on the checkpoint's own tensors
    weights = torch.load(pool_skip / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    inner = next(la for la in ps_layers if la["kind"] == "poolskip")
    key = inner["host"][: -len("conv")] + "all_modules.1.conv.weight"
    l2_l1, hoyer, near = numpy_sparsity(weights[key].numpy())
    assert (inner["l2_l1"], inner["hoyer"]) == (pytest.approx(l2_l1, rel=1e-12), pytest.approx(hoyer, rel=1e-12))
    for name in ("diagnostics.png", "diagnostics_over_epochs.png"):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert sorted(p.name for p in out.iterdir()) == ["diagnostics.json", "diagnostics.png",
                                                     "diagnostics_over_epochs.png"]


def test_vnet_trainers_pool_skip_keeps_host_names():
    vnet = pytest.importorskip("nnunet_poolskip.nn.vnet")
    torch.manual_seed(0)
    baseline = vnet.build_vnet(1, 3, features_base=4)
    pool_skip = vnet.build_vnet(1, 3, features_base=4)
    vnet.inject_pool_skip_vnet(pool_skip)  # the paper's placement: down_tr32 and down_tr64
    layers = conv_layers(pool_skip)
    assert [layer.name for layer in layers if layer.kind == "host"] == [layer.name for layer in conv_layers(baseline)]
    inner = [layer for layer in layers if layer.kind == "poolskip"]
    assert [layer.name for layer in inner] == [
        "down_tr32.down_conv.poolskip.conv", "down_tr32.ops.0.conv_block.poolskip.conv",
        "down_tr64.down_conv.poolskip.conv", "down_tr64.ops.0.conv_block.poolskip.conv",
        "down_tr64.ops.1.conv_block.poolskip.conv"]
    assert [layer.host for layer in inner] == [
        "down_tr32.down_conv", "down_tr32.ops.0.conv_block.conv", "down_tr64.down_conv",
        "down_tr64.ops.0.conv_block.conv", "down_tr64.ops.1.conv_block.conv"]
