"""What the benchmark prints while it runs: one line per epoch read from nnU-Net's own training log, the time
left, the "still running" heartbeat of long steps, and the lock file it removes when it ends."""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from nnunet_poolskip.benchmark import steps as steps_module
from nnunet_poolskip.benchmark.protocol import MODELS
from nnunet_poolskip.benchmark.runinfo import RunRecord
from nnunet_poolskip.benchmark.steps import Steps
from nnunet_poolskip.benchmark.train import Training, _EpochWatcher, epoch_line
from nnunet_poolskip.benchmark.training_log import parse_training_log, read_epochs
from nnunet_poolskip.benchmark.training_runs import TrainingRun
from nnunet_poolskip.commands import benchmark as benchmark_command

# What nnU-Net 2.8.1 writes (nnUNetTrainer.on_train_epoch_start / on_epoch_end, print_to_log_file: every
# argument followed by a space), with NumPy 2 scalars in the pseudo Dice list; epoch 2 is still running.
NNUNET_LOG = """\
2026-12-01 02:33:44.306268: nnunet-poolskip schedule from the environment: {'num_epochs': 3} 
2026-12-01 02:33:52.178530:  
2026-12-01 02:33:52.178590: Epoch 0 
2026-12-01 02:33:52.178663: Current learning rate: 0.01 
2026-12-01 02:45:18.486796: train_loss 0.9786 
2026-12-01 02:45:18.487022: val_loss 0.334 
2026-12-01 02:45:18.487172: Pseudo dice [np.float32(0.0), np.float32(0.5), np.float32(nan)] 
2026-12-01 02:45:18.487268: Epoch time: 686.31 s 
2026-12-01 02:45:18.487314: Yayy! New best EMA pseudo Dice: 0.25 
2026-12-01 02:45:22.448545:  
2026-12-01 02:45:22.448761: Epoch 1 
2026-12-01 02:45:22.454763: Current learning rate: 0.0069 
2026-12-01 02:46:22.486796: train_loss -0.4121 
2026-12-01 02:46:22.487022: val_loss -0.3911 
2026-12-01 02:46:22.487172: Pseudo dice [np.float32(0.8123), np.float32(0.25), np.float32(0.1)] 
2026-12-01 02:46:22.487268: Epoch time: 60.04 s 
2026-12-01 02:46:25.448545:  
2026-12-01 02:46:25.448761: Epoch 2 
2026-12-01 02:46:25.454763: Current learning rate: 0.0037 
2026-12-01 02:46:30.486796: train_loss -0.5 
"""


def test_training_log_gives_one_record_per_finished_epoch():
    records = parse_training_log(NNUNET_LOG)
    assert [(r.epoch, r.seconds, r.train_loss, r.val_loss) for r in records] == [
        (0, 686.31, 0.9786, 0.334), (1, 60.04, -0.4121, -0.3911)]
    assert records[0].pseudo_dice[:2] == [0.0, 0.5] and math.isnan(records[0].pseudo_dice[2])
    assert records[0].mean_pseudo_dice == pytest.approx(0.25)  # nan left out, as nnU-Net's mean_fg_dice
    assert records[1].mean_pseudo_dice == pytest.approx((0.8123 + 0.25 + 0.1) / 3)
    # NumPy < 2 writes plain numbers; a resumed run's log starts at the epoch it continues from
    old_numpy = "x: Epoch 7 \nx: train_loss -0.1 \nx: Pseudo dice [0.5, nan] \nx: Epoch time: 2.0 s \n"
    (record,) = parse_training_log(old_numpy.replace("x:", "2024-01-01 00:00:01.000001:"))
    assert (record.epoch, record.pseudo_dice[0], record.mean_pseudo_dice, record.val_loss) == (7, 0.5, 0.5, None)


def test_newest_log_of_a_fold_is_read(tmp_path):
    (tmp_path / "training_log_2026_12_1_02_00_00.txt").write_text(NNUNET_LOG)
    assert [record.seconds for record in read_epochs(tmp_path)] == [686.31, 60.04]
    assert read_epochs(tmp_path, newer_than=time.time() + 60) == []
    assert read_epochs(tmp_path / "missing") == []


def test_epoch_line_names_model_fold_seed_epoch_loss_dice_speed_and_time_left():
    line = epoch_line("nnunet", 1, 4, 10, -0.41234, 0.61249, 12.34, 330.0)
    assert line == ("   nnunet fold 1 epoch 4/10: train loss -0.4123, pseudo Dice 0.612, 12.3 s/epoch, "
                    "~5.5 min left in all")
    assert epoch_line("vnet", 0, 1, 3, None, None, 5.0, None, seed=2) == (
        "   vnet fold 0 seed 2 epoch 1/3: train loss ?, pseudo Dice ?, 5.0 s/epoch, estimate after the first epoch")


def demo_config(tmp_path: Path, *extra: str):
    parser = argparse.ArgumentParser()
    benchmark_command.add_arguments(parser)
    args = parser.parse_args(["--profile", "demo", "--output", str(tmp_path / "out"), *extra])
    return benchmark_command.build_config(args)


