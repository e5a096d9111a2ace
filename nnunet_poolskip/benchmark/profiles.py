"""Benchmark profiles: ``paper`` (the paper's protocol at nnU-Net's defaults) and ``demo`` (CPU smoke run).

A profile fixes every setting that makes a run what it is; command-line options override single fields
(``--epochs``, ``--folds``, ``--cases``...) and the table says so. ``Settings`` is the resolved result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from nnunet_poolskip.benchmark.protocol import CONFIGURATION, PAPER_FOLDS, PAPER_MODELS
from nnunet_poolskip.training.schedule import MAX_SEED
from nnunet_poolskip.utilities.cpu_precision import CPU_AUTOCAST_CHOICES, resolve_cpu_autocast


@dataclass
class Profile:
    """Defaults of one kind of run.

    Attributes:
        name: ``paper`` or ``demo``.
        description: one line for the table and the log.
        device: ``cuda`` or ``cpu`` (training and inference).
        plans_preset: plans preset applied with ``derive-plans`` (None: nnU-Net's own plans).
        epochs / iterations / val_iterations: short schedule (None: nnU-Net's 1000 / 250 / 50).
        folds: cross-validation folds trained and ensembled.
        models: model names (see protocol.MODELS).
        synthetic_cases: without ``--raw``, generate this many phantoms with ``synth`` (None: ``--raw``
            is required).
        synth_seed: seed of the phantoms.
        synth_size: nominal voxel grid (z, y, x) of the phantoms (None: synth's default).
        preprocess_processes: ``-np`` of ``nnUNetv2_plan_and_preprocess`` (None: nnU-Net's default).
        cpu_training_env: set nnU-Net's CPU-friendly variables (no augmentation workers, one process
            for the final validation's export, no torch.compile).
        test_time_mirroring: mirror the test-time inference (nnU-Net's TTA).
        smoke: the run is a smoke test, not a reproduction; the table says so.
        parallel_trainings: trainings run at the same time on this machine, each with CPU count / this many
            torch threads (``device cpu`` only: on a small CPU two one-thread trainings do more work than one
            two-thread training; GPU runs train one fold at a time, or use --emit slurm).
        phantom_anatomy: organ sizes of the synthetic phantoms (``synth --anatomy``: ``standard`` BTCV-like, or
            ``learnable``, the small organs grown for short CPU runs).
        cpu_autocast: ``off``, ``bf16`` or ``auto`` (bf16 where the CPU computes bfloat16 natively): CPU bfloat16
            autocast for training (NNUNET_POOLSKIP_CPU_AUTOCAST) and prediction (predict --cpu-autocast); see
            :mod:`nnunet_poolskip.utilities.cpu_precision`. No effect on CUDA.
        real_ct: BTCV runs: end by segmenting the real CT of the TotalSegmentator reference files with the nnU-Net
            pair (:mod:`nnunet_poolskip.benchmark.real_ct`; skipped with a message where they were not fetched).
    """

    name: str
    description: str
    device: str
    plans_preset: Optional[str]
    epochs: Optional[int]
    iterations: Optional[int]
    val_iterations: Optional[int]
    folds: Tuple[int, ...]
    models: Tuple[str, ...]
    synthetic_cases: Optional[int]
    synth_seed: int
    synth_size: Optional[Tuple[int, int, int]]
    preprocess_processes: Optional[int]
    cpu_training_env: bool
    test_time_mirroring: bool
    smoke: bool
    parallel_trainings: int = 1
    phantom_anatomy: str = "standard"
    cpu_autocast: str = "off"
    real_ct: bool = False


DEMO_MODELS: Tuple[str, ...] = ("nnunet", "nnunet_poolskip")
"""The default demo's models: the headline pair (the V-Net pair: ``--models`` with all four, README)."""

PROFILES: Dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        description="the paper's protocol at nnU-Net's defaults (1000 epochs x 250 iterations, default plans, "
                    "5 folds, softmax ensemble of the 5 folds, mirrored test-time inference)",
        device="cuda", plans_preset=None, epochs=None, iterations=None, val_iterations=None,
        folds=PAPER_FOLDS, models=PAPER_MODELS, synthetic_cases=None, synth_seed=0, synth_size=None,
        preprocess_processes=None, cpu_training_env=False, test_time_mirroring=True, smoke=False),
    "demo": Profile(
        name="demo",
        description="smoke-scale run on synthetic BTCV-like phantoms on the CPU: the nnU-Net pair, CPU-sized plans, "
                    "a short schedule, fewer folds; it shows the pipeline works and the models learn, it does NOT "
                    "reproduce the paper",
        # sized for 15 minutes on 2 CPU cores (measured: benchmarks/RESULTS.md): nnU-Net's SGD needs thousands of
        # iterations before it finds the small organs, so iterations are what the budget buys: the default demo
        # trains the headline pair only (nnU-Net, nnU-Net + Pool Skip; the V-Net pair is one option away, README),
        # fold 0 only for 50 x 60 = 3,000 iterations (2 folds x 1,200 found the liver alone: foreground Dice 0.06;
        # 1 fold x 3,000 found 7-8 organs: 0.35 / 0.44, in 14.8 minutes), in bfloat16 where the CPU has it (auto:
        # CPU flags, utilities/cpu_precision.py); one fold means the fold ensemble is of one model here (--folds 0 1
        # runs the softmax average, as the paper profile does); the learnable phantom anatomy (--phantom-anatomy)
        # did not learn more in a 600-iteration probe, so the demo keeps the standard one; small patches make
        # them cheap (plans/cpu_demo.json), a coarse phantom grid makes the sliding-window inference cheap,
        # two one-thread trainings at a time do more work on 2 cores than one two-thread training, and the
        # final validation is not mirrored (as the test predictions: test_time_mirroring=False). On such small
        # tiles, a batch-1 inference runs PyTorch's slow non-oneDNN conv3d path (about 7x a training sample's
        # cost), which is why validation and prediction weigh so much here.
        device="cpu", plans_preset="cpu_demo", epochs=50, iterations=60, val_iterations=2,
        folds=(0,), models=DEMO_MODELS, synthetic_cases=30, synth_seed=0, synth_size=(24, 40, 40),
        preprocess_processes=2, cpu_training_env=True, test_time_mirroring=False, smoke=True,
        parallel_trainings=2, cpu_autocast="auto", real_ct=True),
}


OVERRIDE_OPTIONS: Dict[str, str] = {
    "device": "--device", "plans_preset": "--plans-preset", "epochs": "--epochs", "iterations": "--iterations",
    "val_iterations": "--val-iterations", "folds": "--folds", "models": "--models",
    "synthetic_cases": "--cases", "synth_seed": "--seed", "synth_size": "--phantom-size",
    "preprocess_processes": "--preprocess-processes",
    "test_time_mirroring": "--tta", "num_gpus": "--num-gpus", "seeds": "--seeds",
    "parallel_trainings": "--parallel-trainings", "configuration": "--configuration",
    "phantom_anatomy": "--phantom-anatomy", "cpu_autocast": "--cpu-autocast", "real_ct": "--real-ct",
}
"""Settings field -> the benchmark's command-line option that overrides it (one source for the CLI and for
the command lines written into SLURM scripts)."""


@dataclass
class Settings(Profile):
    """A profile with the command line's overrides applied; ``overridden`` lists the changed fields.

    ``seeds``: train every model x fold once per seed, each run seeded with ``NNUNET_POOLSKIP_SEED`` and kept in
    its own nnU-Net results folder (``nnUNet_results/seed_<s>``); None: one unseeded run per model x fold, in
    nnUNet_results itself (nnU-Net's own behaviour). ``configuration``: the nnU-Net configuration every model is
    trained and predicted in (protocol.CONFIGURATIONS; the paper's 3d_fullres unless --configuration).
    """

    num_gpus: int = 1
    configuration: str = CONFIGURATION
    seeds: Optional[Tuple[int, ...]] = None
    overridden: List[str] = field(default_factory=list)

    @property
    def profile(self) -> str:
        """The name of the profile these settings started from."""
        return self.name

    @property
    def short_schedule(self) -> bool:
        """True when any part of nnU-Net's default training schedule is replaced."""
        return any(v is not None for v in (self.epochs, self.iterations, self.val_iterations))

    @property
    def reduced_folds(self) -> bool:
        """True when fewer than the paper's 5 folds are trained."""
        return tuple(sorted(self.folds)) != PAPER_FOLDS

    @property
    def run_seeds(self) -> Tuple[Optional[int], ...]:
        """The seed of every run of a model x fold: ``seeds``, or ``(None,)`` for one unseeded run."""
        return self.seeds if self.seeds else (None,)

    def cpu_autocast_mode(self) -> Tuple[str, str]:
        """(``bf16`` or ``off``, why): ``cpu_autocast`` resolved for this device and this machine's CPU."""
        return resolve_cpu_autocast(self.cpu_autocast, self.device)

    def override_arguments(self) -> List[str]:
        """The command-line options that turn the profile into these settings (for emitted job scripts)."""
        argv: List[str] = []
        for key in self.overridden:
            value = getattr(self, key)
            option = OVERRIDE_OPTIONS[key]
            if key == "test_time_mirroring":
                argv.append("--tta" if value else "--no-tta")
            elif key == "real_ct":
                argv.append("--real-ct" if value else "--no-real-ct")
            elif key in ("folds", "models", "synth_size", "seeds"):
                argv += [option, *map(str, value)]
            elif key == "plans_preset" and value is None:
                argv += [option, "none"]
            else:
                argv += [option, str(value)]
        return argv

    def protocol_key(self) -> Dict:
        """The settings that change what a trained fold is; a rerun must match them to resume.

        The phantom anatomy and the CPU precision appear only when they are not the standard / float32 that every
        run had before they existed, so that a run started by an earlier version still resumes."""
        key = {"device": self.device, "plans_preset": self.plans_preset, "epochs": self.epochs,
               "iterations": self.iterations, "val_iterations": self.val_iterations,
               "synthetic_cases": self.synthetic_cases, "synth_seed": self.synth_seed,
               "synth_size": list(self.synth_size) if self.synth_size else None,
               "configuration": self.configuration}
        if self.phantom_anatomy != "standard":
            key["phantom_anatomy"] = self.phantom_anatomy
        if self.cpu_autocast_mode()[0] != "off":
            key["cpu_autocast"] = self.cpu_autocast_mode()[0]
        return key


def resolve_settings(profile_name: str, **overrides) -> Settings:
    """The named profile with every non-None override applied.

    Args:
        profile_name: a key of ``PROFILES``.
        **overrides: Settings field -> value; None means "keep the profile's value".

    Raises:
        ValueError: for an unknown profile, an unknown field or a value out of range.
    """
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; choose one of {sorted(PROFILES)}")
    settings = Settings(**dataclasses.asdict(PROFILES[profile_name]))
    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(settings, key) or key in ("name", "profile", "overridden"):
            raise ValueError(f"unknown benchmark setting {key!r}")
        if key in ("folds", "models", "synth_size", "seeds"):
            value = tuple(value)
        if getattr(settings, key) != value:
            settings.overridden.append(key)
        setattr(settings, key, value)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    for key in ("epochs", "iterations", "val_iterations", "synthetic_cases"):
        value = getattr(settings, key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if not settings.folds:
        raise ValueError("--folds is empty")
    bad = [f for f in settings.folds if f < 0]
    if bad or len(set(settings.folds)) != len(settings.folds):
        raise ValueError(f"--folds must be distinct non-negative fold numbers, got {list(settings.folds)}")
    if settings.seeds is not None:
        if not settings.seeds:
            raise ValueError("--seeds is empty")
        if len(set(settings.seeds)) != len(settings.seeds) or not all(0 <= s <= MAX_SEED for s in settings.seeds):
            raise ValueError(f"--seeds must be distinct integers from 0 to {MAX_SEED}, got {list(settings.seeds)}")
    if settings.cpu_autocast not in CPU_AUTOCAST_CHOICES:
        raise ValueError(f"--cpu-autocast must be one of {', '.join(CPU_AUTOCAST_CHOICES)}, got "
                         f"{settings.cpu_autocast!r}")
    from nnunet_poolskip.dataset_conversion.phantoms import ANATOMY_SCALES

    if settings.phantom_anatomy not in ANATOMY_SCALES:
        raise ValueError(f"--phantom-anatomy must be one of {', '.join(sorted(ANATOMY_SCALES))}, got "
                         f"{settings.phantom_anatomy!r}")
    if settings.device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {settings.device!r}")
    if settings.num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {settings.num_gpus}")
    if settings.num_gpus > 1 and settings.device != "cuda":
        raise ValueError("--num-gpus > 1 uses nnU-Net's DDP training, which needs --device cuda")
    if settings.parallel_trainings < 1:
        raise ValueError(f"--parallel-trainings must be >= 1, got {settings.parallel_trainings}")
    if settings.parallel_trainings > 1 and settings.device != "cpu":
        raise ValueError("--parallel-trainings > 1 shares the CPUs between trainings (--device cpu); on GPUs train "
                         "one fold at a time or emit SLURM jobs (--emit slurm)")
