"""The latency model (compressor.latency) and the methods that search under it, on tiny nets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.graph import build_graph
from compressor.latency import build_latency_model, counts_for_cost, measure_plan, random_counts
from compressor.methods import get_method
from compressor.methods.spec import CostBudget, MethodContext
from compressor.targets import load_target

SHAPE = (3, 16, 16)


class Tiny(nn.Module):
    """conv-bn-relu x3 + a residual, wide enough that a halved width is measurably faster."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        y = self.b(x)
        y = torch.relu(self.c(y) + y)
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    torch.manual_seed(0)
    model = Tiny().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    graph = build_graph(model, input_shape=(1, *SHAPE))
    target = load_target("mobile", intra_op_threads=1)
    cache = tmp_path_factory.mktemp("latcache")
    kw = dict(max_points=4, seconds_per_point=0.02, calib_plans=4, cache=cache, progress=True)
    lm = build_latency_model(model, graph, target, SHAPE, **kw)
    return model, graph, target, cache, kw, lm


def test_layers_follow_the_groups(built: tuple) -> None:
    """Every conv/linear is found, and its widths follow the groups that the engine says feed it."""
    _, graph, _, _, _, lm = built
    names = {ly.name for ly in lm.layers}
    assert names == {"a.0", "b.0", "c.0", "fc"}
    fc = next(ly for ly in lm.layers if ly.name == "fc")
    assert fc.coef_in and not fc.coef_out  # its input is the residual group, its output is fixed


