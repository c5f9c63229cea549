"""One run at a time per out folder: ``out/.lock``, held (``flock``) for the whole run.

A second ``compress run`` into the same folder fails at once with a :class:`UsageError` (exit 2)
naming the process that holds it, instead of scoring candidates twice and resuming from the
other run's half-written state. The lock is the kernel's, so a killed run leaves none behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compressor.errors import UsageError

LOCK_NAME = ".lock"


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold the lock of the folder ``out`` (created if missing) while the body runs."""
    if out.exists() and not out.is_dir():  # prepare_out says what is wrong
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {str(out)!r}: {e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise UsageError(
                f"another run (pid {holder}) is writing to {out}; wait for it to finish or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["LOCK_NAME", "out_lock"]
