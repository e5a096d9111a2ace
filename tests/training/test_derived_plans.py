"""The shipped plans presets applied to plans as nnU-Net 2.8.1 writes them for the demo's phantoms."""
from __future__ import annotations

import copy

import pytest

from nnunet_poolskip.training.derived_plans import derive_plans, load_preset

# nnUNetv2_plan_and_preprocess's 3d_fullres plan for the demo's phantoms at the 32x48x48 grid (trimmed to the keys
# derive_plans reads and writes): the planner's patch covers the whole image.
PHANTOM_PLANS = {
    "plans_name": "nnUNetPlans",
    "configurations": {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [40, 56, 56],
            "median_image_size_in_voxels": [34.0, 50.0, 50.0], "spacing": [8.2, 6.35, 6.35],
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                                             "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]}},
        },
        "3d_lowres": {"inherits_from": "3d_fullres"},
    },
}


def test_demo_preset_gives_patches_smaller_than_the_phantoms_and_16_features():
    plans = derive_plans(copy.deepcopy(PHANTOM_PLANS), load_preset("cpu_demo"))
    conf = plans["configurations"]["3d_fullres"]
    assert plans["plans_name"] == "nnUNetPlansDemo"
    assert conf["patch_size"] == [16, 32, 32] and conf["batch_size"] == 2 and conf["vnet_features_base"] == 4
    assert conf["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 64]
    # the point of the preset: a patch well inside the image, so that nnU-Net's foreground oversampling (one of
    # the two samples of a batch centred on a randomly chosen organ) changes what the network sees
    assert all(p < 0.7 * m for p, m in zip(conf["patch_size"], conf["median_image_size_in_voxels"]))
    assert plans["configurations"]["3d_lowres"] == {"inherits_from": "3d_fullres"}


def test_tests_preset_is_unchanged_and_covers_the_whole_phantom():
    plans = derive_plans(copy.deepcopy(PHANTOM_PLANS), load_preset("cpu_small"))
    conf = plans["configurations"]["3d_fullres"]
    assert plans["plans_name"] == "nnUNetPlansCPU"
    assert conf["patch_size"] == [32, 56, 56]  # capped at 32x64x64, multiples of the total stride 8
    assert conf["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 32]


def test_unknown_preset_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="cpu_demo"):
        load_preset("cpu_tiny")
