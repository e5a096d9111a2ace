"""What each model costs: parameters and FLOPs counted against independent counts made here, the timing and memory
figures read from a run's files, the compute-matched controls, and the checks on plans made for something else."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_poolskip.benchmark.config import BenchmarkError
from nnunet_poolskip.benchmark.costs import (
    ModelCost,
    add_baseline_ratios,
    compute_matched,
    cost_section,
    csv_columns,
    network_costs,
    run_costs,
)
from nnunet_poolskip.benchmark.model_plans import check_planned
from nnunet_poolskip.benchmark.protocol import MODELS, parse_models
from nnunet_poolskip.benchmark.training_runs import planned_runs
from nnunet_poolskip.nn.cost import count_costs, forward_flops, parameter_count
from nnunet_poolskip.training.resources import RESOURCES_FILENAME

CONV = "torch.nn.modules.conv.Conv3d"
NORM = "torch.nn.modules.instancenorm.InstanceNorm3d"


def tiny_plans(network: str = "PlainConvUNet", planner: str = "ExperimentPlanner") -> dict:
    """nnU-Net 2.8.1-style plans with one tiny 3d_fullres network (3 stages, 4-16 features, patch 8x16x16)."""
    kwargs = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": CONV,
              "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
              "n_conv_per_stage_decoder": [1, 1], "conv_bias": True, "norm_op": NORM,
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if network == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = [2, 2, 2]
    else:
        kwargs["n_blocks_per_stage"] = [1, 2, 3]
    return {
        "dataset_name": "Dataset901_Toy", "plans_name": "nnUNetPlans", "experiment_planner_used": planner,
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0], "original_median_shape_after_transp": [20, 32, 36],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [8, 16, 16], "median_image_size_in_voxels": [20, 32, 36],
            "spacing": [2.0, 1.0, 1.0], "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
            "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
            "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{network}",
                             "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                            "nonlin"]}}}}


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "big": 1, "small": 2}, "numTraining": 6,
                "file_ending": ".nii.gz"}


def write_model_folder(folder: Path, plans: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return folder


def conv_flops_by_hooks(network: nn.Module, shape) -> int:
    """A second counter: 2 x output elements x input channels per group x kernel volume of every convolution
    (transposed: 2 x input elements x output channels per group x kernel volume), from forward hooks on the CPU."""
    total = [0]

    def hook(module, inputs, output):
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose3d):
            total[0] += 2 * inputs[0].numel() * module.out_channels // module.groups * kernel
        else:
            total[0] += 2 * output.numel() * module.in_channels // module.groups * kernel

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, (nn.Conv3d,
                                                                                            nn.ConvTranspose3d))]
    network.eval()
    with torch.no_grad():
        network(torch.zeros(shape))
    for handle in handles:
        handle.remove()
    return total[0]


# ------------------------------------------------------------------------------------------ counting
def test_forward_flops_of_a_tiny_conv_network_match_a_count_by_hand():
    network = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    shape = (1, 1, 4, 6, 8)
    voxels = 4 * 6 * 8
    by_hand = 2 * (4 * voxels) * (1 * 27) + 2 * (2 * voxels) * (4 * 1)  # multiply-adds x 2, biases not counted
    assert forward_flops(network, shape) == by_hand
    assert parameter_count(network) == (4 * 27 + 4) + (2 * 4 + 2)
    counted = count_costs(lambda: nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1)), shape)
    assert counted == {"parameters": 4 * 27 + 4 + 2 * 4 + 2, "forward_flops": by_hand, "counted_on": "meta"}


@pytest.mark.parametrize("network, trainer", [("PlainConvUNet", "nnUNetTrainerBaseline"),
                                              ("PlainConvUNet", "nnUNetTrainerPoolSkip"),
                                              ("ResidualEncoderUNet", "nnUNetTrainerBaseline"),
                                              ("ResidualEncoderUNet", "nnUNetTrainerPoolSkip")])
def test_network_costs_of_a_model_folder_match_an_independent_count(tmp_path, network, trainer):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_poolskip.training import TRAINERS

    plans = tiny_plans(network)
    folder = write_model_folder(tmp_path / f"{trainer}__nnUNetPlans__3d_fullres", plans)
    counted = network_costs(folder, trainer)
    # the same network built here on the CPU, counted by summing numel and by forward hooks on the convs
    manager = PlansManager(copy.deepcopy(plans))
    built = TRAINERS[trainer].build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 3,
                                                         enable_deep_supervision=False)
    assert counted["parameters"] == sum(p.numel() for p in built.parameters())
    assert counted["forward_flops"] == conv_flops_by_hooks(built, (1, 1, 8, 16, 16))
    assert counted["patch_size"] == [8, 16, 16] and counted["counted_on"] == "meta"
    assert (counted["input_channels"], counted["output_channels"]) == (1, 3)


def test_network_costs_name_a_folder_without_plans(tmp_path):
    with pytest.raises(FileNotFoundError, match="plans.json not found"):
        network_costs(tmp_path, "nnUNetTrainerBaseline")


# ------------------------------------------------------------------------------------------ a run's figures
LOG = """2026-01-01 10:00:00.000000: Epoch 0
2026-01-01 10:00:00.000001: train_loss 0.5
2026-01-01 10:00:00.000002: Epoch time: {a} s
2026-01-01 10:00:00.000003: Epoch 1
2026-01-01 10:00:00.000004: train_loss 0.4
2026-01-01 10:00:00.000005: Epoch time: {b} s
"""


def test_run_costs_read_every_log_and_the_recorded_peaks(tmp_path):
    model = MODELS["nnunet"]
    folder = write_model_folder(tmp_path / "nnUNetTrainerBaseline__nnUNetPlans__3d_fullres", tiny_plans())
    folds = []
    for fold, (a, b, rss, cuda) in enumerate([(2.0, 4.0, 900.0, 300.0), (3.0, 10.0, 1200.5, 250.0)]):
        f = folder / f"fold_{fold}"
        f.mkdir()
        (f / "training_log_2026_1_1_10_00_00.txt").write_text(LOG.format(a=a, b=b))
        (f / RESOURCES_FILENAME).write_text(json.dumps({"peak_rss_mib": rss, "peak_cuda_allocated_mib": cuda}))
        folds.append(f)
    # a resumed run's second log counts too: its epochs were computed again
    (folds[1] / "training_log_2026_1_1_11_00_00.txt").write_text(LOG.format(a=5.0, b=6.0))
    cpu = run_costs(model, "nnUNetPlans", folder, "nnUNetTrainerBaseline", folds, "cpu")
    epochs = [2.0, 4.0, 3.0, 10.0, 5.0, 6.0]
    assert cpu.median_epoch_s == pytest.approx(4.5) and cpu.training_s == pytest.approx(sum(epochs))
    assert cpu.peak_memory_mib == 1200.5 and cpu.training_gpu_h is None and cpu.n_epochs_logged == 6
    gpu = run_costs(model, "nnUNetPlans", folder, "nnUNetTrainerBaseline", folds, "cuda", gpus_per_training=2)
    assert gpu.peak_memory_mib == 300.0 and gpu.memory_kind == "CUDA peak allocated"
    assert gpu.training_gpu_h == pytest.approx(sum(epochs) * 2 / 3600)
    # a fold without records (the stock trainer): no memory figure rather than a wrong one
    (folds[0] / RESOURCES_FILENAME).unlink()
    (folds[1] / RESOURCES_FILENAME).unlink()
    assert run_costs(model, "nnUNetPlans", folder, "nnUNetTrainerBaseline", folds, "cpu").peak_memory_mib is None


def fake_cost(name: str, gflops: float, parameters: int = 1000, epoch: float = 10.0) -> ModelCost:
    return ModelCost(model=name, plans="p", patch_size=[8, 16, 16], parameters=parameters, gflops_per_patch=gflops,
                     median_epoch_s=epoch, peak_memory_mib=100.0, memory_kind="peak RSS of the training process",
                     training_s=3600.0, training_gpu_h=None, n_runs=1, n_epochs_logged=2, flops_counted_on="meta")


def test_compute_matched_controls_and_ratios_to_the_own_baseline():
    models = parse_models("nnunet,nnunet_poolskip,nnunet_resenc_m,nnunet_resenc_l,ablation_conv_skip,"
                          "nnunet_resenc_m_poolskip")
    costs = {"nnunet": fake_cost("nnunet", 100.0, 30_710_000, 10.0),
             "nnunet_poolskip": fake_cost("nnunet_poolskip", 158.0, 46_467_230, 14.0),
             "nnunet_resenc_m": fake_cost("nnunet_resenc_m", 140.0),  # -11.4 %: matched
             "nnunet_resenc_l": fake_cost("nnunet_resenc_l", 400.0),
             "ablation_conv_skip": fake_cost("ablation_conv_skip", 182.0),  # +15.2 %: just outside
             "nnunet_resenc_m_poolskip": fake_cost("nnunet_resenc_m_poolskip", 200.0)}
    add_baseline_ratios(costs, models)
    ratios = costs["nnunet_poolskip"].ratio_to_baseline
    assert ratios["parameters"] == pytest.approx(46_467_230 / 30_710_000)
    assert ratios["gflops_per_patch"] == pytest.approx(1.58)
    assert ratios["median_epoch_s"] == pytest.approx(1.4) and costs["nnunet_poolskip"].baseline == "nnunet"
    assert costs["nnunet"].ratio_to_baseline == {} and costs["ablation_conv_skip"].ratio_to_baseline == {}
    matched = compute_matched(models, costs)
    assert [(c.name, m.name, round(d, 4)) for c, m, d in matched] == [
        ("nnunet_resenc_m", "nnunet_poolskip", round(140 / 158 - 1, 4)),
        # ResEnc M + Pool Skip: nnU-Net (-50 %) and ResEnc L (+100 %) are far; the conv-skip ablation is -9 %
        ("ablation_conv_skip", "nnunet_resenc_m_poolskip", round(182 / 200 - 1, 4))]
    columns = csv_columns(models, costs, matched)
    assert columns["compute_matched_controls"]["nnunet_poolskip"] == "nnunet_resenc_m"
    assert columns["parameters"]["nnunet"] == "30710000" and columns["gflops_per_patch_ratio_to_baseline"][
        "nnunet_poolskip"] == "1.5800"
    text = "\n".join(cost_section(models, costs, "cpu"))
    assert "| nnU-Net + Pool Skip |" in text and "158.00 (x1.58)" in text and "46.467 (x1.51)" in text
    assert "| nnU-Net | `p` 8x16x16 | 30.710 | 100.00 | 10.0 | 100 | 1.000 |" in text


# ------------------------------------------------------------------------------------------ models with own plans
def test_resenc_models_have_their_own_plans_and_runs():
    models = parse_models("nnunet,nnunet_resenc_m,nnunet_resenc_m_poolskip,nnunet_poolskip")
    assert [m.plans for m in models] == ["nnUNetPlans", "nnUNetResEncUNetMPlans", "nnUNetResEncUNetMPlans",
                                         "nnUNetPlans"]
    assert MODELS["nnunet_resenc_l"].planner == "nnUNetPlannerResEncL"
    assert MODELS["nnunet_resenc_m_poolskip"].base == "nnunet_resenc_m"
    # nnunet and nnunet_resenc_m share a trainer but not their plans: both are trained
    runs = planned_runs(models, "btcv", [0], [None])
    assert [(m.name, t) for m, t, _, _ in runs] == [
        ("nnunet", "nnUNetTrainerBaseline"), ("nnunet_resenc_m", "nnUNetTrainerBaseline"),
        ("nnunet_resenc_m_poolskip", "nnUNetTrainerPoolSkip"), ("nnunet_poolskip", "nnUNetTrainerPoolSkip")]


def test_plans_of_another_planner_or_data_set_are_refused(tmp_path):
    folder = tmp_path / "Dataset901_Toy"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(tiny_plans()))
    prep = SimpleNamespace(preprocessed_folder=lambda: folder)
    resenc = folder / "nnUNetResEncUNetMPlans.json"
    resenc.write_text(json.dumps(tiny_plans("ResidualEncoderUNet", "nnUNetPlannerResEncM")))
    check_planned(prep, resenc, "nnUNetPlannerResEncM", ["nnunet_resenc_m"])  # as planned: accepted
    with pytest.raises(BenchmarkError, match=r"model\(s\) nnunet_resenc_l \(plans nnUNetResEncUNetMPlans\).*"
                                             r"written by 'nnUNetPlannerResEncM', not by nnUNetPlannerResEncL"):
        check_planned(prep, resenc, "nnUNetPlannerResEncL", ["nnunet_resenc_l"])
    other = tiny_plans("ResidualEncoderUNet", "nnUNetPlannerResEncM")
    other["original_median_spacing_after_transp"] = [3.0, 0.8, 0.8]
    resenc.write_text(json.dumps(other))
    with pytest.raises(BenchmarkError, match="planned from another data set fingerprint"):
        check_planned(prep, resenc, "nnUNetPlannerResEncM", ["nnunet_resenc_m"])


def test_trainer_resource_record_keeps_the_larger_peak_unless_fresh(tmp_path):
    from nnunet_poolskip.training.resources import read_resources, record_resources

    (tmp_path / RESOURCES_FILENAME).write_text(json.dumps({"peak_rss_mib": 1e9, "peak_cuda_allocated_mib": None}))
    kept = record_resources(tmp_path, torch.device("cpu"), fresh=False)
    assert kept["peak_rss_mib"] == 1e9 and read_resources(tmp_path) == kept  # a resumed run: the earlier peak stays
    fresh = record_resources(tmp_path, torch.device("cpu"), fresh=True)
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert fresh["peak_rss_mib"] == pytest.approx(own, abs=64) and fresh["device"] == "cpu"
    assert fresh["peak_cuda_allocated_mib"] is None


def test_slurm_tasks_of_resenc_models_use_their_own_plans(tmp_path):
    import re
    import subprocess

    from nnunet_poolskip.cli import main

    folder = tmp_path / "slurm"
    assert main(["benchmark", "--profile", "demo", "--models", "nnunet,nnunet_resenc_m,nnunet_resenc_m_poolskip",
                 "--folds", "0", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "results"),
                 "--emit", "slurm", str(folder)]) == 0
    script = (folder / "train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(folder / "train.sbatch")]).returncode == 0
    tasks = re.findall(r"^\s*(\d+)\) MODEL=(\w+); TRAINER=(\w+); FOLD=(\d+)(?:; PLANS=(\w+))? ;;$", script, re.M)
    assert tasks == [("0", "nnunet", "nnUNetTrainerBaseline", "0", ""),
                     ("1", "nnunet_resenc_m", "nnUNetTrainerBaseline", "0", "nnUNetResEncUNetMPlansDemo"),
                     ("2", "nnunet_resenc_m_poolskip", "nnUNetTrainerPoolSkip", "0", "nnUNetResEncUNetMPlansDemo")]
    assert "PLANS=nnUNetPlansDemo  #" in script and '-p "$PLANS"' in script
    assert '"$TRAINER"__"$PLANS"__3d_fullres' in script


def test_a_failed_planning_names_the_models_and_plans(tmp_path):
    from nnunet_poolskip.benchmark.model_plans import ensure_planned
    from nnunet_poolskip.benchmark.steps import StepFailed

    class FailingSteps:
        record = SimpleNamespace(step=lambda step_id: {})

        def run(self, step_id, title, argv, purpose="other"):
            assert argv[1:] == ["-d", "17", "-pl", "nnUNetPlannerResEncM"] and step_id == "plan/nnUNetResEncUNetMPlans"
            raise StepFailed(f"{step_id} failed (exit code 1); see logs/plan.log")

    prep = SimpleNamespace(preprocessed_folder=lambda: tmp_path, steps=FailingSteps(),
                           config=SimpleNamespace(target=SimpleNamespace(dataset_id=17)))
    with pytest.raises(BenchmarkError, match=r"planning model\(s\) nnunet_resenc_m, nnunet_resenc_m_poolskip \(plans "
                                             r"nnUNetResEncUNetMPlans\) with nnUNetPlannerResEncM failed: .*logs/plan"):
        ensure_planned(prep, "nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM",
                       ["nnunet_resenc_m", "nnunet_resenc_m_poolskip"])
