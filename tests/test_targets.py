"""Deploy targets: shipped profiles, schema errors, overrides, user files, `compress targets`."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from compressor.errors import UsageError
from compressor.targets import (
    OVERRIDES,
    Target,
    list_targets,
    load_target,
    parse_target,
    target_summary,
)

SHIPPED = ("mobile", "edge", "server")


def test_shipped_targets_are_listed_and_load() -> None:
    names = list_targets()
    assert set(SHIPPED) <= set(names)
    for name in names:
        t = load_target(name)
        assert isinstance(t, Target) and t.name == name
        assert 0 < t.budget.flops <= 1
        assert t.budget.max_acc_drop >= 0
        assert t.runtime.provider == "CPUExecutionProvider"
        assert t.runtime.graph_optimization_level in ("disable", "basic", "extended", "all")
        assert t.description
        assert t.source.endswith(f"{name}.toml")


def test_shipped_targets_have_sensible_budgets() -> None:
    mobile, edge, server = (load_target(n) for n in SHIPPED)
    # the edge board is slower than a phone: tighter FLOPs budget, looser latency
    assert edge.budget.flops < mobile.budget.flops < server.budget.flops
    for t in (mobile, edge, server):
        assert t.budget.latency_ms is not None and 1.0 <= t.budget.latency_ms <= 1000.0
        assert t.input.batch == 1
        assert t.export.channel_multiple in (8, 16)
    assert server.export.dynamic_batch and not mobile.export.dynamic_batch


def test_every_key_in_shipped_files_is_commented() -> None:
    """Each `key = value` line follows a comment line (the files document themselves)."""
    for name in SHIPPED:
        text = (resources.files("compressor.deploy_targets") / f"{name}.toml").read_text(encoding="utf-8")
        lines = text.splitlines()
        keys = 0
        for i, line in enumerate(lines):
            if re.match(r"^[a-z_]+\s*=", line):
                keys += 1
                assert lines[i - 1].lstrip().startswith("#"), f"{name}.toml: {line!r} has no comment above it"
        assert keys >= 12


def test_unknown_name_lists_valid_targets() -> None:
    with pytest.raises(UsageError) as e:
        load_target("phone")
    msg = str(e.value)
    assert "'phone'" in msg
    for name in SHIPPED:
        assert name in msg


@pytest.mark.parametrize(
    "text, words",
    [
        ("[budget]\nflop = 0.5\n", ["'flop'", "flops", "latency_ms", "max_acc_drop"]),
        ("[budgets]\nflops = 0.5\n", ["'budgets'", "[budget]", "[runtime]"]),
        ("colour = 'red'\n", ["'colour'", "description"]),
        ("[budget]\nflops = 'half'\n", ["flops", "'half'", "(0, 1]"]),
        ("[budget]\nflops = 1.5\n", ["flops", "1.5"]),
        ("[budget]\nlatency_ms = -3\n", ["latency_ms", "positive"]),
        ("[runtime]\nintra_op_threads = 2.5\n", ["intra_op_threads", "integer"]),
        ("[runtime]\nintra_op_threads = true\n", ["intra_op_threads", "integer"]),
        ("[runtime]\ngraph_optimization_level = 'max'\n", ["'max'", "disable", "basic", "extended", "all"]),
        ("[runtime]\nprovider = 'cpu'\n", ["provider", "CPUExecutionProvider"]),
        ("[input]\nshape = [224, 224]\n", ["shape", "[C, H, W]"]),
        ("[export]\nopset = 9\n", ["opset", "11", "20"]),
        ("[export]\ndynamic_batch = 'yes'\n", ["dynamic_batch", "true or false"]),
        ("budget = 3\n", ["'budget'", "table"]),
        ("[budget\nflops = 0.5\n", ["not valid TOML"]),
    ],
)
def test_schema_errors_name_the_problem(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as e:
        parse_target(text, name="mine", source="mine.toml")
    for w in words:
        assert w in str(e.value)


def test_defaults_and_missing_latency_means_no_budget() -> None:
    t = parse_target('description = "x"\n[budget]\nflops = 0.6\n')
    assert t.budget.flops == 0.6
    assert t.budget.latency_ms is None
    assert t.export.opset == 17 and t.export.dynamic_batch is True
    assert t.input.shape is None


def test_integers_are_accepted_for_numbers_and_shape_is_a_tuple() -> None:
    t = parse_target("[budget]\nflops = 1\nlatency_ms = 5\npercentile = 50\n[input]\nshape = [3, 32, 32]\n")
    assert t.budget.flops == 1.0 and isinstance(t.budget.latency_ms, float)
    assert t.input.shape == (3, 32, 32)


def test_overrides_replace_file_values_and_none_keeps_them() -> None:
    base = load_target("mobile")
    t = load_target(
        "mobile", flops=0.3, latency_ms=5.0, max_acc_drop=0.25, intra_op_threads=2, opset=13, percentile=None
    )
    assert (t.budget.flops, t.budget.latency_ms, t.budget.max_acc_drop) == (0.3, 5.0, 0.25)
    assert t.runtime.intra_op_threads == 2 and t.export.opset == 13
    assert t.budget.percentile == base.budget.percentile
    assert load_target(t) is t  # a Target passes through
    assert load_target(t, flops=0.9).budget.flops == 0.9


def test_bad_overrides_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="flops"):
        load_target("mobile", flops=2.0)
    with pytest.raises(UsageError) as e:
        load_target("mobile", flop=0.5)
    assert "flop" in str(e.value) and "latency_ms" in str(e.value)
    assert set(OVERRIDES) >= {"flops", "latency_ms", "max_acc_drop", "intra_op_threads", "opset", "batch"}


def test_user_file_by_path_and_base(tmp_path: Path) -> None:
    own = tmp_path / "tiny.toml"
    own.write_text(
        'base = "mobile"\ndescription = "my board"\n[budget]\nlatency_ms = 2.5\n', encoding="utf-8"
    )
    t = load_target(str(own))
    mobile = load_target("mobile")
    assert t.name == "tiny" and t.source == str(own) and t.description == "my board"
    assert t.budget.latency_ms == 2.5
    assert t.budget.flops == mobile.budget.flops and t.export == mobile.export
    child = tmp_path / "child.toml"
    child.write_text('base = "tiny.toml"\n[export]\nopset = 13\n', encoding="utf-8")
    c = load_target(child)
    assert c.budget.latency_ms == 2.5 and c.export.opset == 13
    loop = tmp_path / "loop.toml"
    loop.write_text('base = "loop.toml"\n', encoding="utf-8")
    with pytest.raises(UsageError, match="cycle"):
        load_target(loop)
    with pytest.raises(UsageError, match="does not exist"):
        load_target(tmp_path / "missing.toml")


def test_summary_and_to_dict_are_json() -> None:
    for name in SHIPPED:
        t = load_target(name)
        json.dumps(t.to_dict())
        row = target_summary(t)
        assert row["name"] == name and row["flops"] == t.budget.flops


def test_cli_targets_lists_budgets() -> None:
    from compressor.cli.main import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["targets", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert {row["name"] for row in rows} >= set(SHIPPED)
    assert all("latency_ms" in row and "max_acc_drop" in row for row in rows)
    r = CliRunner().invoke(app, ["targets"])
    assert r.exit_code == 0 and "mobile" in r.output and "server" in r.output
