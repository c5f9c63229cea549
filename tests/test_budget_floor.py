"""A FLOPs target that cannot be reached above a group's floor is a budget failure (exit 3),
never a model that silently kept most of its FLOPs."""

from __future__ import annotations

import re
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


# ------------------------------------------------------------- every method, through the CLI
class MostlyFrozenClassifier(MostlyFrozen):
    """:class:`MostlyFrozen` with its map averaged into 10 logits (a classifier ``compress run``
    can fine-tune and evaluate); the prunable share is as small."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).mean(dim=(2, 3))


ARCH = "tests.test_budget_floor:MostlyFrozenClassifier"


@pytest.fixture(scope="module")
def mostly_frozen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from compressor.checkpoint import save_checkpoint
    from tests.test_pipeline import _fake_cifar

    root = tmp_path_factory.mktemp("floor")
    data = _fake_cifar(root / "cifar")
    torch.manual_seed(0)
    meta = {"arch": ARCH, "input_shape": [3, 32, 32], "num_classes": 10, "dataset": f"cifar10:{data}"}
    return {"root": root, "ckpt": save_checkpoint(MostlyFrozenClassifier().eval(), root / "m.pt", meta=meta)}


def _cli(*args: str) -> Any:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("method", "floor"), [("l1-uniform", "20%"), ("eagleeye", "5%"), ("epruner", "10%"), ("halp", "20%")]
)
def test_prune_an_unreachable_target_exits_3_saying_what_was_reached(
    mostly_frozen: dict[str, Any], method: str, floor: str
) -> None:
    out = mostly_frozen["root"] / f"slim_{method}.pt"
    extra = ["-O", "candidates=2"] if method == "eagleeye" else []
    res = _cli("prune", str(mostly_frozen["ckpt"]), "--arch", ARCH, "--method", method, "--flops", "0.5",
               *extra, "-o", str(out))  # fmt: skip
    assert res.exit_code == 3, res.output
    assert re.search(r"reached 0\.\d+ of the FLOPs, not the target 0\.5", res.output), res.output
    assert f"({floor} of its channels" in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("method", ["eagleeye", "epruner", "halp"])
def test_prune_a_reachable_target_keeps_every_group_above_its_floor(
    mostly_frozen: dict[str, Any], method: str
) -> None:
    from compressor.checkpoint import load_checkpoint

    out = mostly_frozen["root"] / f"slim85_{method}.pt"
    extra = ["-O", "candidates=3"] if method == "eagleeye" else []
    res = _cli("prune", str(mostly_frozen["ckpt"]), "--arch", ARCH, "--method", method, "--flops", "0.85",
               *extra, "-o", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    slim, _meta = load_checkpoint(out, arch=ARCH)
    floor = 2 if method == "halp" else 1  # 20% of 8 channels, else 5% or 10% of them
    assert floor <= slim.c1.out_channels < 8, slim.c1.out_channels  # pruned, above the floor


def test_run_an_unreachable_target_exits_3(mostly_frozen: dict[str, Any]) -> None:
    out = mostly_frozen["root"] / "run_out"
    res = _cli("run", str(mostly_frozen["ckpt"]), "--arch", ARCH, "--method", "epruner", "--flops", "0.5",
               "--target", "server", "--epochs", "0", "-o", str(out))  # fmt: skip
    assert res.exit_code == 3, res.output
    assert "epruner reached 0." in res.output and "(10% of its channels" in res.output, res.output


class Chain(nn.Module):
    """Wide enough that a deep target cuts groups towards their floor."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 40, 3, padding=1), nn.Conv2d(40, 40, 3, padding=1)
        self.c3 = nn.Conv2d(40, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_eagleeye_and_epruner_never_cut_a_group_below_its_floor() -> None:
    from compressor.methods.eagleeye import perturb_strategy, sample_strategy, uniform_strategy
    from compressor.methods.epruner import EPrunerOptions
    from compressor.methods.epruner import search as epruner_search
    from compressor.methods.spec import MethodContext

    graph = build_graph(Chain().eval(), input_shape=(1, 3, 16, 16))
    sizes = {g.name: g.size for g in graph.prunable}
    assert sorted(sizes.values()) == [40, 40]
    cands = [uniform_strategy(graph, 0.06, tolerance=0.1, max_ratio=0.9)]
    cands += [
        sample_strategy(graph, 0.06, seed=0, index=i, ratio_max=1.0, tolerance=0.1, max_ratio=0.9)
        for i in range(8)
    ]
    cands += [
        perturb_strategy(
            graph, 0.06, {n: 3 for n in sizes}, seed=0, index=i, sigma=0.3, tolerance=0.1, max_ratio=0.9
        )
        for i in range(8)
    ]
    for c in cands:
        assert min(c.counts.values()) >= 4, c.counts  # 10% of 40
    assert any(min(c.counts.values()) == 4 for c in cands)  # the floor binds: 0.95 would allow 2
    plan = epruner_search(
        None, graph, flops=0.06, data=None, seed=0, options=EPrunerOptions(), context=MethodContext()
    )
    counts = {n: len(k) for n, k in plan.groups.items()}
    assert counts and min(counts.values()) >= 4, counts
