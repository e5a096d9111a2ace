"""Parameters and FLOPs per patch of nnU-Net, nnU-Net + Pool Skip, the ResEnc presets and Pool Skip on them, at
BTCV's plans, and which of them match in compute (+-15 % FLOPs per patch). Exact counts; no GPU, no data needed.

The plans are made by nnU-Net's own planners (``ExperimentPlanner``, ``nnUNetPlannerResEncM``,
``nnUNetPlannerResEncL``) from a data set fingerprint with BTCV's geometry: 30 CTs, 13 organs, median spacing 3.0 x
0.76 x 0.76 mm (z, y, x) and median shape 147 x 512 x 512 voxels (``--spacing``, ``--shape``); the raw data set holds
only 2x2x2-voxel stand-in images, which the planners do not read beyond the reader choice. The networks are built by
this project's trainers from those plans (``build_network_architecture``, deep supervision off, as at inference) on
PyTorch's meta device and counted with ``nnunet_poolskip.nn.cost`` (FlopCounterMode: convolutions and matrix
products, one multiply-add = 2 FLOPs; one forward pass of one patch, batch 1).

    python benchmarks/model_costs.py                 # BTCV geometry, a Markdown table
    python benchmarks/model_costs.py --json costs.json --plans-dir plans_out/
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BTCV_LABELS = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
               "left adrenal gland"]
DATASET = "Dataset017_BTCV"
PLANNERS = {"nnUNetPlans": "ExperimentPlanner", "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
            "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL"}
# (model name as in --models, plans, trainer)
MODELS = [("nnunet", "nnUNetPlans", "nnUNetTrainerBaseline"),
          ("nnunet_poolskip", "nnUNetPlans", "nnUNetTrainerPoolSkip"),
          ("ablation_conv_skip", "nnUNetPlans", "nnUNetTrainerAblationConvSkip"),
          ("nnunet_resenc_m", "nnUNetResEncUNetMPlans", "nnUNetTrainerBaseline"),
          ("nnunet_resenc_m_poolskip", "nnUNetResEncUNetMPlans", "nnUNetTrainerPoolSkip"),
          ("nnunet_resenc_l", "nnUNetResEncUNetLPlans", "nnUNetTrainerBaseline"),
          ("nnunet_resenc_l_poolskip", "nnUNetResEncUNetLPlans", "nnUNetTrainerPoolSkip")]


def write_stand_in_dataset(root: Path, spacing, shape, cases: int) -> None:
    """nnUNet_raw/Dataset017_BTCV with tiny stand-in images and nnUNet_preprocessed/.../dataset_fingerprint.json with
    BTCV's geometry (what the planners read)."""
    import numpy as np
    import SimpleITK as sitk

    raw = root / "nnUNet_raw" / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for i in range(cases):
        image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32))
        image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
        sitk.WriteImage(image, str(raw / "imagesTr" / f"img{i + 1:04d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(raw / "labelsTr" / f"img{i + 1:04d}.nii.gz"))
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(BTCV_LABELS)}}
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                  "numTraining": cases, "file_ending": ".nii.gz"}))
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    preprocessed.mkdir(parents=True)
    intensities = {"0": {"max": 3071.0, "mean": 99.5, "median": 105.0, "min": -1024.0, "percentile_00_5": -958.0,
                         "percentile_99_5": 276.0, "std": 138.0}}  # only CT normalisation reads these
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(map(float, spacing))] * cases, "shapes_after_crop": [list(map(int, shape))] * cases,
        "foreground_intensity_properties_per_channel": intensities, "median_relative_size_after_cropping": 1.0}))


