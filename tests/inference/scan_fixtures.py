"""A demo-sized CT model for inference on real scans (the real scans themselves: ``real_scans`` in tests/conftest.py).

``phantom_ct_model``: nnU-Net with Pool Skip trained on BTCV-like CT phantoms (Hounsfield units, the 13 BTCV organs,
anisotropic spacing of about 7.5 x 7.5 x 11 mm), CPU plans, two folds of a short schedule: a model whose grid is
coarse enough that the real CT, its DICOM series and the MRI are predicted at their full size in seconds. It learns
little in that schedule; the tests check the pipeline (inputs, geometry, outputs), not accuracy.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest
from conftest import BIN, nnunet_env, run_cli, short_schedule_env

PHANTOM_ID = 923
PHANTOM_DATASET = f"Dataset{PHANTOM_ID}_PhantomCT"
PHANTOM_TRAINER = "nnUNetTrainerPoolSkip"
PHANTOM_SIZE = (24, 40, 40)  # nominal z, y, x voxels of the phantoms (their field of view is an abdomen's)
PHANTOM_CASES = 5


@dataclass
class PhantomModel:
    root: Path
    env: Dict[str, str]
    plans: str
    dataset: str = PHANTOM_DATASET
    trainer: str = PHANTOM_TRAINER

    @property
    def model_folder(self) -> Path:
        return self.root / "nnUNet_results" / self.dataset / f"{self.trainer}__{self.plans}__3d_fullres"

    def predict_args(self, *inputs, output: Path, extra=()) -> list:
        return ["predict", "-i", *map(str, inputs), "-o", str(output), "-d", self.dataset, "-c", "3d_fullres",
                "-tr", self.trainer, "-p", self.plans, "-f", "0", "1", "--device", "cpu", "--disable-tta", *extra]


def write_phantom_dataset(raw_root: Path) -> Path:
    """BTCV-like CT phantoms in nnU-Net's raw layout (imagesTr/labelsTr, dataset.json with the BTCV labels)."""
    from nnunet_poolskip.dataset_conversion.labels import label_table
    from nnunet_poolskip.dataset_conversion.phantoms import _write_case, synthesize_case

    folder = raw_root / PHANTOM_DATASET
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for number in range(1, PHANTOM_CASES + 1):
        case = synthesize_case("btcv", number, seed=3, size=PHANTOM_SIZE)
        _write_case(case, folder / "imagesTr" / f"phantom_{number:03d}_0000.nii.gz",
                    folder / "labelsTr" / f"phantom_{number:03d}.nii.gz")
    labels = {"background": 0, **{name: value for value, name in label_table("btcv").items()}}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                     "numTraining": PHANTOM_CASES, "file_ending": ".nii.gz"}))
    return folder


@pytest.fixture(scope="session")
def phantom_ct_model(tmp_path_factory) -> PhantomModel:
    """Folds 0 and 1 of a Pool Skip nnU-Net trained briefly on CT phantoms (trained concurrently, one per core)."""
    root = tmp_path_factory.mktemp("phantom_ct")
    env = nnunet_env(root)
    write_phantom_dataset(root / "nnUNet_raw")
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-np", "1"], env)
    run_cli(["nnunet-poolskip", "derive-plans", "-d", str(PHANTOM_ID)], env)
    env["nnUNet_n_proc_DA"] = "0"
    train_env = {**env, **short_schedule_env(epochs=1, iterations=6, val_iterations=1), "OMP_NUM_THREADS": "1",
                 "NNUNET_POOLSKIP_VAL_MIRRORING": "0"}
    commands = [[str(BIN / "nnUNetv2_train"), str(PHANTOM_ID), "3d_fullres", str(fold), "-tr", PHANTOM_TRAINER,
                 "-p", "nnUNetPlansCPU", "-device", "cpu"] for fold in (0, 1)]
    procs = [subprocess.Popen(c, env=train_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for command, proc, output in zip(commands, procs, outputs):
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {proc.returncode}\n{output[-6000:]}")
    return PhantomModel(root=root, env=env, plans="nnUNetPlansCPU")
