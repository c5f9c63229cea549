"""Every number the README quotes comes from a committed benchmark result.

The convention: a measured figure in README.md is a markdown link to the JSON it comes from, with
the value's dotted path (list indices as numbers) and an optional scale in the link's title::

    [99.4%](benchmarks/results/demo_run.json "methods.eagleeye.top1_ort")
    [98.6%](benchmarks/results/demo_run.json "methods.l1-uniform.top1 *100")

The displayed number must equal the value (times the scale) rounded to the displayed precision
(``99.4`` matches 99.38..99.45; ``2.4e-6`` compares the mantissa; thousands separators are
ignored). In the README's Benchmarks section, a bare measured number (digits followed by ``%``,
``ms`` or ``x``) outside such a link and outside inline code is an error too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(
    r"\[(?P<text>[^\]]*)\]\((?P<target>benchmarks/results/[^)\s]+\.json)(?:\s+\"(?P<title>[^\"]*)\")?\)"
)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
BARE = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:%|ms\b|x\b)")
CODE = re.compile(r"`[^`]*`")


@dataclass
class Figure:
    """One README figure: the text shown, the JSON file, the path in it and the scale."""

    text: str
    target: str
    path: str
    scale: float
    line: int


def figures(readme: str) -> list[Figure]:
    """Every link to a benchmarks/results/*.json in ``readme``."""
    out = []
    for m in LINK.finditer(readme):
        title = (m.group("title") or "").split()
        path = title[0] if title else ""
        scale = 1.0
        for t in title[1:]:
            if t.startswith("*"):
                scale *= float(t[1:])
            elif t.startswith("/"):
                scale /= float(t[1:])
        line = readme.count("\n", 0, m.start()) + 1
        out.append(Figure(m.group("text"), m.group("target"), path, scale, line))
    return out


def lookup(doc: Any, path: str) -> Any:
    """``doc`` at the dotted ``path`` (a number indexes a list; a key that itself holds dots,
    such as ``ours_flops_within_0.02_of_target``, is matched whole)."""
    cur = doc
    parts = path.split(".")
    i = 0
    while i < len(parts):
        if isinstance(cur, list):
            cur, i = cur[int(parts[i])], i + 1
            continue
        for j in range(len(parts), i, -1):  # the longest key first
            key = ".".join(parts[i:j])
            if isinstance(cur, dict) and key in cur:
                cur, i = cur[key], j
                break
        else:
            raise KeyError(parts[i])
    return cur


def matches(shown: str, value: float) -> bool:
    """``shown`` (as printed) equals ``value`` rounded to the precision ``shown`` has."""
    s = shown.replace(",", "")
    if "e" in s.lower():
        mant, _, exp = s.lower().partition("e")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        return f"{value:.{decimals}e}" == f"{float(mant):.{decimals}f}e{int(exp):+03d}"
    decimals = len(s.split(".")[1]) if "." in s else 0
    return f"{value:.{decimals}f}" == f"{float(s):.{decimals}f}"


def check_figure(f: Figure, root: Path = ROOT) -> str | None:
    """Why figure ``f`` disagrees with its JSON, or ``None`` when it agrees."""
    where = f"README line {f.line}: [{f.text}]({f.target} {f.path!r})"
    nums = NUMBER.findall(f.text)
    if len(nums) != 1:
        return f"{where}: the link text must show exactly one number, found {nums}"
    if not f.path:
        return f"{where}: the link title must give the JSON path of the value"
    file = root / f.target
    if not file.is_file():
        return f"{where}: {f.target} does not exist"
    try:
        value = lookup(json.loads(file.read_text(encoding="utf-8")), f.path)
    except (KeyError, IndexError, ValueError):
        return f"{where}: {f.target} has no value at {f.path!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{where}: the value at {f.path!r} is {value!r}, not a number"
    if not matches(nums[0], float(value) * f.scale):
        return f"{where}: shows {nums[0]} but the JSON gives {float(value) * f.scale!r}"
    return None


def section(readme: str, title: str) -> str:
    """The text of the ``## title`` section (to the next ``## ``)."""
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    return m.group(1) if m else ""


def bare_numbers(text: str) -> list[str]:
    """Measured numbers (with %, ms or x) not written as a link to their JSON, nor in inline code."""
    stripped = CODE.sub("", LINK.sub("", text))
    return [m.group(0) for m in BARE.finditer(stripped)]


def readme_problems(readme: str, root: Path = ROOT) -> list[str]:
    """Every disagreeing figure and every bare number of the Benchmarks section."""
    bad = [p for f in figures(readme) if (p := check_figure(f, root))]
    bad += [
        f"bare number in the Benchmarks section: {b!r}" for b in bare_numbers(section(readme, "Benchmarks"))
    ]
    return bad


# ------------------------------------------------------------------ the real README


def test_readme_figures_agree_with_their_json() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert figures(readme), "the README quotes no figure from benchmarks/results"
    problems = readme_problems(readme)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ the checker itself
@pytest.fixture
def results(tmp_path: Path) -> Path:
    d = tmp_path / "benchmarks" / "results"
    d.mkdir(parents=True)
    doc = {
        "demo": {"top1": [99.0, 99.4]},
        "ratio": 0.5312,
        "err": 2.36e-6,
        "n": 1000,
        "frac": 0.994,
        "s": {"within_0.02": 119},
    }
    (d / "r.json").write_text(json.dumps(doc))
    return tmp_path


def _doc(*figs: str) -> str:
    return "# x\n\n## Benchmarks\n\n" + " ".join(figs) + "\n\n## Next\n"


@pytest.mark.parametrize(
    "fig",
    [
        '[99.4%](benchmarks/results/r.json "demo.top1.1")',
        '[99.0%](benchmarks/results/r.json "demo.top1.0")',
        '[0.53](benchmarks/results/r.json "ratio")',
        '[2.4e-6](benchmarks/results/r.json "err")',
        '[1,000](benchmarks/results/r.json "n")',
        '[99.4%](benchmarks/results/r.json "frac *100")',
        '[119](benchmarks/results/r.json "s.within_0.02")',  # a key with a dot in it
    ],
)
def test_a_right_figure_passes(results: Path, fig: str) -> None:
    assert readme_problems(_doc(fig), results) == []


@pytest.mark.parametrize(
    ("fig", "needle"),
    [
        ('[99.40%](benchmarks/results/r.json "demo.top1.0")', "shows 99.40"),  # the lucky run
        ('[0.54](benchmarks/results/r.json "ratio")', "shows 0.54"),  # wrong rounding
        ('[2.3e-6](benchmarks/results/r.json "err")', "shows 2.3e-6"),
        ('[99.4%](benchmarks/results/r.json "frac")', "shows 99.4"),  # missing scale
        ('[99.4%](benchmarks/results/r.json "demo.top5")', "no value"),
        ('[119](benchmarks/results/r.json "s.within_0.03")', "no value"),
        ('[99.4%](benchmarks/results/missing.json "demo")', "does not exist"),
        ("[99.4%](benchmarks/results/r.json)", "JSON path"),
    ],
)
def test_a_wrong_figure_fails(results: Path, fig: str, needle: str) -> None:
    problems = readme_problems(_doc(fig), results)
    assert len(problems) == 1 and needle in problems[0], problems


def test_a_bare_measured_number_in_benchmarks_fails(results: Path) -> None:
    doc = _doc(
        'eagleeye [99.4%](benchmarks/results/r.json "demo.top1.1"), MobileNetV2 0.80 at 1.4x and 3 ms, 99.0%'
    )
    assert bare_numbers(section(doc, "Benchmarks")) == ["1.4x", "3 ms", "99.0%"]
    assert len(readme_problems(doc, results)) == 3
    # settings in inline code, sizes like 224x224 and numbers outside the section are not figures
    ok = _doc("at `--flops 0.5` on 224x224 images") + "\n50% elsewhere\n"
    assert readme_problems(ok, results) == []
