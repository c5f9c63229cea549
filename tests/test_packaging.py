"""Packaging: every package is listed in pyproject.toml, only ``compressor`` is installed at the top,
and the version has one source."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import tomllib

import compressor

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_is_listed_and_mapped_under_compressor() -> None:
    st = _pyproject()["tool"]["setuptools"]
    listed = set(st["packages"])
    assert all(p == "compressor" or p.startswith("compressor.") for p in listed), listed
    dirs = st["package-dir"]
    found = set()
    for pkg, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([pkg, *rel.parts]))
    # a subpackage folder of a mapped folder (e.g. compressor/cli) would be shadowed: none may exist
    assert (
        not (REPO / "compressor" / "cli").exists() and not (REPO / "compressor" / "deploy_targets").exists()
    )
    assert found == listed, (
        f"packages on disk but not in pyproject: {found - listed}; listed but absent: {listed - found}"
    )


def test_version_has_one_source() -> None:
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("compressor") == compressor.__version__


def test_cli_and_targets_install_inside_compressor() -> None:
    import compressor.cli.main
    import compressor.deploy_targets  # noqa: F401

    scripts = _pyproject()["project"]["scripts"]
    assert scripts["compress"] == "compressor.cli.main:main"
