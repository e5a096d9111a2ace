"""What the softmax fold ensemble costs next to nnU-Net's own fold ensembles, per case, on trained models.

Per test case, in a rotating order (interleaved, so that a change of machine load hits every method alike):

    (a)  nnunet-poolskip predict -f 0 1 2 3 4                    mean of the folds' softmax (exact; the default)
    (a') nnunet-poolskip predict -f 0 1 2 3 4 --average resample-once
                                                                 mean of the folds' softmax on the preprocessed
                                                                 grid, resampled once (opt-in)
    (b)  nnUNetv2_predict -f 0 1 2 3 4                           mean of the folds' logits (nnU-Net's default)
    (c)  nnUNetv2_predict -f k --save_probabilities, k = 0..4,   mean of the folds' probabilities (what the paper's
         then nnUNetv2_ensemble                                  protocol most likely ran)

Each command predicts one case (an input folder holding that case only), so a time is a case's wall time including
process start and model loading, as a user pays it. nnU-Net runs with one preprocessing and one export worker
(``-npp 1 -nps 1``, its leanest setting for one case; nnUNetv2_ensemble ``-np 1``). Memory: the peak resident set
of the largest single process (``os.wait4``'s ``ru_maxrss``, what ``/usr/bin/time -v`` reports) and the peak of the
proportional set sizes (shared pages split among the processes sharing them) summed over the whole process tree
(sampled from /proc every 0.2 s; nnU-Net works in worker processes), plus, on CUDA, the peak GPU memory in use
(``nvidia-smi``, whole device, sampled every 0.5 s).

The models: synthetic BTCV phantoms (``nnunet-poolskip synth``, 10 cases: 5 train+val, 5 test), planned by
``nnUNetv2_plan_and_preprocess`` (CPU plans from ``nnunet-poolskip derive-plans`` on the CPU, nnU-Net's default
plans on CUDA), 5 folds of ``nnUNetTrainerBaseline`` trained with the real ``nnUNetv2_train`` for a very short
schedule (the cost of an ensemble does not depend on how well it was trained). The test cases are the held-out
phantoms resampled to a finer grid (``--test-zoom``), so nnU-Net resamples on the way in and on the way out, as it
does on real CT, where the original grid is finer than the network's. On a CPU the network is so slow that the test
grid must be much finer than the network grid for the export to weigh what it weighs next to a GPU's network;
the default zoom gives a network grid of about 32x52x52 and an export grid of about 48x250x250 voxels, 14 classes.

After the timing, (a) and (a') are run once more with ``--save-probabilities``: (a)'s probabilities are compared with
the mean of (c)'s per-fold probabilities (max |difference|), its label map with their argmax and with
nnUNetv2_ensemble's, and (a') with (a) (probabilities; label voxels that differ, Dice per label). The models are
barely trained, so their probabilities are flat and labels flip easily: the (a')/(a) label agreement here is a
pessimistic figure; on trained models compare the two modes' Dice with ``nnunet-poolskip evaluate``.

    python benchmarks/ensemble_cost.py                         # CPU, the default sizes (about 8 min on 2 cores)
    python benchmarks/ensemble_cost.py --tiny                  # quick smoke run
    python benchmarks/ensemble_cost.py --device cuda --json out.json --workdir /tmp/ec   # on a GPU
    python benchmarks/ensemble_cost.py --workdir DIR           # keep (and on reruns reuse) models and test cases

The last line reads ``ensemble cost: a/b=X.XX a/c=Y.YY``: medians over the cases of the per-case ratios (each the
median over repetitions of the ratio within one repetition).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainerBaseline"
CONFIGURATION = "3d_fullres"
PHANTOM_CASES = 10  # BTCV numbering: 5 train+val (5 folds of 4/1) and 5 test cases
DEFAULT_DATASET_ID = 975

#: Sizes: phantom grid (z, y, x) for training, how much finer the test grid is (z, y, x), test cases, repetitions,
#: folds, training schedule (epochs, iterations, validation iterations), test-time mirroring.
PROFILES = {
    "default": dict(train_size=(32, 48, 48), test_zoom=(1.5, 5.0, 5.0), test_cases=2, repeats=1,
                    folds=(0, 1, 2, 3, 4), schedule=(1, 2, 1), tta=False),
    "tiny": dict(train_size=(16, 32, 32), test_zoom=(1.5, 2.0, 2.0), test_cases=1, repeats=1,
                 folds=(0, 1), schedule=(1, 1, 1), tta=False),
    "cuda": dict(train_size=(48, 96, 96), test_zoom=(1.5, 3.5, 3.5), test_cases=2, repeats=1,
                 folds=(0, 1, 2, 3, 4), schedule=(1, 10, 2), tta=True),
}
METHODS = ("a", "a_once", "b", "c")
METHOD_LABELS = {"a": "(a) nnunet-poolskip predict (exact)",
                 "a_once": "(a') nnunet-poolskip predict --average resample-once",
                 "b": "(b) nnUNetv2_predict -f all folds (logit mean)",
                 "c": "(c) nnUNetv2_predict per fold --save_probabilities + nnUNetv2_ensemble"}


# ----------------------------------------------------------------------------------------------------- measuring
@dataclass
class Measurement:
    """One method on one case: wall seconds and memory peaks (MiB)."""

    seconds: float = 0.0
    rss_largest_mib: float = 0.0
    pss_tree_peak_mib: float = 0.0
    gpu_peak_mib: Optional[float] = None
    commands: List[str] = field(default_factory=list)

    def merge(self, other: "Measurement") -> None:
        """Sequential commands: times add up, peaks take the maximum."""
        self.seconds += other.seconds
        self.rss_largest_mib = max(self.rss_largest_mib, other.rss_largest_mib)
        self.pss_tree_peak_mib = max(self.pss_tree_peak_mib, other.pss_tree_peak_mib)
        if other.gpu_peak_mib is not None:
            self.gpu_peak_mib = max(self.gpu_peak_mib or 0.0, other.gpu_peak_mib)
        self.commands += other.commands


def _proportional_set_size(pid: int) -> int:
    """Bytes of a process's proportional set size (shared pages split among their sharers; Linux), or its resident
    set size where the kernel has no smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _tree_memory_bytes(root: int) -> int:
    """Proportional set sizes of ``root`` and all its descendants, summed (Linux /proc)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _proportional_set_size(pid)
        todo += children.get(pid, [])
    return total


def _gpu_used_mib() -> Optional[float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class _Sampler(threading.Thread):
    """Samples the process tree's memory (and the GPU's memory in use) until stopped."""

    def __init__(self, pid: int, gpu: bool):
        super().__init__(daemon=True)
        self.pid, self.gpu = pid, gpu
        self.rss_peak, self.gpu_peak = 0, None
        self.stopped = threading.Event()

    def run(self) -> None:
        last_gpu = 0.0
        while not self.stopped.is_set():
            self.rss_peak = max(self.rss_peak, _tree_memory_bytes(self.pid))
            if self.gpu and time.monotonic() - last_gpu >= 0.5:
                last_gpu = time.monotonic()
                used = _gpu_used_mib()
                if used is not None:
                    self.gpu_peak = max(self.gpu_peak or 0.0, used)
            self.stopped.wait(0.2)


def run_measured(argv: Sequence[str], env: Dict[str, str], log: Path, gpu: bool = False) -> Measurement:
    """Run one command to completion; fail with the end of its log when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=handle, stderr=subprocess.STDOUT)
        sampler = _Sampler(proc.pid, gpu)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        sampler.stopped.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}; end of {log}:\n"
                         + "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:]))
    # ru_maxrss: KiB on Linux; the largest of the process and its waited-for descendants.
    return Measurement(seconds, usage.ru_maxrss / 1024, sampler.rss_peak / 2 ** 20, sampler.gpu_peak,
                       [" ".join(map(str, argv))])


