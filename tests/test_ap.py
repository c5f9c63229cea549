"""Affinity Propagation on torch tensors against scikit-learn's, exemplar for exemplar."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from compressor.ap import APProblem, affinity_propagation, affinity_propagation_batch, neg_sq_distances
from compressor.errors import UsageError

try:  # the comparison with scikit-learn must fail, not skip, when the dev extra is missing
    import sklearn.cluster as sklearn_cluster
except ImportError as e:
    raise ImportError("the scikit-learn comparison tests need the dev extra: pip install -e '.[dev]'") from e


def sk_ap(S: np.ndarray, pref: float | np.ndarray, **kw: int | float) -> tuple[np.ndarray, np.ndarray, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = sklearn_cluster.AffinityPropagation(
            affinity="precomputed",
            preference=pref,
            damping=kw.get("damping", 0.5),
            max_iter=int(kw.get("max_iter", 200)),
            convergence_iter=int(kw.get("convergence_iter", 15)),
            random_state=0,
        ).fit(S.copy())
    return np.asarray(ap.cluster_centers_indices_, dtype=np.int64), np.asarray(ap.labels_), int(ap.n_iter_)


def sim(X: np.ndarray) -> np.ndarray:
    return -((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)


def case(seed: int) -> tuple[np.ndarray, float | np.ndarray]:
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 90)), int(rng.integers(1, 24))
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 10)
    if seed % 3 == 0:  # exact duplicates: ties only the noise breaks
        X = np.concatenate([X, X[: max(1, n // 3)]])
    S = sim(X)
    mode = seed % 4
    if mode == 0:
        pref: float | np.ndarray = float(np.median(S)) * rng.uniform(0.1, 3)
    elif mode == 1:
        pref = np.median(S, axis=0) * rng.uniform(0.1, 3)  # EPruner's official per-column rule
    elif mode == 2:
        pref = float(S.min()) * rng.uniform(0.5, 2)  # few exemplars
    else:
        pref = float(rng.uniform(-1, 0.5))  # many exemplars
    return S, pref


def assert_same(S: np.ndarray, pref: float | np.ndarray, **kw: int | float) -> None:
    ex, lab, it = sk_ap(S, pref, **kw)
    r = affinity_propagation(torch.from_numpy(S), torch.as_tensor(np.asarray(pref, dtype=np.float64)), **kw)
    assert r.n_exemplars >= 1
    if len(ex) == 0:  # scikit-learn found nothing: ours falls back to one exemplar, says so
        assert r.fallback is not None and r.n_exemplars == 1 and not r.converged
        return
    assert r.exemplars.tolist() == ex.tolist()
    assert r.labels.tolist() == lab.tolist()
    assert r.n_iter == it
    assert r.converged == (it < int(kw.get("max_iter", 200))) or r.converged
    assert torch.equal(r.exemplars, torch.sort(r.exemplars).values)


@pytest.mark.parametrize("seed", range(48))
def test_matches_sklearn_random(seed: int) -> None:
    S, pref = case(seed)
    assert_same(S, pref)


@pytest.mark.parametrize("damping", [0.6, 0.9])
@pytest.mark.parametrize("seed", [1, 2, 4])
def test_matches_sklearn_other_damping(seed: int, damping: float) -> None:
    S, pref = case(seed)
    assert_same(S, pref, damping=damping)


@pytest.mark.parametrize("n", [150, 301])
def test_matches_sklearn_larger_filters(n: int) -> None:
    # conv-like filters: a few families plus noise, similarity from the same helper EPruner uses
    g = torch.Generator().manual_seed(n)
    centers = torch.randn(7, 3 * 3 * 16, generator=g, dtype=torch.float64)
    W = centers[torch.randint(0, 7, (n,), generator=g)] + 0.3 * torch.randn(
        n, 144, generator=g, dtype=torch.float64
    )
    S = neg_sq_distances(W).numpy()
    for beta in (0.5, 0.75, 1.5):
        assert_same(S, beta * np.median(S, axis=0))


def test_batch_equals_single_runs() -> None:
    S, _ = case(5)
    n = S.shape[0]
    med = np.median(S, axis=0)
    betas = [0.3, 0.75, 1.0, 4.0]
    prefs = torch.tensor(np.stack([b * med for b in betas]))
    out = affinity_propagation_batch(torch.from_numpy(S).expand(len(betas), n, n), prefs)
    for b, r in zip(betas, out, strict=True):
        one = affinity_propagation(torch.from_numpy(S), torch.from_numpy(b * med))
        assert torch.equal(r.exemplars, one.exemplars) and r.n_iter == one.n_iter
        assert r.exemplars.tolist() == sk_ap(S, b * med)[0].tolist()


@pytest.mark.parametrize("seed", [1, 5, 9, 13])
def test_problem_reused_over_preferences_matches_single_runs(seed: int) -> None:
    S, _ = case(seed)
    med = np.median(S, axis=0)
    prob = APProblem(torch.from_numpy(S))
    betas = [1.0, 0.3, 4.0, 1.0, 0.75]
    one_by_one = [prob.run(torch.from_numpy(b * med)[None])[0] for b in betas]  # diagonal rewritten each time
    together = prob.run(torch.from_numpy(np.stack([b * med for b in betas])))
    scalar = prob.run(float(np.median(S)))[0]
    for b, r1, r2 in zip(betas, one_by_one, together, strict=True):
        ref = affinity_propagation(torch.from_numpy(S), torch.from_numpy(b * med))
        assert r1.exemplars.tolist() == r2.exemplars.tolist() == ref.exemplars.tolist()
        assert r1.labels.tolist() == ref.labels.tolist() and r1.n_iter == r2.n_iter == ref.n_iter
    assert scalar.exemplars.tolist() == sk_ap(S, float(np.median(S)))[0].tolist()
    with pytest.raises(UsageError, match="ambiguous"):
        prob.run(torch.from_numpy(med))


def test_more_beta_fewer_exemplars() -> None:
    S, _ = case(7)
    med = np.median(S, axis=0)
    counts = [
        affinity_propagation(torch.from_numpy(S), torch.from_numpy(b * med)).n_exemplars
        for b in (0.2, 1.0, 5.0)
    ]
    assert counts[0] >= counts[1] >= counts[2] >= 1
    assert counts[0] > counts[2]


def test_n1() -> None:
    r = affinity_propagation(torch.zeros(1, 1), -1.0)
    assert r.exemplars.tolist() == [0] and r.labels.tolist() == [0] and r.converged


@pytest.mark.parametrize("pref", [-50.0, -0.5, 0.0, 3.0])
def test_n2(pref: float) -> None:
    S = sim(np.array([[0.0], [1.0]]))
    assert_same(S, pref)


@pytest.mark.parametrize("pref", [-5.0, 0.5])
def test_identical_points(pref: float) -> None:
    S = np.zeros((6, 6))  # all similarities equal: scikit-learn's special case
    ex, lab, _ = sk_ap(S, pref)
    r = affinity_propagation(torch.from_numpy(S), pref)
    assert r.exemplars.tolist() == ex.tolist() and r.labels.tolist() == lab.tolist()
    assert r.fallback is not None  # degenerate input is reported


@pytest.mark.parametrize("pref", [-1.0, -10.0, -150.0])
def test_duplicate_clusters(pref: float) -> None:
    X = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 4, axis=0)
    S = sim(X)
    r = affinity_propagation(torch.from_numpy(S), pref)
    assert r.exemplars.tolist() == sk_ap(S, pref)[0].tolist()
    lab = r.labels.view(3, 4)  # identical points share their exemplar
    assert torch.all(lab == lab[:, :1])


def test_not_converged_keeps_last_exemplars_like_sklearn() -> None:
    S, pref = case(0)
    ex, lab, it = sk_ap(S, pref, max_iter=20)
    r = affinity_propagation(torch.from_numpy(S), pref, max_iter=20)
    assert it == 20 and not r.converged and r.n_iter == 20
    assert r.fallback is not None and "did not converge" in r.fallback
    if len(ex):
        assert r.exemplars.tolist() == ex.tolist()


def test_no_exemplar_falls_back_to_medoid() -> None:
    rng = np.random.default_rng(3)
    S = sim(rng.standard_normal((30, 4)))
    pref = 100 * float(S.min())
    ex, _, _ = sk_ap(S, pref, max_iter=1, convergence_iter=1)
    assert len(ex) == 0  # scikit-learn returns no cluster centre here
    r = affinity_propagation(torch.from_numpy(S), pref, max_iter=1, convergence_iter=1)
    off = S.copy()
    np.fill_diagonal(off, 0)
    assert r.exemplars.tolist() == [int(np.argmax(off.sum(0)))]
    assert r.labels.tolist() == [0] * 30
    assert not r.converged and "no exemplar" in (r.fallback or "")


def test_float32_input_is_computed_in_float64() -> None:
    S, pref = case(2)
    r32 = affinity_propagation(torch.from_numpy(S).float(), pref)
    r64 = affinity_propagation(torch.from_numpy(S.astype(np.float32).astype(np.float64)), pref)
    assert torch.equal(r32.exemplars, r64.exemplars)


def test_neg_sq_distances() -> None:
    X = torch.randn(9, 5, dtype=torch.float64)
    S = neg_sq_distances(X)
    assert torch.allclose(S, -(torch.cdist(X, X) ** 2), atol=1e-10)
    assert torch.equal(S, S.T) and torch.all(S.diagonal() == 0) and torch.all(S <= 0)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 4), torch.zeros(0, 0), torch.tensor([[0.0, float("nan")], [1.0, 0.0]])],
)
def test_bad_similarity(bad: torch.Tensor) -> None:
    with pytest.raises(UsageError):
        affinity_propagation(bad, -1.0)


def test_bad_arguments() -> None:
    S = torch.from_numpy(sim(np.arange(4.0)[:, None]))
    with pytest.raises(UsageError, match="damping"):
        affinity_propagation(S, -1.0, damping=0.2)
    with pytest.raises(UsageError, match="max_iter"):
        affinity_propagation(S, -1.0, max_iter=0)
    with pytest.raises(UsageError, match="preference"):
        affinity_propagation(S, torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    for seed in range(8):
        S, pref = case(seed)
        cpu = affinity_propagation(torch.from_numpy(S), torch.as_tensor(np.asarray(pref, dtype=np.float64)))
        gpu = affinity_propagation(
            torch.from_numpy(S).cuda(), torch.as_tensor(np.asarray(pref, dtype=np.float64)).cuda()
        )
        assert gpu.exemplars.is_cuda
        assert gpu.exemplars.cpu().tolist() == cpu.exemplars.tolist()
