"""The jobs of ``benchmark --emit slurm`` on a real SLURM: a single-node cluster on this machine, started by
scripts/slurm_local_cluster.sh (root and apt-get needed; the test skips, saying why, where it cannot start one).

A tiny benchmark (2 models, the scaled-down settings of test_benchmark.py; 2 folds, or with ``--seeds`` 1 fold x
2 seeds) is submitted with its submit.sh; a second submit.sh is refused while the first one's jobs are queued;
the training array is cancelled mid-training (scancel), and the finish job, whose dependency can no longer be
satisfied, is cancelled with it; then submit.sh is run again: prepare -> train -> finish complete, the folds
finished before the cancel are not retrained, the interrupted one continues, and the table is built.

Exit states come from ``scontrol show job``: without an accounting database ``sacct`` knows nothing, while
slurmctld keeps finished jobs for MinJobAge seconds (3600 in the local cluster's slurm.conf, SLURM's default
300 elsewhere) -- enough for this test, and no extra daemon or file format to depend on. The jobs' own logs
(jobs/logs/) and the benchmark's run.json are checked too.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest
from conftest import BIN, run_cli
from test_benchmark import SCALED_DOWN, clean_env

from nnunet_poolskip.benchmark.protocol import MODELS
from nnunet_poolskip.benchmark.slurm import SUBMITTED
from nnunet_poolskip.benchmark.training_runs import FoldState, checkpoint_readable, fold_state

CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_local_cluster.sh"
REQUIRED = os.environ.get("NNUNET_POOLSKIP_SLURM_REQUIRED") == "1"
"""Set by .ci/run once it has started the cluster: from then on a missing cluster fails instead of skipping."""
TIMEOUT_S = 1500  # per wait; a quiet 2-core machine needs a few minutes for the whole test

# 3 epochs instead of 2: the cancel lands in the second or third epoch, with a checkpoint, well before the end
ARGS = [*SCALED_DOWN, "--epochs", "3"]
MODEL_NAMES = ("nnunet", "nnunet_poolskip")
PLANS = "nnUNetPlansCPU"
FOLDS, SEEDS = (0, 1), (0,)
"""One cluster run of 2 models x 2 folds x 1 seed (4 array tasks): the fold and the seed folders, the --seeds
path of the jobs. The spread over several seeds is checked without SLURM (tests/benchmark/test_benchmark.py),
so that CI pays for one SLURM run."""


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (NNUNET_POOLSKIP_SLURM_REQUIRED=1: .ci/run started a cluster)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_cluster():
    """A single-node SLURM cluster written by scripts/slurm_local_cluster.sh: the one up, or one started here
    (and stopped afterwards). Never a site's own cluster: the script refuses any slurm.conf it did not write."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    status = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode == 0:
        yield
        return
    if os.geteuid() != 0:
        unavailable(f"no local SLURM cluster ({status.stdout.strip()}) and starting one needs root: "
                    f"run `sudo bash {CLUSTER_SCRIPT.relative_to(CLUSTER_SCRIPT.parents[1])}` first")
    start = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if start.returncode != 0:
        unavailable("scripts/slurm_local_cluster.sh could not start a local SLURM cluster: "
                    + (start.stderr.strip() or start.stdout.strip())[-2000:])
    try:
        yield
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------ SLURM helpers
def submit(jobs: Path, env: Dict[str, str]) -> Dict[str, str]:
    """Run the emitted submit.sh; returns its job ids {"prepare": ..., "train": ..., "finish": ...}."""
    proc = subprocess.run(["bash", str(jobs / "submit.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"submitted: prepare (\d+), train (\d+) \(array of \d+ tasks\), finish (\d+)", proc.stdout)
    assert match, proc.stdout
    ids = dict(zip(("prepare", "train", "finish"), match.groups()))
    assert (jobs / SUBMITTED).read_text().split() == list(ids.values())
    return ids


def active(ids: Dict[str, str]) -> List[str]:
    """The jobs (array tasks as ID_TASK) of ``ids`` that are still pending, running or completing."""
    proc = subprocess.run(["squeue", "--noheader", "--format=%i", "--jobs=" + ",".join(ids.values())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def job_records(job_id: str) -> List[Dict[str, str]]:
    """``scontrol show job``: one record per job, or per task of an array job (pending tasks: one record)."""
    proc = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"scontrol knows no job {job_id}: {proc.stderr}"
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()]


def end_states(ids: Dict[str, str]) -> Dict[str, List[Tuple[str, str, str, str]]]:
    """(array task, state, exit code, reason) of every finished job, by role."""
    return {role: sorted((r.get("ArrayTaskId", ""), r["JobState"], r["ExitCode"], r["Reason"])
                         for r in job_records(job_id)) for role, job_id in ids.items()}


def task_states(array_id: str, n_tasks: int) -> List[str]:
    """The state of each task of an array job; tasks not yet started share one record (ArrayTaskId=2-3)."""
    states = [""] * n_tasks
    for record in job_records(array_id):
        first, _, last = record["ArrayTaskId"].partition("-")
        for task in range(int(first), int(last or first) + 1):
            states[task] = record["JobState"]
    return states


def in_second_epoch(fold: Path) -> bool:
    """nnU-Net logs "Epoch 1" after saving epoch 0's checkpoints, "Training done." at the end of the last epoch."""
    logs = [p.read_text() for p in fold.glob("training_log_*.txt")]
    return any(re.search(r": Epoch 1\s*$", log, re.M) and "Training done." not in log for log in logs)


def wait_until(condition, what: str, jobs: Path, timeout: float = TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((jobs / "logs").glob("*.out")))
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(0.5)


# ------------------------------------------------------------------- submit.sh against stand-in commands
def test_submit_script_chains_the_jobs_and_refuses_while_its_last_submission_is_queued(tmp_path):
    """No cluster needed: sbatch and squeue are stand-ins that record their arguments."""
    from nnunet_poolskip.cli import main

    jobs = tmp_path / "jobs"
    assert main(["benchmark", "--profile", "demo", "--models", "nnunet", "--folds", "0", "--work", str(tmp_path / "w"),
                 "--output", str(tmp_path / "r"), "--emit", "slurm", str(jobs)]) == 0
    assert "#SBATCH --output=" + str(jobs / "logs" / "poolskip-prepare_%j.out") in (jobs / "prepare.sbatch").read_text()
    assert "#SBATCH --output=" + str(jobs / "logs" / "poolskip-finish_%j.out") in (jobs / "finish.sbatch").read_text()
    train = (jobs / "train.sbatch").read_text()
    assert "#SBATCH --output=" + str(jobs / "logs" / "poolskip-train_%A_%a.out") in train
    for name in ("train.sbatch", "finish.sbatch"):
        assert "#SBATCH --kill-on-invalid-dep=yes" in (jobs / name).read_text()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls, queue = tmp_path / "sbatch_calls.txt", tmp_path / "queue.txt"
    # sbatch --parsable prints "id;cluster" on multi-cluster sites; ids count up from 100
    (fake_bin / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n'
                                     f'echo "$((100 + $(wc -l < {calls})));cluster1"\n')
    (fake_bin / "squeue").write_text(f"#!/bin/bash\ncat {queue}\n")  # the array job id per task, as %F does
    for tool in ("sbatch", "squeue"):
        (fake_bin / tool).chmod(0o755)
    queue.write_text("")
    env = clean_env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    def run_submit():
        return subprocess.run(["bash", str(jobs / "submit.sh")], env=env, capture_output=True, text=True, timeout=60)

    proc = run_submit()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "submitted: prepare 101, train 102 (array of 1 tasks), finish 103\n"
    assert calls.read_text().splitlines() == ["--parsable prepare.sbatch",
                                              "--parsable --dependency=afterok:101 train.sbatch",
                                              "--parsable --dependency=afterok:102 finish.sbatch"]
    assert (jobs / SUBMITTED).read_text() == "101\n102\n103\n"
    queue.write_text("7\n102\n102\n1020\n")  # another job, two tasks of our array, a job id that only starts alike
    proc = run_submit()
    assert proc.returncode == 1 and proc.stdout == ""
    assert "still queued or running: 102; wait for them or scancel them first" in proc.stderr
    assert len(calls.read_text().splitlines()) == 3 and (jobs / SUBMITTED).read_text() == "101\n102\n103\n"
    queue.write_text("7\n1020\n")  # our jobs have left the queue: a resubmission goes through
    proc = run_submit()
    assert proc.returncode == 0 and (jobs / SUBMITTED).read_text() == "104\n105\n106\n"


# ------------------------------------------------------------------------------------------------ test
class Run(NamedTuple):
    model: str
    trainer: str
    fold: int
    seed: Optional[int]
    folder: Path  # nnU-Net's fold folder

    @property
    def label(self) -> str:
        """How the train task's log names it."""
        return f"{self.model} fold {self.fold}" + ("" if self.seed is None else f" seed {self.seed}")


def expected_runs(results: Path, folds: Sequence[int], seeds: Optional[Sequence[int]]) -> List[Run]:
    """Every array task, in the array's order: seed by seed (a seed's runs in nnUNet_results/seed_<s>), then
    model by model, then fold by fold."""
    runs = []
    for seed in seeds or (None,):
        seed_results = results if seed is None else results / f"seed_{seed}"
        for name in MODEL_NAMES:
            trainer = MODELS[name].trainer_for("btcv")
            for fold in folds:
                runs.append(Run(name, trainer, fold, seed, seed_results / "Dataset017_BTCV" /
                                f"{trainer}__{PLANS}__3d_fullres" / f"fold_{fold}"))
    return runs


def fold_fingerprint(fold: Path) -> tuple:
    """What retraining a finished fold would change: its final checkpoint's bytes and time, its training logs."""
    final = fold / "checkpoint_final.pth"
    return final.stat().st_mtime_ns, final.read_bytes(), sorted(p.name for p in fold.glob("training_log_*.txt"))


def state_as_the_next_task_sees_it(fold: Path) -> FoldState:
    """The fold's state once a checkpoint that the cancel cut short is set aside, as a resubmitted task does
    first: computed here from the files, without moving them."""
    def usable(name: str) -> bool:
        return (fold / name).is_file() and checkpoint_readable(fold / name)

    if usable("checkpoint_final.pth"):
        return FoldState.DONE if (fold / "validation" / "summary.json").is_file() else FoldState.VALIDATE
    if usable("checkpoint_latest.pth") or usable("checkpoint_best.pth"):
        return FoldState.RESUME
    return FoldState.NEW


def task_log(jobs: Path, array_id: str, task: int) -> str:
    return (jobs / "logs" / f"poolskip-train_{array_id}_{task}.out").read_text()


def foreground_dice(summary: Path) -> float:
    return json.loads(summary.read_text())["foreground_mean"]["dice"]


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local SLURM cluster is Debian's")
def test_emitted_jobs_on_a_local_slurm_cancelled_mid_training_then_resubmitted(tmp_path, local_cluster):
    folds, seeds = FOLDS, SEEDS
    split = tmp_path / "split.json"  # 2 test cases, 6 train+val cases, the paper's 5 folds
    split.write_text(json.dumps({"dataset": "BTCV", "test": ["img0001", "img0002"],
                                 "train": [f"img{i:04d}" for i in range(3, 9)], "folds": {"n_folds": 5, "seed": 1}}))
    out, work, jobs = tmp_path / "results", tmp_path / "work", tmp_path / "jobs"
    env = clean_env()
    seed_args = ["--seeds", *map(str, seeds)] if seeds else []
    run_cli(["nnunet-poolskip", "benchmark", *ARGS, "--folds", *map(str, folds), *seed_args, "--split-file",
             str(split), "--output", str(out), "--work", str(work), "--emit", "slurm", str(jobs)], env)
    runs = expected_runs(work / "nnUNet_results", folds, seeds)
    train_script = (jobs / "train.sbatch").read_text()
    assert re.findall(r"^\s*(\d+)\) MODEL=(\w+); TRAINER=(\w+); FOLD=(\d+)(?:; SEED=(\d+); RESULTS=\S+)? ;;$",
                      train_script, re.M) == [(str(i), r.model, r.trainer, str(r.fold), "" if r.seed is None
                                               else str(r.seed)) for i, r in enumerate(runs)]

    # 1) submit; a second submission is refused while these jobs are queued
    first = submit(jobs, env)
    again = subprocess.run(["bash", str(jobs / "submit.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "still queued or running" in again.stderr
    assert (jobs / SUBMITTED).read_text().split() == list(first.values())  # nothing submitted, record kept

    # 2) cancel the array once a task has completed and another fold is in its second epoch (it has a checkpoint)
    def cancel_point() -> bool:
        assert active(first), "every job ended before the cancel point:\n" + json.dumps(end_states(first))
        completed = "COMPLETED" in task_states(first["train"], len(runs))
        return completed and any(in_second_epoch(run.folder) for run in runs)

    wait_until(cancel_point, "a completed training task and another fold in its second epoch", jobs)
    subprocess.run(["scancel", first["train"]], check=True, timeout=60)
    wait_until(lambda: not active(first), "the cancelled array and the finish job to leave the queue", jobs,
               timeout=300)
    at_cancel = {run: state_as_the_next_task_sees_it(run.folder) for run in runs}
    done = [run for run in runs if at_cancel[run] == FoldState.DONE]
    interrupted = [run for run in runs if run not in done and any(run.folder.glob("training_log_*.txt"))]
    assert done and interrupted, at_cancel
    # a cancel that lands while nnU-Net writes a checkpoint leaves it cut short: the next task sets it aside
    cut_short = [run for run in interrupted if fold_state(run.folder) != at_cancel[run]]
    assert {at_cancel[run] for run in interrupted} & {FoldState.RESUME, FoldState.VALIDATE} or cut_short, at_cancel
    fingerprints = {run: fold_fingerprint(run.folder) for run in done}
    states = end_states(first)
    assert states["prepare"] == [("", "COMPLETED", "0:0", "None")]
    for run, state in zip(runs, task_states(first["train"], len(runs))):
        # a fold can be done (its files complete) while its process was still exiting when the cancel came
        assert state in (("COMPLETED", "CANCELLED") if run in done else ("CANCELLED",)), (run, states["train"])
        assert state != "COMPLETED" or fold_state(run.folder) == FoldState.DONE
    assert [(s, r) for _, s, _, r in states["finish"]] == [("CANCELLED", "DependencyNeverSatisfied")]
    assert not (out / "table.md").exists()

    # 3) resubmit: prepare skips its finished steps, the finished folds exit at once, the rest trains
    second = submit(jobs, env)
    wait_until(lambda: not active(second), "the resubmitted jobs to end", jobs)
    states = end_states(second)
    assert states["prepare"] == [("", "COMPLETED", "0:0", "None")]
    assert states["train"] == sorted((str(i), "COMPLETED", "0:0", "None") for i in range(len(runs)))
    assert states["finish"] == [("", "COMPLETED", "0:0", "None")], \
        (jobs / "logs" / f"poolskip-finish_{second['finish']}.out").read_text()[-3000:]
    for index, run in enumerate(runs):
        assert fold_state(run.folder) == FoldState.DONE
        log = task_log(jobs, second["train"], index)
        if run in done:
            assert log.splitlines()[-1] == f"{run.label}: done"  # exits at once: nothing retrained
            assert "Please cite the following paper when using nnU-Net" not in log
            assert fold_fingerprint(run.folder) == fingerprints[run]
        else:  # interrupted: continues from its checkpoint (--c), or only validates; not started: trains
            assert f"{run.label} ({run.trainer}): {at_cancel[run].value}\n" in log
            assert ("set aside the truncated checkpoint" in log) == (run in cut_short), log[:2000]
    if seeds:  # each seed trained in its own folder: nothing in the unseeded one
        assert not (work / "nnUNet_results" / "Dataset017_BTCV").exists()
    prepare_log = (jobs / "logs" / f"poolskip-prepare_{second['prepare']}.out").read_text()
    assert "-- nnUNetv2_plan_and_preprocess: plans and preprocessed data exist" in prepare_log
    assert "-> " not in prepare_log  # no step ran again

    # 4) the outputs of the finish job: predictions and summaries (per seed), the table, run.json
    with open(out / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["nnU-Net", "nnU-Net + Pool Skip"]
    for row, model in zip(rows, MODEL_NAMES):
        summary = json.loads((out / "summaries" / f"{model}.json").read_text())  # with seeds: their average
        assert [c["case"] for c in summary["per_case"]] == ["img0001", "img0002"]
        for key, metric in (("dice_percent", "dice"), ("nsd_percent", "nsd"), ("miou_percent", "iou")):
            assert math.isfinite(float(row[key])) and 0.0 <= float(row[key]) <= 100.0
            assert float(row[key]) == pytest.approx(100 * summary["foreground_mean"][metric], abs=1e-3)
        assert (row["folds"], row["epochs"], row["run_complete"]) == (" ".join(map(str, folds)), "3", "true")
        for seed in seeds or (None,):
            predictions = out / "predictions" / ("" if seed is None else f"seed_{seed}") / model
            assert sorted(p.name for p in predictions.glob("*.nii.gz")) == ["img0001.nii.gz", "img0002.nii.gz"]
        if seeds:
            per_seed = [100 * foreground_dice(out / "summaries" / f"seed_{seed}" / f"{model}.json") for seed in seeds]
            assert row["seeds"] == " ".join(map(str, seeds))
            assert float(row["dice_seed_mean_percent"]) == pytest.approx(statistics.mean(per_seed), abs=1e-3)
            if len(seeds) > 1:
                assert float(row["dice_seed_sd_percent"]) == pytest.approx(statistics.stdev(per_seed), abs=1e-3)
    assert "Status: complete" in (out / "table.md").read_text()
    record = json.loads((out / "run.json").read_text())
    assert [(i["argv"][-2:], i["status"]) for i in record["invocations"]] == [
        (["--stage", "prepare"], "stage prepare complete"), (["--stage", "prepare"], "stage prepare complete"),
        (["--stage", "finish"], "complete")]
    assert str(BIN) in (jobs / "env.sh").read_text()  # the jobs ran this environment's commands
