"""The documentation stays true to the code: the defaults table is the one train uses, every relative link
resolves, and the README stays one screenful of commands."""

from __future__ import annotations

import runpy
from pathlib import Path

from your_ai.train.defaults import defaults_table

ROOT = Path(__file__).resolve().parents[1]


def test_training_docs_show_the_defaults_train_uses():
    assert defaults_table() in (ROOT / "docs" / "training.md").read_text(encoding="utf-8")


def test_every_relative_link_resolves():
    check = runpy.run_path(str(ROOT / "docs" / "check_links.py"))
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [problem for page in pages for problem in check["broken_links"](page)] == []


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
