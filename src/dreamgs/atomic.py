"""Atomic file output: write to a temporary file in the same folder, then ``os.replace``.

Readers never see a half-written file under the final name, and a failure (an exception, a
killed encoder) leaves no partial file behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name used for ``path`` while it is written (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The temporary name keeps ``path``'s suffix (``x.png`` is written as ``.x.png.tmp-PID.png``) so tools
    that pick a format from the extension (ffmpeg, Pillow) still see the right one. If the body
    raises, the temporary file is removed and the exception propagates; ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an output file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
