"""Atomic file and folder writes: write under a hidden temporary name beside the target, then rename.

A reader (or a resumed run) therefore sees either the old complete file or the new complete file,
never a half-written one, and a crash leaves at most a hidden ``.tmp`` file behind (a hidden folder for
:func:`replace_directory`, which :func:`remove_stale_temporaries` removes later). Missing parent folders are
created; :func:`check_output_path` refuses, before any work, an output path that could not be written.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator, List, Union

PathLike = Union[str, os.PathLike]


def temporary_sibling(path: PathLike) -> Path:
    """A hidden name in ``path``'s folder that keeps its file ending (SimpleITK and matplotlib need it)."""
    path = Path(path)
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the option and the path."""


def check_output_path(path: PathLike, option: str, folder: bool = False) -> Path:
    """Refuse an output path that could not be written, so that a command fails before its work, not after.

    Folders missing on the way are fine (the writers here create them); refused are a file where a folder is
    needed (``path`` itself when ``folder``, or any folder on the way), a folder where a file is needed, and a
    folder this user may not write in. Nothing is created.

    Args:
        path: the file (or, with ``folder``, the folder) a command will write.
        option: the command-line option that named it, for the message (``-o/--output``, ``--csv``).
        folder: ``path`` is a folder to write into rather than a file.

    Returns:
        ``Path(path)``.

    Raises:
        OutputPathError: naming ``option``, ``path`` and what is in the way.
    """
    path = Path(path)
    if path.exists() and folder != path.is_dir():
        what = "is a file, not a folder" if folder else "is a folder; give a file name"
        raise OutputPathError(f"{option} {path} {what}")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{option} {path} cannot be written: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {path} cannot be written: no permission to write in {existing}")
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to ``path``, on error removed.

    ``path``'s folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(text: str, path: PathLike) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(data: Any, path: PathLike, indent: int = 2) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    write_text_atomic(json.dumps(data, indent=indent), path)


def _process_tag() -> str:
    """``<host>-<pid>``: names the process that owns a temporary folder (host too: nnU-Net folders are often
    on a file system shared by several machines, where a pid means nothing)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def temporary_folder(target: PathLike) -> Path:
    """The hidden folder beside ``target`` in which this process writes what :func:`replace_directory` then moves
    to ``target``: ``.<name>.tmp-<host>-<pid>``."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{_process_tag()}")


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this machine."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    except OverflowError:  # larger than any pid
        return True
    return False


def remove_stale_temporaries(target: PathLike) -> List[Path]:
    """Remove the hidden folders that a killed writer of ``target`` left beside it; returns what was removed.

    These are :func:`temporary_folder`'s ``.<name>.tmp-<host>-<pid>`` (and the older ``.<name>.tmp-<pid>``) and
    :func:`replace_directory`'s ``.<name>.old-<host>-<pid>``, each the size of a whole ``target``. One is removed
    only when it was made on this machine and its process no longer exists, so the folder of a writer still
    running (here or on another machine) stays; an ``.old`` folder only when ``target`` exists, since otherwise
    it may hold the only complete copy.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(?:(.+)-)?(\d+)")
    host = socket.gethostname()
    removed = []
    for entry in sorted(target.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            continue
        kind, made_on, pid = match.group(1), match.group(2), int(match.group(3))
        if made_on not in (None, host) or not _process_gone(pid) or (kind == "old" and not target.exists()):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def replace_directory(temporary: PathLike, target: PathLike) -> None:
    """Move a completely written folder ``temporary`` to ``target``, replacing any old ``target``.

    The old folder is first renamed aside, so ``target`` is never a mixture of old and new content.
    """
    temporary, target = Path(temporary), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{_process_tag()}")
        os.replace(target, old)
        os.replace(temporary, target)
        shutil.rmtree(old)
    else:
        os.replace(temporary, target)
