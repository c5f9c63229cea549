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
