"""The version has one source (nnunet_poolskip.__version__), and CHANGELOG.md's newest entry is that version."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nnunet_poolskip

ROOT = Path(__file__).resolve().parent.parent


def test_changelog_newest_entry_is_the_package_version():
    headings = re.findall(r"^## (\d+\.\d+\.\d+)\b", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings, "CHANGELOG.md has no '## X.Y.Z' version heading"
    assert headings[0] == nnunet_poolskip.__version__
    versions = [tuple(map(int, h.split("."))) for h in headings]
    assert versions == sorted(versions, reverse=True), f"CHANGELOG.md versions not newest first: {headings}"


def test_pyproject_reads_the_version_from_the_package():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"], "a second version in pyproject.toml's [project]"
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "nnunet_poolskip.__version__"}


def test_cli_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "nnunet_poolskip.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nnunet-poolskip", nnunet_poolskip.__version__]
