"""Directories that appear whole or not at all: written in a temp dir beside the target, then renamed.

A crash mid-write leaves the previous version (or nothing) where readers look, never half a model or
dataset. (Checkpoints are the exception: every process writes into one temp dir through accelerate, so
``checkpoint.py`` renames it itself once all have finished.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from distill.errors import DistillError


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temp dir beside ``path``; when the block ends without error it becomes ``path``.

    ``replace``: an existing ``path`` is swapped out (moved aside, then removed). Without it an existing
    ``path`` wins — another process that wrote the same cache entry first — and the temp dir is dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.exists():  # not another process winning the race
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | os.PathLike, fix: str) -> Path:
    """Make the dir ``path`` if needed and write (then drop) a file in it, before any work depends on it.

    A file is made rather than ``os.access`` asked: that also catches read-only mounts and ACLs (not a full
    disk: the file stays empty). An unwritable dir is one line naming it and ``fix`` (what to change)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise DistillError(f"cannot write in {path} ({e.strerror or type(e).__name__}); {fix}") from None
    return path
