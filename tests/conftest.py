"""Shared fixtures: a planned toy dataset and cached short CPU trainings through nnU-Net's real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from toydata import write_toy_dataset  # noqa: E402

BIN = Path(sys.executable).parent
TOY_ID = 901
CPU_PLANS = "nnUNetPlansCPU"


def run_cli(args: List[str], env: Dict[str, str], timeout: float = 300, check: bool = True,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run a console script from this venv; on failure, fail the test with its output."""
    exe = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    proc = subprocess.run([exe, *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
                    f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def short_schedule_env(epochs: int = 1, iterations: int = 3, val_iterations: int = 2) -> Dict[str, str]:
    from nnunet_poolskip.training.schedule import schedule_environment

    return schedule_environment(epochs, iterations, val_iterations)


@dataclass
class NnunetWorkspace:
    """nnU-Net folders and the environment for subprocesses, with a planned toy dataset in it."""

    root: Path
    env: Dict[str, str]
    dataset_id: int = TOY_ID
    dataset_name: str = f"Dataset{TOY_ID:03d}_Toy"
    plans: str = CPU_PLANS
    _trained: Dict[tuple, Path] = field(default_factory=dict)

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw" / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed" / self.dataset_name

    def model_folder(self, trainer: str, configuration: str = "3d_fullres", plans: Optional[str] = None) -> Path:
        return self.root / "nnUNet_results" / self.dataset_name / f"{trainer}__{plans or self.plans}__{configuration}"

    def train(self, trainer: str, fold: int = 0, configuration: str = "3d_fullres",
              plans: Optional[str] = None, extra_env: Optional[Dict[str, str]] = None) -> Path:
        """Train one fold with the short schedule through ``nnUNetv2_train`` (cached per session)."""
        key = (trainer, fold, configuration, plans or self.plans)
        folder = self.model_folder(trainer, configuration, plans)
        if not (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            env = {**self.env, **short_schedule_env(), **(extra_env or {})}
            run_cli(["nnUNetv2_train", str(self.dataset_id), configuration, str(fold), "-tr", trainer,
                     "-p", plans or self.plans, "-device", "cpu"], env, timeout=600)
        self._trained[key] = folder
        return folder


def nnunet_env(root: Path) -> Dict[str, str]:
    from nnunet_poolskip.training.discovery import ext_trainer_value

    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        "nnUNet_extTrainer": ext_trainer_value(""),
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "f",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    })
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(scope="session")
def toy_workspace(tmp_path_factory) -> NnunetWorkspace:
    """A toy dataset (6 training + 2 test cases), planned and preprocessed for 3d_fullres, with CPU plans.

    Training env has nnUNet_n_proc_DA=0 (no worker processes); planning runs without it, since
    nnUNetv2_plan_and_preprocess crashes with it.
    """
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    write_toy_dataset(root / "nnUNet_raw", TOY_ID, n_cases=6, n_test=2)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(TOY_ID), "-c", "3d_fullres", "-np", "1"], env)
    run_cli(["nnunet-poolskip", "derive-plans", "-d", str(TOY_ID)], env)
    env["nnUNet_n_proc_DA"] = "0"
    return NnunetWorkspace(root=root, env=env)


# ------------------------------------------------------------------ the fast loop: pytest -m "not integration"
# A test that runs nnU-Net's command line (directly, through the session's planned toy data set, or through a
# benchmark run) is an integration test. Tests that use the toy data set are marked here; any other unmarked test
# that starts nnU-Net's command line fails and says to add the marker, so the split of the fast loop stays true.
INTEGRATION_FIXTURES = frozenset({"toy_workspace", "phantom_ct_model"})
"""Fixtures that run nnU-Net's command line: every test using them is an integration test."""

_running: Dict[str, object] = {"item": None, "integration": False}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection and pytest-xdist's grouping
def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        if "toy_workspace" in item.fixturenames:
            # one xdist worker for every user of the toy data set (scripts/test.sh: --dist loadgroup): its planning
            # and the folds it caches are made once, not once per worker
            item.add_marker(pytest.mark.xdist_group("toy_workspace"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running.update(item=item.nodeid, integration=item.get_closest_marker("integration") is not None)
    try:
        yield
    finally:
        _running.update(item=None, integration=False)


def runs_nnunet_command_line(args) -> Optional[str]:
    """The program if ``args`` (a Popen argument) starts nnU-Net's command line or a benchmark run, else None."""
    import shlex

    argv = shlex.split(args) if isinstance(args, str) else [os.fspath(a) for a in args]
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program.startswith("nnUNetv2_"):
        return program
    if program == "nnunet-poolskip" and len(argv) > 1 and argv[1] == "benchmark" and not (
            {"--dry-run", "--help", "-h", "--emit"} & set(argv)):
        return "nnunet-poolskip benchmark"
    return None


_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self, args, *positional, **keywords):
    program = runs_nnunet_command_line(args)
    if program and _running["item"] is not None and not _running["integration"]:
        raise RuntimeError(f"{_running['item']} runs {program} but is not marked @pytest.mark.integration: mark it "
                           f"(the fast loop, pytest -m 'not integration', must not run nnU-Net's command line)")
    _popen_init(self, args, *positional, **keywords)


subprocess.Popen.__init__ = _guarded_popen_init

@pytest.fixture(scope="session")
def real_scans() -> Path:
    """The real CT, its DICOM series and an MRI with label maps: the unpacked ``reference_files`` folder of the pinned
    TotalSegmentator sdist (:mod:`nnunet_poolskip.utilities.real_ct`, fetched by scripts/setup.sh). Where it was never
    fetched the test skips and says so, unless ``NNUNET_POOLSKIP_REAL_CT_REQUIRED=1`` (CI sets it): then it fails."""
    from nnunet_poolskip.utilities.real_ct import RealCTError, reference_files

    try:
        folder = reference_files()
    except RealCTError as error:
        folder, why = None, str(error)
    else:
        why = ("the real-CT reference files were never fetched: run `python -m nnunet_poolskip.utilities.real_ct "
               "fetch` (scripts/setup.sh does)")
    if folder is None:
        if os.environ.get("NNUNET_POOLSKIP_REAL_CT_REQUIRED") == "1":
            pytest.fail(f"NNUNET_POOLSKIP_REAL_CT_REQUIRED=1 but {why}")
        pytest.skip(why)
    return folder
