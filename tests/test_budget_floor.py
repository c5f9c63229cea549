"""A FLOPs target that cannot be reached above a group's floor is a budget failure (exit 3),
never a model that silently kept most of its FLOPs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

from compressor.errors import BudgetError
from compressor.graph import build_graph
from compressor.methods.l1_uniform import L1UniformOptions, search


class MostlyFrozen(nn.Module):
    """A big convolution from the input straight to the output (its channels are frozen: the
    input's and the output's) beside a small prunable branch."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(3, 10, 7, padding=3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(x) + self.c2(torch.relu(self.c1(x)))


def _search(model: nn.Module, flops: float, **opts: float) -> Any:
    graph = build_graph(model, input_shape=(1, 3, 16, 16))
    return search(
        model, graph, flops=flops, data=None, seed=0, options=L1UniformOptions(**opts), context=None
    )


def test_unreachable_target_is_a_budget_error_saying_what_was_reached() -> None:
    with pytest.raises(BudgetError, match=r"reached 0\.\d+ of the FLOPs, not the target 0\.5") as e:
        _search(MostlyFrozen().eval(), 0.5)
    assert e.value.exit_code == 3 and "20% of its channels" in str(e.value)


def test_reachable_target_keeps_every_group_above_its_floor() -> None:
    plan = _search(MostlyFrozen().eval(), 0.9)
    assert plan.groups and all(r <= 0.8 for r in plan.ratios().values()), plan.ratios()


def test_no_prunable_group_is_a_budget_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()  # its only channels are the output's
    with pytest.raises(BudgetError, match="no prunable channel group"):
        _search(model, 0.5)