def test_prediction_is_monotone_and_close(built: tuple) -> None:
    """Fewer channels never predict slower, and the prediction is within a loose bound of measured."""
    model, graph, target, _, _, lm = built
    sizes = lm.sizes
    full = lm.predict_ms({})
    half = lm.predict_ms({g: s // 2 for g, s in sizes.items()})
    quarter = lm.predict_ms({g: s // 4 for g, s in sizes.items()})
    assert quarter <= half <= full
    assert half < 0.9 * full
    rng = np.random.default_rng(1)
    errs = []
    for _ in range(3):
        c = random_counts(sizes, rng, 8)
        measured = measure_plan(model, graph, c, target, SHAPE, seconds=0.3)
        errs.append(abs(lm.predict_ms(c) - measured) / measured)
    assert float(np.median(errs)) < 0.5, errs  # loose: a shared machine's noise


def test_cache_is_reused(built: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    """A second build reads the cached table (no timing, no progress) and predicts the same."""
    model, graph, target, cache, kw, lm = built
    assert lm.info["cache_hit"] is False
    assert list(Path(cache).glob("*.json"))
    capsys.readouterr()
    again = build_latency_model(model, graph, target, SHAPE, **kw)
    assert again.info["cache_hit"] is True
    assert "latency table" not in capsys.readouterr().err
    c = {g: s // 2 for g, s in lm.sizes.items()}
    assert again.predict_ms(c) == pytest.approx(lm.predict_ms(c))
    other = load_target("mobile", intra_op_threads=1, graph_optimization_level="basic")
    from compressor.latency import cache_key, find_layers

    layers = find_layers(model, graph, SHAPE)
    k1, _ = cache_key(layers, lm.sizes, target, SHAPE, 8, 4)
    k2, _ = cache_key(layers, lm.sizes, other, SHAPE, 8, 4)
    assert k1 != k2  # another optimisation level is another table


def test_snap_keeps_free_channels(built: tuple) -> None:
    """snap never predicts slower and never keeps fewer channels."""
    _, _, _, _, _, lm = built
    c = {g: max(1, s // 2 - 3) for g, s in lm.sizes.items()}
    s = lm.snap(c, multiple=8)
    assert all(s[g] >= c[g] for g in c)
    assert lm.predict_ms(s) <= lm.predict_ms(c) * 1.001 + 1e-9


def _budget(lm: object, fraction: float) -> CostBudget:
    return CostBudget("latency", fraction, lm.fraction, snap=lambda c: lm.snap(c, 8), model=lm)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["halp", "l1-uniform", "epruner"])
def test_methods_meet_a_latency_budget(built: tuple, method: str) -> None:
    """Data-free methods meet the predicted-latency budget and report it."""
    model, graph, _, _, _, lm = built
    budget = _budget(lm, 0.6)
    opts = {"multiple": 8} if get_method(method).has_option("multiple") else {}
    plan = get_method(method)(
        model, graph, flops=None, context=MethodContext(progress=False, budget=budget), **opts
    )
    counts = lm.plan_counts(plan)
    assert all(1 <= counts[g] <= s for g, s in lm.sizes.items())
    assert all(counts[g] % 8 == 0 or counts[g] == s for g, s in lm.sizes.items())  # the target's multiple
    # widths between the runtime's steps cost the next step: the plan keeps those free channels
    assert all(counts[g] % lm.block == 0 or counts[g] in (1, s) for g, s in lm.sizes.items())
    reached = lm.fraction(counts)
    assert plan.info["budget"]["kind"] == "latency"
    assert reached <= 0.6 * 1.02
    assert reached >= 0.35  # close to the budget, not everything pruned


def test_eagleeye_draws_under_the_latency_budget(built: tuple) -> None:
    """EagleEye's strategies meet the predicted latency, not the FLOPs."""
    from compressor.methods.eagleeye import sample_strategy

    _, graph, _, _, _, lm = built
    budget = _budget(lm, 0.6)
    for i in range(4):
        s = sample_strategy(graph, 0.6, seed=0, index=i, multiple=8, budget=budget)
        assert s.cost is not None and s.cost <= 0.6 * 1.01
        assert lm.fraction(s.counts) == pytest.approx(s.cost)


def test_epruner_rounds_to_the_multiple_under_flops(built: tuple) -> None:
    """EPruner with a channel multiple keeps AP's per-group ratios, at the multiple, on the target."""
    model, graph, _, _, _, _ = built
    plan = get_method("epruner")(model, graph, flops=0.5, multiple=8, progress=False)
    sizes = {g.name: g.size for g in graph.prunable}
    kept = {g: len(plan.groups.get(g, range(s))) for g, s in sizes.items()}
    assert all(k % 8 == 0 or k == sizes[g] for g, k in kept.items())
    assert any(k < sizes[g] for g, k in kept.items())
    assert graph.cost(plan).macs / graph.full.macs == pytest.approx(0.5, abs=0.05)


def test_halp_under_flops(built: tuple) -> None:
    """Without a latency model, halp meets a FLOPs budget."""
    model, graph, _, _, _, _ = built
    plan = get_method("halp")(model, graph, flops=0.5, multiple=8, progress=False)
    assert graph.cost(plan).macs / graph.full.macs <= 0.5 + 1e-9
    assert plan.info["budget"]["kind"] == "flops"


def test_counts_for_cost_matches_flops(built: tuple) -> None:
    """The generic bisection under FLOPs lands at or under the target, close to it."""
    _, graph, _, _, _, _ = built
    full = graph.full.macs
    c = counts_for_cost(graph, lambda k: graph.cost_of_counts(dict(k)).macs / full, 0.5)
    f = graph.cost_of_counts(c).macs / full
    assert 0.45 <= f <= 0.5


DEMO = Path(__file__).resolve().parents[1] / "examples" / "resnet_mnist.pt"


def test_compress_run_with_a_latency_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`compress run --latency F --method halp` (F between the predicted floor and 1) searches under the latency model and either meets
    the budget as measured (exit 0) or exits 3 saying what it reached; the report carries the
    latency model, predicted and measured latency per timed candidate, and the table plot."""
    import json

    from compressor.cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    f = _demo_budget()
    args = ["run", str(DEMO), "--target", "mobile", "--latency", str(f), "--method", "halp", "--epochs", "0",
            "--max-acc-drop", "100", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 3), res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["latency_objective"] is True and rep["settings"]["latency"] == f
    lm = rep["latency_model"]
    assert lm["cache_hit"] is True and len(lm["layers"]) == 10 and lm["calibration"]  # built by _demo_budget
    checked = rep["search"]["latency_checked"]
    assert checked and all(c["predicted_ms"] > 0 for c in checked)
    # a budget as a fraction: each candidate against the original timed with it
    for c in checked:
        assert c["limit_ms"] == pytest.approx(f * c["original_ms"], rel=1e-3)
        if abs(c["latency_ms"] - c["limit_ms"]) > 2e-4:  # clear of the rounding to 4 decimals
            assert c["fits"] == (c["latency_ms"] < c["limit_ms"])
    lat = next(b for b in rep["budgets"] if b["name"].startswith("latency"))
    orig = rep["original"]["latency"]["at_percentile"]
    # the limit is F times the original's latency the report shows: the one timed alongside the
    # compressed model, or, when the run stopped at the search, the one the search's limit came from
    assert lat["limit"] == pytest.approx(f * orig, rel=1e-5)
    flops = next((b for b in rep["budgets"] if b["name"].startswith("FLOPs")), None)
    assert flops is None or flops["passed"] is None  # latency is the objective, FLOPs only reported
    if res.exit_code == 0:
        assert lat["passed"] is True and lat["value"] <= lat["limit"]
    else:
        assert lat["passed"] is False and "latency" in rep["message"]
    assert "latency model: per-layer latency table" in (out / "report.html").read_text()
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # cached for the next run


def test_a_latency_budget_stopped_at_the_search_keeps_the_originals_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget below what the latency model can reach stops the run at the search (exit 3); the
    report's limit is F times the original latency the report shows, the timing the search used
    (the original is not timed a second time for the report)."""
    import json

    from compressor.cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["run", str(DEMO), "--target", "mobile", "--latency", "0.02", "--method", "halp", "--epochs", "0",
            "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 3, res.output
    rep = json.loads((out / "report.json").read_text())
    lat = next(b for b in rep["budgets"] if b["name"].startswith("latency"))
    assert lat["limit"] == pytest.approx(0.02 * rep["original"]["latency"]["at_percentile"], rel=1e-5)
    assert lat["passed"] is False  # no candidate fitted its own limit
    assert "latency" in rep["message"]


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2"])
def test_latency_fraction_is_checked(bad: str, tmp_path: Path) -> None:
    """--latency outside (0, 1] is a usage error (exit 2) naming the flag."""
    from compressor.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(
        app, ["run", str(DEMO), "--target", "mobile", "--latency", bad, "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2, res.output
    assert "--latency" in res.output


def test_prune_takes_the_targets_multiple_and_a_latency_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compress prune --target mobile` rounds to the target's multiple (8); with --latency it keeps
    that fraction of the predicted latency."""
    import json

    from compressor.cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    run = CliRunner().invoke
    res = run(app, ["prune", str(DEMO), "-o", str(tmp_path / "a.pt"), "--target", "mobile", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["multiple"] == 8
    from compressor.checkpoint import load_checkpoint

    slim, _ = load_checkpoint(tmp_path / "a.pt")
    widths = [m.out_channels for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert widths and all(w % 8 == 0 for w in widths)
    f = _demo_budget()
    res = run(app, ["prune", str(DEMO), "-o", str(tmp_path / "b.pt"), "--method", "halp", "--target", "mobile",
                    "--latency", str(f), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["latency_predicted_fraction"] <= f * 1.01
    res = run(app, ["prune", str(DEMO), "-o", str(tmp_path / "c.pt"), "--latency", "0.5"])
    assert res.exit_code == 2 and "--target" in res.output


def _demo_budget() -> float:
    """A latency budget halfway between 1 and what halp's floor (every group at 20% of its channels)
    is predicted at, from the latency table the CLI will read from the cache (the fitted figures
    move with the machine's load)."""
    from compressor.checkpoint import load_checkpoint
    from compressor.graph import build_graph
    from compressor.latency import build_latency_model
    from compressor.methods.floor import floor_counts

    model, _ = load_checkpoint(DEMO)
    graph = build_graph(model, input_shape=(1, 1, 28, 28))
    lm = build_latency_model(model, graph, "mobile", (1, 28, 28), multiple=8, progress=False)
    floor = lm.fraction(lm.snap(floor_counts(graph, 0.8), 8))
    return round((1 + floor) / 2, 3)


def _demo_floors() -> tuple[float, float]:
    """The demo's predicted latency fraction with every group at one channel, and at the floor of
    the target's multiple (from the cached table, as :func:`_demo_budget`)."""
    from compressor.checkpoint import load_checkpoint

    model, _ = load_checkpoint(DEMO)
    graph = build_graph(model, input_shape=(1, 1, 28, 28))
    lm = build_latency_model(model, graph, "mobile", (1, 28, 28), multiple=8, progress=False)
    return lm.fraction({g: 1 for g in lm.sizes}), lm.fraction(lm.floor_counts(8))


def test_search_under_a_latency_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`compress search --target mobile --latency F` plans under the target's latency model (the
    plan's predicted latency within the budget, widths at the target's multiple); a budget below the
    model's predicted floor is exit 3 and writes no plan; --latency without --target, or outside
    (0, 1], is a usage error."""
    import json

    from compressor.cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    run = CliRunner().invoke
    f = _demo_budget()
    for method, extra in (
        ("halp", []),
        ("eagleeye", ["--candidates", "3", "--calib-batches", "2", "--top-k", "1"]),
    ):
        plan = tmp_path / f"{method}.json"
        res = run(app, ["search", str(DEMO), "--method", method, "--target", "mobile", "--latency", str(f),
                        "-o", str(plan), "--json", *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        s = json.loads(res.stdout)
        assert s["latency_target"] == f and 0.5 < s["latency_predicted_fraction"] <= f * 1.01
        kept = json.loads(plan.read_text())["groups"]
        assert all(len(ch) % 8 == 0 or len(ch) < 8 for ch in kept.values())
    low = tmp_path / "low.json"
    res = run(
        app,
        ["search", str(DEMO), "--method", "halp", "--target", "mobile", "--latency", "0.05", "-o", str(low)],
    )
    assert res.exit_code == 3 and "most-pruned" in res.output and not low.exists()
    # between the plan with every group at one channel and the floor at the target's multiple:
    # no plan at x8 reaches it, so it is refused up front, naming the multiple
    one, at_m = _demo_floors()
    if at_m - one > 0.02:
        mid = tmp_path / "mid.json"
        res = run(app, ["search", str(DEMO), "--method", "halp", "--target", "mobile", "--latency",
                        f"{(one + at_m) / 2:.3f}", "-o", str(mid)])  # fmt: skip
        assert res.exit_code == 3 and "x8 channel multiple" in res.output and not mid.exists(), res.output
    res = run(
        app, ["search", str(DEMO), "--method", "halp", "--latency", "0.6", "-o", str(tmp_path / "x.json")]
    )
    assert res.exit_code == 2 and "--target" in res.output
    res = run(app, ["search", str(DEMO), "--method", "halp", "--target", "mobile", "--latency", "1.5",
                    "-o", str(tmp_path / "y.json")])  # fmt: skip
    assert res.exit_code == 2 and "--latency" in res.output


def test_dry_run_estimates_the_latency_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`compress run --latency F --dry-run` says how many timings building the target's latency table
    takes and about how long; once the table is in the cache it says the table is read from there."""
    import json

    from compressor.cli.main import app
    from typer.testing import CliRunner

    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    args = ["run", str(DEMO), "--target", "mobile", "--latency", "0.7", "--dry-run", "--json",
            "--out", str(tmp_path / "out")]  # fmt: skip

    def table_row() -> dict:
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        return next(r for r in json.loads(res.stdout)["plan"] if r["name"] == "latency table")

    row = table_row()
    assert row["estimate_s"] > 5 and "single-layer" in row["what"] and "end-to-end" in row["what"]
    cache = Path(row["what"].rsplit("(", 1)[1].rstrip(")"))
    assert cache.parent == tmp_path / "cache" / "latency" and not cache.exists()
    cache.parent.mkdir(parents=True)
    cache.write_text("{}")  # what decides is whether the table for this key is on disk
    row = table_row()
    assert row["estimate_s"] == 0 and row["what"].startswith("read from the cache")
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- the runtime's channel block
def _one_layer_model(block: int) -> object:
    """A latency model of one conv whose output width is group ``g`` (64..128), its table linear in
    the output width (2 us per channel), timing-free."""
    from compressor.latency import LatencyModel, Layer, LayerTable

    lay = Layer("conv", "conv", 32, 128, (8, 8), coef_out={"g": 1.0})
    table = LayerTable([32], [16, 64, 128], [[0.032, 0.128, 0.256]])
    return LatencyModel([lay], {lay.key(): table}, {"g": 128}, 1.0, 0.0, 0.0, {}, block)


def test_widths_between_blocks_cost_the_next_block() -> None:
    """With the runtime's block of 16, 72 channels cost what 80 cost and snap keeps the free 8;
    without a block, 72 is cheaper than 80 and snap keeps 72."""
    blocked, plain = _one_layer_model(16), _one_layer_model(1)
    assert blocked.predict_ms({"g": 72}) == pytest.approx(blocked.predict_ms({"g": 80}))  # type: ignore[attr-defined]
    assert blocked.predict_ms({"g": 80}) < blocked.predict_ms({"g": 88})  # type: ignore[attr-defined]
    assert blocked.snap({"g": 72}, multiple=8) == {"g": 80}  # type: ignore[attr-defined]
    assert plain.predict_ms({"g": 72}) < plain.predict_ms({"g": 80})  # type: ignore[attr-defined]
    assert plain.snap({"g": 72}, multiple=8) == {"g": 72}  # type: ignore[attr-defined]


def test_padded_widths() -> None:
    from compressor.latency import padded

    assert padded(72, 16) == 80 and padded(80, 16) == 80 and padded(72, 1) == 72
    assert padded(3, 16) == 16  # an output (or a depthwise conv) narrower than the block is padded
    assert padded(1, 16, reads_plain=True) == 1  # one input channel is read as it is
    assert padded(8, 16, reads_plain=True) == 16  # a wider one costs the block (see padded)
    assert padded(24, 16, reads_plain=True) == 32


def test_grid_lies_on_the_block() -> None:
    """The table is timed at widths the runtime computes: multiples of the block, and the full width."""
    from compressor.latency import _grid, grid_step

    step = grid_step(8, 16)
    assert step == 16 and grid_step(8, 1) == 8 and grid_step(4, 6) == 12
    pts = _grid(200, step, 20, 16)
    assert pts[-1] == 200 and all(p % 16 == 0 for p in pts[:-1])
    assert _grid(24, 8, 20, 16) == [16, 24]  # 8 and 16 are both computed as 16


def test_runtime_channel_block_is_read_from_the_runtime() -> None:
    """The block is found in the graph ONNX Runtime optimised: at level "all" a conv with at least
    the block of input channels is reordered into blocks and one with fewer is not (checked here
    with the probe itself); below level "all" there is no blocked layout."""
    import tempfile

    import onnxruntime as ort  # noqa: F401 - the runtime the probe reads

    from compressor.latency import _optimized_ops, runtime_channel_block

    target = load_target("mobile")
    block = runtime_channel_block(target)
    assert block in (1, 4, 8, 16, 32, 64)
    assert runtime_channel_block(load_target("mobile", graph_optimization_level="extended")) == 1
    if block > 1:
        with tempfile.TemporaryDirectory() as td:
            at = _optimized_ops(nn.Conv2d(block, 16, 3, padding=1), (block, 8, 8), "all", Path(td))
            below = _optimized_ops(
                nn.Conv2d(block // 2, 16, 3, padding=1), (block // 2, 8, 8), "all", Path(td)
            )
        assert ("com.microsoft.nchwc", "ReorderInput") in at
        assert ("com.microsoft.nchwc", "ReorderInput") not in below


def test_interleaved_multithreaded_sessions_rest_between_blocks() -> None:
    """Sessions with several intra-op threads, timed interleaved, get a rest before each block (their
    idle threads spin after a run and would slow the next block); single-threaded ones do not."""
    from compressor.export import runtime as rt

    class Fake:
        def __init__(self, threads: int, log: list) -> None:
            self.threads, self.log = threads, log

        def get_session_options(self) -> object:
            return type("O", (), {"intra_op_num_threads": self.threads})()

        def run(self, _names: object, _feed: object) -> None:
            self.log.append((id(self), time.perf_counter()))

    import time

    for threads, rests in ((2, True), (1, False)):
        log: list = []
        sessions = [(Fake(threads, log), {}), (Fake(threads, log), {})]
        rt.time_sessions(sessions, warmup=1, min_runs=4, time_budget_s=0.0, block=2)  # type: ignore[arg-type]
        switches = [b[1] - a[1] for a, b in zip(log, log[1:]) if a[0] != b[0]]
        assert switches
        if rests:
            assert min(switches[1:]) >= rt.SWITCH_PAUSE_S * 0.9
        else:
            assert max(switches) < rt.SWITCH_PAUSE_S / 2


def test_fit_separates_layers_elements_and_the_call() -> None:
    """The calibration's fit recovers known coefficients of the three terms (noise-free points),
    keeps them non-negative, and a heavily weighted point is met (the full model's)."""
    from compressor.latency import fit_latency

    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 5.0, 8)
    e = rng.uniform(1e5, 4e5, 8)
    y = 0.8 * x + 2e-6 * e + 0.05
    scale, per_element, rest = fit_latency(x, e, y)
    assert scale == pytest.approx(0.8, rel=1e-3)
    assert per_element == pytest.approx(2e-6, rel=1e-2)
    assert rest == pytest.approx(0.05, abs=1e-3)
    # an element term that would be negative is held at zero
    y2 = 0.8 * x - 1e-6 * e + 0.5
    assert fit_latency(x, e, y2)[1] == pytest.approx(0.0, abs=1e-15)
    # a noisy cloud plus one point weighted as much as all the others: the fit passes near it
    y3 = y * rng.uniform(0.8, 1.2, 8)
    w = np.ones(8)
    w[0] = 7
    s3, p3, r3 = fit_latency(x, e, y3, w)
    s4, p4, r4 = fit_latency(x, e, y3)
    near = abs(s3 * x[0] + p3 * e[0] + r3 - y3[0])
    assert near <= abs(s4 * x[0] + p4 * e[0] + r4 - y3[0]) + 1e-12


def test_elements_follow_the_padded_widths() -> None:
    """A plan's output elements: each layer's output width (padded to the block) times its output
    pixels; a strided conv's output pixels follow its stride and padding."""
    from compressor.latency import Layer

    lay = Layer("c", "conv", 16, 32, (28, 28), (3, 3), (2, 2), (1, 1))
    assert lay.out_pixels() == 14 * 14
    assert Layer("fc", "linear", 64, 10, (1, 1)).out_pixels() == 1
    blocked, plain = _one_layer_model(16), _one_layer_model(1)  # conv 32 -> g, 8x8
    assert blocked.elements({"g": 72}) == 80 * 64  # type: ignore[attr-defined]
    assert plain.elements({"g": 72}) == 72 * 64  # type: ignore[attr-defined]
    assert plain.elements({}) == 128 * 64  # type: ignore[attr-defined]


def test_input_grid_times_one_channel() -> None:
    """A conv or linear input is also timed at one channel (the search's floor), not clamped to the
    grid's first step; a depthwise conv (its input is its output) is not."""
    from compressor.latency import Layer, _table_grids

    conv = Layer("c", "conv", 64, 64, (8, 8), (3, 3), coef_in={"g": 1.0}, coef_out={"h": 1.0})
    dw = Layer("d", "dwconv", 64, 64, (8, 8), (3, 3), groups=64, coef_in={"g": 1.0}, coef_out={"g": 1.0})
    grids = _table_grids([conv, dw], 16, 6, 16)
    assert grids[conv.key()][1][0] == 1 and grids[conv.key()][2][0] == 16
    assert grids[dw.key()][1][0] == 16


def test_floor_counts_is_the_fastest_plan_at_the_multiple() -> None:
    """The most-pruned plan at a multiple: one step per group, raised to the runtime's next step
    (free channels). With a block of 16 and multiple 8, a 128-channel group's floor is 16 (8 costs
    the block); without a block it is 8."""
    from compressor.latency import LatencyModel, Layer, LayerTable

    def one_layer(block: int) -> LatencyModel:
        lay = Layer("conv", "conv", 32, 128, (8, 8), coef_out={"g": 1.0})
        table = LayerTable([32], [1, 8, 16, 64, 128], [[0.001, 0.008, 0.016, 0.064, 0.128]])
        return LatencyModel([lay], {lay.key(): table}, {"g": 128}, 1.0, 0.0, 0.0, {}, block)

    blocked, plain = one_layer(16), one_layer(1)
    assert blocked.floor_counts(8) == {"g": 16}  # type: ignore[attr-defined]
    assert plain.floor_counts(8) == {"g": 8}  # type: ignore[attr-defined]
    assert plain.floor_counts(1) == {"g": 1}  # type: ignore[attr-defined]
    assert plain.fraction({"g": 8}) > plain.fraction({"g": 1})  # type: ignore[attr-defined]


def test_calibration_plans_keep_the_searches_widths(
    built: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fit is calibrated on the full model, the floor at the multiple, every group at one
    channel and random plans on the widths a search keeps (on lcm(multiple, block), snapped), not on widths between the block's
    steps (in context those cost more than the tables say, and no search keeps them)."""
    import compressor.latency as latency

    model, graph, target, _, kw, lm = built
    seen: list[list[dict[str, int]]] = []

    def fake(model: object, graph: object, plans: list, *a: object, **k: object) -> list[float]:
        seen.append([dict(p) for p in plans])
        return [1.0 + 0.01 * i for i in range(len(plans))]

    monkeypatch.setattr(latency, "measure_plans", fake)
    again = build_latency_model(model, graph, target, SHAPE, **{**kw, "cache": tmp_path, "calib_plans": 6})
    plans = seen[-1]
    from compressor.latency import LatencyModel

    tables = LatencyModel(again.layers, again.tables, again.sizes, 1.0, 0.0, 0.0, {}, again.block)
    # the full model timed first, in the middle and last (its figure: their median)
    assert plans[0] == {} and plans[-1] == {} and sum(1 for p in plans if not p) == 3
    plans = [p for p in plans if p]
    assert plans[0] == tables.floor_counts(8) and plans[1] == {g: 1 for g in again.sizes}
    assert plans[0] != plans[1] and len(plans) == 8
    assert again.full_ms == pytest.approx(1.06)  # the median of 1.00 (first), 1.06 (7th) and 1.10 (last)
    step = math.lcm(8, again.block)
    for p in plans[2:]:
        assert p == tables.snap(p, 8)  # snapped: no free channels left
        for g, c in p.items():
            size = again.sizes[g]
            assert c in (1, size) or c % step == 0 or c % again.block == 0 or size < 2 * step, (g, c)


def test_halp_floor_gives_way_to_a_latency_budget(built: tuple) -> None:
    """A latency budget that halp's 20% floor keeps out of reach is met below the floor (down to
    one step per group) and the plan says so; a reachable one leaves the floor alone."""
    model, graph, _, _, _, _ = built
    sizes = {g.name: int(g.size) for g in graph.prunable}

    def cost(counts: dict) -> float:  # a latency stand-in: the mean kept share of the groups
        return float(np.mean([counts.get(g, s) / s for g, s in sizes.items()]))

    # the least halp reaches above its 20% floor (in steps of 8), and with one step per group
    at_floor = cost({g: 8 * math.ceil(max(8, math.ceil(0.2 * s)) / 8) for g, s in sizes.items()})
    at_step = cost({g: 8 for g in sizes})
    assert at_step < at_floor
    budget = round((at_floor + at_step) / 2, 3)
    plan = get_method("halp")(
        model, graph, flops=None, multiple=8,
        context=MethodContext(progress=False, budget=CostBudget("latency", budget, cost)),
    )  # fmt: skip
    kept = {g: len(plan.groups.get(g, range(s))) for g, s in sizes.items()}
    assert cost(kept) <= budget and plan.info["met"] and plan.info["floor_relaxed"]
    assert any(k < math.ceil(0.2 * sizes[g]) for g, k in kept.items())
    assert all(k >= 8 for k in kept.values())  # one step of the multiple, not gutted
    easy = get_method("halp")(
        model, graph, flops=None, multiple=8,
        context=MethodContext(progress=False, budget=CostBudget("latency", 0.6, cost)),
    )  # fmt: skip
    assert easy.info["met"] and not easy.info["floor_relaxed"]


def test_costbudget_snapped_keeps_within_the_budget() -> None:
    """snapped raises counts to the free channels only when the raised plan still fits."""

    def cost(c: dict) -> float:
        return c["g"] / 100

    raise_to_40 = lambda c: {"g": 40}  # noqa: E731
    assert CostBudget("latency", 0.5, cost, snap=raise_to_40).snapped({"g": 30}) == {"g": 40}
    assert CostBudget("latency", 0.35, cost, snap=raise_to_40).snapped({"g": 30}) == {"g": 30}
    assert CostBudget("latency", 0.5, cost).snapped({"g": 30}) == {"g": 30}


def test_measure_plans_exports_a_repeated_plan_once(built: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full model timed three times (as the calibration does) is exported once, and each
    timing is still reported in its place."""
    import compressor.export as export

    model, graph, target, _, _, lm = built
    calls: list[object] = []
    real = export.export_onnx

    def counting(*a: object, **k: object) -> object:
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(export, "export_onnx", counting)
    half = {g: s // 2 for g, s in lm.sizes.items()}
    from compressor.latency import measure_plans

    ms = measure_plans(model, graph, [{}, half, {}, {}], target, SHAPE, seconds=0.05, rounds=1)
    assert len(ms) == 4 and all(t > 0 for t in ms)
    assert len(calls) == 2
