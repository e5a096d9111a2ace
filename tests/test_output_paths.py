"""Every command's output paths (except predict's, tested with predict): missing folders are created, and a path
that could not be written (a file where a folder must be) is refused with exit status 2 and a message naming the
option, before any input is read, and nothing is written."""
from __future__ import annotations

import pytest

from nnunet_poolskip.cli import main


def _commands(blocker, tmp_path):
    """(argv, option named in the message, path named in the message) per output path of every command."""
    missing = tmp_path / "missing"  # inputs that do not exist: the output must be refused before they are read
    return [
        (["evaluate", missing, missing, "--labels", "1", "-o", blocker / "summary.json"], "-o/--output",
         blocker / "summary.json"),
        (["evaluate", missing, missing, "--labels", "1", "-o", tmp_path / "s.json", "--csv", blocker / "c.csv"],
         "--csv", blocker / "c.csv"),
        (["compare", missing / "a.json", "-o", blocker / "compare"], "-o/--output", blocker / "compare"),
        (["compare", missing / "a.json", "-o", blocker], "-o/--output", blocker),
        (["diagnose", missing, "-o", blocker / "diagnostics"], "-o/--output", blocker / "diagnostics"),
        (["synth", "--kind", "btcv", "--cases", "1", "-o", blocker / "phantoms"], "-o", blocker / "phantoms"),
        (["convert-btcv", missing, "-o", blocker / "raw"], "-o/--output-root", blocker / "raw"),
        (["convert-amos", missing, "-o", blocker], "-o/--output-root", blocker),
        (["benchmark", "--profile", "demo", "--output", blocker / "results"], "--output", blocker / "results"),
        (["benchmark", "--profile", "demo", "--output", tmp_path / "results", "--work", blocker / "work"], "--work",
         blocker / "work" / "nnUNet_raw"),
        (["benchmark", "--profile", "demo", "--output", tmp_path / "results", "--work", tmp_path / "work", "--emit",
          "slurm", blocker / "jobs"], "--emit slurm", blocker / "jobs"),
    ]


@pytest.mark.parametrize("index", range(11))
def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, index):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv, option, path = _commands(blocker, tmp_path)[index]
    assert main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err
    assert f"error: {option} {path}" in error and "Traceback" not in error
    assert f"{blocker} is a file, not a folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and blocker.read_text() == "not a folder"
