"""Derive new nnU-Net plans from planned ones with a preset (plans are data: presets live in ``plans/``).

A preset is a JSON object with the keys
    plans_suffix        appended to the source plans identifier to name the new plans
    features_base       features of stage 0; stage s gets min(features_base * 2**s, features_max)
    features_max
    max_patch_size_3d   per-axis cap (voxels) on 3D patch sizes
    max_patch_size_2d   per-axis cap (voxels) on 2D patch sizes
    batch_size
and optionally
    vnet_features_base  V-Net stem width copied into every configuration (MONAI's V-Net: 16; see
                        nnunet_poolskip.training.vnet); without it V-Net trainers use full width
Everything else (stages, kernels, strides, spacing, normalisation, ``data_identifier``) is kept, so the
already preprocessed data serves the new plans without preprocessing again. Capped patch sizes are
rounded down to a multiple of the network's total stride on that axis (never below one such multiple),
which is what the U-Net needs.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from nnunet_poolskip.utilities.atomic import write_json_atomic

PRESET_KEYS = ("plans_suffix", "features_base", "features_max", "max_patch_size_3d", "max_patch_size_2d",
               "batch_size")


def presets_folder() -> Path:
    """The folder with the shipped presets (``plans/`` in a checkout, installed as a package in a wheel)."""
    import nnunet_poolskip.plans_presets as presets

    return Path(presets.__file__).resolve().parent


def load_preset(preset: Union[str, os.PathLike]) -> Dict:
    """A shipped preset by name (``cpu_small``) or a preset JSON file by path; checks its keys."""
    path = Path(preset)
    if not path.suffix:
        path = presets_folder() / f"{preset}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in presets_folder().glob("*.json"))
        raise FileNotFoundError(f"plans preset {str(preset)!r} not found (shipped presets: {shipped}, "
                                f"or give a path to a JSON file)")
    data = json.loads(path.read_text())
    missing = [k for k in PRESET_KEYS if k not in data]
    if missing:
        raise ValueError(f"plans preset {path} lacks the keys {missing}")
    return data


def _capped_patch(patch: List[int], strides: List[List[int]], cap: List[int]) -> List[int]:
    total_stride = np.prod(np.array(strides), axis=0)
    out = []
    for size, limit, step in zip(patch, cap, total_stride):
        size = min(int(size), int(limit))
        out.append(int(max(step, size // step * step)))
    return out


def derive_plans(plans: Dict, preset: Dict) -> Dict:
    """A copy of ``plans`` transformed by ``preset`` (see the module docstring) under a new plans name."""
    new = copy.deepcopy(plans)
    new["plans_name"] = plans["plans_name"] + preset["plans_suffix"]
    for configuration in new["configurations"].values():
        architecture = configuration.get("architecture")
        if architecture is None:  # configurations that only inherit
            continue
        kwargs = architecture["arch_kwargs"]
        kwargs["features_per_stage"] = [min(preset["features_base"] * 2 ** s, preset["features_max"])
                                        for s in range(kwargs["n_stages"])]
        patch = configuration["patch_size"]
        cap = preset["max_patch_size_3d"] if len(patch) == 3 else preset["max_patch_size_2d"]
        configuration["patch_size"] = _capped_patch(patch, kwargs["strides"], cap)
        configuration["batch_size"] = preset["batch_size"]
        if "vnet_features_base" in preset:
            configuration["vnet_features_base"] = preset["vnet_features_base"]
    return new


def derive_plans_file(preprocessed_dataset_folder: Union[str, os.PathLike], source_plans: str = "nnUNetPlans",
                      preset: Union[str, os.PathLike] = "cpu_small") -> str:
    """Write ``<source_plans><suffix>.json`` next to the source plans and return the new plans identifier."""
    folder = Path(preprocessed_dataset_folder)
    source = folder / f"{source_plans}.json"
    if not source.is_file():
        raise FileNotFoundError(f"plans file {source} not found; run nnUNetv2_plan_and_preprocess first "
                                f"(or name existing plans with -p)")
    new = derive_plans(json.loads(source.read_text()), load_preset(preset))
    write_json_atomic(new, folder / f"{new['plans_name']}.json")
    return new["plans_name"]
