"""EagleEye's finalists: which candidates get a short fine-tune, and on what they are scored."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))


def _ranked(*scores: float) -> list[dict[str, float | int]]:
    """Candidates ranked by score; candidate i has index i + 1 (the uniform plan is index 0)."""
    return [{"index": i + 1, "score": s} for i, s in enumerate(scores)] + [{"index": 0, "score": 10.0}]


def test_finalists_are_the_scores_the_score_cannot_tell_apart_and_the_uniform_plan() -> None:
    from compressor.methods.eagleeye import finalists

    # best 90% on 500 images: one standard error is sqrt(0.9 * 0.1 / 500) = 1.34 points
    ranked = _ranked(90.0, 88.7, 88.6, 80.0)
    out = finalists(ranked, top_k=3, rule="uncertain", z=1.0, n_val=500, uniform_index=0)
    assert [r["index"] for r in out] == [1, 2, 0]  # 88.6 is 1.4 below: told apart; uniform last
    # z = 2 admits 88.6 too; top_k caps the ranked ones, the uniform plan comes on top
    out = finalists(ranked, top_k=3, rule="uncertain", z=2.0, n_val=500, uniform_index=0)
    assert [r["index"] for r in out] == [1, 2, 3, 0]
    # more images, a smaller error: only the best, plus the uniform plan
    out = finalists(ranked, top_k=3, rule="uncertain", z=1.0, n_val=100_000, uniform_index=0)
    assert [r["index"] for r in out] == [1, 0]
    # the paper's "best" rule: the top K scores, nothing added
    out = finalists(ranked, top_k=2, rule="best", z=1.0, n_val=500, uniform_index=0)
    assert [r["index"] for r in out] == [1, 2]
    # top_k 1 is the best score: no fine-tune at all; a lone finalist needs none either
    assert finalists(ranked, top_k=1, rule="uncertain", z=1.0, n_val=500, uniform_index=0) == []
    lone = [{"index": 0, "score": 90.0}, {"index": 1, "score": 50.0}]
    assert finalists(lone, top_k=3, rule="uncertain", z=1.0, n_val=10_000, uniform_index=0) == []


def test_the_holdout_is_left_out_of_the_finetune_and_scored_with_eval_transforms() -> None:
    from compressor.methods.eagleeye import _finetune_split

    x = torch.arange(40, dtype=torch.float32).view(40, 1)
    train = TensorDataset(x, torch.zeros(40, dtype=torch.long))
    train_eval = TensorDataset(-x, torch.zeros(40, dtype=torch.long))  # "eval transforms": negated
    bundle = SimpleNamespace(
        name="toy", num_classes=1, train=train, train_eval=train_eval, val="val", test="test"
    )
    out, k = _finetune_split(bundle, 2000, seed=0)
    assert k == 20  # at most half of the training split
    fit = {float(out.train[i][0]) for i in range(len(out.train))}
    held = {-float(out.val[i][0]) for i in range(len(out.val))}
    assert len(fit) == 20 and len(held) == 20 and not fit & held and fit | held == set(range(40))
    assert all(float(out.val[i][0]) <= 0 for i in range(len(out.val)))  # from train_eval
    assert out.test == [] and bundle.test == "test" and bundle.val == "val"  # a copy, never the test split
    none, k = _finetune_split(bundle, 0, seed=0)
    assert k == 0 and none.train is train and none.val == "val" and none.test == []
    other, _ = _finetune_split(bundle, 8, seed=1)
    assert len(other.val) == 8


def test_search_finetunes_the_finalists_on_held_out_training_images() -> None:
    import dist_search_worker as fx

    plan = fx.run_tiny_search(candidates=6)  # defaults: top_k 3, uncertain, holdout 2000
    ft = plan.info["finetuned"]
    assert 2 <= len(ft) <= 4 and 0 in [r["index"] for r in ft]  # the uniform plan is a finalist
    assert plan.info["finalists_rule"] == "uncertain"
    assert plan.info["finetune_scored_on"] == "48 held-out training images"  # half of 96
    best = max(ft, key=lambda r: (r["finetuned"], -r["index"]))
    assert plan.info["candidate"] == best["index"]
    plan = fx.run_tiny_search(candidates=6, finetune_holdout=0)
    assert plan.info["finetune_scored_on"] == "64 search-validation images"


class _NoTest:
    """A bundle whose test split a search must not read."""

    def __init__(self, data: SimpleNamespace) -> None:
        self.name, self.num_classes = data.name, data.num_classes
        self.train, self.train_eval, self.val = data.train, data.train_eval, data.val

    @property
    def test(self) -> None:
        raise AssertionError("the search read the test split")


def test_the_finalists_fine_tunes_never_read_the_test_split() -> None:
    import dist_search_worker as fx

    from compressor.methods.eagleeye import eagleeye

    model, graph, data = fx.tiny_setup()
    for holdout in (2000, 0):  # scored on held-out training images, or on data.val
        plan = eagleeye(model, graph, flops=0.5, data=_NoTest(data), seed=3, candidates=6, calib_batches=2,
                        batch_size=16, device="cpu", progress=False, finetune_holdout=holdout)  # fmt: skip
        assert len(plan.info["finetuned"]) >= 2


def test_the_papers_rule_keeps_the_best_score_without_finetuning() -> None:
    import dist_search_worker as fx

    plan = fx.run_tiny_search(candidates=6, top_k=1, sampling="paper")
    assert "finetuned" not in plan.info
    assert plan.info["candidate"] == plan.info["best_candidates"][0]["index"]


@pytest.mark.parametrize(
    ("option", "value"), [("top_k_rule", "worst"), ("uncertainty_z", -1.0), ("finetune_holdout", -1)]
)
def test_bad_finalist_options_are_usage_errors(option: str, value: object) -> None:
    from compressor.errors import UsageError
    from compressor.methods.eagleeye import EagleEyeOptions

    with pytest.raises(UsageError, match=option):
        EagleEyeOptions(**{option: value})  # type: ignore[arg-type]