def run_step(argv: Sequence[str], env: Dict[str, str], log: Path, what: str) -> None:
    print(f"  {what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    run_measured(argv, env, log)
    print(f"  {what}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- workspace
@dataclass
class Setup:
    """Everything that decides the models and the test cases; a work folder holds exactly one."""

    device: str
    plans: str
    dataset_id: int
    train_size: List[int]
    test_zoom: List[float]
    folds: List[int]
    schedule: List[int]


class Workspace:
    """nnU-Net folders, trained folds and test cases under one work folder."""

    def __init__(self, root: Path, setup: Setup):
        self.root, self.setup = root, setup
        self.dataset = f"Dataset{setup.dataset_id:03d}_BTCV"
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / name).mkdir(parents=True, exist_ok=True)

    def env(self, training: bool = False) -> Dict[str, str]:
        """nnU-Net's variables for this work folder; training on the CPU as COMMON.md says (no worker processes)."""
        from nnunet_poolskip.training.discovery import ext_trainer_value
        from nnunet_poolskip.training.schedule import schedule_environment

        env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}
        env.update({name: str(self.root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        env["nnUNet_extTrainer"] = ext_trainer_value("")
        if training:
            env.update(schedule_environment(*self.setup.schedule))
            env["nnUNet_compile"] = "f"  # the folds' quality does not matter here; compiling would cost minutes
            if self.setup.device == "cpu":
                env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"})
        return env

    @property
    def model_folder(self) -> Path:
        return self.root / "nnUNet_results" / self.dataset / f"{TRAINER}__{self.setup.plans}__{CONFIGURATION}"

    @property
    def plans_file(self) -> Path:
        return self.root / "nnUNet_preprocessed" / self.dataset / f"{self.setup.plans}.json"

    def check_setup(self) -> None:
        """Record the setup; refuse a work folder made with another one (its models would not match)."""
        record = self.root / "ensemble_cost_setup.json"
        wanted = asdict(self.setup)
        if record.is_file():
            found = json.loads(record.read_text())
            if found != wanted:
                changed = ", ".join(f"{k}: {found.get(k)} there, {v} now" for k, v in wanted.items()
                                    if found.get(k) != v)
                raise SystemExit(f"--workdir {self.root} was prepared with other settings ({changed}); "
                                 f"use another --workdir")
        else:
            record.write_text(json.dumps(wanted, indent=2))

    def prepare(self, planning_processes: int) -> None:
        """Phantoms, conversion, planning, training of every fold: each skipped when already done."""
        s, logs = self.setup, self.root / "logs"
        env = self.env()
        phantoms = self.root / "phantoms"
        if not (phantoms / "RawData").is_dir():
            run_step([str(BIN / "nnunet-poolskip"), "synth", "--kind", "btcv", "-o", str(phantoms), "--cases",
                      str(PHANTOM_CASES), "--size", *map(str, s.train_size), "--quiet"], env, logs / "synth.log",
                     f"synth {PHANTOM_CASES} phantoms {'x'.join(map(str, s.train_size))}")
        if not (self.root / "nnUNet_raw" / self.dataset / "dataset.json").is_file():
            run_step([str(BIN / "nnunet-poolskip"), "convert-btcv", str(phantoms), "-d", str(s.dataset_id),
                      "--quiet"], env, logs / "convert.log", "convert-btcv")
        planned = self.root / "nnUNet_preprocessed" / self.dataset / "nnUNetPlans.json"
        if not planned.is_file():
            run_step([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(s.dataset_id), "-c", CONFIGURATION,
                      "-np", str(planning_processes)], env, logs / "plan.log", "nnUNetv2_plan_and_preprocess")
        if not self.plans_file.is_file():
            run_step([str(BIN / "nnunet-poolskip"), "derive-plans", "-d", str(s.dataset_id)], env,
                     logs / "derive.log", "derive-plans (CPU plans)")
        train_env = self.env(training=True)
        for fold in s.folds:
            if not (self.model_folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
                run_step([str(BIN / "nnUNetv2_train"), str(s.dataset_id), CONFIGURATION, str(fold), "-tr", TRAINER,
                          "-p", s.plans, "-device", s.device], train_env, logs / f"train_fold{fold}.log",
                         f"nnUNetv2_train fold {fold}")

    def test_cases(self, count: int) -> Dict[str, Path]:
        """The first ``count`` held-out phantoms resampled to a grid ``test_zoom`` times finer, one folder each."""
        import SimpleITK as sitk

        images = sorted((self.root / "nnUNet_raw" / self.dataset / "imagesTs").glob("*_0000.nii.gz"))[:count]
        zoom_xyz = list(reversed(self.setup.test_zoom))
        cases = {}
        for image_file in images:
            case = image_file.name[:-len("_0000.nii.gz")]
            folder = self.root / "tests" / case
            target = folder / image_file.name
            if not target.is_file():
                image = sitk.ReadImage(str(image_file))
                size = [max(1, int(round(n * z))) for n, z in zip(image.GetSize(), zoom_xyz)]
                spacing = [sp * n / m for sp, n, m in zip(image.GetSpacing(), image.GetSize(), size)]
                fine = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                                     image.GetDirection(), -1024, image.GetPixelID())
                folder.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(fine, str(folder / f".tmp_{image_file.name}"))
                os.replace(folder / f".tmp_{image_file.name}", target)
            cases[case] = folder
        if len(cases) < count:
            raise SystemExit(f"only {len(cases)} test phantoms in imagesTs; ask for at most that many --test-cases")
        return cases


# ------------------------------------------------------------------------------------------------------ methods
class Methods:
    """The command lines of (a), (a'), (b) and (c) for one case."""

    def __init__(self, ws: Workspace, tta: bool):
        self.ws, self.tta = ws, tta
        s = ws.setup
        self.common = ["-d", str(s.dataset_id), "-c", CONFIGURATION, "-tr", TRAINER, "-p", s.plans]
        self.folds = [str(f) for f in s.folds]
        self.env = ws.env()

    def ours(self, case_dir: Path, out: Path, *extra: str) -> List[List[str]]:
        return [[str(BIN / "nnunet-poolskip"), "predict", "-i", str(case_dir), "-o", str(out), *self.common,
                 "-f", *self.folds, "--device", self.ws.setup.device, *([] if self.tta else ["--disable-tta"]),
                 *extra]]

    def nnunet(self, case_dir: Path, out: Path, folds: Sequence[str], *extra: str) -> List[str]:
        return [str(BIN / "nnUNetv2_predict"), "-i", str(case_dir), "-o", str(out), *self.common, "-f", *folds,
                "-device", self.ws.setup.device, "-npp", "1", "-nps", "1",
                *([] if self.tta else ["--disable_tta"]), *extra]

    def commands(self, method: str, case_dir: Path, out: Path) -> List[List[str]]:
        if method == "a":
            return self.ours(case_dir, out)
        if method == "a_once":
            return self.ours(case_dir, out, "--average", "resample-once")
        if method == "b":
            return [self.nnunet(case_dir, out, self.folds)]
        if method == "c":
            fold_outputs = [out / f"fold_{f}" for f in self.folds]
            return ([self.nnunet(case_dir, o, [f], "--save_probabilities") for f, o in zip(self.folds, fold_outputs)]
                    + [[str(BIN / "nnUNetv2_ensemble"), "-i", *map(str, fold_outputs), "-o", str(out / "ensemble"),
                        "-np", "1"]])
        raise ValueError(method)

    def run(self, method: str, case: str, case_dir: Path, repetition: int) -> Measurement:
        out = self.ws.root / "runs" / method / case
        if out.exists():
            shutil.rmtree(out)
        total = Measurement()
        for i, argv in enumerate(self.commands(method, case_dir, out)):
            log = self.ws.root / "logs" / "runs" / f"{method}_{case}_rep{repetition}_{i}.log"
            total.merge(run_measured(argv, self.env, log, gpu=self.ws.setup.device == "cuda"))
        return total


# --------------------------------------------------------------------------------------------------- agreement
def dice_per_label(a: np.ndarray, b: np.ndarray) -> Dict[int, float]:
    """Dice of every label present in either map (background excluded)."""
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return {int(k): float(2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k))) for k in labels}


def _predict_probabilities(ws: Workspace, methods: Methods, case: str, case_dir: Path, name: str, *extra: str):
    """Run (a) (with ``extra`` options) once more, untimed, with --save-probabilities;
    return (probabilities, labels)."""
    import SimpleITK as sitk

    out = ws.root / "runs" / name / case
    if out.exists():
        shutil.rmtree(out)
    for i, argv in enumerate(methods.ours(case_dir, out, "--save-probabilities", *extra)):
        run_measured(argv, methods.env, ws.root / "logs" / "runs" / f"{name}_{case}_{i}.log")
    probabilities = np.load(out / f"{case}.npz")["probabilities"].astype(np.float64)
    return probabilities, sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))


