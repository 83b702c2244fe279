"""The README's "In your training stack" snippets run as written (in a temporary folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    section = README.read_text().split("## In your training stack", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"<!-- snippet -->\n```python\n(.*?)```", section, re.S)


def test_the_section_has_its_four_snippets():
    assert len(snippets()) == 4


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("index", range(4), ids=["torch", "hf-trainer", "accelerate", "lightning"])
def test_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(snippets()[index], f"README snippet {index}", "exec"), {"__name__": "__readme__"})
