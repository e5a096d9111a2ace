"""``nnunet-poolskip benchmark``: model -> trainer mapping, profiles, fold states and resume commands, the
environment of each step, the SLURM scripts (syntax, commands, folds, trainers, and their resume logic run
against a stand-in nnUNetv2_train), and the scaled-down benchmark end to end through the real command
lines, killed with SIGKILL mid-training and resumed."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN
from toydata import write_toy_dataset

from nnunet_poolskip.benchmark.finish import Finish
from nnunet_poolskip.benchmark.profiles import resolve_settings
from nnunet_poolskip.benchmark.protocol import MODELS, PAPER_MODELS, parse_models, resolve_model
from nnunet_poolskip.benchmark.runinfo import RunRecord
from nnunet_poolskip.benchmark.steps import Steps
from nnunet_poolskip.benchmark.training_log import read_epochs
from nnunet_poolskip.benchmark.training_runs import (
    FoldState,
    checkpoint_readable,
    fold_state,
    planned_runs,
    set_aside_unreadable_checkpoints,
    train_command,
)
from nnunet_poolskip.benchmark.workspace import NNUNET_FOLDERS, Workspace, parse_dataset, step_environment
from nnunet_poolskip.cli import build_parser, main
from nnunet_poolskip.commands.benchmark import build_config
from nnunet_poolskip.dataset_conversion.amos import convert_amos
from nnunet_poolskip.dataset_conversion.phantoms import write_phantoms
from nnunet_poolskip.dataset_conversion.splits import shipped_split_file


def clean_env(**extra) -> dict:
    """This process's environment without nnU-Net / schedule variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ protocol
def test_every_model_maps_to_a_trainer_that_exists():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_poolskip.training import TRAINERS

    for model in MODELS.values():
        for kind in ("btcv", "amos", "custom"):
            trainer = model.trainer_for(kind)
            assert trainer in TRAINERS or trainer == nnUNetTrainer.__name__, (model.name, trainer)
    assert [MODELS[m].trainer_for("btcv") for m in PAPER_MODELS] == [
        "nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip", "nnUNetTrainerVNet", "nnUNetTrainerVNetPoolSkip"]
    # the paper: AMOS puts Pool Skip in all encoder stages but the last
    assert MODELS["nnunet_poolskip"].trainer_for("amos") == "nnUNetTrainerPoolSkipAMOS"
    assert MODELS["vnet_poolskip"].trainer_for("amos") == "nnUNetTrainerVNetPoolSkip"


def test_parse_models_accepts_commas_spaces_and_trainer_names_and_rejects_unknown_names():
    models = parse_models(["nnunet,nnunet_poolskip", "ablation_conv_skip", "nnUNetTrainerFoo"])
    assert [m.name for m in models] == ["nnunet", "nnunet_poolskip", "ablation_conv_skip", "nnUNetTrainerFoo"]
    assert models[3].trainer == "nnUNetTrainerFoo"
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        resolve_model("unet")
    with pytest.raises(ValueError, match=r"more than once"):
        parse_models("nnunet,nnunet")


def test_parse_dataset():
    assert parse_dataset("btcv") == parse_dataset("BTCV")
    assert parse_dataset("btcv").dataset_id == 17 and parse_dataset("amos").dataset_id == 218
    assert parse_dataset("amos", 300).dataset_id == 300
    assert parse_dataset("Dataset042_Liver").dataset_id == 42 and parse_dataset("42").kind == "custom"
    with pytest.raises(ValueError, match="--dataset"):
        parse_dataset("Task042")


def test_profiles_and_overrides():
    paper = resolve_settings("paper")
    assert (paper.epochs, paper.plans_preset, paper.folds, paper.device) == (None, None, (0, 1, 2, 3, 4), "cuda")
    assert not paper.short_schedule and not paper.reduced_folds and not paper.overridden
    demo = resolve_settings("demo", epochs=2, folds=[0, 2], num_gpus=None)
    assert demo.short_schedule and demo.reduced_folds and demo.smoke and demo.device == "cpu"
    assert (demo.parallel_trainings, paper.parallel_trainings, demo.plans_preset) == (2, 1, "cpu_demo")
    assert demo.overridden == ["epochs", "folds"]
    assert demo.override_arguments() == ["--epochs", "2", "--folds", "0", "2"]
    with pytest.raises(ValueError, match="--num-gpus > 1 .* --device cuda"):
        resolve_settings("demo", num_gpus=2)
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        resolve_settings("paper", epochs=0)
    with pytest.raises(ValueError, match="distinct"):
        resolve_settings("paper", folds=[0, 0])


def test_seeds_setting_run_order_and_step_environment(tmp_path):
    settings = resolve_settings("demo", seeds=[2, 0])
    assert settings.seeds == (2, 0) and settings.run_seeds == (2, 0) and settings.overridden == ["seeds"]
    assert settings.override_arguments() == ["--seeds", "2", "0"]
    assert resolve_settings("demo").run_seeds == (None,) and resolve_settings("paper").seeds is None
    for bad in ([1, 1], [-1], [2 ** 32]):
        with pytest.raises(ValueError, match="--seeds must be distinct integers from 0 to 4294967295"):
            resolve_settings("demo", seeds=bad)
    # seed by seed; a trainer shared by two models trained once per seed and fold
    models = parse_models("nnunet,nnunet_poolskip_all,nnunet_poolskip")
    runs = [(m.name, t, f, seed) for m, t, f, seed in planned_runs(models, "btcv", (0, 1), (5, 6))]
    assert runs == [(m, t, f, seed) for seed in (5, 6)
                    for m, t in (("nnunet", "nnUNetTrainerBaseline"), ("nnunet_poolskip_all", "nnUNetTrainerPoolSkip"))
                    for f in (0, 1)]
    ws = Workspace.under(tmp_path)
    leftover = clean_env(NNUNET_POOLSKIP_SEED="9")
    env, added = step_environment(leftover, ws, settings, "train", seed=5)
    assert (env["nnUNet_results"], env["NNUNET_POOLSKIP_SEED"]) == (str(ws.results / "seed_5"), "5")
    assert added["NNUNET_POOLSKIP_SEED"] == "5" and env["nnUNet_preprocessed"] == str(ws.preprocessed)
    env, _ = step_environment(leftover, ws, settings, "other", seed=5)  # predict: the seed's models, no seeding
    assert env["nnUNet_results"] == str(ws.results / "seed_5") and "NNUNET_POOLSKIP_SEED" not in env
    env, _ = step_environment(leftover, ws, settings, "train")  # a leftover seed never seeds an unseeded run
    assert env["nnUNet_results"] == str(ws.results) and "NNUNET_POOLSKIP_SEED" not in env