def agreement(ws: Workspace, methods: Methods, cases: Dict[str, Path], compare_once: bool) -> Dict[str, dict]:
    """(a)'s probabilities against the mean of (c)'s per-fold ones; label maps against their argmax; (a') vs (a)."""
    import SimpleITK as sitk

    results = {}
    for case, case_dir in cases.items():
        ours, labels = _predict_probabilities(ws, methods, case, case_dir, "a_probabilities")
        folds = [np.load(ws.root / "runs" / "c" / case / f"fold_{f}" / f"{case}.npz")["probabilities"]
                 for f in methods.folds]
        mean = np.mean([f.astype(np.float64) for f in folds], axis=0)
        ensemble = sitk.GetArrayFromImage(sitk.ReadImage(str(ws.root / "runs" / "c" / case / "ensemble" /
                                                             f"{case}.nii.gz")))
        entry = {"voxels": int(labels.size), "classes": int(ours.shape[0]),
                 "max_abs_probability_difference_a_vs_mean_of_folds": float(np.abs(ours - mean).max()),
                 "max_abs_difference_between_folds": float(np.abs(folds[0].astype(np.float64) - folds[-1]).max()),
                 "label_voxels_differing_a_vs_argmax_of_mean": int(np.sum(labels != mean.argmax(0))),
                 "label_voxels_differing_a_vs_nnUNetv2_ensemble": int(np.sum(labels != ensemble))}
        if compare_once:
            once, once_labels = _predict_probabilities(ws, methods, case, case_dir, "a_once_probabilities",
                                                       "--average", "resample-once")
            difference = np.abs(once - ours)
            dice = dice_per_label(labels, once_labels)
            entry.update({"max_abs_probability_difference_a_once_vs_a": float(difference.max()),
                          "mean_abs_probability_difference_a_once_vs_a": float(difference.mean()),
                          "label_voxels_differing_a_once_vs_a": int(np.sum(labels != once_labels)),
                          "dice_a_once_vs_a": dice,
                          "dice_a_once_vs_a_mean": float(np.mean(list(dice.values()))) if dice else None,
                          "dice_a_once_vs_a_min": float(min(dice.values())) if dice else None,
                          "mean_max_probability_a": float(ours.max(0).mean())})
        results[case] = entry
    return results