def plan_all(root: Path) -> dict:
    """Run nnU-Net's three planners; plans identifier -> plans dict."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
        nnUNetPlannerResEncL,
        nnUNetPlannerResEncM,
    )

    classes = {"ExperimentPlanner": ExperimentPlanner, "nnUNetPlannerResEncM": nnUNetPlannerResEncM,
               "nnUNetPlannerResEncL": nnUNetPlannerResEncL}
    plans = {}
    for identifier, planner in PLANNERS.items():
        with open(os.devnull, "w") as quiet:  # the planners print every configuration
            stdout, sys.stdout = sys.stdout, quiet
            try:
                classes[planner](DATASET).plan_experiment()
            finally:
                sys.stdout = stdout
        plans[identifier] = json.loads((root / "nnUNet_preprocessed" / DATASET / f"{identifier}.json").read_text())
    return plans


def count(plans: dict, trainer: str, dataset_json: dict) -> dict:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_poolskip.nn.cost import count_costs
    from nnunet_poolskip.training import TRAINERS

    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    inputs = determine_num_input_channels(manager, configuration, dataset_json)
    outputs = manager.get_label_manager(dataset_json).num_segmentation_heads
    cls = TRAINERS[trainer]
    patch = list(configuration.patch_size)
    counted = count_costs(lambda: cls.build_network_architecture(manager, configuration, inputs, outputs,
                                                                 enable_deep_supervision=False), (1, inputs, *patch))
    return {**counted, "patch_size": patch, "batch_size": configuration.batch_size,
            "network": configuration.network_arch_class_name.rsplit(".", 1)[-1],
            "features_per_stage": configuration.network_arch_init_kwargs["features_per_stage"],
            "blocks_per_stage": configuration.network_arch_init_kwargs.get(
                "n_blocks_per_stage", configuration.network_arch_init_kwargs.get("n_conv_per_stage"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacing", type=float, nargs=3, default=[3.0, 0.76, 0.76], metavar=("Z", "Y", "X"),
                        help="median spacing in mm (default BTCV's 3.0 0.76 0.76)")
    parser.add_argument("--shape", type=int, nargs=3, default=[147, 512, 512], metavar=("Z", "Y", "X"),
                        help="median image shape in voxels (default 147 512 512)")
    parser.add_argument("--cases", type=int, default=30, help="training cases (default 30, BTCV)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--plans-dir", type=Path, help="copy the three plans files here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[name] = str(root / name)  # before nnunetv2.paths is imported
        write_stand_in_dataset(root, args.spacing, args.shape, args.cases)
        all_plans = plan_all(root)
        dataset_json = json.loads((root / "nnUNet_raw" / DATASET / "dataset.json").read_text())
        if args.plans_dir:
            args.plans_dir.mkdir(parents=True, exist_ok=True)
            for identifier, plans in all_plans.items():
                (args.plans_dir / f"{identifier}.json").write_text(json.dumps(plans, indent=1))
        results = {name: {"plans": plans, "trainer": trainer, **count(all_plans[plans], trainer, dataset_json)}
                   for name, plans, trainer in MODELS}

    from nnunet_poolskip.benchmark.costs import COMPUTE_MATCH_TOLERANCE, ModelCost, compute_matched
    from nnunet_poolskip.benchmark.protocol import resolve_model

    models = [resolve_model(name) for name, _, _ in MODELS]
    costs = {name: ModelCost(model=name, plans=r["plans"], patch_size=r["patch_size"], parameters=r["parameters"],
                             gflops_per_patch=r["forward_flops"] / 1e9, median_epoch_s=None, peak_memory_mib=None,
                             memory_kind="", training_s=None, training_gpu_h=None, n_runs=0, n_epochs_logged=0,
                             flops_counted_on=r["counted_on"]) for name, r in results.items()}
    matched = compute_matched(models, costs)
    reference = results["nnunet"]
    print(f"BTCV geometry: median spacing {' x '.join(map(str, args.spacing))} mm, median shape "
          f"{' x '.join(map(str, args.shape))} voxels, {args.cases} cases, 14 output channels; nnU-Net's planners, "
          f"3d_fullres; one forward pass of one patch (batch 1), counted on the {reference['counted_on']} device\n")
    print("| model | plans (network) | patch | batch | features | blocks per encoder stage | parameters | GFLOPs / "
          "patch | vs nnU-Net params | vs nnU-Net FLOPs |")
    print("|---|---|---|---:|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| `{name}` | `{r['plans']}` ({r['network']}) | {'x'.join(map(str, r['patch_size']))} | "
              f"{r['batch_size']} | {r['features_per_stage'][0]}-{max(r['features_per_stage'])} | "
              f"{','.join(map(str, r['blocks_per_stage']))} | {r['parameters']:,} | {r['forward_flops'] / 1e9:,.1f} | "
              f"x{r['parameters'] / reference['parameters']:.3f} | "
              f"x{r['forward_flops'] / reference['forward_flops']:.3f} |")
    print(f"\nCompute-matched (+-{COMPUTE_MATCH_TOLERANCE:.0%} FLOPs per patch) controls of each Pool Skip model:")
    for model in models:
        if model.base is None or model.name == "ablation_conv_skip":
            continue
        found = [f"{c.name} ({d:+.1%})" for c, m, d in matched if m.name == model.name]
        print(f"- {model.name}: " + (", ".join(found) if found else "none"))
    if args.json:
        args.json.write_text(json.dumps({"spacing_mm": args.spacing, "median_shape": args.shape, "cases": args.cases,
                                         "models": results,
                                         "compute_matched": [{"model": m.name, "control": c.name,
                                                              "flops_difference": d} for c, m, d in matched]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
