"""NNUNET_POOLSKIP_SEED: validated, logged, and on the CPU the same seed gives the same run through nnU-Net's real
``nnUNetv2_train``, also when the run is interrupted and continued with ``--c``; another seed gives another run."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, short_schedule_env

from nnunet_poolskip.training.base import epoch_seed
from nnunet_poolskip.training.schedule import MAX_SEED, SEED_VARIABLE, seed_from_environment

TRAINER = "nnUNetTrainerPoolSkip"  # Pool Skip's max-pool / unpool path included


def test_seed_variable_is_validated():
    assert seed_from_environment({}) is None and seed_from_environment({SEED_VARIABLE: " "}) is None
    assert seed_from_environment({SEED_VARIABLE: "42"}) == 42
    for bad in ("-1", "1.5", "seven", str(MAX_SEED + 1)):
        with pytest.raises(ValueError, match=SEED_VARIABLE):
            seed_from_environment({SEED_VARIABLE: bad})


def test_epoch_seeds_differ_between_epochs_ranks_and_seeds():
    assert epoch_seed(5, None) == 5
    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in (None, 0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2 ** 32 for s in seeds)
    assert epoch_seed(3, 4, 1) == epoch_seed(3, 4, 1)


def train(workspace, results: Path, seed: int, epochs: int, extra=()) -> Path:
    """One short CPU training of fold 0 into its own nnUNet_results; returns the fold folder."""
    env = {**workspace.env, **short_schedule_env(epochs, 2, 1), "nnUNet_results": str(results),
           SEED_VARIABLE: str(seed)}
    run_cli(["nnUNetv2_train", str(workspace.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-p", workspace.plans,
             "-device", "cpu", *extra], env, timeout=600)
    return results / workspace.dataset_name / f"{TRAINER}__{workspace.plans}__3d_fullres" / "fold_0"


def load(fold: Path) -> dict:
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def same_weights(a: dict, b: dict) -> bool:
    wa, wb = a["network_weights"], b["network_weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.integration
def test_same_seed_same_run_on_the_cpu_also_when_continued(toy_workspace, tmp_path):
    # A: seed 7, 1 epoch, then continued with --c to 2 epochs; B: seed 7, 2 epochs in one go; C: seed 8, 1 epoch
    fold_a = train(toy_workspace, tmp_path / "a", seed=7, epochs=1)
    after_one_epoch = load(fold_a)
    shutil.copytree(fold_a, tmp_path / "a_after_epoch_0")
    train(toy_workspace, tmp_path / "a", seed=7, epochs=2, extra=["--c"])
    fold_b = train(toy_workspace, tmp_path / "b", seed=7, epochs=2)
    fold_c = train(toy_workspace, tmp_path / "c", seed=8, epochs=1)

    a, b, c = load(fold_a), load(fold_b), load(fold_c)
    assert a["current_epoch"] == b["current_epoch"] == 2
    assert same_weights(a, b)
    assert a["logging"]["train_losses"] == b["logging"]["train_losses"]
    assert a["logging"]["val_losses"] == b["logging"]["val_losses"]
    assert after_one_epoch["logging"]["train_losses"][0] == b["logging"]["train_losses"][0]
    assert not same_weights(after_one_epoch, c)
    assert c["logging"]["train_losses"][0] != b["logging"]["train_losses"][0]
    # every weight moved in training, so "identical" above is not two untrained copies
    assert not same_weights(after_one_epoch, a)
    assert all(np.isfinite(v) for v in a["logging"]["train_losses"])

    # the seed is in nnU-Net's training log of every run
    for fold, seed in ((tmp_path / "a_after_epoch_0", 7), (fold_b, 7), (fold_c, 8)):
        logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        assert re.search(rf"{SEED_VARIABLE}={seed}: Python random, NumPy and torch seeded", logs), fold
