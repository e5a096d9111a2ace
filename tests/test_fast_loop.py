"""The fast loop's split (``pytest -m "not integration"``) stays true: see tests/conftest.py."""
from __future__ import annotations

import subprocess

import pytest
from conftest import BIN, runs_nnunet_command_line


@pytest.mark.parametrize("args, program", [
    (["nnUNetv2_train", "17", "3d_fullres", "0"], "nnUNetv2_train"),
    (["/venv/bin/nnUNetv2_plan_and_preprocess", "-d", "17"], "nnUNetv2_plan_and_preprocess"),
    ("nnUNetv2_predict -i a -o b", "nnUNetv2_predict"),
    (["nnunet-poolskip", "benchmark", "--profile", "demo"], "nnunet-poolskip benchmark"),
    (["nnunet-poolskip", "benchmark", "--profile", "demo", "--dry-run"], None),
    (["nnunet-poolskip", "evaluate", "ref", "pred"], None),
    (["python", "-c", "print(1)"], None),
])
def test_what_counts_as_nnunet_command_line(args, program):
    assert runs_nnunet_command_line(args) == program


def test_an_unmarked_test_cannot_start_nnunet_command_line():
    with pytest.raises(RuntimeError, match=r"test_an_unmarked_test_cannot_start_nnunet_command_line runs "
                                           r"nnUNetv2_train but is not marked @pytest.mark.integration"):
        subprocess.Popen(["nnUNetv2_train", "--help"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.integration
def test_a_marked_test_may(tmp_path):
    # the venv's own program: CI runs the venv's python without putting its bin folder on PATH
    done = subprocess.run([str(BIN / "nnUNetv2_train"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "dataset_name_or_id" in done.stdout


def test_toy_workspace_users_are_left_out_of_the_fast_loop():
    """tests/diagnostics/test_training_curves.py has tests with and without the toy data set (fold_folder uses it)."""
    import sys
    from pathlib import Path

    module = Path(__file__).parent / "diagnostics" / "test_training_curves.py"
    source = module.read_text()
    assert "def fold_folder(toy_workspace)" in source, "the module this test relies on changed"

    def collected(marker: str) -> set:
        done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-m", marker, str(module)], capture_output=True, text=True)
        return {line.split("::")[1].split("[")[0] for line in done.stdout.splitlines() if "::" in line}

    fast, slow = collected("not integration"), collected("integration")
    uses_toy = {name for name in fast | slow if f"def {name}(fold_folder" in source}
    assert uses_toy and slow == uses_toy and not (fast & uses_toy)
