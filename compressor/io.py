"""Atomic file writes: every artifact appears only when complete (temp name, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ensure_parent(path: str | os.PathLike[str]) -> Path:
    """Create ``path``'s folder; a clear :class:`UsageError` (exit 2) when that is impossible."""
    from compressor.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a folder; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(
            f"cannot write {str(path)!r}: {str(path.parent)!r} is not a folder (a file is in the way)"
        ) from None
    except OSError as e:
        raise UsageError(
            f"cannot create the folder {str(path.parent)!r} for {path.name!r}: {e.strerror or e}"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} is not writable")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``.

    The temp file lives in the destination folder (same filesystem, so the rename is atomic)
    and is removed if ``write`` raises, so an interruption never leaves a half-written file.
    """
    path = ensure_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; artifacts are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    path = ensure_parent(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    with open(path, "ab+") as f:
        if f.tell() > 0:  # a torn last line (killed mid-write) must not swallow this record
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read complete JSON lines; a torn last line (from a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
