"""``benchmarks/gpu_check.sh --tiny``: every stage of the GPU check runs end to end on the CPU and writes JSON and
markdown with the figures the GPU run will fill in (the tiny figures themselves mean nothing)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = ("baseline", "straightforward", "lean")


@pytest.mark.integration
def test_gpu_check_tiny_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", str(out)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["tiny"] is True
    stages = results["stages"]
    assert set(stages) == {"overhead", "train", "ensemble", "overhead_compile"}
    assert all(record["status"] == "ok" for record in stages.values()), {k: v["status"] for k, v in stages.items()}

    overhead = stages["overhead"]["figures"]
    assert set(overhead["precisions"]) == {"fp32", "autocast"}
    for rows in overhead["precisions"].values():
        for key in ("parameters", "flops", "saved", "time"):
            assert set(rows[key]) == set(NETWORKS) and all(v > 0 for v in rows[key].values()), key
    compiled = stages["overhead_compile"]["figures"]
    assert compiled["compile"] == "eager"
    rows = compiled["precisions"]["autocast"]
    # every network either compiled and ran (a first-step time) or is reported with its error
    assert set(rows["first_step_s"]) | set(rows["errors"]) == set(NETWORKS)
    assert "baseline" in rows["first_step_s"] and rows["time"]["baseline"] > 0

    train = stages["train"]
    assert train["schedule"] == {"epochs": 1, "iterations": 1, "val_iterations": 1}
    for trainer in ("nnUNetTrainerBaseline", "nnUNetTrainerPoolSkip"):
        figures = train["runs"][trainer]["figures"]
        assert figures["trainer"] == trainer and len(figures["epoch_seconds"]) == 1
        assert figures["epoch_seconds"][0] > 0 and figures["peak_rss_mib"] > 0

    ensemble = stages["ensemble"]["figures"]
    assert set(ensemble["summary"]["median_ratios"]) >= {"a/b", "a/c"}
    (case, agreement), = ensemble["agreement"].items()
    assert agreement["max_abs_probability_difference_a_vs_mean_of_folds"] < 1e-4
    assert agreement["label_voxels_differing_a_vs_nnUNetv2_ensemble"] == 0
    for method in ("a", "b", "c"):
        assert ensemble["summary"]["per_case"][case][method]["seconds_median"] > 0

    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check (--tiny")
    for heading in ("## overhead: ok", "## overhead_compile: ok", "## train: ok", "## ensemble: ok"):
        assert heading in markdown
    assert not (out / "work").exists()  # the work folder is removed unless --workdir is given


def _fake_python(folder: Path, body: str) -> Path:
    """A ``python`` and ``python3`` on PATH that are not this one: ``body`` is their shell script."""
    folder.mkdir()
    for name in ("python", "python3"):
        python = folder / name
        python.write_text(f"#!/usr/bin/env bash\n{body}\n")
        python.chmod(0o755)
    return folder


@pytest.mark.integration  # three Python start-ups that import torch: seconds, not a unit test
def test_gpu_check_uses_the_active_python_and_falls_back_only_without_the_package(tmp_path):
    import sys

    script = str(ROOT / "benchmarks" / "gpu_check.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_POOLSKIP_"))}
    # the active Python (this one) has the package: used as it is, whether or not the checkout has a .venv
    active = _fake_python(tmp_path / "active", f'exec "{sys.executable}" "$@"')
    proc = subprocess.run(["bash", script, "--help"], env={**env, "PATH": f"{active}:{env['PATH']}"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"using the active environment's Python: {sys.executable}" in proc.stderr
    assert "outdir" in proc.stdout  # gpu_check.py's own --help
    # an active Python without the package: the checkout's .venv, or a message saying how to get one
    lacking = _fake_python(tmp_path / "lacking", "exit 1")
    proc = subprocess.run(["bash", script, "--help"], env={**env, "PATH": f"{lacking}:{env['PATH']}"},
                          capture_output=True, text=True, timeout=300)
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert proc.returncode == 0 and "using the checkout's .venv" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 2
        assert f"lacks torch, nnunetv2 or nnunet_poolskip and there is no .venv in {ROOT}" in proc.stderr
