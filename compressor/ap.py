"""Affinity Propagation (Frey & Dueck 2007) on torch tensors, vectorised, CPU or CUDA.

It reproduces scikit-learn's ``AffinityPropagation(affinity="precomputed", random_state=0)``
step for step, so both pick the same exemplars on the same similarity matrix:

* the preference goes on the diagonal, then the same tiny noise is added
  (``S += (eps * S + 100 * tiny) * N`` with ``N = RandomState(0).standard_normal((n, n))``,
  drawn with numpy and cached per size, since it only depends on ``n``);
* the same message updates, damping and operation order in float64; the column sums of the
  availability step are accumulated row after row on CPU (``index_add_``), the order numpy
  uses, so CPU results agree with scikit-learn to the last bit;
* the same convergence test: stop once the exemplar set (``a(k,k) + r(k,k) > 0``) has not
  changed for ``convergence_iter`` iterations and is not empty;
* the same final step: assign each point to its most similar exemplar, move each exemplar
  to the member with the largest summed similarity inside its cluster, reassign.

Where scikit-learn gives up, this module falls back deterministically and says so in
:attr:`APResult.fallback`; it never returns zero exemplars:

* not converged after ``max_iter`` but some exemplars at the last iteration: those (what
  scikit-learn returns too, with a ConvergenceWarning);
* no exemplar at all: the single medoid (largest summed similarity to all other points);
* all similarities and preferences equal: every point (preference above the similarity) or
  the first point, as scikit-learn does.

The loop over iterations is Python; everything inside it is whole-tensor operations over a
batch of independent problems of the same size (:func:`affinity_propagation_batch`; no loop
over points). :class:`APProblem` keeps one noisy similarity matrix for many preferences
(EPruner's beta search). With damping 0.5, A and R are stored doubled so each damped update
is a single pass; scaling by 2 commutes with rounding, so the result stays bit for bit
scikit-learn's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from compressor.errors import UsageError

_EPS64 = float(np.finfo(np.float64).eps)
_TINY100_64 = float(np.finfo(np.float64).tiny) * 100


@dataclass(frozen=True)
class APResult:
    """Outcome of one Affinity Propagation run.

    ``exemplars``: sorted indices of the exemplar points (never empty).
    ``labels``: for every point, the position in ``exemplars`` of its exemplar.
    ``n_iter``: iterations run (scikit-learn's ``n_iter_``).
    ``converged``: whether the convergence test passed before ``max_iter``.
    ``fallback``: why the result is not a converged AP solution, or None.
    """

    exemplars: torch.Tensor
    labels: torch.Tensor
    n_iter: int
    converged: bool
    fallback: str | None = None

    @property
    def n_exemplars(self) -> int:
        return int(self.exemplars.numel())


@functools.lru_cache(maxsize=12)
def _noise_cpu(n: int, random_state: int) -> torch.Tensor:
    """scikit-learn's degeneracy noise for an ``n x n`` problem (it depends on ``n`` only)."""
    rs = np.random.RandomState(random_state)
    return torch.from_numpy(rs.standard_normal(size=(n, n)))


def _noise(n: int, random_state: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _noise_cpu(n, random_state).to(device=device, dtype=dtype)


def _check_args(damping: float, max_iter: int, convergence_iter: int) -> None:
    if not 0.5 <= damping < 1.0:
        raise UsageError(f"damping {damping} is outside [0.5, 1): use e.g. 0.5 (the paper's value)")
    if max_iter < 1:
        raise UsageError(f"max_iter {max_iter} must be >= 1 (e.g. 200)")
    if convergence_iter < 1:
        raise UsageError(f"convergence_iter {convergence_iter} must be >= 1 (e.g. 15)")


def _as_similarity(S: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Checked (B, n, n) similarities in ``dtype`` (not copied when already right; never modified)."""
    if not isinstance(S, torch.Tensor):
        S = torch.as_tensor(np.asarray(S))
    if S.dim() != 3 or S.shape[1] != S.shape[2]:
        raise UsageError(f"similarity must be square, got shape {tuple(S.shape)}")
    if S.shape[1] == 0:
        raise UsageError("similarity matrix is empty: Affinity Propagation needs at least one point")
    S = S.to(dtype=dtype).contiguous()  # a transposed (column-major) S makes every row reduction ~10x slower
    lo, hi = torch.aminmax(S)  # NaN propagates, so one pass checks everything
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise UsageError("similarity matrix has NaN or infinite entries; pass finite similarities")
    return S


def _all_off_diagonal_equal(Sb: torch.Tensor) -> bool:
    """Whether every off-diagonal similarity equals the first one (no n x n copy)."""
    n = Sb.shape[0]
    v = Sb[0, 1]
    hits = int((Sb == v).sum()) - int((Sb.diagonal() == v).sum())
    return hits == n * n - n


def _as_preference(preference: float | torch.Tensor, b: int, n: int, S: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(preference, dtype=S.dtype, device=S.device)
    if p.dim() == 0:
        p = p.expand(b, n)
    elif p.dim() == 1 and b == 1 and p.shape[0] == n:
        p = p[None]
    elif p.dim() == 1 and p.shape[0] == b:
        p = p[:, None].expand(b, n)
    elif p.shape != (b, n):
        raise UsageError(f"preference of shape {tuple(p.shape)} does not fit {b} problem(s) of {n} points")
    p = p.contiguous()
    if not bool(torch.isfinite(p).all()):
        raise UsageError("preference has NaN or infinite entries")
    return p


def _assign(S: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
    """Cluster of every point: its most similar exemplar (first on ties); exemplar k -> k."""
    n, K = S.shape[0], int(ex.numel())
    c = torch.empty(n, dtype=torch.long, device=S.device)
    is_ex = torch.zeros(n, dtype=torch.bool, device=S.device)
    is_ex[ex] = True
    non = torch.nonzero(~is_ex).flatten()
    if non.numel():
        c[non] = torch.argmax(S.index_select(0, non).index_select(1, ex), dim=1)
    c[ex] = torch.arange(K, device=S.device)
    return c


def _finish(S: torch.Tensor, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's final assignment and exemplar refinement, vectorised over points.

    ``S`` is one problem's noisy similarity (preference on the diagonal), ``E`` its exemplar
    mask (not empty). Returns (sorted exemplars, labels into them). Only clusters with more
    than one member are refined, on their (m x m) block, so the work is small both when
    there are few exemplars and when almost every point is one.
    """
    n = S.shape[0]
    dev = S.device
    ex = torch.nonzero(E).flatten()
    K = int(ex.numel())
    c = _assign(S, ex)
    # Per cluster, the member j maximising sum_{i in cluster} S[i, j]; ties -> smallest j (np.argmax).
    sizes = torch.bincount(c, minlength=K)
    M = torch.nonzero(sizes[c] > 1).flatten()
    if M.numel():
        u, cm = torch.unique(c[M], return_inverse=True)
        sub = S.index_select(0, M).index_select(1, M)
        T = torch.zeros((int(u.numel()), int(M.numel())), dtype=S.dtype, device=dev)
        T.index_add_(0, cm, sub)  # rows in ascending order == numpy's axis-0 sum order on CPU
        score = T[cm, torch.arange(int(M.numel()), device=dev)]
        best = torch.full((int(u.numel()),), -torch.inf, dtype=S.dtype, device=dev).scatter_reduce(
            0, cm, score, "amax"
        )
        cand = torch.where(score == best[cm], M, torch.full_like(M, n))
        new = torch.full((int(u.numel()),), n, dtype=torch.long, device=dev).scatter_reduce(
            0, cm, cand, "amin"
        )
        ex = ex.clone()
        ex[u] = new
        c = _assign(S, ex)
    labels = ex[c]
    centers = torch.unique(labels)  # sorted
    return centers, torch.searchsorted(centers, labels)


def _medoid(S0: torch.Tensor) -> int:
    """The point with the largest summed similarity to all other points (first on ties)."""
    off = S0.clone()
    off.fill_diagonal_(0)
    return int(torch.argmax(off.sum(dim=0)))


def _degenerate(Sb: torch.Tensor, pb: torch.Tensor, all_equal: bool | None = None) -> APResult | None:
    """scikit-learn's answer for one point, or all similarities and preferences equal; else None.

    ``all_equal``: whether the off-diagonal similarities are all equal, when already known.
    """
    n, dev = Sb.shape[0], Sb.device
    if n == 1:
        one = torch.zeros(1, dtype=torch.long, device=dev)
        return APResult(one, one.clone(), 0, True, None)
    if bool((pb == pb[0]).all()) and (_all_off_diagonal_equal(Sb) if all_equal is None else all_equal):
        if float(pb[0]) > float(Sb[0, n - 1]):
            ex = torch.arange(n, device=dev)
            return APResult(
                ex,
                ex.clone(),
                0,
                True,
                "all similarities and preferences equal and the preference is higher: every point is an exemplar",
            )
        return APResult(
            torch.zeros(1, dtype=torch.long, device=dev),
            torch.zeros(n, dtype=torch.long, device=dev),
            0,
            True,
            "all similarities and preferences equal and the preference is not higher: one exemplar (the first point)",
        )
    return None


def _noise_terms(dtype: torch.dtype) -> tuple[float, float]:
    if dtype == torch.float64:
        return _EPS64, _TINY100_64
    finfo = torch.finfo(dtype)
    return float(finfo.eps), float(finfo.tiny) * 100


def _add_noise(Sn: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """In place, as scikit-learn: ``S += (eps * S + 100 * tiny) * N``; returns the scratch tensor."""
    eps, tiny100 = _noise_terms(Sn.dtype)
    tmp = torch.mul(Sn, eps)
    tmp.add_(tiny100)
    tmp.mul_(noise)
    Sn.add_(tmp)
    return tmp


def _iterate(
    Sn: torch.Tensor,
    ids: list[int],
    medoid_of: Callable[[int], int],
    *,
    damping: float,
    max_iter: int,
    convergence_iter: int,
    tmp: torch.Tensor | None = None,
) -> dict[int, APResult]:
    """The message passing on noisy similarities ``Sn`` (B, n, n) of problems ``ids``."""
    B, n, _ = Sn.shape
    dev, dtype = Sn.device, Sn.dtype
    todo = list(ids)
    Sa = Sn
    if tmp is None or tmp.shape != Sa.shape:
        tmp = torch.empty_like(Sa)
    A = torch.zeros_like(Sa)
    R = torch.zeros_like(Sa)
    prevE = torch.zeros((B, n), dtype=torch.bool, device=dev)
    stable = [0] * B  # per problem: iterations the exemplar set has stayed the same
    on_cpu = dev.type == "cpu"
    zero_idx = torch.zeros(n, dtype=torch.long, device=dev)
    colsum = torch.empty((B, 1, n), dtype=dtype, device=dev)
    d, od = float(damping), 1.0 - float(damping)
    half = d == 0.5
    final_E: dict[int, torch.Tensor] = {}
    final_it: dict[int, int] = {}
    converged_at: dict[int, bool] = {}
    E = prevE

    def diags() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return A.diagonal(dim1=1, dim2=2), R.diagonal(dim1=1, dim2=2), tmp.diagonal(dim1=1, dim2=2)

    A_d, R_d, T_d = diags()  # views, valid while the buffers are updated in place
    it = 0
    for it in range(max_iter):
        if half:
            # Damping 0.5 with A and R stored doubled (A2 = 2A, R2 = 2R): every update is one
            # pass, and still bit for bit scikit-learn's, since scaling by 2 commutes with rounding:
            # its R' = 0.5*R + 0.5*new = round(R + new)/2, so R2' = round(new + 0.5*R2), etc.
            torch.add(Sa, A, alpha=0.5, out=tmp)  # A + S
            Y, top = tmp.max(dim=2, keepdim=True)
            tmp.scatter_(2, top, -torch.inf)
            Y2 = tmp.amax(dim=2, keepdim=True)
            torch.sub(Sa, Y, out=tmp)
            tmp.scatter_(2, top, Sa.gather(2, top) - Y2)  # new responsibilities
            torch.add(tmp, R, alpha=0.5, out=R)  # R2' = new + R
            torch.clamp(R, min=0, out=tmp)  # 2 * Rp
            T_d.copy_(R_d)
            if on_cpu:
                colsum.zero_().index_add_(1, zero_idx, tmp)  # sequential row order, as numpy
            else:
                torch.sum(tmp, dim=1, keepdim=True, out=colsum)
            colsum.mul_(0.5)
            torch.sub(colsum, tmp, alpha=0.5, out=tmp)  # cs - Rp: scikit-learn's -(Rp - cs)
            dA = T_d.clone()
            tmp.clamp_(max=0)
            T_d.copy_(dA)
            torch.add(tmp, A, alpha=0.5, out=A)  # A2' = A - max(0, Rp - cs) (diagonal unclipped)
        else:
            # responsibilities
            torch.add(A, Sa, out=tmp)
            Y, top = tmp.max(dim=2, keepdim=True)
            tmp.scatter_(2, top, -torch.inf)
            Y2 = tmp.amax(dim=2, keepdim=True)
            torch.sub(Sa, Y, out=tmp)
            tmp.scatter_(2, top, Sa.gather(2, top) - Y2)
            tmp *= od
            R *= d
            R += tmp
            # availabilities
            torch.clamp(R, min=0, out=tmp)
            T_d.copy_(R_d)
            if on_cpu:
                colsum.zero_().index_add_(1, zero_idx, tmp)  # sequential row order, as numpy
            else:
                torch.sum(tmp, dim=1, keepdim=True, out=colsum)
            tmp -= colsum
            dA = T_d.clone()
            tmp.clamp_(min=0)
            T_d.copy_(dA)
            tmp *= od
            A *= d
            A -= tmp
        # convergence: the exemplar set unchanged for `convergence_iter` iterations, not empty
        E = (A_d + R_d) > 0  # sign unchanged by the doubling
        same = (E == prevE).all(dim=1).tolist()
        stable = [st + 1 if sm else 1 for st, sm in zip(stable, same, strict=True)]
        prevE = E
        if it >= convergence_iter and max(stable) >= convergence_iter:
            nonempty = E.any(dim=1).tolist()
            done = [st >= convergence_iter and ne for st, ne in zip(stable, nonempty, strict=True)]
            if any(done):
                keep = []
                for slot, pid in enumerate(todo):
                    if done[slot]:
                        final_E[pid], final_it[pid], converged_at[pid] = E[slot].clone(), it + 1, True
                    else:
                        keep.append(slot)
                if not keep:
                    break
                k = torch.tensor(keep, device=dev)
                todo = [todo[s] for s in keep]
                Sa, A, R = Sa[k], A[k], R[k]
                tmp = torch.empty_like(Sa)
                colsum = torch.empty((len(todo), 1, n), dtype=dtype, device=dev)
                prevE, stable = prevE[k], [stable[s] for s in keep]
                A_d, R_d, T_d = diags()
    for slot, pid in enumerate(todo):
        if pid not in final_E:
            final_E[pid], final_it[pid], converged_at[pid] = E[slot].clone(), it + 1, False

    out: dict[int, APResult] = {}
    for j, pid in enumerate(ids):
        Eb = final_E[pid]
        conv = converged_at[pid]
        if bool(Eb.any()):
            ex, lab = _finish(Sn[j], Eb)
            fb = (
                None
                if conv
                else (
                    f"did not converge in {max_iter} iterations; kept the {int(ex.numel())} exemplars "
                    "of the last iteration (as scikit-learn does)"
                )
            )
        else:
            m = medoid_of(pid)
            ex = torch.tensor([m], dtype=torch.long, device=dev)
            lab = torch.zeros(n, dtype=torch.long, device=dev)
            fb = (
                f"did not converge in {max_iter} iterations and found no exemplar; "
                f"kept the medoid (point {m}, largest summed similarity)"
            )
        out[pid] = APResult(ex, lab, final_it[pid], conv, fb)
    return out


def affinity_propagation_batch(
    S: torch.Tensor,
    preference: float | torch.Tensor,
    *,
    damping: float = 0.5,
    max_iter: int = 200,
    convergence_iter: int = 15,
    random_state: int = 0,
    dtype: torch.dtype = torch.float64,
) -> list[APResult]:
    """Run AP on ``B`` independent problems of the same size at once.

    ``S``: (B, n, n) similarities (or (n, n) for one problem); ``preference``: a scalar, (B,)
    one per problem, or (B, n) one per point. Each problem stops at its own convergence
    iteration, exactly as if it ran alone. Results are on ``S``'s device. For many
    preferences on one similarity matrix, :class:`APProblem` avoids re-adding the noise.
    """
    _check_args(damping, max_iter, convergence_iter)
    if isinstance(S, torch.Tensor) and S.dim() == 2:
        S = S[None]
    S = _as_similarity(S, dtype)
    B, n, _ = S.shape
    pref = _as_preference(preference, B, n, S)
    results: dict[int, APResult] = {}
    todo: list[int] = []
    for b in range(B):
        r = _degenerate(S[b], pref[b])
        if r is None:
            todo.append(b)
        else:
            results[b] = r
    if todo:
        # S with the preference on the diagonal plus scikit-learn's noise
        Sn = S[todo] if len(todo) < B else S.clone(memory_format=torch.contiguous_format)
        Sn.diagonal(dim1=1, dim2=2).copy_(pref[todo])
        tmp = _add_noise(Sn, _noise(n, random_state, S.device, dtype))
        results.update(
            _iterate(
                Sn,
                todo,
                lambda pid: _medoid(S[pid]),
                damping=damping,
                max_iter=max_iter,
                convergence_iter=convergence_iter,
                tmp=tmp,
            )
        )
    return [results[b] for b in range(B)]


class APProblem:
    """One similarity matrix, solved for many preferences (EPruner's beta search).

    The noisy off-diagonal part (``S + (eps * S + 100 * tiny) * N``) is computed once; each
    run writes only the noisy preference diagonal, so a run with one preference copies
    nothing of size n x n. Results are identical to :func:`affinity_propagation`.
    """

    def __init__(self, S: torch.Tensor, *, random_state: int = 0, dtype: torch.dtype = torch.float64) -> None:
        if not isinstance(S, torch.Tensor) or S.dim() != 2:
            raise UsageError("APProblem needs one square (n, n) similarity tensor")
        self.S = _as_similarity(S[None], dtype)[0]
        self.n = int(self.S.shape[0])
        noise = _noise(self.n, random_state, self.S.device, dtype)
        self._base = self.S.clone()
        _add_noise(self._base, noise)
        self._noise_diag = noise.diagonal().clone()
        self._all_equal = self.n > 1 and _all_off_diagonal_equal(self.S)

    def run(
        self,
        preference: float | torch.Tensor,
        *,
        damping: float = 0.5,
        max_iter: int = 200,
        convergence_iter: int = 15,
    ) -> list[APResult]:
        """AP for each row of ``preference`` ((B, n), (B,) one scalar per run, or a scalar)."""
        _check_args(damping, max_iter, convergence_iter)
        p = torch.as_tensor(preference, dtype=self.S.dtype, device=self.S.device)
        B = 1 if p.dim() == 0 else int(p.shape[0])
        if p.dim() == 1 and B == self.n and B > 1:
            raise UsageError("ambiguous preference: pass shape (1, n) for one run with per-point preferences")
        pref = _as_preference(p, B, self.n, self.S[None])
        results: dict[int, APResult] = {}
        todo = []
        for b in range(B):
            r = _degenerate(self.S, pref[b], self._all_equal)
            if r is None:
                todo.append(b)
            else:
                results[b] = r
        if todo:
            eps, tiny100 = _noise_terms(self.S.dtype)
            pt = pref[todo]
            diag = pt + (pt * eps + tiny100) * self._noise_diag  # the noisy diagonal, as scikit-learn
            if len(todo) == 1:
                self._base.diagonal().copy_(diag[0])
                Sn = self._base[None]
            else:
                Sn = self._base.expand(len(todo), self.n, self.n).clone()
                Sn.diagonal(dim1=1, dim2=2).copy_(diag)
            results.update(
                _iterate(
                    Sn,
                    todo,
                    lambda pid: _medoid(self.S),
                    damping=damping,
                    max_iter=max_iter,
                    convergence_iter=convergence_iter,
                )
            )
        return [results[b] for b in range(B)]


def affinity_propagation(
    S: torch.Tensor,
    preference: float | torch.Tensor,
    *,
    damping: float = 0.5,
    max_iter: int = 200,
    convergence_iter: int = 15,
    random_state: int = 0,
    dtype: torch.dtype = torch.float64,
) -> APResult:
    """Affinity Propagation on one (n, n) similarity matrix.

    ``preference`` is a scalar or one value per point. Same exemplars as
    ``sklearn.cluster.AffinityPropagation(affinity="precomputed", preference=preference,
    damping=damping, max_iter=max_iter, convergence_iter=convergence_iter,
    random_state=random_state).fit(S)``, computed in ``dtype`` (float64 for agreement).

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    >>> S = -torch.cdist(x, x) ** 2
    >>> affinity_propagation(S, -1.0).exemplars.tolist()
    [0, 2]
    """
    if not isinstance(S, torch.Tensor):
        S = torch.as_tensor(np.asarray(S))
    if S.dim() != 2:
        raise UsageError(f"similarity must be a square (n, n) matrix, got shape {tuple(S.shape)}")
    p = preference
    if isinstance(p, torch.Tensor) and p.dim() == 1:
        p = p[None]
    return affinity_propagation_batch(
        S[None],
        p,
        damping=damping,
        max_iter=max_iter,
        convergence_iter=convergence_iter,
        random_state=random_state,
        dtype=dtype,
    )[0]


def neg_sq_distances(X: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """s(i, j) = -||x_i - x_j||^2 for the rows of ``X`` (exactly symmetric, diagonal 0)."""
    X = X.detach().to(dtype=dtype).flatten(1)
    sq = (X * X).sum(dim=1)
    D = X @ X.T
    D.mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0)
    S = torch.add(D, D.T).contiguous()  # row-major: the AP reductions run along rows
    S.mul_(-0.5)
    S.fill_diagonal_(0)
    return S