# ----------------------------------------------------------------------------------------------------- reporting
def machine() -> Dict[str, str]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import machine_description

    return machine_description(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def sizes(ws: Workspace, cases: Dict[str, Path]) -> dict:
    import SimpleITK as sitk

    plans = json.loads(ws.plans_file.read_text())
    configuration = plans["configurations"][CONFIGURATION]
    spacing = configuration["spacing"]
    info = {"plans": ws.setup.plans, "patch": configuration["patch_size"], "plans_spacing_mm": spacing,
            "classes": len(json.loads((ws.model_folder / "dataset.json").read_text())["labels"]),
            "train_phantom_grid": ws.setup.train_size, "cases": {}}
    for case, folder in cases.items():
        image = sitk.ReadImage(str(folder / f"{case}_0000.nii.gz"))
        grid = list(reversed(image.GetSize()))
        case_spacing = list(reversed(image.GetSpacing()))
        network_grid = [int(round(n * s / p)) for n, s, p in zip(grid, case_spacing, spacing)]
        info["cases"][case] = {"grid": grid, "spacing_mm": [round(s, 3) for s in case_spacing],
                               "network_grid_about": network_grid}
    return info


def summarize(times: Dict[str, Dict[str, List[Measurement]]], methods: Sequence[str]) -> dict:
    """Per case: median seconds per method, per-repetition ratios against (b) and (c), peaks."""
    per_case = {}
    for case, by_method in times.items():
        entry = {m: {"seconds_median": statistics.median(x.seconds for x in by_method[m]),
                     "seconds": [round(x.seconds, 2) for x in by_method[m]],
                     "rss_largest_mib": max(x.rss_largest_mib for x in by_method[m]),
                     "pss_tree_peak_mib": max(x.pss_tree_peak_mib for x in by_method[m]),
                     "gpu_peak_mib": max((x.gpu_peak_mib for x in by_method[m] if x.gpu_peak_mib is not None),
                                         default=None)} for m in methods}
        ratios = {}
        for numerator in [m for m in ("a", "a_once") if m in methods]:
            for denominator in ("b", "c"):
                ratios[f"{numerator}/{denominator}"] = statistics.median(
                    x.seconds / y.seconds for x, y in zip(by_method[numerator], by_method[denominator]))
        entry["ratios"] = ratios
        per_case[case] = entry
    medians = {key: statistics.median(c["ratios"][key] for c in per_case.values())
               for key in next(iter(per_case.values()))["ratios"]}
    return {"per_case": per_case, "median_ratios": medians}


def print_report(info: dict, summary: dict, agree: Dict[str, dict], methods: Sequence[str]) -> None:
    print("\n## Per case: wall time and peak memory")
    print("| case | method | seconds | peak RSS, largest process | peak PSS, process tree | peak GPU memory used |")
    print("|---|---|---|---|---|---|")
    for case, entry in summary["per_case"].items():
        for m in methods:
            e = entry[m]
            gpu = f"{e['gpu_peak_mib']:.0f} MiB" if e["gpu_peak_mib"] is not None else "-"
            print(f"| {case} | {METHOD_LABELS[m]} | {e['seconds_median']:.1f} | {e['rss_largest_mib']:.0f} MiB | "
                  f"{e['pss_tree_peak_mib']:.0f} MiB | {gpu} |")
    print("\n## Ratios (per case: median over repetitions of the ratio within a repetition)")
    for case, entry in summary["per_case"].items():
        print(f"{case}: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["ratios"].items()))
    print("median over cases: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["median_ratios"].items()))
    print("\n## Agreement")
    for case, entry in agree.items():
        print(f"{case}: max |p(a) - mean of (c)'s per-fold p| = "
              f"{entry['max_abs_probability_difference_a_vs_mean_of_folds']:.2e}"
              f" (folds differ by up to {entry['max_abs_difference_between_folds']:.2e}); label voxels differing: "
              f"(a) vs argmax of that mean {entry['label_voxels_differing_a_vs_argmax_of_mean']}, (a) vs "
              f"nnUNetv2_ensemble {entry['label_voxels_differing_a_vs_nnUNetv2_ensemble']} of {entry['voxels']}")
        if "label_voxels_differing_a_once_vs_a" in entry:
            print(f"  (a') vs (a): probabilities differ by up to "
                  f"{entry['max_abs_probability_difference_a_once_vs_a']:.3f}"
                  f" (mean {entry['mean_abs_probability_difference_a_once_vs_a']:.2e}); "
                  f"{entry['label_voxels_differing_a_once_vs_a']} of {entry['voxels']} label voxels "
                  f"differ ({100 * entry['label_voxels_differing_a_once_vs_a'] / entry['voxels']:.3f} %); Dice per "
                  f"label mean {entry['dice_a_once_vs_a_mean']:.4f}, min {entry['dice_a_once_vs_a_min']:.4f}. "
                  f"(a)'s mean top-class probability is {entry['mean_max_probability_a']:.2f}: the shorter the "
                  f"training, the flatter the probabilities and the more labels flip between the two modes")


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small sizes, 2 folds, 1 case: a quick smoke run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="prediction device (default cpu)")
    parser.add_argument("--workdir", default=None,
                        help="work folder (kept; a rerun reuses its models and test cases); default: a temporary "
                             "folder, removed at the end")
    parser.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID, help="nnU-Net dataset id to use")
    parser.add_argument("--train-size", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="phantom grid of the training cases")
    parser.add_argument("--test-zoom", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="how much finer the test grid is than the phantoms' per axis")
    parser.add_argument("--test-cases", type=int, default=None, help="number of test cases (at most 5)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per case and method")
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="folds to train and ensemble (default 0 1 2 3 4; --tiny: 0 1)")
    parser.add_argument("--tta", dest="tta", action="store_true", default=None, help="test-time mirroring on")
    parser.add_argument("--disable-tta", dest="tta", action="store_false", help="test-time mirroring off")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods to time (default all; a, b and c are needed for the last line)")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    profile = PROFILES["tiny" if args.tiny else ("cuda" if args.device == "cuda" else "default")]
    for key in ("train_size", "test_zoom", "test_cases", "repeats", "tta"):
        if getattr(args, key) is None:
            setattr(args, key, profile[key])
    args.folds = tuple(args.folds) if args.folds else profile["folds"]
    args.schedule = profile["schedule"]
    if len(set(args.folds)) != len(args.folds) or not all(0 <= f < 5 for f in args.folds):
        parser.error("--folds must be distinct folds among 0..4")
    if not 1 <= args.test_cases <= PHANTOM_CASES // 2:
        parser.error(f"--test-cases must be 1..{PHANTOM_CASES // 2}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    for needed in ("a", "b", "c"):
        if needed not in args.methods:
            parser.error(f"--methods must include a, b and c (the ratios a/b and a/c); missing {needed}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here")
    started = time.perf_counter()
    temporary = None
    if args.workdir:
        root = Path(args.workdir).resolve()
    else:
        temporary = tempfile.mkdtemp(prefix="ensemble_cost_")
        root = Path(temporary)
    setup = Setup(device=args.device, plans="nnUNetPlansCPU" if args.device == "cpu" else "nnUNetPlans",
                  dataset_id=args.dataset_id, train_size=list(args.train_size), test_zoom=list(args.test_zoom),
                  folds=list(args.folds), schedule=list(args.schedule))
    try:
        root.mkdir(parents=True, exist_ok=True)
        ws = Workspace(root, setup)
        ws.check_setup()
        print(f"# ensemble cost (benchmarks/ensemble_cost.py), work folder {root}", file=sys.stderr)
        ws.prepare(planning_processes=max(1, min(4, (os.cpu_count() or 1) - 1)))
        cases = ws.test_cases(args.test_cases)
        methods = Methods(ws, args.tta)
        order = list(args.methods)
        times: Dict[str, Dict[str, List[Measurement]]] = {c: {m: [] for m in order} for c in cases}
        step = 0
        for repetition in range(args.repeats):
            for case, case_dir in cases.items():
                rotated = order[step % len(order):] + order[:step % len(order)]
                step += 1
                for method in rotated:
                    measurement = methods.run(method, case, case_dir, repetition)
                    times[case][method].append(measurement)
                    print(f"  {case} rep {repetition + 1}/{args.repeats} {method}: {measurement.seconds:.1f} s",
                          file=sys.stderr, flush=True)
        summary = summarize(times, order)
        agree = agreement(ws, methods, cases, "a_once" in order)
        info = sizes(ws, cases)
        report = {"machine": machine(), "command": " ".join(["python", "benchmarks/ensemble_cost.py",
                                                             *(argv if argv is not None else sys.argv[1:])]),
                  "setup": asdict(setup), "tta": args.tta, "repeats": args.repeats, "sizes": info,
                  "summary": summary, "agreement": agree, "methods": METHOD_LABELS,
                  "load_average_end": list(os.getloadavg()), "total_seconds": time.perf_counter() - started}
        print("# Ensemble cost (benchmarks/ensemble_cost.py)")
        print("command: " + report["command"])
        for key, value in report["machine"].items():
            print(f"{key}: {value}")
        print(f"python {platform.python_version()}; device {args.device}; folds {', '.join(methods.folds)}; test-time "
              f"mirroring {'on' if args.tta else 'off'}; {args.repeats} repetition(s) per case, methods interleaved")
        print(f"models: {TRAINER}, plans {info['plans']} (patch {'x'.join(map(str, info['patch']))}, spacing "
              f"{' x '.join(f'{s:.2f}' for s in info['plans_spacing_mm'])} mm), {info['classes']} classes, trained "
              f"on phantoms of about {'x'.join(map(str, info['train_phantom_grid']))} voxels")
        for case, c in info["cases"].items():
            print(f"test case {case}: grid {'x'.join(map(str, c['grid']))} voxels at "
                  f"{' x '.join(map(str, c['spacing_mm']))} mm; network grid about "
                  f"{'x'.join(map(str, c['network_grid_about']))}")
        print_report(info, summary, agree, order)
        print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"total {report['total_seconds']:.0f} s")
        if args.json:
            from nnunet_poolskip.utilities.atomic import write_json_atomic

            write_json_atomic(report, args.json)
        medians = summary["median_ratios"]
        print(f"ensemble cost: a/b={medians['a/b']:.2f} a/c={medians['a/c']:.2f}")
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
