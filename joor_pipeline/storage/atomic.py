"""Replace a partition directory all at once, so readers see the old data or the new, never a mix.

Writers build the new partition in a staging directory beside the data, then :func:`replace_dir` swaps it in
with two renames on the same filesystem. Anything that fails before the swap deletes the staging directory and
leaves the previous partition exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A fresh hidden directory under ``parent``, removed afterwards whether or not the work succeeded."""
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f".staging-{uuid.uuid4().hex}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: Path, target: Path, *, trash: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is moved into ``trash`` first and then deleted.

    ``trash`` must be on the same filesystem (the staging directory is the natural place) and outside any glob
    readers use, so the old data never shows up twice.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    trash.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if target.exists():
        old = trash / f"old-{uuid.uuid4().hex}"
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write a file and flush it to disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
