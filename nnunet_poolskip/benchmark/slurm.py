"""``benchmark --emit slurm DIR``: the same benchmark as SLURM jobs, for users with a cluster.

Writes into DIR:
    env.sh          the environment every job sources (nnU-Net folders, nnUNet_extTrainer, this Python's bin
                    on PATH, the profile's variables); the job scripts source it by absolute path
    prepare.sbatch  convert + plan_and_preprocess (+ derive-plans): ``nnunet-poolskip benchmark ... --stage prepare``
    train.sbatch    an array job, one task per model x fold (x seed with --seeds), each running ``nnUNetv2_train``
                    with the model's trainer (a seeded task with its seed's nnUNet_results and NNUNET_POOLSKIP_SEED);
                    a task whose fold is already done exits at once, an interrupted one continues (``--c``), the
                    same rules as the local runner (training_runs.py)
    finish.sbatch   predict + evaluate + compare: ``nnunet-poolskip benchmark ... --stage finish``
    submit.sh       submits the three, chained with ``--dependency=afterok`` (a job whose predecessor failed or
                    was cancelled is cancelled too); rerun it to resume; it refuses while jobs of its last
                    submission (ids in submitted_jobs.txt) are still queued or running
    logs/           the jobs' output: poolskip-prepare_<job>.out, poolskip-train_<array job>_<task>.out,
                    poolskip-finish_<job>.out
Nothing is submitted by the benchmark itself.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from nnunet_poolskip.benchmark.protocol import DEFAULT_PLANS
from nnunet_poolskip.benchmark.training_runs import NNUNET_SCHEDULE, planned_runs, train_command
from nnunet_poolskip.benchmark.workspace import RUN_VARIABLES, step_environment
from nnunet_poolskip.training.schedule import SEED_VARIABLE
from nnunet_poolskip.utilities.atomic import atomic_path

SCRIPT_NAMES = ("env.sh", "prepare.sbatch", "train.sbatch", "finish.sbatch", "submit.sh")
SUBMITTED = "submitted_jobs.txt"
"""submit.sh records the job ids of its last submission here (one a line: prepare, train array, finish)."""
# a job whose predecessor failed or was cancelled is cancelled too, instead of pending forever
# (DependencyNeverSatisfied) and blocking the resubmission
KILL_ON_INVALID_DEPENDENCY = "--kill-on-invalid-dep=yes"


def _exports(variables: Dict[str, str]) -> List[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in variables.items()]


def _header(job_name: str, logs: Path, options: Sequence[str], extra: Sequence[str] = (),
            array: bool = False) -> List[str]:
    # %A_%a (array job id, task index) only for the array: a plain job's %a is 4294967294
    output = f"{logs}/{job_name}_%A_%a.out" if array else f"{logs}/{job_name}_%j.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --output={output}"]
    lines += [f"#SBATCH {o}" for o in extra]
    lines += [f"#SBATCH {o}" for o in options]  # the user's options last: sbatch lets later ones win
    return lines


def emit_slurm(config, folder: os.PathLike, benchmark_argv: Sequence[str],
               sbatch_options: Sequence[str] = (), environ: Dict[str, str] = None) -> List[Path]:
    """Write the SLURM scripts of a benchmark into ``folder``; returns their paths.

    Args:
        config: the BenchmarkConfig of the benchmark (data set, settings, models, workspace).
        folder: where the scripts go (created).
        benchmark_argv: the ``nnunet-poolskip benchmark`` arguments that reproduce this benchmark (without
            ``--stage`` and ``--emit``), used by the prepare and finish jobs.
        sbatch_options: extra ``#SBATCH`` options for every job (``--partition=gpu``, ``--time=48:00:00``...).
        environ: the environment to derive the jobs' environment from (default os.environ).
    """
    folder = Path(folder).absolute()
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ if environ is None else environ)
    settings = config.settings
    _, common = step_environment(environ, config.workspace, settings, "other")
    _, train = step_environment(environ, config.workspace, settings, "train")
    train_only = {k: v for k, v in train.items() if common.get(k) != v}
    bin_dir = Path(sys.executable).parent
    gpu_lines = [f"--gres=gpu:{settings.num_gpus}"] if settings.device == "cuda" else []
    cli = shlex.join(["nnunet-poolskip", "benchmark", *benchmark_argv])

    env_sh = ["# sourced by every job of this benchmark (written by nnunet-poolskip benchmark --emit slurm)",
              f"export PATH={shlex.quote(str(bin_dir))}:\"$PATH\"",
              f"export NNUNET_POOLSKIP_PYTHON={shlex.quote(sys.executable)}",
              # a leftover short-schedule, seed or validation variable must never shorten, seed or change a run
              "unset " + " ".join(RUN_VARIABLES), *_exports(common)]

    prepare = _header("poolskip-prepare", logs, sbatch_options) + [
        "set -euo pipefail", f"source {shlex.quote(str(folder / 'env.sh'))}", f"{cli} --stage prepare"]

    runs = planned_runs(config.models, config.target.kind, settings.folds, settings.run_seeds)
    cases = []
    for index, (model, trainer, fold, seed) in enumerate(runs):
        seeded = "" if seed is None else (f"; SEED={seed}; RESULTS="
                                          f"{shlex.quote(str(config.workspace.results_for_seed(seed)))}")
        own_plans = "" if model.plans == DEFAULT_PLANS else f"; PLANS={shlex.quote(config.plans_for(model))}"
        cases.append(f"  {index}) MODEL={model.name}; TRAINER={trainer}; FOLD={fold}{seeded}{own_plans} ;;")
    placeholders = {"$FOLD", "$TRAINER", "$PLANS"}
    train_line = " ".join(f'"{t}"' if t in placeholders else shlex.quote(t) for t in train_command(
        "nnUNetv2_train", config.target.dataset_id, "$FOLD", "$TRAINER", "$PLANS", settings.device,
        settings.num_gpus, configuration=config.configuration))
    model_dir = f'"$RESULTS"/Dataset{config.target.dataset_id:03d}_*/"$TRAINER"__"$PLANS"__{config.configuration}'
    array = [f"--array=0-{len(runs) - 1}", KILL_ON_INVALID_DEPENDENCY]
    train = _header("poolskip-train", logs, sbatch_options, gpu_lines + array, array=True) + [
        "set -euo pipefail", f"source {shlex.quote(str(folder / 'env.sh'))}", *_exports(train_only),
        f"SEED=; RESULTS={shlex.quote(str(config.workspace.results))}  # the unseeded run's defaults",
        f"PLANS={shlex.quote(config.plans)}  # models with their own plans (ResEnc) set theirs below",
        'case "$SLURM_ARRAY_TASK_ID" in', *cases,
        '  *) echo "no benchmark run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac",
        "# a seed's runs live in their own nnUNet_results (nnU-Net's folder names inside stay untouched)",
        'export nnUNet_results="$RESULTS"',
        f'if [ -n "$SEED" ]; then export {SEED_VARIABLE}="$SEED"; fi',
        "# the fold's state, decided by the same code as the local runner (nnunet_poolskip/benchmark/training_runs.py)",
        "shopt -s nullglob",
        f"MODEL_DIRS=({model_dir})",
        'FOLD_DIR="${MODEL_DIRS[0]:-/nonexistent}/fold_$FOLD"',
        'STATE=$("$NNUNET_POOLSKIP_PYTHON" -m nnunet_poolskip.benchmark.training_runs "$FOLD_DIR" --expect-schedule '
        + " ".join(str(getattr(settings, f) or d) for f, d in zip(("epochs", "iterations", "val_iterations"),
                                                                   NNUNET_SCHEDULE.values())) + ")",
        'case "$STATE" in',
        '  done) echo "$MODEL fold $FOLD${SEED:+ seed $SEED}: done"; exit 0 ;;',
        "  validate) FLAGS=(--val) ;;  # trained; the final validation did not finish",
        "  resume) FLAGS=(--c) ;;  # interrupted: continue from nnU-Net's checkpoint",
        "  *) FLAGS=() ;;",
        "esac",
        'echo "$MODEL fold $FOLD${SEED:+ seed $SEED} ($TRAINER): $STATE"',
        train_line + ' ${FLAGS[@]+"${FLAGS[@]}"}']

    finish_gpu = ["--gres=gpu:1"] if settings.device == "cuda" else []  # inference uses one GPU
    finish = _header("poolskip-finish", logs, sbatch_options, finish_gpu + [KILL_ON_INVALID_DEPENDENCY]) + [
        "set -euo pipefail", f"source {shlex.quote(str(folder / 'env.sh'))}", f"{cli} --stage finish"]

    submit = [
        "#!/bin/bash",
        "# submit the benchmark: prepare -> train (array) -> finish, each after the previous succeeded.",
        "# Run it again to resume after a cancel, a failure or a time limit: finished steps and folds are skipped.",
        "set -euo pipefail", f"cd {shlex.quote(str(folder))}",
        "# two submissions at once would train the same fold twice at the same time",
        f"if [[ -s {SUBMITTED} ]]; then",
        f'  active=$(squeue --noheader --format=%F --user="$(id -un)" | grep -Fx -f {SUBMITTED} | sort -u || true)',
        '  if [[ -n "$active" ]]; then',
        '    echo "jobs of the last submission of this benchmark are still queued or running:" $active'
        '"; wait for them or scancel them first" >&2',
        "    exit 1",
        "  fi",
        "fi",
        f": > {SUBMITTED}",
        'prepare=$(sbatch --parsable prepare.sbatch); prepare=${prepare%%;*}  # "id;cluster" on multi-cluster sites',
        f'echo "$prepare" >> {SUBMITTED}',
        'train=$(sbatch --parsable --dependency=afterok:"$prepare" train.sbatch); train=${train%%;*}',
        f'echo "$train" >> {SUBMITTED}',
        'finish=$(sbatch --parsable --dependency=afterok:"$train" finish.sbatch); finish=${finish%%;*}',
        f'echo "$finish" >> {SUBMITTED}',
        'echo "submitted: prepare $prepare, train $train (array of ' + str(len(runs)) + ' tasks), finish $finish"']

    written = []
    for name, lines in zip(SCRIPT_NAMES, (env_sh, prepare, train, finish, submit)):
        path = folder / name
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
            tmp.chmod(0o755 if name != "env.sh" else 0o644)
        written.append(path)
    return written
