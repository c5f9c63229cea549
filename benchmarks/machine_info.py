"""What every benchmark records about the machine it ran on (imported by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info(note: str, **extra: Any) -> dict[str, Any]:
    """Platform, CPU count, load average, library versions and torch threads, plus ``extra``."""
    import numpy as np
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
        "note": note,
    }


def code_version() -> dict[str, Any]:
    """The compressor version and the git commit a result was measured with, and whether the code
    differed from that commit (results under benchmarks/results/ are not counted as code)."""
    import subprocess
    from pathlib import Path

    import compressor

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, status = "", ""
    return {"compressor": compressor.__version__, "git_commit": commit or None, "git_dirty": bool(status)}
