"""A pruning plan: which channel indices of each channel group stay. Plain JSON on disk."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import UsageError
from compressor.io import atomic_write_json

PLAN_FORMAT = "compressor.plan/1"


@dataclass
class Plan:
    """Kept channels per group of a :class:`~compressor.graph.ChannelGraph`.

    ``groups`` maps a group name to the sorted indices (into the group's channels) that stay.
    A group that is absent keeps all its channels. ``group_sizes`` records each listed
    group's original size so a plan can be checked against the model it is applied to.
    """

    method: str
    groups: dict[str, list[int]]
    group_sizes: dict[str, int]
    seed: int | None = None
    input_shape: list[int] | None = None
    flops_target: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def kept(self, name: str) -> int:
        return len(self.groups[name]) if name in self.groups else self.group_sizes.get(name, 0)

    def ratios(self) -> dict[str, float]:
        """Fraction of channels removed, per listed group."""
        return {g: 1.0 - len(k) / self.group_sizes[g] for g, k in self.groups.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise UsageError(
                f"not a compressor plan (format {fmt!r}, expected {PLAN_FORMAT!r}); "
                "make one with 'compress search'"
            )
        try:
            return cls(
                method=d["method"],
                groups={k: [int(i) for i in v] for k, v in d["groups"].items()},
                group_sizes={k: int(v) for k, v in d["group_sizes"].items()},
                seed=d.get("seed"),
                input_shape=d.get("input_shape"),
                flops_target=d.get("flops_target"),
                info=d.get("info") or {},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"malformed plan: {e!r}") from e

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"plan file {str(p)!r} does not exist; make one with 'compress search'")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"plan file {str(p)!r} is not valid JSON: {e}") from e
        return cls.from_dict(d)
