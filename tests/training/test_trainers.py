"""The trainers through nnU-Net's own machinery: network building per configuration and plans,
stock-CLI training and prediction, continuation, discovery, and a wheel install."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_cli
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_poolskip.nn.pool_skip import PoolSkip2d, PoolSkip3d, is_pool_skip
from nnunet_poolskip.training import TRAINERS
from nnunet_poolskip.training.poolskip import nnUNetTrainerPoolSkip
from nnunet_poolskip.training.schedule import schedule_overrides, torch_threads, validation_mirroring

POOL_SKIP_TRAINERS = {name: cls for name, cls in TRAINERS.items() if issubclass(cls, nnUNetTrainerPoolSkip)}


def build(trainer_cls, plans: dict, configuration: str, out_channels: int = 3):
    manager = PlansManager(plans)
    return trainer_cls.build_network_architecture(manager, manager.get_configuration(configuration), 1,
                                                  out_channels, enable_deep_supervision=False)


def pool_skips(network):
    return [m for m in network.modules() if is_pool_skip(m)]


@pytest.fixture(scope="module")
def toy_plans(toy_workspace) -> dict:
    plans = json.loads((toy_workspace.preprocessed / "nnUNetPlansCPU.json").read_text())
    # nnU-Net only plans 3d_lowres for large images; add one the way it writes them (same network
    # family, coarser spacing) so the trainers are exercised on that configuration name as well.
    full = plans["configurations"]["3d_fullres"]
    plans["configurations"]["3d_lowres"] = {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlansCPU_3d_lowres",
        "spacing": [s * 2 for s in full["spacing"]], "patch_size": full["patch_size"],
        "next_stage": "3d_cascade_fullres"}
    return plans


@pytest.mark.parametrize("configuration, module_type", [("2d", PoolSkip2d), ("3d_fullres", PoolSkip3d),
                                                        ("3d_lowres", PoolSkip3d)])
def test_every_pool_skip_trainer_builds_every_configuration(toy_plans, configuration, module_type):
    n_stages = toy_plans["configurations"]["3d_fullres" if configuration != "2d" else "2d"]["architecture"][
        "arch_kwargs"]["n_stages"]
    for name, cls in POOL_SKIP_TRAINERS.items():
        net = build(cls, toy_plans, configuration)
        mods = pool_skips(net)
        expected = 2 * (n_stages - 1 if cls.pool_skip_stages == "all_but_last" else n_stages)
        assert len(mods) == expected, name
        assert all(type(m) is module_type and m.variant == cls.pool_skip_variant for m in mods), name
        if not cls.pool_skip_host_shaped:  # host-shaped windows: test_host_shaped_trainer_follows_the_plans
            assert all(m.pool_size == (cls.pool_skip_size,) * module_type.spatial_dims for m in mods), name
        patch = toy_plans["configurations"]["3d_fullres" if configuration != "2d" else "2d"]["patch_size"]
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, 1, *patch))
        assert out.shape == (1, 3, *patch)
    assert build(TRAINERS["nnUNetTrainerBaseline"], toy_plans, "3d_fullres") is not None
    assert not pool_skips(build(TRAINERS["nnUNetTrainerBaseline"], toy_plans, "3d_fullres"))


def encoder_pool_skips_by_stage(network) -> dict:
    """{stage index: [Pool Skip modules of that encoder stage]} (ResEnc's stem counts as stage 0)."""
    stages = {}
    for name, module in network.named_modules():
        if is_pool_skip(module):
            parts = name.split(".")
            stage = 0 if parts[1] == "stem" else int(parts[2])
            stages.setdefault(stage, []).append(module)
    return stages


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_host_shaped_trainer_follows_the_plans(toy_plans, configuration):
    """nnU-Net planned the toy data (2 mm slices, 1 mm in-plane) with a 1x3x3 stage 0: there the host-shaped
    Pool Skip has a 1x3x3 inner conv and a 1x2x2 window, the standard one 3x3x3 and 2x2x2."""
    arch = toy_plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    kernels = [tuple(k) for k in arch["kernel_sizes"]]
    if configuration == "3d_fullres":
        assert kernels[0] == (1, 3, 3) and kernels[1] == (3, 3, 3)  # the plans really are anisotropic
    shaped = encoder_pool_skips_by_stage(build(TRAINERS["nnUNetTrainerPoolSkipHostShaped"], toy_plans, configuration))
    standard = encoder_pool_skips_by_stage(build(TRAINERS["nnUNetTrainerPoolSkip"], toy_plans, configuration))
    assert sorted(shaped) == sorted(standard) == list(range(arch["n_stages"]))
    for stage, modules in shaped.items():
        assert len(modules) == arch["n_conv_per_stage"][stage]
        for module in modules:
            assert module.conv.kernel_size == kernels[stage]
            assert module.pool_size == tuple(2 if k > 1 else 1 for k in kernels[stage])
    for stage, modules in standard.items():
        assert all(m.conv.kernel_size == (3,) * len(kernels[0]) for m in modules)
    if configuration == "2d":  # isotropic: both readings build the same modules
        assert [(m.kernel_size, m.pool_size) for ms in shaped.values() for m in ms] == \
            [(m.kernel_size, m.pool_size) for ms in standard.values() for m in ms]
    else:
        c = arch["features_per_stage"][0]
        assert sum(p.numel() for p in shaped[0][0].parameters()) == 9 * c * c + c  # as the 1x3x3 host conv
        assert sum(p.numel() for p in standard[0][0].parameters()) == 27 * c * c + c


@pytest.mark.integration
def test_stock_cli_train_then_predict_host_shaped(toy_workspace, tmp_path):
    """nnUNetv2_train and nnUNetv2_predict with the host-shaped trainer: the checkpoint holds 1x3x3 inner convs
    at stage 0, and inference rebuilds the same network from the trainer name."""
    trainer = "nnUNetTrainerPoolSkipHostShaped"
    folder = toy_workspace.train(trainer, 0)
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    assert weights["encoder.stages.0.0.convs.0.all_modules.1.conv.weight"].shape[-3:] == (1, 3, 3)
    assert weights["encoder.stages.1.0.convs.0.all_modules.1.conv.weight"].shape[-3:] == (3, 3, 3)
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(toy_workspace.raw / "imagesTs"), "-o", str(out), "-d",
             str(toy_workspace.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-p", toy_workspace.plans,
             "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], toy_workspace.env)
    cases = {p.name.replace("_0000.nii.gz", ".nii.gz") for p in (toy_workspace.raw / "imagesTs").glob("*.nii.gz")}
    assert cases and {p.name for p in out.glob("*.nii.gz")} == cases


def test_resenc_plans(toy_workspace):
    """`-p nnUNetResEncUNetMPlans`: nnU-Net's ResEnc planner, then the CPU transform, then our trainer."""
    env = toy_workspace.env
    run_cli(["nnUNetv2_plan_experiment", "-d", str(toy_workspace.dataset_id), "-pl", "nnUNetPlannerResEncM"],
            {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"})
    run_cli(["nnunet-poolskip", "derive-plans", "-d", str(toy_workspace.dataset_id), "-p", "nnUNetResEncUNetMPlans"],
            env)
    plans = json.loads((toy_workspace.preprocessed / "nnUNetResEncUNetMPlansCPU.json").read_text())
    assert plans["plans_name"] == "nnUNetResEncUNetMPlansCPU"
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    net = build(TRAINERS["nnUNetTrainerPoolSkip"], plans, "3d_fullres")
    assert type(net).__name__ == "ResidualEncoderUNet"
    assert len(pool_skips(net)) == 1 + 2 * sum(kwargs["n_blocks_per_stage"])


def test_stock_cli_train_then_predict_with_pool_skip(toy_workspace, tmp_path):
    folder = toy_workspace.train("nnUNetTrainerPoolSkip", 0)
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerPoolSkip"
    weights = checkpoint["network_weights"]
    n_stages = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"][
        "arch_kwargs"]["n_stages"]
    inner = [k for k in weights if k.endswith("all_modules.1.conv.weight") and k.startswith("encoder.")]
    assert len(inner) == 2 * n_stages
    assert weights["encoder.stages.0.0.convs.0.all_modules.1.conv.weight"].shape[-3:] == (3, 3, 3)

    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(toy_workspace.raw / "imagesTs"), "-o", str(out), "-d",
             str(toy_workspace.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainerPoolSkip",
             "-p", toy_workspace.plans, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
            toy_workspace.env)
    references = sorted((toy_workspace.raw / "labelsTs").glob("*.nii.gz"))
    assert references
    for ref_path in references:
        pred = sitk.ReadImage(str(out / ref_path.name))
        ref = sitk.ReadImage(str(ref_path))
        assert pred.GetSize() == ref.GetSize()
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing()) and np.allclose(pred.GetOrigin(), ref.GetOrigin())
        assert np.allclose(pred.GetDirection(), ref.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_continue_training_with_c(toy_workspace):
    """`--c` resumes from the checkpoint: a 1-epoch run continued to 2 epochs trains only epoch 1."""
    toy_workspace.train("nnUNetTrainerPoolSkipAMOS", 2)
    fold = toy_workspace.model_folder("nnUNetTrainerPoolSkipAMOS") / "fold_2"
    env = {**toy_workspace.env, "NNUNET_POOLSKIP_EPOCHS": "2", "NNUNET_POOLSKIP_ITERS": "2",
           "NNUNET_POOLSKIP_VAL_ITERS": "1"}
    proc = run_cli(["nnUNetv2_train", str(toy_workspace.dataset_id), "3d_fullres", "2", "-tr",
                    "nnUNetTrainerPoolSkipAMOS", "-p", toy_workspace.plans, "-device", "cpu", "--c"], env)
    log = proc.stdout
    assert "Epoch 1" in log and "Epoch 0\n" not in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2


def test_schedule_variables_are_validated():
    assert schedule_overrides({"NNUNET_POOLSKIP_EPOCHS": "3"}) == {"num_epochs": 3}
    assert schedule_overrides({}) == {}
    with pytest.raises(ValueError, match="NNUNET_POOLSKIP_ITERS"):
        schedule_overrides({"NNUNET_POOLSKIP_ITERS": "zero"})
    assert torch_threads({"NNUNET_POOLSKIP_THREADS": "1"}) == 1 and torch_threads({}) is None
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="NNUNET_POOLSKIP_THREADS"):
            torch_threads({"NNUNET_POOLSKIP_THREADS": bad})
    assert validation_mirroring({}) and validation_mirroring({"NNUNET_POOLSKIP_VAL_MIRRORING": "1"})
    assert not validation_mirroring({"NNUNET_POOLSKIP_VAL_MIRRORING": "0"})
    for bad in ("2", "no"):
        with pytest.raises(ValueError, match="NNUNET_POOLSKIP_VAL_MIRRORING must be an integer from 0 to 1"):
            validation_mirroring({"NNUNET_POOLSKIP_VAL_MIRRORING": bad})


@pytest.mark.parametrize("mirrored", [True, False])
def test_final_validation_mirrors_unless_switched_off_and_keeps_the_axes(monkeypatch, mirrored):
    """NNUNET_POOLSKIP_VAL_MIRRORING=0: nnU-Net's validation sees no mirroring axes (its predictor then runs each
    window once); afterwards the trainer has its axes back, also when the validation fails."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_poolskip.training.base import nnUNetTrainerBaseline

    seen = []

    def fake_validation(self, save_probabilities=False):
        seen.append(self.inference_allowed_mirroring_axes)
        raise RuntimeError("export failed")

    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", fake_validation)
    trainer = object.__new__(nnUNetTrainerBaseline)  # no plans needed: only the override runs
    trainer.mirrored_validation, trainer.inference_allowed_mirroring_axes = mirrored, (0, 1, 2)
    trainer.cpu_autocast, trainer.device = "off", torch.device("cpu")
    logged = []
    trainer.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
    with pytest.raises(RuntimeError, match="export failed"):
        trainer.perform_actual_validation()
    assert seen == [(0, 1, 2) if mirrored else None]
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)
    assert (logged == []) == mirrored


def test_missing_ext_trainer_gives_the_env_command(monkeypatch):
    from nnunet_poolskip.training.discovery import find_trainer_class

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match=r'eval "\$\(nnunet-poolskip env\)"'):
        find_trainer_class("nnUNetTrainerPoolSkip")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    line = run_cli(["nnunet-poolskip", "env"], env).stdout.strip()
    monkeypatch.setenv("nnUNet_extTrainer", line.split("=", 1)[1].strip("'"))
    assert find_trainer_class("nnUNetTrainerPoolSkipS4").pool_skip_size == 4


def test_wheel_install_discovers_trainers(tmp_path, toy_workspace):
    """A non-editable wheel in a fresh venv carries what `env` points to, and nnU-Net finds the trainer there."""
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(repo)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("nnunet_poolskip-*.whl"))
    # every module and data file of the package is in the wheel (a subpackage missing from pyproject's
    # package list would only fail on a user's machine)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = repo / "nnunet_poolskip"
    expected = {f"nnunet_poolskip/{p.relative_to(package).as_posix()}" for pattern in ("*.py", "*.json")
                for p in package.rglob(pattern)}
    assert expected - shipped == set()
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    site = next(target.glob("lib/python*/site-packages"))
    # dependencies come from this venv's site-packages, added as a plain path: its .pth files (our
    # editable install among them) are not processed, so only the wheel provides nnunet_poolskip
    deps = Path(torch.__file__).resolve().parents[1]
    (site / "deps.pth").write_text(str(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    python = str(target / "bin" / "python")
    env = {k: v for k, v in toy_workspace.env.items() if k != "nnUNet_extTrainer"}
    line = run_cli([str(target / "bin" / "nnunet-poolskip"), "env"], env, cwd=tmp_path).stdout.strip()
    ext = line.split("=", 1)[1].strip("'")
    assert Path(ext).is_relative_to(site) and (Path(ext) / "nnunet_poolskip_trainers.py").is_file()
    env["nnUNet_extTrainer"] = ext
    toy_workspace.train("nnUNetTrainerPoolSkip", 0)
    out = tmp_path / "pred"
    predict = "import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point as p; p()"
    run_cli([python, "-c", predict, "-i", str(toy_workspace.raw / "imagesTs"),
             "-o", str(out), "-d", str(toy_workspace.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr",
             "nnUNetTrainerPoolSkip", "-p", toy_workspace.plans, "-device", "cpu", "--disable_tta", "-npp", "1",
             "-nps", "1"], env, cwd=tmp_path)
    assert len(list(out.glob("*.nii.gz"))) == len(list((toy_workspace.raw / "imagesTs").glob("*.nii.gz")))
    probe = subprocess.run([python, "-c", "import nnunet_poolskip; print(nnunet_poolskip.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(site)
