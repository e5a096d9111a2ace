"""The GPU check: what Pool Skip and the softmax ensemble cost on one GPU, in one command, as JSON and markdown.

Run through ``bash benchmarks/gpu_check.sh OUTDIR`` (which finds the venv). Stages, most important first, each a
separate process with a time cap, all under one overall budget (default 400 s of stage time, so that with the data set's
preparation the whole check stays under 8 minutes on one datacenter GPU; a stage that hits its cap is recorded as
timed out and the next runs):

1. ``overhead``: ``benchmarks/overhead.py --device cuda`` at nnU-Net's BTCV 3d_fullres plan (patch 48x192x192,
   batch 2): step time and ``torch.cuda.max_memory_allocated`` of baseline, straightforward and lean Pool Skip,
   in fp32 and under autocast.
2. ``train``: a real ``nnUNetv2_train`` (``benchmarks/train_probe.py``) of ``nnUNetTrainerBaseline`` and
   ``nnUNetTrainerPoolSkip``, fold 0, nnU-Net's default plans for phantoms (``nnunet-poolskip synth``), two short
   epochs each (the first includes ``torch.compile``, which nnU-Net does by default on CUDA): nnU-Net's own epoch
   times and the peak GPU memory.
3. ``ensemble``: ``benchmarks/ensemble_cost.py --device cuda`` on the same data set (fold 0 of the baseline comes from
   stage 2): (a) ``nnunet-poolskip predict`` against (b) ``nnUNetv2_predict -f 0 1 2 3 4`` and (c) per-fold
   probabilities plus ``nnUNetv2_ensemble``.
4. ``overhead_compile``: stage 1 under ``torch.compile`` and autocast, as nnU-Net trains on CUDA.

Outputs: ``OUTDIR/gpu_check.json`` (every stage's figures, status and seconds) and ``OUTDIR/gpu_check.md`` (the
tables), plus each stage's log in ``OUTDIR/logs``. ``--tiny`` runs the same stages on the CPU with small sizes
(a CPU plan, a tiny patch, one training iteration, an "ensemble" of fold 0 alone, torch.compile with the ``eager``
backend), to check that everything runs; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ensemble_cost  # noqa: E402  (the data set and models are prepared as the ensemble benchmark prepares them)

PY = sys.executable
TRAINERS = ("nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip")
STAGES = ("overhead", "train", "ensemble", "overhead_compile")
#: Per process of a stage: time cap (s) on the GPU and with --tiny (the train stage runs one process per trainer).
CAPS = {"overhead": (90, 300), "train": (120, 400), "ensemble": (150, 600), "overhead_compile": (150, 300)}
#: Training check schedule (epochs, iterations, validation iterations) on the GPU and with --tiny.
TRAIN_SCHEDULE = {"gpu": (2, 25, 5), "tiny": (1, 1, 1)}
#: With --tiny the ensemble is fold 0 alone (trained by the train stage): the code path, at the least cost.
TINY_FOLDS = (0,)


class Check:
    def __init__(self, out: Path, tiny: bool, budget: float, work: Path):
        self.out, self.tiny, self.work = out, tiny, work
        self.deadline = time.monotonic() + budget
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"tiny": tiny, "stages": {}}
        self.device = "cpu" if tiny else "cuda"
        profile = ensemble_cost.PROFILES["tiny" if tiny else "cuda"]
        self.setup = ensemble_cost.Setup(
            device=self.device, plans="nnUNetPlansCPU" if tiny else "nnUNetPlans",
            dataset_id=ensemble_cost.DEFAULT_DATASET_ID, train_size=list(profile["train_size"]),
            test_zoom=list(profile["test_zoom"]), folds=list(TINY_FOLDS if tiny else profile["folds"]),
            schedule=list(profile["schedule"]))
        self.ws = ensemble_cost.Workspace(work / "ensemble", self.setup)

    def cap(self, stage: str) -> float:
        return min(CAPS[stage][1 if self.tiny else 0], max(0.0, self.deadline - time.monotonic()))

    def run(self, stage: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None, name: str = "") -> dict:
        """One process of a stage, capped; returns {status, seconds, returncode}."""
        name = name or stage
        cap = self.cap(stage)
        record = {"command": " ".join(map(str, argv)), "log": str(self.logs / f"{name}.log")}
        if cap < 5:
            record.update(status="skipped: overall budget spent", seconds=0.0)
            return record
        print(f"[gpu_check] {name}: up to {cap:.0f} s", file=sys.stderr, flush=True)
        start = time.monotonic()
        with open(self.logs / f"{name}.log", "w") as log:
            try:
                proc = subprocess.run(list(map(str, argv)), env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=cap, cwd=HERE.parent)
                record.update(status="ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                              returncode=proc.returncode)
            except subprocess.TimeoutExpired:
                record.update(status=f"timed out after {cap:.0f} s")
        record["seconds"] = round(time.monotonic() - start, 1)
        print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s", file=sys.stderr, flush=True)
        return record

    # ------------------------------------------------------------------------------------------------- stages
    def prepare(self) -> None:
        """Phantoms, conversion, planning (nnU-Net's default plans; CPU plans with --tiny): shared by every stage."""
        start = time.monotonic()
        self.ws.check_setup()
        folds = self.setup.folds
        self.setup.folds = []  # training happens in the stages
        try:
            self.ws.prepare(planning_processes=max(1, min(8, (os.cpu_count() or 1) - 1)))
        finally:
            self.setup.folds = folds
        self.results["prepare_seconds"] = round(time.monotonic() - start, 1)

    def overhead(self, compiled: bool) -> None:
        stage = "overhead_compile" if compiled else "overhead"
        json_file = self.out / f"{stage}.json"
        if self.tiny:  # the data set's small CPU network, a tiny patch: checks the code path only
            plans = self.ws.plans_file
            patch = json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"]
            argv = [PY, HERE / "overhead.py", "--device", "cpu", "--plans", plans, "--patch", *patch,
                    "--batch", "1", "--repeats", "1", "--warmup", "0"]
            argv += ["--precision", "autocast", "--compile", "--compile-backend", "eager"] if compiled else \
                ["--precision", "fp32", "autocast"]
        else:
            argv = [PY, HERE / "overhead.py", "--device", "cuda", "--repeats", "5", "--warmup", "1"]
            argv += ["--precision", "autocast", "--compile", "--repeats", "3"] if compiled else []
        record = self.run(stage, [*argv, "--json", json_file])
        record["figures"] = _read_json(json_file)
        self.results["stages"][stage] = record

    def train(self) -> None:
        schedule = TRAIN_SCHEDULE["tiny" if self.tiny else "gpu"]
        from nnunet_poolskip.training.schedule import schedule_environment

        env = self.ws.env()  # nnU-Net's own defaults otherwise: torch.compile on CUDA, its data loader workers
        env.update(schedule_environment(*schedule))
        if self.tiny:
            env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"})
        runs = {}
        for trainer in TRAINERS:
            folder = (self.ws.root / "nnUNet_results" / self.ws.dataset /
                      f"{trainer}__{self.setup.plans}__{ensemble_cost.CONFIGURATION}" / "fold_0")
            if folder.exists():
                shutil.rmtree(folder)  # a fresh run each time: the figures are its cost
            json_file = self.out / f"train_{trainer}.json"
            record = self.run("train", [PY, HERE / "train_probe.py", json_file, "--",
                                        str(self.setup.dataset_id), ensemble_cost.CONFIGURATION, "0", "-tr", trainer,
                                        "-p", self.setup.plans, "-device", self.device], env, name=f"train_{trainer}")
            record["figures"] = _read_json(json_file)
            runs[trainer] = record
        self.results["stages"]["train"] = {"schedule": dict(zip(("epochs", "iterations", "val_iterations"), schedule)),
                                           "runs": runs, "status": _worst(r["status"] for r in runs.values())}

    def ensemble(self) -> None:
        json_file = self.out / "ensemble.json"
        argv = [PY, HERE / "ensemble_cost.py", "--workdir", self.ws.root, "--json", json_file]
        argv += ["--tiny", "--folds", *map(str, TINY_FOLDS)] if self.tiny else ["--device", "cuda", "--test-cases", "1"]
        argv += ["--methods", "a", "b", "c"]
        record = self.run("ensemble", argv)
        record["figures"] = _read_json(json_file)
        self.results["stages"]["ensemble"] = record


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _worst(statuses) -> str:
    statuses = list(statuses)
    return next((s for s in statuses if s != "ok"), "ok")


# ------------------------------------------------------------------------------------------------------- markdown
def markdown(results: dict) -> str:
    lines = [f"# GPU check{' (--tiny: a smoke run on the CPU, figures mean nothing)' if results['tiny'] else ''}", ""]
    machine = results.get("machine", {})
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [f"- total: {results.get('total_seconds', 0):.0f} s (preparing the data set "
              f"{results.get('prepare_seconds', 0):.0f} s)", ""]
    stages = results["stages"]
    for stage in ("overhead", "overhead_compile"):
        record = stages.get(stage)
        if not record:
            continue
        lines += [f"## {stage}: {record['status']} ({record['seconds']} s)", ""]
        figures = record.get("figures") or {}
        for precision, rows in figures.get("precisions", {}).items():
            compiled = f" + torch.compile ({figures['compile']})" if figures.get("compile") else ""
            lines += [f"### {precision}{compiled}, batch {figures.get('batch')}, patch "
                      f"{'x'.join(map(str, figures.get('patch', [])))}", "",
                      "| quantity | baseline | straightforward | lean |", "|---|---|---|---|"]
            for key in ("time", "first_step_s", "max_memory_allocated", "peak", "saved"):
                if key in rows:
                    values = [rows[key].get(n) for n in ("baseline", "straightforward", "lean")]
                    lines.append(f"| {key} | " + " | ".join(_fmt(key, v) for v in values) + " |")
            for name, error in rows.get("errors", {}).items():
                lines.append(f"\n{name} failed under torch.compile: `{error}`")
            lines.append("")
    train = stages.get("train")
    if train:
        lines += [f"## train: {train['status']} (schedule {train['schedule']})", "",
                  "| trainer | status | epoch times (s) | wall incl. validation (s) | max_memory_allocated | "
                  "max_memory_reserved | peak RSS |", "|---|---|---|---|---|---|---|"]
        for trainer, record in train["runs"].items():
            f = record.get("figures") or {}
            lines.append(f"| {trainer} | {record['status']} | "
                         f"{', '.join(f'{t:.1f}' for t in f.get('epoch_seconds', [])) or '-'} | "
                         f"{_fmt('s', f.get('wall_seconds_including_validation'))} | "
                         f"{_fmt('mib', f.get('cuda_max_memory_allocated_mib'))} | "
                         f"{_fmt('mib', f.get('cuda_max_memory_reserved_mib'))} | "
                         f"{_fmt('mib', f.get('peak_rss_mib'))} |")
        lines.append("")
    record = stages.get("ensemble")
    if record:
        lines += [f"## ensemble: {record['status']} ({record['seconds']} s)", ""]
        figures = record.get("figures") or {}
        summary = figures.get("summary", {})
        for case, entry in summary.get("per_case", {}).items():
            lines += [f"| {case} | seconds | peak RSS largest process (MiB) | peak PSS process tree (MiB) | "
                      f"peak GPU memory used (MiB) |", "|---|---|---|---|---|"]
            for method, label in figures.get("methods", {}).items():
                if method in entry:
                    e = entry[method]
                    lines.append(f"| {label} | {e['seconds_median']:.1f} | {e['rss_largest_mib']:.0f} | "
                                 f"{e['pss_tree_peak_mib']:.0f} | {_fmt('mib', e.get('gpu_peak_mib'))} |")
            lines.append("")
        medians = summary.get("median_ratios", {})
        if medians:
            lines.append("median ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
        for case, entry in (figures.get("agreement") or {}).items():
            lines.append(f"{case}: max |p(a) - mean of per-fold p| = "
                         f"{entry['max_abs_probability_difference_a_vs_mean_of_folds']:.2e}; label voxels differing "
                         f"from the argmax of that mean: {entry['label_voxels_differing_a_vs_argmax_of_mean']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _fmt(kind: str, value) -> str:
    if value is None:
        return "-"
    if kind in ("max_memory_allocated", "peak", "saved"):
        return f"{value / 2 ** 20:.0f} MiB"
    if kind == "mib":
        return f"{value:.0f} MiB"
    return f"{value:.3f} s" if kind == "time" else f"{value:.1f} s"


def machine(device: str) -> Dict[str, str]:
    """overhead.py's description of the machine (CPU model, cores, torch threads and version, load; the GPU),
    plus the host name and, on CUDA, the GPU's memory."""
    import torch
    from overhead import machine_description

    info = {"host": platform.node(), **machine_description(torch.device(device))}
    if device == "cuda":
        info["gpu memory"] = f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB"
    return info


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="folder for gpu_check.json, gpu_check.md and the logs (created)")
    parser.add_argument("--tiny", action="store_true", help="small sizes on the CPU: checks that everything runs")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all stages together (default 400 on the GPU, 1500 with --tiny)")
    parser.add_argument("--workdir", default=None,
                        help="work folder for data and models (default OUTDIR/work, removed at the end)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    args = parser.parse_args(argv)
    out = Path(args.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA GPU here (use --tiny for a CPU smoke run)", file=sys.stderr)
            return 2
    work = Path(args.workdir).resolve() if args.workdir else out / "work"
    started = time.monotonic()
    check = Check(out, args.tiny, args.budget or (1500.0 if args.tiny else 400.0), work)
    check.results["machine"] = machine(check.device)
    try:
        check.prepare()
        for stage in args.stages:
            if stage == "overhead":
                check.overhead(compiled=False)
            elif stage == "overhead_compile":
                check.overhead(compiled=True)
            elif stage == "train":
                check.train()
            elif stage == "ensemble":
                check.ensemble()
    finally:
        check.results["total_seconds"] = round(time.monotonic() - started, 1)
        from nnunet_poolskip.utilities.atomic import write_json_atomic, write_text_atomic

        write_json_atomic(check.results, out / "gpu_check.json")
        write_text_atomic(markdown(check.results), out / "gpu_check.md")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [s for s, r in check.results["stages"].items() if r.get("status") != "ok"]
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
