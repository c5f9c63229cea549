"""The out folder of a run: its artifacts, its fingerprint, resuming and ``--force``.

::

    out/
      model.onnx  model.fp32.onnx (when INT8 ships)  model.pt  plan.json  candidates.jsonl  report.json  report.html  test_data_set_0/
      .state/     run fingerprint, cached profile of the original, scratch ONNX files

A rerun with the same settings into the same ``out`` picks up what was finished; a rerun with
*different* settings is refused with a :class:`UsageError` rather than mixing stale artifacts in
(pick another ``out`` or pass ``force=True`` to discard them). A folder holding artifacts
without a fingerprint is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import UsageError
from compressor.io import atomic_write_json

ARTIFACTS = (
    "model.onnx",
    "model.fp32.onnx",
    "model.pt",
    "plan.json",
    "candidates.jsonl",
    "report.json",
    "report.html",
    "test_data_set_0",
)
STATE_DIR = ".state"
RUN_STATE_FORMAT = "compressor.run-state/1"


@dataclass(frozen=True)
class Workspace:
    """Paths of one run's out folder."""

    out: Path

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR

    @property
    def plan(self) -> Path:
        return self.out / "plan.json"

    @property
    def candidates(self) -> Path:
        return self.out / "candidates.jsonl"

    @property
    def model_pt(self) -> Path:
        return self.out / "model.pt"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def report_html(self) -> Path:
        return self.out / "report.html"

    def present(self) -> list[str]:
        """The artifacts already in the folder."""
        return [a for a in ARTIFACTS if (self.out / a).exists()]

    def artifacts(self) -> dict[str, str]:
        return {a: str(self.out / a) for a in self.present()}


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(settings_fingerprint: dict[str, Any], checkpoint_sha256: str, target: Any) -> dict[str, Any]:
    """What defines a run's results: the checkpoint's content, the fingerprint settings, the
    target's every setting."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        **settings_fingerprint,
        "target_settings": target.to_dict() if hasattr(target, "to_dict") else None,
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (to name exactly what changed between two runs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_out(ws: Workspace, fp: dict[str, Any], *, force: bool, note: Callable[[str], None]) -> None:
    """Check ``ws.out`` against the run's fingerprint ``fp`` (resume, refuse or ``force``), create
    it and record the fingerprint. ``note`` says what happened (resuming, discarding)."""
    out = ws.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the artifacts")
    fp = json.loads(json.dumps(fp, default=str))  # as it reads back from run.json
    state_file = ws.state / "run.json"
    present = ws.present()
    if force:
        for a in (*ARTIFACTS, "model.pt.state"):  # and an interrupted fine-tune's state
            p = out / a
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        shutil.rmtree(ws.state, ignore_errors=True)
        if present:
            note(f"--force: discarded the earlier artifacts in {out} ({', '.join(present)})")
    elif state_file.is_file():
        try:
            old = json.loads(state_file.read_text(encoding="utf-8")).get("fingerprint") or {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old != fp:
            was, now = _flat(old), _flat(fp)
            diff = [
                f"{k}: {was.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)
            ]
            diff = diff[:6] + (["..."] if len(diff) > 6 else [])
            raise UsageError(
                f"{out} holds the artifacts of a run with different settings ({'; '.join(diff) or 'unreadable state'}); "
                "pick a new --out, or pass --force to discard them and start over"
            )
        if present:
            note(f"resuming in {out}: found {', '.join(present)} from an earlier run with the same settings")
    elif present:
        raise UsageError(
            f"{out} already holds {', '.join(present)} not written by 'compress run' with a known fingerprint; "
            "pick a new --out, or pass --force to replace them"
        )
    try:
        ws.state.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {str(out)!r}: {e}") from e
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {str(out)!r} is not writable")
    atomic_write_json(state_file, {"format": RUN_STATE_FORMAT, "fingerprint": fp})


__all__ = ["ARTIFACTS", "STATE_DIR", "Workspace", "fingerprint", "prepare_out", "sha256_file"]
