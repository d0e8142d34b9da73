"""The one atomic writer: every file latentlab writes (JSON, JSONL, NPY/NPZ, CSV, text, bytes) goes through here.

A file is written to a temp file in its own directory, flushed to disk, then renamed into place, so a reader (or
a crash) never sees half of it and an earlier version stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from latentlab.errors import LatentLabError


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` into ``path``, atomically."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 ``text`` into ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (numpy/torch scalars through ``float``), atomically."""
    return write_text(path, json.dumps(data, indent=2, default=float) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """One JSON object a line (non-ASCII kept as is), atomically; ``records`` may be a generator."""

    def write(handle: IO[bytes]) -> None:
        for record in records:
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    return write_atomic(path, write)


def write_npy(path: str | os.PathLike, array) -> Path:
    """A numpy array as .npy, atomically (``np.save(filename)`` would add ".npy" to the temp name)."""
    import numpy as np

    return write_atomic(path, lambda handle: np.save(handle, np.ascontiguousarray(array)))


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Named numpy arrays as one uncompressed .npz, atomically."""
    import numpy as np

    return write_atomic(path, lambda handle: np.savez(handle, **arrays))


class ResultsExistError(LatentLabError):
    """A results folder already holds results and overwriting was not asked for."""


def refuse_existing(target: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> Path:
    """``target`` as a Path; a non-empty existing folder (or a file) there is refused unless ``overwrite``."""
    target = Path(target)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise ResultsExistError(f"{target} already holds results; pass {flag} to replace them, or --out another folder")
    return target


@contextmanager
def staged_dir(target: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> Iterator[Path]:
    """Write a folder as a whole: yields an empty temp folder beside ``target``, renamed onto it on success.

    On an error (or Ctrl-C) the temp folder goes and ``target`` is untouched, so a results folder is always one
    run's complete output: no stale files of an earlier run beside a new table, no half-written table. An existing
    ``target`` is refused unless ``overwrite``, in which case it is replaced only once the new one is complete.
    """
    target = refuse_existing(target, overwrite, flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        refuse_existing(target, overwrite, flag)  # another writer may have made it meanwhile
    except ResultsExistError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".replaced"))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
