"""Atomic file and folder writes: write under a hidden temporary name beside the target, then rename.

A reader (or a resumed run) therefore sees either the old complete file or the new complete file,
never a half-written one, and a crash leaves at most a hidden ``.tmp`` file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


def temporary_sibling(path: PathLike) -> Path:
    """A hidden name in ``path``'s folder that keeps its file ending (SimpleITK and matplotlib need it)."""
    path = Path(path)
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
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


def replace_directory(temporary: PathLike, target: PathLike) -> None:
    """Move a completely written folder ``temporary`` to ``target``, replacing any old ``target``.

    The old folder is first renamed aside, so ``target`` is never a mixture of old and new content.
    """
    temporary, target = Path(temporary), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(temporary, target)
        shutil.rmtree(old)
    else:
        os.replace(temporary, target)