@pytest.mark.parametrize("parallel", [1, 2])
def test_watcher_prints_each_finished_epoch_once_with_the_time_left(tmp_path, parallel):
    config = demo_config(tmp_path, "--models", "nnunet,vnet", "--epochs", "3", "--folds", "0", "1",
                         "--parallel-trainings", str(parallel))
    out = io.StringIO()
    steps = Steps(config, RunRecord(tmp_path / "run.json"), out)
    training = Training(config, steps)
    fold = tmp_path / "fold_0"
    fold.mkdir()
    runs = [TrainingRun(MODELS["nnunet"], "nnUNetTrainerBaseline", 0, fold),
            TrainingRun(MODELS["nnunet"], "nnUNetTrainerBaseline", 1, tmp_path / "fold_1"),
            TrainingRun(MODELS["vnet"], "nnUNetTrainerVNet", 0, tmp_path / "fold_v")]
    training.pending = runs[1:]  # runs[0] is training
    watcher = _EpochWatcher(training, runs[0], time.time())
    assert training.time_left() is None  # nothing measured yet
    log = fold / "training_log_2026_12_1_02_00_00.txt"
    log.write_text(NNUNET_LOG.split("2026-12-01 02:46:22.486796")[0])  # epoch 0 finished, epoch 1 running
    watcher.poll()
    watcher.poll()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "   nnunet fold 0 epoch 1/3: train loss 0.9786, pseudo Dice 0.250, 686.3 s/epoch, ~")
    # 2 more epochs of this run and 3 of each other run at the measured 686.31 s, shared by the parallel
    # trainings; start-up, validation and prediction are estimated by what this run spent outside epochs (~0 s)
    assert training.time_left() == pytest.approx((2 + 3 + 3) * 686.31 / parallel, abs=1.0)
    log.write_text(NNUNET_LOG)
    watcher.poll()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("   nnunet fold 0 epoch 2/3: train loss -0.4121, pseudo Dice 0.387, "
                                                   "60.0 s/epoch, ~")
    assert training.steps.record.data["first_epoch_seconds"] == {"nnUNetTrainerBaseline": 686.31}
    # the run took 800 s: 53.65 s outside its epochs (start-up, final validation) per run and per prediction
    watcher.started = time.time() - 800
    watcher.close()
    assert training.active == []
    mean_epoch = (686.31 + 60.04) / 2
    overhead = 800 - 686.31 - 60.04
    assert training.time_left() == pytest.approx(2 * (3 * mean_epoch + overhead) / parallel + 2 * overhead, rel=1e-3)


def test_silent_steps_print_a_still_running_line(tmp_path, monkeypatch):
    config = demo_config(tmp_path)
    out = io.StringIO()
    steps = Steps(config, RunRecord(tmp_path / "run.json"), out)
    monkeypatch.setattr(steps_module, "HEARTBEAT_SECONDS", 1.0)
    steps.run("sleeper", "a slow step", [sys.executable, "-c", "import time; time.sleep(4.5)"])
    text = out.getvalue()
    assert text.startswith("-> a slow step\n")
    assert "   ... still running: a slow step (" in text
    assert (config.output / "logs" / "sleeper.log").is_file()


def test_lock_file_is_removed_when_the_run_ends_and_a_second_runner_is_refused(tmp_path):
    from nnunet_poolskip.benchmark.config import BenchmarkError
    from nnunet_poolskip.benchmark.runner import BenchmarkRunner

    config = demo_config(tmp_path)
    config.output.mkdir(parents=True)
    first, second = BenchmarkRunner(config, io.StringIO()), BenchmarkRunner(config, io.StringIO())
    handle = first._lock()
    lock = config.output / ".benchmark.lock"
    assert lock.is_file()
    with pytest.raises(BenchmarkError, match="another benchmark is running"):
        second._lock()
    first._unlock(handle)
    assert not lock.exists()
    handle = second._lock()  # free again
    assert os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
    second._unlock(handle)
    assert not lock.exists()


FAKE_TRAIN = """\
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
trainer, plans, fold = args[args.index("-tr") + 1], args[args.index("-p") + 1], args[2]
folder = Path(os.environ["nnUNet_results"]) / "Dataset017_BTCV" / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"
folder.mkdir(parents=True, exist_ok=True)
started = time.time()
(folder / "training_log_2026_1_1_00_00_00.txt").write_text(
    "2026-01-01 00:00:00.000001: Epoch 0 \\n2026-01-01 00:00:01.000001: train_loss -0.5 \\n"
    "2026-01-01 00:00:01.000002: Pseudo dice [np.float32(0.5)] \\n2026-01-01 00:00:01.000003: Epoch time: 1.0 s \\n")
time.sleep(3)
(folder / "fake_run.json").write_text(json.dumps({"started": started, "ended": time.time(),
                                                   "threads": os.environ.get("NNUNET_POOLSKIP_THREADS")}))
"""


def test_parallel_trainings_run_side_by_side_with_their_share_of_the_threads(tmp_path, monkeypatch):
    from nnunet_poolskip.benchmark import train as train_module

    fake = tmp_path / "fake_nnUNetv2_train"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_TRAIN)
    fake.chmod(0o755)
    monkeypatch.setattr(train_module, "executable", lambda name: str(fake) if name == "nnUNetv2_train" else name)
    config = demo_config(tmp_path, "--models", "nnunet,vnet", "--epochs", "1", "--folds", "0", "1",
                         "--parallel-trainings", "2")
    (config.workspace.raw / "Dataset017_BTCV").mkdir(parents=True)
    out = io.StringIO()
    training = Training(config, Steps(config, RunRecord(tmp_path / "run.json"), out))
    training.run()
    records = [json.loads(p.read_text()) for p in config.workspace.results.rglob("fake_run.json")]
    assert len(records) == 4
    assert {r["threads"] for r in records} == {str(max(1, (os.cpu_count() or 1) // 2))}
    # at every start, how many runs were going on: never more than 2, and two did overlap
    concurrent = [sum(r["started"] <= s["started"] < r["ended"] for r in records) for s in records]
    assert max(concurrent) == 2
    text = out.getvalue()
    assert text.count("-> train ") == 4 and text.count("   done: train ") == 4
    assert "   nnunet fold 1 epoch 1/1: train loss -0.5000, pseudo Dice 0.500, 1.0 s/epoch, ~" in text
