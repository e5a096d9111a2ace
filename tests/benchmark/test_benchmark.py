"""``nnunet-poolskip benchmark``: model -> trainer mapping, profiles, fold states and resume commands, the
environment of each step, the SLURM scripts (syntax, commands, folds, trainers, and their resume logic run
against a stand-in nnUNetv2_train), and the scaled-down benchmark end to end through the real command
lines, killed with SIGKILL mid-training and resumed."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN
from nnunet_poolskip.benchmark.profiles import resolve_settings
from nnunet_poolskip.benchmark.protocol import MODELS, PAPER_MODELS, parse_models, resolve_model
from nnunet_poolskip.benchmark.training_runs import (FoldState, checkpoint_readable, epoch_times, fold_state,
                                                     set_aside_unreadable_checkpoints, train_command)
from nnunet_poolskip.benchmark.workspace import Workspace, parse_dataset, step_environment
from nnunet_poolskip.cli import main


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
    demo = resolve_settings("demo", epochs=2, folds=[0], num_gpus=None)
    assert demo.short_schedule and demo.reduced_folds and demo.smoke and demo.device == "cpu"
    assert (demo.parallel_trainings, paper.parallel_trainings, demo.plans_preset) == (2, 1, "cpu_demo")
    assert demo.overridden == ["epochs", "folds"]
    assert demo.override_arguments() == ["--epochs", "2", "--folds", "0"]
    with pytest.raises(ValueError, match="--num-gpus > 1 .* --device cuda"):
        resolve_settings("demo", num_gpus=2)
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        resolve_settings("paper", epochs=0)
    with pytest.raises(ValueError, match="distinct"):
        resolve_settings("paper", folds=[0, 0])


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
    import torch

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
    assert epoch_times(tmp_path) == [4.25, 3.5]
    assert epoch_times(tmp_path, newer_than=time.time() + 60) == []


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
    env, _ = step_environment(base, ws, demo, "plan")  # planning crashes with nnUNet_n_proc_DA=0
    assert "nnUNet_n_proc_DA" not in env and "NNUNET_POOLSKIP_EPOCHS" not in env


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
    assert re.search(r'^nnUNetv2_train 218 3d_fullres "\$FOLD" -tr "\$TRAINER" -p nnUNetPlans -device cuda '
                     r'-num_gpus 2 ', train, re.M)
    env_sh = (folder / "env.sh").read_text()
    assert "unset NNUNET_POOLSKIP_EPOCHS" in env_sh and "NNUNET_POOLSKIP_EPOCHS=" not in train
    assert f"export nnUNet_results={tmp_path / 'work' / 'nnUNet_results'}" in env_sh
    assert re.search(r"^export nnUNet_extTrainer=\S*trainers", env_sh, re.M)
    for stage in ("prepare", "finish"):
        line = [l for l in (folder / f"{stage}.sbatch").read_text().splitlines()
                if l.startswith("nnunet-poolskip benchmark")]
        assert len(line) == 1 and line[0].endswith(f"--stage {stage}")
        assert "--dataset amos" in line[0] and "--profile paper" in line[0] and "--num-gpus 2" in line[0]
    submit = (folder / "submit.sh").read_text()
    assert 'sbatch --parsable --dependency=afterok:"$prepare" train.sbatch' in submit
    assert 'sbatch --parsable --dependency=afterok:"$train" finish.sbatch' in submit


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
    # a stand-in nnUNetv2_train that records its arguments, first on PATH
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls.txt"
    fake = fake_bin / "nnUNetv2_train"
    fake.write_text(f'#!/bin/bash\necho "$NNUNET_POOLSKIP_EPOCHS $*" >> {calls}\n')
    fake.chmod(0o755)
    env_sh = folder / "env.sh"
    env_sh.write_text(env_sh.read_text() + f'\nexport PATH={fake_bin}:"$PATH"\n')
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


@pytest.mark.parametrize("args, message", [
    (["--profile", "paper"], "--raw is required: the BTCV download folder"),
    (["--profile", "paper", "--raw", "/nonexistent/btcv"], "--raw /nonexistent/btcv is not a folder"),
    (["--profile", "demo", "--models", "nnunet,unet"], "unknown model 'unet'"),
    (["--profile", "demo", "--models", "nnunet_stock"], "ignore the short schedule"),
    (["--profile", "paper", "--num-gpus", "2", "--device", "cpu"], "--num-gpus > 1"),
    (["--profile", "demo", "--dataset", "Dataset123_Missing"], "Dataset123_Missing not found in nnUNet_raw"),
    (["--profile", "demo", "--stage", "finish"], "not converted yet"),
    (["--profile", "demo", "--modality", "ct"], "--modality applies to --dataset amos only"),
    (["--profile", "demo", "--parallel-trainings", "0"], "--parallel-trainings must be >= 1"),
    (["--profile", "paper", "--parallel-trainings", "2"], "--parallel-trainings > 1 shares the CPUs"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "results"
    assert main(["benchmark", *args, "--output", str(out), "--work", str(tmp_path / "work")]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------ end to end
SCALED_DOWN = ["--profile", "demo", "--models", "nnunet,nnunet_poolskip", "--folds", "0", "1", "--cases", "8",
               "--phantom-size", "32", "48", "48", "--epochs", "2", "--iterations", "2", "--val-iterations", "1",
               "--preprocess-processes", "1", "--evaluate-processes", "2", "--plans-preset", "cpu_small"]
"""The demo profile's code path at CI scale: 2 models, 2 folds, 2 epochs of 2 iterations, 8 small phantoms, the
tests' tiny CPU plans (the demo's own preset has small patches, whose sliding-window validation costs more)."""


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


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses PR_SET_PDEATHSIG")
def test_scaled_down_benchmark_killed_mid_training_then_resumed(tmp_path):
    split = tmp_path / "split.json"  # 2 test cases, 6 train+val cases, the paper's 5 folds
    split.write_text(json.dumps({"dataset": "BTCV", "test": ["img0001", "img0002"],
                                 "train": [f"img{i:04d}" for i in range(3, 9)], "folds": {"n_folds": 5, "seed": 1}}))
    out = tmp_path / "results"
    argv = [str(BIN / "nnunet-poolskip"), "benchmark", *SCALED_DOWN, "--split-file", str(split), "--output", str(out)]
    sequential = argv + ["--parallel-trainings", "1"]  # the demo trains two folds at a time; the kill needs one
    env = clean_env()
    models = out / "nnunet" / "nnUNet_results" / "Dataset017_BTCV"
    fold0 = models / "nnUNetTrainerBaseline__nnUNetPlansCPU__3d_fullres" / "fold_0"
    fold1 = fold0.parent / "fold_1"

    # 1) run until the second fold has finished its first epoch, then SIGKILL the runner only
    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen(sequential, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        # nnU-Net logs "Epoch 1" after saving the checkpoints of epoch 0: a complete checkpoint_best.pth exists
        while not any(re.search(r": Epoch 1\s*$", p.read_text(), re.M) for p in fold1.glob("training_log_*.txt")):
            assert proc.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
            assert time.time() < deadline, "the second fold never reached its second epoch"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state_at_kill = fold_state(fold1)
        # PR_SET_PDEATHSIG: the training the runner started dies with it (no orphan writes into fold_1)
        deadline = time.time() + 30
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert group_alive(proc.pid) == []
    finally:
        if proc.poll() is None or group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert fold_state(fold0) == FoldState.DONE and state_at_kill != FoldState.DONE
    checkpoint0 = fold0 / "checkpoint_final.pth"
    before = (checkpoint0.stat().st_mtime_ns, checkpoint0.read_bytes(), sorted(fold0.glob("training_log_*.txt")))
    assert not (out / "table.md").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["steps"]["train/nnUNetTrainerBaseline/fold_1"]["status"] == "running"  # as the kill left it

    # 2) rerun (the demo's two trainings at a time: not part of the protocol): completes without retraining fold 0
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert (checkpoint0.stat().st_mtime_ns, checkpoint0.read_bytes(), sorted(fold0.glob("training_log_*.txt"))) \
        == before
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
    assert float(rows[1]["delta_dice"]) == pytest.approx(float(rows[1]["dice_percent"]) - float(rows[0]["dice_percent"]),
                                                         abs=2e-3)
    table = (out / "table.md").read_text()
    assert "SMOKE-SCALE RUN ON SYNTHETIC PHANTOMS: NOT A REPRODUCTION" in table
    assert "2 fold(s) (0 1) instead of the paper's 5" in table and "Status: complete" in table
    assert (out / "per_organ_dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table in rerun.stdout  # the run ends by printing the table
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
        assert any(f"nnunet-poolskip: {threads} torch thread(s)" in p.read_text() for p in logs)
    assert "NNUNET_POOLSKIP_THREADS" not in steps["train/nnUNetTrainerBaseline/fold_0"]["env"]  # first run: one at a time

    # 4) another protocol into the same folder is refused before any work
    assert main(["benchmark", *SCALED_DOWN, "--epochs", "3", "--split-file", str(split), "--output", str(out)]) == 2

    # 5) a fold that is not finished (its final validation missing): no table without saying so
    summary1 = models / "nnUNetTrainerPoolSkip__nnUNetPlansCPU__3d_fullres" / "fold_1" / "validation" / "summary.json"
    summary1.rename(summary1.with_name("summary.json.moved"))
    finish = ["benchmark", *SCALED_DOWN, "--split-file", str(split), "--output", str(out), "--stage", "finish"]
    assert main(finish) == 2 and not (out / "table.md").exists()  # refused, and the old table is gone
    assert main(finish + ["--keep-going"]) == 1
    table = (out / "table.md").read_text()
    assert "**INCOMPLETE RUN.**" in table and "nnunet_poolskip (fold 1 validate)" in table
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["run_complete"]) for r in rows] == [("nnU-Net", "false")]