def test_dry_run_with_seeds_lists_every_seed_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["benchmark", "--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--folds", "0", "--seeds",
                 "0", "3", "--work", str(tmp_path / "work"), "--output", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs (2 models x 1 folds 0 x 2 seeds 0 3)" in printed
    for seed in (0, 3):
        assert re.search(rf"nnunet_poolskip +nnUNetTrainerPoolSkip +seed {seed} fold 0: new", printed)
        assert re.search(rf"nnunet +seed {seed} evaluation summary: to do", printed)
    assert not out.exists()


def test_seed_spread_table_is_descriptive(tmp_path):
    from nnunet_poolskip.benchmark.evidence import seed_csv_columns, seed_section, seed_spreads

    models = parse_models("nnunet,nnunet_poolskip")
    dice = {"nnunet": {0: 0.61, 1: 0.64, 2: 0.58}, "nnunet_poolskip": {0: 0.70, 1: 0.69, 2: 0.72}}
    paths = {}
    for name, per_seed in dice.items():
        for seed, value in per_seed.items():
            path = tmp_path / f"{name}_{seed}.json"
            path.write_text(json.dumps({"foreground_mean": {"dice": value, "nsd": 0.5, "iou": 0.4}}))
            paths.setdefault(name, {})[seed] = path
    spreads = seed_spreads(models, paths)
    import numpy as np

    base_sd = np.std(list(dice["nnunet"].values()), ddof=1)
    assert spreads["nnunet"].sd == pytest.approx(base_sd) and spreads["nnunet_poolskip"].mean == pytest.approx(0.70333,
                                                                                                              abs=1e-5)
    lines = seed_section(models, spreads, [(models[0], models[1])])
    assert "| nnU-Net | 61.00 | 64.00 | 58.00 | 61.00 | 3.00 |" in lines
    # no verdict from comparing SDs: that is the across-seeds test's job
    assert not any("larger than the spread" in line for line in lines)
    assert any("the paired statistics use every seed (across seeds and cases)" in line for line in lines)
    assert seed_csv_columns(spreads)["dice_seed_sd_percent"]["nnunet"] == f"{100 * base_sd:.4f}"


# ------------------------------------------------------------------------------------- fold states
def test_fold_state_follows_nnunet_files_and_gives_the_resume_command(tmp_path):
    fold = tmp_path / "fold_0"
    assert fold_state(fold) == FoldState.NEW
    fold.mkdir()
    (fold / "training_log_2024_1_1_00_00_00.txt").write_text("x")
    assert fold_state(fold) == FoldState.NEW
    (fold / "checkpoint_best.pth").write_bytes(b"x")
    assert fold_state(fold) == FoldState.RESUME
    (fold / "checkpoint_best.pth").unlink()
    (fold / "checkpoint_latest.pth").write_bytes(b"x")
    assert fold_state(fold) == FoldState.RESUME
    (fold / "checkpoint_final.pth").write_bytes(b"x")  # nnU-Net writes it before the final validation
    assert fold_state(fold) == FoldState.VALIDATE
    (fold / "validation").mkdir()
    (fold / "validation" / "summary.json").write_text("{}")
    assert fold_state(fold) == FoldState.DONE

    base = ["nnUNetv2_train", "17", "3d_fullres", "3", "-tr", "nnUNetTrainerPoolSkip", "-p", "nnUNetPlans",
            "-device", "cuda"]
    assert train_command("nnUNetv2_train", 17, 3, "nnUNetTrainerPoolSkip", "nnUNetPlans", "cuda") == base
    assert train_command("nnUNetv2_train", 17, 3, "nnUNetTrainerPoolSkip", "nnUNetPlans", "cuda", 4,
                         FoldState.RESUME) == base + ["-num_gpus", "4", "--c"]
    assert train_command("nnUNetv2_train", 17, 3, "nnUNetTrainerPoolSkip", "nnUNetPlans", "cuda",
                         state=FoldState.VALIDATE) == base + ["--val"]
    with pytest.raises(ValueError):
        train_command("nnUNetv2_train", 17, 3, "T", "P", "cuda", state=FoldState.DONE)


def write_checkpoint(path: Path, truncate: bool = False) -> Path:
    """A real torch checkpoint (a zip archive), or one cut short as a kill during torch.save leaves it."""

    torch.save({"network_weights": {"w": torch.arange(1000.0)}, "current_epoch": 3}, path)
    if truncate:
        path.write_bytes(path.read_bytes()[:-200])
    return path


def test_truncated_checkpoints_are_set_aside_so_the_fold_resumes_from_a_usable_one(tmp_path):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    best = write_checkpoint(fold / "checkpoint_best.pth")
    write_checkpoint(fold / "checkpoint_latest.pth", truncate=True)
    assert checkpoint_readable(best) and not checkpoint_readable(fold / "checkpoint_latest.pth")
    assert set_aside_unreadable_checkpoints(fold) == [fold / "checkpoint_latest.pth.unreadable"]
    assert fold_state(fold) == FoldState.RESUME and best.is_file()  # nnU-Net's --c now uses checkpoint_best
    write_checkpoint(fold / "checkpoint_final.pth", truncate=True)  # killed while saving the final checkpoint
    assert fold_state(fold) == FoldState.VALIDATE
    set_aside_unreadable_checkpoints(fold)
    assert fold_state(fold) == FoldState.RESUME


def test_epoch_times_read_from_nnunet_log(tmp_path):
    log = tmp_path / "training_log_2024_1_1_00_00_00.txt"
    log.write_text("2024-01-01 00:00:01.000000: Epoch 0\n2024-01-01 00:00:05.000000: Epoch time: 4.25 s\n"
                   "2024-01-01 00:00:06.000000: Epoch 1\n2024-01-01 00:00:09.000000: Epoch time: 3.5 s\n")
    assert [record.seconds for record in read_epochs(tmp_path)] == [4.25, 3.5]
    assert read_epochs(tmp_path, newer_than=time.time() + 60) == []


def test_step_environment_removes_leftover_schedule_and_sets_the_profiles(tmp_path):
    ws = Workspace.under(tmp_path)
    base = clean_env(NNUNET_POOLSKIP_EPOCHS="3", nnUNet_n_proc_DA="0")
    paper = resolve_settings("paper")
    env, added = step_environment(base, ws, paper, "train")
    assert "NNUNET_POOLSKIP_EPOCHS" not in env  # a leftover variable must never shorten a paper run
    assert env["nnUNet_results"] == str(tmp_path.absolute() / "nnUNet_results")
    assert env["nnUNet_extTrainer"].split(os.pathsep)[0].endswith("trainers")
    demo = resolve_settings("demo", epochs=2, iterations=5, val_iterations=1)
    env, added = step_environment(base, ws, demo, "train")
    assert (env["NNUNET_POOLSKIP_EPOCHS"], env["NNUNET_POOLSKIP_ITERS"], env["NNUNET_POOLSKIP_VAL_ITERS"]) == (
        "2", "5", "1")
    assert (env["nnUNet_n_proc_DA"], env["nnUNet_def_n_proc"], env["nnUNet_compile"]) == ("0", "1", "f")
    assert env["NNUNET_POOLSKIP_VAL_MIRRORING"] == "0"  # the demo predicts without mirroring, and validates so
    env, _ = step_environment(base, ws, demo, "plan")  # planning crashes with nnUNet_n_proc_DA=0
    assert "nnUNet_n_proc_DA" not in env and "NNUNET_POOLSKIP_EPOCHS" not in env
    env, _ = step_environment(clean_env(NNUNET_POOLSKIP_VAL_MIRRORING="0"), ws, paper, "train")
    assert "NNUNET_POOLSKIP_VAL_MIRRORING" not in env  # a leftover never changes a paper run's validation
    env, _ = step_environment(base, ws, resolve_settings("demo", test_time_mirroring=True), "train")
    assert "NNUNET_POOLSKIP_VAL_MIRRORING" not in env  # --tta: mirrored test predictions, mirrored validation


def write_debug_json(fold: Path, epochs: int, iterations: int, val_iterations: int) -> None:
    """The schedule part of the debug.json nnU-Net writes at the start of a training (values as strings)."""
    fold.mkdir(parents=True, exist_ok=True)
    (fold / "debug.json").write_text(json.dumps({"num_epochs": str(epochs), "num_iterations_per_epoch": str(iterations),
                                                 "num_val_iterations_per_epoch": str(val_iterations)}))


def test_folds_trained_with_another_schedule_are_refused(tmp_path, capsys):
    """Two runs sharing nnUNet_results: a 2-epoch fold must not count as a fold of the paper's 1000 epochs."""
    work = tmp_path / "work"
    raw = work / "nnUNet_raw" / "Dataset017_BTCV"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    fold = work / "nnUNet_results" / "Dataset017_BTCV" / "nnUNetTrainerBaseline__nnUNetPlans__3d_fullres" / "fold_0"
    write_debug_json(fold, 2, 5, 1)
    write_checkpoint(fold / "checkpoint_best.pth")
    args = ["benchmark", "--profile", "paper", "--models", "nnunet", "--folds", "0", "--stage", "train",
            "--work", str(work), "--output", str(tmp_path / "results")]
    assert main(args) == 2
    assert "was trained with 2 epochs x 5 iterations (its debug.json), this run asks for 1000 x 250" in \
        capsys.readouterr().err
    helper = [sys.executable, "-m", "nnunet_poolskip.benchmark.training_runs", str(fold)]
    proc = subprocess.run(helper + ["--expect-schedule", "1000", "250", "50"], capture_output=True, text=True)
    assert proc.returncode == 3 and "was trained with 2 epochs" in proc.stderr
    proc = subprocess.run(helper + ["--expect-schedule", "2", "5", "1"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "resume\n")


# ------------------------------------------------------------------------------- stale data and records
def test_run_record_keeps_the_data_set_facts_of_the_prepare_stage_in_later_invocations(tmp_path):
    """A finish-only invocation (as the SLURM jobs run) must not lose the test cases prepare recorded."""
    path = tmp_path / "run.json"
    prepare = RunRecord(path)
    prepare.begin_invocation(["--stage", "prepare"], {"dataset": {"kind": "btcv", "id": 17, "raw_source": "/a"}})
    facts = {"name": "Dataset017_BTCV", "test_cases": ["img0001", "img0002"], "n_train_val": 6}
    prepare.data["dataset"].update(facts)  # what Preparation.check_test_set records
    prepare.save()
    prepare.end_invocation("stage prepare complete")
    finish = RunRecord(path)
    finish.begin_invocation(["--stage", "finish"], {"dataset": {"kind": "btcv", "id": 17, "raw_source": "/b"}})
    assert json.loads(path.read_text())["dataset"] == {"kind": "btcv", "id": 17, "raw_source": "/b", **facts}


def test_a_data_set_converted_with_other_settings_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """The converted data set is found by its id alone: its modality and split must be the ones asked for."""
    work = tmp_path / "work"
    for name in NNUNET_FOLDERS:
        monkeypatch.setenv(name, str(work / name))
    source = tmp_path / "amos"
    write_phantoms("amos", source, cases=12, mri_cases=3, size=(16, 24, 24), progress=False)
    convert_amos(source, progress=False)  # CT and MRI, the shipped split
    converted = work / "nnUNet_raw" / "Dataset218_AMOS"
    split = tmp_path / "my_split.json"
    split.write_text(json.dumps({"dataset": "AMOS2022", "test": ["amos_0001"], "train": ["amos_0002"]}))
    out = tmp_path / "results"
    # every stage runs the check first; --stage finish stops soon after it (nothing trained) when it is absent
    base = ["benchmark", "--profile", "demo", "--dataset", "amos", "--raw", str(source), "--work", str(work),
            "--output", str(out), "--stage", "finish"]
    assert main(base + ["--modality", "ct"]) == 2
    error = capsys.readouterr().err
    assert f"{converted} was converted with other settings than this run asks for: modality 'all' there, 'ct' here" \
        in error
    assert main(base + ["--split-file", str(split)]) == 2
    error = capsys.readouterr().err
    assert "split file " + str(shipped_split_file("amos")) in error and f"{split} (sha256 " in error
    assert not out.exists()  # refused before anything was written
    # the same settings pass the check: the finish stage then says what else it lacks
    assert main(base + ["--modality", "all"]) == 2
    assert "training is not finished" in capsys.readouterr().err


@pytest.mark.integration  # runs the finish stage's evaluate commands: about 14 s
def test_summaries_are_remade_when_the_nsd_tolerances_change(tmp_path, monkeypatch):
    work = tmp_path / "work"
    raw = write_toy_dataset(work / "nnUNet_raw", 901, n_cases=1, n_test=2)
    model = parse_models(["nnunet"])[0]
    predictions = tmp_path / "results" / "predictions" / model.name
    shutil.copytree(raw / "labelsTs", predictions)  # perfect predictions: only the tolerances matter here
    tables = {}
    for name, mm in (("strict", {"1": 1.0, "2": 1.0}), ("loose", {"big": 3.0, "small": 2.0})):
        tables[name] = tmp_path / f"{name}.json"
        tables[name].write_text(json.dumps(mm))

    def evaluate_with(table: str) -> dict:
        args = build_parser().parse_args(["benchmark", "--profile", "demo", "--dataset", "Dataset901_Toy",
                                          "--work", str(work), "--output", str(tmp_path / "results"),
                                          "--nsd-tolerances", table, "--evaluate-processes", "1"])
        config = build_config(args)
        steps = Steps(config, RunRecord(config.output / "run.json"), io.StringIO())
        summary = Finish(config, steps, training=None).evaluate(model, predictions)
        return {"tolerances": json.loads(summary.read_text())["nsd_tolerance_mm"], "said": steps.out.getvalue(),
                "mtime": summary.stat().st_mtime_ns}

    summary = tmp_path / "results" / "summaries" / f"{model.name}.json"  # as an earlier run left it
    assert main(["evaluate", str(raw / "labelsTs"), str(predictions), "--dataset-json", str(raw / "dataset.json"),
                 "--nsd-tolerances", str(tables["strict"]), "-o", str(summary), "-np", "1", "--no-progress"]) == 0
    before = summary.stat().st_mtime_ns
    again = evaluate_with(str(tables["strict"]))
    assert again["mtime"] == before and f"{summary} exists" in again["said"]  # same request: kept
    changed = evaluate_with(str(tables["loose"]))
    assert changed["tolerances"] == {"1": 3.0, "2": 2.0}
    assert "nnunet.json was computed with other NSD tolerances" in changed["said"]


# ------------------------------------------------------------------------------------------- SLURM
def emit(tmp_path: Path, *args: str) -> Path:
    """``benchmark ... --emit slurm DIR`` through the CLI's entry function (in-process: fast)."""
    folder = tmp_path / "slurm"
    assert main(["benchmark", *args, "--work", str(tmp_path / "work"), "--output", str(tmp_path / "results"),
                 "--emit", "slurm", str(folder)]) == 0
    assert not (tmp_path / "results").exists()  # emitting runs nothing
    return folder


def array_tasks(script: str):
    return re.findall(r"^\s*(\d+)\) MODEL=(\w+); TRAINER=(\w+); FOLD=(\d+) ;;$", script, re.M)


def test_slurm_scripts_for_amos_on_gpus(tmp_path):
    folder = emit(tmp_path, "--profile", "paper", "--dataset", "amos", "--raw", str(tmp_path / "amos"),
                  "--num-gpus", "2", "--sbatch=--partition=gpu", "--sbatch=--time=48:00:00")
    for name in ("env.sh", "prepare.sbatch", "train.sbatch", "finish.sbatch", "submit.sh"):
        check = subprocess.run(["bash", "-n", str(folder / name)], capture_output=True, text=True)
        assert check.returncode == 0, (name, check.stderr)
    train = (folder / "train.sbatch").read_text()
    tasks = array_tasks(train)
    expected = [(m, t, f) for m, t in (("nnunet", "nnUNetTrainerBaseline"),
                                       ("nnunet_poolskip", "nnUNetTrainerPoolSkipAMOS"),
                                       ("vnet", "nnUNetTrainerVNet"), ("vnet_poolskip", "nnUNetTrainerVNetPoolSkip"))
                for f in "01234"]
    assert [(m, t, f) for _, m, t, f in tasks] == expected
    assert [int(i) for i, *_ in tasks] == list(range(20))
    assert "#SBATCH --array=0-19" in train and "#SBATCH --gres=gpu:2" in train
    assert "#SBATCH --partition=gpu" in train and "#SBATCH --time=48:00:00" in train
    assert re.search(r'^nnUNetv2_train 218 3d_fullres "\$FOLD" -tr "\$TRAINER" -p "\$PLANS" -device cuda '
                     r'-num_gpus 2 ', train, re.M)
    assert re.search(r"^PLANS=nnUNetPlans  #", train, re.M)  # models with their own plans set theirs per task
    env_sh = (folder / "env.sh").read_text()
    assert "unset NNUNET_POOLSKIP_EPOCHS" in env_sh and "NNUNET_POOLSKIP_EPOCHS=" not in train
    assert f"export nnUNet_results={tmp_path / 'work' / 'nnUNet_results'}" in env_sh
    assert re.search(r"^export nnUNet_extTrainer=\S*trainers", env_sh, re.M)
    for stage in ("prepare", "finish"):
        line = [text for text in (folder / f"{stage}.sbatch").read_text().splitlines()
                if text.startswith("nnunet-poolskip benchmark")]
        assert len(line) == 1 and line[0].endswith(f"--stage {stage}")
        assert "--dataset amos" in line[0] and "--profile paper" in line[0] and "--num-gpus 2" in line[0]
    submit = (folder / "submit.sh").read_text()
    assert 'sbatch --parsable --dependency=afterok:"$prepare" train.sbatch' in submit
    assert 'sbatch --parsable --dependency=afterok:"$train" finish.sbatch' in submit


def fake_train(folder: Path, tmp_path: Path, record: str) -> Path:
    """Put a stand-in nnUNetv2_train first on the PATH of the emitted jobs; it appends ``record`` (expanded by bash)
    to the returned file."""
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls.txt"
    fake = fake_bin / "nnUNetv2_train"
    fake.write_text(f'#!/bin/bash\necho "{record}" >> {calls}\n')
    fake.chmod(0o755)
    env_sh = folder / "env.sh"
    env_sh.write_text(env_sh.read_text() + f'\nexport PATH={fake_bin}:"$PATH"\n')
    return calls


def test_slurm_train_task_skips_done_folds_and_resumes_interrupted_ones(tmp_path):
    folder = emit(tmp_path, "--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--folds", "0", "1",
                  "--epochs", "2", "--iterations", "10", "--plans-preset", "cpu_small")
    train = (folder / "train.sbatch").read_text()
    tasks = array_tasks(train)
    assert [(m, t, f) for _, m, t, f in tasks] == [
        ("nnunet", "nnUNetTrainerBaseline", "0"), ("nnunet", "nnUNetTrainerBaseline", "1"),
        ("nnunet_poolskip", "nnUNetTrainerPoolSkip", "0"), ("nnunet_poolskip", "nnUNetTrainerPoolSkip", "1")]
    assert "export NNUNET_POOLSKIP_EPOCHS=2" in train and "export nnUNet_n_proc_DA=0" in train
    assert "--expect-schedule 2 10 2)" in train  # the epochs and iterations given, the demo's validation iterations
    assert "#SBATCH --gres" not in train  # CPU profile
    calls = fake_train(folder, tmp_path, "$NNUNET_POOLSKIP_EPOCHS $*")
    model_dir = tmp_path / "work" / "nnUNet_results" / "Dataset017_BTCV"
    base = model_dir / "nnUNetTrainerBaseline__nnUNetPlansCPU__3d_fullres"
    poolskip = model_dir / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres"
    (base / "fold_0" / "validation").mkdir(parents=True)
    write_checkpoint(base / "fold_0" / "checkpoint_final.pth")
    (base / "fold_0" / "validation" / "summary.json").write_text("{}")
    (base / "fold_1").mkdir(parents=True)
    write_checkpoint(base / "fold_1" / "checkpoint_latest.pth")
    (poolskip / "fold_0").mkdir(parents=True)
    write_checkpoint(poolskip / "fold_0" / "checkpoint_final.pth")
    (poolskip / "fold_1").mkdir(parents=True)
    truncated = write_checkpoint(poolskip / "fold_1" / "checkpoint_latest.pth", truncate=True)
    for task in range(4):
        proc = subprocess.run(["bash", str(folder / "train.sbatch")], env=clean_env(SLURM_ARRAY_TASK_ID=str(task)),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert not truncated.exists() and truncated.with_name("checkpoint_latest.pth.unreadable").is_file()
    recorded = calls.read_text().splitlines()
    assert recorded == [
        "2 17 3d_fullres 1 -tr nnUNetTrainerBaseline -p nnUNetPlansCPU -device cpu --c",
        "2 17 3d_fullres 0 -tr nnUNetTrainerPoolSkip -p nnUNetPlansCPU -device cpu --val",
        "2 17 3d_fullres 1 -tr nnUNetTrainerPoolSkip -p nnUNetPlansCPU -device cpu"]
    bad = subprocess.run(["bash", str(folder / "train.sbatch")], env=clean_env(SLURM_ARRAY_TASK_ID="4"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no benchmark run for array task 4" in bad.stderr


def test_slurm_array_has_one_task_per_model_fold_and_seed(tmp_path):
    folder = emit(tmp_path, "--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--folds", "0", "--seeds",
                  "0", "1", "--plans-preset", "cpu_small")
    train = (folder / "train.sbatch").read_text()
    results = tmp_path / "work" / "nnUNet_results"
    tasks = re.findall(r"^\s*(\d+)\) MODEL=(\w+); TRAINER=(\w+); FOLD=(\d+); SEED=(\d+); RESULTS=(\S+) ;;$",
                       train, re.M)
    assert [(m, f, seed, r) for _, m, _, f, seed, r in tasks] == [
        (m, "0", seed, str(results / f"seed_{seed}")) for seed in "01" for m in ("nnunet", "nnunet_poolskip")]
    assert "#SBATCH --array=0-3" in train
    assert ("unset NNUNET_POOLSKIP_EPOCHS NNUNET_POOLSKIP_ITERS NNUNET_POOLSKIP_VAL_ITERS NNUNET_POOLSKIP_SEED "
            "NNUNET_POOLSKIP_VAL_MIRRORING") in \
        (folder / "env.sh").read_text()
    assert "--seeds 0 1" in (folder / "finish.sbatch").read_text()
    # run the tasks against a stand-in nnUNetv2_train: seed 0's baseline fold is done, the others are new
    calls = fake_train(folder, tmp_path, "$NNUNET_POOLSKIP_SEED $nnUNet_results $*")
    done = results / "seed_0" / "Dataset017_BTCV" / "nnUNetTrainerBaseline__nnUNetPlansCPU__3d_fullres" / "fold_0"
    (done / "validation").mkdir(parents=True)
    write_checkpoint(done / "checkpoint_final.pth")
    (done / "validation" / "summary.json").write_text("{}")
    (results / "Dataset017_BTCV").mkdir(parents=True)  # an unseeded run's folder: never used by seeded tasks
    for task in range(4):
        proc = subprocess.run(["bash", str(folder / "train.sbatch")],
                              env=clean_env(SLURM_ARRAY_TASK_ID=str(task), NNUNET_POOLSKIP_SEED="99"),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        if task == 0:
            assert "nnunet fold 0 seed 0: done" in proc.stdout
    assert calls.read_text().splitlines() == [
        f"{seed} {results / f'seed_{seed}'} 17 3d_fullres 0 -tr {trainer} -p nnUNetPlansCPU -device cpu"
        for seed, trainer in ((0, "nnUNetTrainerPoolSkip"), (1, "nnUNetTrainerBaseline"), (1, "nnUNetTrainerPoolSkip"))]


@pytest.mark.parametrize("args, message", [
    (["--profile", "paper"], "--raw is required: the BTCV download folder"),
    (["--profile", "paper", "--raw", "/nonexistent/btcv"], "--raw /nonexistent/btcv is not a folder"),
    (["--profile", "demo", "--models", "nnunet,unet"], "unknown model 'unet'"),
    (["--profile", "demo", "--models", "nnunet_stock"], "ignore the short schedule"),
    (["--profile", "paper", "--models", "nnunet_stock", "--seeds", "0", "1"], "ignore the seed"),
    (["--profile", "demo", "--seeds", "1", "1"], "--seeds must be distinct"),
    (["--profile", "paper", "--num-gpus", "2", "--device", "cpu"], "--num-gpus > 1"),
    (["--profile", "demo", "--dataset", "Dataset123_Missing"], "Dataset123_Missing not found in nnUNet_raw"),
    (["--profile", "demo", "--stage", "finish"], "not converted yet"),
    (["--profile", "demo", "--modality", "ct"], "--modality applies to --dataset amos only"),
    (["--profile", "demo", "--nsd-tolerances", "flare23"], "--nsd-tolerances: "),
    (["--profile", "demo", "--parallel-trainings", "0"], "--parallel-trainings must be >= 1"),
    (["--profile", "paper", "--parallel-trainings", "2"], "--parallel-trainings > 1 shares the CPUs"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "results"
    assert main(["benchmark", *args, "--output", str(out), "--work", str(tmp_path / "work")]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_case_counts_and_folds_are_checked_at_argument_time(tmp_path, capsys):
    """``--cases 8`` passed --dry-run and failed after synthesis (issue 25): the split the converter will make is
    worked out at argument time, so the dry run and the real run refuse alike, and the advice is a value that works."""
    out = tmp_path / "results"
    base = ["benchmark", "--profile", "demo", "--output", str(out), "--work", str(tmp_path / "work")]
    for extra in ([], ["--dry-run"], ["--emit", "slurm", str(tmp_path / "jobs")]):
        assert main([*base, "--cases", "8", *extra]) == 2
        err = capsys.readouterr().err
        assert "--cases 8 gives 5 test and 3 train+val cases (split file btcv_split.json)" in err
        assert "5-fold cross-validation needs at least 5 train+val cases" in err
        assert "use --cases 10 or more" in err
        assert not out.exists() and not (tmp_path / "jobs").exists()
    assert main([*base, "--cases", "10", "--dry-run"]) == 0  # the advised value passes
    capsys.readouterr()
    assert main([*base, "--cases", "9", "--dry-run"]) == 2  # and is the smallest that does
    capsys.readouterr()
    assert main([*base, "--folds", "0", "5", "--dry-run"]) == 2
    assert "--folds 5 does not exist: the split has 5 folds (0-4)" in capsys.readouterr().err
    # AMOS phantoms (one in six MRI), split 1:2 per modality: the advice is again the smallest count that works
    amos = [*base, "--dataset", "amos", "--dry-run"]
    assert main([*amos, "--cases", "3"]) == 2
    err = capsys.readouterr().err
    assert "--cases 3 gives 1 test and 2 train+val cases (split file amos_split.json)" in err
    advised = int(re.search(r"use --cases (\d+) or more", err)[1])
    assert main([*amos, "--cases", str(advised - 1)]) == 2
    assert main([*amos, "--cases", str(advised)]) == 0
    capsys.readouterr()
    # a split file of the scaled-down tests: 8 phantoms, 2 test and 6 train+val cases, are enough
    assert main([*base, "--cases", "8", "--split-file", str(write_split(tmp_path)), "--dry-run"]) == 0
    assert not out.exists()


# ------------------------------------------------------------------------------------ end to end
SCALED_DOWN = ["--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--folds", "0", "1", "--cases", "8",
               "--phantom-size", "32", "48", "48", "--epochs", "2", "--iterations", "2", "--val-iterations", "1",
               "--preprocess-processes", "1", "--evaluate-processes", "2", "--plans-preset", "cpu_small",
               "--no-real-ct"]
"""The demo profile's code path at CI scale: 2 models, 2 folds, 2 epochs of 2 iterations, 8 small phantoms, the
tests' tiny CPU plans (the demo's own preset has small patches, whose sliding-window validation costs more); no
real-CT step (two more predictions in every run here; tests/benchmark/test_real_ct_step.py covers it)."""


def group_alive(pgid: int) -> list:
    """Pids of the live (not zombie) processes of a process group."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def write_split(tmp_path: Path) -> Path:
    """A BTCV split file: 2 test cases, 6 train+val cases, the paper's 5 folds."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"dataset": "BTCV", "test": ["img0001", "img0002"],
                                 "train": [f"img{i:04d}" for i in range(3, 9)], "folds": {"n_folds": 5, "seed": 1}}))
    return split


def run_until_second_epoch_then_kill(argv, env, log_path: Path, fold: Path) -> FoldState:
    """Run the benchmark until ``fold`` has finished its first epoch, SIGKILL the runner only, check that the
    training it started died with it, and return the fold's state at the kill. The trainings run one at a time
    (the demo profile's two at a time would leave the other run's state to chance)."""
    log = open(log_path, "w")
    proc = subprocess.Popen([*argv, "--parallel-trainings", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        # nnU-Net logs "Epoch 1" after saving the checkpoints of epoch 0: a complete checkpoint_best.pth exists
        while not any(re.search(r": Epoch 1\s*$", p.read_text(), re.M) for p in fold.glob("training_log_*.txt")):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, f"{fold} never reached its second epoch"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state_at_kill = fold_state(fold)
        # PR_SET_PDEATHSIG: the training the runner started dies with it (no orphan writes into the fold)
        deadline = time.time() + 30
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert group_alive(proc.pid) == []
    finally:
        if proc.poll() is None or group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert state_at_kill != FoldState.DONE
    return state_at_kill


def fingerprint(fold: Path):
    """What must not change in a finished fold: its final checkpoint's bytes and time, its training logs."""
    checkpoint = fold / "checkpoint_final.pth"
    return checkpoint.stat().st_mtime_ns, checkpoint.read_bytes(), sorted(fold.glob("training_log_*.txt"))


def png_size(path: Path):
    """(width, height) in pixels of a PNG file (from its IHDR chunk)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses PR_SET_PDEATHSIG")
def test_scaled_down_benchmark_killed_mid_training_then_resumed(tmp_path):
    split = write_split(tmp_path)
    out = tmp_path / "results"
    argv = [str(BIN / "nnunet-poolskip"), "benchmark", *SCALED_DOWN, "--split-file", str(split), "--output", str(out)]
    env = clean_env()
    models = out / "nnunet" / "nnUNet_results" / "Dataset017_BTCV"
    fold0 = models / "nnUNetTrainerBaseline__nnUNetPlansCPU__3d_fullres" / "fold_0"
    fold1 = fold0.parent / "fold_1"

    # 1) run until the second fold has finished its first epoch, then SIGKILL the runner only
    state_at_kill = run_until_second_epoch_then_kill(argv, env, tmp_path / "first_run.log", fold1)
    assert fold_state(fold0) == FoldState.DONE
    before = fingerprint(fold0)
    assert not (out / "table.md").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["steps"]["train/nnUNetTrainerBaseline/fold_1"]["status"] == "running"  # as the kill left it

    # 2) rerun (the demo's two trainings at a time: not part of the protocol): completes without retraining fold 0
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert fingerprint(fold0) == before
    record = json.loads((out / "run.json").read_text())
    assert [i["status"] for i in record["invocations"]] == ["interrupted", "complete"]
    steps = record["steps"]
    assert len(steps["train/nnUNetTrainerBaseline/fold_0"]["attempts"]) == 1
    attempts1 = steps["train/nnUNetTrainerBaseline/fold_1"]["attempts"]
    assert [a["mode"] for a in attempts1] == ["new", state_at_kill.value] and attempts1[0]["exit_code"] == "killed"
    if state_at_kill == FoldState.RESUME:
        assert steps["train/nnUNetTrainerBaseline/fold_1"]["command"][-1] == "--c"
    for trainer in ("nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip"):
        for fold in (0, 1):
            assert fold_state(models / f"{trainer}__nnUNetPlansCPU__3d_fullres" / f"fold_{fold}") == FoldState.DONE
            assert steps[f"train/{trainer}/fold_{fold}"]["env"]["NNUNET_POOLSKIP_EPOCHS"] == "2"
    assert record["models"]["nnunet_poolskip"]["trainer"] == "nnUNetTrainerPoolSkip"
    assert record["plans"]["identifier"] == "nnUNetPlansCPU" and record["plans"]["features_per_stage"][0] == 8
    assert record["versions"]["nnunetv2"] and record["versions"]["torch"] and record["machine"]["cpu_count"]
    assert record["dataset"]["test_cases"] == ["img0001", "img0002"] and record["dataset"]["n_train_val"] == 6

    # 3) the outputs: predictions of the 2 test cases from folds 0 and 1, summaries, tables
    for model in ("nnunet", "nnunet_poolskip"):
        predict_args = json.loads((out / "predictions" / model / "predict_args.json").read_text())
        assert predict_args["folds"] == [0, 1] and predict_args["use_mirroring"] is False
        assert sorted(p.name for p in (out / "predictions" / model).glob("*.nii.gz")) == [
            "img0001.nii.gz", "img0002.nii.gz"]
        summary = json.loads((out / "summaries" / f"{model}.json").read_text())
        assert [c["case"] for c in summary["per_case"]] == ["img0001", "img0002"]
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["nnU-Net", "nnU-Net + Pool Skip"]
    for row in rows:
        summary = json.loads((out / "summaries" / f"{'nnunet' if row['baseline'] == '' else 'nnunet_poolskip'}.json")
                             .read_text())
        for metric, key in (("dice", "dice_percent"), ("nsd", "nsd_percent"), ("iou", "miou_percent")):
            value = float(row[key])
            assert math.isfinite(value) and 0.0 <= value <= 100.0
            assert value == pytest.approx(100 * summary["foreground_mean"][metric], abs=1e-3)
        assert (row["folds"], row["epochs"], row["smoke_scale"], row["run_complete"]) == ("0 1", "2", "true", "true")
    assert float(rows[1]["delta_dice"]) == pytest.approx(
        float(rows[1]["dice_percent"]) - float(rows[0]["dice_percent"]), abs=2e-3)
    table = (out / "table.md").read_text()
    assert "SMOKE-SCALE RUN ON SYNTHETIC PHANTOMS: NOT A REPRODUCTION" in table
    assert "2 fold(s) (0 1) instead of the paper's 5" in table and "Status: complete" in table
    assert table in rerun.stdout  # the run ends by printing the table
    # the evidence: paired statistics of the pair, the diagnostics of both folds, the figures
    assert "## Paired statistics, each Pool Skip model against its own baseline" in table
    assert "## Elimination singularities" in table and "## Spread between seeds" not in table
    for fold in (0, 1):
        report = json.loads((out / "diagnostics" / "nnunet_poolskip" / f"fold_{fold}" / "diagnostics.json").read_text())
        assert (report["trainer"], report["compare"][0]["trainer"], report["fold"]) == (
            "nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip", fold)
        assert report["data"]["n_samples"] == 2  # a smoke run diagnoses few cases
    with open(out / "elimination_singularities.csv", newline="") as handle:
        assert sorted((r["model"], r["fold"], r["seed"]) for r in csv.DictReader(handle)) == [
            ("nnunet", "0", ""), ("nnunet", "1", ""), ("nnunet_poolskip", "0", ""), ("nnunet_poolskip", "1", "")]
    for name in ("per_organ_dice.png", "training_curves.png", "overlays.png", "differences_nnunet_poolskip.png",
                 "elimination_singularities_nnunet_poolskip.png"):
        width, height = png_size(out / name)
        assert 800 <= width <= 2000 and height >= 300, (name, width, height)
    assert f"full logs: {out / 'logs'}/" in "\n".join(rerun.stdout.splitlines()[:6])  # among the first lines
    # one line per epoch of every run this invocation trained (read from nnU-Net's log), the time left in each
    for fold in (0, 1):
        for epoch in (1, 2):
            assert re.search(rf"^   nnunet_poolskip fold {fold} epoch {epoch}/2: train loss -?[0-9.]+, pseudo Dice "
                             rf"([0-9.]+|\?), [0-9.]+ s/epoch, ~[0-9.]+ (s|min) left in all$", rerun.stdout, re.M), \
                rerun.stdout
    assert not (out / ".benchmark.lock").exists()
    # two at a time, one torch thread each on 2 CPUs: the trainer applied the runner's thread count
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    for fold in (0, 1):
        assert steps[f"train/nnUNetTrainerPoolSkip/fold_{fold}"]["env"]["NNUNET_POOLSKIP_THREADS"] == threads
        logs = (models / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres" / f"fold_{fold}").glob("training_log_*")
        log = "".join(p.read_text() for p in logs)
        assert f"nnunet-poolskip: {threads} torch thread(s)" in log
        # no test-time mirroring in the demo: the final validation runs unmirrored, the checkpoint keeps its axes
        assert "final validation without test-time mirroring (NNUNET_POOLSKIP_VAL_MIRRORING=0)" in log
        final = torch.load(models / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres" / f"fold_{fold}" /
                           "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert tuple(final["inference_allowed_mirroring_axes"]) == (0, 1, 2)
    # first run: one at a time
    assert "NNUNET_POOLSKIP_THREADS" not in steps["train/nnUNetTrainerBaseline/fold_0"]["env"]

    # 3b) the same folder with --protocol both (issue 20): no training again; the test table, then the cross-validation
    # of every case of folds 0 and 1 from nnU-Net's own final validation, its files in cv/
    attempts = {k: len(v["attempts"]) for k, v in steps.items() if k.startswith("train/")}
    both = subprocess.run([*argv, "--protocol", "both"], env=env, capture_output=True, text=True, timeout=900)
    assert both.returncode == 0, both.stdout[-4000:] + both.stderr[-4000:]
    record = json.loads((out / "run.json").read_text())
    assert {k: len(v["attempts"]) for k, v in record["steps"].items() if k.startswith("train/")} == attempts
    splits = json.loads((out / "nnunet" / "nnUNet_preprocessed" / "Dataset017_BTCV" / "splits_final.json").read_text())
    validation = sorted(splits[0]["val"] + splits[1]["val"])
    table = (out / "table.md").read_text()
    assert table.index("## Test set, paper's Table 3 layout") < table.index(
        f"## Cross-validation: n = {len(validation)} cases of folds 0 1 of 5")
    assert "Per organ: cv/per_organ.md" in table and table in both.stdout
    assert f"| Model (cross-validation, folds 0 1 of 5, n = {len(validation)} cases) |" in (out / "cv" / "table.md") \
        .read_text()
    for model in ("nnunet", "nnunet_poolskip"):
        summary = json.loads((out / "summaries" / "cv" / f"{model}.json").read_text())
        assert [c["case"] for c in summary["per_case"]] == validation
    assert (out / "cv" / "overlays.png").is_file() and (out / "overlays.png").is_file()

    # 4) another protocol into the same folder is refused before any work
    assert main(["benchmark", *SCALED_DOWN, "--epochs", "3", "--split-file", str(split), "--output", str(out)]) == 2

    # 5) a fold that is not finished (its final validation missing): no table without saying so
    summary1 = models / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres" / "fold_1" / "validation" / "summary.json"
    summary1.rename(summary1.with_name("summary.json.moved"))
    finish = ["benchmark", *SCALED_DOWN, "--split-file", str(split), "--output", str(out), "--stage", "finish"]
    assert main(finish) == 2 and not (out / "table.md").exists()  # refused, and the old table is gone
    assert not (out / "elimination_singularities_nnunet_poolskip.png").exists() and not (out / "overlays.png").exists()
    assert main(finish + ["--keep-going"]) == 1
    table = (out / "table.md").read_text()
    assert "**INCOMPLETE RUN.**" in table and "nnunet_poolskip (fold 1 validate)" in table
    # the data set facts recorded by the prepare stage survive finish-only invocations
    assert "6 train+val cases" in table and "2 held-out test cases" in table
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["run_complete"]) for r in rows] == [("nnU-Net", "false")]


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses PR_SET_PDEATHSIG")
def test_benchmark_with_seeds_killed_in_the_second_seed_then_resumed(tmp_path):
    """--seeds 0 1 on one fold: killed while seed 1 trains, the rerun keeps seed 0 untouched and finishes; per-seed
    predictions and summaries, the seed-averaged summaries compare gets, the seed spread in table.md."""
    import numpy as np

    from nnunet_poolskip.diagnostics.layer_statistics import is_encoder_stage

    split = write_split(tmp_path)
    out = tmp_path / "results"
    args = [*SCALED_DOWN, "--folds", "0", "--seeds", "0", "1", "--split-file", str(split), "--output", str(out)]
    argv = [str(BIN / "nnunet-poolskip"), "benchmark", *args]
    results = out / "nnunet" / "nnUNet_results"
    trainers = {"nnunet": "nnUNetTrainerBaseline", "nnunet_poolskip": "nnUNetTrainerPoolSkip"}

    def fold(seed: int, model: str) -> Path:
        return (results / f"seed_{seed}" / "Dataset017_BTCV" / f"{trainers[model]}__nnUNetPlansCPU__3d_fullres"
                / "fold_0")

    state_at_kill = run_until_second_epoch_then_kill(argv, clean_env(), tmp_path / "first_run.log", fold(1, "nnunet"))
    assert all(fold_state(fold(0, m)) == FoldState.DONE for m in trainers)
    before = {m: fingerprint(fold(0, m)) for m in trainers}
    assert not (results / "Dataset017_BTCV").exists()  # seeded runs never write into the unseeded folder

    rerun = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert {m: fingerprint(fold(0, m)) for m in trainers} == before  # seed 0 not redone
    steps = json.loads((out / "run.json").read_text())["steps"]
    for model, trainer in trainers.items():
        assert len(steps[f"train/{trainer}/seed_0/fold_0"]["attempts"]) == 1
        for seed in (0, 1):
            assert fold_state(fold(seed, model)) == FoldState.DONE
            env = steps[f"train/{trainer}/seed_{seed}/fold_0"]["env"]
            assert (env["NNUNET_POOLSKIP_SEED"], env["nnUNet_results"]) == (str(seed), str(results / f"seed_{seed}"))
            log = "".join(p.read_text() for p in fold(seed, model).glob("training_log_*.txt"))
            assert f"NNUNET_POOLSKIP_SEED={seed}:" in log
    assert [a["mode"] for a in steps["train/nnUNetTrainerBaseline/seed_1/fold_0"]["attempts"]] == ["new",
                                                                                                   state_at_kill.value]
    assert "seed 1 fold 0" in rerun.stdout

    # per seed: the ensemble's predictions and summary; per model: the per-case average over seeds
    for model in trainers:
        per_seed = [json.loads((out / "summaries" / f"seed_{s}" / f"{model}.json").read_text()) for s in (0, 1)]
        for s in (0, 1):
            assert sorted(p.name for p in (out / "predictions" / f"seed_{s}" / model).glob("*.nii.gz")) == [
                "img0001.nii.gz", "img0002.nii.gz"]
        averaged = json.loads((out / "summaries" / f"{model}.json").read_text())
        assert averaged["averaged_over"]["runs"] == ["seed 0", "seed 1"]
        for case, a, b in zip(averaged["per_case"], *[s["per_case"] for s in per_seed]):
            for label, value in case["dice"].items():
                pair = [np.nan if x["dice"][label] is None else x["dice"][label] for x in (a, b)]
                expected = None if np.isnan(pair).all() else float(np.nanmean(pair))
                assert value == pytest.approx(expected), (model, case["case"], label)

    # table.md: the seed spread, per seed and over seeds, and the sentence; table.csv the same numbers
    table = (out / "table.md").read_text()
    dice = {m: [100 * json.loads((out / "summaries" / f"seed_{s}" / f"{m}.json").read_text())["foreground_mean"]["dice"]
                for s in (0, 1)] for m in trainers}
    assert "## Spread between seeds" in table
    for model, display in (("nnunet", "nnU-Net"), ("nnunet_poolskip", "nnU-Net + Pool Skip")):
        values = dice[model]
        assert (f"| {display} | {values[0]:.2f} | {values[1]:.2f} | {np.mean(values):.2f} | "
                f"{np.std(values, ddof=1):.2f} |") in table
    assert "larger than the spread" not in table
    # the headline is the across-seeds test: compare got every seed's summary under the model's name
    statistics = json.loads((out / "compare" / "all" / "statistics.json").read_text())
    headline = [e for e in statistics["comparisons"] if e["label"] == "foreground" and e["metric"] == "dice"
                and "seed" not in e]
    assert [e["scope"] for e in headline] == ["seeds_and_cases"] and headline[0]["primary"]
    assert headline[0]["n_seeds"] == {"nnU-Net": 2, "nnU-Net + Pool Skip": 2}
    # each seed's own pair is named by its training seed (evaluate --seed recorded it in the seed's summary)
    per_seed = [e for e in statistics["comparisons"] if e["label"] == "foreground" and e["metric"] == "dice"
                and "seed" in e]
    assert [e["seed_number"] for e in per_seed] == [0, 1]
    assert json.loads((out / "summaries" / "seed_1" / "nnunet.json").read_text())["seed"] == 1
    assert "every seed's ensemble, across seeds and cases" in table and "Better in" in table
    with open(out / "table.csv", newline="") as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    assert rows["nnU-Net"]["seeds"] == "0 1"
    assert float(rows["nnU-Net"]["dice_seed_sd_percent"]) == pytest.approx(np.std(dice["nnunet"], ddof=1), abs=1e-3)
    assert float(rows["nnU-Net + Pool Skip"]["dice_percent"]) == pytest.approx(
        100 * json.loads((out / "summaries" / "nnunet_poolskip.json").read_text())["foreground_mean"]["dice"], abs=1e-3)

    # elimination singularities: one diagnose per seed; the CSV's medians against the JSON's layers
    with open(out / "elimination_singularities.csv", newline="") as handle:
        es = list(csv.DictReader(handle))
    assert sorted((r["model"], r["seed"]) for r in es) == [(m, s) for m in trainers for s in "01"]
    for row in es:
        report = json.loads(Path(row["diagnostics"]).read_text())
        report = report if row["model"] == "nnunet" else report["compare"][0]
        ratios = [layer["l2_l1"] for layer in report["layers"]
                  if layer["kind"] == "host" and is_encoder_stage(layer["stage"])]
        assert float(row["l2_l1_median"]) == pytest.approx(float(np.median(ratios)), rel=1e-5)
    assert "## Elimination singularities" in table and "| nnU-Net + Pool Skip | 2 |" in table
    for name in ("training_curves.png", "overlays.png", "differences_nnunet_poolskip.png",
                 "elimination_singularities_nnunet_poolskip.png"):
        assert png_size(out / name)[0] <= 2000, name

    # the finish stage again: predictions, evaluations and diagnostics are kept (newer than the checkpoints)
    assert main(["benchmark", *args, "--stage", "finish"]) == 0
    assert "evaluated on all 2 test cases" in (out / "table.md").read_text()  # the finish stage alone knows them
    steps = json.loads((out / "run.json").read_text())["steps"]
    for seed in (0, 1):
        for kind in ("predict/nnunet", "evaluate/nnunet_poolskip", "diagnose/nnunet_poolskip"):
            step = steps[f"{kind}/seed_{seed}" + ("/fold_0" if kind.startswith("diagnose") else "")]
            assert len(step["attempts"]) == 1 and "skipped_last_invocation" in step, (kind, seed)


@pytest.mark.integration
def test_resenc_baseline_beside_nnunet_plans_once_costs_in_the_table_and_foreign_plans_refused(tmp_path):
    """nnU-Net's ResEnc M preset (its own planner and plans, our baseline trainer) trains and predicts beside the
    plain nnU-Net in one benchmark run; its plans are made once and reused on a rerun; the table and run.json carry
    every model's cost; derived plans that differ from what the preset gives are refused, naming model and plans."""
    split = write_split(tmp_path)
    out = tmp_path / "results"
    args = ["benchmark", "--profile", "demo", "--models", "nnunet,nnunet_resenc_m", "--folds", "0", "--cases", "8",
            "--phantom-size", "32", "48", "48", "--epochs", "1", "--iterations", "2", "--val-iterations", "1",
            "--preprocess-processes", "1", "--evaluate-processes", "2", "--plans-preset", "cpu_small",
            "--parallel-trainings", "2", "--split-file", str(split), "--output", str(out)]
    env = clean_env()
    first = subprocess.run([str(BIN / "nnunet-poolskip"), *args], env=env, capture_output=True, text=True,
                           timeout=1800)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    preprocessed = out / "nnunet" / "nnUNet_preprocessed" / "Dataset017_BTCV"
    resenc_plans = json.loads((preprocessed / "nnUNetResEncUNetMPlans.json").read_text())
    assert resenc_plans["experiment_planner_used"] == "nnUNetPlannerResEncM"
    # the ResEnc planner reuses the default plans' preprocessed data: nothing preprocessed twice
    assert resenc_plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    derived = preprocessed / "nnUNetResEncUNetMPlansCPU.json"
    arch = json.loads(derived.read_text())["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith("ResidualEncoderUNet")
    results = out / "nnunet" / "nnUNet_results" / "Dataset017_BTCV"
    folders = {"nnunet": results / "nnUNetTrainerBaseline__nnUNetPlansCPU__3d_fullres",
               "nnunet_resenc_m": results / "nnUNetTrainerBaseline__nnUNetResEncUNetMPlansCPU__3d_fullres"}
    for folder in folders.values():
        assert fold_state(folder / "fold_0") == FoldState.DONE
    record = json.loads((out / "run.json").read_text())
    assert record["steps"]["plan/nnUNetResEncUNetMPlans"]["status"] == "done"
    assert record["models"]["nnunet_resenc_m"]["plans"] == "nnUNetResEncUNetMPlansCPU"
    assert sorted(p.name for p in (out / "predictions" / "nnunet_resenc_m").glob("*.nii.gz")) == [
        "img0001.nii.gz", "img0002.nii.gz"]
    # the cost columns against independent counts: parameters of the trained weights, the logged epoch times
    with open(out / "table.csv", newline="") as handle:
        rows = {r["model"]: r for r in csv.DictReader(handle)}
    assert list(rows) == ["nnU-Net", "nnU-Net ResEnc M"]
    costs = record["costs"]["models"]
    for name, display in (("nnunet", "nnU-Net"), ("nnunet_resenc_m", "nnU-Net ResEnc M")):
        weights = torch.load(folders[name] / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                             weights_only=False)["network_weights"]
        # the state dict names shared tensors several times (decoder.encoder is the encoder; a conv block holds its
        # conv as .conv and in .all_modules); torch.load keeps them shared: count each storage once
        parameters = sum({(v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)): v.numel()
                          for v in weights.values()}.values())
        assert int(rows[display]["parameters"]) == parameters == costs[name]["parameters"]
        assert float(rows[display]["gflops_per_patch"]) > 0
        epochs = read_epochs(folders[name] / "fold_0")
        assert float(rows[display]["median_epoch_s"]) == pytest.approx(epochs[0].seconds, abs=1e-3)
        assert float(rows[display]["training_h"]) == pytest.approx(epochs[0].seconds / 3600, abs=1e-5)
        resources = json.loads((folders[name] / "fold_0" / "nnunet_poolskip_resources.json").read_text())
        assert float(rows[display]["peak_memory_mib"]) == pytest.approx(resources["peak_rss_mib"], abs=0.1)
        assert resources["peak_rss_mib"] > 50 and resources["device"] == "cpu"
    table = (out / "table.md").read_text()
    assert "## What each model costs" in table and "`nnUNetResEncUNetMPlansCPU`" in table

    # a rerun: the plans are reused, not made again (and nothing is retrained)
    stamps = {p.name: p.stat().st_mtime_ns for p in preprocessed.glob("*.json")}
    rerun = subprocess.run([str(BIN / "nnunet-poolskip"), *args], env=env, capture_output=True, text=True,
                           timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert {p.name: p.stat().st_mtime_ns for p in preprocessed.glob("*.json")} == stamps
    record = json.loads((out / "run.json").read_text())
    for step in ("plan/nnUNetResEncUNetMPlans", "derive_plans/nnUNetResEncUNetMPlans", "plan_and_preprocess"):
        assert "skipped_last_invocation" in record["steps"][step], step
    assert len(record["steps"]["plan/nnUNetResEncUNetMPlans"]["attempts"]) == 1

    # derived plans that are not what this run's preset gives: refused before any work, naming model and plans
    changed = json.loads(derived.read_text())
    changed["configurations"]["3d_fullres"]["batch_size"] = 5
    derived.write_text(json.dumps(changed))
    refused = subprocess.run([str(BIN / "nnunet-poolskip"), *args, "--stage", "prepare"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "model(s) nnunet_resenc_m (plans nnUNetResEncUNetMPlansCPU)" in refused.stderr
    assert "differs from what preset cpu_small derives" in refused.stderr
